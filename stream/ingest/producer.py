"""The producer loop: a source's segments onto the segments topic, bad input onto the DLQ.

Media: the decoder thread (sources.py) feeds the cutter (utterances.py), each utterance is
transcribed (transcribe.py) and sent as a text-only segment. The blocking parts run in threads
one step at a time, while the event loop keeps the Kafka producer alive.

Nothing is lost on the way out: a send that fails is retried with backoff until the broker takes
it (stream/publish.py), and meanwhile nothing more is read (the decoder blocks on its bounded
queue). Ctrl-C (or SIGTERM) stops reading the source, ends the utterance being heard, and sends
everything read so far before exiting; a second Ctrl-C exits at once.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Iterator

from stream.config import Settings
from stream.ingest import metrics
from stream.ingest.segments import Message, utterance_segment
from stream.ingest.sources import SAMPLE_RATE, End, MediaSource
from stream.ingest.text_feed import BadLine
from stream.ingest.transcribe import Transcriber
from stream.ingest.utterances import Utterance, UtteranceCutter
from stream.pipeline import Reject
from stream.publish import Outgoing, deliver
from stream.schema import Rejected

log = logging.getLogger(__name__)


@dataclass
class Report:
    stream_id: str | None = None
    media_s: float = 0.0
    utterances: int = 0
    empty: int = 0  # utterances Whisper heard no words in (not sent)
    sent: int = 0
    rejected: int = 0  # sent to the dead-letter topic
    ended: str = ""
    realtime_factor: float | None = None
    # live: end of speech to acknowledged, seconds (the latest, for the summary and the bench)
    latencies: deque = field(default_factory=lambda: deque(maxlen=10000))
    reconnects: int = 0
    model: str = ""  # Whisper's model and device


class KafkaSink:
    """An aiokafka producer with the settings' security, sending until the broker acknowledges."""

    def __init__(self, settings: Settings):
        self.settings = settings

    async def __aenter__(self) -> "KafkaSink":
        from aiokafka import AIOKafkaProducer

        from stream.dependency_checks import broker_client_options
        self.producer = AIOKafkaProducer(bootstrap_servers=self.settings.broker_servers(), acks="all", linger_ms=5,
                                         **broker_client_options(self.settings, 30.0))
        try:
            await self.producer.start()
        except Exception:
            await self.producer.stop()  # else its half-open connections are reported as unclosed at exit
            raise
        return self

    async def __aexit__(self, *exc) -> None:
        await self.producer.stop()

    async def _send(self, record: Outgoing):
        return await self.producer.send(record.topic, value=record.value, headers=list((record.headers or {}).items()),
                                        key=record.key.encode() if record.key else None)

    def outgoing(self, item: Message | BadLine) -> Outgoing:
        if isinstance(item, Message):
            return Outgoing(self.settings.topic_segments, item.stream_id, item.value)
        reject = Reject(item.reason, f"{item.where}: {item.detail}", item.raw)
        return Outgoing(self.settings.topic_dlq, None, reject.message(self.settings.dlq_keep_bytes), reject.headers())

    async def send(self, items: list[Message | BadLine]) -> None:
        """All of them queued at once, returning when the broker has acknowledged every one."""
        await deliver([self.outgoing(item) for item in items], self._send)
        for item in items:
            if isinstance(item, BadLine):
                metrics.REJECTED.labels(item.reason).inc()


def transcribed(source: MediaSource, cutter: UtteranceCutter, transcriber: Transcriber, stream_id: str,
                settings: Settings, report: Report, on_media: Callable[[float], None]
                ) -> Iterator[tuple[Utterance, Message | BadLine]]:
    """Each utterance of the source with its segment, until the source ends (report.ended)."""
    for item in source.items():
        if isinstance(item, End):
            utterances = cutter.flush()
        else:
            seconds = len(item.samples) / SAMPLE_RATE
            report.media_s += seconds
            metrics.MEDIA_SECONDS.inc(seconds)
            on_media(seconds)
            if source.live:
                metrics.LAG.set(max(0.0, time.time() - item.wall - seconds))
            utterances = cutter.feed(item)
        for utterance in utterances:
            message = _segment_of(utterance, source, transcriber, stream_id, settings, report)
            if message is not None:
                yield utterance, message
        if isinstance(item, End):
            report.ended, report.reconnects = item.reason, source.reconnects
            if item.error is not None:
                raise item.error
            return


def _segment_of(utterance: Utterance, source: MediaSource, transcriber: Transcriber, stream_id: str,
                settings: Settings, report: Report) -> Message | BadLine | None:
    before = transcriber.busy_s
    text = transcriber(utterance.samples)
    report.utterances += 1
    metrics.UTTERANCES.inc()
    metrics.TRANSCRIBE_SECONDS.inc(transcriber.busy_s - before)
    report.realtime_factor = transcriber.busy_s / transcriber.audio_s
    metrics.REALTIME_FACTOR.set(report.realtime_factor)
    if not text:
        report.empty += 1
        log.debug("no words in the utterance at %.1f s", utterance.start / SAMPLE_RATE)
        return None
    try:
        return utterance_segment(stream_id, utterance, text, source.live, transcriber.name, settings)
    except Rejected as e:  # a transcript the worker would refuse (longer than TECAFLOW_MAX_TEXT_CHARS)
        return BadLine(f"at {utterance.start / SAMPLE_RATE:.1f} s", e.reason, e.detail, text.encode())


def on_stop_signals(stop: Callable[[], None]) -> None:
    """SIGINT and SIGTERM call `stop` once; a second Ctrl-C interrupts as usual."""
    loop = asyncio.get_running_loop()

    def first_signal():
        log.warning("stopping: sending what has been read (Ctrl-C again to quit at once)")
        loop.remove_signal_handler(signal.SIGINT)
        loop.remove_signal_handler(signal.SIGTERM)
        stop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, first_signal)


async def ingest_media(source: MediaSource, cutter: UtteranceCutter, transcriber: Transcriber, stream_id: str,
                       settings: Settings, on_media: Callable[[float], None] = lambda s: None) -> Report:
    report = Report(stream_id)
    on_stop_signals(source.stop)
    async with KafkaSink(settings) as sink:
        steps = transcribed(source, cutter, transcriber, stream_id, settings, report, on_media)
        while (step := await asyncio.to_thread(next, steps, None)) is not None:
            utterance, message = step
            await sink.send([message])
            if isinstance(message, BadLine):
                report.rejected += 1
                continue
            report.sent += 1
            metrics.SENT.labels("media").inc()
            if source.live:
                latency = time.time() - utterance.speech_end_wall
                report.latencies.append(latency)
                metrics.SPEECH_TO_KAFKA.observe(latency)
    return report


FEED_BATCH = 500  # posts sent before waiting for the broker's acknowledgements


async def ingest_feed(items: Iterator[Message | BadLine], settings: Settings) -> Report:
    """Posts in batches of what has been read (at most FEED_BATCH), each batch acknowledged
    before the next: a file streams through at the broker's pace, a slow live feed (stdin) is
    sent post by post as it comes."""
    report = Report()
    stopping = []
    on_stop_signals(lambda: stopping.append(True))
    async with KafkaSink(settings) as sink:
        read = ahead(items, FEED_BATCH)
        while not stopping and (batch := await read()):
            for bad in (item for item in batch if isinstance(item, BadLine)):
                log.warning("%s: %s (%s): sent to %s", bad.where, bad.detail, bad.reason, settings.topic_dlq)
            await sink.send(batch)
            report.rejected += sum(isinstance(item, BadLine) for item in batch)
            report.sent += sum(isinstance(item, Message) for item in batch)
            metrics.SENT.labels("text").inc(sum(isinstance(item, Message) for item in batch))
    report.ended = "stopped" if stopping else "end of feed"
    return report


def ahead(items: Iterator, most: int) -> Callable[[], Awaitable[list]]:
    """A reader thread runs at most 2 x `most` items ahead; each call returns what is ready (at
    least one item, waiting for it; at most `most`), or [] at the end. An error of the reader
    (a feed that cannot be read) is raised by the call that reaches it."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Queue = asyncio.Queue(maxsize=2 * most)
    end = object()

    def reader():
        try:
            for item in itertools.chain(items, [end]):
                asyncio.run_coroutine_threadsafe(ready.put(item), loop).result()
        except Exception as e:  # noqa: BLE001 - handed to the event loop, raised there
            if not loop.is_closed():  # closed: ingest has stopped, nobody is waiting
                asyncio.run_coroutine_threadsafe(ready.put(e), loop)
    threading.Thread(target=reader, name="feed-reader", daemon=True).start()
    finished = []

    async def read() -> list:
        if finished:
            return []
        batch = [await ready.get()]
        while batch[-1] is not end and not isinstance(batch[-1], Exception) and len(batch) < most \
                and not ready.empty():
            batch.append(ready.get_nowait())
        if isinstance(batch[-1], Exception):
            raise batch[-1]
        if batch[-1] is end:
            finished.append(True)
            batch.pop()
        return batch
    return read
