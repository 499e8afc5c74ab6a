"""`tecaflow bench serve`: the served model against raw ONNX Runtime in-process, in one run.

Clients send one segment per request over gRPC at concurrency 1, 4 and 16, so Triton's dynamic
batcher has to form the batches; raw ONNX Runtime runs the same model file on batches of 1, 4
and 16 in this process. Ratios are served / raw throughput at the same batch size. With
--quantize int8 the int8 export is served, and the fp32 graph of the same checkpoint is measured
raw beside it: raw int8 / raw fp32 is the int8 speed-up.

With --compare OPTION ... it prints a table instead, to choose a model by: for each option (a
run directory, or a text encoder's name for an untrained model of it, which is as fast as a
trained one) and each quantization, the served and raw throughput at one concurrency, the ratio
to the first row, and the run's test metrics where it has them. Every row is measured in the same
run on the same machine, one server at a time, with the machine's load average as it ended (a
row measured while something else ran says so).
"""
from __future__ import annotations

import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from stream.contract import ONNX_FILE, SCORE, ModelContract
from stream.triton_client import TritonScorer


def segment_inputs(contract, tokens: int = 32, frames: int = 50, batch: int = 1, seed: int = 0) -> dict:
    """Full-length random segments: the model's cost does not depend on the values. A model with
    context gets its longest context (max_context_tokens): what context costs at most."""
    rng = np.random.default_rng(seed)
    frames = min(frames, contract.max_frames)
    context = None
    if contract.context:
        context = (rng.integers(1000, 2000, (batch, contract.max_context_tokens)),
                   np.ones((batch, contract.max_context_tokens)))
    return contract.batch(rng.integers(1000, 2000, (batch, tokens)), np.ones((batch, tokens)),
                          {m: list(rng.normal(size=(batch, frames, width))) for m, width in contract.widths.items()},
                          context)


def raw_throughput(onnx_path: Path, contract, batch: int, seconds: float, options=None) -> dict:
    """ONNX Runtime in this process, with its default session options unless given others."""
    run = raw_runner(onnx_path, contract, batch, options)
    latencies = timed(run, seconds)
    return {"segments_per_s": batch * len(latencies) / sum(latencies), "p50_ms": 1e3 * statistics.median(latencies)}


def raw_runner(onnx_path: Path, contract, batch: int, options=None):
    """One call of the graph on `batch` full-length segments, warmed up."""
    import onnxruntime as ort
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    feed = contract.check_request(segment_inputs(contract, batch=batch))  # lengths as the graph takes them: [B]
    session.run([SCORE], feed)
    return lambda: session.run([SCORE], feed)


def timed(run, seconds: float) -> list[float]:
    latencies, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        run()
        latencies.append(time.perf_counter() - t)
    return latencies


def served_throughput(url: str, contract, concurrency: int, seconds: float) -> dict:
    feed = segment_inputs(contract, batch=1)
    latencies: list[float] = []
    lock = threading.Lock()
    errors: list[str] = []
    stop_at = time.perf_counter() + seconds

    def client_loop():
        scorer = TritonScorer(url)
        scorer.score(feed)  # connection warm-up, not timed
        mine = []
        try:
            while time.perf_counter() < stop_at:
                t = time.perf_counter()
                scorer.score(feed)
                mine.append(time.perf_counter() - t)
        except Exception as e:  # noqa: BLE001 - reported, not hidden
            errors.append(str(e))
        finally:
            scorer.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client_loop) for _ in range(concurrency)]
    begin = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - begin
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed, first: {errors[0]}")
    lat = np.array(latencies)
    return {"segments_per_s": len(lat) / elapsed, "p50_ms": 1e3 * float(np.percentile(lat, 50)),
            "p99_ms": 1e3 * float(np.percentile(lat, 99)), "requests": int(len(lat))}


def untrained_checkpoint(out: Path, text_encoder: str = "minilm") -> Path:
    """A TeCaFN on `text_encoder` (pretrained weights) with untrained heads: speed does not depend on
    the weights."""
    from trainer import calibration
    from trainer.data import Batcher, load_dataset
    from trainer.text_encoder import load_tokenizer
    from trainer.train import TrainOptions, build_model, save_checkpoint
    ds = load_dataset("synthetic", n=64)
    opts = TrainOptions(out=out, text_encoder=text_encoder)
    model, encoder_config = build_model(ds, opts)
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out / "checkpoint.pt", model, encoder_config, opts, ds)
    tokenizer = load_tokenizer(text_encoder)
    tokenizer.save_pretrained(out / "tokenizer")
    calibration.save(out / calibration.CALIBRATION_FILE,  # for --quantize int8
                     Batcher(ds.split("train"), tokenizer, opts.max_text_tokens, opts.max_frames))
    return out / "checkpoint.pt"


def bench_serve(checkpoint: Path | None = None, seconds: float = 8.0, levels=(1, 4, 16),
                ports=(18100, 18101, 18102), text_encoder: str = "minilm", progress=print,
                quantize: str = "none", attribution: bool = True) -> dict:
    """`attribution`: also measure the model exported without it (what attribution costs)."""
    from stream.stack.tritonserver import EmbeddedTriton
    from trainer.export import export

    with tempfile.TemporaryDirectory(prefix="tecaflow-bench-") as tmp:
        tmp = Path(tmp)
        if checkpoint is None:
            progress(f"building an untrained {text_encoder} TeCaFN for the benchmark")
            checkpoint = untrained_checkpoint(tmp / "ckpt", text_encoder)
        version_dir = export(checkpoint, tmp / "repo", max_batch=max(levels), quantize=quantize)
        # the fp32 graph beside an int8 one, measured raw in the same run: the int8 speed-up
        fp32_dir = export(checkpoint, tmp / "fp32", max_batch=max(levels)) if quantize != "none" else None
        server = EmbeddedTriton(tmp / "repo", tmp / "triton", *ports)
        server.start(timeout=180)
        try:
            contract = served_contract(server)
            result = {"levels": {}, "seconds_per_level": seconds, "served_model": quantize if fp32_dir else "fp32"}
            for level in levels:
                progress(f"concurrency {level}: served, then raw ONNX Runtime at batch {level}")
                served = served_throughput(server.grpc_url, contract, level, seconds)
                raw = raw_throughput(version_dir / ONNX_FILE, contract, level, seconds / 2)
                result["levels"][str(level)] = {"served": served, "raw": raw,
                                                "ratio": served["segments_per_s"] / raw["segments_per_s"]}
                if fp32_dir:
                    fp32 = raw_throughput(fp32_dir / ONNX_FILE, contract, level, seconds / 2)
                    result["levels"][str(level)].update(raw_fp32=fp32, raw_speedup=raw["segments_per_s"]
                                                        / fp32["segments_per_s"])
            if attribution:
                result["attribution"] = attribution_cost(checkpoint, tmp / "repo", server,
                                                         result["levels"][str(levels[-1])], levels[-1], seconds,
                                                         progress)
        finally:
            server.stop()
    return result


def served_contract(server):
    scorer = TritonScorer(server.grpc_url)
    try:
        return scorer.contract()
    finally:
        scorer.close()


def attribution_cost(checkpoint: Path, repo: Path, server, with_attribution: dict, level: int, seconds: float,
                     progress) -> dict:
    """The same model exported without attribution, served as the next version on the same
    server, at the same concurrency: what the text-only score and contributions cost."""
    from trainer.export import export
    progress(f"attribution off: the same model exported without it, served at concurrency {level}")
    quantize = "int8" if with_attribution.get("raw_fp32") else "none"
    version_dir = export(checkpoint, repo, max_batch=level, attribution=False, quantize=quantize)
    scorer = TritonScorer(server.grpc_url)
    deadline = time.monotonic() + 120
    while not scorer.client.is_model_ready("tecafn", version_dir.name):
        if time.monotonic() > deadline:
            raise RuntimeError(f"version {version_dir.name} did not load")
        time.sleep(0.5)
    time.sleep(3)  # the older version unloads; measure the new one alone
    contract = scorer.contract()
    scorer.close()
    served = served_throughput(server.grpc_url, contract, level, seconds)
    raw = raw_throughput(version_dir / ONNX_FILE, contract, level, seconds / 2)
    return {"concurrency": level, "served_off": served, "raw_off": raw,
            "served_ratio": with_attribution["served"]["segments_per_s"] / served["segments_per_s"],
            "raw_ratio": with_attribution["raw"]["segments_per_s"] / raw["segments_per_s"]}


def format_report(r: dict) -> str:
    int8 = r.get("served_model", "fp32") != "fp32"
    lines = [f"served model: {r.get('served_model', 'fp32')}",
             f"{'conc.':>5} {'served seg/s':>13} {'p50 ms':>8} {'p99 ms':>8} {'raw seg/s':>10} {'ratio':>7}"
             + (f" {'raw fp32':>9} {'int8/fp32':>9}" if int8 else "")]
    for level, v in r["levels"].items():
        s, raw = v["served"], v["raw"]
        lines.append(f"{level:>5} {s['segments_per_s']:>13.1f} {s['p50_ms']:>8.1f} {s['p99_ms']:>8.1f} "
                     f"{raw['segments_per_s']:>10.1f} {v['ratio']:>6.2f}x"
                     + (f" {v['raw_fp32']['segments_per_s']:>9.1f} {v['raw_speedup']:>8.2f}x" if int8 else ""))
    a = r.get("attribution")
    if a:
        lines.append(f"attribution on vs off at concurrency {a['concurrency']}: served {a['served_ratio']:.2f}x "
                     f"({a['served_off']['segments_per_s']:.1f} seg/s without it), raw ONNX Runtime "
                     f"{a['raw_ratio']:.2f}x ({a['raw_off']['segments_per_s']:.1f} seg/s without it)")
    return "\n".join(lines)


def bench_compare(options: list[str], quantizations=("none", "int8"), concurrency: int = 16, seconds: float = 8.0,
                  ports=(18100, 18101, 18102), progress=print, rounds: int = 5) -> dict:
    """One row per option and quantization: served segments/s at `concurrency`, one server at a
    time; then raw ONNX Runtime at batch `concurrency` for every row, interleaved in `rounds`
    rounds, so that a load that comes and goes weighs on every row alike (its median is kept)."""
    from stream.stack.tritonserver import EmbeddedTriton
    from trainer.export import Int8OutOfTolerance, export

    rows = []
    with tempfile.TemporaryDirectory(prefix="tecaflow-compare-") as tmp:
        tmp = Path(tmp)
        for i, option in enumerate(options):
            checkpoint, quality = option_checkpoint(option, tmp / f"option-{i}", progress)
            for quantize in quantizations:
                progress(f"{option}, {quantize}: export, then serve to {concurrency} clients")
                repo = tmp / f"repo-{i}-{quantize}"
                try:
                    version = export(checkpoint, repo, max_batch=concurrency, quantize=quantize)
                except Int8OutOfTolerance as e:  # a row of its own: the model cannot be served int8
                    rows.append({"option": option, "quantize": quantize, "refused": e.finding,
                                 "test": quality})
                    progress(f"{option}, {quantize}: not served, {rows[-1]['refused']}")
                    continue
                server = EmbeddedTriton(repo, tmp / f"triton-{i}-{quantize}", *ports)
                server.start(timeout=300)
                try:
                    served = served_throughput(server.grpc_url, served_contract(server), concurrency, seconds)
                finally:
                    server.stop()
                rows.append({"option": option, "quantize": quantize, "version": version, "served": served,
                             "test": quality, "load": os.getloadavg()[0]})
        served_rows = [r for r in rows if "refused" not in r]
        progress(f"raw ONNX Runtime at batch {concurrency}, every row served, {rounds} rounds")
        for row, raw in zip(served_rows, interleaved_raw([r.pop("version") for r in served_rows], concurrency,
                                                         seconds, rounds)):
            row["raw"] = raw
    for key in ("served", "raw"):
        first = served_rows[0][key]["segments_per_s"] if served_rows else None
        for row in served_rows:
            row[key]["vs_first"] = row[key]["segments_per_s"] / first
    return {"concurrency": concurrency, "seconds": seconds, "rounds": rounds, "cores": os.cpu_count(), "rows": rows}


def interleaved_raw(versions: list[Path], batch: int, seconds: float, rounds: int) -> list[dict]:
    """Each version's graph in-process: `rounds` turns of seconds / rounds each, round-robin."""
    runs = [raw_runner(v / ONNX_FILE, ModelContract.read_metadata(v), batch) for v in versions]
    rates: list[list[float]] = [[] for _ in runs]
    for _ in range(rounds):
        for run, mine in zip(runs, rates):
            latencies = timed(run, seconds / rounds)
            mine.append(batch * len(latencies) / sum(latencies))
    return [{"segments_per_s": statistics.median(r), "rounds": r} for r in rates]


def option_checkpoint(option: str, scratch: Path, progress) -> tuple[Path, dict | None]:
    """A run directory's checkpoint and test metrics, or an untrained model of a text encoder
    (minilm, mpnet, tiny, a path) and no metrics."""
    from stream.errors import UserError
    run = Path(option)
    if (run / "checkpoint.pt").is_file():
        return run / "checkpoint.pt", run_metrics(run)
    seeds = sorted(run.glob("seed_*/checkpoint.pt"))
    if seeds:  # a several-seed run: serve its first seed, report the mean over the seeds
        return seeds[0], run_metrics(run)
    if option in ("minilm", "mpnet", "tiny") or run.is_dir():
        progress(f"building an untrained {option} TeCaFN for the benchmark")
        return untrained_checkpoint(scratch, option), None
    raise UserError(f"--compare {option}: neither a run directory (checkpoint.pt) nor a text encoder "
                    f"(minilm, mpnet, tiny, or a model directory)")


def run_metrics(run: Path) -> dict | None:
    """Test metrics of a run: metrics.json's, or the means of summary.json's over seeds."""
    if (run / "summary.json").is_file():
        return {k: v["mean"] for k, v in json.loads((run / "summary.json").read_text())["test"].items()}
    if (run / "metrics.json").is_file():
        return json.loads((run / "metrics.json").read_text())["test"]
    return None


def format_compare(r: dict) -> str:
    width = max([len("option")] + [len(row["option"]) for row in r["rows"]])  # a run directory in full
    lines = [f"{r['cores']} cores; served: {r['concurrency']} clients, {r['seconds']:g} s per row, one row at a time "
             f"(load: the 1-minute load average after it); raw: ONNX Runtime at batch {r['concurrency']}, median "
             f"of {r['rounds']} interleaved rounds",
             f"{'option':<{width}} {'model':>5} {'served seg/s':>13} {'p99 ms':>8} {'vs first':>9} {'load':>5} "
             f"{'raw seg/s':>10} {'vs first':>9} {'test MAE':>9} {'Corr':>6} {'Acc-7':>6}"]
    for row in r["rows"]:
        test = row["test"]
        quality = (f" {test['mae']:>9.3f} {test['corr']:>6.3f} {100 * test['acc7']:>6.2f}" if test
                   else f" {'-':>9} {'-':>6} {'-':>6}")
        if "refused" in row:
            lines.append(f"{row['option']:<{width}} {'int8':>5} not served: {row['refused']}{quality}")
            continue
        served, raw = row["served"], row["raw"]
        lines.append(f"{row['option']:<{width}} {'int8' if row['quantize'] == 'int8' else 'fp32':>5} "
                     f"{served['segments_per_s']:>13.1f} {served['p99_ms']:>8.1f} {served['vs_first']:>8.2f}x "
                     f"{row['load']:>5.1f} {raw['segments_per_s']:>10.1f} {raw['vs_first']:>8.2f}x{quality}")
    return "\n".join(lines)
