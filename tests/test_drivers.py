"""An alert's drivers (stream/alerts/drivers.py) on replays where the shifted segments, their
words and the modality that moved are known."""
import numpy as np
import pytest

from stream.alerts import drivers
from stream.schema import Alert
from tests.conftest import an_alert

VOCABULARY = ("the show was fine today and we talked about music games food weather travel friends "
              "work movies weekend plans coffee city news sport").split()
PLANTED = ("refund", "broken")


def replay(shifted_side: str, seed: int = 0, before: int = 150, after: int = 30, t0: float = 1764000000.0):
    """`before` steady segments, then `after` whose transcripts carry the planted words and whose
    `shifted_side` ("words", "audio" or "visual") moves the score down by 0.9."""
    rng = np.random.default_rng(seed)
    segments = []
    for i in range(before + after):
        shifted = i >= before
        text = list(rng.choice(VOCABULARY, 8))
        if shifted:
            text[rng.integers(8)] = PLANTED[i % 2]
        parts = {"words": 0.4 + 0.3 * rng.standard_normal(), "audio": 0.05 * rng.standard_normal(),
                 "visual": 0.05 * rng.standard_normal()}
        if shifted:
            parts[shifted_side] -= 0.9
        score = parts["words"] + parts["audio"] + parts["visual"]
        segments.append({"segment_id": f"s/{i:04d}", "event_time": t0 + i, "score": score, "text": " ".join(text),
                         "modalities": ["text", "audio", "visual"], "text_only": parts["words"],
                         "contributions": {"audio": parts["audio"], "visual": parts["visual"]}})
    return segments[::-1], t0 + before, t0 + before + after - 1  # newest first, as Redis keeps them


@pytest.mark.parametrize("side", ["words", "audio", "visual"])
def test_the_planted_words_rank_first_and_the_shifted_modality_is_named(side):
    recent, change_at, alert_at = replay(side)
    d = drivers.drivers(recent, change_at, alert_at, reference_mean=0.4, direction="down")
    assert (d["window_segments"], d["reference_segments"]) == (30, drivers.REFERENCE_SEGMENTS)
    assert {t["term"] for t in d["terms"][:2]} == set(PLANTED)
    assert all(t["z"] >= drivers.MIN_TERM_Z for t in d["terms"])
    assert d["modalities"]["moved_most"] == side
    assert d["modalities"]["change"][side] == pytest.approx(-0.9, abs=0.2)
    window_scores = sorted(s["score"] for s in recent if change_at <= s["event_time"] <= alert_at)
    assert [s["score"] for s in d["segments"]] == pytest.approx(window_scores[:drivers.TOP_SEGMENTS], abs=1e-4)


def test_no_term_is_a_driver_when_the_words_did_not_change():
    rng = np.random.default_rng(1)
    a = [" ".join(rng.choice(VOCABULARY, 8)) for _ in range(40)]
    b = [" ".join(rng.choice(VOCABULARY, 8)) for _ in range(200)]
    # at the 5 % level a few of the ~20 words may pass by chance; none as strongly as a planted word
    assert all(t["z"] < 3.5 for t in drivers.fightin_words(a, b))


def test_fightin_words_matches_monroe_et_al_on_a_hand_computed_case():
    # window: "a a b" (n 3), reference: "b b b c" (n 4); pooled prior alpha = counts: a 2, b 4, c 1, alpha0 7
    (term,) = [t for t in drivers.fightin_words(["a a b"], ["b b b c"], min_z=-np.inf) if t["term"] == "a"]
    delta = np.log((2 + 2) / (3 + 7 - 2 - 2)) - np.log((0 + 2) / (4 + 7 - 0 - 2))
    assert term["z"] == pytest.approx(delta / np.sqrt(1 / 4 + 1 / 2), abs=1e-3)


def test_drivers_are_a_function_of_the_segments_alone():
    recent, change_at, alert_at = replay("visual", seed=4)
    shuffled = [recent[i] for i in np.random.default_rng(0).permutation(len(recent))]
    assert (drivers.drivers(recent, change_at, alert_at, 0.4, "down")
            == drivers.drivers(shuffled, change_at, alert_at, 0.4, "down"))


def test_segments_after_the_alert_and_unattributed_segments_are_left_out():
    recent, change_at, alert_at = replay("audio", after=40)
    d = drivers.drivers(recent, change_at, alert_at - 10, 0.4, "down")
    assert d["window_segments"] == 30
    bare = [{k: v for k, v in s.items() if k not in ("text_only", "contributions")} for s in recent]
    assert drivers.drivers(bare, change_at, alert_at, 0.4, "down")["modalities"] is None


def test_an_alert_with_drivers_round_trips_and_an_old_one_keeps_its_bytes():
    recent, change_at, alert_at = replay("words")
    alert = an_alert("s", "down", -0.9, drivers=drivers.drivers(recent, change_at, alert_at, 0.4, "down"))
    assert Alert.from_message(alert.message()) == alert
    old = an_alert("s", "down", -0.9)
    assert "drivers" not in old.fields() and Alert.from_message(old.message()).drivers == {}


def test_a_window_of_one_repeated_word_has_no_term_and_no_error():
    assert drivers.fightin_words(["words"] * 20, ["words"] * 100) == []


def planted_alert(stream="brand-7"):
    recent, change_at, alert_at = replay("visual")
    return an_alert(stream, "down", -0.9, alert_at, drivers=drivers.drivers(recent, change_at, alert_at, 0.4, "down"))


def test_the_webhook_trends_and_dashboard_say_what_moved(redis_url):
    import os
    import subprocess
    import sys
    from zoneinfo import ZoneInfo

    from dashboard import views
    from stream.alerts.webhook import slack_payload
    from stream.store import TrendStore
    alert = planted_alert()
    payload = slack_payload(alert)
    assert "What moved: about “" in payload["text"] and "the face moved most" in payload["text"]
    assert payload["drivers"] == alert.drivers
    assert alert.drivers["segments"][0]["text"] in payload["attachments"][1]["text"]
    old = slack_payload(an_alert("brand-7", "down", -0.9))
    assert "What moved" not in old["text"] and len(old["attachments"]) == 1

    assert views.drivers_line(alert).startswith("about ") and "(most: face)" in views.drivers_line(alert)
    assert set(views.driver_terms_frame(alert)["term"][:2]) == set(PLANTED)
    frame = views.driver_segments_frame(alert, ZoneInfo("UTC"))
    assert list(frame["segment"]) == [s["segment_id"] for s in alert.drivers["segments"]]
    assert views.drivers_line(an_alert("s")) == ""

    store = TrendStore(redis_url)
    store.redis.flushdb()
    store.record_alert("brand-7", alert, {"evaluated": 1})
    out = subprocess.run([sys.executable, "-m", "stream.cli", "trends", "--stream", "brand-7"], capture_output=True,
                         text=True, timeout=120, env={**os.environ, "TECAFLOW_REDIS_URL": redis_url})
    assert out.returncode == 0, out.stderr
    assert "what moved: about “" in out.stdout and "the face moved most" in out.stdout
    assert f"{alert.drivers['segments'][0]['segment_id']}: {alert.drivers['segments'][0]['text']}" in out.stdout
