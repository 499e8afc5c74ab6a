"""The segment message (version 1): what producers put on the `segments` topic, keyed by stream_id.

A UTF-8 JSON object; frames are little-endian float32 bytes in base64 (compact, exact, and
readable from any language; no pickle, no eval):

    {"v": 1,
     "stream_id": "brand-42",                  # 1-128 chars of [A-Za-z0-9._:@/-]
     "segment_id": "brand-42/000123",          # unique per segment, same charset, 1-200 chars
     "event_time": 1764000000.5,               # unix seconds (float) when the utterance happened
     "text": "the new phone is great",         # transcript, may be empty
     "audio":  {"shape": [T_a, d_a], "f32": "<base64>"},   # optional, see below
     "visual": {"shape": [T_v, d_v], "f32": "<base64>"},   # optional
     "meta": {"lang": "en"}}                   # optional, a JSON object of at most 4 KiB

A segment may lack audio (silence, muted) or vision (no face found): leave the field out, set it
to null, or send zero frames ({"shape": [0, d], "f32": ""}). It is scored from what it has and
recorded with the modalities it had; it is never rejected for it.

Every rejection says why (`Rejected.reason` is a short machine-readable code, `detail` is for
people). Checks that need the model (feature widths, frame limits) take a `Limits`.

Decoding is total: whatever the bytes, `decode_segment` returns a Segment or raises Rejected,
never anything else, so one hostile message can only ever reject itself, never its batch.
Ambiguous input is refused rather than read one way: duplicate keys (`duplicate_key`; parsers
disagree on which one wins), ids that look like paths (`bad_id`: `..`, `/etc/x`, `a//b`), text
that is not encodable as UTF-8 (`bad_text`: lone surrogate escapes).
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
import time
from dataclasses import dataclass, field

import numpy as np

VERSION = 1
ID_PATTERN = re.compile(r"[A-Za-z0-9._:@/\-]+")
REQUIRED = ("v", "stream_id", "segment_id", "event_time", "text")
OPTIONAL = ("audio", "visual", "meta")
SIDES = ("audio", "visual")  # the modalities beside text, each of which a segment may lack
MAX_META_BYTES = 4096
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
MAX_DEPTH = 16  # a valid message nests 3 levels; meta gets the rest
# Acoustic and visual features are standardised inside the model; a raw value this large is a unit
# or encoding mistake, and far enough out it turns the model's arithmetic into Inf and NaN
MAX_FEATURE_ABS = 1e6
EARLIEST_EVENT_TIME = 946684800.0  # 2000-01-01: anything older is a unit mistake (ms, or 0)


class Rejected(ValueError):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class Limits:
    widths: dict[str, int] = field(default_factory=lambda: {"audio": 5, "visual": 20})
    max_frames: int = 50
    max_text_chars: int = 2000
    max_future_s: float = 300.0


@dataclass
class Segment:
    stream_id: str
    segment_id: str
    event_time: float
    text: str
    audio: np.ndarray  # [T_a, d_a] float32; T_a = 0 when the segment has no audio
    visual: np.ndarray  # [T_v, d_v] float32; T_v = 0 when it has no vision
    meta: dict
    digest: str  # sha256 of the canonical content: equal for an exact redelivery

    def frames(self, modality: str) -> np.ndarray:
        return {"audio": self.audio, "visual": self.visual}[modality]

    @property
    def modalities(self) -> tuple[str, ...]:
        """What the segment had: text always, then each side with at least one frame."""
        return ("text", *(m for m in SIDES if len(self.frames(m))))

    @property
    def missing(self) -> tuple[str, ...]:
        return tuple(m for m in SIDES if not len(self.frames(m)))


@dataclass(frozen=True)
class Score:
    """A scored segment, as the `scores` topic carries it (JSON, keyed by stream_id):

        {"stream_id": "brand-42", "segment_id": "brand-42/000123", "event_time": 1764000000.5, "score": -0.42,
         "version": "3"}   # the model version that scored it (docs/shadow.md)

    The topic is at-least-once (a redelivered segment is published again): consumers dedupe by
    segment_id."""
    stream_id: str
    segment_id: str
    event_time: float
    score: float
    version: str | None = None  # the model version that scored it

    def message(self) -> dict:
        body = {"stream_id": self.stream_id, "segment_id": self.segment_id, "event_time": self.event_time,
                "score": self.score}
        return body if self.version is None else {**body, "version": self.version}

    @classmethod
    def from_message(cls, value: dict) -> "Score":
        version = value.get("version")
        return cls(str(value["stream_id"]), str(value["segment_id"]), float(value["event_time"]),
                   float(value["score"]), None if version is None else str(version))


@dataclass(frozen=True)
class Alert:
    """A shift in a stream's sentiment, as the detector raises it, Redis keeps it (without its id,
    which is its entry's), and the `alerts` topic and the webhook carry it (JSON, keyed by
    stream_id):

        {"id": "1764000012345-0",                        # its entry in Redis, once recorded
         "stream_id": "brand-42", "event_time": 1764000012.0,   # the score that raised it
         "direction": "down", "magnitude": -1.12,        # recent mean - reference mean
         "interval": [-1.4, -0.84], "z": -7.9,           # the magnitude's 95% interval, its z
         "change_point": {"event_time": 1764000004.0, "segments_since": 14},   # when it began
         "evidence": {"statistic": 9.1, "threshold": 8.2, "log_likelihood_ratio": 10.4,
                      "allowance": 0.57, "outliers_clipped": 1, "duplicates_skipped": 0},
         "reference": {"mean": 0.61, "sd": 0.74, "rho": 0.21, "n": 180},   # the level before
         "recent": {"mean": -0.51, "n": 14, "from": 1764000004.0, "to": 1764000012.0},
         "drivers": {"segments": [{"segment_id": "brand-42/981", "event_time": 1764000009.0,   # what moved
                                   "score": -2.1, "text": "the refund never came"}, ...],
                     "modalities": {"change": {"words": -0.9, "audio": -0.2, "visual": 0.0},
                                    "moved_most": "words", "segments": {"window": 14, "reference": 36}},
                     "terms": [{"term": "refund", "z": 3.4, "window": 6, "reference": 0}, ...],
                     "window_segments": 14, "reference_segments": 36}}

    `drivers` (stream/alerts/drivers.py) is left out when empty: alerts recorded before it
    existed read and write the bytes they always had. The topic is at-least-once: consumers
    dedupe by id."""
    stream_id: str
    event_time: float
    direction: str  # "up" or "down"
    magnitude: float
    interval: tuple[float, float]
    z: float
    change_point: dict
    evidence: dict
    reference: dict
    recent: dict
    id: str | None = None
    drivers: dict = field(default_factory=dict)

    def fields(self) -> dict:
        """As Redis keeps it: everything but the id."""
        return {"stream_id": self.stream_id, "event_time": self.event_time, "direction": self.direction,
                "magnitude": self.magnitude, "interval": list(self.interval), "z": self.z,
                "change_point": self.change_point, "evidence": self.evidence, "reference": self.reference,
                "recent": self.recent, **({"drivers": self.drivers} if self.drivers else {})}

    def message(self) -> dict:
        """As the `alerts` topic carries it: with its id first, once it has one."""
        return {"id": self.id, **self.fields()} if self.id is not None else self.fields()

    @classmethod
    def from_message(cls, value: dict, id: str | None = None) -> "Alert":
        return cls(str(value["stream_id"]), float(value["event_time"]), str(value["direction"]),
                   float(value["magnitude"]), tuple(value["interval"]), float(value["z"]), dict(value["change_point"]),
                   dict(value["evidence"]), dict(value["reference"]), dict(value["recent"]),
                   id if id is not None else value.get("id"), dict(value.get("drivers") or {}))


def encode_frames(array: np.ndarray) -> dict:
    a = np.ascontiguousarray(array, dtype="<f4")
    if a.ndim != 2:
        raise ValueError(f"frames must be [T, d], got shape {a.shape}")
    return {"shape": list(a.shape), "f32": base64.b64encode(a.tobytes()).decode("ascii")}


def encode_segment(stream_id: str, segment_id: str, event_time: float, text: str, audio: np.ndarray | None,
                   visual: np.ndarray | None, meta: dict | None = None) -> bytes:
    """One message; a modality given as None is left out (the segment lacks it: text from raw
    media has no frames the model was trained on)."""
    message = {"v": VERSION, "stream_id": stream_id, "segment_id": segment_id, "event_time": float(event_time),
               "text": text}
    for name, frames in (("audio", audio), ("visual", visual)):
        if frames is not None:
            message[name] = encode_frames(frames)
    if meta:
        message["meta"] = meta
    return json.dumps(message, separators=(",", ":")).encode("utf-8")


def decode_segment(raw: bytes, limits: Limits, now: float | None = None) -> Segment:
    """Parse and validate one message; raise Rejected with the first problem found, and only Rejected."""
    try:
        return _decode(raw, limits, now)
    except Rejected:
        raise
    except RecursionError:
        raise Rejected("too_deep", f"nested deeper than Python can parse (limit {MAX_DEPTH})") from None
    except Exception as e:  # noqa: BLE001 - a check we did not foresee must still only reject this message
        raise Rejected("undecodable", f"{type(e).__name__}: {str(e)[:200]}") from None


def _decode(raw: bytes, limits: Limits, now: float | None) -> Segment:
    if not isinstance(raw, (bytes, bytearray)):
        raise Rejected("not_bytes", f"message value is {type(raw).__name__}, not bytes")
    if len(raw) > MAX_MESSAGE_BYTES:
        raise Rejected("too_large", f"{len(raw)} bytes > {MAX_MESSAGE_BYTES}")
    try:
        text = bytes(raw).decode("utf-8")
    except UnicodeDecodeError as e:
        raise Rejected("undecodable", f"not UTF-8 ({e.reason} at byte {e.start})") from None
    try:
        message = json.loads(text, parse_constant=_no_constants, object_pairs_hook=_unique_keys)
    except Rejected:
        raise
    except (json.JSONDecodeError, ValueError) as e:
        raise Rejected("undecodable", f"not JSON ({str(e)[:200]})") from None
    if _depth_exceeds(message, MAX_DEPTH):
        raise Rejected("too_deep", f"nested deeper than {MAX_DEPTH} levels")
    if not isinstance(message, dict):
        raise Rejected("not_an_object", f"top level is {type(message).__name__}, not an object")
    missing = [k for k in REQUIRED if k not in message]
    if missing:
        raise Rejected("missing_field", f"missing {', '.join(missing)}")
    extra = sorted(set(message) - set(REQUIRED) - set(OPTIONAL))
    if extra:
        raise Rejected("extra_field", f"unknown fields {', '.join(extra)}")
    if message["v"] != VERSION or isinstance(message["v"], bool):
        raise Rejected("bad_version", f"v={message['v']!r}; this worker reads version {VERSION}")
    stream_id = _identifier(message, "stream_id", 128)
    segment_id = _identifier(message, "segment_id", 200)
    event_time = _event_time(message["event_time"], limits, time.time() if now is None else now)
    transcript = message["text"]
    if not isinstance(transcript, str):
        raise Rejected("wrong_type", f"text is {type(transcript).__name__}, not a string")
    if len(transcript) > limits.max_text_chars:
        raise Rejected("text_too_long", f"{len(transcript)} characters > {limits.max_text_chars}")
    if "\x00" in transcript:
        raise Rejected("bad_text", "text contains NUL characters")
    _require_utf8(transcript, "text")
    audio = _frames(message.get("audio"), "audio", limits)
    visual = _frames(message.get("visual"), "visual", limits)
    meta = message.get("meta", {})
    if not isinstance(meta, dict):
        raise Rejected("wrong_type", f"meta is {type(meta).__name__}, not an object")
    _require_utf8(json.dumps(meta, ensure_ascii=False), "meta")
    meta_bytes = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
    if len(meta_bytes) > MAX_META_BYTES:
        raise Rejected("meta_too_large", f"meta is {len(meta_bytes)} bytes > {MAX_META_BYTES}")
    digest = hashlib.sha256()
    for part in (stream_id, repr(event_time), transcript, meta_bytes.decode(), audio.shape, visual.shape):
        digest.update(str(part).encode() + b"\x1f")
    digest.update(audio.tobytes())
    digest.update(visual.tobytes())
    return Segment(stream_id, segment_id, event_time, transcript, audio, visual, meta, digest.hexdigest())


def _no_constants(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """JSON objects with a key twice are refused: parsers disagree on which value wins."""
    result = dict(pairs)
    if len(result) != len(pairs):
        seen = set()
        repeated = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise Rejected("duplicate_key", f"key {repeated[:40]!r} appears more than once in one object")
    return result


def _depth_exceeds(value, limit: int) -> bool:
    """Iterative, so that measuring a hostile document cannot itself overflow the stack."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            if depth > limit:
                return True
            stack.extend((child, depth + 1) for child in item)
    return False


def _require_utf8(text: str, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise Rejected("bad_text", f"{what} holds {text[e.start:e.end]!a}, which is not encodable as UTF-8 "
                                   f"(a lone surrogate escape)") from None


def _path_like(value: str) -> bool:
    """Ids end up in keys, file names and URLs: no absolute, empty, '.' or '..' path components."""
    return value.startswith("/") or value.endswith("/") or any(p in ("", ".", "..") for p in value.split("/"))


def _identifier(message: dict, key: str, max_len: int) -> str:
    value = message[key]
    if not isinstance(value, str):
        raise Rejected("wrong_type", f"{key} is {type(value).__name__}, not a string")
    if not value:
        raise Rejected("bad_id", f"{key} is empty")
    if len(value) > max_len:
        raise Rejected("bad_id", f"{key} is {len(value)} characters > {max_len}")
    if not ID_PATTERN.fullmatch(value):
        raise Rejected("bad_id", f"{key} {value[:40]!a} has characters outside [A-Za-z0-9._:@/-]")
    if _path_like(value):
        raise Rejected("bad_id", f"{key} {value[:40]!r} looks like a path (leading or trailing '/', '//', "
                                 f"'.' or '..' parts)")
    return value


def _event_time(value, limits: Limits, now: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Rejected("wrong_type", f"event_time is {type(value).__name__}, not a number of unix seconds")
    try:
        value = float(value)
    except OverflowError:
        raise Rejected("bad_timestamp", f"event_time is an integer of {value.bit_length()} bits, out of range") from None
    if not math.isfinite(value):
        raise Rejected("bad_timestamp", "event_time is not finite")
    if value < EARLIEST_EVENT_TIME:
        raise Rejected("bad_timestamp", f"event_time {value} is before 2000-01-01 (seconds expected, not ms?)")
    if value > now + limits.max_future_s:
        if value > 1e11:
            raise Rejected("bad_timestamp", f"event_time {value} looks like milliseconds; send unix seconds")
        raise Rejected("bad_timestamp", f"event_time is {value - now:.0f}s in the future (> {limits.max_future_s:.0f}s)")
    return value


def _frames(value, modality: str, limits: Limits) -> np.ndarray:
    if value is None:  # absent: the segment lacks this modality
        return np.zeros((0, limits.widths.get(modality, 1)), np.float32)
    if not isinstance(value, dict):
        raise Rejected("wrong_type", f"{modality} is {type(value).__name__}, not an object with shape and f32")
    if set(value) != {"shape", "f32"}:
        raise Rejected("bad_frames", f"{modality} must have exactly the keys shape and f32, has {sorted(value)}")
    shape, data = value["shape"], value["f32"]
    if (not isinstance(shape, list) or len(shape) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in shape)):
        raise Rejected("bad_shape", f"{modality}.shape must be [frames, width] integers, got {shape!r}")
    frames, width = shape
    if frames < 0:
        raise Rejected("bad_shape", f"{modality} has {frames} frames")
    if frames > limits.max_frames:
        raise Rejected("too_many_frames", f"{modality} has {frames} frames > {limits.max_frames}")
    expected = limits.widths.get(modality)
    if expected is not None and width != expected:
        raise Rejected("wrong_width", f"{modality} width {width}, the model expects {expected}")
    if width < 1:
        raise Rejected("wrong_width", f"{modality} width {width} < 1")
    if not isinstance(data, str):
        raise Rejected("wrong_type", f"{modality}.f32 is {type(data).__name__}, not a base64 string")
    try:
        buf = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as e:
        raise Rejected("bad_base64", f"{modality}.f32 is not base64 ({e})") from None
    if len(buf) != 4 * frames * width:
        raise Rejected("size_mismatch", f"{modality}.f32 holds {len(buf)} bytes, shape {shape} needs {4 * frames * width}")
    array = np.frombuffer(buf, dtype="<f4").reshape(frames, width).astype(np.float32)
    if not np.all(np.isfinite(array)):
        raise Rejected("non_finite", f"{modality} holds NaN or Inf")
    if array.size and float(np.abs(array).max()) > MAX_FEATURE_ABS:
        raise Rejected("out_of_range", f"{modality} holds {float(np.abs(array).max()):.3g}, beyond "
                       f"+-{MAX_FEATURE_ABS:g}")
    return array
