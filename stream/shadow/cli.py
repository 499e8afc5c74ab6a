"""`tecaflow shadow start|stop|report|events`, `tecaflow promote`, `tecaflow rollback`
(`tecaflow export --candidate` is the trainer's export with a nomination after it)."""
from __future__ import annotations

import json
import time
from pathlib import Path

from stream.config import Settings


def register(sub) -> None:
    p = sub.add_parser("shadow", help="a candidate model version scored beside the live one (docs/shadow.md)")
    shadow = p.add_subparsers(dest="shadow", required=True, metavar="ACTION")
    q = shadow.add_parser("start", help="shadow the live version with VERSION (already in the repository)")
    q.add_argument("version")
    q.set_defaults(func=cmd_start)
    q = shadow.add_parser("stop", help="stop shadowing: Triton serves the live version alone")
    q.set_defaults(func=cmd_stop)
    q = shadow.add_parser("report", help="the candidate against the live model: distributions, agreement, alerts")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_report)
    q = shadow.add_parser("events", help="the changes of role, newest first")
    q.add_argument("--count", type=int, default=20)
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_events)

    p = sub.add_parser("promote", help="make the candidate live, if the gate passes (TECAFLOW_GATE_*)")
    p.add_argument("--force", action="store_true", help="promote even where the gate refuses (says what it overrides)")
    p.set_defaults(func=cmd_promote)
    p = sub.add_parser("rollback", help="make the version live again that was live before the last promotion")
    p.set_defaults(func=cmd_rollback)


def _store(settings: Settings):
    from stream.store import TrendStore
    return TrendStore.of(settings)


def cmd_start(args) -> int:
    from stream.shadow import switch
    settings = Settings.from_env()
    after = switch.nominate(_store(settings), settings.model_repo, args.version, "shadow start")
    print(f"version {after.candidate} shadows live version {after.live}")
    return 0


def cmd_stop(args) -> int:
    from stream.shadow import switch
    settings = Settings.from_env()
    after = switch.stop(_store(settings), settings.model_repo)
    print(f"no candidate; live version {after.live}")
    return 0


def cmd_report(args) -> int:
    from stream.shadow import gate, roles
    from stream.shadow.report import build, text
    settings = Settings.from_env()
    store = _store(settings)
    report = build(store, roles.read(store.redis), settings.shadow_alert_tolerance)
    refusals = gate.refusals(report, gate.Thresholds.of(settings)) if report["candidate"] else []
    if args.json:
        print(json.dumps({**report, "gate": {"passes": not refusals, "refusals": refusals}}, indent=2))
    else:
        print(text(report, refusals))
    return 0


def cmd_events(args) -> int:
    from stream.shadow import roles
    found = roles.events(_store(Settings.from_env()).redis, args.count)
    if args.json:
        print(json.dumps(found, indent=2))
        return 0
    for e in found:
        print(f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(e['at']))} {e['action']} by {e['who']}: "
              f"live {e['from'].get('live', '-')} -> {e['to'].get('live', '-')}, "
              f"candidate {e['from'].get('candidate', '-')} -> {e['to'].get('candidate', '-')}")
    return 0


def cmd_promote(args) -> int:
    from stream.shadow import gate, switch
    settings = Settings.from_env()
    after, overridden = switch.promote(_store(settings), gate.Thresholds.of(settings), settings.shadow_alert_tolerance,
                                       args.force)
    for reason in overridden:
        print(f"--force overrides: {reason}")
    print(f"version {after.live} is live; version {after.candidate} shadows it (`tecaflow rollback` returns to it)")
    return 0


def cmd_rollback(args) -> int:
    from stream.shadow import switch
    settings = Settings.from_env()
    after = switch.rollback(_store(settings), settings.shadow_alert_tolerance)
    print(f"version {after.live} is live again; version {after.candidate} shadows it")
    return 0


def export_candidate(settings: Settings, repo: Path, export) -> Path:
    """`tecaflow export --candidate`: the roles are read first (Redis away: nothing is exported),
    the new version is exported with Triton serving it beside the live one, then nominated."""
    from stream.shadow import switch
    store = _store(settings)
    before, live = switch.live_before(store, repo)
    if live is None:
        from stream.errors import UserError
        raise UserError("no live version to shadow: export a first model without --candidate")
    target = export(keep_serving=[live], live_model=before.model("live", settings.triton_model))
    switch.nominate(store, repo, target.name, "export --candidate", before, live)
    return target


def export_live(settings: Settings, repo: Path, export) -> Path:
    """A plain `tecaflow export` replaces what Triton serves (the newest version alone): where roles
    are recorded, they say so too (workers would otherwise find the live version they name gone,
    and fall back to the newest served)."""
    from stream.shadow import roles, switch
    target = export()
    try:
        store = _store(settings)
        before = roles.read(store.redis)
        if before.recorded:
            switch.record(store, before, roles.Roles(live=target.name, live_model=target.parent.name), "export")
    except Exception as e:  # noqa: BLE001 - the export is done; the roles are the workers' to fall back from
        print(f"note: Redis not reached, so shadow roles (if any) still name the old live version ({e})")
    return target
