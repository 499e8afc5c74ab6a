"""Export a trained TeCaFN to a Triton model repository.

    model_repo/tecafn/config.pbtxt          written for the chosen backend
    model_repo/tecafn/<v>/model.onnx        the inference path (no gate, no contrastive heads)
    model_repo/tecafn/<v>/model.py          the Python-backend model (backend=python only)
    model_repo/tecafn/<v>/tecafn.json       what clients must match: inputs, widths, limits, tokenizer
    model_repo/tecafn/<v>/tokenizer/        the tokenizer the model was trained with

Every export makes a new version directory (1, 2, 3, ...); a served version is never touched.
The export fails, and leaves nothing behind, unless ONNX Runtime matches PyTorch to 1e-4 on a
batch of padded sequences of different lengths.
"""
from __future__ import annotations

import json
import logging
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from trainer.model import TeCaFN
from trainer.train import load_checkpoint, tokenizer_for

log = logging.getLogger(__name__)

MODEL_NAME = "tecafn"
PARITY_TOLERANCE = 1e-4
BACKENDS = ("python", "onnxruntime")
PYTHON_MODEL_SOURCE = Path(__file__).with_name("triton_python_model.py")


class TeCaFNInference(nn.Module):
    """The serving path: token ids, masks and padded frames in, one score per segment out."""

    def __init__(self, model: TeCaFN):
        super().__init__()
        self.model = model.eval()
        self.modalities = [m for m in model.config.modalities if m != "text"]

    def forward(self, input_ids, attention_mask, *frames_and_lengths):
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        for i, m in enumerate(self.modalities):
            batch[m], batch[f"{m}_lengths"] = frames_and_lengths[2 * i], frames_and_lengths[2 * i + 1]
        return self.model(batch).prediction


def input_names(model: TeCaFN) -> list[str]:
    names = ["input_ids", "attention_mask"]
    for m in model.config.modalities:
        if m != "text":
            names += [m, f"{m}_lengths"]
    return names


def example_batch(model: TeCaFN, batch: int, max_tokens: int, max_frames: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Padded inputs whose real lengths differ row by row (so parity covers masking)."""
    g = torch.Generator().manual_seed(seed)
    c = model.config
    vocab = model.text_encoder.config.vocab_size
    tokens = torch.randint(2, max_tokens + 1, (batch,), generator=g)
    tokens[0] = max_tokens
    mask = (torch.arange(max_tokens)[None, :] < tokens[:, None]).long()
    out = {"input_ids": torch.randint(1, vocab, (batch, max_tokens), generator=g) * mask, "attention_mask": mask}
    for m in c.modalities:
        if m == "text":
            continue
        width = getattr(c, f"d_{m}")
        lengths = torch.randint(1, max_frames + 1, (batch,), generator=g)
        lengths[0] = max_frames
        out[m] = torch.randn(batch, max_frames, width, generator=g)
        out[f"{m}_lengths"] = lengths
    return out


def export_onnx(model: TeCaFN, path: Path, max_tokens: int, max_frames: int) -> None:
    wrapper = TeCaFNInference(model)
    names = input_names(model)
    example = example_batch(model, 4, min(8, max_tokens), min(6, max_frames))
    dynamic = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"},
               "score": {0: "batch"}}
    for m in wrapper.modalities:
        dynamic[m] = {0: "batch", 1: f"{m}_frames"}
        dynamic[f"{m}_lengths"] = {0: "batch"}
    # Traced with grad enabled on purpose: under no_grad, PyTorch's transformer layers take a
    # fused fast path (aten::_transformer_encoder_layer_fwd) that ONNX cannot express.
    # The tracer's warnings (Python ints from shapes, LSTM batch size) are expected here; the
    # parity check on other batch sizes and lengths is what proves the graph right.
    with torch.enable_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, tuple(example[n] for n in names), str(path), input_names=names,
                          output_names=["score"], dynamic_axes=dynamic, opset_version=17, dynamo=False,
                          verbose=False)


def check_parity(model: TeCaFN, onnx_path: Path, max_tokens: int, max_frames: int) -> float:
    """Max |ONNX Runtime - PyTorch| over a batch of 16 padded segments of mixed lengths."""
    import onnxruntime as ort

    batch = example_batch(model, 16, max_tokens, max_frames, seed=1)
    with torch.no_grad():
        expected = TeCaFNInference(model)(*(batch[n] for n in input_names(model))).numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(["score"], {n: batch[n].numpy() for n in input_names(model)})[0]
    return float(np.max(np.abs(got - expected)))


def next_version(repo: Path) -> int:
    model_dir = repo / MODEL_NAME
    versions = [int(p.name) for p in model_dir.glob("*") if p.is_dir() and p.name.isdigit()]
    return max(versions, default=0) + 1


def metadata(model: TeCaFN, ckpt: dict, version: int) -> dict:
    c = model.config
    return {
        "model": MODEL_NAME, "version": version, "task": c.task,
        "inputs": input_names(model), "output": "score",
        "modalities": list(c.modalities),
        "widths": {m: getattr(c, f"d_{m}") for m in c.modalities if m != "text"},
        "max_text_tokens": ckpt["max_text_tokens"], "max_frames": ckpt["max_frames"] or 50,
        "label_range": [-c.label_range, c.label_range],
        "tokenizer": "tokenizer", "text_encoder": ckpt["text_encoder"], "trained_on": ckpt["dataset"],
    }


def export(checkpoint: Path, repo: Path, backend: str = "python", max_batch: int = 64,
           tensorrt: bool = False, queue_delay_us: int = 2000, instances: int = 1) -> Path:
    """Export `checkpoint` as the next version under repo/tecafn; return the version directory."""
    if backend not in BACKENDS:
        raise ValueError(f"--backend must be one of {BACKENDS}, not {backend!r}")
    if max_batch < 1:
        raise ValueError(f"--max-batch must be >= 1, got {max_batch}")
    if tensorrt and backend != "onnxruntime":
        raise ValueError("--tensorrt applies to the onnxruntime backend only")
    model, ckpt = load_checkpoint(checkpoint, "cpu")
    if model.config.task != "regression":
        raise ValueError("only regression (sentiment score) models are served; this checkpoint is binary")
    repo = Path(repo)
    version = next_version(repo)
    target = repo / MODEL_NAME / str(version)
    staging = repo / MODEL_NAME / f".staging-{version}"  # Triton ignores it until it is renamed
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        meta = metadata(model, ckpt, version)
        export_onnx(model, staging / "model.onnx", meta["max_text_tokens"], meta["max_frames"])
        diff = check_parity(model, staging / "model.onnx", meta["max_text_tokens"], meta["max_frames"])
        if not diff <= PARITY_TOLERANCE:
            raise RuntimeError(f"ONNX Runtime differs from PyTorch by {diff:.2e} (> {PARITY_TOLERANCE:.0e}) "
                               f"on padded inputs; not exporting")
        meta["parity_max_abs_diff"] = diff
        (staging / "tecafn.json").write_text(json.dumps(meta, indent=2))
        tokenizer_for(checkpoint).save_pretrained(staging / "tokenizer")
        if backend == "python":
            shutil.copy(PYTHON_MODEL_SOURCE, staging / "model.py")
        (repo / MODEL_NAME / "config.pbtxt").write_text(
            triton_config(meta, backend, max_batch, tensorrt, queue_delay_us, instances))
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("exported %s as %s version %d (%s backend, parity %.1e)", checkpoint, MODEL_NAME, version, backend, diff)
    return target


def triton_config(meta: dict, backend: str, max_batch: int, tensorrt: bool = False, queue_delay_us: int = 2000,
                  instances: int = 1) -> str:
    """config.pbtxt text. The Python backend takes ragged batches (it pads across requests
    itself); ONNX Runtime batches requests of equal shapes, so its clients pad to fixed sizes."""
    ragged = "allow_ragged_batch: true " if backend == "python" else ""
    scalar = "" if backend == "python" else " reshape: { shape: [ ] }"
    inputs = [f'  {{ name: "input_ids" data_type: TYPE_INT64 dims: [ -1 ] {ragged}}}',
              f'  {{ name: "attention_mask" data_type: TYPE_INT64 dims: [ -1 ] {ragged}}}']
    for m, width in meta["widths"].items():
        inputs.append(f'  {{ name: "{m}" data_type: TYPE_FP32 dims: [ -1, {width} ] {ragged}}}')
        inputs.append(f'  {{ name: "{m}_lengths" data_type: TYPE_INT64 dims: [ 1 ]{scalar} }}')
    # Small preferred sizes make the batcher dispatch half-full batches under load; ask for 16+.
    preferred = sorted({b for b in (16, 32, 64, 128, max_batch) if b <= max_batch})
    lines = [f'name: "{MODEL_NAME}"']
    if backend == "python":
        lines.append('backend: "python"')
    else:
        lines.append('platform: "onnxruntime_onnx"')
    lines += [f"max_batch_size: {max_batch}", "input [", ",\n".join(inputs), "]",
              f'output [\n  {{ name: "score" data_type: TYPE_FP32 dims: [ 1 ]{scalar} }}\n]',
              "dynamic_batching {",
              f"  preferred_batch_size: [ {', '.join(map(str, preferred))} ]",
              f"  max_queue_delay_microseconds: {queue_delay_us}", "}",
              f"instance_group [ {{ count: {instances} kind: {'KIND_CPU' if backend == 'python' else 'KIND_GPU'} }} ]",
              "version_policy: { latest: { num_versions: 1 } }"]
    if tensorrt:
        lines += ["optimization { execution_accelerators {",
                  '  gpu_execution_accelerator: [ { name: "tensorrt"',
                  '    parameters { key: "precision_mode" value: "FP16" }',
                  '    parameters { key: "max_workspace_size_bytes" value: "1073741824" } } ]', "} }"]
    for key in ("max_text_tokens", "max_frames"):
        lines.append(f'parameters {{ key: "{key}" value: {{ string_value: "{meta[key]}" }} }}')
    lines.append(f'parameters {{ key: "widths" value: {{ string_value: "{_widths(meta)}" }} }}')
    return "\n".join(lines) + "\n"


def _widths(meta: dict) -> str:
    return ",".join(f"{m}={w}" for m, w in meta["widths"].items())
