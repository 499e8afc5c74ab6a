"""The stream's own subcommands of `tecaflow`: worker, replay, trends, settings. Registering them
imports nothing heavy: `tecaflow trends` and `tecaflow worker` never load torch."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from stream.arguments import positive, probability
from stream.cli_errors import as_user_error
from stream.config import Settings, settings_table
from stream.errors import UserError


def register(sub) -> None:
    p = sub.add_parser("worker", help="run a stream worker (Faust) until stopped")
    p.add_argument("--loglevel", default="info", choices=("debug", "info", "warning", "error"))
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("replay", help="produce segments as N concurrent streams, with scheduled shifts")
    p.add_argument("--streams", type=positive(int), default=4)
    p.add_argument("--segments", type=positive(int), default=100, help="segments per stream")
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
    p.add_argument("--missing", type=probability, default=0.0, metavar="P",
                   help="send this share of segments without vision and, independently, without audio "
                        "(as live video has them: no face found, silence)")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("trends", help="per-stream totals and recent alerts from Redis")
    p.add_argument("--stream", help="one stream only")
    p.add_argument("--alerts", type=int, default=10, help="recent alerts to show")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_trends)

    p = sub.add_parser("settings", help="every setting (TECAFLOW_*) as this environment sets it, secrets hidden")
    p.add_argument("--markdown", action="store_true", help="the table of every setting with its default and meaning")
    p.set_defaults(func=cmd_settings)


def cmd_worker(args) -> int:
    from stream.app import run
    return run(args.loglevel)


def cmd_replay(args) -> int:
    from stream.replay import replay, served_scores
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


def model_shape(settings: Settings) -> tuple[dict[str, int], int]:
    """Feature widths and frame limit from the served model (Triton), so replayed frames fit it."""
    from stream.shadow.roles import live_model
    from stream.triton_client import TritonScorer
    try:
        scorer = TritonScorer(settings.triton_url, model=live_model(settings))
        contract = scorer.contract()
        scorer.close()
    except Exception as e:
        if as_user_error(e) is None:
            raise
        raise UserError(f"cannot read the model's feature widths from Triton at {settings.triton_url} ({e}); "
                        f"is the stack up?") from None
    return dict(contract.widths), contract.max_frames


def cmd_trends(args) -> int:
    from stream.store import TrendStore
    store = TrendStore.of(Settings.from_env())
    streams = [args.stream] if args.stream else [s for s, _ in store.streams()]
    rows = {s: store.totals(s) for s in streams}
    alerts = store.alerts(args.alerts, args.stream)
    if args.json:
        print(json.dumps({"streams": rows, "alerts": [a.message() for a in alerts]}, indent=2))
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
        since = a.change_point.get("event_time")
        print(f"ALERT {a.stream_id} {a.direction} by {abs(a.magnitude):.2f} "
              f"({a.reference['mean']:+.2f} -> {a.recent['mean']:+.2f}, z={a.z:.1f}) "
              f"at {time.strftime('%H:%M:%S', time.localtime(a.event_time))}"
              + (f", began {time.strftime('%H:%M:%S', time.localtime(since))}" if since else ""))
        for line in driver_lines(a.drivers):
            print(f"  {line}")
    return 0


def driver_lines(d: dict) -> list[str]:
    """An alert's drivers as `tecaflow trends` prints them under it (none for an old alert)."""
    from stream.alerts.drivers import summary
    if not d:
        return []
    lines = [f"what moved: {summary(d)}"] if summary(d) else []
    return lines + [f"{s['score']:+.2f} {s['segment_id']}: {s['text']}" for s in d.get("segments", [])]


def cmd_settings(args) -> int:
    if args.markdown:
        print(settings_table())
        return 0
    print("\n".join(Settings.from_env().variables()))
    for name in Settings.unknown_variables():
        print(f"warning: {name} is set but no setting reads it", file=sys.stderr)
    return 0
