"""The live system on the real embedded stack: Tansu broker, redis-server, tritonserver,
Prometheus, and `tecaflow worker` processes. Slow by nature (a few minutes in all)."""
from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections import defaultdict
from pathlib import Path

import pytest

from stream.schema import Limits, decode_segment
from stream.triton_client import TritonScorer
from tests.conftest import CLI, Live
from tests.malformed import catalogue, conflicting_pair, valid_bytes

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def ground_truth(live: Live, manifest: Path) -> dict[str, list[float]]:
    """Score exactly what the replay sent, straight from Triton, per stream (tokenized by the
    Hugging Face tokenizer the model trained with, not the worker's)."""
    truth = defaultdict(list)
    for stream, score in segment_truth(live, manifest).values():
        truth[stream].append(score)
    return truth


def segment_truth(live: Live, manifest: Path, version: str = "") -> dict[str, tuple[str, float]]:
    """segment_id -> (stream_id, score from Triton's `version` of the model, or the one it picks), in
    the order the replay sent them."""
    from transformers import AutoTokenizer
    scorer = TritonScorer(live.env["TECAFLOW_TRITON_URL"])
    contract = scorer.contract()
    tokenizer = AutoTokenizer.from_pretrained(live.root / "repo" / "tecafn" / "1" / "tokenizer")
    limits = Limits(widths=contract.widths, max_frames=contract.max_frames)
    segments = [decode_segment(base64.b64decode(json.loads(line)["message"]), limits)
                for line in manifest.read_text().splitlines()]
    truth = {}
    for start in range(0, len(segments), 16):
        chunk = segments[start:start + 16]
        enc = tokenizer([s.text for s in chunk], padding=True, truncation=True, max_length=contract.max_text_tokens,
                        return_tensors="np")
        inputs = contract.batch(enc["input_ids"], enc["attention_mask"],
                                {m: [s.frames(m) for s in chunk] for m in contract.widths})
        for seg, score in zip(chunk, scorer.score(inputs, version=version)):
            truth[seg.segment_id] = (seg.stream_id, float(score))
    scorer.close()
    return truth


def test_trends_equal_the_ground_truth_and_redelivery_counts_once(live):
    manifest = live.root / "e2e.jsonl"
    live.cli("replay", "--streams", "4", "--segments", "25", "--rate", "0", "--prefix", "e2e",
             "--manifest", str(manifest))
    counts = live.wait_for_total("e2e", 100)
    truth = ground_truth(live, manifest)
    assert counts == {s: len(v) for s, v in truth.items()}
    for stream, scores in truth.items():
        totals = live.store.totals(stream)
        assert totals["sum"] == pytest.approx(sum(scores), abs=1e-4)
        assert sum(b["count"] for b in live.store.buckets(stream, 10)) == len(scores)
        assert min(b["min"] for b in live.store.buckets(stream, 600)) == pytest.approx(min(scores), abs=1e-5)

    # Exact redelivery of everything: deduplicated silently, nothing counted twice.
    port = live.ports["metrics"][0]
    dups_before = live.metric(port, "tecaflow_segments_duplicate_total")
    raw = [base64.b64decode(json.loads(line)["message"]) for line in manifest.read_text().splitlines()]
    live.produce([(json.loads(m)["stream_id"].encode(), m) for m in raw])
    deadline = time.monotonic() + 60
    while live.metric(port, "tecaflow_segments_duplicate_total") < dups_before + 100 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert live.metric(port, "tecaflow_segments_duplicate_total") == dups_before + 100
    assert live.counts("e2e") == counts

    out = live.cli("trends", "--json").stdout
    assert json.loads(out)["streams"]["e2e-000"]["count"] == 25


def test_a_shift_raises_an_alert_for_that_stream_only(live):
    """A shift stated in score units (replay scores its pool through Triton first) alerts on that
    stream only, with the change point where the shift began."""
    out = live.cli("replay", "--streams", "3", "--segments", "150", "--rate", "0", "--prefix", "shift",
                   "--score-shift", "1@90:-1.5", "--seed", "5")
    assert "score shifts: shift-001@90:-1.5" in out.stdout
    live.wait_for_total("shift", 450)
    time.sleep(1.0)
    alerts = [a for a in live.store.alerts(100) if a.stream_id.startswith("shift-")]
    scores = {s: [round(x, 2) for _, x in live.store.window(s)] for s in ("shift-000", "shift-001", "shift-002")}
    assert {a.stream_id for a in alerts} == {"shift-001"}, (alerts, scores)
    assert alerts[-1].direction == "down"
    times = [t for t, _ in live.store.window("shift-001")]
    assert times[80] <= alerts[-1].change_point["event_time"] <= alerts[-1].event_time <= times[-1]
    # the backtest over the same history, read back from Redis and from the scores topic
    for source in ("--redis", "--topic"):
        out = json.loads(live.cli("backtest", source, "--shift", f"shift-001@{times[90]}", "--json").stdout)
        run = out["runs"][0]
        assert run["caught"] == 1 and run["known_shifts"] == 1, (source, run)
        assert run["segments"] >= 450
    assert live.metric(live.ports["metrics"][0], "tecaflow_alerts_total", 'direction="down"') >= 1
    assert "ALERT shift-001 down" in live.cli("trends").stdout


def test_malformed_messages_go_to_the_dlq_with_their_reason(live):
    cases = catalogue(max_frames=20)  # the live model's limit
    first, conflict = conflicting_pair(stream="dlq-009", segment="dlq-009/conflict")
    good = [valid_bytes(stream=f"dlq-00{i % 3}", segment=f"dlq-00{i % 3}/{i}", frames=3)
            for i in range(len(cases) + 2)]  # one between every two malformed messages
    messages = []
    for i, g in enumerate(good):
        messages.append((json.loads(g)["stream_id"].encode(), g))
        if i < len(cases):
            messages.append((b"whatever", cases[i][1]))
    messages += [(b"dlq-009", first), (b"dlq-000", good[0]), (b"dlq-009", conflict)]  # dup is silent
    live.produce(messages)
    expected = {raw: reason for _, raw, reason in cases}
    expected[conflict] = "conflicting_duplicate"

    async def read_dlq():
        from aiokafka import AIOKafkaConsumer
        consumer = AIOKafkaConsumer("segments-dlq", bootstrap_servers=live.env["TECAFLOW_BROKER_URL"][8:],
                                    auto_offset_reset="earliest", enable_auto_commit=False)
        await consumer.start()
        found = {}
        deadline = time.monotonic() + 120
        try:
            while time.monotonic() < deadline and not set(expected) <= set(found):
                batch = await consumer.getmany(timeout_ms=1000)
                for records in batch.values():
                    for r in records:
                        body = json.loads(r.value)
                        found[base64.b64decode(body["original"])] = (body["reason"], dict(r.headers))
        finally:
            await consumer.stop()
        return found

    found = asyncio.run(read_dlq())
    for raw, reason in expected.items():
        assert raw in found, f"not in the DLQ: {raw[:80]!r}"
        assert found[raw][0] == reason
        assert found[raw][1]["tecaflow-reason"] == reason.encode()
    assert len({r for r in expected.values()}) >= 20
    live.wait_for_total("dlq", len(good) + 1)
    assert sum(live.counts("dlq").values()) == len(good) + 1
    proc, port, _ = live.workers[0]
    assert proc.poll() is None
    assert live.metric(port, "tecaflow_segments_rejected_total", 'reason="wrong_width"') >= 2
    metrics_text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    assert "stream_id" not in metrics_text  # never labelled by stream


def test_segments_without_a_face_or_a_voice_are_scored_with_attribution(live):
    from tests.malformed import valid
    messages = []
    for i in range(6):
        m = valid(stream="partial-000", segment=f"partial-000/{i}", frames=3)
        if i % 3 == 1:
            m.pop("visual")  # no face found
        elif i % 3 == 2:
            m["audio"] = {"shape": [0, 5], "f32": ""}  # muted
        messages.append((b"partial-000", json.dumps(m).encode()))
    before = {side: live.metric(live.ports["metrics"][0], "tecaflow_segments_missing_modality_total",
                                f'modality="{side}"') for side in ("audio", "visual")}
    live.produce(messages)
    live.wait_for_total("partial", 6)
    recent = {s["segment_id"]: s for s in live.store.recent("partial-000", 6)}
    assert [recent[f"partial-000/{i}"]["modalities"] for i in range(3)] == [
        ["text", "audio", "visual"], ["text", "audio"], ["text", "visual"]]
    for s in recent.values():  # the served model's attribution, for the sides each segment had
        assert set(s["contributions"]) == set(s["modalities"]) - {"text"}
        assert isinstance(s["text_only"], float)
    totals = live.store.totals("partial-000")
    assert totals["missing"] == {"audio": 2, "visual": 2} and totals["moved"]["audio"] is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        after = {side: live.metric(live.ports["metrics"][0], "tecaflow_segments_missing_modality_total",
                                   f'modality="{side}"') for side in ("audio", "visual")}
        if after == {side: before[side] + 2 for side in before}:
            break
        time.sleep(1)
    assert after == {side: before[side] + 2 for side in before}


def test_prometheus_scrapes_the_worker_and_triton(live):
    url = f"http://127.0.0.1:{live.ports['prometheus']}/api/v1/query?query=up"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        result = json.loads(urllib.request.urlopen(url).read())["data"]["result"]
        up = {(r["metric"]["job"], r["metric"]["instance"]): r["value"][1] for r in result}
        if up.get(("tecaflow-workers", f"127.0.0.1:{live.ports['metrics'][0]}")) == "1" and \
                any(job == "triton" and v == "1" for (job, _), v in up.items()):
            rules = json.loads(urllib.request.urlopen(
                f"http://127.0.0.1:{live.ports['prometheus']}/api/v1/rules").read())["data"]["groups"]
            assert {r["name"] for g in rules for r in g["rules"]} >= {"TecaflowWorkerDown", "TecaflowConsumerLagGrowing"}
            text = urllib.request.urlopen(f"http://127.0.0.1:{live.ports['metrics'][0]}/metrics").read().decode()
            assert re.search(r"^tecaflow_consumer_lag \d", text, re.M), "the worker exports no consumer lag"
            return
        time.sleep(1)
    raise AssertionError(f"prometheus targets: {up}")


def test_the_worker_is_live_and_ready_on_its_metrics_port(live):
    """The probes of the Helm chart (stream/health.py): ready once the broker, Redis and Triton
    have answered the worker's own checks."""
    from stream import health
    base = f"http://127.0.0.1:{live.ports['metrics'][0]}"
    deadline = time.monotonic() + 3 * health.CHECK_EVERY_S
    while True:
        try:
            ready = json.loads(urllib.request.urlopen(base + health.READY_PATH, timeout=5).read())
            break
        except urllib.error.HTTPError as e:  # 503 until every dependency has answered once
            if time.monotonic() > deadline:
                raise AssertionError(e.read().decode()) from None
            time.sleep(1)
    assert ready["ok"] and set(ready["s_since_answer"]) == {"broker", "redis", "triton"}
    live_state = json.loads(urllib.request.urlopen(base + health.LIVE_PATH, timeout=5).read())
    assert live_state["ok"] and live_state["loop_s_since_beat"] <= health.STALL_S


def test_a_redis_outage_is_waited_out_and_nothing_is_lost(live):
    port = live.ports["metrics"][0]
    before = live.counts("e2e")
    retries = live.metric(port, "tecaflow_retries_total", 'target="redis"')
    redis_pid = int((live.root / "run" / "redis.pid").read_text())
    os.kill(redis_pid, signal.SIGTERM)  # Redis writes its AOF and exits
    time.sleep(1.0)
    live.cli("replay", "--streams", "4", "--segments", "10", "--rate", "0", "--prefix", "outage")
    deadline = time.monotonic() + 60
    while live.metric(port, "tecaflow_retries_total", 'target="redis"') <= retries and time.monotonic() < deadline:
        time.sleep(0.5)
    assert live.metric(port, "tecaflow_retries_total", 'target="redis"') > retries
    assert live.metric(port, "tecaflow_dependency_up", 'target="redis"') == 0
    assert live.workers[0][0].poll() is None  # still up, waiting
    live.cli("stack", "up")  # brings Redis back from its AOF
    counts = live.wait_for_total("outage", 40, timeout=120)
    assert counts == {f"outage-{i:03d}": 10 for i in range(4)}
    assert live.counts("e2e") == before  # nothing lost across the restart
    assert live.metric(port, "tecaflow_dependency_up", 'target="redis"') == 1


def test_a_triton_outage_is_waited_out(live):
    port = live.ports["metrics"][0]
    retries = live.metric(port, "tecaflow_retries_total", 'target="triton"')
    triton_pid = int((live.root / "run" / "triton.pid").read_text())
    os.killpg(triton_pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(triton_pid, 0)
            time.sleep(0.2)
        except ProcessLookupError:
            break
    live.produce([(f"noscore-00{i % 2}".encode(), valid_bytes(stream=f"noscore-00{i % 2}", segment=f"n/{i}", frames=3))
                  for i in range(20)])  # not the replay CLI: it asks Triton for the widths
    deadline = time.monotonic() + 60
    while live.metric(port, "tecaflow_retries_total", 'target="triton"') <= retries and time.monotonic() < deadline:
        time.sleep(0.5)
    assert live.metric(port, "tecaflow_retries_total", 'target="triton"') > retries
    assert live.counts("noscore") == {} and live.workers[0][0].poll() is None
    live.cli("stack", "up")
    assert live.wait_for_total("noscore", 20, timeout=120) == {"noscore-000": 10, "noscore-001": 10}


def test_two_workers_share_partitions_and_survive_a_kill(live):
    m1, m2 = live.ports["metrics"]
    second = live.start_worker(m2)
    time.sleep(8)  # let the group rebalance
    before = (live.metric(m1, "tecaflow_segments_consumed_total"), live.metric(m2, "tecaflow_segments_consumed_total"))
    live.cli("replay", "--streams", "8", "--segments", "15", "--rate", "0", "--prefix", "two")
    live.wait_for_total("two", 120)
    after = (live.metric(m1, "tecaflow_segments_consumed_total"), live.metric(m2, "tecaflow_segments_consumed_total"))
    assert after[0] > before[0] and after[1] > before[1], "both workers should have consumed"
    assert sum(live.counts("two").values()) == 120

    # kill -9 one worker while segments flow: the other takes over, nothing lost, nothing twice
    replay = subprocess.Popen([*CLI, "replay", "--streams", "8", "--segments", "40", "--rate", "80",
                               "--prefix", "kill"], env=live.env, cwd=live.root, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    time.sleep(2.0)
    os.killpg(second.pid, signal.SIGKILL)
    assert replay.wait(120) == 0
    counts = live.wait_for_total("kill", 320, timeout=240)
    assert sum(counts.values()) == 320 and all(c == 40 for c in counts.values())
