"""`tecaflow demo` (what `make demo` runs): the whole system on the embedded stack.

1. trains and exports a small model if the model repository has none,
2. brings the stack up (broker, Redis, Triton, Prometheus),
3. starts a worker and a replay of several streams with one sentiment shift,
4. prints the URLs and the trends as they come in, until Ctrl-C (or --seconds), then stops
   everything it started.
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


def run_demo(repo: Path, streams: int, segments: int, rate: float, seconds: float) -> int:
    settings = Settings.from_env()
    ports = StackPorts.from_env()
    ensure_model(repo, Path("runs"))
    stack = Stack(settings, ports, repo)
    started = [p for p in ("broker", "redis", "triton", "prometheus") if not stack.status()[p]["healthy"]]
    stack.up()
    run_dir = Path(settings.run_dir)
    worker_log = (run_dir / "worker.log").open("ab")
    worker = subprocess.Popen([*CLI, "worker"], stdout=worker_log, stderr=subprocess.STDOUT, start_new_session=True)
    shift_stream = min(2, streams - 1)
    replay = subprocess.Popen([*CLI, "replay", "--streams", str(streams), "--segments", str(segments), "--rate",
                               str(rate), "--shift", f"{shift_stream}@{segments // 2}:-3", "--prefix", "demo",
                               "--no-progress"])
    print(f"""
tecaflow demo is running
  Prometheus        http://127.0.0.1:{ports.prometheus}   (try: rate(tecaflow_segments_scored_total[1m]))
  worker metrics    http://127.0.0.1:{settings.metrics_port}/metrics
  Triton metrics    http://127.0.0.1:{ports.triton_metrics}/metrics
  worker log        {run_dir / 'worker.log'}
  stream demo-{shift_stream:03d} turns negative half-way: watch for its alert.  Ctrl-C stops everything.
""", flush=True)
    deadline = time.monotonic() + seconds if seconds > 0 else None
    try:
        while deadline is None or time.monotonic() < deadline:
            time.sleep(5)
            if worker.poll() is not None:
                raise RuntimeError(f"the worker stopped (exit {worker.returncode}); see {run_dir / 'worker.log'}")
            subprocess.run([*CLI, "trends"], check=False)
            print(flush=True)
    except KeyboardInterrupt:
        print("stopping ...")
    finally:
        for proc in (replay, worker):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM) if proc is worker else proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
        stopped = stack.down(services=tuple(reversed(started)))
        print("stopped: worker, replay" + (", " + ", ".join(stopped) if stopped else ""))
    return 0
