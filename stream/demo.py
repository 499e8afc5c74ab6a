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
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from stream.config import Settings
from stream.stack import Stack, StackPorts

log = logging.getLogger(__name__)
CLI = [sys.executable, "-m", "stream.cli"]


def ensure_model(repo: Path, runs: Path) -> None:
    if any((repo / "tecafn").glob("[0-9]*/model.onnx")):
        log.info("serving the newest model already in %s", repo)
        return
    log.info("no model in %s: training a small one on synthetic data (about a minute)", repo)
    out = runs / "demo-model"
    subprocess.run([*CLI, "train", "--data", "synthetic", "--text-encoder", "tiny", "--epochs", "10",
                    "--max-frames", "20", "--synthetic-size", "600", "--out", str(out), "--set", "encoder_layers=1",
                    "--set", "cross_layers=1", "--set", "d_model=32", "--set", "n_heads=4"], check=True)
    subprocess.run([*CLI, "export", "--checkpoint", str(out / "checkpoint.pt"), "--repo", str(repo)], check=True)


def run_demo(repo: Path, streams: int, segments: int, rate: float, seconds: float, dashboard_port: int = 8501) -> int:
    settings = Settings.from_env()
    ports = StackPorts.from_env()
    print(f"tecaflow demo: the dashboard will be at http://127.0.0.1:{dashboard_port} once the stack is up", flush=True)
    ensure_model(repo, Path("runs"))
    stack = Stack(settings, ports, repo)
    started = [p for p in ("broker", "redis", "triton", "prometheus") if not stack.status()[p]["healthy"]]
    stack.up()
    run_dir = Path(settings.run_dir)
    children = {
        "worker": background([*CLI, "worker"], run_dir / "worker.log"),
        "dashboard": background([*CLI, "dashboard", "--port", str(dashboard_port)], run_dir / "dashboard.log"),
        "replay": background([*CLI, "replay", "--loop", "--streams", str(streams), "--segments", str(segments),
                              "--rate", str(rate), "--prefix", "demo", "--no-progress"], run_dir / "replay.log"),
    }
    round_s = segments * streams / rate
    print(f"""
tecaflow demo is running
  dashboard         http://127.0.0.1:{dashboard_port}   <- open this
  Prometheus        http://127.0.0.1:{ports.prometheus}   (try: rate(tecaflow_segments_scored_total[1m]))
  worker metrics    http://127.0.0.1:{settings.metrics_port}/metrics
  Triton metrics    http://127.0.0.1:{ports.triton_metrics}/metrics
  logs              {run_dir}/worker.log, dashboard.log, replay.log
  {streams} streams at {rate:g} segments/s; every {round_s:.0f} s another stream shifts half-way through the round
  and comes back the next: watch its alerts.  Ctrl-C stops everything.
""", flush=True)
    deadline = time.monotonic() + seconds if seconds > 0 else None
    try:
        while deadline is None or time.monotonic() < deadline:
            time.sleep(10)
            for name, proc in children.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"the {name} stopped (exit {proc.returncode}); see {run_dir / (name + '.log')}")
            subprocess.run([*CLI, "trends", "--alerts", "3"], check=False)
            print(flush=True)
    except KeyboardInterrupt:
        print("stopping ...")
    finally:
        for proc in children.values():
            stop_child(proc)
        stopped = stack.down(services=tuple(reversed(started)))
        print("stopped: " + ", ".join([*children, *stopped]))
    return 0


def background(command: list[str], log_path: Path) -> subprocess.Popen:
    """A child in its own process group (Ctrl-C reaches only us; we stop it), logging to a file."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop_child(proc: subprocess.Popen, timeout: float = 20) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
