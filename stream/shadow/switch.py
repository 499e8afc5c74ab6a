"""The changes of role an operator makes (`tecaflow export --candidate`, `shadow start|stop`,
`promote`, `rollback`): each one checked, recorded in Redis with the comparison at that moment,
and, where the set of served versions changes, written to the model's config for Triton.

Promotion and rollback change only the roles (one atomic script): both versions are already
served, so workers adopt the switch at their next read of the roles (TECAFLOW_ROLES_REFRESH_S)
without a restart, and a batch is scored by whichever version was live when it was sent."""
from __future__ import annotations

from pathlib import Path

from stream.errors import UserError
from stream.shadow import gate, roles
from stream.shadow.report import build
from stream.store import TrendStore


def summary(report: dict, overridden: list[str] = ()) -> dict:
    """What an event keeps of the comparison at the moment of a change."""
    if not report.get("candidate"):
        return {}
    a = report["alerts"]
    return {"shadowed_s": report["shadowed_s"], "overall": report["overall"], "calls": report["calls"],
            "alerts": {k: a[k] for k in ("live", "candidate", "matched", "jaccard")},
            "overridden": list(overridden)}


def live_before(store: TrendStore, repo: Path | str, excluding: str | None = None) -> tuple[roles.Roles, str | None]:
    """The roles, and the live version: the one they name, else the newest version on disk
    (what Triton serves without roles), other than `excluding`."""
    before = roles.read(store.redis)
    if before.live:
        return before, before.live
    on_disk = [p.name for p in roles.contract.versions(repo) if p.name != excluding]
    return before, on_disk[-1] if on_disk else None


def nominate(store: TrendStore, repo: Path | str, version: str, action: str,
             before: roles.Roles | None = None, live: str | None = None) -> roles.Roles:
    """`version` shadows the live version from now on: Triton is told to serve both, then the roles
    say so (a failed change of roles puts the config back)."""
    if before is None:
        before, live = live_before(store, repo, excluding=version)
    after = roles.nominated(before, version, live)
    roles.serve_exactly(repo, after.served())
    try:
        return roles.change(store.redis, before, after, action)
    except Exception:
        roles.serve_exactly(repo, before.served() or [after.live])
        raise


def stop(store: TrendStore, repo: Path | str) -> roles.Roles:
    """No more shadowing: the roles first (workers stop calling the candidate), then Triton."""
    before = roles.read(store.redis)
    after = roles.change(store.redis, before, roles.stopped(before), "shadow stop",
                         summary(build(store, before, 0)))
    roles.serve_exactly(repo, after.served())
    return after


def promote(store: TrendStore, limits: gate.Thresholds, tolerance: int, force: bool) -> tuple[roles.Roles, list[str]]:
    """The candidate goes live if the gate passes (or `force`: returns what was overridden)."""
    before = roles.read(store.redis)
    report = build(store, before, tolerance)
    refused = gate.refusals(report, limits)
    if not before.candidate:
        raise UserError("no candidate to promote: export one with `tecaflow export --candidate`")
    if refused and not force:
        raise UserError(f"the gate refuses version {before.candidate}: " + "; ".join(refused)
                        + " (`tecaflow shadow report` shows the comparison; --force overrides)")
    after = roles.change(store.redis, before, roles.promoted(before), "promote --force" if refused else "promote",
                         summary(report, refused))
    return after, refused


def rollback(store: TrendStore, tolerance: int) -> roles.Roles:
    before = roles.read(store.redis)
    after = roles.rolled_back(before)
    return roles.change(store.redis, before, after, "rollback", summary(build(store, before, tolerance)))
