"""The dashboard against a real redis-server filled through TrendStore.record: its data layer
(dashboard.data) by hand-worked numbers, and the whole page with Streamlit's AppTest."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import redis
import streamlit as st
from streamlit.testing.v1 import AppTest

from dashboard import data
from stream.errors import UserError
from stream.store import StoreSettings, TrendStore
from tests.conftest import an_alert, free_ports

APP = str(Path(__file__).resolve().parents[1] / "dashboard" / "app.py")
NOW = 1_764_000_000.0  # a whole minute: bucket arithmetic below is exact
HOSTILE = "<script>alert(1)</script>\x1b[31m**bold**"


@pytest.fixture
def store(redis_url):
    s = TrendStore(redis_url, StoreSettings())
    s.redis.flushdb()
    return s


def fill(store: TrendStore, stream: str, scores: list[float], start: float, step: float, now: float = NOW) -> None:
    for i, score in enumerate(scores):
        assert store.record(stream, f"{stream}/{i}", f"d{i}", start + i * step, score, f"said {i}", now=now) == "new"


def test_overview_figures_are_the_stores(store):
    # 40 scores a minute apart ending at NOW-60: the last 10 minutes of event time hold the last
    # 10 scores, the 10 minutes before hold the 10 before those.
    scores = [0.1 * (i % 7) - 0.2 for i in range(40)]
    fill(store, "calm", scores, NOW - 60 - 39 * 60, 60)
    fill(store, "falling", [1.0] * 30 + [-1.5] * 10, NOW - 60 - 39 * 60, 60)
    ov = data.load_overview(store, NOW, sort="change")
    assert ov.total_streams == ov.matching == 2 and ov.resolution == 60
    first, second = ov.rows
    assert first.stream_id == "falling"
    assert first.mean_window == pytest.approx(-1.5) and first.change == pytest.approx(-2.5)
    calm = store.totals("calm")
    assert second.count == calm["count"] == 40 and second.ewma == pytest.approx(calm["ewma"])
    assert second.mean_window == pytest.approx(sum(scores[-10:]) / 10)
    assert second.change == pytest.approx(sum(scores[-10:]) / 10 - sum(scores[-20:-10]) / 10)
    assert second.sparkline == pytest.approx(scores[-20:])  # the two windows' buckets
    assert (first.window_s, first.before_s) == (600, 600)  # older than two windows: 10 min against 10 min
    # The complete 10 s buckets of the last minute [NOW-60, NOW): one segment per stream, at
    # NOW-60, in its first bucket, so the whole minute counts.
    assert (ov.segments_per_minute, ov.rate_span_s, ov.rate_resolution) == (pytest.approx(2.0), 60, 10)
    assert [r.stream_id for r in data.load_overview(store, NOW, sort="negative").rows] == ["falling", "calm"]


def test_young_streams_have_a_rate_and_a_change_over_the_data_they_have(store):
    # "fast": a segment every 2 s from NOW-45 to NOW-1. The complete 10 s buckets of the last
    # minute hold 0, 3, 5, 5, 5, 5 segments; the one with 3 began mid-bucket, so the rate is over
    # the 4 after it: 20 segments in 40 s.
    fill(store, "fast", [0.0] * 23, NOW - 45, 2)
    # "young": a segment every 30 s from NOW-600 to NOW-330, two in each of the minutes NOW-600 ...
    # NOW-360: 5 buckets, all its data, so the newer 2 (4 scores of -1) against the older 3 (6 of 0.5).
    fill(store, "young", [0.5] * 6 + [-1.0] * 4, NOW - 600, 30)
    ov = data.load_overview(store, NOW, sort="change")
    assert (ov.segments_per_minute, ov.rate_span_s) == (pytest.approx(30.0), 40)
    young, fast = ov.rows
    assert young.stream_id == "young" and (young.window_s, young.before_s) == (120, 180)
    assert young.mean_window == pytest.approx(-1.0) and young.change == pytest.approx(-1.5)
    # All of "fast" is in one minute: a mean, nothing to compare it with yet.
    assert fast.mean_window == 0.0 and fast.change is None and fast.window_s == 60


def test_search_sort_paging_and_staleness(store):
    for i in range(7):
        fill(store, f"brand-{i}", [i / 10], NOW - 100, 1, now=NOW - 1000 * i)
    fill(store, "other", [0.0], NOW - 100, 1, now=NOW)
    ov = data.load_overview(store, NOW, query="BRAND", sort="recent", page=2, page_size=3, stale_after_s=1500)
    assert (ov.matching, ov.total_streams, ov.pages) == (7, 8, 3)
    assert [r.stream_id for r in ov.rows] == ["brand-3", "brand-4", "brand-5"]
    assert [r.stale for r in ov.rows] == [True, True, True]
    last = data.load_overview(store, NOW, query="brand", page=99, page_size=3)
    assert [r.stream_id for r in last.rows] == ["brand-6"]
    assert data.load_overview(store, NOW, query="nothing-like-this").rows == []
    with pytest.raises(ValueError, match="unknown sort"):
        data.load_overview(store, NOW, sort="alphabetical")


def test_overview_reads_in_a_fixed_number_of_round_trips(store):
    from dashboard.bench import RoundTrips

    def round_trips(n_streams: int) -> int:
        store.redis.flushdb()
        for i in range(n_streams):
            fill(store, f"s{i}", [0.5, -0.5], NOW - 700, 400)
        with RoundTrips() as counted:
            ov = data.load_overview(store, NOW)
        assert ov.total_streams == n_streams
        return counted.count

    assert round_trips(3) == round_trips(300) == 5


def test_trend_ewma_follows_segment_level_ewma_for_equal_scores():
    buckets = [{"start": 0, "count": 3, "mean": 1.0}, {"start": 10, "count": 2, "mean": -1.0}]
    e = None
    for s in [1.0] * 3 + [-1.0] * 2:
        e = s if e is None else 0.1 * s + 0.9 * e
    assert data.with_ewma(buckets, 0.1)[-1]["ewma"] == pytest.approx(e)


def test_alerts_filters_and_stream_detail(store):
    fill(store, "a", [0.0, 1.0, 2.0], NOW - 30, 10)
    for i, (stream, direction) in enumerate([("a", "up"), ("b", "down"), ("a", "down")]):
        store.record_alert(stream, an_alert(stream, direction, 1.0 if direction == "up" else -1.0, NOW - 100 + i,
                                            z=5.0, reference={"mean": 0.0}, recent={"mean": 1.0}), {"armed": False})
    assert [(a.stream_id, a.direction) for a in data.load_alerts(store)] == [("a", "down"), ("b", "down"),
                                                                                  ("a", "up")]
    assert [a.direction for a in data.load_alerts(store, stream="a", direction="down")] == ["down"]
    with pytest.raises(ValueError, match="direction"):
        data.load_alerts(store, direction="sideways")
    detail = data.load_stream(store, "a", 10)
    assert [b["mean"] for b in detail.buckets] == [0.0, 1.0, 2.0]
    assert [s["score"] for s in detail.recent] == [2.0, 1.0, 0.0] and len(detail.alerts) == 2
    with pytest.raises(ValueError, match="not kept"):
        data.load_stream(store, "a", 7)


# ---- the whole page, with AppTest --------------------------------------------------------------
def page(monkeypatch, url: str, **state) -> AppTest:
    monkeypatch.setenv("TECAFLOW_REDIS_URL", url)
    st.cache_resource.clear()  # settings and the connection are cached per process
    at = AppTest.from_file(APP, default_timeout=30)
    for key, value in state.items():
        at.session_state[key] = value
    return at.run()


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def all_text(at: AppTest) -> str:
    return "\n".join(t.value for t in at.text)


def test_page_shows_the_stores_numbers_in_every_view(store, redis_url, monkeypatch):
    import time
    now = time.time()
    fill(store, "brand-1", [0.5, 0.7, -0.2, 1.1], now - 40, 10, now=now)
    fill(store, "brand-2", [-2.0, -1.0], now - 20, 10, now=now)
    drivers = {"segments": [{"segment_id": "brand-2/1", "event_time": now - 20, "score": -2.0, "text": "refund please"}],
               "modalities": {"change": {"words": -0.55, "audio": -0.04, "visual": 0.01}, "moved_most": "words",
                              "segments": {"window": 2, "reference": 0}},
               "terms": [{"term": "refund", "z": 2.5, "window": 1, "reference": 0}],
               "window_segments": 2, "reference_segments": 0}
    store.record_alert("brand-2", an_alert("brand-2", "down", -1.25, now - 10, z=-6.5, reference={"mean": 0.3},
                                           recent={"mean": -0.95}, drivers=drivers), {"armed": False})
    at = page(monkeypatch, redis_url)
    assert not at.exception
    shown = metrics(at)
    assert shown["Streams"] == "2" and shown["Alerts in the last hour"] == "1"
    table = at.dataframe[0].value
    assert sorted(table["stream"]) == ["brand-1", "brand-2"]
    row = table.set_index("stream").loc["brand-1"]
    assert row["segments"] == 4 and row["EWMA"] == pytest.approx(store.totals("brand-1")["ewma"])

    at = page(monkeypatch, redis_url, view="Stream", stream="brand-1")
    assert not at.exception
    shown = metrics(at)
    totals = store.totals("brand-1")
    assert shown["Segments"] == "4" and shown["EWMA"] == f"{totals['ewma']:+.3f}"
    assert shown["Std"] == f"{totals['std']:.3f}"
    assert list(at.dataframe[0].value["score"]) == [1.1, -0.2, 0.7, 0.5]
    assert "Stream brand-1" in all_text(at)

    at = page(monkeypatch, redis_url, view="Alerts")
    assert not at.exception
    assert "brand-2  ▼ down by 1.25: +0.30 → -0.95  (z -6.5)" in all_text(at)
    assert "about refund · moved: words -0.55, voice -0.04, face +0.01 (most: words)" in all_text(at)
    assert list(at.dataframe[0].value["transcript"]) == ["refund please"]
    assert list(at.dataframe[1].value["term"]) == ["refund"]
    at.button(key=next(b.key for b in at.button if b.key.startswith("open-"))).click().run()
    assert at.session_state["view"] == "Stream" and at.session_state["stream"] == "brand-2"
    assert metrics(at)["Segments"] == "2"
    assert "Centred on an alert" in all_text(at)


def test_empty_store_says_what_to_run(store, redis_url, monkeypatch):
    at = page(monkeypatch, redis_url)
    assert not at.exception
    assert "make demo" in at.info[0].value and "tecaflow replay" in at.info[0].value


@pytest.mark.parametrize("scheme, db", [("redis", "/0"), ("redis+cluster", "")])
def test_redis_down_shows_a_banner_without_the_password(monkeypatch, scheme, db):
    """A Redis Cluster client fails in its constructor, with an exception outside redis-py's
    usual ones: the page used to die with a traceback there instead of retrying."""
    port = free_ports(1)[0]
    for view in ("Overview", "Stream", "Alerts"):
        at = page(monkeypatch, f"{scheme}://:hunter2@127.0.0.1:{port}{db}", view=view)
        assert not at.exception
        banner = at.error[0].value
        assert f"{scheme}://:***@127.0.0.1:{port}{db}" in banner and "retrying every" in banner
        assert "hunter2" not in banner and all("hunter2" not in c.value for c in at.sidebar.caption)


def test_hostile_ids_and_transcripts_are_shown_as_text(store, redis_url, monkeypatch):
    store.record(HOSTILE, "h/1", "d", NOW, -1.0, "<img src=x onerror=alert(1)> *not markdown*", now=NOW)
    at = page(monkeypatch, redis_url, view="Stream", stream=HOSTILE)
    assert not at.exception
    assert "Stream <script>alert(1)</script>\\u001b[31m**bold**" in all_text(at)
    assert all("<script>" not in m.value and "onerror" not in m.value for m in at.markdown)
    assert list(at.dataframe[0].value["transcript"]) == ["<img src=x onerror=alert(1)> *not markdown*"]
    at = page(monkeypatch, redis_url)
    assert list(at.dataframe[0].value["stream"]) == ["<script>alert(1)</script>\\u001b[31m**bold**"]


def test_a_read_only_redis_user_is_enough(store, redis_url, monkeypatch):
    import time
    now = time.time()
    fill(store, "ro-1", [0.25, 0.75], now - 20, 10, now=now)
    store.record_alert("ro-1", an_alert("ro-1", "up", 0.5, now - 5, z=4.8, reference={"mean": 0.0},
                                        recent={"mean": 0.5}), {"armed": False})
    store.redis.execute_command("ACL", "SETUSER", "dash", "reset", "on", ">dash-pw", "~tf:*", "resetchannels",
                                "-@all", "+@read", "+@connection")
    try:
        url = redis_url.replace("redis://", "redis://dash:dash-pw@")
        reader = redis.Redis.from_url(url)
        with pytest.raises(redis.exceptions.NoPermissionError):
            reader.set("tf:{ro-1}:totals", "overwritten")  # the ACL really forbids writes
        for view, state in (("Overview", {}), ("Stream", {"stream": "ro-1"}), ("Alerts", {})):
            at = page(monkeypatch, url, view=view, **state)
            assert not at.exception and not at.error, (view, [e.value for e in at.error])
        assert metrics(page(monkeypatch, url, view="Stream", stream="ro-1"))["Segments"] == "2"
        assert "ro-1  ▲ up by 0.50" in all_text(page(monkeypatch, url, view="Alerts"))
    finally:
        store.redis.execute_command("ACL", "DELUSER", "dash")


def test_the_cli_runs_streamlit_headless_on_loopback():
    from dashboard.cli import dashboard_command
    cmd = dashboard_command(8765, "127.0.0.1")
    assert cmd[1:4] == ["-m", "streamlit", "run"] and Path(cmd[4]).name == "app.py" and Path(cmd[4]).exists()
    assert cmd[cmd.index("--server.address") + 1] == "127.0.0.1" and cmd[cmd.index("--server.port") + 1] == "8765"
    with pytest.raises(UserError, match="not a TCP port"):
        dashboard_command(70000, "127.0.0.1")


def test_window_means_ignore_buckets_older_than_two_windows():
    sums = {0: (1, 100.0), 1200: (1, 1.0), 1800: (2, 6.0)}
    # Data before the two windows (4 segments, 3 in them): the last 10 minutes against the 10 before.
    assert data.window_means(sums, 1830.0, 60, count=4) == data.Windows(3.0, 1.0, 600, 600)
    assert data.window_means({}, 1830.0, 60) == data.Windows(None, None, 600, 600)
    assert data.window_starts(1830.0, 60) == list(range(1800 - 19 * 60, 1801, 60))
    assert math.isclose(data.overview_resolution((10, 60, 600)), 60)
    assert data.overview_resolution((300, 3600)) == 300


def test_a_young_streams_change_compares_the_halves_of_its_data():
    # All 3 segments in the windows, in buckets 1200 ... 1800 (11 minutes): the newer 5 buckets
    # (1560 ... 1800, mean 3) against the older 6 (1200 ... 1500, mean 1).
    assert data.window_means({1200: (1, 1.0), 1800: (2, 6.0)}, 1830.0, 60, count=3) == data.Windows(3.0, 1.0, 300, 360)
    # Two buckets: one against the other.
    assert data.window_means({1740: (2, 2.0), 1800: (1, -1.0)}, 1830.0, 60, count=3) == data.Windows(-1.0, 1.0, 60, 60)
    # One bucket: its mean, nothing to compare it with.
    assert data.window_means({1800: (2, 6.0)}, 1830.0, 60, count=2) == data.Windows(3.0, None, 60, 60)
    # Segments recorded between the totals read and the buckets read still count as young.
    assert data.window_means({1740: (2, 2.0), 1800: (3, 0.0)}, 1830.0, 60, count=4) == data.Windows(0.0, 1.0, 60, 60)


def test_the_rate_is_over_the_buckets_that_have_data():
    assert data.rate_resolution((10, 60, 600)) == 10 and data.rate_resolution((60, 600)) == 60
    assert data.rate_starts(1835.0, 10) == [1770, 1780, 1790, 1800, 1810, 1820]
    assert len(data.rate_starts(1835.0, 60)) == data.RATE_BUCKETS  # a coarse finest resolution: 6 minutes
    assert data.rate_over_data([4, 4, 4, 4, 4, 8], 10) == (pytest.approx(28.0), 60)  # data all along: 28 in 60 s
    assert data.rate_over_data([0, 3, 5, 5, 5, 5], 10) == (pytest.approx(30.0), 40)  # began mid-bucket: 20 in 40 s
    assert data.rate_over_data([0, 0, 0, 0, 0, 7], 10) == (pytest.approx(42.0), 10)  # one bucket yet: 7 in 10 s
    assert data.rate_over_data([0] * 6, 10) == (0.0, 60)


def detail_of(starts: list[int], resolution: int, focus: float | None = None) -> data.StreamDetail:
    return data.StreamDetail("s", {}, resolution, [{"start": float(t)} for t in starts], [], [], focus=focus)


def test_the_chart_spans_the_data_and_an_alert_opens_it_centred_but_clipped():
    assert data.chart_span(detail_of([], 60)) is None
    assert data.chart_span(detail_of([0, 60, 120], 60)) == (0, 180)
    # 3 minutes of data: the alert's 60-minute view is clipped to them, not a sliver of it.
    assert data.chart_span(detail_of([0, 60, 120], 60, focus=100.0)) == (0, 180)
    # 100 minutes of data: 30 minutes either side of the alert.
    assert data.chart_span(detail_of(list(range(0, 6000, 60)), 60, focus=3000.0)) == (1200.0, 4800.0)
    assert data.chart_span(detail_of(list(range(0, 6000, 60)), 60, focus=5950.0)) == (4150.0, 6000)
    # An alert older than the kept buckets of this resolution stays in view.
    assert data.chart_span(detail_of([7200, 7260], 60, focus=100.0)) == (100.0, 1900.0)


def test_time_axis_labels_are_distinct_at_every_span():
    from zoneinfo import ZoneInfo
    from dashboard.views import time_ticks
    utc = ZoneInfo("UTC")  # NOW is 2025-11-24 16:00:00 UTC

    def labels(lo, hi, resolution):
        ticks, fmt = time_ticks(lo, hi, resolution, utc)
        shown = [t.strftime(fmt) for t in ticks]
        assert len(set(shown)) == len(shown), shown
        return shown

    # 1-minute buckets over 3 minutes: one label a minute (it repeated "16:00" a dozen times).
    assert labels(NOW - 10, NOW + 170, 60) == ["16:00", "16:01", "16:02"]
    assert labels(NOW, NOW + 720, 60) == ["16:00", "16:02", "16:04", "16:06", "16:08", "16:10", "16:12"]
    # 10 s buckets over a minute: seconds shown.
    assert labels(NOW + 5, NOW + 60, 10) == ["16:00:10", "16:00:20", "16:00:30", "16:00:40", "16:00:50", "16:01:00"]
    # 10-minute buckets over 60 hours: every 12 hours, with the date.
    assert labels(NOW, NOW + 60 * 3600, 600) == ["Nov 25 00:00", "Nov 25 12:00", "Nov 26 00:00", "Nov 26 12:00",
                                                 "Nov 27 00:00"]


def test_the_stream_header_says_what_audio_and_vision_did(redis_url):
    from dashboard.views import modality_line
    store = TrendStore(redis_url, StoreSettings())
    store.redis.flushdb()
    store.record("mv", "mv/1", "d1", NOW - 5, 1.0, "a", contributions={"audio": 0.4, "visual": -0.2}, text_only=0.8)
    store.record("mv", "mv/2", "d2", NOW - 4, 0.5, "b", missing=("visual",), contributions={"audio": 0.2},
                 text_only=0.3)
    line = modality_line(store.totals("mv"))
    assert line == "Audio moved scores by +0.30 on average; vision moved scores by -0.20 on average; 50% had no vision"
    store.record("old", "old/1", "d1", NOW - 5, 1.0, "before attribution existed")
    assert modality_line(store.totals("old")) == ""


def test_the_trend_chart_draws_the_span_with_distinct_ticks():
    from zoneinfo import ZoneInfo
    from dashboard.views import trend_chart
    buckets = [{"start": NOW + 60 * k, "count": 5, "mean": 0.1 * k, "std": 0.2, "min": -1.0, "max": 1.0,
                "ewma": 0.0} for k in range(3)]
    detail = data.StreamDetail("s", {}, 60, buckets, [], [an_alert("s", "down", -1.0, NOW + 100)], focus=NOW + 100)
    x = trend_chart(detail, ZoneInfo("UTC")).to_dict()["layer"][0]["encoding"]["x"]
    # Opened from its alert, a 3-minute stream fills the chart (16:00 to 16:03), one tick a minute.
    assert x["scale"]["domain"] == [{"year": 2025, "month": 11, "date": 24, "hours": 16, "minutes": m, "seconds": 0}
                                    for m in (0, 3)]
    assert x["axis"]["format"] == "%H:%M" and [v["minutes"] for v in x["axis"]["values"]] == [0, 1, 2, 3]


def test_score_columns_of_the_last_segments_share_one_format(store, redis_url, monkeypatch):
    store.record("mv", "mv/1", "d1", NOW - 5, 1.0, "a", contributions={"audio": 0.4, "visual": -0.0015}, text_only=0.8)
    store.record("mv", "mv/2", "d2", NOW - 4, -0.25, "b", contributions={"audio": -0.053}, missing=("visual",),
                 text_only=-0.2)
    at = page(monkeypatch, redis_url, view="Stream", stream="mv")
    assert not at.exception
    table = at.dataframe[0]
    assert list(table.value["audio moved it"]) == [-0.053, 0.4]
    formats = {name: c.get("type_config", {}).get("format") for name, c in json.loads(table.proto.columns).items()}
    assert formats["score"] == formats["audio moved it"] == formats["visual moved it"] == "%+.3f"


def test_the_overview_names_the_windows_it_compares(store, redis_url, monkeypatch):
    import time
    now = time.time()
    # Scores that only fall, over 5 minutes: whatever the minute boundaries, the newer half of its
    # buckets is lower than the older half.
    fill(store, "young", [0.5] * 6 + [-1.0] * 4, now - 600, 30, now=now)
    at = page(monkeypatch, redis_url)
    assert not at.exception
    row = at.dataframe[0].value.set_index("stream").loc["young"]
    assert row["change"] < 0 and re.fullmatch(r"last [23] min vs 3 min before", row["change over"])
    assert f"▼ young  {row['change']:+.2f}, {row['change over']}" in all_text(at)
    assert "Segments / min, last 60 s" in metrics(at)  # no data in the last minute: all of it
