"""Segment messages from utterances and posts, with ids that make ingesting again idempotent.

The id is the stream plus where the segment lies in its source: a file's utterance by its
offset in the media (ms), a live source's by its capture time (ms; a live source restarts its
timestamps when it comes back, the clock does not), a post by the feed's own id or else its time
and a hash of its text. Ingesting the same file twice sends the same ids with the same content,
which the worker skips as exact redeliveries.

Every message is checked with the worker's own decoder before it is sent, so what the worker
would reject is reported here, at the source, with the line or offset it came from.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

from stream.config import Settings
from stream.errors import UserError
from stream.ingest.sources import SAMPLE_RATE
from stream.ingest.utterances import Utterance
from stream.schema import Limits, decode_segment, encode_segment


@dataclass(frozen=True)
class Message:
    stream_id: str  # the record's key
    segment_id: str
    event_time: float
    text: str
    value: bytes  # the segment message, as the worker will read it


def limits(settings: Settings) -> Limits:
    """The worker's limits on what a text-only segment may hold."""
    return Limits(widths={}, max_text_chars=settings.max_text_chars, max_future_s=settings.max_future_s)


def checked_stream_id(stream_id: str, flag: str = "--stream-id") -> str:
    """`stream_id` if the worker accepts it as one; else a UserError naming the flag."""
    from stream.schema import Rejected
    try:
        decode_segment(encode_segment(stream_id, f"{stream_id}/0", time.time(), "", None, None), limits(Settings()))
    except Rejected as e:
        raise UserError(f"{flag} {stream_id!r}: {e.detail.replace('stream_id ', '')}") from None
    return stream_id


def utterance_segment(stream_id: str, utterance: Utterance, text: str, live: bool, model: str,
                      settings: Settings) -> Message:
    start_s = utterance.start / SAMPLE_RATE
    place = f"w{round(utterance.start_wall * 1000)}" if live else f"{round(start_s * 1000):010d}"
    meta = {"source": "media", "offset_s": round(start_s, 3),
            "duration_s": round(len(utterance.samples) / SAMPLE_RATE, 3), "asr": f"whisper-{model}"}
    return _checked(encode_segment(stream_id, f"{stream_id}/{place}", utterance.start_wall, text, None, None, meta),
                    settings)


def post_segment(stream_id: str, event_time: float, text: str, post_id: str | None, line: int,
                 settings: Settings) -> Message:
    place = post_id or f"t{round(event_time * 1000)}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"
    meta = {"source": "feed", "line": line}
    return _checked(encode_segment(stream_id, f"{stream_id}/{place}", event_time, text, None, None, meta), settings)


def _checked(value: bytes, settings: Settings) -> Message:
    """The message, once the worker's decoder accepts it (else Rejected, with the worker's reason)."""
    segment = decode_segment(value, limits(settings))
    return Message(segment.stream_id, segment.segment_id, segment.event_time, segment.text, value)
