"""Shadow scoring, promotion and rollback on the real embedded stack (Tansu, redis-server,
tritonserver, `tecaflow worker`): candidates built for the test from the live export (the same
model; its scores +0.5; one that fails; one too slow for its timeout)."""
from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from stream.shadow import roles
from stream.triton_client import TritonScorer
from tests.conftest import CLI, Live, launch, shut_down
from tests.test_live import segment_truth

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SERVING = "                results = self.contract.run_by_bucket(lambda part: self.session.run(list(names), part), " \
          "feed, names)\n"
EXECUTE = "    def execute(self, requests):\n"
PATCHES = {  # what a test candidate does differently from the live model, in its model.py
    "shifted": (SERVING, SERVING + "                results[contract.SCORE] = results[contract.SCORE] + 0.5\n"),
    "failing": (EXECUTE, EXECUTE + "        raise RuntimeError('a candidate that fails')\n"),
    # its first batch only: a candidate instance sleeping through every queued batch would still be
    # busy when the next test's candidate replaces it
    "slow": (EXECUTE, EXECUTE + "        if not getattr(self, 'slept', False):\n            self.slept = True\n"
                                "            import time\n            time.sleep(20)\n"),
    "same": (EXECUTE, EXECUTE),
}


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    # a candidate call may take 15 s before it counts as timed out: tests 1 and 2 count every pair,
    # also on a loaded machine (a fresh-clone CI run once missed some at 5 s)
    live = launch(tmp_path_factory.mktemp("shadow"), TECAFLOW_ROLES_REFRESH_S="0.2", TECAFLOW_SHADOW_TIMEOUT_S="15",
                  TECAFLOW_GATE_MIN_SEGMENTS="100", TECAFLOW_GATE_MIN_SHADOW_S="0")
    yield live
    shut_down(live)


def wait_ready(live: Live, version: str, timeout: float = 120, model: str = "tecafn") -> None:
    scorer = TritonScorer(live.env["TECAFLOW_TRITON_URL"])
    deadline = time.monotonic() + timeout
    try:
        while not _ready(scorer, version, model):
            assert time.monotonic() < deadline, f"Triton did not load version {version} of {model}"
            time.sleep(0.5)
    finally:
        scorer.close()


def _ready(scorer: TritonScorer, version: str, model: str = "tecafn") -> bool:
    try:
        return scorer.client.is_model_ready(model, version)
    except Exception:  # noqa: BLE001 - reloading
        return False


def candidate_copy(live: Live, kind: str) -> str:
    """The live version's files as the next version, its model.py changed as PATCHES[kind] says."""
    model_dir = live.root / "repo" / "tecafn"
    version = str(max(int(p.name) for p in model_dir.iterdir() if p.name.isdigit()) + 1)
    staging = model_dir / f".staging-{version}"
    shutil.copytree(model_dir / "1", staging)
    anchor, replacement = PATCHES[kind]
    source = (staging / "model.py").read_text()
    assert anchor in source, f"model.py changed: the {kind} patch no longer applies"
    (staging / "model.py").write_text(source.replace(anchor, replacement, 1))
    staging.rename(model_dir / version)
    return version


def shadow(live: Live, version: str) -> None:
    live.cli("shadow", "start", version)
    wait_ready(live, version)
    time.sleep(1.0)  # workers read the roles every 0.2 s


def replay(live: Live, prefix: str, streams: int, segments: int, *extra: str) -> Path:
    manifest = live.root / f"{prefix}.jsonl"
    live.cli("replay", "--streams", str(streams), "--segments", str(segments), "--rate", "0", "--prefix", prefix,
             "--manifest", str(manifest), "--no-progress", *extra)
    live.wait_for_total(prefix, streams * segments)
    return manifest


def report(live: Live) -> dict:
    return json.loads(live.cli("shadow", "report", "--json").stdout)


def wait_for_pairs(live: Live, expected: int, timeout: float = 120) -> dict:
    """The report once the candidate has recorded `expected` pairs (it records after the live path)."""
    deadline = time.monotonic() + timeout
    while (found := report(live))["overall"]["segments"] < expected:
        assert time.monotonic() < deadline, \
            f"{found['overall']['segments']} of {expected} pairs recorded; candidate calls {found['calls']}"
        time.sleep(1.0)
    return found


def replaying(live: Live, prefix: str, streams: int, segments: int, rate: int) -> tuple[subprocess.Popen, Path]:
    """A replay running in the background, paced, and the manifest it writes."""
    manifest = live.root / f"{prefix}.jsonl"
    producing = subprocess.Popen([*CLI, "replay", "--streams", str(streams), "--segments", str(segments), "--rate",
                                  str(rate), "--prefix", prefix, "--manifest", str(manifest), "--no-progress"],
                                 env=live.env, cwd=live.root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return producing, manifest


def published_once(live: Live, manifest: Path) -> tuple[dict, dict]:
    """Each replayed segment's score from version 1 (segment_truth), and the one `scores` message
    of each (a repeat must say what the first publication said)."""
    truth = segment_truth(live, manifest, version="1")
    published = read_topic(live, "scores", lambda found: {m["segment_id"] for m in found} >= set(truth))
    by_segment = {}
    for message in published:
        if message["segment_id"] in truth:
            assert by_segment.setdefault(message["segment_id"], message) == message
    assert set(by_segment) == set(truth)
    return truth, by_segment


def promoted_and_rolled_back_in_a_replay(live: Live, prefix: str, candidate: str) -> tuple[dict, dict, dict, Path]:
    """A paced replay of 3 streams of 150 segments during which the candidate is promoted (--force)
    and rolled back: every segment recorded once, and both versions in the scores. Returns the
    streams' counts, segment_truth, each segment's one `scores` message, and the manifest."""
    producing, manifest = replaying(live, prefix, 3, 150, 30)
    time.sleep(5)
    live.cli("promote", "--force")
    time.sleep(4)
    live.cli("rollback")
    assert producing.wait(120) == 0
    counts = live.wait_for_total(prefix, 450, timeout=240)
    assert set(counts.values()) == {150}
    truth, by_segment = published_once(live, manifest)
    assert {m["version"] for m in by_segment.values()} == {"1", candidate}, "the switch should show in the scores"
    return counts, truth, by_segment, manifest


def read_topic(live: Live, topic: str, done, timeout: float = 120) -> list[dict]:
    async def read():
        from aiokafka import AIOKafkaConsumer
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=live.env["TECAFLOW_BROKER_URL"][8:],
                                    auto_offset_reset="earliest", enable_auto_commit=False)
        await consumer.start()
        found, deadline = [], time.monotonic() + timeout
        try:
            while time.monotonic() < deadline and not done(found):
                for records in (await consumer.getmany(timeout_ms=1000)).values():
                    found += [json.loads(r.value) for r in records]
        finally:
            await consumer.stop()
        return found
    return asyncio.run(read())


def test_1_the_same_model_as_candidate_agrees_fully_and_passes_the_gate(system):
    system.cli("export", "--checkpoint", str(system.root / "ckpt" / "checkpoint.pt"), "--candidate",
               "--quantize", "none")
    current = roles.read(system.store.redis)
    assert (current.live, current.candidate) == ("1", "2")
    wait_ready(system, "2")
    time.sleep(1.0)
    replay(system, "same", 3, 120, "--score-shift", "1@60:-1.5", "--seed", "5")
    found = wait_for_pairs(system, 360)
    overall = found["overall"]
    assert overall["segments"] == 360
    assert overall["mae"] == overall["wasserstein"] == overall["ks"] == overall["psi"] == 0.0
    assert overall["sign_agreement"] == overall["class7_agreement"] == 1.0
    assert found["alerts"]["live"] >= 1, "the score shift should have raised a live alert"
    assert found["alerts"]["only_live"] == found["alerts"]["only_candidate"] == []
    assert found["calls"]["error"] == found["calls"]["timeout"] == 0
    assert found["gate"] == {"passes": True, "refusals": []}
    m1 = system.ports["metrics"][0]
    assert system.metric(m1, "tecaflow_role_segments_scored_total", 'role="candidate",version="2"') == 360


def test_2_a_candidate_shifted_by_half_a_point_is_flagged_and_refused(system):
    version = candidate_copy(system, "shifted")
    shadow(system, version)
    replay(system, "shift", 4, 40)
    found = wait_for_pairs(system, 160)
    assert found["overall"]["mae"] == pytest.approx(0.5, abs=1e-5)
    assert found["overall"]["candidate_mean"] - found["overall"]["live_mean"] == pytest.approx(0.5, abs=1e-5)
    assert not found["gate"]["passes"]
    assert any(r.startswith("wasserstein") for r in found["gate"]["refusals"])
    refused = subprocess.run([*CLI, "promote"], env=system.env, capture_output=True, text=True, cwd=system.root)
    assert refused.returncode == 2 and "the gate refuses version" in refused.stderr
    assert roles.read(system.store.redis).live == "1"
    m1 = system.ports["metrics"][0]
    deadline = time.monotonic() + 60  # the worker publishes the comparison every 15 s
    while system.metric(m1, "tecaflow_shadow_divergence", 'measure="mae"') < 0.4:
        assert time.monotonic() < deadline, "the divergence metric was never published"
        time.sleep(1.0)
    assert system.metric(m1, "tecaflow_shadow_divergence", 'measure="wasserstein"') > \
        system.metric(m1, "tecaflow_shadow_threshold", 'measure="wasserstein"')


@pytest.mark.parametrize("kind,outcome", [("failing", "error"), ("slow", "timeout")])
def test_3_a_failing_or_slow_candidate_leaves_the_live_path_as_it_was(system, kind, outcome):
    version = candidate_copy(system, kind)
    shadow(system, version)
    m1 = system.ports["metrics"][0]
    scored, duplicates = (system.metric(m1, "tecaflow_segments_scored_total"),
                          system.metric(m1, "tecaflow_segments_duplicate_total"))
    manifest = replay(system, kind, 2, 30)
    truth = segment_truth(system, manifest, version="1")
    for stream in {s for s, _ in truth.values()}:
        totals = system.store.totals(stream)
        assert totals["count"] == 30
        assert totals["sum"] == pytest.approx(sum(v for s, v in truth.values() if s == stream), abs=1e-4)
    assert system.metric(m1, "tecaflow_segments_scored_total") - scored == 60
    assert system.metric(m1, "tecaflow_segments_duplicate_total") == duplicates  # nothing redelivered
    deadline = time.monotonic() + 60
    while (calls := report(system)["calls"])[outcome] == 0:
        assert time.monotonic() < deadline, f"no candidate call counted as {outcome}: {calls}"
        time.sleep(1.0)
    assert report(system)["overall"]["segments"] == 0


def test_4_promotion_and_rollback_mid_replay_with_a_worker_killed_mid_switch(system):
    """A replay runs while the shifted candidate is promoted (--force: the gate refuses it), the
    worker is killed, restarted, and the promotion rolled back. Every segment is recorded once,
    each with the version that scored it and that version's score, and every alert in Redis is on
    the alerts topic, once."""
    shifted = candidate_copy(system, "shifted")
    shadow(system, shifted)
    producing, manifest = replaying(system, "switch", 4, 150, 40)
    time.sleep(5)
    system.cli("promote", "--force")
    time.sleep(1.0)
    worker, m1, _ = system.workers[0]
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait(30)
    system.start_worker(m1)
    system.cli("rollback")
    assert producing.wait(120) == 0
    counts = system.wait_for_total("switch", 600, timeout=240)
    assert set(counts.values()) == {150}
    truth, by_segment = published_once(system, manifest)
    versions = {m["version"] for m in by_segment.values()}
    assert versions == {"1", shifted}, f"the switch should show in the scores: {versions}"
    for segment_id, message in by_segment.items():
        stream, expected = truth[segment_id]
        assert message["score"] == pytest.approx(expected + (0.5 if message["version"] == shifted else 0.0), abs=1e-4)
    for stream in counts:
        recorded = [m["score"] for m in by_segment.values() if m["stream_id"] == stream]
        assert system.store.totals(stream)["sum"] == pytest.approx(sum(recorded), abs=1e-3)
    in_redis = {a.id for a in system.store.alerts(1000) if a.stream_id.startswith("switch-")}
    on_topic = [m["id"] for m in read_topic(system, "alerts", lambda found: {m["id"] for m in found} >= in_redis,
                                            timeout=60) if m["stream_id"].startswith("switch-")]
    assert set(on_topic) == in_redis
    current = roles.read(system.store.redis)
    assert (current.live, current.candidate) == ("1", shifted)
    assert [e["action"] for e in roles.events(system.store.redis, 2)] == ["rollback", "promote --force"]


def test_5_a_candidate_the_roles_name_before_triton_loaded_it_is_called_only_once_loaded(system):
    """The roles name a version Triton does not serve yet (what an export looks like until Triton's
    next poll): the workers wait for it to be ready, counting its batches as not ready, never as
    failed calls; once Triton serves it, it is shadowed."""
    roles.serve_exactly(system.root / "repo", ["1"])  # as `export --candidate` does before the version appears
    version = candidate_copy(system, "same")
    before = roles.read(system.store.redis)
    after = roles.change(system.store.redis, before, roles.nominated(before, version, "1"), "test: not served yet")
    time.sleep(1.0)  # workers read the roles every 0.2 s
    replay(system, "loading", 2, 30)
    deadline = time.monotonic() + 60
    while (calls := report(system)["calls"])["not_ready"] == 0:
        assert time.monotonic() < deadline, f"no batch counted as not ready: {calls}"
        time.sleep(1.0)
    assert calls["ok"] == calls["error"] == calls["timeout"] == 0
    roles.serve_exactly(system.root / "repo", after.served())
    wait_ready(system, version)
    time.sleep(1.0)
    replay(system, "loaded", 2, 30)
    found = wait_for_pairs(system, 1)  # not all 60: a call past its 1 s timeout on a busy machine has none
    assert found["overall"]["mae"] == 0.0
    assert found["calls"]["error"] == 0 and found["calls"]["ok"] > 0


def test_6_a_candidate_with_another_contract_is_served_as_the_second_slot_promoted_and_rolled_back(system):
    """The live checkpoint exported again without attribution (other outputs: another contract)
    is served as `tecafn_b`, beside the live `tecafn`; it is shadowed, prepared and asked for its
    own outputs, then promoted and rolled back during a replay. Every segment is recorded once,
    with the version that scored it, and what it holds is what that version's contract gives."""
    system.cli("export", "--checkpoint", str(system.root / "ckpt" / "checkpoint.pt"), "--candidate",
               "--quantize", "none", "--no-attribution")
    current = roles.read(system.store.redis)
    slotted = current.candidate
    assert (current.live, current.model("live"), current.candidate_model) == ("1", "tecafn", "tecafn_b")
    assert (system.root / "repo" / "tecafn_b" / slotted / "tecafn.json").is_file()
    wait_ready(system, slotted, model="tecafn_b")
    time.sleep(1.0)
    replay(system, "slot", 2, 30)
    shadowed = wait_for_pairs(system, 1)  # a call past its 1 s timeout (a busy machine) has none
    assert shadowed["overall"]["mae"] == pytest.approx(0.0, abs=1e-4)  # the same weights
    assert shadowed["calls"]["error"] == 0 and shadowed["contributions_moved"] == {}  # it gives none
    counts, truth, by_segment, manifest = promoted_and_rolled_back_in_a_replay(system, "slots", slotted)
    for segment_id, message in by_segment.items():
        assert message["score"] == pytest.approx(truth[segment_id][1], abs=1e-4)
    for stream in counts:
        assert system.store.totals(stream)["count"] == 150
        for entry in system.store.recent(stream, 150):
            assert ("contributions" in entry and entry["contributions"] is not None) == (entry["version"] == "1"), entry
    after = roles.read(system.store.redis)
    assert (after.live, after.model("live"), after.candidate, after.candidate_model) == ("1", "tecafn", slotted, "tecafn_b")


def context_truth(live: Live, manifest: Path, model: str, version: str) -> dict[str, float]:
    """segment_id -> the score `version` of `model` (a model with context) gives each replayed
    segment with the transcripts of the segments before it in its stream."""
    from stream.contract import Tokenizer
    from stream.schema import Limits, decode_segment
    scorer = TritonScorer(live.env["TECAFLOW_TRITON_URL"], model=model)
    try:
        contract = scorer.contract()
        tokenizer = Tokenizer(live.root / "repo" / model / version / "tokenizer", contract.max_text_tokens)
        limits = Limits(widths=contract.widths, max_frames=contract.max_frames)
        segments = sorted((decode_segment(base64.b64decode(json.loads(line)["message"]), limits)
                           for line in manifest.read_text().splitlines()), key=lambda s: (s.stream_id, s.event_time))
        previous = [[p.text for p in segments[max(0, i - contract.context):i] if p.stream_id == s.stream_id]
                    for i, s in enumerate(segments)]
        truth = {}
        for start in range(0, len(segments), 16):
            chunk = segments[start:start + 16]
            inputs = contract.batch(*tokenizer([s.text for s in chunk]), {m: [s.frames(m) for s in chunk]
                                                                           for m in contract.widths},
                                    tokenizer.context(previous[start:start + 16], contract.max_context_tokens))
            truth.update(zip((s.segment_id for s in chunk), map(float, scorer.score(inputs, version=version))))
        return truth
    finally:
        scorer.close()


def test_7_a_candidate_with_context_beside_a_live_model_without_is_shadowed_promoted_and_rolled_back(system):
    """A model reading the two previous transcripts (k = 2) as the candidate of the live k = 0
    model: served as the second slot, it is shadowed with the streams' context, then promoted and
    rolled back during a replay; each segment is recorded once, with the version that scored it
    and that version's score of it (with its context, where the version reads one)."""
    from trainer.data import load_dataset
    from trainer.train import TrainOptions, train
    ds = load_dataset("synthetic", seed=0, n=600, cue_strength=1.5, max_frames=20)
    train(ds, TrainOptions(out=system.root / "ckpt-context", epochs=2, text_encoder="tiny", max_frames=20,
                           progress=False, patience=100, context=2,
                           model_overrides=dict(encoder_layers=1, cross_layers=1, d_model=32, n_heads=4)))
    system.cli("export", "--checkpoint", str(system.root / "ckpt-context" / "checkpoint.pt"), "--candidate",
               "--quantize", "none")
    current = roles.read(system.store.redis)
    reading = current.candidate
    assert (current.live, current.model("live"), current.candidate_model) == ("1", "tecafn", "tecafn_b")
    assert json.loads((system.root / "repo" / "tecafn_b" / reading / "tecafn.json").read_text())["context"] == 2
    wait_ready(system, reading, model="tecafn_b")
    time.sleep(1.0)
    replay(system, "context", 2, 30)
    shadowed = wait_for_pairs(system, 1)
    assert shadowed["calls"]["error"] == 0 and shadowed["overall"]["mae"] > 0  # another model, called as it should be
    counts, truth, by_segment, manifest = promoted_and_rolled_back_in_a_replay(system, "contexts", reading)
    with_context = context_truth(system, manifest, "tecafn_b", reading)
    for segment_id, message in by_segment.items():
        expected = truth[segment_id][1] if message["version"] == "1" else with_context[segment_id]
        assert message["score"] == pytest.approx(expected, abs=1e-4), message
    for stream in counts:
        recorded = [m["score"] for m in by_segment.values() if m["stream_id"] == stream]
        assert system.store.totals(stream)["sum"] == pytest.approx(sum(recorded), abs=1e-3)
