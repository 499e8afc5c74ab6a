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
import sys
import sysconfig
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from stream.contract import CONFIG_FILE, MODEL_NAME
from stream.stack.service import Service, ServiceError, http_status

log = logging.getLogger(__name__)


class TritonError(ServiceError):
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


def check_config(path: Path) -> None:
    """A model config Triton cannot read fails here, with the parser's words: Triton itself only
    logs it and keeps polling, and a wait for the model would time out with no reason given."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as pb
    try:
        text_format.Parse(path.read_text(), pb.ModelConfig())
    except (text_format.ParseError, UnicodeDecodeError) as e:
        raise TritonError(f"{path} is not a Triton model config: {e}") from None


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
    model: str | None = MODEL_NAME  # ready means this model is ready; None: the server is

    def __post_init__(self):
        self.repo, self.run_dir = Path(self.repo).resolve(), Path(self.run_dir).resolve()
        self._service: Service | None = None

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    @property
    def process(self):
        return self._service.process if self._service else None

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

    def service(self, timeout: float = 120.0) -> Service:
        """The tritonserver process as a Service: healthy once the model is ready; a model that
        fails to load stops the wait at once, with Triton's reason."""
        if not self.repo.is_dir():
            raise TritonError(f"model repository {self.repo} does not exist (run `tecaflow export` first)")
        if self.model and not (self.repo / self.model / CONFIG_FILE).is_file():
            raise TritonError(f"no model {self.model!r} in {self.repo} (run `tecaflow export --repo {self.repo}`)")
        if self.model:
            check_config(self.repo / self.model / CONFIG_FILE)
        return Service("triton", self.command(), self.run_dir, health=self.ready, env=self.environment(),
                       start_timeout=timeout, failed=self.load_failure)

    def start(self, timeout: float = 120.0) -> "EmbeddedTriton":
        log.info("starting tritonserver on http %s, grpc %s, metrics %d", self.http_url, self.grpc_url,
                 self.metrics_port)
        self._service = self.service(timeout)
        try:
            self._service.start()
        except ServiceError as e:
            raise TritonError(str(e)) from None
        log.info("tritonserver ready")
        return self

    def ready(self) -> bool:
        path = f"/v2/models/{self.model}/ready" if self.model else "/v2/health/ready"
        return http_status(f"http://{self.http_url}{path}") == 200

    def load_failure(self) -> str | None:
        """Triton's reason when every version of the model is UNAVAILABLE after a load attempt, or
        when it could not read the model's directory at all (then only its log says so)."""
        if not self.model:
            return None
        marker = f"Poll failed for model directory '{self.model}': "
        polled = [line.split(marker, 1)[1].rstrip('"') for line in self.log_tail(200).splitlines() if marker in line]
        if polled:
            return f"model {self.model!r} failed to load: {polled[-1]}"
        request = urllib.request.Request(f"http://{self.http_url}/v2/repository/index", data=b"{}", method="POST")
        try:
            with urllib.request.urlopen(request, timeout=2) as r:
                index = json.loads(r.read())
        except (urllib.error.URLError, OSError, ValueError):
            return None
        states = [e for e in index if e.get("name") == self.model]
        if states and all(e.get("state") == "UNAVAILABLE" and e.get("reason") for e in states):
            return f"model {self.model!r} failed to load: " + "; ".join(
                f"version {e.get('version')}: {e['reason']}" for e in states)
        return None

    def log_tail(self, lines: int = 30) -> str:
        return self._service.log_tail(lines) if self._service else "(not started)"

    def stop(self, timeout: float = 20.0) -> None:
        if self._service is not None:
            self._service.stop(timeout)

    def __enter__(self):
        return self.start() if self._service is None else self

    def __exit__(self, *exc):
        self.stop()
