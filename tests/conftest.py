"""Shared fixtures: a tiny randomly initialised BERT and small batches, for speed."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertModel

from trainer.model import TeCaFN, TeCaFNConfig

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
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


def free_ports(n: int) -> list[int]:
    import socket
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A real redis-server on a free loopback port, for the whole session."""
    import shutil
    import subprocess
    import time

    import redis
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed: run `make setup` (it installs the Debian package)")
    port = free_ports(1)[0]
    data = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data),
                             "--save", "", "--appendonly", "yes"], stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    yield url
    proc.terminate()
    proc.wait(10)


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
    ports = cluster_ports(3)
    procs = []
    for port in ports:
        data = tmp_path_factory.mktemp(f"cluster-{port}")
        procs.append(subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data), "--cluster-enabled", "yes",
             "--cluster-config-file", "nodes.conf", "--save", "", "--appendonly", "yes", "--appendfsync", "always"],
            stdout=subprocess.DEVNULL))
    try:
        for port in ports:
            _wait_for_port(port)
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
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)


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


def _wait_for_port(port: int, timeout: float = 10) -> None:
    import socket
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}")
