"""The worker's health, for Kubernetes' probes, on the metrics port beside /metrics:

    /livez   200 while the process and its agent are alive: the event loop has turned within
             STALL_S (a timer beats it) and the scoring agent has not stopped. A worker still
             starting (no beat yet: waiting for the broker, joining its group) counts as alive.
    /readyz  200 while the broker, Redis and Triton have each answered within FRESH_S (the app
             asks them every CHECK_EVERY_S, so an idle worker stays ready); 503 naming the
             silent ones otherwise.

Both answer with a short JSON body saying why. No Faust in here: stream/app.py beats the loop,
reports the agent and runs the checks; this module keeps the times and serves them.
"""
from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from socketserver import ThreadingMixIn
from typing import Awaitable, Callable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

log = logging.getLogger("tecaflow.health")

LIVE_PATH, READY_PATH = "/livez", "/readyz"
DEPENDENCIES = ("broker", "redis", "triton")
CHECK_EVERY_S = 10.0  # how often the app asks each dependency
FRESH_S = 30.0  # an answer older than this no longer makes the worker ready (three missed checks)
STALL_S = 30.0  # a loop that has not turned for this long is stuck: the worker is not alive
CHECK_TIMEOUT_S = 5.0


class Health:
    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.last_beat: float | None = None
        self.agent_stopped = False
        self.answered: dict[str, float] = {}

    def beat(self) -> None:
        """The event loop turned."""
        self.last_beat = self.clock()

    def agent_running(self) -> None:
        self.agent_stopped = False

    def agent_ended(self) -> None:
        self.agent_stopped = True

    def answer(self, dependency: str) -> None:
        self.answered[dependency] = self.clock()

    def live(self) -> tuple[bool, dict]:
        if self.agent_stopped:
            return False, {"agent": "stopped"}
        if self.last_beat is None:
            return True, {"loop": "starting"}
        idle = self.clock() - self.last_beat
        return idle <= STALL_S, {"loop_s_since_beat": round(idle, 1)}

    def ready(self) -> tuple[bool, dict]:
        now = self.clock()
        ages = {d: (round(now - self.answered[d], 1) if d in self.answered else None) for d in DEPENDENCIES}
        silent = [d for d, age in ages.items() if age is None or age > FRESH_S]
        return not silent, {"s_since_answer": ages, **({"silent": silent} if silent else {})}

    async def check(self, checks: dict[str, Callable[[], Awaitable]]) -> None:
        """Ask each dependency once, at the same time; an answer within CHECK_TIMEOUT_S counts.
        A check is a coroutine function returning something true when the dependency answered."""
        async def one(name: str, call) -> None:
            try:
                if await asyncio.wait_for(call(), CHECK_TIMEOUT_S):
                    self.answer(name)
            except Exception as e:  # noqa: BLE001 - any failure means no answer; readiness says so
                log.debug("%s did not answer the health check: %s", name, e)
        await asyncio.gather(*(one(name, call) for name, call in checks.items()))


def wsgi_app(health: Health, metrics_app):
    """/livez and /readyz from `health`; every other path is Prometheus' /metrics app."""
    def app(environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path not in (LIVE_PATH, READY_PATH):
            return metrics_app(environ, start_response)
        ok, detail = health.live() if path == LIVE_PATH else health.ready()
        body = json.dumps({"ok": ok, **detail}).encode()
        start_response("200 OK" if ok else "503 Service Unavailable",
                       [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]
    return app


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, format, *args):  # probes every few seconds would fill the log
        pass


def serve(health: Health, host: str, port: int) -> WSGIServer:
    """Serve /metrics, /livez and /readyz on host:port from a daemon thread (as prometheus_client's
    own server would serve /metrics alone)."""
    from prometheus_client import make_wsgi_app
    server_class = _Server
    if ":" in host:  # an IPv6 address, e.g. "::"
        server_class = type("_Server6", (_Server,), {"address_family": socket.AF_INET6})
    server = make_server(host, port, wsgi_app(health, make_wsgi_app()), server_class, handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, name="tecaflow-health", daemon=True).start()
    return server
