"""Fuzzing the segment decoder: whatever the bytes, it returns a Segment or raises Rejected with a
documented reason, never another exception (one message must never be able to fail its batch).
Bounded (a few hundred examples per property, derandomised) so that it runs in CI in seconds."""
import json
import re
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.schema import Limits, Rejected, Segment, decode_segment
from tests.malformed import MAX_FRAMES, WIDTHS, valid

LIMITS = Limits(widths=WIDTHS, max_frames=MAX_FRAMES)
MESSAGES = Path(__file__).resolve().parents[1] / "docs" / "messages.md"
FUZZ = settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20)


def documented_reasons() -> set[str]:
    """The reject reasons the segment contract (docs/messages.md) lists: the decoder may give no other."""
    section = MESSAGES.read_text().split("`tecaflow-reason`", 1)[1].split("Decoding is total", 1)[0]
    return set(re.findall(r"`([a-z0-9_]+)`", section)) - {"reason", "detail"}


def outcome(raw: bytes) -> str:
    try:
        segment = decode_segment(raw, LIMITS)
    except Rejected as e:
        assert e.detail
        return e.reason
    assert isinstance(segment, Segment)
    segment.text.encode("utf-8")  # what the store will write must be encodable
    assert ".." not in segment.stream_id.split("/") and not segment.stream_id.startswith("/")
    return "accepted"


def check(raw: bytes) -> None:
    assert outcome(raw) in documented_reasons() | {"accepted"}


@FUZZ
@given(st.binary(max_size=300))
def test_arbitrary_bytes(raw):
    check(raw)


@FUZZ
@given(json_values)
def test_arbitrary_json_documents(value):
    check(json.dumps(value).encode())


@FUZZ
@given(st.sampled_from(["v", "stream_id", "segment_id", "event_time", "text", "audio", "visual", "meta"]),
       json_values | st.integers(min_value=-10**400, max_value=10**400) | st.text(alphabet=st.characters(), max_size=50))
def test_a_valid_message_with_one_field_replaced(key, value):
    message = valid(segment="fuzz/1")
    message[key] = value
    check(json.dumps(message).encode())


@FUZZ
@given(st.integers(min_value=0, max_value=400), st.binary(min_size=1, max_size=8))
def test_a_valid_message_with_bytes_spliced_in(at, splice):
    raw = json.dumps(valid(segment="fuzz/2")).encode()
    at = at % len(raw)
    check(raw[:at] + splice + raw[at:])


def test_the_readme_lists_the_reasons_the_decoder_gives():
    assert {"too_deep", "duplicate_key", "bad_text", "bad_timestamp", "bad_id"} <= documented_reasons()
