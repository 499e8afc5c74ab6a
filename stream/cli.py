"""`tecaflow`: one command, one subcommand per job.

Errors that come from what the user gave (flags, files, data) are printed as one line, never a
traceback; set TECAFLOW_DEBUG=1 to see the traceback anyway.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from trainer import cli as trainer_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tecaflow", description="Streaming multimodal sentiment trends with TeCaFN")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    trainer_cli.register(sub)
    trainer_cli.register_export(sub)

    p = sub.add_parser("serve", help="run the embedded tritonserver on a model repository until Ctrl-C")
    p.add_argument("--repo", type=Path, default=Path("model_repo"))
    p.add_argument("--run-dir", type=Path, default=Path("run/triton"))
    p.add_argument("--ports", type=int, nargs=3, default=(8000, 8001, 8002), metavar=("HTTP", "GRPC", "METRICS"))
    p.add_argument("--model-control", choices=("poll", "explicit"), default="poll")
    p.set_defaults(func=cmd_serve)

    bench = sub.add_parser("bench", help="benchmarks that print measured ratios")
    bench_sub = bench.add_subparsers(dest="bench", required=True, metavar="WHAT")
    trainer_cli.register_bench(bench_sub)
    p = bench_sub.add_parser("serve", help="served throughput and latency vs raw ONNX Runtime in-process")
    p.add_argument("--checkpoint", type=Path, help="default: an untrained MiniLM-sized TeCaFN")
    p.add_argument("--seconds", type=float, default=8.0, help="measuring time per concurrency level")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_serve)
    return parser


def cmd_serve(args) -> int:
    import time

    from stream.tritonserver import EmbeddedTriton
    server = EmbeddedTriton(args.repo, args.run_dir, *args.ports, model_control=args.model_control).start()
    print(f"Triton HTTP {server.http_url}  gRPC {server.grpc_url}  metrics {server.metrics_url}  (Ctrl-C stops)")
    try:
        while server.process.poll() is None:
            time.sleep(1)
        raise RuntimeError(f"tritonserver exited:\n{server.log_tail()}")
    finally:
        server.stop()


def cmd_bench_serve(args) -> int:
    import json

    from stream.bench_serve import bench_serve, format_report
    result = bench_serve(args.checkpoint, args.seconds, progress=lambda m: print(m, file=sys.stderr))
    print(json.dumps(result, indent=2) if args.json else format_report(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("matplotlib", "PIL", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, RuntimeError, OSError) as e:
        if os.environ.get("TECAFLOW_DEBUG"):
            raise
        print(f"tecaflow {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
