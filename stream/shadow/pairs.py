"""The live and candidate outputs of the same segments, and the candidate's call counts, in Redis:
what the comparison (stream/shadow/report.py) reads.

Keys, under the candidate's keyspace (stream/shadow/roles.py candidate_keyspace):
    <keyspace>:{s}:pairs   the stream's last TECAFLOW_SHADOW_PAIRS_KEPT pairs, oldest first, JSON
                           [event_time, live score, candidate score, live contributions, candidate
                           contributions] (contributions: side -> how far that side moved the score)
    <keyspace>:figures     the divergences the workers' metrics publish, as one worker computed
                           them (JSON, expires after a metrics tick: stream/shadow/report.py)
    <keyspace>:calls       hash: ok, error, timeout, skipped, not_ready (batches; not_ready: not
                           sent, Triton had not loaded the candidate yet; error also counts batches
                           not sent because its contract could not be read), segments, seconds (the
                           sum of the answered calls' latency)
A pair is written once, when the candidate first records the segment; a crash between the two
writes loses that pair, never doubles it (the comparison is a sample).
"""
from __future__ import annotations

import json

CALL_OUTCOMES = ("ok", "error", "timeout", "skipped", "not_ready")  # only error and timeout are failures
STREAM_KEY = "pairs"  # the per-stream key's suffix, beside the store's (stream/store.py)


def pairs_key(keyspace: str, stream: str) -> str:
    return f"{keyspace}:{{{stream}}}:{STREAM_KEY}"


def calls_key(keyspace: str) -> str:
    return f"{keyspace}:calls"


def figures_key(keyspace: str) -> str:
    return f"{keyspace}:figures"


def record_pairs(client, keyspace: str, pairs: dict[str, list[list]], kept: int) -> None:
    pipe = client.pipeline(transaction=False)
    for stream, rows in pairs.items():
        key = pairs_key(keyspace, stream)
        pipe.rpush(key, *[json.dumps(row) for row in rows])
        pipe.ltrim(key, -kept, -1)
    pipe.execute()


def count_calls(client, tally: dict[str, dict[str, float]]) -> None:
    """Add keyspace -> {outcome: calls, "segments": n, "seconds": s} to the call counts."""
    pipe = client.pipeline(transaction=False)
    for keyspace, counts in tally.items():
        for field, value in counts.items():
            if field == "seconds":
                pipe.hincrbyfloat(calls_key(keyspace), field, value)
            elif value:
                pipe.hincrby(calls_key(keyspace), field, int(value))
    pipe.execute()


def read_pairs(client, keyspace: str, streams: list[str]) -> dict[str, list[list]]:
    pipe = client.pipeline(transaction=False)
    for stream in streams:
        pipe.lrange(pairs_key(keyspace, stream), 0, -1)
    return {stream: [json.loads(row) for row in rows] for stream, rows in zip(streams, pipe.execute()) if rows}


def read_calls(client, keyspace: str) -> dict:
    raw = client.hgetall(calls_key(keyspace))
    calls = {outcome: int(raw.get(outcome, 0)) for outcome in CALL_OUTCOMES}
    answered = calls["ok"]
    tried = answered + calls["error"] + calls["timeout"]
    calls.update(segments=int(raw.get("segments", 0)),
                 mean_latency_s=float(raw.get("seconds", 0)) / answered if answered else None,
                 failure_rate=(calls["error"] + calls["timeout"]) / tried if tried else 0.0)
    return calls
