"""Faust's Kafka transport (aiokafka), with the consumer's fetch wait as a setting.

faust-streaming 0.15 builds the worker's AIOKafkaConsumer with `fetch_max_wait_ms=1500` written
into the driver (faust/transport/drivers/aiokafka.py, `_create_worker_consumer`) and offers no
setting for it. A broker may hold a fetch open for that long when it has nothing new, and the
embedded broker (Tansu) holds every fetch until the wait expires: a segment then waits up to
1.5 s in the broker before the worker sees it. TECAFLOW_FETCH_WAIT_S sets it instead.

How: Faust picks its transport by the broker URL's scheme from a registry that entry points in
the `faust.transports` group extend (faust/transport/drivers/__init__.py). pyproject.toml
registers this module's Transport as `tecaflow`, and stream/app.py names brokers
`tecaflow://host:port`. That is the extension point Faust documents for transports; it changes
nothing for other Faust apps in the process (as patching the driver at import would), and
everything but the consumer thread is Faust's own class.

The one private name used is aiokafka's `_fetch_max_wait_ms`: AIOKafkaConsumer keeps its
constructor argument there and hands it to its Fetcher in `start()`, which Faust calls after
`_create_worker_consumer`. `fetch_wait_applies` checks that this still holds, so an aiokafka
that changes it fails the worker at start-up rather than silently keeping 1.5 s.
"""
from __future__ import annotations

import aiokafka
from faust.transport.drivers import aiokafka as driver

from stream.config import Settings

SCHEME = "tecaflow"


def fetch_wait_applies(consumer: aiokafka.AIOKafkaConsumer) -> bool:
    return isinstance(getattr(consumer, "_fetch_max_wait_ms", None), int)


def set_fetch_wait(consumer: aiokafka.AIOKafkaConsumer, seconds: float) -> aiokafka.AIOKafkaConsumer:
    if not fetch_wait_applies(consumer):
        raise RuntimeError(f"aiokafka {aiokafka.__version__} keeps no _fetch_max_wait_ms: "
                           "TECAFLOW_FETCH_WAIT_S cannot be applied (stream/kafka_transport.py)")
    consumer._fetch_max_wait_ms = max(1, round(seconds * 1000))
    return consumer


class ConsumerThread(driver.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport):
        return set_fetch_wait(super()._create_worker_consumer(transport), Settings.from_env().fetch_wait_s)


class Consumer(driver.Consumer):
    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(driver.Transport):
    Consumer = Consumer
