"""Start and stop the embedded `tritonserver` that ships inside the nvidia-pytriton wheel.

That build has only the Python backend. Its stub must sit in the backend directory, and it finds
its packages (numpy, onnxruntime) through the `python3` first on PATH, so the virtualenv's bin
goes first on PATH. We assemble a private backend directory under the run directory rather than
writing into site-packages.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


class TritonError(RuntimeError):
    """Triton could not be started or did not become ready; the message holds its log lines."""


def pytriton_root() -> Path:
    root = Path(sysconfig.get_paths()["purelib"]) / "pytriton" / "tritonserver"
    if not (root / "bin" / "tritonserver").is_file():
        raise TritonError(f"no tritonserver binary at {root}/bin: install nvidia-pytriton (make setup)")
    return root


def libs_dir() -> Path:
    return Path(sysconfig.get_paths()["purelib"]) / "nvidia_pytriton.libs"


def prepare_backends(target: Path) -> Path:
    """A backend directory with the Python backend and the stub for this interpreter."""
    root = pytriton_root()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise TritonError(f"no Python backend stub for Python {version} in {stub.parent.parent}")
    python_dir = target / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    for src in (root / "backends" / "python" / "libtriton_python.so",
                root / "backends" / "python" / "triton_python_backend_utils.py", stub):
        dst = python_dir / src.name
        if not dst.exists() or dst.stat().st_size != src.stat().st_size:
            shutil.copy2(src, dst)
    return target


@dataclass
class EmbeddedTriton:
    repo: Path
    run_dir: Path
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    model_control: str = "poll"  # poll: new versions are picked up without a restart; or explicit
    poll_seconds: int = 2
    host: str = "127.0.0.1"

    def __post_init__(self):
        self.repo, self.run_dir = Path(self.repo).resolve(), Path(self.run_dir).resolve()
        self.process: subprocess.Popen | None = None
        self.log_path = self.run_dir / "tritonserver.log"

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    def command(self) -> list[str]:
        cmd = [str(pytriton_root() / "bin" / "tritonserver"),
               f"--model-repository={self.repo}",
               f"--backend-directory={prepare_backends(self.run_dir / 'triton-backends')}",
               f"--http-port={self.http_port}", f"--grpc-port={self.grpc_port}",
               f"--metrics-port={self.metrics_port}", f"--http-address={self.host}",
               f"--grpc-address={self.host}", "--allow-metrics=true", "--allow-gpu-metrics=false",
               "--log-verbose=0", "--exit-on-error=false", "--strict-readiness=true",
               f"--model-control-mode={self.model_control}"]
        if self.model_control == "poll":
            cmd.append(f"--repository-poll-secs={self.poll_seconds}")
        if self.model_control == "explicit":
            cmd.append("--load-model=*")
        return cmd

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(libs_dir()), env.get("LD_LIBRARY_PATH")]))
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        return env

    def start(self, timeout: float = 120.0, model: str | None = "tecafn") -> "EmbeddedTriton":
        if not self.repo.is_dir():
            raise TritonError(f"model repository {self.repo} does not exist (run `tecaflow export` first)")
        if model and not (self.repo / model / "config.pbtxt").is_file():
            raise TritonError(f"no model {model!r} in {self.repo} (run `tecaflow export --repo {self.repo}`)")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        log.info("starting tritonserver on http %s, grpc %s, metrics %d", self.http_url, self.grpc_url,
                 self.metrics_port)
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT,
                                            env=self.environment(), start_new_session=True)
        (self.run_dir / "tritonserver.pid").write_text(str(self.process.pid))
        self.wait_ready(timeout, model)
        return self

    def wait_ready(self, timeout: float, model: str | None = "tecafn") -> None:
        path = f"/v2/models/{model}/ready" if model else "/v2/health/ready"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise TritonError(f"tritonserver exited with code {self.process.returncode}:\n{self.log_tail()}")
            if self._get(path) == 200:
                log.info("tritonserver ready (%s)", path)
                return
            failure = self.load_failure(model) if model else None
            if failure:
                tail = self.log_tail()
                self.stop()
                raise TritonError(f"model {model!r} failed to load: {failure}\n{tail}")
            time.sleep(0.3)
        tail = self.log_tail()
        self.stop()
        raise TritonError(f"tritonserver not ready on {path} after {timeout:.0f}s:\n{tail}")

    def load_failure(self, model: str) -> str | None:
        """Triton's reason when every version of `model` is UNAVAILABLE after a load attempt."""
        request = urllib.request.Request(f"http://{self.http_url}/v2/repository/index", data=b"{}", method="POST")
        try:
            with urllib.request.urlopen(request, timeout=2) as r:
                index = json.loads(r.read())
        except (urllib.error.URLError, OSError, ValueError):
            return None
        states = [e for e in index if e.get("name") == model]
        if states and all(e.get("state") == "UNAVAILABLE" and e.get("reason") for e in states):
            return "; ".join(f"version {e.get('version')}: {e['reason']}" for e in states)
        return None

    def _get(self, path: str) -> int | None:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}{path}", timeout=2) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except (urllib.error.URLError, OSError):
            return None

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return "(no log)"
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self, timeout: float = 20.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        log.info("tritonserver stopped")

    def __enter__(self):
        return self.start() if self.process is None else self

    def __exit__(self, *exc):
        self.stop()
