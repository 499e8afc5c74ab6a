import math

import pytest

from stream.store import StoreSettings, TrendStore
from tests.conftest import an_alert

# every test runs on a real Redis and a real Redis Cluster (the `store` fixture picks one per run)
pytestmark = pytest.mark.integration


@pytest.fixture(params=["single", "cluster"])
def store(request):
    """Every store test runs on one Redis and on a real three-node Redis Cluster."""
    url = request.getfixturevalue("redis_url" if request.param == "single" else "redis_cluster_url")
    s = TrendStore(url, StoreSettings(resolutions=(10, 60), buckets_kept=3, recent_segments=4, ewma_alpha=0.5))
    s.redis.flushdb()
    return s


def test_record_updates_every_structure(store):
    points = [(1000.0, 1.0), (1005.0, -0.5), (1012.0, 2.0), (1075.0, 0.25)]
    for i, (t, score) in enumerate(points):
        assert store.record("a", f"a/{i}", f"d{i}", t, score, f"text {i}", now=2000 + i) == "new"
    tot = store.totals("a")
    assert tot["count"] == 4 and tot["sum"] == pytest.approx(2.75)
    assert tot["std"] == pytest.approx(math.sqrt(sum(s * s for _, s in points) / 4 - (2.75 / 4) ** 2))
    ewma = 1.0
    for _, s in points[1:]:
        ewma = 0.5 * s + 0.5 * ewma
    assert tot["ewma"] == pytest.approx(ewma)
    assert tot["last_event_time"] == 1075.0 and tot["last_score"] == 0.25
    b10 = store.buckets("a", 10)
    assert [(b["start"], b["count"]) for b in b10] == [(1000, 2), (1010, 1), (1070, 1)]
    assert b10[0]["min"] == -0.5 and b10[0]["max"] == 1.0 and b10[0]["mean"] == pytest.approx(0.25)
    assert [(b["start"], b["count"]) for b in store.buckets("a", 60)] == [(960, 3), (1020, 1)]
    assert [r["segment_id"] for r in store.recent("a")] == ["a/3", "a/2", "a/1", "a/0"]
    assert store.streams()[0][0] == "a"


def test_exact_redelivery_changes_nothing_and_conflicts_are_refused(store):
    assert store.record("a", "a/1", "digest-1", 1000.0, 1.0, "x") == "new"
    assert store.record("a", "a/1", "digest-1", 1000.0, 1.0, "x") == "dup"
    assert store.record("a", "a/1", "digest-2", 1000.0, 9.0, "y") == "conflict"
    assert store.totals("a")["count"] == 1 and store.totals("a")["sum"] == 1.0
    assert len(store.window("a")) == 1


def test_retention_keeps_the_newest_buckets_and_recent_items(store):
    for i in range(10):
        store.record("a", f"a/{i}", f"d{i}", 1000.0 + 10 * i, float(i), "t")
    assert [b["start"] for b in store.buckets("a", 10)] == [1070, 1080, 1090]
    assert not store.redis.exists("tf:{a}:b10:1000")
    assert len(store.recent("a", 100)) == 4
    assert store.rolling_mean("a", 10, 2) == pytest.approx(8.5)


def test_alerts_and_detector_state(store):
    store.record_alert("a", an_alert("a", "down", -1.2), {"armed": False, "evaluated": 9})
    store.record_alert("b", an_alert("b", "up", 1.0), {"armed": False, "evaluated": 3})
    assert [a.stream_id for a in store.alerts()] == ["b", "a"]
    assert [a.stream_id for a in store.alerts(stream="a")] == ["a"]
    assert store.detector_state("a") == {"armed": False, "evaluated": 9}
    ids = store.record_alerts("a", [an_alert("a", event_time=1.0), an_alert("a", event_time=2.0)], {"evaluated": 12})
    assert len(ids) == 2 and [a.event_time for a in store.alerts(stream="a")[:2]] == [2.0, 1.0]
    assert store.detector_state("a") == {"armed": False, "evaluated": 12}


def test_a_batch_spanning_streams_keeps_its_order_and_catches_repeats(store):
    items = [("a", "a/1", "d1", 1000.0, 1.0, "x"), ("b", "b/1", "e1", 1000.0, -1.0, "y"),
             ("a", "a/1", "d1", 1000.0, 1.0, "x"), ("a", "a/2", "d2", 1001.0, 0.5, "z"),
             ("b", "b/1", "other", 1000.0, 2.0, "w")]
    assert store.record_many(items) == ["new", "new", "dup", "new", "conflict"]
    assert store.totals("a")["count"] == 2 and store.totals("b")["count"] == 1
    assert {s for s, _ in store.streams()} == {"a", "b"}


def test_the_streams_of_one_batch_land_on_several_cluster_nodes(redis_cluster_url):
    """The cluster case is only a proof when the streams really live on different nodes."""
    store = TrendStore(redis_cluster_url)
    store.redis.flushdb()
    assert store.cluster
    streams = [f"s{i}" for i in range(12)]
    store.record_many([(s, f"{s}/1", "d", 1000.0, 0.0, "") for s in streams])
    nodes = {store.redis.get_node_from_key("tf:{" + s + "}:totals").name for s in streams}
    assert len(nodes) == 3
    assert sorted(s for s, _ in store.streams()) == sorted(streams)


def test_an_alert_stays_in_the_outbox_until_it_is_marked_published(store):
    store.record_alert("a", an_alert("a", "down", -1.2), {"evaluated": 9})
    store.record_alert("a", an_alert("a", "up", 1.1), {"evaluated": 19})
    pending = store.unpublished_alerts("a")
    assert [a.direction for a in pending] == ["down", "up"]
    assert [a.id for a in pending] == [a.id for a in reversed(store.alerts(stream="a"))]
    store.mark_published(pending[:1])
    assert [a.direction for a in store.unpublished_alerts("a")] == ["up"]


def test_detection_reads_every_touched_stream_in_one_round_trip_as_one_by_one_reads_would(store):
    for stream in ("a", "b", "c"):  # on a cluster, these hash to different nodes' slots
        store.record_many([(stream, f"{stream}/{i}", "d", 1000.0 + i, 0.1 * i, "") for i in range(3)])
    store.record_alert("b", an_alert("b", "up", 1.0), {"evaluated": 2})
    store.save_detector_states({"a": {"evaluated": 1}, "c": {"evaluated": 3, "fit": [0.1, 0.2]}}, {"a": 0, "c": 0})
    seen = store.detection_inputs(["a", "b", "c", "never"])
    for stream in ("a", "b", "c", "never"):
        assert seen[stream].totals == store.totals(stream)
        assert seen[stream].state == store.detector_state(stream)
        assert seen[stream].window == store.window(stream)
        assert seen[stream].unpublished == store.unpublished_alerts(stream)
    assert seen["c"].state == {"evaluated": 3, "fit": [0.1, 0.2]} and [a.direction for a in seen["b"].unpublished] == ["up"]
    assert len(seen["a"].window) == 3 and seen["never"].totals == {}


def test_modalities_and_attribution_are_kept_per_segment_and_summed_per_bucket(store):
    store.record("m", "m/1", "d1", 1000.0, 1.0, "full", contributions={"audio": 0.5, "visual": -0.25}, text_only=0.75)
    store.record("m", "m/2", "d2", 1001.0, 0.2, "no face", missing=("visual",), contributions={"audio": 0.1},
                 text_only=0.1)
    store.record("m", "m/3", "d3", 1002.0, -1.0, "silent, no face", missing=("audio", "visual"))
    newest, middle, oldest = store.recent("m", 3)
    assert oldest["modalities"] == ["text", "audio", "visual"] and oldest["contributions"]["visual"] == -0.25
    assert middle["modalities"] == ["text", "audio"] and middle["text_only"] == 0.1
    assert newest["modalities"] == ["text"] and "contributions" not in newest
    for summary in (store.totals("m"), store.buckets("m", 10)[0]):
        assert summary["missing"] == {"audio": 1, "visual": 2}
        assert summary["moved"]["audio"] == pytest.approx((0.5 + 0.1) / 2)  # over the segments that had audio
        assert summary["moved"]["visual"] == pytest.approx(-0.25)
    # a redelivery changes none of it
    store.record("m", "m/2", "d2", 1001.0, 0.2, "no face", missing=("visual",), contributions={"audio": 0.1},
                 text_only=0.1)
    assert store.totals("m")["missing"] == {"audio": 1, "visual": 2}


def test_detector_state_and_alerts_are_written_only_over_the_state_detection_read(store):
    """Two workers detecting on one stream during a rebalance: the second to write finds the state
    moved on and writes nothing, so no alert is recorded twice and no state is rolled back."""
    for stream in ("a", "b"):  # different slots on a cluster
        store.save_detector_state(stream, {"evaluated": 10, "up": 0.0})
    assert store.save_detector_states({"a": {"evaluated": 20, "up": 1.0}, "b": {"evaluated": 15, "up": 2.0}},
                                      {"a": 10, "b": 10}) == []
    # worker 2 started from evaluated 10 too, and is later than worker 1
    assert store.save_detector_states({"a": {"evaluated": 25, "up": 9.0}, "b": {"evaluated": 30, "up": 9.0}},
                                      {"a": 10, "b": 15}) == ["a"]
    assert store.detector_state("a") == {"evaluated": 20, "up": 1.0}
    assert store.detector_state("b") == {"evaluated": 30, "up": 9.0}
    alert = an_alert("a", "up", 1.0)
    assert store.record_alerts("a", [alert], {"evaluated": 28}, over_evaluated=10) == []
    assert store.alerts(stream="a") == [] and store.unpublished_alerts("a") == []
    assert store.detector_state("a")["evaluated"] == 20
    (entry,) = store.record_alerts("a", [alert], {"evaluated": 28}, over_evaluated=20)
    assert [a.id for a in store.unpublished_alerts("a")] == [entry]
    assert store.detector_state("a")["evaluated"] == 28
    # a stream detection has never saved a state for starts from 0
    assert store.save_detector_states({"new": {"evaluated": 5}}, {"new": 0}) == []


def test_warm_up_autocorrelations_are_kept_for_every_worker_and_forgotten_when_their_stream_ends(store):
    store.record_warmup_rho({"a": [0.2, 100], "b": [0.3, 120]}, now=1000.0)
    assert sorted(store.warmup_rhos(60, now=1030.0)) == [(0.2, 100), (0.3, 120)]
    store.record_warmup_rho({"b": [0.31, 120]}, now=1100.0)  # b is still heard from, a has ended
    assert store.warmup_rhos(60, now=1130.0) == [(0.31, 120)]
    assert store.redis.hkeys(store.warmup_rho_key) == ["b"]  # the ended stream's is removed
    # the worker records them with the detector states, in the same round trip
    assert store.save_detector_states({"c": {"evaluated": 5}}, {"c": 3}, {"c": [0.1, 100]}) == ["c"]  # moved on
    assert store.save_detector_states({"d": {"evaluated": 5}}, {"d": 0}, {"c": [0.1, 100], "d": [0.4, 100]}) == []
    assert store.detector_state("d") == {"evaluated": 5}
    assert sorted(store.warmup_rhos(60)) == [(0.1, 100), (0.4, 100)]


def test_a_large_set_of_warm_ups_is_read_a_random_sample_at_a_time_and_cleaned_as_it_is_read(store):
    store.redis.delete(store.warmup_rho_key)
    store.record_warmup_rho({f"old{i}": [0.9, 100] for i in range(40)}, now=1000.0)  # streams that ended
    store.record_warmup_rho({f"s{i}": [round(0.001 * i, 3), 100] for i in range(160)}, now=5000.0)
    seen, stale_left = set(), []
    for _ in range(12):
        read = store.warmup_rhos(60, now=5030.0, sample=50)
        assert len(read) <= 50 and all(rho < 0.9 for rho, _ in read)  # only live streams' warm-ups
        seen.update(read)
        stale_left.append(sum(1 for k in store.redis.hkeys(store.warmup_rho_key) if k.startswith("old")))
    assert len(seen) > 100  # drawn at random, not the same 50 every minute
    assert stale_left == sorted(stale_left, reverse=True) and stale_left[-1] < 10  # ended ones pruned as met
    # all read at once when they fit in the sample, and every stale one left removed
    assert len(store.warmup_rhos(60, now=5030.0, sample=1000)) == store.redis.hlen(store.warmup_rho_key) == 160
