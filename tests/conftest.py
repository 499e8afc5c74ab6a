"""Shared fixtures: a tiny randomly initialised BERT and small batches, for speed."""
from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertModel

from stream.schema import Alert
from stream.stack.service import free_ports  # noqa: F401 - tests import it from here
from trainer.model import TeCaFN, TeCaFNConfig

# Fixtures that start a real server (Redis, a Redis Cluster, Triton, the live system) or need a
# server's tool installed (promtool): a test that uses one is an integration test whatever its own
# markers say, so that `make test-fast` (-m "not slow and not integration") starts no server.
SERVER_FIXTURES = {"redis_url", "redis_cluster_url", "live", "served", "guarded_redis", "promtool"}
# Fixtures that train a model for longer than a few seconds: a test that uses one is slow.
TRAINING_FIXTURES = {"full_run"}


def pytest_collection_modifyitems(items):
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        if SERVER_FIXTURES & used:
            item.add_marker(pytest.mark.integration)
        if TRAINING_FIXTURES & used:
            item.add_marker(pytest.mark.slow)


SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def an_alert(stream: str, direction: str = "up", magnitude: float = 1.0, event_time: float = 1764000000.0,
             **fields) -> Alert:
    """A whole alert, as the detector raises one, for tests that look at a few of its fields."""
    alert = Alert(stream, event_time, direction, magnitude, (magnitude - 0.3, magnitude + 0.3),
                  5.0 if magnitude >= 0 else -5.0, change_point={"event_time": event_time - 60, "segments_since": 20},
                  evidence={"statistic": 9.0, "threshold": 8.0}, reference={"mean": 0.0, "sd": 0.7, "n": 100},
                  recent={"mean": magnitude, "n": 20})
    return replace(alert, **fields)
MOSI_DIR = SHARED / "data" / "cmu-mosi"


def tiny_bert(hidden: int = 32) -> BertModel:
    torch.manual_seed(0)
    return BertModel(BertConfig(vocab_size=200, hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=64, max_position_embeddings=64), add_pooling_layer=False)


def small_config(**kw) -> TeCaFNConfig:
    base = dict(d_text=32, d_audio=5, d_visual=7, d_model=16, n_heads=2, encoder_layers=1, cross_layers=1,
                fusion_hidden=16, dropout=0.0)
    base.update(kw)
    return TeCaFNConfig(**base)


def small_model(**kw) -> TeCaFN:
    torch.manual_seed(0)
    return TeCaFN(small_config(**kw), tiny_bert())


def random_batch(b: int = 6, t_text: int = 9, t_a: int = 11, t_v: int = 8, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    text_len = torch.randint(3, t_text + 1, (b,), generator=g)
    mask = (torch.arange(t_text)[None, :] < text_len[:, None]).long()
    return {
        "input_ids": torch.randint(1, 200, (b, t_text), generator=g) * mask,
        "attention_mask": mask,
        "audio": torch.randn(b, t_a, 5, generator=g),
        "audio_lengths": torch.randint(1, t_a + 1, (b,), generator=g),
        "visual": torch.randn(b, t_v, 7, generator=g),
        "visual_lengths": torch.randint(1, t_v + 1, (b,), generator=g),
        "labels": torch.rand(b, generator=g) * 6 - 3,
    }


@pytest.fixture
def model():
    return small_model()


@pytest.fixture
def batch():
    return random_batch()




@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A real redis-server on a free loopback port, for the whole session."""
    from stream.stack.embedded import redis_service
    port = free_ports(1)[0]
    server = redis_service(tmp_path_factory.mktemp("redis"), port, durable=False).start()
    yield f"redis://127.0.0.1:{port}/0"
    server.stop()


# ---- the live system (tests/test_live*.py) ----------------------------------------------------
CLI = [sys.executable, "-m", "stream.cli"]


class Live:
    def __init__(self, root: Path, env: dict):
        self.root, self.env = root, env
        self.workers: list[tuple[subprocess.Popen, int, Path]] = []  # (process, metrics port, log)
        self.services = []
        from stream.store import TrendStore
        self.store = TrendStore(env["TECAFLOW_REDIS_URL"])

    def cli(self, *args, timeout=300) -> subprocess.CompletedProcess:
        result = subprocess.run([*CLI, *args], env=self.env, capture_output=True, text=True, timeout=timeout,
                                cwd=self.root)
        assert result.returncode == 0, f"tecaflow {' '.join(args)} failed:\n{result.stderr[-3000:]}"
        return result

    def start_worker(self, metrics_port: int, **extra_env) -> subprocess.Popen:
        """A worker process, ready once Faust says so (it has joined its consumer group)."""
        from stream.stack.embedded import worker_service
        worker = worker_service(self.root, f"worker-{metrics_port}-{len(self.workers)}", cwd=self.root,
                                env=dict(self.env, TECAFLOW_METRICS_PORT=str(metrics_port), **extra_env))
        self.services.append(worker)
        try:
            worker.start()
        finally:
            self.workers.append((worker.process, metrics_port, worker.log_path))
        return worker.process

    def metric(self, port: int, name: str, labels: str = "") -> float:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        pattern = rf"^{re.escape(name)}{re.escape('{' + labels + '}') if labels else ''} (\S+)$"
        found = re.findall(pattern, text, re.M)
        return float(found[0]) if found else 0.0

    def counts(self, prefix: str) -> dict[str, int]:
        return {s: self.store.totals(s)["count"] for s, _ in self.store.streams() if s.startswith(prefix + "-")}

    def wait_for_total(self, prefix: str, expected: int, timeout: float = 180) -> dict[str, int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            counts = self.counts(prefix)
            if sum(counts.values()) >= expected:
                return counts
            time.sleep(0.5)
        raise AssertionError(f"{prefix}: {sum(self.counts(prefix).values())} of {expected} segments recorded; "
                             f"worker log tail:\n{self.workers[-1][2].read_text()[-2000:]}")

    def produce(self, messages: list[tuple[bytes | None, bytes]]) -> None:
        async def send():
            from aiokafka import AIOKafkaProducer
            producer = AIOKafkaProducer(bootstrap_servers=self.env["TECAFLOW_BROKER_URL"].removeprefix("kafka://"))
            await producer.start()
            try:
                for key, value in messages:
                    await producer.send("segments", value=value, key=key)
                await producer.flush()
            finally:
                await producer.stop()
        asyncio.run(send())


def launch(root: Path, context: int = 0, **extra_env) -> Live:
    """Train and export a small model (reading `context` previous transcripts), bring the embedded
    stack up on free ports (the settings in `extra_env` win), and start one worker."""
    from trainer.data import load_dataset
    from trainer.export import export
    from trainer.train import TrainOptions, train
    ds = load_dataset("synthetic", seed=0, n=600, cue_strength=1.5, max_frames=20)
    train(ds, TrainOptions(out=root / "ckpt", epochs=6, text_encoder="tiny", max_frames=20, progress=False,
                           patience=100, context=context,
                           model_overrides=dict(encoder_layers=1, cross_layers=1, d_model=32, n_heads=4)))
    export(root / "ckpt" / "checkpoint.pt", root / "repo", max_batch=64)
    broker, redis_port, http, grpc, metrics, prom, m1, m2 = free_ports(8)
    env = dict(os.environ,
               TECAFLOW_RUN_DIR=str(root / "run"), TECAFLOW_MODEL_REPO=str(root / "repo"),
               TECAFLOW_TRITON_HTTP_PORT=str(http),
               TECAFLOW_TRITON_METRICS_PORT=str(metrics), TECAFLOW_PROMETHEUS_PORT=str(prom),
               TECAFLOW_PROMETHEUS_TARGETS=f"127.0.0.1:{m1},127.0.0.1:{m2}",
               TECAFLOW_BROKER_URL=f"kafka://127.0.0.1:{broker}", TECAFLOW_REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
               TECAFLOW_TRITON_URL=f"127.0.0.1:{grpc}", TECAFLOW_SESSION_TIMEOUT_S="6",
               TECAFLOW_ALERT_WARMUP="20", TECAFLOW_BATCH_WAIT_S="0.1",
               OMP_NUM_THREADS="1")
    env.update({k: v.format(redis_port=redis_port) for k, v in extra_env.items()})
    system = Live(root, env)
    system.cli("stack", "up")
    system.ports = {"metrics": (m1, m2), "prometheus": prom, "grpc": grpc}
    system.start_worker(m1)
    return system


def shut_down(system: Live) -> None:
    for worker in system.services:
        worker.stop()
    subprocess.run([*CLI, "stack", "down"], env=system.env, cwd=system.root, timeout=60)


@pytest.fixture(scope="session")
def live(tmp_path_factory):
    """The whole system with one worker, shared by tests/test_live.py and test_live_browser.py."""
    system = launch(tmp_path_factory.mktemp("live"))
    yield system
    shut_down(system)


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory):
    """A real Redis Cluster for the whole session: three `redis-server --cluster-enabled yes`
    masters on loopback, joined by `redis-cli --cluster create` (no replicas)."""
    import shutil
    import subprocess
    import time

    from redis.cluster import RedisCluster
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.fail("redis-server/redis-cli are not installed: run `make setup` (it installs the Debian package)")
    from stream.stack.service import Service, port_open
    ports = cluster_ports(3)
    nodes = []
    for port in ports:
        data = tmp_path_factory.mktemp(f"cluster-{port}")
        nodes.append(Service(f"redis-{port}", [
            "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data), "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf", "--save", "", "--appendonly", "yes", "--appendfsync", "always"],
            data, health=lambda port=port: port_open(port)).start(wait=False))
    try:
        for node in nodes:
            node.wait_healthy(10)
        subprocess.run(["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports],
                        "--cluster-replicas", "0", "--cluster-yes"], check=True, capture_output=True, timeout=60)
        deadline = time.monotonic() + 30
        while "cluster_state:ok" not in subprocess.run(["redis-cli", "-p", str(ports[0]), "cluster", "info"],
                                                       capture_output=True, text=True).stdout:
            assert time.monotonic() < deadline, "the Redis Cluster did not reach cluster_state:ok"
            time.sleep(0.2)
        url = f"redis+cluster://127.0.0.1:{ports[0]}"
        RedisCluster.from_url(f"redis://127.0.0.1:{ports[0]}").ping()
        yield url
    finally:
        for node in nodes:
            node.stop()


def cluster_ports(n: int) -> list[int]:
    """Free ports whose cluster bus port (port + 10000) is a free port too."""
    import random
    import socket
    chosen = []
    while len(chosen) < n:
        port = random.randint(20000, 55000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        if port not in chosen:
            chosen.append(port)
    return chosen
