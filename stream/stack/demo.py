"""`tecaflow demo` (what `make demo` runs): the whole system on the embedded stack.

1. trains and exports a small model if the model repository has none,
2. brings the stack up (broker, Redis, Triton, Prometheus),
3. starts a worker, the dashboard, and a looping replay of several streams in which another
   stream's sentiment shifts every round (a couple of minutes), so alerts keep coming,
4. prints the dashboard's URL first, then the trends as they come in, until Ctrl-C (or
   --seconds), then stops everything it started.
"""
from __future__ import annotations

import logging
import subprocess
import time
from dataclasses import replace
from pathlib import Path

from stream.config import Settings
from stream.contract import ONNX_FILE, versions
from stream.errors import UserError
from stream.stack.service import Service, http_ok
from stream.stack.embedded import CLI, Stack, worker_service

log = logging.getLogger(__name__)


def ensure_model(repo: Path, runs: Path) -> None:
    if any((v / ONNX_FILE).is_file() for v in versions(repo)):
        log.info("serving the newest model already in %s", repo)
        return
    log.info("no model in %s: training a small one on synthetic data (about a minute)", repo)
    out = runs / "demo-model"
    subprocess.run([*CLI, "train", "--data", "synthetic", "--text-encoder", "tiny", "--epochs", "10",
                    "--max-frames", "20", "--synthetic-size", "600", "--out", str(out), "--set", "encoder_layers=1",
                    "--set", "cross_layers=1", "--set", "d_model=32", "--set", "n_heads=4"], check=True)
    subprocess.run([*CLI, "export", "--checkpoint", str(out / "checkpoint.pt"), "--repo", str(repo)], check=True)


def demo_settings(settings: Settings) -> Settings:
    """The demo runs one worker: Prometheus scrapes only its port (unless told otherwise), else
    TecaflowWorkerDown fires for a second worker that was never meant to run."""
    return replace(settings, prometheus_targets=settings.prometheus_targets or f"127.0.0.1:{settings.metrics_port}")


def demo_services(settings: Settings, streams: int, segments: int, rate: float, dashboard_port: int) -> list[Service]:
    """The worker, the dashboard and a looping replay, each a Service logging under the run dir."""
    run_dir = Path(settings.run_dir)
    return [
        worker_service(run_dir),
        Service("dashboard", [*CLI, "dashboard", "--port", str(dashboard_port)], run_dir, start_timeout=60,
                health=lambda: http_ok(f"http://127.0.0.1:{dashboard_port}/_stcore/health")),
        Service("replay", [*CLI, "replay", "--loop", "--streams", str(streams), "--segments", str(segments),
                           "--rate", str(rate), "--prefix", "demo", "--no-progress", "--missing", "0.15"], run_dir),
    ]


def run_demo(settings: Settings, repo: Path, streams: int, segments: int, rate: float, seconds: float,
             dashboard_port: int = 8501) -> int:
    print(f"tecaflow demo: the dashboard will be at http://127.0.0.1:{dashboard_port} once the stack is up", flush=True)
    ensure_model(repo, Path("runs"))
    stack = Stack(demo_settings(settings), repo)
    started = stack.up()
    children = demo_services(settings, streams, segments, rate, dashboard_port)
    run_dir = Path(settings.run_dir)
    round_s = segments * streams / rate
    try:
        for child in children:
            if child.healthy():  # its port answers already: another demo or dashboard
                raise UserError(f"the {child.name}'s port is in use; stop what holds it (or pass another "
                                f"--dashboard-port)")
            child.start()
        print(f"""
tecaflow demo is running
  dashboard         http://127.0.0.1:{dashboard_port}   <- open this
  Prometheus        http://127.0.0.1:{settings.prometheus_port}   (try: rate(tecaflow_segments_scored_total[1m]))
  worker metrics    http://127.0.0.1:{settings.metrics_port}/metrics
  Triton metrics    http://127.0.0.1:{settings.triton_metrics_port}/metrics
  logs              {run_dir}/worker.log, dashboard.log, replay.log
  {streams} streams at {rate:g} segments/s; every {round_s:.0f} s another stream shifts half-way through the round
  and comes back the next: watch its alerts.  Ctrl-C stops everything.
""", flush=True)
        deadline = time.monotonic() + seconds if seconds > 0 else None
        while deadline is None or time.monotonic() < deadline:
            time.sleep(10)
            for child in children:
                if not child.running():
                    raise UserError(f"the {child.name} stopped; see {child.log_path}")
            subprocess.run([*CLI, "trends", "--alerts", "3"], check=False)
            print(flush=True)
    except KeyboardInterrupt:
        print("stopping ...")
    finally:
        stopped = [child.name for child in children if child.stop()]
        stopped += stack.down(services=tuple(reversed(started)))
        print("stopped: " + ", ".join(stopped))
    return 0
