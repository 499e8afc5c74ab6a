"""Export to a Triton repository and serve it from the real embedded tritonserver."""
import asyncio
import re
import time
import urllib.request

import numpy as np
import pytest
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from stream.config import Settings
from stream.triton_client import AsyncTritonScorer, TritonScorer
from stream.stack.tritonserver import EmbeddedTriton, TritonError
from stream.startup import tokenizer_location
from tests.conftest import free_ports
from trainer import export as export_module
from trainer import model as model_module
from trainer.data import load_dataset
from trainer.export import TeCaFNInference, export, input_names
from trainer.train import TrainOptions, load_checkpoint, train


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt")
    ds = load_dataset("synthetic", n=60, max_frames=12)
    train(ds, TrainOptions(out=out, epochs=1, text_encoder="tiny", progress=False, max_frames=12,
                           model_overrides=dict(encoder_layers=1, cross_layers=1, d_model=16, n_heads=2)))
    return out / "checkpoint.pt"


@pytest.fixture(scope="module")
def served(checkpoint, tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo")
    export(checkpoint, repo, max_batch=16)
    server = EmbeddedTriton(repo, tmp_path_factory.mktemp("triton"), *free_ports(3), poll_seconds=1)
    server.start(timeout=120)
    yield server, repo
    server.stop()


def mixed_batch(b=5, seed=0, absent=0.0):
    """Padded inputs with different real lengths per row; with `absent`, that share of the rows
    lacks each side (zero frames, flagged absent)."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(2, 10, b)
    mask = (np.arange(10)[None, :] < tokens[:, None]).astype(np.int64)
    out = {"input_ids": rng.integers(1, 1000, (b, 10)).astype(np.int64) * mask, "attention_mask": mask}
    present = []
    for m, d in (("audio", 5), ("visual", 20)):
        lengths = rng.integers(1, 12, b) * (rng.random(b) >= absent)
        out[m] = rng.normal(size=(b, 11, d)).astype(np.float32)
        out[f"{m}_lengths"] = lengths.reshape(-1, 1).astype(np.int64)
        present.append(lengths > 0)
    out["present"] = np.stack(present, axis=1)
    return out


def torch_outputs(checkpoint, inputs) -> tuple[np.ndarray, ...]:
    """(score, text_only, contribution) from PyTorch, for the same inputs."""
    model, _ = load_checkpoint(checkpoint)
    with torch.no_grad():
        args = [torch.from_numpy(inputs[n].reshape(-1) if n.endswith("_lengths") else inputs[n])
                for n in input_names(model)]
        return tuple(t.numpy() for t in TeCaFNInference(model, attribution=True)(*args))


def torch_scores(checkpoint, inputs):
    return torch_outputs(checkpoint, inputs)[0]


def test_configs_parse_as_triton_model_config(checkpoint, tmp_path):
    for backend, extra in (("python", {}), ("onnxruntime", {"tensorrt": True})):
        repo = tmp_path / backend
        export(checkpoint, repo, backend=backend, max_batch=32, **extra)
        config = text_format.Parse((repo / "tecafn" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
        assert config.max_batch_size == 32
        assert [i.name for i in config.input] == ["input_ids", "attention_mask", "audio", "audio_lengths",
                                                  "visual", "visual_lengths", "present"]
        assert [o.name for o in config.output] == ["score", "text_only", "contribution"]
        assert list(config.input[2].dims) == [-1, 5]
        assert config.dynamic_batching.max_queue_delay_microseconds == 2000
        assert list(config.dynamic_batching.preferred_batch_size) == [16, 32]
        if backend == "onnxruntime":
            assert config.platform == "onnxruntime_onnx"
            assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
            assert config.optimization.execution_accelerators.gpu_execution_accelerator[0].name == "tensorrt"
            assert not (repo / "tecafn" / "1" / "model.py").exists()
        else:
            assert config.backend == "python"
            assert (repo / "tecafn" / "1" / "model.py").exists()


def test_versions_are_numbered_and_never_overwritten(checkpoint, tmp_path):
    first = export(checkpoint, tmp_path)
    stamp = (first / "model.onnx").stat().st_mtime_ns
    second = export(checkpoint, tmp_path)
    assert (first.name, second.name) == ("1", "2")
    assert (first / "model.onnx").stat().st_mtime_ns == stamp


def test_failed_parity_fails_the_export_and_leaves_nothing(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr(export_module, "check_parity", lambda *a: 3e-3)
    with pytest.raises(RuntimeError, match="differs from PyTorch by 3.00e-03"):
        export(checkpoint, tmp_path)
    assert not any((tmp_path / "tecafn").glob("[0-9]*")) and not any((tmp_path / "tecafn").glob(".staging*"))


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(TritonError, match="no model 'tecafn'"):
        EmbeddedTriton(tmp_path, tmp_path / "run", *free_ports(3)).start(timeout=5)


def test_a_model_config_triton_cannot_read_is_reported_before_it_starts(tmp_path):
    (tmp_path / "tecafn" / "1").mkdir(parents=True)
    (tmp_path / "tecafn" / "config.pbtxt").write_text("this is { not a proto")
    with pytest.raises(TritonError, match='config.pbtxt is not a Triton model config: .*no field named "this"'):
        EmbeddedTriton(tmp_path, tmp_path / "run", *free_ports(3)).start(timeout=5)


@pytest.mark.integration
def test_a_model_directory_triton_refuses_to_poll_is_reported_with_its_reason(tmp_path):
    """Triton only logs a directory it cannot poll and keeps running: `stack up` used to wait its
    whole timeout and then quote Triton's shutdown line."""
    (tmp_path / "tecafn" / "1").mkdir(parents=True)
    (tmp_path / "tecafn" / "config.pbtxt").write_text('name: "other"\nbackend: "python"\nmax_batch_size: 8\n')
    started = time.monotonic()
    with pytest.raises(TritonError, match="directory name must equal model name"):
        EmbeddedTriton(tmp_path, tmp_path / "run", *free_ports(3)).start(timeout=120)
    assert time.monotonic() - started < 60


@pytest.mark.integration
def test_a_model_that_fails_to_load_is_reported_with_tritons_reason(checkpoint, tmp_path):
    version = export(checkpoint, tmp_path / "repo")
    (version / "model.onnx").write_bytes(b"this is not an onnx graph")
    server = EmbeddedTriton(tmp_path / "repo", tmp_path / "run", *free_ports(3))
    started = time.monotonic()
    with pytest.raises(TritonError, match="failed to load") as caught:
        server.start(timeout=120)
    assert time.monotonic() - started < 60  # reported as soon as Triton gives up, not at the timeout
    assert "model.py" in str(caught.value) or "onnx" in str(caught.value).lower()
    assert server.process.poll() is not None  # and nothing is left running


@pytest.mark.integration
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_served_scores_match_pytorch(served, checkpoint, protocol):
    server, _ = served
    inputs = mixed_batch()
    url = server.grpc_url if protocol == "grpc" else server.http_url
    scorer = TritonScorer(url, protocol)
    got = scorer.score(inputs)
    np.testing.assert_allclose(got, torch_scores(checkpoint, inputs), atol=1e-4)
    contract = scorer.contract()
    assert contract.widths == {"audio": 5, "visual": 20} and contract.max_frames == 12
    scorer.close()


@pytest.mark.integration
def test_partial_segments_and_their_attribution_are_served_in_the_same_call(served, checkpoint):
    server, _ = served
    scorer = TritonScorer(server.grpc_url)
    inputs = mixed_batch(b=8, seed=5, absent=0.4)
    assert not inputs["present"].all()  # the case under test: some rows lack a side
    got = scorer.infer(inputs, ("score", "text_only", "contribution"))
    for name, expected in zip(("score", "text_only", "contribution"), torch_outputs(checkpoint, inputs)):
        np.testing.assert_allclose(got[name].reshape(expected.shape), expected, atol=1e-4)
    # an absent side moves nothing
    assert np.all(got["contribution"][~inputs["present"]] == 0)
    # a partial segment scores the same alone as beside longer, complete ones
    alone = {k: v[3:4] for k, v in inputs.items()}
    np.testing.assert_allclose(scorer.score(alone), got["score"].reshape(-1)[3:4], atol=1e-5)
    scorer.close()


@pytest.mark.integration
@pytest.mark.parametrize("breakage, message", [
    (lambda x: x.update(audio=np.zeros((5, 11, 6), np.float32)), "audio"),  # wrong width
    (lambda x: x.update(audio=x["audio"].astype(np.float64)), "FP64"),  # wrong dtype
    (lambda x: x.update(visual=np.zeros((5, 40, 20), np.float32), visual_lengths=np.full((5, 1), 40)),
     "40 frames > max_frames 12"),
    (lambda x: x.update(audio_lengths=np.full((5, 1), 99)), "audio_lengths must be in"),
    (lambda x: x.update(visual=np.full((5, 11, 20), np.nan, np.float32)), "NaN or Inf"),
    (lambda x: x.pop("visual_lengths"), "visual_lengths"),
])
def test_malformed_request_gets_an_error_and_the_model_stays_up(served, breakage, message, checkpoint):
    server, _ = served
    scorer = TritonScorer(server.grpc_url)
    bad = mixed_batch()
    breakage(bad)
    with pytest.raises(Exception, match=message):
        scorer.score(bad)
    good = mixed_batch(seed=3)
    np.testing.assert_allclose(scorer.score(good), torch_scores(checkpoint, good), atol=1e-4)
    scorer.close()


@pytest.mark.integration
def test_concurrent_requests_of_different_lengths_are_batched_correctly(served, checkpoint):
    from concurrent.futures import ThreadPoolExecutor
    server, _ = served
    batches = [mixed_batch(b=1 + i % 3, seed=i) for i in range(24)]

    def call(inputs):
        scorer = TritonScorer(server.grpc_url)
        try:
            return scorer.score(inputs)
        finally:
            scorer.close()

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, batches))
    for inputs, got in zip(batches, results):
        np.testing.assert_allclose(got, torch_scores(checkpoint, inputs), atol=1e-4)


def inference_count(server) -> float:
    text = urllib.request.urlopen(server.metrics_url, timeout=5).read().decode()
    found = re.findall(r'^nv_inference_count\{model="tecafn",version="(\d+)"\} (\S+)', text, re.M)
    return sum(float(v) for _, v in found)


@pytest.mark.integration
def test_triton_metrics_count_inferences(served):
    server, _ = served
    before = inference_count(server)
    scorer = TritonScorer(server.grpc_url)
    scorer.score(mixed_batch(b=3))
    scorer.close()
    assert inference_count(server) == before + 3


@pytest.mark.integration
def served_version(url: str) -> str | None:
    async def ask():
        scorer = AsyncTritonScorer(url)
        try:
            return await scorer.served_version()
        finally:
            await scorer.close()
    return asyncio.run(ask())


def test_a_second_export_is_served_without_a_restart(served, checkpoint):
    """...and a worker started meanwhile takes the tokenizer of the version Triton serves, not of
    the newest on disk (which may not be loaded yet, or may have failed to load)."""
    server, repo = served
    pid = server.process.pid
    assert served_version(server.grpc_url) == "1"
    export(checkpoint, repo, max_batch=16)
    settings = Settings(model_repo=str(repo))
    assert tokenizer_location(settings, "1") == repo / "tecafn" / "1" / "tokenizer"
    assert tokenizer_location(settings) == repo / "tecafn" / "2" / "tokenizer"  # before Triton is asked
    scorer = TritonScorer(server.grpc_url)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not scorer.client.is_model_ready("tecafn", "2"):
        time.sleep(0.5)
    assert scorer.client.is_model_ready("tecafn", "2")
    assert served_version(server.grpc_url) == "2"
    assert scorer.score(mixed_batch(), version="2").shape == (5,)
    assert server.process.pid == pid and server.process.poll() is None
    scorer.close()


def test_feature_standardisation_travels_inside_the_exported_graph(checkpoint, tmp_path):
    import onnx
    from onnx import numpy_helper
    version = export(checkpoint, tmp_path)
    model, _ = load_checkpoint(checkpoint)
    constants = [numpy_helper.to_array(t) for t in onnx.load(str(version / "model.onnx")).graph.initializer]
    for m in ("audio", "visual"):
        for stat in ("mean", "std"):
            value = getattr(model, f"{m}_{stat}").numpy()
            assert not np.allclose(value, 0.0 if stat == "mean" else 1.0)  # the training split's, not the identity
            assert any(c.shape == value.shape and np.allclose(c, value) for c in constants), f"{m}_{stat}"


def test_every_attention_is_exported_as_onnx_runtimes_fused_kernel(checkpoint, tmp_path):
    """Self-attention in the audio and vision encoders and CoAt's cross attention each become one
    com.microsoft MultiHeadAttention node; the export's parity check has already compared them
    with PyTorch. (The text encoder's BERT attention is ONNX Runtime's to fuse at load time.)"""
    import onnx
    version = export(checkpoint, tmp_path, quantize="none")
    nodes = onnx.load(str(version / "model.onnx")).graph.node
    fused = [n for n in nodes if n.op_type == "MultiHeadAttention"]
    model, _ = load_checkpoint(checkpoint)
    expected = sum(isinstance(m, model_module.MultiHeadAttention) for m in model.modules())
    assert expected > 0 and len(fused) == expected
    assert all(n.domain == "com.microsoft" for n in fused)
    assert not any(n.op_type == "Softmax" and not n.name.startswith("/text_encoder") for n in nodes)


@pytest.mark.integration
def test_a_running_worker_follows_an_export_that_changes_the_contract(checkpoint, tmp_path, redis_url):
    """Re-exporting without attribution while a worker runs changes the outputs the model has. The
    worker used to keep asking for the old ones, and Triton refused every batch forever."""
    from stream.pipeline import Pipeline
    from stream.startup import build_pipeline
    from tests.malformed import valid_bytes
    repo = tmp_path / "repo"
    export(checkpoint, repo, max_batch=16)
    server = EmbeddedTriton(repo, tmp_path / "triton", *free_ports(3), poll_seconds=1)
    server.start(timeout=120)
    try:
        settings = Settings(model_repo=str(repo), triton_url=server.grpc_url, redis_url=redis_url, batch_size=8)

        async def run() -> tuple[Pipeline, list, list]:
            pipeline = await build_pipeline(settings)
            first = await pipeline.process([valid_bytes(stream="w", segment=f"w/{i}") for i in range(4)])
            export(checkpoint, repo, max_batch=16, attribution=False)
            while await pipeline.scorer.served_version() != "2":
                await asyncio.sleep(0.5)
            second = await asyncio.wait_for(
                pipeline.process([valid_bytes(stream="w", segment=f"w/{i}") for i in range(4, 8)]), 60)
            await pipeline.scorer.close()
            return pipeline, first, second
        pipeline, first, second = asyncio.run(run())
        assert len(first.scores) == 4 and len(second.scores) == 4 and not second.rejects
        assert pipeline.served.version == "2" and not pipeline.contract.attribution
        recent = pipeline.store.recent("w", 8)
        assert sum(1 for r in recent if r.get("text_only") is not None) == 4  # attributed by version 1 only
    finally:
        server.stop()
