"""`tecaflow bench pipeline`: what users get, Kafka to Redis, against the model alone, in one run.

On the embedded stack (free ports, a scratch run directory) with one exported model:
    raw       ONNX Runtime in-process on the exported graph, batches of the worker's batch size
    served    Triton, batches of the worker's batch size from two client threads (as the worker
              keeps two batches in flight)
    naive     one message at a time: read it, decode, tokenize, one Triton call, one Redis write
    e2e       a `tecaflow worker` draining a pre-produced backlog: from the first segment it
              consumed to the last one recorded in Redis
    latency   event time -> Redis at half the e2e rate: each segment's event time is when it is
              sent; the bench polls Redis every few milliseconds for it (so the figures include
              up to one poll interval)
    stages    where a batch's time goes in the worker (its tecaflow_stage_seconds histogram)
The ratios e2e/raw, e2e/naive and served/raw are from this one run. raw is one session with
every core, with tecaflow's session options (stream/triton_model.py) and with ONNX Runtime's
defaults, at the start and again at the end; the baseline is the best of the four rates, since the
shared machine's load drifts within a run and a baseline caught in a slow moment flatters e2e.
With --quantize int8 the stack serves the int8 export, and raw is measured on both graphs.
"""
from __future__ import annotations

import asyncio
import re
import tempfile
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import numpy as np

from stream.config import Settings, environment_with
from stream.contract import DEFAULT_INSTANCES, ONNX_FILE
from stream.schema import encode_segment
from stream.stack.service import free_ports

STAGES = ("decode", "tokenize", "triton", "redis", "detect", "publish")
WORDS = ("the", "movie", "was", "really", "good", "but", "the", "ending", "felt", "rushed", "and", "a", "bit", "flat")


def scratch_env(root: Path, repo: Path, **settings) -> dict[str, str]:
    broker, redis, http, grpc, metrics, prom, worker_metrics = free_ports(7)
    return environment_with(
        run_dir=root / "run", model_repo=repo, triton_http_port=http,
        triton_metrics_port=metrics, prometheus_port=prom, metrics_port=worker_metrics,
        broker_url=f"kafka://127.0.0.1:{broker}", redis_url=f"redis://127.0.0.1:{redis}/0",
        triton_url=f"127.0.0.1:{grpc}", alert_warmup=1000000, **settings)


def segments(prefix: str, streams: int, per_stream: int, widths: dict[str, int], frames: int, seed: int = 0):
    """(key, message) for per_stream segments of each stream, interleaved, ~32 tokens of text each."""
    rng = np.random.default_rng(seed)
    for i in range(per_stream):
        for s in range(streams):
            stream = f"{prefix}-{s:03d}"
            text = " ".join(rng.choice(WORDS, 28))
            yield stream.encode(), lambda t, stream=stream, i=i, text=text: encode_segment(
                stream, f"{stream}/{i}", t, text, rng.normal(size=(frames, widths["audio"])),
                rng.normal(size=(frames, widths["visual"])))


async def produce(settings: Settings, messages, rate: float = 0.0) -> int:
    """Send every message (event time = when it is sent), at `rate` per second (0: at once)."""
    from aiokafka import AIOKafkaProducer
    producer = AIOKafkaProducer(bootstrap_servers=settings.broker_servers(), linger_ms=0 if rate else 20)
    await producer.start()
    n, started = 0, time.monotonic()
    try:
        for key, make in messages:
            if rate:
                await asyncio.sleep(max(0.0, started + n / rate - time.monotonic()))
            await producer.send(settings.topic_segments, key=key, value=make(time.time()))
            n += 1
        await producer.flush()
    finally:
        await producer.stop()
    return n


def metric(port: int, name: str) -> dict[str, float]:
    """Every sample of `name` on the worker's /metrics, by its label text."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {labels or "": float(v) for labels, v in re.findall(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", text, re.M)}


def served_batches(url: str, contract, batch: int, seconds: float, clients: int = 2) -> float:
    import threading

    from stream.bench.serve import segment_inputs
    from stream.triton_client import TritonScorer
    feed = segment_inputs(contract, batch=batch)
    done = [0] * clients
    stop_at = time.perf_counter() + seconds

    def client(k: int) -> None:
        scorer = TritonScorer(url)
        scorer.score(feed)
        while time.perf_counter() < stop_at:
            scorer.score(feed)
            done[k] += batch
        scorer.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    begin = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / (time.perf_counter() - begin)


async def naive(settings: Settings, count: int) -> float:
    """A consumer that reads one message and does all of its work before the next: segments/s."""
    from aiokafka import AIOKafkaConsumer

    from stream.startup import build_pipeline
    pipeline = await build_pipeline(settings)
    consumer = AIOKafkaConsumer(settings.topic_segments, bootstrap_servers=settings.broker_servers(),
                                auto_offset_reset="earliest", enable_auto_commit=False, fetch_max_wait_ms=20)
    await consumer.start()
    try:
        n, started = 0, None
        while n < count:
            message = await consumer.getone()
            started = started or time.perf_counter()
            await pipeline.process([message.value])
            n += 1
        return (n - 1) / (time.perf_counter() - started)
    finally:
        await consumer.stop()
        await pipeline.scorer.close()


def wait_recorded(store, streams: list[str], total: int, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(t["count"] for t in store.totals_many(streams).values() if t) >= total:
            return time.perf_counter()
        time.sleep(0.01)
    raise RuntimeError(f"the worker did not record {total} segments in {timeout:.0f}s")


def drain(port: int, store, streams: list[str], total: int, timeout: float = 600) -> float:
    """Seconds from the worker's first consumed segment to the last recorded in Redis."""
    deadline = time.monotonic() + timeout
    while not metric(port, "tecaflow_segments_consumed_total").get(""):
        if time.monotonic() > deadline:
            raise RuntimeError("the worker consumed nothing")
        time.sleep(0.005)
    first = time.perf_counter()
    return wait_recorded(store, streams, total, timeout) - first


def latencies(settings: Settings, store, streams: int, rate: float, seconds: float, widths, frames,
              prefix: str = "lat") -> list[float]:
    """Event time -> seen in Redis, for every segment sent at `rate` for `seconds`."""
    import threading
    per_stream = max(1, int(rate * seconds / streams))
    names = [f"{prefix}-{s:03d}" for s in range(streams)]
    sender = threading.Thread(target=lambda: asyncio.run(produce(
        settings, segments(prefix, streams, per_stream, widths, frames, seed=2), rate)))
    sender.start()
    seen: dict[str, float] = {}
    deadline = time.monotonic() + seconds + 60
    while len(seen) < streams * per_stream and time.monotonic() < deadline:
        for name in names:
            now = time.time()
            for r in store.recent(name, 20):
                seen.setdefault(r["segment_id"], now - r["event_time"])
        time.sleep(0.005)
    sender.join()
    return list(seen.values())




def bench_pipeline(checkpoint: Path | None = None, total: int = 3000, streams: int = 8, batch: int = 32,
                   frames: int = 50, quantize: str = "none", naive_count: int = 300, seconds: float = 15.0,
                   instances: int = DEFAULT_INSTANCES, shadow_shares: tuple[float, ...] = (), progress=print) -> dict:
    """With `shadow_shares`, the worker drains a backlog and is timed again with a candidate (a copy
    of the served version) shadowing each share of the traffic, then once more without one (the
    load drifts: the baseline is the mean of the runs without a candidate before and after)."""
    from stream.bench.serve import untrained_checkpoint
    from stream.stack.embedded import Stack, worker_service
    from stream.store import TrendStore
    from stream.triton_client import TritonScorer
    from trainer.export import export

    with tempfile.TemporaryDirectory(prefix="tecaflow-bench-pipeline-") as tmp:
        tmp = Path(tmp)
        if checkpoint is None:
            progress("building an untrained minilm TeCaFN for the benchmark")
            checkpoint = untrained_checkpoint(tmp / "ckpt")
        fp32 = export(checkpoint, tmp / "fp32", max_batch=64)
        served_dir = export(checkpoint, tmp / "repo", max_batch=64, quantize=quantize, instances=instances)
        quantized = quantize != "none"
        env = scratch_env(tmp, tmp / "repo", batch_size=batch)
        settings = Settings.from_env(env)
        stack = Stack(settings)
        started = stack.up(services=("broker", "redis", "triton"))
        worker = None
        try:
            scorer = TritonScorer(settings.triton_url)
            contract = scorer.contract()
            scorer.close()
            result = {"segments": total, "streams": streams, "batch": batch, "frames": frames, "instances": instances,
                      "served_model": quantize if quantized else "fp32"}
            progress(f"raw ONNX Runtime at batch {batch}: one session with every core, tecaflow's options and "
                     "ONNX Runtime's defaults")
            graphs = {"fp32": fp32 / ONNX_FILE, **({quantize: served_dir / ONNX_FILE} if quantized else {})}
            measure_raw(result, graphs, contract, batch, seconds / 4)
            progress(f"Triton at batch {batch}")
            result["served"] = served_batches(settings.triton_url, contract, batch, seconds / 2)
            progress(f"producing a backlog of {total} segments over {streams} streams")
            asyncio.run(produce(settings, segments("bench", streams, total // streams, contract.widths, frames)))
            progress(f"naive consumer on the first {naive_count}")
            naive_settings = replace(settings, redis_url=settings.redis_url.removesuffix("/0") + "/1")  # its own db
            result["naive"] = asyncio.run(naive(naive_settings, naive_count))
            progress("worker draining the backlog")
            store = TrendStore(settings.redis_url)
            worker = worker_service(tmp, env=env).start()
            names = [f"bench-{s:03d}" for s in range(streams)]
            elapsed = drain(settings.metrics_port, store, names, streams * (total // streams))
            result["e2e"] = streams * (total // streams) / elapsed
            sums = metric(settings.metrics_port, "tecaflow_stage_seconds_sum")
            counts = metric(settings.metrics_port, "tecaflow_stage_seconds_count")
            result["stages_ms_per_batch"] = {s: 1e3 * sums.get(f'{{stage="{s}"}}', 0.0)
                                             / max(1.0, counts.get(f'{{stage="{s}"}}', 0.0)) for s in STAGES}
            rate = result["e2e"] / 2
            progress(f"event time -> Redis at {rate:.0f} segments/s for {seconds:.0f}s")
            lat = latencies(settings, store, streams, rate, seconds, contract.widths, frames)
            result["latency_rate"] = rate
            result["latency_ms"] = {"p50": 1e3 * float(np.percentile(lat, 50)),
                                    "p99": 1e3 * float(np.percentile(lat, 99)), "n": len(lat)}
            if shadow_shares:
                worker.stop()
                worker = None
                add_candidate(tmp / "repo", settings, store, progress)
                result["shadow"] = {}
                for share in (*shadow_shares, 0.0):
                    if share == 0.0:
                        stop_shadowing(store)
                    progress(f"a candidate shadowing {share:.0%} of the traffic: draining {total} segments" if share
                             else f"no candidate again: draining {total} segments")
                    result["shadow"][share] = timed_worker(tmp, dict(env, TECAFLOW_SHADOW_SHARE=str(share or 1.0)),
                                                           settings, store, f"shadow{int(share * 100)}", streams,
                                                           total // streams, contract, frames, rate, seconds)
            progress("raw ONNX Runtime again (the machine's load drifts; the baseline is the best of both rounds)")
            measure_raw(result, graphs, contract, batch, seconds / 4)
        finally:
            if worker is not None:
                worker.stop()
            stack.down(services=tuple(reversed(started)))
    result["ratios"] = {"e2e/raw_fp32": result["e2e"] / result["raw_fp32"], "e2e/naive": result["e2e"] / result["naive"],
                        "served/raw_fp32": result["served"] / result["raw_fp32"]}
    if quantize != "none":
        result["ratios"][f"served/raw_{quantize}"] = result["served"] / result[f"raw_{quantize}"]
    if "shadow" in result:
        after = result["shadow"].pop(0.0)
        result["e2e_after_shadow"], result["p99_ms_after_shadow"] = after["e2e"], after["p99_ms"]
        e2e_none = (result["e2e"] + after["e2e"]) / 2
        p99_none = (result["latency_ms"]["p99"] + after["p99_ms"]) / 2
        for share, run in result["shadow"].items():
            result["ratios"][f"e2e shadow {share:.0%}/none"] = run["e2e"] / e2e_none
            result["ratios"][f"p99 shadow {share:.0%}/none"] = run["p99_ms"] / p99_none
    return result


def timed_worker(tmp: Path, env: dict, settings: Settings, store, prefix: str, streams: int, per_stream: int, contract,
                 frames: int, rate: float, seconds: float) -> dict:
    """A fresh worker draining a pre-produced backlog, then its latency at `rate`."""
    from stream.stack.embedded import worker_service
    asyncio.run(produce(settings, segments(prefix, streams, per_stream, contract.widths, frames)))
    worker = worker_service(tmp, f"worker-{prefix}", env=env).start()
    try:
        names = [f"{prefix}-{s:03d}" for s in range(streams)]
        e2e = streams * per_stream / drain(settings.metrics_port, store, names, streams * per_stream)
        lat = latencies(settings, store, streams, rate, seconds, contract.widths, frames, f"{prefix}lat")
        return {"e2e": e2e, "p50_ms": 1e3 * float(np.percentile(lat, 50)), "p99_ms": 1e3 * float(np.percentile(lat, 99)),
                "candidate_calls": metric(settings.metrics_port, "tecaflow_shadow_calls_total")}
    finally:
        worker.stop()


def stop_shadowing(store) -> None:
    from stream.shadow import roles
    before = roles.read(store.redis)
    roles.change(store.redis, before, roles.stopped(before), "bench pipeline")


def add_candidate(repo: Path, settings: Settings, store, progress) -> None:
    """The served version again as version 2, shadowing version 1: the same graph, so the
    candidate costs what a real one of its size would."""
    import shutil

    from stream.shadow import roles
    from stream.triton_client import TritonScorer
    progress("adding a candidate: the served version copied as version 2")
    roles.serve_exactly(repo, ["1"])  # before version 2 appears: the newest alone would be served
    shutil.copytree(repo / "tecafn" / "1", repo / "tecafn" / ".staging-2")
    (repo / "tecafn" / ".staging-2").rename(repo / "tecafn" / "2")
    roles.serve_exactly(repo, ["1", "2"])
    scorer = TritonScorer(settings.triton_url)
    deadline = time.monotonic() + 300
    try:
        while not _ready(scorer, "2"):
            if time.monotonic() > deadline:
                raise RuntimeError("Triton did not load the candidate version")
            time.sleep(0.5)
    finally:
        scorer.close()
    candidate = roles.Roles(live="1", candidate="2", candidate_since=time.time())
    roles.change(store.redis, roles.read(store.redis), candidate, "bench pipeline")


def _ready(scorer, version: str) -> bool:
    try:
        return scorer.client.is_model_ready("tecafn", version)
    except Exception:  # noqa: BLE001 - reloading
        return False


def measure_raw(result: dict, graphs: dict, contract, batch: int, seconds: float) -> None:
    """raw_<graph> is the best in-process rate seen for that graph: one session with every core,
    with tecaflow's options or ONNX Runtime's defaults, whichever was faster, over every round.
    The baseline is the hardest one to beat, whatever the served model's instance count."""
    from stream.bench.serve import raw_throughput
    from stream.triton_model import session_options
    for name, graph in graphs.items():
        for variant, options in (("options", session_options(1)), ("ort_defaults", None)):
            rate = raw_throughput(graph, contract, batch, seconds, options)["segments_per_s"]
            key = f"raw_{name}_{variant}"
            result[key] = max(result.get(key, 0.0), rate)
        result[f"raw_{name}"] = max(result[f"raw_{name}_options"], result[f"raw_{name}_ort_defaults"])


def summarize_runs(runs: list[dict]) -> dict:
    """Median, lowest and highest of each ratio and of the p99 over repeated runs: on a shared
    machine one run's ratio can land anywhere in a wide band, so a claim rests on the median."""
    def spread(values: list[float]) -> dict:
        return {"median": float(np.median(values)), "min": min(values), "max": max(values)}
    summary = {name: spread([r["ratios"][name] for r in runs]) for name in runs[0]["ratios"]}
    summary["p99_ms"] = spread([r["latency_ms"]["p99"] for r in runs])
    return {"runs": len(runs), **summary}


def format_summary(summary: dict) -> str:
    rows = [f"over {summary['runs']} runs: median (lowest-highest)"]
    rows += [f"{name:>16} {v['median']:6.2f} ({v['min']:.2f}-{v['max']:.2f})"
             for name, v in summary.items() if name != "runs"]
    return "\n".join(rows)


def format_report(r: dict) -> str:
    rows = [f"{r['segments']} segments over {r['streams']} streams, batch {r['batch']}, {r['frames']} frames, "
            f"served model {r['served_model']}, {r['instances']} Triton instance(s)"]
    for key in ("raw_fp32", "raw_fp32_options", "raw_fp32_ort_defaults", "raw_int8", "raw_int8_options",
                "raw_int8_ort_defaults", "served", "naive", "e2e"):
        if key in r:
            rows.append(f"{key:>22} {r[key]:8.1f} segments/s")
    rows += [f"{k:>16} {v:6.2f}x" for k, v in r["ratios"].items()]
    lat = r["latency_ms"]
    rows.append(f"event time -> Redis at {r['latency_rate']:.0f}/s: p50 {lat['p50']:.0f} ms, p99 {lat['p99']:.0f} ms "
                f"({lat['n']} segments)")
    if "e2e_after_shadow" in r:
        rows.append(f"no candidate, after: e2e {r['e2e_after_shadow']:.1f} segments/s, "
                    f"p99 {r['p99_ms_after_shadow']:.0f} ms (the baseline is the mean of before and after)")
    for share, run in r.get("shadow", {}).items():
        rows.append(f"candidate shadowing {share:.0%}: e2e {run['e2e']:.1f} segments/s, p50 {run['p50_ms']:.0f} ms, "
                    f"p99 {run['p99_ms']:.0f} ms at the same rate; candidate calls {run['candidate_calls']}")
    total = sum(r["stages_ms_per_batch"].values()) or 1.0
    rows.append("per batch: " + ", ".join(f"{s} {ms:.1f} ms ({100 * ms / total:.0f} %)"
                                          for s, ms in r["stages_ms_per_batch"].items()))
    return "\n".join(rows)
