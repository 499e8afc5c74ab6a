"""Every setting of the live system, from environment variables with documented defaults.

| variable | default | meaning |
|---|---|---|
| TECAFLOW_RUN_DIR | run | logs, pid files, data of the embedded stack |
| TECAFLOW_BROKER_URL | kafka://127.0.0.1:9092 | Kafka bootstrap servers (comma-separated host:port, `kafka://` optional) |
| TECAFLOW_BROKER_SECURITY | PLAINTEXT | PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL |
| TECAFLOW_BROKER_SASL_MECHANISM | PLAIN | PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 |
| TECAFLOW_BROKER_SASL_USERNAME / _PASSWORD | (empty) | SASL credentials |
| TECAFLOW_BROKER_CA_FILE | (empty) | CA bundle for SSL |
| TECAFLOW_REDIS_URL | redis://127.0.0.1:6379/0 | Redis URL (redis://:password@host:port/db, rediss:// for TLS, redis+cluster://:password@host:port for a Redis Cluster, any node); the password is never printed |
| TECAFLOW_TRITON_URL | 127.0.0.1:8001 | Triton gRPC address |
| TECAFLOW_TRITON_MODEL | tecafn | model name in the repository |
| TECAFLOW_TOPIC_SEGMENTS / _SCORES / _ALERTS / _DLQ | segments / scores / alerts / segments-dlq | topic names |
| TECAFLOW_PARTITIONS | 4 | partitions of the topics tecaflow creates |
| TECAFLOW_BATCH_SIZE | 32 | most segments per Triton call |
| TECAFLOW_BATCH_WAIT_S | 0.2 | longest wait to fill a batch |
| TECAFLOW_METRICS_PORT | 9108 | worker's Prometheus /metrics port (0: off) |
| TECAFLOW_METRICS_HOST | 127.0.0.1 | address the metrics port binds (0.0.0.0 in containers) |
| TECAFLOW_COMMIT_INTERVAL_S | 1.0 | how often offsets are committed |
| TECAFLOW_SESSION_TIMEOUT_S | 10 | consumer-group session and rebalance timeout |
| TECAFLOW_MAX_TEXT_CHARS | 2000 | longest transcript accepted |
| TECAFLOW_MAX_FUTURE_S | 300 | how far in the future an event time may lie |
| TECAFLOW_RECENT_SEGMENTS | 50 | scored segments kept per stream |
| TECAFLOW_RESOLUTIONS | 10,60,600 | trend bucket sizes in seconds |
| TECAFLOW_BUCKETS_KEPT | 360 | buckets kept per stream and resolution |
| TECAFLOW_EWMA_ALPHA | 0.1 | weight of the newest score in the EWMA |
| TECAFLOW_DEDUP_TTL_S | 604800 | how long a segment_id is remembered |
| TECAFLOW_ALERT_MIN_SHIFT | 0.5 | smallest change of a stream's mean score worth an alert (score units) |
| TECAFLOW_ALERT_FALSE_ALARMS_PER_10K | 1 | false alarms accepted per 10,000 steady segments of a stream; sets the threshold |
| TECAFLOW_ALERT_WARMUP | 100 | segments a stream needs (at start, and after each alert) before it is watched |
| TECAFLOW_WEBHOOK_URL | (empty) | Slack-compatible webhook for alerts (a secret: never printed) |
| TECAFLOW_WEBHOOK_QUEUE | 1000 | alerts waiting for the webhook at most; beyond it the oldest are dropped (counted) |
| TECAFLOW_DLQ_KEEP_BYTES | 65536 | bytes of an oversized original kept in its DLQ record (with its length and sha256); keep it well below the broker's message size limit (1 MB producer requests, and base64 adds a third) |
| TECAFLOW_MODEL_REPO | model_repo | where `stack up` serves models from, and the worker finds the tokenizer |
| TECAFLOW_TOKENIZER | (newest version's) | tokenizer directory, when the model repository is not on this host |
| TECAFLOW_BROKER_PORT, _REDIS_PORT, _TRITON_HTTP_PORT, _TRITON_GRPC_PORT, _TRITON_METRICS_PORT, _PROMETHEUS_PORT | 9092, 6379, 8000, 8001, 8002, 9090 | ports of the embedded stack |
| TECAFLOW_PROMETHEUS_TARGETS | 127.0.0.1:9108,127.0.0.1:9109 | worker metrics endpoints the embedded Prometheus scrapes |
| TECAFLOW_DASHBOARD_REFRESH_S | 2 | how often the dashboard's live parts reload from Redis |
| TECAFLOW_DASHBOARD_STALE_S | 300 | a stream with no update for this long is marked stale |
| TECAFLOW_DASHBOARD_PAGE_SIZE | 50 | streams per page of the dashboard's overview |
| TECAFLOW_TIMEZONE | UTC | time zone the dashboard shows times in (IANA name, e.g. Europe/Paris) |
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields
from urllib.parse import urlsplit, urlunsplit


class ConfigError(ValueError):
    pass


HIDDEN = "***"


def redact_url(url: str) -> str:
    """The URL with its secrets hidden, for logs, errors and screens: the password
    (redis://:***@host:6379/0), the query, and a path that is more than a database number
    (a webhook's token: https://hooks.slack.com/***). Host, port and user stay readable."""
    if "://" not in url:  # host:port, as in broker lists
        return HIDDEN if "@" in url else url
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return HIDDEN  # not parseable: nothing of it is safe to show
    query = HIDDEN if parts.query else ""
    if host is None:  # unix:///path/redis.sock: the path is no secret
        return f"{parts.scheme}://{parts.path}" + (f"?{query}" if query else "")
    netloc = host if ":" not in host else f"[{host}]"
    if port is not None:
        netloc += f":{port}"
    if parts.password is not None:
        netloc = f"{parts.username or ''}:{HIDDEN}@{netloc}"
    elif parts.username:
        netloc = f"{parts.username}@{netloc}"
    path = parts.path if re.fullmatch(r"/?\d*", parts.path) else "/" + HIDDEN
    return urlunsplit((parts.scheme, netloc, path, query, ""))


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def _number(name: str, default, kind, minimum):
    raw = _env(name, str(default))
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not {'an integer' if kind is int else 'a number'}") from None
    if not value >= minimum:
        raise ConfigError(f"{name}={value} must be >= {minimum}")
    return value


def _int(name: str, default: int, minimum: int = 0) -> int:
    return _number(name, default, int, minimum)


def _float(name: str, default: float, minimum: float = 0.0) -> float:
    return _number(name, default, float, minimum)


def _timezone(name: str) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"TECAFLOW_TIMEZONE={name!r} is not a known time zone (try UTC or Europe/Paris)") from None
    return name


@dataclass(frozen=True)
class DetectorParams:
    min_shift: float = 0.5
    false_alarms_per_10k: float = 1.0
    warmup: int = 100

    def __post_init__(self):
        if not self.min_shift > 0:
            raise ConfigError(f"TECAFLOW_ALERT_MIN_SHIFT={self.min_shift} must be > 0")
        if not 0 < self.false_alarms_per_10k < 10000:
            raise ConfigError(f"TECAFLOW_ALERT_FALSE_ALARMS_PER_10K={self.false_alarms_per_10k} must be in (0, 10000)")
        if self.warmup < 10:
            raise ConfigError(f"TECAFLOW_ALERT_WARMUP={self.warmup} must be >= 10 (the noise level is estimated from it)")

    @property
    def run_length(self) -> float:
        """Segments between false alarms, on average, that the user accepts."""
        return 10000.0 / self.false_alarms_per_10k


@dataclass(frozen=True)
class Settings:
    run_dir: str = "run"
    broker_url: str = "kafka://127.0.0.1:9092"
    broker_security: str = "PLAINTEXT"
    sasl_mechanism: str = "PLAIN"
    sasl_username: str = ""
    sasl_password: str = ""
    ca_file: str = ""
    redis_url: str = "redis://127.0.0.1:6379/0"
    triton_url: str = "127.0.0.1:8001"
    triton_model: str = "tecafn"
    topic_segments: str = "segments"
    topic_scores: str = "scores"
    topic_alerts: str = "alerts"
    topic_dlq: str = "segments-dlq"
    partitions: int = 4
    batch_size: int = 32
    batch_wait_s: float = 0.2
    metrics_port: int = 9108
    commit_interval_s: float = 1.0
    session_timeout_s: float = 10.0
    max_text_chars: int = 2000
    max_future_s: float = 300.0
    recent_segments: int = 50
    resolutions: tuple[int, ...] = (10, 60, 600)
    buckets_kept: int = 360
    ewma_alpha: float = 0.1
    dedup_ttl_s: int = 604800
    detector: DetectorParams = field(default_factory=DetectorParams)
    webhook_url: str = ""
    dashboard_refresh_s: float = 2.0
    dashboard_stale_s: float = 300.0
    dashboard_page_size: int = 50
    timezone: str = "UTC"
    webhook_queue: int = 1000
    dlq_keep_bytes: int = 65536

    @classmethod
    def from_env(cls) -> "Settings":
        security = _env("TECAFLOW_BROKER_SECURITY", "PLAINTEXT").upper()
        if security not in ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"):
            raise ConfigError(f"TECAFLOW_BROKER_SECURITY={security!r}: use PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL")
        mechanism = _env("TECAFLOW_BROKER_SASL_MECHANISM", "PLAIN").upper()
        if mechanism not in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
            raise ConfigError(f"TECAFLOW_BROKER_SASL_MECHANISM={mechanism!r}: use PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512")
        try:
            resolutions = tuple(sorted(int(r) for r in _env("TECAFLOW_RESOLUTIONS", "10,60,600").split(",")))
        except ValueError:
            raise ConfigError("TECAFLOW_RESOLUTIONS must be comma-separated whole seconds, e.g. 10,60,600") from None
        if not resolutions or resolutions[0] < 1:
            raise ConfigError("TECAFLOW_RESOLUTIONS must hold positive seconds")
        alpha = _float("TECAFLOW_EWMA_ALPHA", 0.1)
        if not 0 < alpha <= 1:
            raise ConfigError(f"TECAFLOW_EWMA_ALPHA={alpha} must be in (0, 1]")
        redis_url = _env("TECAFLOW_REDIS_URL", cls.redis_url)
        if not redis_url.startswith(("redis://", "rediss://", "unix://", "redis+cluster://", "rediss+cluster://")):
            raise ConfigError(f"TECAFLOW_REDIS_URL={redact_url(redis_url)!r} must start with redis://, rediss://, "
                              f"unix://, redis+cluster:// or rediss+cluster://")
        return cls(
            run_dir=_env("TECAFLOW_RUN_DIR", cls.run_dir),
            broker_url=_env("TECAFLOW_BROKER_URL", cls.broker_url),
            broker_security=security, sasl_mechanism=mechanism,
            sasl_username=_env("TECAFLOW_BROKER_SASL_USERNAME", ""),
            sasl_password=_env("TECAFLOW_BROKER_SASL_PASSWORD", ""),
            ca_file=_env("TECAFLOW_BROKER_CA_FILE", ""),
            redis_url=redis_url,
            triton_url=_env("TECAFLOW_TRITON_URL", cls.triton_url),
            triton_model=_env("TECAFLOW_TRITON_MODEL", cls.triton_model),
            topic_segments=_env("TECAFLOW_TOPIC_SEGMENTS", cls.topic_segments),
            topic_scores=_env("TECAFLOW_TOPIC_SCORES", cls.topic_scores),
            topic_alerts=_env("TECAFLOW_TOPIC_ALERTS", cls.topic_alerts),
            topic_dlq=_env("TECAFLOW_TOPIC_DLQ", cls.topic_dlq),
            partitions=_int("TECAFLOW_PARTITIONS", 4, 1),
            batch_size=_int("TECAFLOW_BATCH_SIZE", 32, 1),
            batch_wait_s=_float("TECAFLOW_BATCH_WAIT_S", 0.2),
            metrics_port=_int("TECAFLOW_METRICS_PORT", 9108),
            commit_interval_s=_float("TECAFLOW_COMMIT_INTERVAL_S", 1.0),
            session_timeout_s=_float("TECAFLOW_SESSION_TIMEOUT_S", 10.0, 1.0),
            max_text_chars=_int("TECAFLOW_MAX_TEXT_CHARS", 2000, 1),
            max_future_s=_float("TECAFLOW_MAX_FUTURE_S", 300.0),
            recent_segments=_int("TECAFLOW_RECENT_SEGMENTS", 50, 1),
            resolutions=resolutions,
            buckets_kept=_int("TECAFLOW_BUCKETS_KEPT", 360, 1),
            ewma_alpha=alpha,
            dedup_ttl_s=_int("TECAFLOW_DEDUP_TTL_S", 604800, 1),
            detector=DetectorParams(
                min_shift=_float("TECAFLOW_ALERT_MIN_SHIFT", 0.5),
                false_alarms_per_10k=_float("TECAFLOW_ALERT_FALSE_ALARMS_PER_10K", 1.0),
                warmup=_int("TECAFLOW_ALERT_WARMUP", 100)),
            webhook_url=_env("TECAFLOW_WEBHOOK_URL", ""),
            dashboard_refresh_s=_float("TECAFLOW_DASHBOARD_REFRESH_S", 2.0, 0.5),
            dashboard_stale_s=_float("TECAFLOW_DASHBOARD_STALE_S", 300.0, 1.0),
            dashboard_page_size=_int("TECAFLOW_DASHBOARD_PAGE_SIZE", 50, 1),
            timezone=_timezone(_env("TECAFLOW_TIMEZONE", cls.timezone)),
            webhook_queue=_int("TECAFLOW_WEBHOOK_QUEUE", 1000, 1),
            dlq_keep_bytes=_int("TECAFLOW_DLQ_KEEP_BYTES", 65536, 0),
        )

    def broker_servers(self) -> str:
        return ",".join(s.strip().removeprefix("kafka://") for s in self.broker_url.split(","))

    def describe(self) -> str:
        """Every setting, for the log: passwords hidden, URLs through redact_url."""
        shown = {"sasl_password": lambda v: HIDDEN if v else v, "redis_url": redact_url,
                 "webhook_url": redact_url, "broker_url": lambda v: ",".join(map(redact_url, v.split(",")))}
        return ", ".join(f"{f.name}={shown.get(f.name, lambda v: v)(getattr(self, f.name))}" for f in fields(self))
