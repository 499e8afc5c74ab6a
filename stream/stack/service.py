"""A local service: a command run in the background with its environment, a health check, a pid
file and a log, started and stopped the same way whatever it is.

The embedded stack (broker, Redis, Triton, Prometheus), the demo's worker, dashboard and replay,
and the tests' servers are all Services. Each runs in its own process group (Ctrl-C reaches only
whoever started it, and stop() takes its children down too), writes `<run_dir>/<name>.log`, and
leaves `<run_dir>/<name>.pid` so that another process (`tecaflow stack down`) can stop it.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from stream.errors import UserError

log = logging.getLogger(__name__)


class ServiceError(UserError, RuntimeError):
    """A service did not start or did not become healthy; the message holds its last log lines."""


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def free_ports(n: int) -> list[int]:
    """`n` different loopback ports nobody listens on now (for scratch servers): all bound at
    once, so that no two are the same."""
    with ExitStack() as held:
        servers = [held.enter_context(socket.create_server(("127.0.0.1", 0))) for _ in range(n)]
        return [server.getsockname()[1] for server in servers]


def http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, OSError):
        return None


def http_ok(url: str) -> bool:
    return http_status(url) == 200


@dataclass
class Service:
    name: str
    command: list[str]
    run_dir: Path
    health: Callable[[], bool] | None = None  # None: healthy while it runs
    env: dict[str, str] | None = None
    stdin: str | None = None  # written to its standard input, then closed (secrets stay off `ps`)
    cwd: Path | None = None
    start_timeout: float = 30.0
    failed: Callable[[], str | None] = lambda: None  # a reason to stop waiting before the timeout
    process: subprocess.Popen | None = field(default=None, init=False)
    _log_offset: int = field(default=0, init=False)  # where this start's lines begin in the log

    def __post_init__(self):
        self.run_dir = Path(self.run_dir).resolve()

    @property
    def log_path(self) -> Path:
        return self.run_dir / f"{self.name}.log"

    @property
    def pid_path(self) -> Path:
        return self.run_dir / f"{self.name}.pid"

    def start(self, wait: bool = True) -> "Service":
        """Start it unless it is healthy already (or started by someone else and still coming
        up: then wait for it); wait until it is healthy, or raise ServiceError."""
        if self.healthy():
            log.info("%s already running", self.name)
            return self
        if self.running():
            log.info("%s started earlier (pid %s); waiting for it", self.name, self.pid())
            if wait:
                self.wait_healthy()
            return self
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                            cwd=self.cwd, start_new_session=True,
                                            stdin=subprocess.PIPE if self.stdin is not None else subprocess.DEVNULL)
        if self.stdin is not None:
            self.process.stdin.write(self.stdin.encode())
            self.process.stdin.close()
        self.pid_path.write_text(str(self.process.pid))
        log.info("started %s (pid %d), log %s", self.name, self.process.pid, self.log_path)
        if wait:
            self.wait_healthy()
        return self

    def healthy(self) -> bool:
        return self.running() if self.health is None else self.health()

    def wait_healthy(self, timeout: float | None = None) -> None:
        timeout = self.start_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.healthy():
                return
            if self.process is not None and self.process.poll() is not None:
                raise ServiceError(f"{self.name} exited with code {self.process.returncode}{self._last_line()}")
            reason = self.failed()
            if reason:
                self.stop()
                raise ServiceError(f"{self.name} failed: {' '.join(reason.split())}; see {self.log_path}")
            time.sleep(0.2)
        self.stop()
        raise ServiceError(f"{self.name} did not become healthy within {timeout:.0f}s{self._last_line()}")

    def _last_line(self) -> str:
        """For a one-line error: where the log is, and the last thing it says."""
        lines = [line for line in self.log_tail(5).splitlines() if line.strip()]
        return f"; see {self.log_path}" + (f" (last line: {lines[-1].strip()[:300]})" if lines else "")

    def pid(self) -> int | None:
        if self.process is not None:
            return self.process.pid if self.process.poll() is None else None
        try:
            pid = int(self.pid_path.read_text())
            os.kill(pid, 0)
            return pid
        except (FileNotFoundError, ValueError, ProcessLookupError):
            return None
        except PermissionError:  # alive, someone else's
            return pid

    def running(self) -> bool:
        return self.pid() is not None

    def stop(self, timeout: float = 20.0) -> bool:
        """SIGTERM its process group, SIGKILL after `timeout`. False when it was not running."""
        pid = self.pid()
        self.pid_path.unlink(missing_ok=True)
        if pid is None:
            return False
        stop_process_group(pid, timeout)
        if self.process is not None:
            self.process.wait()
        log.info("stopped %s", self.name)
        return True

    def status(self) -> dict:
        return {"healthy": self.healthy(), "pid": self.pid()}

    def log_text(self) -> str:
        """What the process wrote since this object started it (the log keeps earlier runs)."""
        if self.process is None or not self.log_path.exists():
            return ""
        with self.log_path.open("rb") as f:
            f.seek(self._log_offset)
            return f.read().decode(errors="replace")

    def log_tail(self, lines: int = 20) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def stop_process_group(pid: int, timeout: float = 15.0) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    except PermissionError:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:  # our child: reaped
                return
        except ChildProcessError:  # not our child: is it still there?
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
        time.sleep(0.1)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
