"""`tecaflow`: one command, one subcommand per job.

Each area registers its own subcommands beside its code (`register(sub)`, and
`register_bench(bench_sub)` for its benchmarks). Registering imports nothing heavy: a subcommand
imports its modules only when it runs, so `tecaflow --help`, `tecaflow trends` and `tecaflow
worker` never load torch. How a failure is reported is stream/cli_errors.py's.
"""
from __future__ import annotations

import argparse
import logging
import sys

import dashboard.cli
import stream.alerts.cli
import stream.bench.cli
import stream.bench.scale
import stream.commands
import stream.shadow.cli
import stream.ingest.command
import stream.stack.cli
import trainer.cli
from stream.cli_errors import run_reporting_errors

# Each area's subcommands, and its `tecaflow bench` subcommands, in the order `--help` lists them.
COMMANDS = (trainer.cli.register, stream.stack.cli.register, stream.commands.register, dashboard.cli.register,
            stream.ingest.command.register, stream.alerts.cli.register, stream.shadow.cli.register)
BENCHES = (trainer.cli.register_bench, dashboard.cli.register_bench, stream.alerts.cli.register_bench,
           stream.bench.cli.register_bench, stream.bench.scale.register,
           stream.ingest.command.register_bench)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tecaflow", description="Streaming multimodal sentiment trends with TeCaFN")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in COMMANDS:
        register(sub)
    bench = sub.add_parser("bench", help="benchmarks that print measured ratios")
    bench_sub = bench.add_subparsers(dest="bench", required=True, metavar="WHAT")
    for register in BENCHES:
        register(bench_sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("matplotlib", "PIL", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return run_reporting_errors(args.command, lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
