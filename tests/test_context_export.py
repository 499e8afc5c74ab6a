"""A model with context through the serving contract: the export carries the context inputs,
ONNX Runtime matches PyTorch on them, a segment's outputs do not depend on its batch, and the
worker's tokenizer builds the context the trainer built."""
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from stream import contract
from stream.contract import CONTEXT_INPUTS, ModelContract, Tokenizer
from trainer import export as export_module
from trainer.data import Batcher, load_dataset
from trainer.export import TeCaFNInference, example_batch, export
from trainer.train import TrainOptions, load_checkpoint, tokenizer_for, train

SMALL = dict(encoder_layers=1, cross_layers=1, d_model=16, n_heads=2)


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic", n=60, max_frames=12)


@pytest.fixture(scope="module")
def checkpoint(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt")
    train(data, TrainOptions(out=out, epochs=1, text_encoder="tiny", progress=False, max_frames=12, context=2,
                             context_tokens=24, model_overrides=SMALL))
    return out / "checkpoint.pt"


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory):
    return export(checkpoint, tmp_path_factory.mktemp("repo"), quantize="none")


def test_the_contract_carries_the_context_inputs_and_limits(exported):
    served = ModelContract.read_metadata(exported)
    assert (served.context, served.max_context_tokens) == (2, 24)
    assert served.inputs[:4] == ("input_ids", "attention_mask", "context_ids", "context_mask")
    from_config = ModelContract.read_config_pbtxt(exported.parent / contract.CONFIG_FILE)
    # what the worker reads from Triton is what the export wrote (beside the batch limit)
    assert replace(from_config, max_batch=0) == served
    import onnxruntime as ort
    graph = ort.InferenceSession(str(exported / contract.ONNX_FILE), providers=["CPUExecutionProvider"])
    assert [i.name for i in graph.get_inputs()] == list(served.inputs)


def test_a_model_without_context_keeps_its_contract_and_config(data, tmp_path):
    train(data, TrainOptions(out=tmp_path / "k0", epochs=1, text_encoder="tiny", progress=False, max_frames=12,
                             model_overrides=SMALL))
    version = export(tmp_path / "k0" / "checkpoint.pt", tmp_path / "repo", quantize="none")
    served = ModelContract.read_metadata(version)
    assert served.inputs == ("input_ids", "attention_mask", "audio", "audio_lengths", "visual", "visual_lengths",
                             "present")
    config = (tmp_path / "repo" / "tecafn" / contract.CONFIG_FILE).read_text()
    assert "context" not in config
    assert ModelContract.read_config_pbtxt(tmp_path / "repo" / "tecafn" / contract.CONFIG_FILE).context == 0


def test_onnx_runtime_matches_pytorch_with_context_of_mixed_lengths(checkpoint, exported):
    model, _ = load_checkpoint(checkpoint)
    served = ModelContract.read_metadata(exported)
    batch = example_batch(served, model.text_encoder.config.vocab_size, 12, seed=5)
    assert (batch["context_mask"].sum(1) == 0).any() and (batch["context_mask"].sum(1) > 0).any()
    with torch.no_grad():
        expected = TeCaFNInference(model, served.attribution)(*(torch.from_numpy(a) for a in batch.values()))
    got = export_module.ort_session(exported / contract.ONNX_FILE).run(list(served.outputs), batch)
    for g, e in zip(got, expected):
        assert np.max(np.abs(g - e.numpy())) < 1e-4
    # and the context is used: the graph scores the same segments otherwise without it
    blind = dict(batch, context_mask=np.zeros_like(batch["context_mask"]))
    without = export_module.ort_session(exported / contract.ONNX_FILE).run(["score"], blind)[0]
    has = batch["context_mask"].sum(1) > 0
    assert np.all(np.abs(without - got[0])[has] > 1e-5)


def test_a_segments_outputs_do_not_depend_on_its_batch_with_context(checkpoint, exported):
    model, _ = load_checkpoint(checkpoint)
    served = ModelContract.read_metadata(exported)
    feed = example_batch(served, model.text_encoder.config.vocab_size, 16, seed=9)
    assert export_module.batch_invariance(exported / contract.ONNX_FILE, served, feed) == 0.0


def test_context_from_the_exported_tokenizer_is_the_trainers(checkpoint, exported, data):
    _, ckpt = load_checkpoint(checkpoint)
    limit = 12  # under some contexts' length: both cut them from the oldest side alike
    batcher = Batcher(data.test, tokenizer_for(checkpoint), ckpt["max_text_tokens"], ckpt["max_frames"], context=2,
                      max_context_tokens=limit)
    served = ModelContract.read_metadata(exported)
    tokenizer = Tokenizer(exported / contract.TOKENIZER_DIR, served.max_text_tokens)
    rows = torch.arange(len(data.test))
    expected = batcher.batch(rows)
    ids, mask = tokenizer.context([h[-2:] for h in data.test.history], limit)
    width = expected["context_ids"].shape[1]
    assert np.array_equal(ids[:, :width] * mask[:, :width], expected["context_ids"].numpy())
    assert np.array_equal(mask.sum(1), expected["context_mask"].sum(1).numpy())
    assert (mask.sum(1) == limit).any() and (mask.sum(1) == 0).any()


def test_the_int8_export_calibrates_on_context_too(checkpoint, tmp_path):
    version = export(checkpoint, tmp_path, quantize="int8")
    meta = json.loads((version / contract.METADATA_FILE).read_text())
    assert meta["context"] == 2 and meta["quantized"] == "int8"
    sample = np.load(checkpoint.parent / "calibration.npz")
    assert set(CONTEXT_INPUTS) <= set(sample.files)
