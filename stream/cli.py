"""`tecaflow`: one command, one subcommand per job.

Errors that come from what the user gave (flags, files, data) are printed as one line, never a
traceback; set TECAFLOW_DEBUG=1 to see the traceback anyway.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from trainer import cli as trainer_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tecaflow", description="Streaming multimodal sentiment trends with TeCaFN")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    trainer_cli.register(sub)
    bench = sub.add_parser("bench", help="benchmarks that print measured ratios")
    bench_sub = bench.add_subparsers(dest="bench", required=True, metavar="WHAT")
    trainer_cli.register_bench(bench_sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("matplotlib", "PIL", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return args.func(args) or 0
    except (ValueError, FileNotFoundError, RuntimeError, OSError) as e:
        if os.environ.get("TECAFLOW_DEBUG"):
            raise
        print(f"tecaflow {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
