"""The Faust app: topics, the scoring agent, and the worker's start-up (`tecaflow worker`).

    segments (raw bytes, keyed by stream_id)  ->  score_segments  ->  scores, alerts, segments-dlq
                                                        |
                                                   Triton, Redis

Per-stream order holds because producers key by stream_id, a partition is consumed by one
worker at a time, and the batches a worker has in flight are recorded in the order they were
taken (stream/in_flight.py). A micro-batch's offsets are acked only after Redis holds its results
and the broker holds its outcomes (at-least-once), and in order; Redis writes are idempotent per
segment_id, so a redelivered batch is never counted twice. The agent never lets an input error
escape (faust-streaming#315): bad messages go to the dead-letter topic. Every outcome (DLQ
record, score, alert) is delivered before the batch is acked (stream/publish.py).
"""
from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import faust
import mode

from stream import metrics
from stream.alerts.webhook import AlertSender
from stream.config import Settings
from stream.dependency_checks import check_broker
from stream.health import CHECK_EVERY_S, CHECK_TIMEOUT_S, Health, serve
from stream.in_flight import InFlight
from stream.kafka_transport import SCHEME
from stream.lag import LagTracker
from stream.pipeline import BatchResult, Pipeline, Reject
from stream.publish import Outgoing, deliver, outgoing
from stream.shadow.report import publish_metrics
from stream.startup import build_pipeline, check_dependencies, wait_for_broker

log = logging.getLogger("tecaflow.worker")
SHADOW_REPORT_EVERY_S = 15.0
settings = Settings.from_env()


def broker_credentials(s: Settings):
    context = s.broker_ssl_context()
    if s.broker_uses_sasl():
        return faust.SASLCredentials(username=s.sasl_username, password=s.sasl_password,
                                     mechanism=s.sasl_mechanism, ssl_context=context)
    return faust.SSLCredentials(context) if context else None


app = faust.App(
    "tecaflow",
    # Faust's Kafka transport with the fetch wait as a setting (stream/kafka_transport.py)
    broker=[f"{SCHEME}://{server}" for server in settings.broker_servers().split(",")],
    broker_credentials=broker_credentials(settings),
    broker_commit_interval=settings.commit_interval_s,
    # A new member waits up to the rebalance timeout for the group to settle; a dead member is
    # noticed after the session timeout. Both bound how long partitions sit idle.
    broker_rebalance_timeout=settings.session_timeout_s,
    broker_session_timeout=settings.session_timeout_s,
    broker_heartbeat_interval=max(0.5, settings.session_timeout_s / 10),
    topic_partitions=settings.partitions,
    value_serializer="raw",
    web_enabled=False,  # metrics have their own port (prometheus_client); nothing else is served
    consumer_auto_offset_reset="earliest",
    # Stopping does not wait for in-flight batches to be acked: one whose outcomes cannot be
    # published yet would hold the stop forever. Unacked, it is committed by no one and comes
    # back after the restart (stream/publish.py).
    stream_wait_empty=False,
    datadir=f"{settings.run_dir}/faust",
)

segments_topic = app.topic(settings.topic_segments, key_type=bytes, value_type=bytes,
                           key_serializer="raw", value_serializer="raw", partitions=settings.partitions)
scores_topic = app.topic(settings.topic_scores, value_serializer="json", partitions=settings.partitions)
alerts_topic = app.topic(settings.topic_alerts, value_serializer="json", partitions=settings.partitions)
dlq_topic = app.topic(settings.topic_dlq, value_serializer="raw", partitions=settings.partitions)

lag = LagTracker()
health = Health()  # /livez and /readyz beside /metrics (stream/health.py)
# The webhook is posted by a background task, never by the agent: a slow receiver must not stall scoring.
sender = AlertSender(settings.webhook_url, settings.webhook_queue) if settings.webhook_url else None


class Scoring(mode.Service):
    """The worker's pipeline (Triton, Redis, tokenizer), built when the worker starts. Building it
    waits for Triton and Redis as long as it takes; the worker joins its group meanwhile, and the
    agent waits here for its first batch."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._built = asyncio.Event()
        self._pipeline: Pipeline | None = None

    @mode.Service.task
    async def _build(self) -> None:
        self.use(await build_pipeline(settings))

    def use(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline
        self._built.set()

    async def pipeline(self) -> Pipeline:
        await self._built.wait()
        return self._pipeline

    def built(self) -> Pipeline | None:
        return self._pipeline


scoring = app.service(Scoring())


@app.agent(segments_topic)
async def score_segments(stream):
    # noack_take: a batch is acknowledged by us, after all its outcomes are delivered. take_events
    # would ack it in a `finally`, even when the agent is cancelled or fails half-way through.
    # A full batch is handed on at once; a partial one waits at most batch_wait_s. Up to
    # batches_in_flight batches are in flight and triton_calls of them in Triton (stream/in_flight.py):
    # while all calls are busy, the backlog grows in the consumer and the next batches leave full
    # (adaptive batching).
    in_flight = InFlight(settings.batches_in_flight, lambda events, scoring_call: finish(stream, events, scoring_call),
                         calls=settings.triton_calls)
    finisher = in_flight.start()
    health.agent_running()
    try:
        async for events in stream.noack_take(settings.batch_size, within=settings.batch_wait_s):
            pipeline = await scoring.pipeline()  # waits for Triton and Redis; run() checked the rest
            metrics.IN_FLIGHT.inc(len(events))
            await in_flight.submit(events, pipeline.start([event.value for event in events]))
    finally:
        health.agent_ended()
        finisher.cancel()
        in_flight.cancel_pending()
        metrics.IN_FLIGHT.set(0)  # what was in flight is dropped unacked, and comes back from Kafka


async def finish(stream, events, scoring_call) -> None:
    """The oldest batch in flight: record, publish, then ack (stream/in_flight.py keeps the order)."""
    raws = [event.value for event in events]
    pipeline = await scoring.pipeline()
    try:
        result = await pipeline.finish(scoring_call)
    except asyncio.CancelledError:
        raise
    except Exception as e:  # a bug, not bad input: park the batch in the DLQ, keep running
        log.exception("batch of %d failed; sent to %s as internal_error", len(raws), settings.topic_dlq)
        result = BatchResult(rejects=[Reject("internal_error", f"{type(e).__name__}: {e}", raw) for raw in raws])
        metrics.REJECTED.labels("internal_error").inc(len(raws))
    with metrics.STAGE_SECONDS.labels("publish").time():
        await deliver(outgoing(result, settings.dlq_keep_bytes), send)
        await pipeline.published(result)
    if sender:
        for alert in result.alerts:
            sender.offer(alert)
    for event in events:
        await stream.ack(event)
        lag.processed(event.message.tp, event.message.offset)
    metrics.IN_FLIGHT.dec(len(events))


async def send(record: Outgoing):
    topic = {"dlq": dlq_topic, "scores": scores_topic, "alerts": alerts_topic}[record.topic]
    return await topic.send(key=record.key, value=record.value, headers=record.headers)


@app.task
async def deliver_alerts():
    if sender:
        await sender.run()


@app.timer(interval=5.0)
async def report_consumer_lag():
    try:
        metrics.CONSUMER_LAG.set(await lag.lag(app.consumer))
    except Exception as e:  # noqa: BLE001 - a rebalance in progress or the broker away: try next tick
        log.debug("consumer lag not available now: %s", e)


@app.timer(interval=SHADOW_REPORT_EVERY_S)
async def report_shadow():
    """The candidate's divergence from the live model, as gauges (the rule in stream/prometheus)."""
    pipeline = scoring.built()
    if pipeline is None or pipeline.shadow is None:
        return
    try:
        await asyncio.to_thread(publish_metrics, pipeline.store, pipeline.shadow.current, settings,
                                SHADOW_REPORT_EVERY_S)
    except Exception as e:  # noqa: BLE001 - Redis away: the next tick tries again
        log.debug("shadow comparison not available now: %s", e)


@app.timer(interval=CHECK_EVERY_S)
async def check_health():
    health.beat()
    checks = {"broker": lambda: check_broker(settings, CHECK_TIMEOUT_S)}
    pipeline = scoring.built()
    if pipeline is not None:  # until it is, Redis and Triton have not answered this worker
        checks["redis"] = lambda: asyncio.to_thread(pipeline.store.ping)
        checks["triton"] = lambda: pipeline.scorer.served_version(pipeline.served.model)
    await health.check(checks)


def run(loglevel: str = "info") -> int:
    """`tecaflow worker`: check the dependencies, serve metrics, then run the app in this process
    with Faust's Worker until it is stopped."""
    log.info("worker settings: %s", settings.describe())
    for name in Settings.unknown_variables():
        log.warning("%s is set but no setting reads it", name)
    broker_up = check_dependencies(settings)
    if settings.metrics_port:
        serve(health, settings.metrics_host, settings.metrics_port)
        log.info("metrics on http://%s:%d/metrics, health on /livez and /readyz", settings.metrics_host,
                 settings.metrics_port)
    if not broker_up:
        wait_for_broker(settings)
    Path(app.conf.datadir).mkdir(parents=True, exist_ok=True)  # Faust makes only the last directory
    faust.Worker(app, loglevel=loglevel).execute_from_commandline()  # exits the process when the worker stops
