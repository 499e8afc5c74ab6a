"""The changes of role an operator makes (`tecaflow export --candidate`, `shadow start|stop`,
`promote`, `rollback`): each one checked, recorded in Redis with the comparison at that moment,
and, where the set of served versions changes, written to the model's config for Triton.

Promotion and rollback change only the roles (one atomic script): both versions are already
served, so workers adopt the switch at their next read of the roles (TECAFLOW_ROLES_REFRESH_S)
without a restart, and a batch is scored by whichever version was live when it was sent."""
from __future__ import annotations

import logging
from pathlib import Path

from stream.errors import UserError
from stream.shadow import gate, pairs, roles
from stream.shadow.report import build
from stream.store import TrendStore

log = logging.getLogger(__name__)

# Candidate keyspaces kept: the current nomination's and the one before it (the last change's report
# read it, and a worker that has not read the new roles yet may still record a batch there).
NOMINATIONS_KEPT = 2


def summary(report: dict, overridden: list[str] = ()) -> dict:
    """What an event keeps of the comparison at the moment of a change."""
    if not report.get("candidate"):
        return {}
    a = report["alerts"]
    return {"shadowed_s": report["shadowed_s"], "overall": report["overall"], "calls": report["calls"],
            "alerts": {k: a[k] for k in ("live", "candidate", "matched", "jaccard")},
            "overridden": list(overridden)}


def record(store: TrendStore, before: roles.Roles, after: roles.Roles, action: str,
           comparison: dict | None = None) -> roles.Roles:
    """roles.change, then the keyspaces of older nominations removed."""
    after = roles.change(store.redis, before, after, action, comparison)
    forget_stale_nominations(store)
    return after


def forget_stale_nominations(store: TrendStore) -> None:
    """Delete the keyspaces of the nominations older than the newest NOMINATIONS_KEPT (their
    comparison stays in the events); a failure is only logged: the change of role is done, and the
    next one tries again."""
    try:
        for keyspace in roles.stale_keyspaces(store.redis, NOMINATIONS_KEPT):
            TrendStore("", store.settings, client=store.redis, keyspace=keyspace).drop(extra=(pairs.STREAM_KEY,))
            store.redis.unlink(pairs.calls_key(keyspace))
            roles.forgotten(store.redis, keyspace)
    except Exception as e:  # noqa: BLE001 - see above
        log.warning("the keyspaces of earlier candidates were not removed (the next change of role tries "
                    "again): %s", e)


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
    after = roles.nominated(before, version, live, roles.contract.slot_of(repo, version))
    roles.check_servable(repo, version, after.model("candidate"))
    roles.serve_roles(repo, after)
    try:
        return record(store, before, after, action)
    except Exception:
        roles.serve_roles(repo, before if before.served() else roles.stopped(after))
        raise


def stop(store: TrendStore, repo: Path | str) -> roles.Roles:
    """No more shadowing: the roles first (workers stop calling the candidate), then Triton."""
    before = roles.read(store.redis)
    after = record(store, before, roles.stopped(before), "shadow stop",
                         summary(build(store, before, 0)))
    roles.serve_roles(repo, after)
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
    after = record(store, before, roles.promoted(before), "promote --force" if refused else "promote",
                         summary(report, refused))
    return after, refused


def rollback(store: TrendStore, tolerance: int) -> roles.Roles:
    before = roles.read(store.redis)
    after = roles.rolled_back(before)
    return record(store, before, after, "rollback", summary(build(store, before, tolerance)))
