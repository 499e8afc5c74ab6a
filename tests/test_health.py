"""The worker's /livez and /readyz (stream/health.py): the rules on a hand-moved clock, then the
real HTTP server beside /metrics."""
import asyncio
import json
import urllib.error
import urllib.request

import pytest

from stream import health, metrics  # noqa: F401 - metrics registers the worker's metrics
from stream.health import Health, serve
from stream.stack.service import free_ports


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    return Clock()


def test_a_starting_worker_is_alive_and_not_ready(clock):
    h = Health(clock)
    assert h.live()[0] is True
    ready, detail = h.ready()
    assert ready is False and detail["silent"] == ["broker", "redis", "triton"]


def test_ready_only_while_every_dependency_answered_recently(clock):
    h = Health(clock)
    for name in ("broker", "redis", "triton"):
        h.answer(name)
    assert h.ready()[0] is True
    clock.now += health.FRESH_S / 2
    h.answer("broker")
    h.answer("redis")
    clock.now += health.FRESH_S / 2 + 1  # Triton's last answer is now too old
    ready, detail = h.ready()
    assert ready is False and detail["silent"] == ["triton"]
    assert detail["s_since_answer"]["broker"] == pytest.approx(health.FRESH_S / 2 + 1)


def test_not_alive_when_the_loop_stalls_or_the_agent_stops(clock):
    h = Health(clock)
    h.beat()
    h.agent_running()
    clock.now += health.STALL_S
    assert h.live()[0] is True
    clock.now += 1
    assert h.live() == (False, {"loop_s_since_beat": health.STALL_S + 1})
    h.beat()
    assert h.live()[0] is True
    h.agent_ended()
    assert h.live() == (False, {"agent": "stopped"})


def test_check_counts_only_answers_in_time(clock, monkeypatch):
    monkeypatch.setattr(health, "CHECK_TIMEOUT_S", 0.05)
    h = Health(clock)

    async def answers():
        return True

    async def refuses():
        raise ConnectionRefusedError("no")

    async def hangs():
        await asyncio.sleep(10)

    async def says_no():
        return False

    asyncio.run(h.check({"broker": answers, "redis": refuses, "triton": hangs, "other": says_no}))
    assert h.answered == {"broker": clock.now}


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_the_metrics_port_serves_health_and_metrics(clock):
    h = Health(clock)
    port = free_ports(1)[0]
    server = serve(h, "127.0.0.1", port)
    try:
        base = f"http://127.0.0.1:{port}"
        status, body = get(base + health.READY_PATH)
        assert status == 503 and json.loads(body)["silent"] == ["broker", "redis", "triton"]
        for name in health.DEPENDENCIES:
            h.answer(name)
        assert get(base + health.READY_PATH)[0] == 200
        assert get(base + health.LIVE_PATH) == (200, b'{"ok": true, "loop": "starting"}')
        h.agent_ended()
        assert get(base + health.LIVE_PATH)[0] == 503
        status, body = get(base + "/metrics")
        assert status == 200 and b"tecaflow_consumer_lag" in body
    finally:
        server.shutdown()
        server.server_close()
