"""Which model version is live and which one, at most, shadows it: the one place the workers, the
CLI and the dashboard read the roles from, and the record of every change of role.

Keys (one hash slot, {roles}, so that a change and its event are one script on a Redis Cluster):
    tf:{roles}          hash: live, candidate, previous (the version that was live before the last
                        promotion, while Triton still serves it), candidate_since (unix time),
                        epoch (one more at every change), and live_model, candidate_model,
                        previous_model: the Triton model (slot, stream/contract.py slots) serving
                        each (absent in roles recorded before slots: the base model)
    tf:{roles}:events   Redis stream of the changes: action, who, at, the roles before and after,
                        and the comparison at that moment (JSON)
    tf:{roles}:keyspaces  sorted set of the candidates' keyspaces, by the epoch that opened them:
                        what is removed once newer nominations replace them (switch.py), without
                        scanning Redis for them

A change is a compare-and-set on the epoch: of two operators promoting at once, one wins and the
other is told the roles moved. Without roles recorded, the live version is the newest Triton
serves (as before shadow scoring existed).

Triton serves exactly the live and candidate versions: the config.pbtxt of the model serving
them names them (version_policy specific) and is rewritten only when that set changes. A
candidate whose contract differs from the live version's is served by the model's other slot,
with its own config. Promotion and rollback swap the two roles and leave the configs alone, so
Triton loads nothing across the switch.
"""
from __future__ import annotations

import getpass
import json
import os
import socket
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from stream import contract
from stream.errors import UserError

ROLES = "tf:{roles}"
EVENTS = "tf:{roles}:events"
KEYSPACES = "tf:{roles}:keyspaces"
EVENTS_KEPT = 10000

# KEYS[1] = roles, KEYS[2] = events, KEYS[3] = keyspaces. ARGV[1] = the epoch the change was decided
# on, ARGV[2] = the new roles (JSON object of strings), ARGV[3] = the event (JSON), ARGV[4] = events
# kept, ARGV[5] = the new candidate's keyspace ("" without a candidate). Returns the new epoch, or -1
# when the roles moved meanwhile.
CHANGE = """
local epoch = tonumber(redis.call('HGET', KEYS[1], 'epoch') or '0')
if epoch ~= tonumber(ARGV[1]) then return -1 end
redis.call('DEL', KEYS[1])
for k, v in pairs(cjson.decode(ARGV[2])) do redis.call('HSET', KEYS[1], k, v) end
redis.call('HSET', KEYS[1], 'epoch', epoch + 1)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'json', ARGV[3])
if ARGV[5] ~= '' then redis.call('ZADD', KEYS[3], epoch + 1, ARGV[5]) end
return epoch + 1
"""


class RolesMoved(UserError):
    pass


@dataclass(frozen=True)
class Roles:
    live: str | None = None
    candidate: str | None = None
    previous: str | None = None
    candidate_since: float = 0.0
    epoch: int = 0
    live_model: str | None = None  # None: the base model (TECAFLOW_TRITON_MODEL)
    candidate_model: str | None = None
    previous_model: str | None = None

    @property
    def recorded(self) -> bool:
        return self.epoch > 0

    def model(self, role: str, base: str = contract.MODEL_NAME) -> str:
        """The Triton model serving the role ("live", "candidate", "previous")."""
        return getattr(self, f"{role}_model") or base

    def served(self) -> list[str]:
        """The versions Triton must serve: live and candidate."""
        return [v for v in (self.live, self.candidate) if v]

    def served_by_model(self, base: str = contract.MODEL_NAME) -> dict[str, list[str]]:
        """The versions each model must serve."""
        out: dict[str, list[str]] = {}
        for role in ("live", "candidate"):
            if getattr(self, role):
                out.setdefault(self.model(role, base), []).append(getattr(self, role))
        return out

    def candidate_keyspace(self) -> str | None:
        """Where the candidate's trends, detector state, alerts and pairs live (stream/store.py):
        one keyspace per nomination, so that a version shadowing again starts afresh."""
        return f"tf:candidate:{self.candidate}:{self.epoch}" if self.candidate else None

    def fields(self) -> dict[str, str]:
        return {k: str(v) for k, v in asdict(self).items() if v not in (None, "") and k != "epoch"}


def read(client) -> Roles:
    raw = client.hgetall(ROLES)
    return Roles(live=raw.get("live") or None, candidate=raw.get("candidate") or None,
                 previous=raw.get("previous") or None, candidate_since=float(raw.get("candidate_since", 0)),
                 epoch=int(raw.get("epoch", 0)), live_model=raw.get("live_model") or None,
                 candidate_model=raw.get("candidate_model") or None, previous_model=raw.get("previous_model") or None)


def live_model(settings) -> str:
    """The Triton model serving the live version, for a tool that reads its contract (replay,
    benchmarks): the one the roles name, else TECAFLOW_TRITON_MODEL (no roles, or Redis away)."""
    from stream.store import connect
    client = connect(settings.redis_url)
    try:
        return read(client).model("live", settings.triton_model)
    except Exception:  # noqa: BLE001 - without Redis, what Triton serves without roles
        return settings.triton_model
    finally:
        client.close()


def who() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container)
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def change(client, before: Roles, after: Roles, action: str, comparison: dict | None = None) -> Roles:
    """Record `after` in place of `before` with its event, atomically, unless the roles moved since
    `before` was read (RolesMoved)."""
    event = {"action": action, "who": who(), "at": time.time(), "from": before.fields(), "to": after.fields(),
             "comparison": comparison or {}}
    keyspace = replace(after, epoch=before.epoch + 1).candidate_keyspace()  # the epoch the script sets
    epoch = client.register_script(CHANGE)(keys=[ROLES, EVENTS, KEYSPACES], args=[
        before.epoch, json.dumps(after.fields()), json.dumps(event), EVENTS_KEPT, keyspace or ""])
    if int(epoch) < 0:
        raise RolesMoved("the roles changed while this command ran (another promote, rollback or export?); "
                         "look at `tecaflow shadow report` and run it again")
    return replace(after, epoch=int(epoch))


def stale_keyspaces(client, kept: int) -> list[str]:
    """The candidates' keyspaces but the newest `kept` nominations', oldest first."""
    return client.zrange(KEYSPACES, 0, -kept - 1)


def forgotten(client, keyspace: str) -> None:
    client.zrem(KEYSPACES, keyspace)


def events(client, count: int = 20) -> list[dict]:
    """The newest changes of role first."""
    return [json.loads(fields["json"]) for _, fields in client.xrevrange(EVENTS, count=count)]


# ---- the transitions ------------------------------------------------------------------------
def nominated(before: Roles, version: str, live_if_unrecorded: str | None, model: str | None = None) -> Roles:
    """`version` (served by `model`) shadows the live one (any candidate before it stops shadowing)."""
    live = before.live or live_if_unrecorded
    if live is None:
        raise UserError("no live version to shadow: export a first model without --candidate")
    if version == live:
        raise UserError(f"version {version} is the live one; a candidate must be another version")
    return Roles(live=live, candidate=version, previous=None, candidate_since=time.time(),
                 live_model=before.live_model, candidate_model=model)


def promoted(before: Roles) -> Roles:
    """The candidate goes live; the version it replaces keeps shadowing it, so that a rollback is one
    more swap and needs nothing loaded."""
    if not before.candidate:
        raise UserError("no candidate to promote: export one with `tecaflow export --candidate`")
    return Roles(live=before.candidate, candidate=before.live, previous=before.live, candidate_since=time.time(),
                 live_model=before.candidate_model, candidate_model=before.live_model,
                 previous_model=before.live_model)


def rolled_back(before: Roles) -> Roles:
    """Back to the version that was live before the last promotion; the one rolled back from
    keeps shadowing (`tecaflow shadow stop` drops it)."""
    if not before.previous or before.previous != before.candidate:
        raise UserError("nothing to roll back to: no promotion since the last candidate was chosen")
    return Roles(live=before.previous, candidate=before.live, previous=None, candidate_since=time.time(),
                 live_model=before.previous_model, candidate_model=before.live_model)


def stopped(before: Roles) -> Roles:
    if not before.candidate:
        raise UserError("no candidate is shadowing")
    return Roles(live=before.live, live_model=before.live_model)


# ---- what Triton serves ---------------------------------------------------------------------
def config_path(repo: Path | str, model: str = contract.MODEL_NAME) -> Path:
    return Path(repo) / model / contract.CONFIG_FILE


def serve_exactly(repo: Path | str, versions: list[str], model: str = contract.MODEL_NAME) -> None:
    """Make the model's config serve exactly `versions` (version_policy specific)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as pb
    path = config_path(repo, model)
    if not path.exists():
        raise UserError(f"{path}: no such file; is TECAFLOW_MODEL_REPO the repository Triton serves?")
    on_disk = {p.name for p in contract.versions(repo, model)}
    missing = [v for v in versions if v not in on_disk]
    if missing:
        raise UserError(f"version(s) {', '.join(missing)} of {model} are not in {Path(repo) / model}")
    config = text_format.Parse(path.read_text(), pb.ModelConfig())
    config.version_policy.specific.versions[:] = sorted({int(v) for v in versions})
    write_config(repo, text_format.MessageToString(config), model)


def write_config(repo: Path | str, text: str, model: str = contract.MODEL_NAME) -> None:
    """The model's config.pbtxt, written to a temporary file and renamed: Triton's poll never reads
    half a file."""
    path = config_path(repo, model)
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text(text)
    os.replace(staging, path)


def check_servable(repo: Path | str, version: str, model: str) -> None:
    """`version` can be served under its model's config.pbtxt as it is now (the slot's config is
    that of the last version exported to it, whose contract may differ)."""
    own = Path(repo) / model / version
    if not (own / contract.METADATA_FILE).is_file() or not config_path(repo, model).is_file():
        return  # not a tecaflow export (Triton says whether it loads), or no config (serve_exactly says)
    exported = contract.ModelContract.read_metadata(own)
    if not exported.same_interface(contract.ModelContract.read_config_pbtxt(config_path(repo, model))):
        raise UserError(f"version {version} was exported with another contract than {model}'s config.pbtxt now "
                        f"serves (a later export to that slot changed it): export its checkpoint again with "
                        f"`tecaflow export --candidate`")


def serve_roles(repo: Path | str, after: Roles, base: str = contract.MODEL_NAME) -> None:
    """Each model serving a role serves exactly its roles' versions (the other slot, holding none,
    is left as it is: it keeps serving its last version until a next candidate replaces it)."""
    for model, versions in after.served_by_model(base).items():
        serve_exactly(repo, versions, model)


def newest_on_disk(repo: Path | str, model: str = contract.MODEL_NAME) -> str | None:
    found = contract.versions(repo, model)
    return found[-1].name if found else None
