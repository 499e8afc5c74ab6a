"""The served system's benchmarks as subcommands of `tecaflow bench`: serve, pipeline, soak.
Registering them imports nothing heavy; a bench loads its stack when it runs."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from stream.arguments import REPO_HELP, positive, share, shares


def register_bench(bench_sub) -> None:
    p = bench_sub.add_parser("serve", help="served throughput and latency vs raw ONNX Runtime in-process")
    p.add_argument("--checkpoint", type=Path, help="default: an untrained MiniLM-sized TeCaFN")
    p.add_argument("--seconds", type=float, default=8.0, help="measuring time per concurrency level")
    p.add_argument("--json", action="store_true")
    p.add_argument("--quantize", choices=("none", "int8"),
                   help="the export Triton serves (default none); int8 also measures the fp32 graph raw (the int8 "
                        "speed-up). With --compare: only this one (default both)")
    p.add_argument("--compare", nargs="+", metavar="OPTION",
                   help="a table to choose a model by: each OPTION (a run directory, with its test metrics, or a text "
                        "encoder, minilm or mpnet, as an untrained model) served fp32 and int8 at --concurrency, "
                        "with its ratio to the first row")
    p.add_argument("--concurrency", type=positive(int), help="clients, with --compare (default 16)")
    p.set_defaults(func=cmd_bench_serve)

    p = bench_sub.add_parser("pipeline", help="end-to-end throughput and latency on the embedded stack vs raw ONNX "
                                              "Runtime, Triton and a naive consumer, with time per stage")
    p.add_argument("--checkpoint", type=Path, help="default: an untrained MiniLM-sized TeCaFN")
    p.add_argument("--segments", type=positive(int), default=3000, help="backlog drained by the worker")
    p.add_argument("--streams", type=positive(int), default=8)
    p.add_argument("--batch", type=positive(int), default=32, help="the worker's batch size")
    p.add_argument("--quantize", choices=("none", "int8"), default="none", help="the export Triton serves")
    p.add_argument("--instances", type=positive(int), help="Triton model instances (default: the export's, 2)")
    p.add_argument("--naive", type=positive(int), default=300, help="messages the naive consumer handles")
    p.add_argument("--seconds", type=positive(float), default=15.0,
                   help="latency phase; half of it for served, a quarter for each raw measurement")
    p.add_argument("--repeat", type=positive(int), default=1,
                   help="whole runs, each on a fresh stack; with more than one, the ratios' medians are printed too")
    p.add_argument("--shadow", type=shares, default=(), metavar="SHARE,...",
                   help="also drain and time the worker with a candidate shadowing each share of the traffic "
                        "(e.g. 1,0.25), against no candidate in the same run")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_pipeline)

    p = bench_sub.add_parser("soak", help="a steady replay with malformed messages through the embedded stack: "
                                          "memory, lag, lost and doubled segments")
    p.add_argument("--minutes", type=positive(float), default=10.0)
    p.add_argument("--rate", type=positive(float), default=20.0, help="messages per second")
    p.add_argument("--streams", type=positive(int), default=8)
    p.add_argument("--bad-share", type=share(below=0.5), default=0.05, help="share of malformed messages")
    p.add_argument("--every", type=float, default=60.0, help="seconds between samples")
    p.add_argument("--repo", type=Path, help=REPO_HELP)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_soak)


def cmd_bench_serve(args) -> int:
    from stream.bench.serve import bench_compare, bench_serve, format_compare, format_report
    from stream.errors import UserError
    progress = lambda m: print(m, file=sys.stderr)  # noqa: E731
    if args.compare:
        if args.checkpoint:
            raise UserError("--compare names the models to measure; leave out --checkpoint")
        result = bench_compare(args.compare, (args.quantize,) if args.quantize else ("none", "int8"),
                               args.concurrency or 16, args.seconds, progress=progress)
        print(json.dumps(result, indent=2) if args.json else format_compare(result))
        return 0
    if args.concurrency:
        raise UserError("--concurrency is --compare's; without it every level (1, 4, 16) is measured")
    result = bench_serve(args.checkpoint, args.seconds, progress=progress, quantize=args.quantize or "none")
    print(json.dumps(result, indent=2) if args.json else format_report(result))
    return 0


def cmd_bench_pipeline(args) -> int:
    from stream.bench.pipeline import bench_pipeline, format_report, format_summary, summarize_runs
    from stream.contract import DEFAULT_INSTANCES
    runs = []
    for k in range(args.repeat):
        if args.repeat > 1:
            print(f"run {k + 1} of {args.repeat}", file=sys.stderr)
        runs.append(bench_pipeline(args.checkpoint, args.segments, args.streams, args.batch, quantize=args.quantize,
                                   naive_count=args.naive, seconds=args.seconds,
                                   instances=args.instances or DEFAULT_INSTANCES, shadow_shares=args.shadow,
                                   progress=lambda m: print(m, file=sys.stderr)))
        if not args.json:
            print(format_report(runs[-1]), flush=True)
    summary = summarize_runs(runs) if len(runs) > 1 else None
    if args.json:
        print(json.dumps({"runs": runs, "summary": summary} if summary else runs[0], indent=2))
    elif summary:
        print(format_summary(summary))
    return 0


def cmd_bench_soak(args) -> int:
    from stream.bench.soak import format_report, run_soak
    from stream.config import Settings
    result = run_soak(args.repo or Path(Settings.from_env().model_repo), args.minutes, args.rate, args.streams,
                      args.bad_share, args.every)
    print(json.dumps(result, indent=2) if args.json else format_report(result))
    return 0 if result["lost"] == result["doubled"] == 0 else 1
