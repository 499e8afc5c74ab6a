"""Rolling sentiment trends in Redis. No Faust in here: the worker writes, the dashboard and
`tecaflow trends` read.

Keys (every per-stream key carries the hash tag {stream_id}, so all of a stream's keys live in one
Redis Cluster hash slot):
    tf:{s}:seen:<segment_id>   "<content digest> <score> <version>" of a recorded segment (idempotency;
                               TTL): a repeat is compared by its digest and republishes that score
                               and version
    tf:{s}:b<r>:<start>        bucket of r seconds from event time `start`: count, sum, sumsq, min, max,
                               missing_<side> (segments without audio / vision), attributed_<side>
                               (segments that had the side and attribution) and moved_<side> (the
                               sum of how far that side moved their scores: score minus the score
                               without it)
    tf:{s}:b<r>                sorted set of that resolution's bucket starts (retention)
    tf:{s}:totals              count, sum, sumsq, ewma, last_score, last_event_time, last_update, and
                               missing_<side>, attributed_<side>, moved_<side> as in a bucket
    tf:{s}:recent              the last N scored segments as JSON (newest first): segment_id,
                               event_time, score, text, modalities, and text_only and contributions
                               (side -> score minus the score without it) where the model gave them
    tf:{s}:window              "event_time score" of the last segments, oldest first (shift detection)
    tf:{s}:context             sorted set by event time of the newest N segments (TECAFLOW_CONTEXT_KEPT):
                               JSON [seq, segment_id, text], seq the stream's count when it was recorded;
                               what a model with context reads (stream/context.py)
    tf:{s}:detector            the detector's state
    tf:{s}:alerts              Redis stream of the stream's alerts, newest last
    tf:{s}:outbox              alerts not yet published to Kafka (entry id -> JSON), until the agent has
    tf:streams                 sorted set of streams by last activity (wall clock): a global key
    tf:warmup_rho              hash: stream -> "rho n recorded-at": each stream's lag-1 autocorrelation
                               as its detector's warm-up estimated it; the workers pool them into the
                               prior young streams are pulled towards (noise.pooled_rho_prior)

A candidate model in shadow (docs/shadow.md) has the same structures under its own keyspace,
K = tf:candidate:<version>:<epoch of its nomination> (K:{s}:totals, ..., K:streams), plus
K:{s}:pairs, the live and candidate outputs of the same segments, and K:calls
(stream/shadow/pairs.py). The roles themselves, global and in one slot, are stream/shadow/roles.py's:
    tf:{roles}                 hash: live, candidate, previous versions, candidate_since, epoch
    tf:{roles}:events          Redis stream of every change of role (who, when, from, to, comparison)
    tf:{roles}:keyspaces       the candidates' keyspaces by nomination: the older ones are dropped (drop)
Each recorded segment (tf:{s}:recent, the `scores` topic) names the version that scored it.

A stream's segments of one batch are recorded by one Lua script that touches that stream's slot
only: either every structure above changes or none does, and a segment_id already recorded
changes nothing ("dup"), or is refused when its content differs ("conflict"). The global index
tf:streams is written by a plain ZADD after the scripts, never from inside one (a script may
touch one slot only); it is idempotent, and a redelivered batch writes it again. An alert and
the detector state that produced it are written together by one script in the stream's slot,
with the alert in the stream's outbox until it is published: a crash between the two cannot
lose it, since the next batch of that stream (the redelivered one) publishes it again.

`TECAFLOW_REDIS_URL` may name a Redis Cluster: `redis+cluster://[:password@]host:port` (any
node; the others are discovered), `rediss+cluster://` with TLS.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass

import redis
from redis.cluster import RedisCluster

from stream.config import Settings
from stream.context import Recorded
from stream.schema import SIDES, Alert

LIVE = "tf"  # the live model's keyspace: what the dashboard, `tecaflow trends` and the topics show
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
WARMUP_RHO_SAMPLE = 2000  # streams' warm-ups a worker reads to pool the autocorrelation prior (warmup_rhos)

# KEYS[1] = tf:{s}:totals (it names the slot). ARGV[1] = stream, ARGV[2] = settings as JSON,
# ARGV[3] = now, ARGV[4] = JSON list of [segment_id, digest, event_time, score, score^2, recent-json,
# missing sides (JSON list), contributions (JSON object side -> value; empty without attribution), text,
# " <version>" or ""].
RECORD = """
local p = string.sub(KEYS[1], 1, -8)  -- the stream's key prefix: KEYS[1] less ':totals'
local cfg = cjson.decode(ARGV[2])
local now = ARGV[3]
local tot = KEYS[1]
local outcomes = {}
for i, item in ipairs(cjson.decode(ARGV[4])) do
  local seen = p .. ':seen:' .. item[1]
  local prior = redis.call('GET', seen)
  if prior then
    if string.match(prior, '^%S+') == item[2] then outcomes[i] = 'dup' else outcomes[i] = 'conflict' end
  else
    redis.call('SET', seen, item[2] .. ' ' .. item[4] .. item[10], 'EX', cfg.ttl)
    local t = tonumber(item[3])
    local s = tonumber(item[4])
    local missing = cjson.decode(item[7])
    local moved = cjson.decode(item[8])
    local function count_modalities(key)
      for _, side in ipairs(missing) do redis.call('HINCRBY', key, 'missing_' .. side, 1) end
      for side, v in pairs(moved) do
        redis.call('HINCRBY', key, 'attributed_' .. side, 1)
        redis.call('HINCRBYFLOAT', key, 'moved_' .. side, v)
      end
    end
    count_modalities(tot)
    for _, r in ipairs(cfg.resolutions) do
      local start = math.floor(t / r) * r
      local idx = p .. ':b' .. r
      local key = idx .. ':' .. start
      count_modalities(key)
      redis.call('HINCRBY', key, 'count', 1)
      redis.call('HINCRBYFLOAT', key, 'sum', item[4])
      redis.call('HINCRBYFLOAT', key, 'sumsq', item[5])
      local mn = redis.call('HGET', key, 'min')
      if (not mn) or s < tonumber(mn) then redis.call('HSET', key, 'min', item[4]) end
      local mx = redis.call('HGET', key, 'max')
      if (not mx) or s > tonumber(mx) then redis.call('HSET', key, 'max', item[4]) end
      redis.call('ZADD', idx, start, start)
      local n = redis.call('ZCARD', idx)
      if n > cfg.kept then
        for _, old in ipairs(redis.call('ZRANGE', idx, 0, n - cfg.kept - 1)) do redis.call('DEL', idx .. ':' .. old) end
        redis.call('ZREMRANGEBYRANK', idx, 0, n - cfg.kept - 1)
      end
    end
    local seq = redis.call('HINCRBY', tot, 'count', 1)
    if cfg.context > 0 then
      redis.call('ZADD', p .. ':context', item[3], cjson.encode({seq, item[1], item[9]}))
      redis.call('ZREMRANGEBYRANK', p .. ':context', 0, -cfg.context - 1)
    end
    redis.call('HINCRBYFLOAT', tot, 'sum', item[4])
    redis.call('HINCRBYFLOAT', tot, 'sumsq', item[5])
    local e = redis.call('HGET', tot, 'ewma')
    if e then e = cfg.alpha * s + (1 - cfg.alpha) * tonumber(e) else e = s end
    redis.call('HSET', tot, 'ewma', string.format('%.17g', e), 'last_score', item[4], 'last_update', now)
    local last = redis.call('HGET', tot, 'last_event_time')
    if (not last) or t > tonumber(last) then redis.call('HSET', tot, 'last_event_time', item[3]) end
    redis.call('LPUSH', p .. ':recent', item[6])
    redis.call('LTRIM', p .. ':recent', 0, cfg.recent - 1)
    redis.call('RPUSH', p .. ':window', item[3] .. ' ' .. item[4])
    redis.call('LTRIM', p .. ':window', -cfg.window, -1)
    outcomes[i] = 'new'
  end
end
return outcomes
"""

# KEYS[1] = tf:{s}:alerts, KEYS[2] = tf:{s}:detector, KEYS[3] = tf:{s}:outbox. ARGV[1] = maxlen, ARGV[2] = alert JSON,
# ARGV[3] = recorded-at, ARGV[4] = detector state as a flat JSON object of JSON strings.
# The detector state and the alerts it raised are written only over the state they were computed
# from (its `evaluated`, ARGV[5]; "" writes unconditionally): during a rebalance the old owner of a
# partition may still finish a batch while the new owner runs detection on the same streams, and
# without this the later writer would record the same alerts again, or roll the state back.
ALERT = """
if ARGV[5] ~= '' and tonumber(redis.call('HGET', KEYS[2], 'evaluated') or '0') ~= tonumber(ARGV[5]) then
  return {}
end
local ids = {}
for _, alert in ipairs(cjson.decode(ARGV[2])) do
  local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'json', alert, 't', ARGV[3])
  redis.call('HSET', KEYS[3], id, alert)
  ids[#ids + 1] = id
end
for k, v in pairs(cjson.decode(ARGV[4])) do redis.call('HSET', KEYS[2], k, v) end
return ids
"""

SAVE_STATE = """
if ARGV[1] ~= '' and tonumber(redis.call('HGET', KEYS[1], 'evaluated') or '0') ~= tonumber(ARGV[1]) then
  return 0
end
for k, v in pairs(cjson.decode(ARGV[2])) do redis.call('HSET', KEYS[1], k, v) end
return 1
"""


@dataclass(frozen=True)
class StoreSettings:
    """The settings the store uses; stream/config.py declares them and their defaults."""
    resolutions: tuple[int, ...] = Settings.resolutions
    buckets_kept: int = Settings.buckets_kept
    recent_segments: int = Settings.recent_segments
    ewma_alpha: float = Settings.ewma_alpha
    dedup_ttl_s: int = Settings.dedup_ttl_s
    context_kept: int = Settings.context_kept
    window: int = 1024  # last segments kept per stream for the detector to catch up on
    alerts_kept: int = 10000

    @classmethod
    def of(cls, settings: Settings, **extra) -> "StoreSettings":
        return cls(resolutions=settings.resolutions, buckets_kept=settings.buckets_kept,
                   recent_segments=settings.recent_segments, ewma_alpha=settings.ewma_alpha,
                   dedup_ttl_s=settings.dedup_ttl_s, context_kept=settings.context_kept, **extra)


@dataclass(frozen=True)
class ScoredSegment:
    """One scored segment as the store records it."""
    stream_id: str
    segment_id: str
    digest: str
    event_time: float
    score: float
    text: str
    missing: tuple[str, ...] = ()  # the sides it lacked (SIDES)
    text_only: float | None = None  # the score from its words alone, where the model gave it
    contributions: dict[str, float] | None = None  # side -> score minus the score without that side
    version: str | None = None  # the model version that scored it

    @property
    def modalities(self) -> tuple[str, ...]:
        return ("text", *(m for m in SIDES if m not in self.missing))

    def numbers(self) -> list[float]:
        """Every number the model gave for it (the score, the text-only score, the contributions)."""
        return [self.score, *([] if self.text_only is None else [self.text_only]),
                *(self.contributions or {}).values()]


def _state_json(state: dict) -> str:
    return json.dumps({k: json.dumps(v) for k, v in state.items()})


def _expected(evaluated: int | None) -> str:
    return "" if evaluated is None else str(int(evaluated))


def connect(url: str) -> redis.Redis | RedisCluster:
    """A client for a single Redis (redis://, rediss://, unix://) or a Redis Cluster (+cluster)."""
    options = dict(decode_responses=True, socket_timeout=5, socket_connect_timeout=5)
    scheme, sep, rest = url.partition("://")
    if scheme in CLUSTER_SCHEMES:
        return RedisCluster.from_url(f"{CLUSTER_SCHEMES[scheme]}{sep}{rest}", **options)
    return redis.Redis.from_url(url, health_check_interval=10, **options)


class TrendStore:
    @classmethod
    def of(cls, settings: Settings, **extra) -> "TrendStore":
        """The store at TECAFLOW_REDIS_URL, laid out as the settings say."""
        return cls(settings.redis_url, StoreSettings.of(settings, **extra))

    def __init__(self, url: str, settings: StoreSettings = StoreSettings(), client=None, keyspace: str = LIVE):
        """`keyspace`: the prefix of every key (LIVE, or a candidate's: stream/shadow/roles.py)."""
        self.keyspace, self.index = keyspace, f"{keyspace}:streams"
        self.warmup_rho_key = f"{keyspace}:warmup_rho"
        self.redis = client or connect(url)
        self.cluster = isinstance(self.redis, RedisCluster)
        self.settings = settings
        self._record = self.redis.register_script(RECORD)
        self._alert = self.redis.register_script(ALERT)
        self._save_state = self.redis.register_script(SAVE_STATE)

    def _key(self, stream: str) -> str:
        return f"{self.keyspace}:{{{stream}}}"

    def ping(self) -> bool:
        return bool(self.redis.ping())

    def check_access(self) -> None:
        """What a worker needs, tried once: authentication, loading scripts, reading and writing
        the index. Raises what Redis says (AuthenticationError, NoPermissionError, ...)."""
        self.redis.ping()
        self.redis.script_load(RECORD)
        self.redis.script_load(ALERT)
        self.redis.zadd(self.index, {"": 0}, xx=True)  # a write that changes nothing

    # ---- writes ---------------------------------------------------------------------------
    def _config(self) -> str:
        s = self.settings
        return json.dumps({"resolutions": list(s.resolutions), "kept": s.buckets_kept, "recent": s.recent_segments,
                           "alpha": s.ewma_alpha, "ttl": s.dedup_ttl_s, "window": s.window, "context": s.context_kept})

    @staticmethod
    def _item(s: "ScoredSegment") -> list:
        recent = {"segment_id": s.segment_id, "event_time": s.event_time, "score": s.score, "text": s.text[:280],
                  "modalities": list(s.modalities)}
        if s.contributions is not None:
            recent.update(text_only=s.text_only, contributions=s.contributions)
        if s.version is not None:
            recent["version"] = s.version
        return [s.segment_id, s.digest, repr(float(s.event_time)), repr(float(s.score)), repr(float(s.score) ** 2),
                json.dumps(recent, ensure_ascii=False), json.dumps(list(s.missing)),
                json.dumps({k: float(v) for k, v in (s.contributions or {}).items()}), s.text,
                "" if s.version is None else " " + s.version]

    def _record_stream(self, stream: str, items: list, now: float, client=None) -> list[str]:
        return self._record(keys=[self._key(stream) + ":totals"],
                            args=[stream, self._config(), repr(now), json.dumps(items)], client=client)

    def record(self, stream: str, segment_id: str, digest: str, event_time: float, score: float, text: str,
               now: float | None = None, **modalities) -> str:
        """'new', 'dup' (same segment again: nothing changes) or 'conflict' (same id, other content).
        `modalities`: what ScoredSegment takes beyond the score (missing, text_only, contributions)."""
        return self.record_many([ScoredSegment(stream, segment_id, digest, event_time, score, text, **modalities)],
                                now)[0]

    def record_many(self, items: list["ScoredSegment | tuple"], now: float | None = None) -> list[str]:
        """record() for many ScoredSegments (or (stream, segment_id, digest, event_time, score,
        text) tuples), in order: one atomic script per stream (one round trip in all on a single
        Redis, one per stream on a cluster), then the stream index."""
        now = time.time() if now is None else now
        items = [item if isinstance(item, ScoredSegment) else ScoredSegment(*item) for item in items]
        by_stream: dict[str, list[int]] = {}
        for i, item in enumerate(items):
            by_stream.setdefault(item.stream_id, []).append(i)
        if self.cluster:  # a cluster pipeline cannot run scripts (EVALSHA)
            results = [self._record_stream(s, [self._item(items[i]) for i in idx], now)
                       for s, idx in by_stream.items()]
        else:
            pipe = self.redis.pipeline(transaction=False)
            for s, idx in by_stream.items():
                self._record_stream(s, [self._item(items[i]) for i in idx], now, client=pipe)
            results = pipe.execute()
        self.redis.zadd(self.index, {s: now for s in by_stream})
        outcomes = [""] * len(items)
        for idx, result in zip(by_stream.values(), results):
            for i, outcome in zip(idx, result):
                outcomes[i] = outcome
        return outcomes

    def held(self, segments: list[tuple[str, str]]) -> list[tuple[float | None, str | None]]:
        """The score recorded for each (stream_id, segment_id) and the version that scored it, as its
        idempotency key keeps them: what a repeat of the segment republishes, so that every record
        of one segment says the same. None where the key has expired (TECAFLOW_DEDUP_TTL_S) or
        holds no score (or no version: recorded before versions were)."""
        pipe = self.redis.pipeline(transaction=False)
        for stream, segment_id in segments:
            pipe.get(f"{self._key(stream)}:seen:{segment_id}")
        held = []
        for value in pipe.execute():
            _, score, version = ((value or "").split(" ", 2) + ["", ""])[:3]
            held.append((float(score) if score else None, version or None))
        return held

    def recorded_context(self, streams: list[str]) -> dict[str, list[Recorded]]:
        """What each stream's context window holds (tf:{s}:context), in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for stream in streams:
            pipe.zrange(f"{self._key(stream)}:context", 0, -1, withscores=True)
        out = {}
        for stream, entries in zip(streams, pipe.execute()):
            out[stream] = [Recorded(segment_id, event_time, text, seq)
                           for (seq, segment_id, text), event_time in ((json.loads(m), t) for m, t in entries)]
        return out

    def held_scores(self, segments: list[tuple[str, str]]) -> list[float | None]:
        return [score for score, _ in self.held(segments)]

    def record_alerts(self, stream: str, alerts: list[Alert], detector_state: dict,
                      over_evaluated: int | None = None) -> list[str]:
        """Append the alerts to the stream's alerts and its outbox and save the detector state that
        follows them, in one script on the stream's hash slot: after a crash either all of them
        are recorded with the state, or none and the old state, so a redelivered batch raises each
        alert exactly once. With `over_evaluated`, only over the state that had evaluated that many
        segments (the one detection started from); otherwise nothing is written and no ids return."""
        key = self._key(stream)
        ids = self._alert(keys=[key + ":alerts", key + ":detector", key + ":outbox"],
                          args=[self.settings.alerts_kept, json.dumps([json.dumps(a.fields()) for a in alerts]),
                                repr(time.time()), _state_json(detector_state), _expected(over_evaluated)])
        if ids:
            self.redis.zadd(self.index, {stream: time.time()}, gt=True)
        return list(ids)

    def record_alert(self, stream: str, alert: Alert, detector_state: dict) -> str:
        return self.record_alerts(stream, [alert], detector_state)[0]
    def unpublished_alerts(self, stream: str) -> list[Alert]:
        """The stream's alerts recorded but not yet marked published, oldest first, with their id."""
        return _outbox(self.redis.hgetall(self._key(stream) + ":outbox"))

    def detection_inputs(self, streams: list[str]) -> dict[str, "DetectionInputs"]:
        """What detection reads of each stream, for all of them in one pipelined round trip (read
        one by one, they were four round trips per stream a batch touched)."""
        pipe = self.redis.pipeline(transaction=False)
        for stream in streams:
            key = self._key(stream)
            pipe.hgetall(key + ":totals")
            pipe.hgetall(key + ":detector")
            pipe.lrange(key + ":window", 0, -1)
            pipe.hgetall(key + ":outbox")
        replies = iter(pipe.execute())
        return {stream: DetectionInputs(
            totals=_parse_totals(next(replies)),
            state={k: json.loads(v) for k, v in next(replies).items()},
            window=[tuple(map(float, item.split())) for item in next(replies)],
            unpublished=_outbox(next(replies))) for stream in streams}

    def mark_published(self, alerts: list[Alert]) -> None:
        """Alerts (as unpublished_alerts gave them) that reached Kafka: out of their outboxes."""
        by_stream: dict[str, list[str]] = {}
        for alert in alerts:
            by_stream.setdefault(alert.stream_id, []).append(alert.id)
        for stream, ids in by_stream.items():
            self.redis.hdel(self._key(stream) + ":outbox", *ids)

    def save_detector_state(self, stream: str, state: dict) -> None:
        """Overwrite a stream's detector state (tools and tests; the worker saves over what it read)."""
        self.save_detector_states({stream: state}, {stream: None})

    def save_detector_states(self, states: dict[str, dict], over_evaluated: dict[str, int | None],
                             warmups: dict[str, list] | None = None) -> list[str]:
        """Many streams' detector states, in one pipelined round trip (one per stream on a cluster),
        each only over the state that had evaluated `over_evaluated[stream]` segments (None:
        unconditionally), and the streams' `warmups` (record_warmup_rho) with them. Returns the
        streams whose state had moved on meanwhile, left as they were."""
        if not states:
            self.record_warmup_rho(warmups or {})
            return []
        calls = [(stream, dict(keys=[self._key(stream) + ":detector"],
                               args=[_expected(over_evaluated[stream]), _state_json(state)]))
                 for stream, state in states.items()]
        if self.cluster:  # a cluster pipeline cannot run scripts (EVALSHA)
            saved = [self._save_state(**call) for _, call in calls]
            self.record_warmup_rho(warmups or {})
        else:
            pipe = self.redis.pipeline(transaction=False)
            for _, call in calls:
                self._save_state(**call, client=pipe)
            self.record_warmup_rho(warmups or {}, client=pipe)
            saved = pipe.execute()[:len(calls)]
        return [stream for (stream, _), ok in zip(calls, saved) if not ok]

    def record_warmup_rho(self, estimates: dict[str, list], now: float | None = None, client=None) -> None:
        """Each stream's warm-up autocorrelation [rho, n] (its detector state keeps it), stamped now
        (`client`: a pipeline to add the write to)."""
        if estimates:
            now = time.time() if now is None else now
            entries = {s: f"{r} {n} {now}" for s, (r, n) in estimates.items()}
            (client or self.redis).hset(self.warmup_rho_key, mapping=entries)

    def warmup_rhos(self, max_age_s: float, now: float | None = None, sample: int = WARMUP_RHO_SAMPLE
                    ) -> list[tuple[float, int]]:
        """The warm-up autocorrelations (rho, n) recorded within max_age_s, of at most `sample`
        streams drawn at random (HRANDFIELD) once there are more: every worker reads them once a
        minute, and the median of 2,000 is within about 0.003 of all of theirs. Older ones among those
        read are removed (streams that ended); a large hash is cleaned a sample at a time."""
        now, fresh, stale = time.time() if now is None else now, [], []
        # a positive count draws distinct fields, and all of them when the hash holds fewer
        drawn = self.redis.hrandfield(self.warmup_rho_key, sample, withvalues=True) or []
        for stream, value in zip(drawn[::2], drawn[1::2]):
            rho, n, at = value.split()
            if now - float(at) <= max_age_s:
                fresh.append((float(rho), int(n)))
            else:
                stale.append(stream)
        if stale:
            self.redis.hdel(self.warmup_rho_key, *stale)
        return fresh

    # ---- removal -----------------------------------------------------------------------------
    STREAM_KEYS = ("totals", "recent", "window", "context", "detector", "alerts", "outbox")

    def drop(self, extra: tuple[str, ...] = (), chunk: int = 500) -> int:
        """Delete this keyspace (a candidate's nomination that ended; never the live one's): every
        stream's keys, found from the index and each resolution's bucket index, `chunk` streams
        per round trip, so that no SCAN walks the whole of Redis. `extra`: more per-stream keys
        (suffixes) to delete. The idempotency keys (:seen:) are not indexed; they expire with
        TECAFLOW_DEDUP_TTL_S. Returns the number of streams dropped."""
        if self.keyspace == LIVE:
            raise ValueError("the live keyspace is never dropped")  # a caller's bug
        streams = self.redis.zrange(self.index, 0, -1)
        suffixes = (*self.STREAM_KEYS, *extra, *(f"b{r}" for r in self.settings.resolutions))
        for start in range(0, len(streams), chunk):
            part = streams[start:start + chunk]
            read = self.redis.pipeline(transaction=False)
            for stream in part:
                for r in self.settings.resolutions:
                    read.zrange(f"{self._key(stream)}:b{r}", 0, -1)
            buckets = iter(read.execute())
            delete = self.redis.pipeline(transaction=False)
            for stream in part:
                for r in self.settings.resolutions:
                    for bucket in next(buckets):
                        delete.unlink(f"{self._key(stream)}:b{r}:{bucket}")
                for suffix in suffixes:
                    delete.unlink(f"{self._key(stream)}:{suffix}")
            delete.execute()
        self.redis.unlink(self.index)
        self.redis.unlink(self.warmup_rho_key)
        return len(streams)

    # ---- reads ----------------------------------------------------------------------------
    def detector_state(self, stream: str) -> dict:
        return {k: json.loads(v) for k, v in self.redis.hgetall(self._key(stream) + ":detector").items()}

    def window(self, stream: str) -> list[tuple[float, float]]:
        return [tuple(map(float, item.split())) for item in self.redis.lrange(self._key(stream) + ":window", 0, -1)]

    def streams(self) -> list[tuple[str, float]]:
        """(stream_id, last activity unix time), most recent first."""
        return [(m, float(s)) for m, s in self.redis.zrevrange(self.index, 0, -1, withscores=True)]

    def totals(self, stream: str) -> dict:
        return _parse_totals(self.redis.hgetall(self._key(stream) + ":totals"))

    def buckets(self, stream: str, resolution: int, last: int | None = None) -> list[dict]:
        """Buckets of one resolution, oldest first: start, count, sum, mean, std, min, max."""
        idx = f"{self._key(stream)}:b{resolution}"
        starts = self.redis.zrange(idx, -(last or self.settings.buckets_kept), -1)
        pipe = self.redis.pipeline(transaction=False)
        for start in starts:
            pipe.hgetall(f"{idx}:{start}")
        return [b for b in map(_parse_bucket, starts, pipe.execute()) if b]

    def totals_many(self, streams: list[str]) -> dict[str, dict]:
        """totals() of many streams in one pipelined round trip, whatever their number."""
        pipe = self.redis.pipeline(transaction=False)
        for stream in streams:
            pipe.hgetall(self._key(stream) + ":totals")
        return {stream: _parse_totals(raw) for stream, raw in zip(streams, pipe.execute())}

    def bucket_sums(self, starts: dict[str, list[int]], resolution: int) -> dict[str, dict[int, tuple[int, float]]]:
        """(count, sum) of the named buckets of many streams in one pipelined round trip (the
        dashboard's overview of 1,000+ streams). Buckets that do not exist are left out."""
        pipe = self.redis.pipeline(transaction=False)
        for stream, wanted in starts.items():
            for start in wanted:
                pipe.hmget(f"{self._key(stream)}:b{resolution}:{int(start)}", "count", "sum")
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
        return [json.loads(x) for x in self.redis.lrange(self._key(stream) + ":recent", 0, n - 1)]

    def alerts(self, count: int = 20, stream: str | None = None) -> list[Alert]:
        """Newest first: one stream's, or the newest `count` of all streams' merged."""
        streams = [stream] if stream is not None else [s for s, _ in self.streams()]
        pipe = self.redis.pipeline(transaction=False)
        for s in streams:
            pipe.xrevrange(self._key(s) + ":alerts", count=count)
        entries = [(float(fields.get("t", 0)), entry_id, fields) for per_stream in pipe.execute() if per_stream
                   for entry_id, fields in per_stream]
        entries.sort(key=lambda e: e[0], reverse=True)
        return [Alert.from_message(json.loads(fields["json"]), entry_id) for _, entry_id, fields in entries[:count]]

    def alerts_since(self, since: float, index: list[tuple[str, float]] | None = None) -> int:
        """How many alerts were recorded at or after wall-clock time `since`, over all streams (one
        round trip given `index`, the streams() already read; only streams active since then can
        have any)."""
        streams = [s for s, active in (self.streams() if index is None else index) if active >= since]
        pipe = self.redis.pipeline(transaction=False)
        for s in streams:
            pipe.xrange(self._key(s) + ":alerts", min=f"{int(since * 1000)}-0", max="+")
        return sum(len(entries) for entries in pipe.execute())


@dataclass
class DetectionInputs:
    totals: dict  # as totals() gives them; {} for a stream never recorded
    state: dict  # the detector's saved state
    window: list[tuple[float, float]]  # (event_time, score) of the last segments, oldest first
    unpublished: list[Alert]  # alerts recorded, not yet published, oldest first, with their id


def _outbox(pending: dict) -> list[Alert]:
    order = sorted(pending, key=lambda entry_id: tuple(map(int, entry_id.split("-"))))
    return [Alert.from_message(json.loads(pending[entry_id]), entry_id) for entry_id in order]


def _parse_modalities(h: dict) -> dict:
    """missing: segments without each side; moved: the mean of how far each side moved the
    score (score minus the score without it), over the segments that had that side and
    attribution (None when there were none)."""
    attributed = {side: int(h.get(f"attributed_{side}", 0)) for side in SIDES}
    return {"missing": {side: int(h.get(f"missing_{side}", 0)) for side in SIDES},
            "moved": {side: float(h.get(f"moved_{side}", 0.0)) / n if n else None for side, n in attributed.items()}}


def _parse_totals(raw: dict) -> dict:
    if not raw:
        return {}
    count = int(raw["count"])
    total = float(raw["sum"])
    mean = total / count
    var = max(0.0, float(raw["sumsq"]) / count - mean * mean)
    return {"count": count, "sum": total, "mean": mean, "std": var ** 0.5, "ewma": float(raw["ewma"]),
            "last_score": float(raw["last_score"]), "last_event_time": float(raw["last_event_time"]),
            "last_update": float(raw["last_update"]), **_parse_modalities(raw)}


def _parse_bucket(start: str, h: dict) -> dict | None:
    """A bucket hash as numbers; None when it was trimmed between the index read and this one."""
    if not h:
        return None
    n, total = int(h["count"]), float(h["sum"])
    mean = total / n
    return {"start": float(start), "count": n, "sum": total, "mean": mean,
            "std": max(0.0, float(h["sumsq"]) / n - mean * mean) ** 0.5, "min": float(h["min"]), "max": float(h["max"]),
            **_parse_modalities(h)}
