"""`tecaflow bench dashboard`: how long the dashboard takes to load its data with many streams.

A scratch redis-server on a free loopback port is filled through TrendStore.record_many (N
streams, M segments each, spread over the last hour of event time, a few alerts), then each
view's data load is timed (median and p90 of repeated loads) with the Redis round trips it used.
"""
from __future__ import annotations

import random
import statistics
import tempfile
import time
from pathlib import Path

import redis

from dashboard import data
from stream.errors import UserError
from stream.schema import Alert
from stream.store import StoreSettings, TrendStore


def scratch_redis(directory: str):
    """A throw-away redis-server (no persistence) on a free loopback port, and its URL."""
    from stream.stack.service import free_ports
    from stream.stack.embedded import redis_service
    port, = free_ports(1)
    return redis_service(Path(directory), port, durable=False).start(), f"redis://127.0.0.1:{port}/0"


def fill(store: TrendStore, streams: int, segments: int, now: float, progress=None) -> None:
    rng = random.Random(0)
    for s in range(streams):
        name = f"bench-{s:05d}"
        level = rng.uniform(-1, 1.5)
        store.record_many([(name, f"{name}/{i}", f"d{i}", now - 3600 + i * 3600 / segments,
                            max(-3.0, min(3.0, rng.gauss(level, 0.75))), "a transcript of ordinary length " * 3)
                           for i in range(segments)])
        if s % 50 == 0:
            store.record_alert(name, Alert(name, now - 600, "down", -0.8, (-1.1, -0.5), -5.0,
                                           change_point={"event_time": now - 660, "segments_since": 20},
                                           evidence={}, reference={"mean": level}, recent={"mean": level - 0.8}),
                               {"armed": False})
        if progress and s % 100 == 99:
            progress(f"filled {s + 1}/{streams} streams")


class RoundTrips:
    """Counts what the client sends: one per plain command, one per pipeline."""

    def __init__(self):
        self.count = 0
        self._original = redis.connection.AbstractConnection.send_packed_command

    def __enter__(self):
        original, counter = self._original, self

        def counting(conn, *args, **kwargs):
            counter.count += 1
            return original(conn, *args, **kwargs)
        redis.connection.AbstractConnection.send_packed_command = counting
        return self

    def __exit__(self, *exc):
        redis.connection.AbstractConnection.send_packed_command = self._original


def timed(load, repeats: int) -> dict:
    times, trips = [], 0
    for _ in range(repeats):
        with RoundTrips() as rt:
            started = time.perf_counter()
            load()
            times.append(time.perf_counter() - started)
        trips = rt.count
    times.sort()
    return {"median_ms": round(1000 * statistics.median(times), 1),
            "p90_ms": round(1000 * times[int(0.9 * (len(times) - 1))], 1), "round_trips": trips}


def bench_dashboard(streams: int = 1000, segments: int = 120, repeats: int = 10, progress=print) -> dict:
    if streams < 1 or segments < 1 or repeats < 1:
        raise UserError("--streams, --segments and --repeats must be >= 1")
    with tempfile.TemporaryDirectory() as directory:
        server, url = scratch_redis(directory)
        try:
            store = TrendStore(url, StoreSettings())
            now = time.time()
            fill(store, streams, segments, now, progress)
            progress(f"timing {repeats} loads of each view")
            one = "bench-00000"
            results = {f"overview, sorted by {label}": timed(
                lambda s=sort: data.load_overview(store, time.time(), sort=s), repeats)
                for label, sort in data.SORTS.items()}
            results["overview, searched"] = timed(lambda: data.load_overview(store, time.time(), query="-001"), repeats)
            for resolution in store.settings.resolutions:
                results[f"stream detail, {resolution} s"] = timed(lambda r=resolution: data.load_stream(store, one, r),
                                                                   repeats)
            results["alerts feed"] = timed(lambda: data.load_alerts(store), repeats)
        finally:
            server.stop()
    return {"streams": streams, "segments_per_stream": segments, "repeats": repeats, "loads": results}


def format_report(result: dict) -> str:
    lines = [f"dashboard data loads, {result['streams']} streams x {result['segments_per_stream']} segments "
             f"(scratch redis-server on loopback, {result['repeats']} loads each)",
             f"{'view':<32} {'median ms':>10} {'p90 ms':>8} {'round trips':>12}"]
    for view, r in result["loads"].items():
        lines.append(f"{view:<32} {r['median_ms']:>10.1f} {r['p90_ms']:>8.1f} {r['round_trips']:>12}")
    return "\n".join(lines)
