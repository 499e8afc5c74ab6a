"""`tecaflow bench scale`: how the workers scale out, on the embedded stack, and what KEDA would do.

For each worker count (1, 2, 4 by default), on one broker, Redis and Triton (free ports, a
scratch run directory, one export):
    backlog   `--segments` segments over `--streams` streams are produced with no worker running
    drain     the workers start at once as separate `tecaflow worker` processes in one group;
              the rate is the slope of segments recorded in Redis once every worker consumes
              (after the group has settled) until 90 % of the backlog is recorded
    lag       the group's lag as KEDA reads it (end offsets minus committed offsets of the
              segments topic), sampled every `--sample` seconds: the lag curve
    cost      CPU seconds per segment of the workers and of Triton over the same window, and
              each worker's peak resident memory: what a pod of each needs
Then, with one worker, a steady load at half its drain rate: the lag KEDA sees when nothing is
wrong (in-flight batches and the commit interval), which the lag threshold must stay above.

The KEDA replay applies the Kafka scaler's rule (desired workers = ceil(total lag / lagThreshold),
at least minReplicas, at most maxReplicas and the partitions, re-evaluated every pollingInterval,
a new worker consuming after the measured start-up time) to each measured lag curve and to
backlogs of any size, draining at the measured rates.

Building its parser (register) imports nothing heavy; the benchmark's modules load when it runs.
"""
from __future__ import annotations

import asyncio
import json
import math
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from stream.config import Settings

BACKLOGS = (10_000, 100_000, 1_000_000)  # segments waiting, for the replay


# ---- measuring ----------------------------------------------------------------------------------
def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of a process and its descendants so far (Triton's stubs hold the model)."""
    import os
    tick = os.sysconf("SC_CLK_TCK")
    total, todo = 0.0, [pid] if pid else []
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            tasks = list(Path(f"/proc/{p}/task").iterdir())
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue  # the process has gone
        for task in tasks:
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except (FileNotFoundError, ProcessLookupError):
                continue  # a thread that ended meanwhile: its process's children are under the others
    return total


def ready(port: int) -> bool:
    """The worker's own readiness (stream/health.py): broker, Redis and Triton answered it."""
    from stream.health import READY_PATH
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{READY_PATH}", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


class LagSampler:
    """The group's committed lag every `every` seconds, in a thread, as (seconds since start, lag)."""

    def __init__(self, settings: Settings, every: float):
        self.settings, self.every = settings, every
        self.curve: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "LagSampler":
        self.started = time.monotonic()
        self._thread.start()
        return self

    def _run(self) -> None:
        from stream.bench.soak import consumer_lag
        while not self._stop.is_set():
            try:
                lag = asyncio.run(consumer_lag(self.settings.broker_servers(), self.settings.topic_segments))
                # max(0, ...): the embedded broker reports a partition's end offset as its last
                # record batch's first offset, short of the committed one by up to a batch
                self.curve.append((round(time.monotonic() - self.started, 2), max(0, lag)))
            except Exception:  # noqa: BLE001 - the group is rebalancing: the next sample will do
                pass
            self._stop.wait(self.every)

    def stop(self) -> list[tuple[float, int]]:
        self._stop.set()
        self._thread.join()
        return self.curve


def recorded(store, names: list[str]) -> int:
    return sum(t["count"] for t in store.totals_many(names).values() if t)


class BacklogTooSmall(RuntimeError):
    """The workers recorded most of the backlog before they had all joined the group."""


BACKLOG_GROWTH, BACKLOG_ATTEMPTS = 4, 3


def drain_growing(n: int, *args, total: int, progress, **kwargs) -> dict:
    """drain_with, the backlog grown BACKLOG_GROWTH-fold while the first worker to join records
    most of it before the others have joined (a fast model, a slow join): the drain rate of n
    workers needs a backlog that outlasts their start."""
    def attempt(k: int) -> dict:
        return drain_with(n, *args, total=total * BACKLOG_GROWTH ** k, progress=progress, prefix=f"scale{n}-{k}",
                          **kwargs)
    for k in range(BACKLOG_ATTEMPTS - 1):
        try:
            return attempt(k)
        except BacklogTooSmall as e:
            progress(f"{e}; again with {total * BACKLOG_GROWTH ** (k + 1)}")
    return attempt(BACKLOG_ATTEMPTS - 1)


def drain_with(n: int, tmp: Path, env: dict, settings: Settings, store, triton_pid: int | None, total: int,
               streams: int, widths, frames: int, sample_s: float, progress, prefix: str = "") -> dict:
    """Produce a backlog, start `n` workers at once, measure until it is recorded."""
    from stream.bench.pipeline import produce, segments
    from stream.stack.service import free_ports
    from stream.bench.soak import tree_rss_mb
    from stream.stack.embedded import worker_service
    prefix = prefix or f"scale{n}"
    names = [f"{prefix}-{s:03d}" for s in range(streams)]
    per_stream = total // streams
    progress(f"{n} worker(s): producing a backlog of {per_stream * streams} segments")
    asyncio.run(produce(settings, segments(prefix, streams, per_stream, widths, frames, seed=n)))
    total = per_stream * streams
    ports = free_ports(n)
    workers = [worker_service(tmp, f"worker-{n}-{k}", env=dict(env, TECAFLOW_METRICS_PORT=str(port)))
               for k, port in enumerate(ports)]
    sampler = LagSampler(settings, sample_s).start()
    launched = time.monotonic()
    try:
        for w in workers:
            w.start(wait=False)
        for w in workers:
            w.wait_healthy()
        started_s = time.monotonic() - launched
        progress(f"{n} worker(s) joined in {started_s:.1f}s; waiting for every one to consume")
        window = settle(ports, store, names, total, timeout=300)
        t0, count0 = time.perf_counter(), recorded(store, names)
        if count0 >= 0.9 * total:
            raise BacklogTooSmall(f"{n} worker(s) recorded {count0} of {total} segments while joining: too small "
                                  f"a backlog to measure a drain rate on (give more segments)")
        cpu0 = [cpu_seconds(w.pid()) for w in workers], cpu_seconds(triton_pid)
        peak_rss, triton_rss = [0.0] * n, 0.0
        deadline = time.monotonic() + 600
        while (done := recorded(store, names)) < 0.9 * total:
            peak_rss = [max(m, tree_rss_mb(w.pid())) for m, w in zip(peak_rss, workers)]
            triton_rss = max(triton_rss, tree_rss_mb(triton_pid))
            if time.monotonic() > deadline:
                raise RuntimeError(f"{n} workers recorded {done} of {total} in 10 minutes")
            time.sleep(0.05)
        t1 = time.perf_counter()
        cpu1 = [cpu_seconds(w.pid()) for w in workers], cpu_seconds(triton_pid)
        ready_now = [ready(p) for p in ports]
        while recorded(store, names) < total and time.monotonic() < deadline:
            time.sleep(0.05)
        drained_s = time.monotonic() - launched
        time.sleep(2 * settings.commit_interval_s + sample_s)  # the last commits, seen by the sampler
    finally:
        curve = sampler.stop()
        for w in workers:
            w.stop()
    scored = done - count0
    per_worker = [max(0.0, b - a) for a, b in zip(cpu0[0], cpu1[0])]
    return {"workers": n, "segments": total, "start_s": round(started_s, 1), "settled_after": window,
            "drain_rate": scored / (t1 - t0), "drained_s": round(drained_s, 1),
            "worker_cpu_ms_per_segment": 1e3 * sum(per_worker) / max(1, scored),
            "worker_cores": [c / (t1 - t0) for c in per_worker],
            "triton_cpu_ms_per_segment": 1e3 * (cpu1[1] - cpu0[1]) / max(1, scored),
            "worker_peak_rss_mb": [round(m) for m in peak_rss], "triton_peak_rss_mb": round(triton_rss),
            "ready_while_draining": ready_now,
            "lag_curve": curve}


def settle(ports: list[int], store, names: list[str], total: int, timeout: float) -> int:
    """Wait until every worker has consumed something (the group has settled on all of them), or
    until a third of the backlog is recorded (a worker left with no partition would wait forever);
    returns the segments recorded by then."""
    from stream.bench.pipeline import metric
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        consumed = [metric(p, "tecaflow_segments_consumed_total").get("", 0.0) for p in ports]
        done = recorded(store, names)
        if all(c > 0 for c in consumed) or done > total / 3:
            return done
        time.sleep(0.05)
    raise RuntimeError("the workers consumed nothing")


def steady_lag(tmp: Path, env: dict, settings: Settings, rate: float, seconds: float, streams: int, widths,
               frames: int, sample_s: float, progress) -> dict:
    """One worker under a steady load it can keep up with: the lag KEDA sees in normal operation."""
    from stream.bench.pipeline import produce, segments
    from stream.stack.service import free_ports
    from stream.stack.embedded import worker_service
    progress(f"1 worker under a steady {rate:.0f} segments/s for {seconds:.0f}s")
    worker = worker_service(tmp, "worker-steady", env=dict(env, TECAFLOW_METRICS_PORT=str(free_ports(1)[0])))
    worker.start()
    per_stream = max(1, int(rate * seconds / streams))
    try:
        time.sleep(3 * settings.session_timeout_s / 2)  # joined and assigned before the load starts
        sampler = LagSampler(settings, sample_s).start()
        asyncio.run(produce(settings, segments("steady", streams, per_stream, widths, frames, seed=99), rate))
        curve = sampler.stop()
    finally:
        worker.stop()
    lags = sorted(lag for _, lag in curve)
    return {"rate": rate, "seconds": seconds, "median": lags[len(lags) // 2] if lags else None,
            "max": lags[-1] if lags else None, "curve": curve}


# ---- the KEDA rule ---------------------------------------------------------------------------------
def keda_replicas(lag: int, threshold: int, activation: int, min_replicas: int, max_replicas: int,
                  partitions: int) -> int:
    """The workers KEDA's Kafka scaler asks for at this total lag (allowIdleConsumers false: never
    more than the partitions). Below the activation lag a group at zero stays at zero."""
    ceiling = min(max_replicas, partitions)
    if lag <= activation:
        return min_replicas
    return max(min_replicas, min(ceiling, math.ceil(lag / threshold)))


def rate_at(workers: int, rates: dict[int, float]) -> float:
    """Drain rate with `workers`, from the measured ones: the nearest measured count at or below
    it (no gain assumed beyond what was measured)."""
    below = [n for n in rates if n <= workers]
    return rates[max(below)] if below else rates[min(rates)] * workers / min(rates)


def replay_backlog(backlog: int, rates: dict[int, float], start_s: float, threshold: int, activation: int,
                   min_replicas: int, max_replicas: int, partitions: int, polling_s: float,
                   incoming: float = 0.0, step_s: float = 1.0, limit_s: float = 86400) -> dict:
    """Simulate KEDA against a backlog of `backlog` (plus `incoming` per second): every polling
    interval it sets the desired workers; the new ones drain only after `start_s`. Returns the
    time to drain (None: not within `limit_s`) and the most workers used."""
    t, lag, replicas = 0.0, float(backlog), max(1, min_replicas)
    pending: list[tuple[float, int]] = []  # (when it consumes, replicas then)
    most, next_poll = replicas, 0.0
    while lag > 0 and t < limit_s:
        if t >= next_poll:
            desired = keda_replicas(int(lag), threshold, activation, min_replicas, max_replicas, partitions)
            if desired > max([replicas] + [r for _, r in pending]):
                pending.append((t + start_s, desired))
            # No scaling down while a backlog drains: the HPA behind KEDA waits out a 5-minute
            # stabilization window first, and by then the lag is back under the threshold.
            next_poll += polling_s
        if pending and t >= pending[0][0]:
            replicas = pending.pop(0)[1]
            most = max(most, replicas)
        lag = max(0.0, lag + (incoming - rate_at(replicas, rates)) * step_s)
        t += step_s
    return {"backlog": backlog, "drain_s": t if lag == 0 else None, "workers": most}


def keda_on_curve(curve: list[tuple[float, int]], threshold: int, activation: int, min_replicas: int,
                  max_replicas: int, partitions: int) -> list[tuple[float, int, int]]:
    """(time, lag, workers KEDA would ask for) at each measured point of a lag curve."""
    return [(t, lag, keda_replicas(lag, threshold, activation, min_replicas, max_replicas, partitions))
            for t, lag in curve]


# ---- the whole benchmark -------------------------------------------------------------------------
def bench_scale(checkpoint: Path | None = None, counts=(1, 2, 4), total: int = 4000, streams: int = 16,
                frames: int = 50, quantize: str = "int8", sample_s: float = 1.0, steady_s: float = 20.0,
                threshold: int | None = None, activation: int | None = None, polling_s: float = 15.0,
                progress=print) -> dict:
    from stream.bench.pipeline import scratch_env
    from stream.bench.serve import untrained_checkpoint
    from stream.stack.embedded import Stack
    from stream.store import TrendStore
    from stream.triton_client import TritonScorer
    from trainer.export import export

    partitions = max(counts)
    with tempfile.TemporaryDirectory(prefix="tecaflow-bench-scale-") as tmp:
        tmp = Path(tmp)
        if checkpoint is None:
            progress("building an untrained minilm TeCaFN for the benchmark")
            checkpoint = untrained_checkpoint(tmp / "ckpt")
        export(checkpoint, tmp / "repo", max_batch=64, quantize=quantize)
        env = scratch_env(tmp, tmp / "repo", partitions=partitions, session_timeout_s=6)
        settings = Settings.from_env(env)
        stack = Stack(settings)
        started = stack.up(services=("broker", "redis", "triton"))
        try:
            scorer = TritonScorer(settings.triton_url)
            widths = scorer.contract().widths
            scorer.close()
            store = TrendStore(settings.redis_url)
            triton_pid = stack.stopper("triton").pid()
            runs = [drain_growing(n, tmp, env, settings, store, triton_pid, total=total, streams=streams,
                                  widths=widths, frames=frames, sample_s=sample_s, progress=progress)
                    for n in counts]
            steady = steady_lag(tmp, env, settings, runs[0]["drain_rate"] / 2, steady_s, streams, widths, frames,
                                sample_s, progress)
        finally:
            stack.down(services=tuple(reversed(started)))
    return summarize(runs, steady, partitions, quantize, threshold, activation, polling_s,
                     settings.batches_in_flight * settings.batch_size)


def summarize(runs: list[dict], steady: dict, partitions: int, quantize: str, threshold: int | None,
              activation: int | None, polling_s: float, in_flight: int) -> dict:
    rates = {r["workers"]: r["drain_rate"] for r in runs}
    one = runs[0]
    # The rules docs/kubernetes.md gives: the lag threshold is what one worker drains in 5 s, and
    # never under three times the lag of normal operation (or KEDA would add workers for nothing);
    # the activation lag is what a worker holds in flight plus that normal lag (below it, nothing
    # is really waiting).
    suggested = max(int(5 * one["drain_rate"]), 3 * (steady["max"] or 0))
    threshold = threshold or int(round(suggested, -2))
    if activation is None:
        activation = min(threshold, math.ceil((in_flight + (steady["max"] or 0)) / 100) * 100)
    start_s = max(r["start_s"] for r in runs)
    rule = dict(threshold=threshold, activation=activation, min_replicas=1, max_replicas=partitions,
                partitions=partitions)
    return {
        "quantize": quantize, "partitions": partitions, "runs": runs, "steady_lag": steady,
        "scaling": {n: rates[n] / rates[min(rates)] for n in rates},
        "suggested_lag_threshold": suggested, "keda": {**rule, "polling_s": polling_s, "start_s": start_s},
        "keda_on_measured": {r["workers"]: keda_on_curve(r["lag_curve"], **rule) for r in runs},
        "replay": [replay_backlog(b, rates, start_s, polling_s=polling_s, **rule) for b in BACKLOGS],
        # Where every worker has cores of its own and Triton keeps up, n workers drain n times
        # as fast as one: what these figures mean on a cluster (here all share the same cores).
        "replay_own_cores": [replay_backlog(b, {n: n * rates[min(rates)] / min(rates) for n in range(1, partitions + 1)},
                                            start_s, polling_s=polling_s, **rule) for b in BACKLOGS],
    }


def format_report(r: dict) -> str:
    k = r["keda"]
    rows = [f"served model {r['quantize']}, {r['partitions']} partitions; every process on this machine's cores",
            f"{'workers':>8} {'segments/s':>11} {'vs 1':>6} {'start s':>8} {'worker ms/seg':>14} "
            f"{'Triton ms/seg':>14} {'cores/worker':>13} {'peak MB/worker':>15} {'Triton MB':>10}"]
    for run in r["runs"]:
        rows.append(f"{run['workers']:>8} {run['drain_rate']:>11.1f} {r['scaling'][run['workers']]:>6.2f} "
                    f"{run['start_s']:>8.1f} {run['worker_cpu_ms_per_segment']:>14.2f} "
                    f"{run['triton_cpu_ms_per_segment']:>14.2f} "
                    f"{sum(run['worker_cores']) / run['workers']:>13.2f} {max(run['worker_peak_rss_mb']):>15} "
                    f"{run['triton_peak_rss_mb']:>10}")
    for run in r["runs"]:
        curve = run["lag_curve"]
        step = max(1, len(curve) // 12)
        rows.append(f"lag curve, {run['workers']} worker(s) (s: lag): "
                    + ", ".join(f"{t:.0f}: {lag}" for t, lag in curve[::step]))
    s = r["steady_lag"]
    rows.append(f"steady load of {s['rate']:.0f}/s on 1 worker: lag median {s['median']}, max {s['max']}")
    rows.append(f"lag threshold by the rule (5 s of one worker's drain, >= 3x the steady lag): "
                f"{r['suggested_lag_threshold']}; activation: in flight + steady lag; replayed with {k['threshold']}, activation {k['activation']}, "
                f"polling {k['polling_s']:.0f}s, a new worker consuming after {k['start_s']:.0f}s")
    for n, points in r["keda_on_measured"].items():
        step = max(1, len(points) // 8)
        rows.append(f"KEDA on the {n}-worker curve (s: lag -> workers): "
                    + ", ".join(f"{t:.0f}: {lag} -> {w}" for t, lag, w in points[::step]))
    for title, replays in (("at the rates measured here", r["replay"]),
                           ("each worker on cores of its own, Triton keeping up", r["replay_own_cores"])):
        rows.append(f"KEDA replayed on a backlog, {title}:")
        for b in replays:
            drain = f"{b['drain_s'] / 60:.1f} min" if b["drain_s"] is not None else "not within a day"
            rows.append(f"  {b['backlog']:>9,} waiting: up to {b['workers']} workers, drained in {drain}")
    return "\n".join(rows)


def register(subparsers) -> None:
    """`tecaflow bench scale`."""
    p = subparsers.add_parser("scale", help="drain rate and lag curve of 1, 2 and 4 workers on the embedded stack, "
                                            "and KEDA's lag rule replayed on them")
    p.add_argument("--checkpoint", type=Path, help="default: an untrained MiniLM-sized TeCaFN")
    p.add_argument("--workers", default="1,2,4", help="worker counts to measure, comma-separated")
    p.add_argument("--segments", type=int, default=4000, help="backlog drained by each worker count")
    p.add_argument("--streams", type=int, default=16)
    p.add_argument("--quantize", choices=("none", "int8"), default="int8", help="the export Triton serves")
    p.add_argument("--steady-seconds", type=float, default=20.0, help="the steady-load phase")
    p.add_argument("--lag-threshold", type=int, help="replay KEDA with this (default: the rule's)")
    p.add_argument("--activation", type=int, help="replay KEDA with this activation lag")
    p.add_argument("--polling", type=float, default=15.0, help="KEDA's pollingInterval for the replay")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_scale)


def cmd_bench_scale(args) -> int:
    from stream.errors import UserError
    try:
        counts = sorted({int(c) for c in args.workers.split(",")})
    except ValueError:
        raise UserError(f"--workers {args.workers!r}: comma-separated worker counts, e.g. 1,2,4") from None
    if not counts or counts[0] < 1:
        raise UserError("--workers: counts must be >= 1")
    for name in ("segments", "streams"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be >= 1")
    if args.streams < max(counts):
        raise UserError(f"--streams {args.streams} is below the most workers ({max(counts)}): a stream is one "
                        "partition, so some workers would have nothing")
    result = bench_scale(args.checkpoint, counts, args.segments, args.streams, quantize=args.quantize,
                         steady_s=args.steady_seconds, threshold=args.lag_threshold, activation=args.activation,
                         polling_s=args.polling, progress=lambda m: print(m, file=sys.stderr, flush=True))
    print(json.dumps(result, indent=2) if args.json else format_report(result))
    return 0
