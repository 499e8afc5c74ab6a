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

    p = sub.add_parser("stack", help="the embedded broker, Redis, Triton and Prometheus on loopback")
    p.add_argument("action", choices=("up", "down", "status"))
    p.add_argument("--repo", type=Path, default=Path(os.environ.get("TECAFLOW_MODEL_REPO", "model_repo")))
    p.set_defaults(func=cmd_stack)

    p = sub.add_parser("worker", help="run a stream worker (Faust) until stopped")
    p.add_argument("--loglevel", default="info", choices=("debug", "info", "warning", "error"))
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("replay", help="produce segments as N concurrent streams, with scheduled shifts")
    p.add_argument("--streams", type=int, default=4)
    p.add_argument("--segments", type=int, default=100, help="segments per stream")
    p.add_argument("--rate", type=float, default=20.0, help="segments per second overall (0: as fast as possible)")
    p.add_argument("--data", default="synthetic", help="'synthetic' or a dataset path (see tecaflow train --help)")
    p.add_argument("--shift", action="append", default=[], metavar="STREAM@T:DELTA",
                   help="from segment T on, move stream STREAM's sentiment by DELTA (repeatable)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--manifest", type=Path, help="write every sent message (JSON lines) here")
    p.add_argument("--prefix", default="stream", help="stream names are PREFIX-000, PREFIX-001, ...")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("trends", help="per-stream totals and recent alerts from Redis")
    p.add_argument("--stream", help="one stream only")
    p.add_argument("--alerts", type=int, default=10, help="recent alerts to show")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_trends)

    p = sub.add_parser("demo", help="the whole system on the embedded stack, with a replay and a shift")
    p.add_argument("--repo", type=Path, default=Path(os.environ.get("TECAFLOW_MODEL_REPO", "model_repo")))
    p.add_argument("--streams", type=int, default=4)
    p.add_argument("--segments", type=int, default=300, help="segments per stream")
    p.add_argument("--rate", type=float, default=20.0, help="segments per second overall")
    p.add_argument("--seconds", type=float, default=float(os.environ.get("TECAFLOW_DEMO_SECONDS", 0)),
                   help="stop after this long (default: run until Ctrl-C)")
    p.set_defaults(func=cmd_demo)

    bench = sub.add_parser("bench", help="benchmarks that print measured ratios")
    bench_sub = bench.add_subparsers(dest="bench", required=True, metavar="WHAT")
    trainer_cli.register_bench(bench_sub)
    p = bench_sub.add_parser("serve", help="served throughput and latency vs raw ONNX Runtime in-process")
    p.add_argument("--checkpoint", type=Path, help="default: an untrained MiniLM-sized TeCaFN")
    p.add_argument("--seconds", type=float, default=8.0, help="measuring time per concurrency level")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_serve)
    register_soak(bench_sub)
    return parser


def register_soak(bench_sub) -> None:
    p = bench_sub.add_parser("soak", help="a steady replay with malformed messages through the embedded stack: "
                                          "memory, lag, lost and doubled segments")
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--rate", type=float, default=20.0, help="messages per second")
    p.add_argument("--streams", type=int, default=8)
    p.add_argument("--bad-share", type=float, default=0.05, help="share of malformed messages")
    p.add_argument("--every", type=float, default=60.0, help="seconds between samples")
    p.add_argument("--repo", type=Path, default=Path(os.environ.get("TECAFLOW_MODEL_REPO", "model_repo")))
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_soak)


def cmd_bench_soak(args) -> int:
    import json

    from stream.soak import format_report, run_soak
    if args.minutes <= 0 or args.rate <= 0 or args.streams < 1 or not 0 <= args.bad_share < 0.5:
        raise ValueError("--minutes, --rate must be > 0, --streams >= 1, --bad-share in [0, 0.5)")
    result = run_soak(args.repo, args.minutes, args.rate, args.streams, args.bad_share, args.every)
    print(json.dumps(result, indent=2) if args.json else format_report(result))
    return 0 if result["lost"] == result["doubled"] == 0 else 1


def cmd_stack(args) -> int:
    import json

    from stream.config import Settings
    from stream.stack import Stack, StackPorts
    stack = Stack(Settings.from_env(), StackPorts.from_env(), args.repo)
    if args.action == "up":
        stack.up()
    elif args.action == "down":
        print("stopped:", ", ".join(stack.down()) or "nothing was running")
        return 0
    status = stack.status()
    print(json.dumps(status, indent=2))
    return 0 if all(s["healthy"] for s in status.values()) else 1


def cmd_worker(args) -> int:
    from stream.worker import run_worker
    return run_worker(args.loglevel)


def cmd_replay(args) -> int:
    import json

    from stream.config import Settings
    from stream.replay import replay
    settings = Settings.from_env()
    widths, max_frames = model_shape(settings)
    summary = replay(settings.broker_servers(), settings.topic_segments, widths, max_frames, args.streams, args.segments,
                     args.rate, args.data, args.shift, args.seed, args.manifest, progress=not args.no_progress,
                     prefix=args.prefix)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"sent {summary['segments']} segments on {settings.topic_segments}; shifts: "
              f"{', '.join(summary['shifts']) or 'none'}")
        for name, s in summary["streams"].items():
            print(f"  {name}: {s['count']} segments, mean label {s['label_mean']:+.3f}")
    return 0


def model_shape(settings) -> tuple[dict[str, int], int]:
    """Feature widths and frame limit from the served model (Triton), so replayed frames fit it."""
    from stream.triton_client import TritonScorer
    try:
        scorer = TritonScorer(settings.triton_url, model=settings.triton_model)
        contract = scorer.contract()
        scorer.close()
    except Exception as e:  # noqa: BLE001 - say what is missing
        raise RuntimeError(f"cannot read the model's feature widths from Triton at {settings.triton_url} ({e}); "
                           f"is the stack up?") from None
    return {"audio": contract.widths.get("audio", 5), "visual": contract.widths.get("visual", 20)}, contract.max_frames


def cmd_trends(args) -> int:
    import json
    import time

    from stream.config import Settings
    from stream.store import TrendStore
    store = TrendStore(Settings.from_env().redis_url)
    streams = [args.stream] if args.stream else [s for s, _ in store.streams()]
    rows = {s: store.totals(s) for s in streams}
    alerts = store.alerts(args.alerts, args.stream)
    if args.json:
        print(json.dumps({"streams": rows, "alerts": alerts}, indent=2))
        return 0
    if not rows:
        print("no streams recorded yet")
    for s, t in rows.items():
        if not t:
            print(f"{s}: nothing recorded")
            continue
        age = time.time() - t["last_update"]
        print(f"{s:<24} n={t['count']:<6} mean={t['mean']:+.3f} ewma={t['ewma']:+.3f} "
              f"last={t['last_score']:+.3f} updated {age:.0f}s ago")
    for a in alerts:
        print(f"ALERT {a['stream_id']} {a['direction']} by {abs(a['magnitude']):.2f} "
              f"({a['reference']['mean']:+.2f} -> {a['recent']['mean']:+.2f}, z={a['z']:.1f}) "
              f"at {time.strftime('%H:%M:%S', time.localtime(a['event_time']))}")
    return 0


def cmd_demo(args) -> int:
    from stream.demo import run_demo
    return run_demo(args.repo, args.streams, args.segments, args.rate, args.seconds)


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
    except (ValueError, FileNotFoundError, RuntimeError, OSError) + dependency_errors() as e:
        if os.environ.get("TECAFLOW_DEBUG"):
            raise
        print(f"tecaflow {args.command}: error: {one_line(e)}", file=sys.stderr)
        return 2


def dependency_errors() -> tuple[type[BaseException], ...]:
    """What Redis, the broker or Triton raise when they are away or refuse us: one line, exit 2."""
    from tritonclient.utils import InferenceServerException

    from stream.dependencies import DEPENDENCY_ERRORS
    return DEPENDENCY_ERRORS + (InferenceServerException,)


def one_line(error: BaseException) -> str:
    """What to print: a dependency's failure as one line naming it (its traceback says nothing
    an operator can act on), and never a configured secret (a URL can sit in a message)."""
    from stream.config import redact_url
    text = str(error) or type(error).__name__
    if isinstance(error, dependency_errors()) or type(error).__module__.startswith("aiokafka"):
        redis_at = f"Redis at {redact_url(os.environ.get('TECAFLOW_REDIS_URL', 'redis://127.0.0.1:6379/0'))}"
        which = {"redis": redis_at, "aiokafka": "the broker", "tritonclient": "Triton"}.get(
            type(error).__module__.split(".")[0], "a dependency")
        text = f"{which} failed ({type(error).__name__}): {text.strip().splitlines()[0]}"
    for var in ("TECAFLOW_REDIS_URL", "TECAFLOW_WEBHOOK_URL", "TECAFLOW_BROKER_URL"):
        value = os.environ.get(var)
        if value:
            text = text.replace(value, redact_url(value))
    password = os.environ.get("TECAFLOW_BROKER_SASL_PASSWORD")
    return text.replace(password, "***") if password else text

if __name__ == "__main__":
    sys.exit(main())
