"""Text feeds: JSON Lines (one post per line, from a file or stdin) to segment messages.

`--fields stream=author,time=created_at,text=body,id=post_id` says which field holds what
(a dotted name reaches into nested objects: user.screen_name). `text` is required; without
`stream` every post goes to --stream-id; without `time` a post happened when it was read;
without `id` its id is its time and a hash of its text.

A line that cannot become a segment (not UTF-8, not JSON, longer than
TECAFLOW_INGEST_MAX_LINE_BYTES, a field missing or of the wrong type, or anything the worker
would reject) is a `BadLine`: reported with its line number and sent to the dead-letter topic
with its reason and its bytes. The lines after it are ingested as usual.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO, Iterator

from stream.config import Settings
from stream.errors import UserError
from stream.ingest.segments import Message, checked_stream_id, post_segment
from stream.schema import Rejected

ROLES = ("stream", "time", "text", "id")


@dataclass(frozen=True)
class BadLine:
    where: str  # "line 7" of a feed, "at 12.3 s" of media
    reason: str  # a short code, as the worker's DLQ records have
    detail: str
    raw: bytes


@dataclass(frozen=True)
class Fields:
    text: str
    stream: str | None = None
    time: str | None = None
    id: str | None = None

    @classmethod
    def parse(cls, spec: str) -> "Fields":
        mapping = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            role, sep, name = part.partition("=")
            if not sep or role not in ROLES or not name:
                raise UserError(f"--fields {spec!r}: expected ROLE=FIELD pairs with ROLE one of {', '.join(ROLES)}, "
                                f"e.g. stream=author,time=created_at,text=body")
            if role in mapping:
                raise UserError(f"--fields {spec!r}: {role} named twice")
            mapping[role] = name
        if "text" not in mapping:
            raise UserError(f"--fields {spec!r}: name the text field (text=FIELD)")
        return cls(**mapping)


def read_lines(feed: BinaryIO, max_bytes: int) -> Iterator[tuple[int, bytes | None, bytes]]:
    """(line number, the line or None when it is longer than max_bytes, its first max_bytes),
    reading at most max_bytes + 1 at a time: a huge line never sits in memory whole."""
    number = 0
    while True:
        line = feed.readline(max_bytes + 1)
        if not line:
            return
        number += 1
        if len(line) <= max_bytes or line.endswith(b"\n"):
            yield number, line.rstrip(b"\r\n"), line
            continue
        head = line
        while line and not line.endswith(b"\n"):  # skip the rest of the huge line
            line = feed.readline(1 << 20)
        yield number, None, head


def posts(feed: BinaryIO, fields: Fields, default_stream: str | None, settings: Settings
          ) -> Iterator[Message | BadLine]:
    if fields.stream is None and default_stream is None:
        raise UserError("a text feed needs --stream-id or a stream field (--fields stream=FIELD,...)")
    if default_stream is not None:
        checked_stream_id(default_stream)
    for number, line, head in read_lines(feed, settings.ingest_max_line_bytes):
        if line is None:
            yield BadLine(f"line {number}", "too_large", f"longer than {settings.ingest_max_line_bytes} bytes "
                                              f"(TECAFLOW_INGEST_MAX_LINE_BYTES)", head)
        elif line.strip():
            yield post(number, line, fields, default_stream, settings)


def post(number: int, line: bytes, fields: Fields, default_stream: str | None, settings: Settings) -> Message | BadLine:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        return BadLine(f"line {number}", "undecodable", f"not UTF-8 ({e.reason} at byte {e.start})", line)
    try:
        record = json.loads(text)
    except ValueError as e:
        return BadLine(f"line {number}", "undecodable", f"not JSON ({str(e)[:200]})", line)
    if not isinstance(record, dict):
        return BadLine(f"line {number}", "not_an_object", f"a JSON {type(record).__name__}, not an object", line)
    try:
        stream_id = _string(record, fields.stream) if fields.stream else default_stream
        post_id = _string(record, fields.id) if fields.id else None
        message = post_segment(stream_id, _time(record, fields.time), _string(record, fields.text, empty=True),
                               _clean_id(post_id), number, settings)
    except Rejected as e:
        return BadLine(f"line {number}", e.reason, e.detail, line)
    return message


def _field(record: dict, name: str):
    value = record
    for key in name.split("."):
        if not isinstance(value, dict) or key not in value:
            raise Rejected("missing_field", f"no field {name}")
        value = value[key]
    return value


def _string(record: dict, name: str, empty: bool = False) -> str:
    value = _field(record, name)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and name != "text":
        value = str(value)  # numeric ids and user ids are common
    if not isinstance(value, str):
        raise Rejected("wrong_type", f"{name} is {type(value).__name__}, not a string")
    if not value and not empty:
        raise Rejected("missing_field", f"{name} is empty")
    return value


def _clean_id(post_id: str | None) -> str | None:
    """A post id as a segment id part: characters the schema refuses become '-'."""
    return None if post_id is None else re.sub(r"[^A-Za-z0-9._:@-]", "-", post_id)[:64]


def _time(record: dict, name: str | None) -> float:
    if name is None:
        return time.time()
    value = _field(record, name)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return unix_seconds(value)
        except ValueError as e:
            raise Rejected("bad_timestamp", f"{name} {e}") from None
    raise Rejected("wrong_type", f"{name} is {type(value).__name__}, not a time")


def unix_seconds(text: str) -> float:
    """Unix seconds, or an ISO 8601 time with its zone; a ValueError says which it is not."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text[:40]!r} is neither unix seconds nor ISO 8601") from None
    if parsed.tzinfo is None:
        raise ValueError(f"{text[:40]!r} has no time zone (add Z or +00:00)")
    return parsed.timestamp()
