"""Roles, their events, the served versions, and the report and gate over what the worker
records: on a real Redis (and a Redis Cluster where slots matter)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import redis

from stream.contract import ModelContract
from stream.errors import UserError
from stream.schema import Alert
from stream.shadow import gate, pairs, roles, switch
from stream.shadow.report import build, text
from stream.store import ScoredSegment, TrendStore


@pytest.fixture
def client(redis_url):
    c = redis.Redis.from_url(redis_url, decode_responses=True)
    c.flushdb()
    return c


@pytest.fixture
def repo(tmp_path):
    for version in ("1", "2", "3"):
        (tmp_path / "tecafn" / version).mkdir(parents=True)
    (tmp_path / "tecafn" / "config.pbtxt").write_text(ModelContract({"audio": 4}, 16, 10).config_pbtxt())
    return tmp_path


def served_by_config(repo, model: str = "tecafn") -> list[int]:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as pb
    config = text_format.Parse((repo / model / "config.pbtxt").read_text(), pb.ModelConfig())
    assert config.version_policy.WhichOneof("policy_choice") == "specific"
    return list(config.version_policy.specific.versions)


def test_nominate_promote_rollback_stop_each_recorded_with_triton_serving_exactly_both(client, repo):
    store = TrendStore("", client=client)
    first = switch.nominate(store, repo, "2", "shadow start")  # no roles yet: live is the newest other version
    assert (first.live, first.candidate, first.epoch) == ("3", "2", 1)
    assert served_by_config(repo) == [2, 3]
    promoted, overridden = switch.promote(store, gate.Thresholds(min_segments=0, min_shadow_s=0), 5, force=False)
    assert (promoted.live, promoted.candidate, promoted.previous) == ("2", "3", "3")
    assert served_by_config(repo) == [2, 3]  # a promotion loads nothing
    back = switch.rollback(store, 5)
    assert (back.live, back.candidate, back.previous) == ("3", "2", None)
    with pytest.raises(UserError, match="nothing to roll back to"):
        switch.rollback(store, 5)
    stopped = switch.stop(store, repo)
    assert (stopped.live, stopped.candidate) == ("3", None) and served_by_config(repo) == [3]
    assert roles.read(client) == stopped
    history = roles.events(client)
    assert [e["action"] for e in history] == ["shadow stop", "rollback", "promote", "shadow start"]
    assert history[2]["from"]["live"] == "3" and history[2]["to"]["live"] == "2"
    assert history[2]["who"] and history[2]["at"] > 0


def test_a_change_over_roles_that_moved_is_refused(client, repo):
    store = TrendStore("", client=client)
    before = roles.read(client)
    switch.nominate(store, repo, "2", "shadow start")
    with pytest.raises(roles.RolesMoved):
        roles.change(client, before, roles.nominated(before, "1", "3"), "shadow start")
    assert roles.read(client).candidate == "2"


def test_a_version_not_in_the_repository_is_refused_and_the_config_kept(client, repo):
    before = (repo / "tecafn" / "config.pbtxt").read_text()
    with pytest.raises(UserError, match="not in"):
        switch.nominate(TrendStore("", client=client), repo, "9", "shadow start")
    assert (repo / "tecafn" / "config.pbtxt").read_text() == before
    assert not roles.read(client).recorded


@pytest.mark.parametrize("kind", ["single", "cluster"])
def test_a_candidate_keyspace_is_apart_from_the_live_one(request, kind):
    url = request.getfixturevalue("redis_url" if kind == "single" else "redis_cluster_url")
    live = TrendStore(url)
    shadow = TrendStore("", client=live.redis, keyspace=f"tf:candidate:7:{kind}")
    stream = f"keyspace-{kind}"
    assert live.record_many([ScoredSegment(stream, "s/1", "d", 1.0, 0.5, "x", version="6")]) == ["new"]
    assert shadow.record_many([ScoredSegment(stream, "s/1", "d", 1.0, 1.0, "x", version="7")]) == ["new"]
    assert live.totals(stream)["sum"] == 0.5 and shadow.totals(stream)["sum"] == 1.0
    assert live.held([(stream, "s/1")]) == [(0.5, "6")] and live.recent(stream)[0]["version"] == "6"
    assert stream in [s for s, _ in shadow.streams()]


def an_alert(stream: str, event_time: float, direction: str = "up") -> Alert:
    return Alert(stream, event_time, direction, 1.0, (0.5, 1.5), 5.0, {"event_time": event_time, "segments_since": 3},
                 {}, {"mean": 0.0}, {"mean": 1.0})


def test_the_report_and_gate_read_what_the_worker_records(client, repo):
    """Pairs of a candidate 0.5 above the live model on two streams, one alert each side (one
    matching): the report's figures are those of the pairs, and the gate names what it refuses."""
    store = TrendStore("", client=client)
    current = switch.nominate(store, repo, "2", "shadow start")
    keyspace = current.candidate_keyspace()
    shadow = TrendStore("", client=client, keyspace=keyspace)
    rng = np.random.default_rng(0)
    rows = {}
    for stream in ("a", "b"):
        live = rng.normal(0, 0.75, 100)
        rows[stream] = [[1000.0 + i, float(v), float(v) + 0.5, {"audio": 0.1}, {"audio": 0.3}] for i, v in enumerate(live)]
        shadow.record_many([ScoredSegment(stream, f"{stream}/0", "d", 1000.0, 0.0, "x")])  # the candidate's index
    pairs.record_pairs(client, keyspace, rows, kept=80)  # the oldest 20 of each stream roll out
    store.record_alerts("a", [an_alert("a", 1050.0)], {})
    shadow.record_alerts("a", [an_alert("a", 1053.0)], {})
    shadow.record_alerts("b", [an_alert("b", 1060.0, "down")], {})
    store.record_alerts("b", [an_alert("b", 1005.0)], {})  # before the pairs kept: out of the comparison
    pairs.count_calls(client, {keyspace: {"ok": 9, "timeout": 1, "segments": 180, "seconds": 0.9}})
    report = build(store, roles.read(client), tolerance=5)
    kept = [r for s in ("a", "b") for r in rows[s][20:]]
    assert report["overall"]["segments"] == 160
    assert report["overall"]["mae"] == pytest.approx(0.5)
    live_kept = np.array([r[1] for r in kept])
    assert report["overall"]["wasserstein"] == pytest.approx(0.5 / np.std(live_kept))
    assert report["alerts"]["matched"] == 1 and report["alerts"]["candidate"] == 2 and report["alerts"]["live"] == 1
    assert report["contributions_moved"] == {"audio": pytest.approx(0.2)}
    assert report["calls"]["failure_rate"] == pytest.approx(0.1)
    refused = gate.refusals(report, gate.Thresholds(min_segments=0, min_shadow_s=0))
    shown = text(report, refused)
    assert "160 segments compared" in shown and "only candidate: b down at segment 41" in shown  # 1020..1060 kept
    assert "gate: refuses" in shown and "mae 0.500 is above TECAFLOW_GATE_MAX_MAE=0.25" in shown
    assert any(r.startswith("wasserstein") for r in refused) and any(r.startswith("mae") for r in refused)
    assert any(r.startswith("failure_rate") for r in refused)
    with pytest.raises(UserError, match="the gate refuses version 2"):
        switch.promote(store, gate.Thresholds(min_segments=0, min_shadow_s=0), 5, force=False)
    after, overridden = switch.promote(store, gate.Thresholds(min_segments=0, min_shadow_s=0), 5, force=True)
    assert after.live == "2" and overridden == refused
    event = roles.events(client, 1)[0]
    assert event["action"] == "promote --force" and event["comparison"]["overridden"] == refused
    json.dumps(report)  # `shadow report --json` prints it


def test_a_candidate_with_another_contract_goes_to_the_other_slot(repo):
    from trainer.export import candidate_slot, next_version
    live = ModelContract({"audio": 4}, 16, 10)  # what the repo fixture's config.pbtxt serves
    assert candidate_slot(repo, "tecafn", ModelContract({"audio": 4}, 16, 10, max_batch=32)) == "tecafn"
    for other in (ModelContract({"audio": 5}, 16, 10), ModelContract({"audio": 4}, 32, 10),
                  ModelContract({"audio": 4}, 16, 10, attribution=True),
                  ModelContract({"audio": 4}, 16, 10, context=2, max_context_tokens=64)):
        assert other != live
        assert candidate_slot(repo, "tecafn", other) == "tecafn_b"
    (repo / "tecafn_b" / "7").mkdir(parents=True)
    (repo / "tecafn_b" / "config.pbtxt").write_text(ModelContract({"audio": 5}, 16, 10).config_pbtxt(model="tecafn_b"))
    assert candidate_slot(repo, "tecafn_b", ModelContract({"audio": 4}, 16, 10)) == "tecafn"
    assert next_version(repo) == 8  # numbered across both slots: a version names one directory


def test_a_version_exported_with_another_contract_than_its_slot_now_serves_is_refused(client, repo):
    ModelContract({"audio": 4}, 16, 10).write_metadata(repo / "tecafn" / "2")  # what the config serves
    ModelContract({"audio": 4}, 16, 10, attribution=True).write_metadata(repo / "tecafn" / "1")
    before = (repo / "tecafn" / "config.pbtxt").read_text()
    with pytest.raises(UserError, match="version 1 was exported with another contract"):
        switch.nominate(TrendStore("", client=client), repo, "1", "shadow start")
    assert (repo / "tecafn" / "config.pbtxt").read_text() == before and not roles.read(client).recorded
    assert switch.nominate(TrendStore("", client=client), repo, "2", "shadow start").candidate == "2"


def test_the_roles_name_each_versions_model_and_old_roles_read_as_the_base_model(client, repo):
    """A candidate in the second slot: nominated, promoted, rolled back and stopped, the roles
    say which model serves each version, and each model's config serves exactly its versions.
    A roles hash written before slots (versions only) reads as the base model's."""
    (repo / "tecafn_b" / "4").mkdir(parents=True)
    (repo / "tecafn_b" / "config.pbtxt").write_text(ModelContract({"audio": 5}, 16, 10).config_pbtxt(model="tecafn_b"))
    client.hset(roles.ROLES, mapping={"live": "3", "epoch": "1"})  # as recorded before slots
    old = roles.read(client)
    assert (old.model("live"), old.served_by_model()) == ("tecafn", {"tecafn": ["3"]})
    store = TrendStore("", client=client)
    nominated = switch.nominate(store, repo, "4", "shadow start")
    assert (nominated.live, nominated.model("live"), nominated.candidate, nominated.candidate_model) == \
        ("3", "tecafn", "4", "tecafn_b")
    assert served_by_config(repo) == [3] and served_by_config(repo, "tecafn_b") == [4]
    promoted, _ = switch.promote(store, gate.Thresholds(min_segments=0, min_shadow_s=0), 5, force=True)
    assert (promoted.live, promoted.live_model, promoted.candidate, promoted.model("candidate")) == \
        ("4", "tecafn_b", "3", "tecafn")
    assert roles.read(client) == promoted
    back = switch.rollback(store, 5)
    assert (back.live, back.model("live"), back.candidate, back.candidate_model) == ("3", "tecafn", "4", "tecafn_b")
    switch.promote(store, gate.Thresholds(min_segments=0, min_shadow_s=0), 5, force=True)
    stopped = switch.stop(store, repo)
    assert (stopped.live, stopped.live_model, stopped.candidate) == ("4", "tecafn_b", None)
    assert served_by_config(repo, "tecafn_b") == [4]



def fill(store: TrendStore, keyspace: str, streams: list[str]) -> TrendStore:
    """Everything a worker writes for a candidate: trends, buckets, recent, window, alerts and
    detector state, pairs, call counts."""
    shadow = TrendStore("", store.settings, client=store.redis, keyspace=keyspace)
    for stream in streams:
        shadow.record_many([ScoredSegment(stream, f"{stream}/{i}", "d", 1000.0 + 400 * i, 0.1 * i, "x")
                            for i in range(3)])
        shadow.record_alerts(stream, [an_alert(stream, 1800.0)], {"evaluated": 3})
    pairs.record_pairs(store.redis, keyspace, {s: [[1000.0, 0.0, 0.1, {}, {}]] for s in streams}, kept=10)
    pairs.count_calls(store.redis, {keyspace: {"ok": 1, "segments": 3, "seconds": 0.1}})
    return shadow


@pytest.mark.parametrize("kind", ["single", "cluster"])
def test_the_keyspaces_of_earlier_nominations_are_removed_and_the_newest_two_kept(request, repo, kind):
    """Nominate, promote, roll back: each change opens a keyspace; the rollback removes the first
    nomination's (but for its idempotency keys, which expire), keeps the promotion's whole, and
    leaves the live keyspace untouched."""
    url = request.getfixturevalue("redis_url" if kind == "single" else "redis_cluster_url")
    store = TrendStore(url)
    for key in store.redis.scan_iter("tf:*"):
        store.redis.delete(key)
    streams = [f"{kind}-{i}" for i in range(3)]
    store.record_many([ScoredSegment(s, f"{s}/0", "d", 1000.0, 0.2, "x") for s in streams])
    live_keys = set(store.redis.scan_iter("tf:*"))
    nominated = switch.nominate(store, repo, "2", "shadow start").candidate_keyspace()
    fill(store, nominated, streams)
    promoted = switch.promote(store, gate.Thresholds(min_segments=0, min_shadow_s=0), 5, force=True)[0]
    fill(store, promoted.candidate_keyspace(), streams)
    before = {k: set(store.redis.scan_iter(f"{k}:*")) for k in (nominated, promoted.candidate_keyspace())}
    assert any(":seen:" not in key for key in before[nominated])
    rolled_back = switch.rollback(store, 5)
    left = set(store.redis.scan_iter(f"{nominated}:*"))
    assert left == {key for key in before[nominated] if ":seen:" in key}
    assert set(store.redis.scan_iter(f"{promoted.candidate_keyspace()}:*")) == before[promoted.candidate_keyspace()]
    assert roles.stale_keyspaces(store.redis, 0) == [promoted.candidate_keyspace(), rolled_back.candidate_keyspace()]
    assert set(store.redis.scan_iter("tf:*")) - set(store.redis.scan_iter("tf:candidate:*")) >= live_keys
    assert store.totals(streams[0])["count"] == 1


def test_the_metrics_publish_the_reports_divergences_computed_once_per_tick_for_every_worker(client, repo):
    from stream import metrics
    from stream.config import Settings
    from stream.shadow.report import publish_metrics
    store = TrendStore("", client=client)
    current = switch.nominate(store, repo, "2", "shadow start")
    keyspace = current.candidate_keyspace()
    TrendStore("", client=client, keyspace=keyspace).record_many([ScoredSegment("a", "a/0", "d", 1000.0, 0.0, "x")])
    pairs.record_pairs(client, keyspace, {"a": [[1000.0 + i, 0.1 * i, 0.1 * i + 0.3, {}, {}] for i in range(50)]},
                       kept=100)
    pairs.count_calls(client, {keyspace: {"ok": 4, "error": 1}})
    settings = Settings.from_env({})
    first = publish_metrics(store, current, settings, fresh_s=60)
    assert first["divergences"] == gate.divergences(build(store, current, 5)) and first["segments"] == 50
    assert metrics.SHADOW_DIVERGENCE.labels("mae")._value.get() == pytest.approx(0.3)
    pairs.record_pairs(client, keyspace, {"a": [[2000.0, 0.0, 3.0, {}, {}]]}, kept=100)
    assert publish_metrics(store, current, settings, fresh_s=60) == first  # another worker within the tick
    client.delete(pairs.figures_key(keyspace))  # as when the tick's figures expire
    again = publish_metrics(store, current, settings, fresh_s=60)
    assert again["segments"] == 51 and again["divergences"]["mae"] > first["divergences"]["mae"]
