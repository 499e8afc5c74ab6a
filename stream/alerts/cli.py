"""The alerts' subcommands of `tecaflow`: backtest, bench detect. Registering them imports nothing
heavy; the detector and its tools load when one of them runs."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from stream.arguments import positive
from stream.errors import UserError


def register(sub) -> None:
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
    p.add_argument("--warmup", type=positive(int), help="default: TECAFLOW_ALERT_WARMUP")
    p.add_argument("--sweep", help="comma-separated false-alarm settings to compare, e.g. 0.1,0.3,1,3,10")
    p.add_argument("--horizon", type=positive(int), default=200, help="segments within which an alert catches a shift")
    p.add_argument("--plot", metavar="STREAM", help="draw this stream's scores and alerts")
    p.add_argument("--out", type=Path, help="where --plot writes its PNG (default: backtest.png)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_backtest)


def register_bench(bench_sub) -> None:
    p = bench_sub.add_parser("detect", help="shift detector vs baselines on seeded synthetic score streams")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--per-shift", type=positive(int), default=100, help="streams per shift size and direction")
    p.add_argument("--steady", type=positive(int), default=300, help="steady streams (1000 segments each)")
    p.add_argument("--families", default="all", help="noise families to measure the detector on, comma-separated "
                                                     "(stream/alerts/families.py), 'all' or 'none'")
    p.add_argument("--residuals", type=Path, help="a replay's within-stream residuals, one a line: the heavy-tailed "
                                                  "families' marginal instead of the built-in stand-in")
    p.add_argument("--decompose", action="store_true", help="per family, also the detector told each stream's "
                   "autocorrelation, then its sd too: what each estimate costs against the oracle")
    p.add_argument("--false-alarms-only", action="store_true", help="per family, only the detector's false alarms "
                   "on --steady streams (no shifts, baselines or oracles): to judge the 0.7-1.3 band, use 1500 or more")
    p.add_argument("--delay-only", action="store_true", help="per family, only the median delay of 0.5 shifts "
                   "on --per-shift streams each way, the detector's and the level-estimating oracle's, with their "
                   "95 %% intervals: to judge the delay target, use 500 or more")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_detect)


def cmd_bench_detect(args) -> int:
    from stream.alerts.bench import bench_detect, format_report
    from stream.alerts.families import empirical_marginal
    names = {"all": None, "none": []}.get(args.families, [n.strip() for n in args.families.split(",")])
    marginal = empirical_marginal(args.residuals) if args.residuals else None
    if args.false_alarms_only and args.delay_only:
        raise UserError("--false-alarms-only and --delay-only each measure one thing: run them one at a time")
    if args.false_alarms_only:
        return _false_alarms_only(args, names, marginal)
    if args.delay_only:
        return _delay_only(args, names, marginal)
    result = bench_detect(args.seed, args.per_shift, args.steady, progress=lambda m: print(m, file=sys.stderr),
                          family_names=names, marginal=marginal, decompose=args.decompose)
    print(json.dumps(result, indent=2) if args.json else format_report(result))
    return 0


def _false_alarms_only(args, names, marginal) -> int:
    from stream.alerts.bench import bench_false_alarms, chosen_families, format_false_alarms
    from stream.config import DetectorParams
    if args.decompose:
        raise UserError("--decompose measures shifts; --false-alarms-only measures none")
    if names == []:
        raise UserError("--false-alarms-only measures the families: --families none leaves nothing to measure")
    params = DetectorParams()
    chosen = chosen_families(names, marginal)
    figures = bench_false_alarms(args.seed, args.steady, chosen, params, lambda m: print(m, file=sys.stderr))
    print(json.dumps(figures, indent=2) if args.json else format_false_alarms(figures, params.false_alarms_per_10k))
    return 0


def _delay_only(args, names, marginal) -> int:
    from stream.alerts.bench import bench_delays, chosen_families, format_delays
    from stream.config import DetectorParams
    if args.decompose:
        raise UserError("--decompose compares the detector with what it is told; --delay-only runs the detector alone")
    if names == []:
        raise UserError("--delay-only measures the families: --families none leaves nothing to measure")
    figures = bench_delays(args.seed, args.per_shift, chosen_families(names, marginal), DetectorParams(),
                           lambda m: print(m, file=sys.stderr))
    print(json.dumps(figures, indent=2) if args.json else format_delays(figures))
    return 0


def cmd_backtest(args) -> int:
    import dataclasses

    from stream.alerts import backtest as bt
    from stream.config import DetectorParams, Settings
    from stream.schema import Alert
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
        alerts = result["runs"][0]["alert_list"]
        print(f"plot: {bt.plot(scores, shifts, alerts, args.plot, args.out or Path('backtest.png'))}", file=sys.stderr)
    print(json.dumps(result, indent=2, default=Alert.message) if args.json else bt.format_report(result))
    return 0


def parse_sweep(text: str | None) -> list[float]:
    """--sweep's false-alarm settings; none given: [] (the one setting in force)."""
    if text is None:
        return []
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise UserError(f"--sweep {text!r}: expected comma-separated numbers, e.g. 0.1,0.3,1,3,10") from None
