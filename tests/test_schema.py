import json

import numpy as np
import pytest

from stream.schema import Limits, Rejected, decode_segment, encode_segment
from tests.malformed import MAX_FRAMES, WIDTHS, catalogue, valid_bytes

LIMITS = Limits(widths=WIDTHS, max_frames=MAX_FRAMES)


def test_round_trip_is_exact():
    audio = np.random.default_rng(0).normal(size=(7, 5)).astype(np.float32)
    visual = np.random.default_rng(1).normal(size=(3, 20)).astype(np.float32)
    raw = encode_segment("brand-1", "brand-1/7", 1_764_000_000.25, "ça va très bien", audio, visual, {"lang": "fr"})
    seg = decode_segment(raw, LIMITS, now=1_764_000_001)
    assert (seg.stream_id, seg.segment_id, seg.event_time, seg.text) == ("brand-1", "brand-1/7", 1_764_000_000.25,
                                                                         "ça va très bien")
    np.testing.assert_array_equal(seg.audio, audio)
    np.testing.assert_array_equal(seg.visual, visual)
    assert seg.meta == {"lang": "fr"}


def test_digest_ignores_encoding_but_not_content():
    a = json.loads(valid_bytes(segment="x/1", text="same"))
    reordered = json.dumps(dict(reversed(list(a.items())))).encode()
    assert decode_segment(json.dumps(a).encode(), LIMITS).digest == decode_segment(reordered, LIMITS).digest
    a["text"] = "different"
    assert decode_segment(json.dumps(a).encode(), LIMITS).digest != decode_segment(reordered, LIMITS).digest


def test_empty_transcript_is_valid():
    assert decode_segment(valid_bytes(text=""), LIMITS).text == ""


def test_catalogue_has_at_least_thirty_distinct_kinds():
    cases = catalogue()
    assert len({name for name, _, _ in cases}) == len(cases) >= 30


@pytest.mark.parametrize("name, raw, reason", catalogue(), ids=[c[0] for c in catalogue()])
def test_every_malformed_message_is_rejected_with_its_reason(name, raw, reason):
    with pytest.raises(Rejected) as caught:
        decode_segment(raw, LIMITS)
    assert caught.value.reason == reason
    assert caught.value.detail  # a sentence for people, too


def test_a_score_is_published_as_the_scores_topic_has_always_carried_it():
    from stream.schema import Score
    score = Score("brand-42", "brand-42/000123", 1764000000.5, -0.42)
    assert json.dumps(score.message()) == ('{"stream_id": "brand-42", "segment_id": "brand-42/000123", '
                                           '"event_time": 1764000000.5, "score": -0.42}')
    assert Score.from_message(json.loads(json.dumps(score.message()))) == score


def test_an_alert_keeps_the_json_redis_and_the_alerts_topic_have_always_carried():
    from stream.schema import Alert
    alert = Alert("brand-42", 1764000012.0, "down", -1.12, (-1.4, -0.84), -7.9,
                  change_point={"event_time": 1764000004.0, "segments_since": 14},
                  evidence={"statistic": 9.1, "threshold": 8.2}, reference={"mean": 0.61, "sd": 0.74, "rho": 0.21, "n": 180},
                  recent={"mean": -0.51, "n": 14, "from": 1764000004.0, "to": 1764000012.0})
    kept = ('{"stream_id": "brand-42", "event_time": 1764000012.0, "direction": "down", "magnitude": -1.12, '
            '"interval": [-1.4, -0.84], "z": -7.9, "change_point": {"event_time": 1764000004.0, "segments_since": 14}, '
            '"evidence": {"statistic": 9.1, "threshold": 8.2}, "reference": {"mean": 0.61, "sd": 0.74, "rho": 0.21, '
            '"n": 180}, "recent": {"mean": -0.51, "n": 14, "from": 1764000004.0, "to": 1764000012.0}}')
    assert json.dumps(alert.fields()) == json.dumps(alert.message()) == kept  # no id until Redis gives it one
    recorded = Alert.from_message(json.loads(kept), "1764000012345-0")
    assert json.dumps(recorded.message()) == '{"id": "1764000012345-0", ' + kept[1:]
    assert Alert.from_message(json.loads(json.dumps(recorded.message()))) == recorded
