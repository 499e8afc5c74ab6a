"""Issue 12 on the real embedded stack (Tansu broker, redis-server with a password, tritonserver,
`tecaflow worker` processes): one test per failure the issue numbers, each of which failed on the
code before it, then a SIGKILL of Redis mid-stream and an end-to-end run on a real Redis Cluster."""
from __future__ import annotations

import asyncio
import base64
import hashlib
import http.server
import json
import os
import signal
import subprocess
import threading
import time

import pytest

from stream.store import TrendStore
from tests.conftest import CLI, Live, free_ports, launch, shut_down
from tests.malformed import hostile, valid_bytes

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REDIS_PASSWORD = "redis-pw-9f3k"
WEBHOOK_TOKEN = "hook-tok-7q2w"
SASL_PASSWORD = "sasl-pw-4x8z"
SECRETS = (REDIS_PASSWORD, WEBHOOK_TOKEN, SASL_PASSWORD)


class RefusingWebhook(http.server.BaseHTTPRequestHandler):
    """A webhook endpoint that answers 500, so that the worker logs its failure (and its URL)."""
    calls = 0

    def do_POST(self):  # noqa: N802 - http.server's name
        type(self).calls += 1
        self.send_response(500)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    hook_port = free_ports(1)[0]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", hook_port), RefusingWebhook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    live = launch(tmp_path_factory.mktemp("reliability"),
                  TECAFLOW_REDIS_URL=f"redis://:{REDIS_PASSWORD}@127.0.0.1:{{redis_port}}/0",
                  TECAFLOW_WEBHOOK_URL=f"http://127.0.0.1:{hook_port}/services/T0/B0/{WEBHOOK_TOKEN}",
                  TECAFLOW_BROKER_SASL_USERNAME="tecaflow", TECAFLOW_BROKER_SASL_PASSWORD=SASL_PASSWORD)
    yield live
    shut_down(live)
    server.shutdown()


def main_worker(live: Live):
    """The worker the tests share: started again if a test stopped it."""
    proc, port, _ = live.workers[-1]
    if proc.poll() is not None:
        live.start_worker(live.ports["metrics"][0])
    return live.workers[-1]


def stop(proc: subprocess.Popen, sig=signal.SIGTERM) -> None:
    os.killpg(proc.pid, sig)
    proc.wait(60)


def read_topic(live: Live, topic: str, done, timeout: float = 120) -> list:
    """Records of `topic` from the beginning until `done(records)` holds (or the timeout)."""
    async def read():
        from aiokafka import AIOKafkaConsumer
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=live.env["TECAFLOW_BROKER_URL"][8:],
                                    auto_offset_reset="earliest", enable_auto_commit=False)
        await consumer.start()
        records, deadline = [], time.monotonic() + timeout
        try:
            while time.monotonic() < deadline and not done(records):
                for batch in (await consumer.getmany(timeout_ms=1000)).values():
                    records += batch
        finally:
            await consumer.stop()
        return records
    return asyncio.run(read())


def dlq_reasons(live: Live, originals: list[bytes]) -> dict[bytes, str]:
    wanted = set(originals)

    def found(records):
        return {base64.b64decode(json.loads(r.value)["original"]): json.loads(r.value)["reason"] for r in records}
    records = read_topic(live, "segments-dlq", lambda rs: wanted <= set(found(rs)))
    return {raw: reason for raw, reason in found(records).items() if raw in wanted}


def interleaved(prefix: str, cases: list[tuple[str, bytes, str]]) -> tuple[list, list[bytes]]:
    """Valid messages of one stream with the cases between them, all on one key: one batch."""
    good = [valid_bytes(stream=f"{prefix}-000", segment=f"{prefix}-000/{i}", frames=3) for i in range(len(cases) + 1)]
    messages = [(f"{prefix}-000".encode(), good[0])]
    for (_, raw, _), g in zip(cases, good[1:]):
        messages += [(f"{prefix}-000".encode(), raw), (f"{prefix}-000".encode(), g)]
    return messages, good


def test_1_a_dlq_publish_that_fails_loses_nothing_across_a_worker_restart(system):
    """A 900 KB message whose DLQ record cannot be published (here: the worker keeps the whole
    original, 1.2 MB of base64, over the producer's 1 MB limit). Before: the agent crashed, its
    batch was acked, and every message after it in the batch was lost. Now: the publish is
    retried and the batch stays unacknowledged; a restarted worker (keeping 64 KiB, the default)
    delivers all of it."""
    stop(system.workers[-1][0])
    m1 = system.ports["metrics"][0]
    big = json.loads(valid_bytes(stream="big-000", segment="big-000/huge"))
    big["text"] = "x" * 900_000
    huge = json.dumps(big).encode()
    messages = [(b"big-000", valid_bytes(stream="big-000", segment=f"big-000/{i}", frames=2)) for i in range(10)]
    messages += [(b"big-000", huge)]
    messages += [(b"big-000", valid_bytes(stream="big-000", segment=f"big-000/{i}", frames=2)) for i in range(10, 20)]
    stuck = system.start_worker(m1, TECAFLOW_DLQ_KEEP_BYTES=str(4 * 2**20), TECAFLOW_BATCH_WAIT_S="1.0")
    system.produce(messages)
    deadline = time.monotonic() + 90
    while system.metric(m1, "tecaflow_retries_total", 'target="kafka"') < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert system.metric(m1, "tecaflow_retries_total", 'target="kafka"') >= 2, "the DLQ publish should be retried"
    assert "MessageSizeTooLargeError" in system.workers[-1][2].read_text()
    stop(stuck)  # a graceful stop: the batch it could not finish must not be committed

    system.start_worker(m1)
    assert system.wait_for_total("big", 20, timeout=120) == {"big-000": 20}
    wanted = {f"big-000/{i}" for i in range(20)}

    def segment_ids(records):
        return {json.loads(r.value)["segment_id"] for r in records}
    scored = segment_ids(read_topic(system, "scores", lambda rs: wanted <= segment_ids(rs)))
    assert wanted <= scored  # every score published, none left only in Redis
    records = [json.loads(r.value) for r in read_topic(
        system, "segments-dlq", lambda rs: any(json.loads(r.value).get("original_length") == len(huge) for r in rs))]
    record = next(r for r in records if r.get("original_length") == len(huge))
    assert record["reason"] == "text_too_long" and record["truncated"] is True
    assert record["original_sha256"] == hashlib.sha256(huge).hexdigest()
    assert huge.startswith(base64.b64decode(record["original"]))


def test_2_a_hostile_message_rejects_only_itself(system):
    """Nesting 10,000 deep, a lone surrogate, a 400-digit event time: before, each failed its
    whole batch as internal_error and left the in-flight gauge stuck."""
    proc, port, _ = main_worker(system)
    cases = [c for c in hostile() if c[2] in ("too_deep", "bad_text", "bad_timestamp")]
    messages, good = interleaved("hostile", cases)
    system.produce(messages)
    reasons = dlq_reasons(system, [raw for _, raw, _ in cases])
    assert reasons == {raw: reason for _, raw, reason in cases}
    assert system.wait_for_total("hostile", len(good)) == {"hostile-000": len(good)}
    assert system.metric(port, "tecaflow_in_flight_segments") == 0
    assert system.metric(port, "tecaflow_segments_rejected_total", 'reason="internal_error"') == 0
    assert proc.poll() is None


def test_5_ambiguous_input_is_refused_not_read_one_way(system):
    """Duplicate keys and path-like ids were accepted (and `..`, `/etc/x` stored)."""
    proc, _, _ = main_worker(system)
    cases = [c for c in hostile() if c[2] in ("duplicate_key", "bad_id")]
    messages, good = interleaved("ambiguous", cases)
    system.produce(messages)
    reasons = dlq_reasons(system, [raw for _, raw, _ in cases])
    assert reasons == {raw: reason for _, raw, reason in cases}
    assert system.wait_for_total("ambiguous", len(good)) == {"ambiguous-000": len(good)}
    stored = {s for s, _ in system.store.streams()}
    assert not stored & {"..", "../../x", "/etc/x", "a//b"}


def test_4_a_refused_redis_password_stops_the_worker_with_one_line(system):
    """Before: the worker reported Ready and retried its first batch forever."""
    port = free_ports(1)[0]
    env = dict(system.env, TECAFLOW_METRICS_PORT=str(port),
               TECAFLOW_REDIS_URL=system.env["TECAFLOW_REDIS_URL"].replace(REDIS_PASSWORD, "not-the-password"))
    result = subprocess.run([*CLI, "worker"], env=env, capture_output=True, text=True, timeout=180, cwd=system.root)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("tecaflow worker: error: Redis at redis://:***@") and "refused this worker" in last
    assert "Traceback" not in result.stderr and "Ready" not in result.stdout + result.stderr
    assert "not-the-password" not in result.stdout + result.stderr
    trends = subprocess.run([*CLI, "trends"], env=env, capture_output=True, text=True, timeout=120, cwd=system.root)
    assert trends.returncode == 2 and len(trends.stderr.strip().splitlines()) == 1


def test_3_no_credential_reaches_a_log(system):
    """Before: the worker's first log line held the Redis password and the webhook token."""
    main_worker(system)
    system.cli("replay", "--streams", "3", "--segments", "150", "--rate", "0", "--prefix", "secret",
               "--score-shift", "1@90:-1.5", "--seed", "5")
    system.wait_for_total("secret", 450)
    deadline = time.monotonic() + 30
    while RefusingWebhook.calls == 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert RefusingWebhook.calls > 0, "an alert should have gone to the webhook"
    logs = {p: p.read_text(errors="replace") for p in [*system.root.glob("*.log"), *(system.root / "run").glob("*.log")]}
    worker_logs = "".join(text for p, text in logs.items() if p.name.startswith("worker-"))
    assert "redis_url=redis://:***@127.0.0.1" in worker_logs and "webhook_url=http://127.0.0.1:" in worker_logs
    assert "alert webhook to http://127.0.0.1:" in worker_logs and "/*** failed" in worker_logs
    for path, text in logs.items():
        for secret in SECRETS:
            assert secret not in text, f"{secret!r} is in {path.name}"


def test_a_sigkill_of_redis_mid_stream_loses_nothing(system):
    """Redis is killed without warning while a replay runs; acknowledged writes are on disk
    (appendfsync always), the rest is retried: every segment counted exactly once."""
    main_worker(system)
    assert system.store.redis.config_get("appendfsync") == {"appendfsync": "always"}
    replay = subprocess.Popen([*CLI, "replay", "--streams", "4", "--segments", "60", "--rate", "60", "--prefix",
                               "crash", "--no-progress"], env=system.env, cwd=system.root,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while sum(system.counts("crash").values()) < 40 and time.monotonic() < deadline:
        time.sleep(0.2)
    redis_pid = int((system.root / "run" / "redis.pid").read_text())
    os.kill(redis_pid, signal.SIGKILL)
    time.sleep(3.0)
    system.cli("stack", "up")
    assert replay.wait(120) == 0
    counts = system.wait_for_total("crash", 240, timeout=180)
    time.sleep(3.0)  # anything counted twice would show up now
    assert system.counts("crash") == counts == {f"crash-{i:03d}": 60 for i in range(4)}


def test_end_to_end_on_a_redis_cluster(system, redis_cluster_url):
    """A worker on a real three-node Redis Cluster: everything recorded, streams on several nodes."""
    for proc, _, _ in system.workers:
        if proc.poll() is None:
            stop(proc)
    m1 = system.ports["metrics"][0]
    system.start_worker(m1, TECAFLOW_REDIS_URL=redis_cluster_url)
    cluster = TrendStore(redis_cluster_url)
    system.cli("replay", "--streams", "6", "--segments", "12", "--rate", "0", "--prefix", "cl")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        counts = {s: cluster.totals(s)["count"] for s, _ in cluster.streams() if s.startswith("cl-")}
        if sum(counts.values()) >= 72:
            break
        time.sleep(0.5)
    assert counts == {f"cl-{i:03d}": 12 for i in range(6)}
    assert len({cluster.redis.get_node_from_key("tf:{" + s + "}:totals").name for s in counts}) >= 2
    trends = subprocess.run([*CLI, "trends", "--json"], env=dict(system.env, TECAFLOW_REDIS_URL=redis_cluster_url),
                            capture_output=True, text=True, timeout=120, cwd=system.root)
    assert trends.returncode == 0 and json.loads(trends.stdout)["streams"]["cl-000"]["count"] == 12
