"""Rolling sentiment trends in Redis. No Faust in here: the worker writes, the dashboard and
`tecaflow trends` read.

Keys (every per-stream key carries the hash tag {stream_id}):
    tf:{s}:seen:<segment_id>   content digest of a recorded segment (idempotency; TTL)
    tf:{s}:b<r>:<start>        bucket of r seconds from event time `start`: count, sum, sumsq, min, max
    tf:{s}:b<r>                sorted set of that resolution's bucket starts (retention)
    tf:{s}:totals              count, sum, sumsq, ewma, last_score, last_event_time, last_update
    tf:{s}:recent              the last N scored segments as JSON (newest first)
    tf:{s}:window              "event_time score" of the last segments, oldest first (shift detection)
    tf:{s}:detector            the detector's state
    tf:streams                 sorted set of streams by last activity (wall clock)
    tf:alerts                  Redis stream of alerts, newest last

A segment is recorded by one Lua script: either every structure above changes or none does, and
a segment_id already recorded changes nothing ("dup"), or is refused when its content differs
("conflict").
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass

import redis

RECORD = """
local p = 'tf:{' .. ARGV[1] .. '}'
local seen = p .. ':seen:' .. ARGV[2]
local prior = redis.call('GET', seen)
if prior then
  if prior == ARGV[3] then return 'dup' end
  return 'conflict'
end
redis.call('SET', seen, ARGV[3], 'EX', tonumber(ARGV[11]))
local t = tonumber(ARGV[4])
local s = tonumber(ARGV[5])
local kept = tonumber(ARGV[8])
for _, r in ipairs(cjson.decode(ARGV[7])) do
  local start = math.floor(t / r) * r
  local idx = p .. ':b' .. r
  local key = idx .. ':' .. start
  redis.call('HINCRBY', key, 'count', 1)
  redis.call('HINCRBYFLOAT', key, 'sum', ARGV[5])
  redis.call('HINCRBYFLOAT', key, 'sumsq', ARGV[6])
  local mn = redis.call('HGET', key, 'min')
  if (not mn) or s < tonumber(mn) then redis.call('HSET', key, 'min', ARGV[5]) end
  local mx = redis.call('HGET', key, 'max')
  if (not mx) or s > tonumber(mx) then redis.call('HSET', key, 'max', ARGV[5]) end
  redis.call('ZADD', idx, start, start)
  local n = redis.call('ZCARD', idx)
  if n > kept then
    for _, old in ipairs(redis.call('ZRANGE', idx, 0, n - kept - 1)) do redis.call('DEL', idx .. ':' .. old) end
    redis.call('ZREMRANGEBYRANK', idx, 0, n - kept - 1)
  end
end
local tot = p .. ':totals'
redis.call('HINCRBY', tot, 'count', 1)
redis.call('HINCRBYFLOAT', tot, 'sum', ARGV[5])
redis.call('HINCRBYFLOAT', tot, 'sumsq', ARGV[6])
local alpha = tonumber(ARGV[10])
local e = redis.call('HGET', tot, 'ewma')
if e then e = alpha * s + (1 - alpha) * tonumber(e) else e = s end
redis.call('HSET', tot, 'ewma', string.format('%.17g', e), 'last_score', ARGV[5], 'last_update', ARGV[13])
local last = redis.call('HGET', tot, 'last_event_time')
if (not last) or t > tonumber(last) then redis.call('HSET', tot, 'last_event_time', ARGV[4]) end
redis.call('LPUSH', p .. ':recent', ARGV[14])
redis.call('LTRIM', p .. ':recent', 0, tonumber(ARGV[9]) - 1)
redis.call('RPUSH', p .. ':window', ARGV[4] .. ' ' .. ARGV[5])
redis.call('LTRIM', p .. ':window', -tonumber(ARGV[12]), -1)
redis.call('ZADD', 'tf:streams', tonumber(ARGV[13]), ARGV[1])
return 'new'
"""


@dataclass(frozen=True)
class StoreSettings:
    resolutions: tuple[int, ...] = (10, 60, 600)
    buckets_kept: int = 360
    recent_segments: int = 50
    ewma_alpha: float = 0.1
    dedup_ttl_s: int = 604800
    window: int = 1024  # last segments kept per stream for the detector to catch up on
    alerts_kept: int = 10000


def _key(stream: str) -> str:
    return "tf:{" + stream + "}"


class TrendStore:
    def __init__(self, url: str, settings: StoreSettings = StoreSettings(), client: redis.Redis | None = None):
        self.redis = client or redis.Redis.from_url(url, decode_responses=True, socket_timeout=5,
                                                    socket_connect_timeout=5, health_check_interval=10)
        self.settings = settings
        self._record = self.redis.register_script(RECORD)

    def ping(self) -> bool:
        return bool(self.redis.ping())

    # ---- writes ---------------------------------------------------------------------------
    def _record_args(self, stream, segment_id, digest, event_time, score, text, now) -> list:
        s = self.settings
        recent = json.dumps({"segment_id": segment_id, "event_time": event_time, "score": score,
                             "text": text[:280]}, ensure_ascii=False)
        return [stream, segment_id, digest, repr(float(event_time)), repr(float(score)), repr(float(score) ** 2),
                json.dumps(list(s.resolutions)), s.buckets_kept, s.recent_segments, s.ewma_alpha, s.dedup_ttl_s,
                s.window, repr(now), recent]

    def record(self, stream: str, segment_id: str, digest: str, event_time: float, score: float, text: str,
               now: float | None = None) -> str:
        """'new', 'dup' (same segment again: nothing changes) or 'conflict' (same id, other content)."""
        now = time.time() if now is None else now
        return self._record(args=self._record_args(stream, segment_id, digest, event_time, score, text, now))

    def record_many(self, items: list[tuple[str, str, str, float, float, str]]) -> list[str]:
        """record() for (stream, segment_id, digest, event_time, score, text) items, in order,
        in one round trip. Each item is still its own atomic script."""
        now = time.time()
        pipe = self.redis.pipeline(transaction=False)
        for item in items:
            self._record(args=self._record_args(*item, now), client=pipe)
        return pipe.execute()

    def record_alerts(self, stream: str, alerts: list[dict], detector_state: dict) -> list[str]:
        """Append the alerts and save the detector state that follows them, together (MULTI/EXEC):
        after a crash either all of them are recorded with the state, or none and the old state,
        so a redelivered batch raises each alert exactly once."""
        pipe = self.redis.pipeline(transaction=True)
        for alert in alerts:
            pipe.xadd("tf:alerts", {"stream_id": stream, "json": json.dumps(alert)},
                      maxlen=self.settings.alerts_kept, approximate=True)
        pipe.hset(_key(stream) + ":detector", mapping={k: json.dumps(v) for k, v in detector_state.items()})
        return pipe.execute()[:len(alerts)]

    def record_alert(self, stream: str, alert: dict, detector_state: dict) -> str:
        return self.record_alerts(stream, [alert], detector_state)[0]

    def save_detector_state(self, stream: str, state: dict) -> None:
        self.redis.hset(_key(stream) + ":detector", mapping={k: json.dumps(v) for k, v in state.items()})

    # ---- reads ----------------------------------------------------------------------------
    def detector_state(self, stream: str) -> dict:
        return {k: json.loads(v) for k, v in self.redis.hgetall(_key(stream) + ":detector").items()}

    def window(self, stream: str) -> list[tuple[float, float]]:
        return [tuple(map(float, item.split())) for item in self.redis.lrange(_key(stream) + ":window", 0, -1)]

    def streams(self) -> list[tuple[str, float]]:
        """(stream_id, last activity unix time), most recent first."""
        return [(m, float(s)) for m, s in self.redis.zrevrange("tf:streams", 0, -1, withscores=True)]

    def totals(self, stream: str) -> dict:
        return _parse_totals(self.redis.hgetall(_key(stream) + ":totals"))

    def buckets(self, stream: str, resolution: int, last: int | None = None) -> list[dict]:
        """Buckets of one resolution, oldest first: start, count, sum, mean, std, min, max."""
        idx = f"{_key(stream)}:b{resolution}"
        starts = self.redis.zrange(idx, -(last or self.settings.buckets_kept), -1)
        pipe = self.redis.pipeline(transaction=False)
        for start in starts:
            pipe.hgetall(f"{idx}:{start}")
        return [b for b in map(_parse_bucket, starts, pipe.execute()) if b]

    def totals_many(self, streams: list[str]) -> dict[str, dict]:
        """totals() of many streams in one pipelined round trip, whatever their number."""
        pipe = self.redis.pipeline(transaction=False)
        for stream in streams:
            pipe.hgetall(_key(stream) + ":totals")
        return {stream: _parse_totals(raw) for stream, raw in zip(streams, pipe.execute())}

    def bucket_sums(self, starts: dict[str, list[int]], resolution: int) -> dict[str, dict[int, tuple[int, float]]]:
        """(count, sum) of the named buckets of many streams in one pipelined round trip (the
        dashboard's overview of 1,000+ streams). Buckets that do not exist are left out."""
        pipe = self.redis.pipeline(transaction=False)
        for stream, wanted in starts.items():
            for start in wanted:
                pipe.hmget(f"{_key(stream)}:b{resolution}:{int(start)}", "count", "sum")
        replies = iter(pipe.execute())
        out: dict[str, dict[int, tuple[int, float]]] = {}
        for stream, wanted in starts.items():
            found = out.setdefault(stream, {})
            for start in wanted:
                count, total = next(replies)
                if count is not None:
                    found[int(start)] = (int(count), float(total))
        return out

    def rolling_mean(self, stream: str, resolution: int, buckets: int) -> float | None:
        rows = self.buckets(stream, resolution, buckets)
        n = sum(r["count"] for r in rows)
        return sum(r["sum"] for r in rows) / n if n else None

    def recent(self, stream: str, n: int = 20) -> list[dict]:
        return [json.loads(x) for x in self.redis.lrange(_key(stream) + ":recent", 0, n - 1)]

    def alerts(self, count: int = 20, stream: str | None = None) -> list[dict]:
        """Newest first."""
        out = []
        for entry_id, fields in self.redis.xrevrange("tf:alerts", count=count if stream is None else 10 * count):
            alert = json.loads(fields["json"])
            if stream is None or alert["stream_id"] == stream:
                out.append({"id": entry_id, **alert})
        return out[:count]

    def alerts_since(self, since: float, limit: int = 100_000) -> int:
        """How many alerts were recorded at or after wall-clock time `since` (at most `limit`)."""
        return len(self.redis.xrange("tf:alerts", min=f"{int(since * 1000)}-0", max="+", count=limit))


def _parse_totals(raw: dict) -> dict:
    if not raw:
        return {}
    count = int(raw["count"])
    total = float(raw["sum"])
    mean = total / count
    var = max(0.0, float(raw["sumsq"]) / count - mean * mean)
    return {"count": count, "sum": total, "mean": mean, "std": var ** 0.5, "ewma": float(raw["ewma"]),
            "last_score": float(raw["last_score"]), "last_event_time": float(raw["last_event_time"]),
            "last_update": float(raw["last_update"])}


def _parse_bucket(start: str, h: dict) -> dict | None:
    """A bucket hash as numbers; None when it was trimmed between the index read and this one."""
    if not h:
        return None
    n, total = int(h["count"]), float(h["sum"])
    mean = total / n
    return {"start": float(start), "count": n, "sum": total, "mean": mean,
            "std": max(0.0, float(h["sumsq"]) / n - mean * mean) ** 0.5, "min": float(h["min"]), "max": float(h["max"])}
