"""Export a trained TeCaFN to a Triton model repository.

    model_repo/tecafn/config.pbtxt          written for the chosen backend
    model_repo/tecafn/<v>/model.onnx        the inference path (no gate, no contrastive heads)
    model_repo/tecafn/<v>/model.py          the Python-backend model (backend=python only), with
                          tecaflow_contract.py  the contract module it imports
    model_repo/tecafn/<v>/tecafn.json       what clients must match: inputs, widths, limits, tokenizer
    model_repo/tecafn/<v>/tokenizer/        the tokenizer the model was trained with

Names, files, the config and the padding are the serving contract's (stream/contract.py).

Every export makes a new version directory (1, 2, 3, ...); a served version is never touched.
The export fails, and leaves nothing behind, unless ONNX Runtime matches PyTorch to 1e-4 on a
batch of padded sequences of different lengths, and the served graph gives every segment the same
outputs (to 1e-5) alone, in any batch and with any padding; with --quantize int8, unless the int8
graph also stays within INT8_RMS_TOLERANCE / INT8_MAX_TOLERANCE of the fp32 graph on held-out
training segments.
"""
from __future__ import annotations

import logging
import re
import shutil
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from stream import contract
from stream.contract import (
    CONTEXT_INPUTS,
    DEFAULT_INSTANCES,
    MODEL_NAME,
    PRESENT,
    SCORE,
    TEXT_INPUTS,
    ModelContract,
    lengths_name,
)
from stream.errors import UserError
from stream.shadow.roles import write_config
from trainer import calibration
from trainer.data import batcher_options
from trainer.defaults import DEFAULT_MAX_CONTEXT_TOKENS
from trainer.model import TeCaFN
from trainer.train import load_checkpoint, tokenizer_for

log = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-4
SERVING_SOURCES = {contract.PYTHON_MODEL_FILE: Path(contract.__file__).with_name("triton_model.py"),
                   contract.CONTRACT_FILE: Path(contract.__file__)}


class TeCaFNInference(nn.Module):
    """The serving path: the contract's inputs in order (token ids, mask, with context the
    context's ids and mask, each modality's padded frames and lengths, then which sides each
    segment has), the score out, and with attribution
    the text-only score and each side's contribution, computed in the same pass."""

    def __init__(self, model: TeCaFN, attribution: bool):
        super().__init__()
        self.model = model.eval()
        self.modalities = [m for m in model.config.modalities if m != "text"]
        self.attribution = attribution

    def forward(self, input_ids, attention_mask, *rest):
        batch = dict(zip(TEXT_INPUTS, (input_ids, attention_mask)))
        if self.model.config.context:
            batch |= dict(zip(CONTEXT_INPUTS, rest[:2]))
            rest = rest[2:]
        for i, m in enumerate(self.modalities):
            batch[m], batch[lengths_name(m)] = rest[2 * i], rest[2 * i + 1]
        batch[PRESENT] = rest[-1]
        if not self.attribution:
            return self.model(batch).prediction
        # Not score_with_attribution: its no_grad would send the transformer layers down their
        # fused fast path, which ONNX cannot express (see export_onnx).
        feats, masks = self.model.encode(batch)
        a = self.model.attribution_from_features(feats, masks, self.model.presence(batch))
        return a.score, a.text_only, a.contribution


def model_contract(model: TeCaFN, max_text_tokens: int, max_frames: int, attribution: bool = False,
                   max_context_tokens: int = DEFAULT_MAX_CONTEXT_TOKENS) -> ModelContract:
    c = model.config
    return ModelContract(widths={m: getattr(c, f"d_{m}") for m in c.modalities if m != "text"},
                         max_text_tokens=max_text_tokens, max_frames=max_frames, presence=True,
                         attribution=attribution, context=c.context,
                         max_context_tokens=max_context_tokens if c.context else 0)


def input_names(model: TeCaFN) -> list[str]:
    return list(model_contract(model, 0, 0).inputs)


def example_batch(served: ModelContract, vocab: int, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Segments whose real lengths differ row by row (the first at the limits, and from the
    second on some without one side or without any, and with context some without any), padded
    by the contract exactly as clients pad them, so that parity covers masking, padding, missing
    modalities and context."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(2, served.max_text_tokens + 1, batch)
    tokens[0] = served.max_text_tokens
    mask = (np.arange(served.max_text_tokens)[None, :] < tokens[:, None]).astype(np.int64)
    context = None
    if served.context:
        n = rng.integers(0, served.max_context_tokens + 1, batch)
        n[0] = served.max_context_tokens
        context_mask = (np.arange(served.max_context_tokens)[None, :] < n[:, None]).astype(np.int64)
        context = (rng.integers(1, vocab, context_mask.shape) * context_mask, context_mask)
    frames = {}
    for m, width in served.widths.items():
        lengths = rng.integers(1, served.max_frames + 1, batch)
        lengths[0] = served.max_frames
        lengths[1:][rng.random(batch - 1) < 0.3] = 0  # segments without this side
        frames[m] = [rng.normal(size=(n, width)) for n in lengths]
    padded = served.batch(rng.integers(1, vocab, mask.shape) * mask, mask, frames, context)
    return served.check_request(padded)  # lengths as the graph takes them: [B]


def as_tensors(batch: dict[str, np.ndarray]) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(a) for a in batch.values())


def export_onnx(model: TeCaFN, path: Path, served: ModelContract) -> None:
    wrapper = TeCaFNInference(model, served.attribution)
    small = replace(served, max_text_tokens=min(8, served.max_text_tokens), max_frames=min(6, served.max_frames),
                    max_context_tokens=min(8, served.max_context_tokens))
    example = example_batch(small, model.text_encoder.config.vocab_size, 4)
    dynamic = {name: {0: "batch", 1: "tokens"} for name in TEXT_INPUTS}
    dynamic |= {name: {0: "batch", 1: "context_tokens"} for name in served.token_inputs[len(TEXT_INPUTS):]}
    dynamic |= {name: {0: "batch"} for name in (PRESENT, *served.outputs)}
    for m in served.widths:
        dynamic[m] = {0: "batch", 1: f"{m}_frames"}
        dynamic[lengths_name(m)] = {0: "batch"}
    # Traced with grad enabled on purpose: under no_grad, PyTorch's transformer layers take a
    # fused fast path (aten::_transformer_encoder_layer_fwd) that ONNX cannot express.
    # The tracer's warnings (Python ints from shapes, LSTM batch size) are expected here; the
    # parity check on other batch sizes and lengths is what proves the graph right.
    with torch.enable_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, as_tensors(example), str(path), input_names=list(served.inputs),
                          output_names=list(served.outputs), dynamic_axes=dynamic, opset_version=17, dynamo=False,
                          custom_opsets={"com.microsoft": 1}, verbose=False)


def check_parity(model: TeCaFN, onnx_path: Path, served: ModelContract) -> float:
    """Max |ONNX Runtime - PyTorch| over every output, on a batch of 16 padded segments of mixed
    lengths, some without a side."""
    import onnxruntime as ort

    batch = example_batch(served, model.text_encoder.config.vocab_size, 16, seed=1)
    with torch.no_grad():
        expected = TeCaFNInference(model, served.attribution)(*as_tensors(batch))
    expected = expected if isinstance(expected, tuple) else (expected,)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(list(served.outputs), batch)
    return max(float(np.max(np.abs(g - e.numpy()))) for g, e in zip(got, expected))


# ---- quantization ---------------------------------------------------------------------------
QUANTIZATIONS = ("none", "int8", "auto")  # auto: int8 where it stays within tolerance, else fp32
INT8_FORMAT = ("static QDQ: uint8 activations with scales calibrated on training segments, int8 weights per "
               "output channel in 7 bits (reduce_range), MatMul only")
# The int8 graph against the fp32 graph on held-out training segments. What a user sees of a
# score is its Acc-7 class (1 wide) and, through the detector, its noise: within a stream the
# model's scores scatter with sd ~0.75 (design.md), and the detector's thresholds assume that
# variance. A root-mean-square change of 0.1 adds under 2 % to it ((0.1 / 0.75)^2), and no
# segment may move by half a class.
INT8_RMS_TOLERANCE = 0.1
INT8_MAX_TOLERANCE = 0.5
# A segment's outputs alone, in any batch, with any padding: equal up to float rounding.
BATCH_INVARIANCE_TOLERANCE = 1e-5
CALIBRATION_ROWS = 32  # segments per calibration batch
HELD_OUT = 64  # calibration-sample segments kept out of calibration to check the int8 graph on
FFN_OUTPUT = re.compile(r"^/text_encoder/.*/layer\.\d+/output/dense/MatMul$")


class CalibrationReader:
    """ONNX Runtime's calibration data reader over a list of feeds."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self.feeds = iter(feeds)

    def get_next(self):
        return next(self.feeds, None)

    def rewind(self):  # not needed for MinMax; part of the reader protocol in newer releases
        pass


def quantize_int8(fp32_path: Path, int8_path: Path, calibration: list[dict[str, np.ndarray]],
                 kept_fp32: Sequence[str] = ()) -> None:
    """ONNX Runtime static quantization of the MatMuls (the text encoder's and the attention's:
    nearly all the compute) as QDQ pairs, activation scales from `calibration`.
    - static, not dynamic: dynamic quantization measures each activation's scale on the batch it
      is in, so a segment's score moved with its batch mates (by up to 0.06);
    - 7-bit weights (reduce_range): x86-64 CPUs without VNNI (AVX2 only, e.g. AMD EPYC Rome) multiply
      uint8 by int8 with VPMADDUBSW, whose int16 sums saturate with full-range weights (the graph
      then differed from fp32 by 0.25 there). With 7 bits no sum can, and the integer results are
      the same on every x86-64 CPU (tests/test_quantize.py runs the graph on an emulated AVX2-only
      CPU);
    - MatMuls of two activations (the text encoder's attention scores and their weighted sum)
      stay fp32: quantizing both sides costs two quantize passes for little compute;
    - the MatMuls' outputs stay fp32: ONNX Runtime then fuses each into one MatMulIntegerToFloat
      (the kernel dynamic quantization uses); quantizing the outputs too made QLinearMatMuls with
      a requantize and a dequantize each, 0.65x the speed (raw, MiniLM-sized graph, batch 32);
    - the LSTM, the convolutions and the heads stay fp32: they cost little, and quantized they
      move the scores most;
    - `kept_fp32`: more MatMuls left fp32 (a step of INT8_STEPS)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    between_activations = activation_matmuls(fp32_path)
    root = logging.getLogger()
    level = root.level
    # the quantizer logs a line per tensor on the root logger, and advice to pre-process the graph
    # (measured here: no gain), as a warning
    root.setLevel(max(level, logging.ERROR))
    try:
        quantize_static(str(fp32_path), str(int8_path), CalibrationReader(calibration), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=["MatMul"], per_channel=True, reduce_range=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=[*between_activations, *kept_fp32],
                        extra_options={"OpTypesToExcludeOutputQuantization": ["MatMul"]})
    finally:
        root.setLevel(level)


def activation_matmuls(onnx_path: Path) -> list[str]:
    """The MatMul nodes of a graph whose inputs are both computed (neither is a weight)."""
    import onnx
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    constants = {i.name for i in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in graph.node if n.op_type == "MatMul" and not constants & set(n.input)]


def ffn_output_matmuls(onnx_path: Path) -> list[str]:
    """The text encoder's feed-forward output projections (BERT's and MPNet's `layer.N.output.dense`:
    not the attention's `attention.output.dense`). Their inputs are the GELU's outputs, where
    BERT-family encoders carry a few channels of outliers tens of times the rest (Bondarenko et al.,
    "Understanding and Overcoming the Challenges of Efficient Transformer Quantization", EMNLP 2021):
    one uint8 scale per tensor cannot span those and still resolve the rest."""
    import onnx
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    return [n.name for n in graph.node if n.op_type == "MatMul" and FFN_OUTPUT.search(n.name)]


# What the export tries, in order, until the int8 graph is within tolerance: every weight MatMul
# int8 (MiniLM models are), then the text encoder's feed-forward output projections left fp32 (a
# trained MPNet-base on CMU-MOSI: 0.180 -> 0.065 RMS, 0.50 -> 0.30 at most; 12 of its 133 weight
# MatMuls, a third of the encoder's weight-MatMul work).
INT8_STEPS = (("every weight MatMul int8", lambda path: []),
              ("the text encoder's feed-forward output projections fp32", ffn_output_matmuls))


def ort_session(onnx_path: Path):
    import onnxruntime as ort
    return ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])


def ort_scores(onnx_path: Path, feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
    session = ort_session(onnx_path)
    names = [i.name for i in session.get_inputs()]
    return np.concatenate([session.run([SCORE], {n: f[n] for n in names})[0].reshape(-1) for f in feeds])


def graph_feed(batch: dict[str, torch.Tensor | np.ndarray]) -> dict[str, np.ndarray]:
    """A training Batcher's batch (or a calibration sample) as the exported graph's inputs (which
    sides each segment has follows from its lengths)."""
    feed = {k: np.asarray(v) for k, v in batch.items() if k != "labels"}
    n = len(feed["input_ids"])
    feed[PRESENT] = np.stack([feed[lengths_name(m)] > 0 if lengths_name(m) in feed else np.zeros(n, bool)
                              for m in contract.PRESENCE], axis=1)
    return feed


def batch_invariance(onnx_path: Path, served: ModelContract, feed: dict[str, np.ndarray]) -> float:
    """Max |difference| of any output of a segment between the whole batch and other ways of
    serving it, each run as the serving model runs a batch (ModelContract.run_by_bucket): alone,
    in pairs with other padding, in the reverse order."""
    session = ort_session(onnx_path)
    names = list(served.outputs)

    def run(requests: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
        n = sum(len(r["input_ids"]) for r in requests)
        out = served.run_by_bucket(lambda part: session.run(names, part), served.concatenate(requests), names)
        return [out[name].reshape(n, -1) for name in names]

    rows = contract.each_row(feed, served.sequences)
    n = len(rows)
    whole = run(rows)
    ways = [[[i] for i in range(n)], [[i, (i + n // 2) % n] for i in range(n)], [list(range(n))[::-1]]]
    worst = 0.0
    for groups in ways:
        for group in groups:
            got = run([rows[i] for i in group])
            for expected, output in zip(whole, got):
                worst = max(worst, float(np.max(np.abs(output - expected[group]))))
    return worst


def quantized_parity(fp32_path: Path, int8_path: Path, held_out: list[dict[str, np.ndarray]]) -> dict:
    """|int8 - fp32| (both through ONNX Runtime) on held-out training segments."""
    diff = np.abs(ort_scores(int8_path, held_out) - ort_scores(fp32_path, held_out))
    return {"segments": len(diff), "mean_abs_diff": float(diff.mean()), "rms_diff": float(np.sqrt(np.mean(diff ** 2))),
            "max_abs_diff": float(diff.max())}


def quantized_accuracy(checkpoint: Path, ckpt: dict, fp32_path: Path, int8_path: Path, data: str) -> dict:
    """Test-split MAE of the fp32 and the int8 graph on a dataset (the real CMU-MOSI, say)."""
    from trainer.data import Batcher, load_dataset
    split = load_dataset(data).split("test")
    batcher = Batcher(split, tokenizer_for(checkpoint), **batcher_options(ckpt))
    batches = list(batcher.batches(64))  # length-bucketed: the labels must come in the same order
    labels = np.concatenate([b["labels"].numpy().reshape(-1) for b in batches])
    feeds = [graph_feed(b) for b in batches]
    mae = {name: float(np.mean(np.abs(ort_scores(path, feeds) - labels)))
           for name, path in (("fp32", fp32_path), ("int8", int8_path))}
    return {"data": str(data), "test_segments": len(labels), "mae_fp32": mae["fp32"], "mae_int8": mae["int8"],
            "mae_change": mae["int8"] - mae["fp32"]}


def calibration_feeds(checkpoint: Path, ckpt: dict, data: str | None) -> tuple[list, list, str]:
    """(calibration batches, held-out batches, where the sample came from)."""
    sample, source = calibration.for_checkpoint(checkpoint, data, tokenizer_for(checkpoint), ckpt)
    n = len(sample["input_ids"])
    if n < 8:
        raise UserError(f"{source}: {n} segments are too few to calibrate int8 scales on (at least 8)")
    held = min(HELD_OUT, n // 4)
    calibrate = calibration.chunks({k: v[:n - held] for k, v in sample.items()}, CALIBRATION_ROWS)
    check = calibration.chunks({k: v[n - held:] for k, v in sample.items()}, CALIBRATION_ROWS)
    return [graph_feed(c) for c in calibrate], [graph_feed(c) for c in check], source


class Int8OutOfTolerance(UserError):
    """The int8 graph strays from the fp32 graph past its tolerance (e.g. a trained MPNet model);
    `finding` says by how much."""

    def __init__(self, finding: str):
        super().__init__(f"{finding}; not exporting, --quantize auto or none serves fp32")
        self.finding = finding


def quantized_or_fp32(quantize: str, ckpt: dict, checkpoint: Path, staging: Path, served: ModelContract,
                      data: str | None, calibration_data: str | None) -> dict:
    """The staged graph as `quantize` asks: "int8" or refuse; "auto" the int8 graph where it stays
    within tolerance, else the fp32 graph, logged and kept in tecafn.json; "none" the fp32 graph."""
    if quantize == "none":
        return {}
    try:
        return quantize_export(ckpt, checkpoint, staging, served, data, calibration_data)
    except Int8OutOfTolerance as e:
        if quantize == "int8":
            raise
        (staging / "model.fp32.onnx").replace(staging / contract.ONNX_FILE)
        log.warning("--quantize auto: serving the fp32 graph, since %s", e.finding)
        return {"quantized": "none", "int8_refused": e.finding}


def quantize_export(ckpt: dict, checkpoint: Path, staging: Path, served: ModelContract,
                    data: str | None, calibration_data: str | None) -> dict:
    """Replace the staged fp32 graph by its int8 quantization, once it is within tolerance of the
    fp32 graph on held-out training segments; with `data`, report the accuracy change on its test
    split."""
    fp32, int8 = staging / "model.fp32.onnx", staging / contract.ONNX_FILE
    calibrate, held_out, source = calibration_feeds(checkpoint, ckpt, calibration_data)
    int8.rename(fp32)
    strayed = []
    for step, (name, kept) in enumerate(INT8_STEPS):
        kept_fp32 = kept(fp32)
        if step and not kept_fp32:  # this graph has none of them: the step would repeat the last
            continue
        quantize_int8(fp32, int8, calibrate, kept_fp32)
        parity = quantized_parity(fp32, int8, held_out)
        if parity["rms_diff"] <= INT8_RMS_TOLERANCE and parity["max_abs_diff"] <= INT8_MAX_TOLERANCE:
            break
        strayed.append(f"{parity['rms_diff']:.3f} (root mean square) and {parity['max_abs_diff']:.3f} at most with "
                       f"{name}")
        log.info("int8 with %s: %.3f (root mean square), %.3f at most from fp32, past tolerance", name,
                 parity["rms_diff"], parity["max_abs_diff"])
    else:
        raise Int8OutOfTolerance(f"the int8 graph differs from the fp32 graph by {'; by '.join(strayed)}, on "
                                 f"{parity['segments']} held-out training segments (tolerances "
                                 f"{INT8_RMS_TOLERANCE}, {INT8_MAX_TOLERANCE})")
    report = {"quantized": "int8", "int8_format": INT8_FORMAT, "int8_step": name,
              "int8_fp32_matmuls": len(kept_fp32),
              "int8_calibration": {"source": source, "segments": sum(len(f["input_ids"]) for f in calibrate)},
              "int8_parity": parity}
    if data:
        report["int8_accuracy"] = quantized_accuracy(checkpoint, ckpt, fp32, int8, data)
        a = report["int8_accuracy"]
        log.info("int8 on %s test (%d segments): MAE %.4f vs fp32 %.4f (change %+.4f)", data, a["test_segments"],
                 a["mae_int8"], a["mae_fp32"], a["mae_change"])
    fp32.unlink()
    log.info("int8 graph (%s) within %.3f (root mean square) and %.3f (max) of fp32 on %d held-out training "
             "segments", name, parity["rms_diff"], parity["max_abs_diff"], parity["segments"])
    return report


def check_batch_invariance(onnx_path: Path, model: TeCaFN, served: ModelContract) -> float:
    """The served graph gives each segment the same outputs whatever its batch; else no export."""
    feed = example_batch(served, model.text_encoder.config.vocab_size, 16, seed=2)
    worst = batch_invariance(onnx_path, served, feed)
    if not worst <= BATCH_INVARIANCE_TOLERANCE:
        raise RuntimeError(f"the graph scores a segment {worst:.1e} apart in different batches "
                           f"(> {BATCH_INVARIANCE_TOLERANCE:.0e}); not exporting")
    return worst


QUANTIZE_DATA = {"accuracy_data": "measures", "calibration_data": "calibrates"}  # what each does to the int8 graph


def check_quantize_data(quantize: str, **data: str | None) -> None:
    """--accuracy-data and --calibration-data, before the export rather than after it."""
    for name, spec in data.items():
        if spec is None:
            continue
        flag = "--" + name.replace("_", "-")
        if quantize == "none":
            raise UserError(f"{flag} {QUANTIZE_DATA[name]} the int8 graph: it needs --quantize int8 or auto")
        if spec != "synthetic" and not Path(spec).exists():
            raise UserError(f"{flag} {spec}: no such file or directory")


def next_version(repo: Path) -> int:
    """One more than the newest version in either slot: a version number names one model directory."""
    return contract.newest_version(repo) + 1


def candidate_slot(repo: Path, live_model: str, served: ModelContract) -> str:
    """Where a candidate is served: beside the live version, under its config.pbtxt, when it takes
    the same inputs and gives the same outputs (weights, tokenizer, text encoder and quantization
    may differ); else as the other slot, a model of its own with its own config (Triton has one
    config per model, and the workers read each model's contract from it)."""
    live = ModelContract.read_config_pbtxt(repo / live_model / contract.CONFIG_FILE)
    return live_model if live.same_interface(served) else contract.other_slot(live_model)


def export(checkpoint: Path, repo: Path, backend: str = "python", max_batch: int = 64,
           tensorrt: bool = False, queue_delay_us: int = 2000, instances: int = DEFAULT_INSTANCES, quantize: str = "none",
           accuracy_data: str | None = None, attribution: bool = True, calibration_data: str | None = None,
           keep_serving: Sequence[str] = (), live_model: str = MODEL_NAME) -> Path:
    """Export `checkpoint` as the next version under repo/tecafn; return the version directory.
    With `attribution` (text-centred models), the graph returns the text-only score and each
    side's contribution beside the score, from the same call. quantize="int8" serves the int8
    quantization of the graph, its scales calibrated on the sample the training run wrote or on
    `calibration_data`'s training split (with `accuracy_data`, the change of test MAE it makes on
    that dataset is logged and kept in tecafn.json). With `keep_serving` (the live version, served
    by `live_model`, when the new one is exported as a candidate), Triton serves exactly those and
    the new version: the new one beside them (the config names only them before the version
    appears, and them and it once it has) where its contract is theirs, else as the other slot
    (candidate_slot), whose config names the new version alone once it has appeared."""
    if quantize not in QUANTIZATIONS:
        raise UserError(f"--quantize must be one of {QUANTIZATIONS}, not {quantize!r}")
    if backend not in contract.BACKENDS:
        raise UserError(f"--backend must be one of {contract.BACKENDS}, not {backend!r}")
    if max_batch < 1:
        raise UserError(f"--max-batch must be >= 1, got {max_batch}")
    if tensorrt and backend != "onnxruntime":
        raise UserError("--tensorrt applies to the onnxruntime backend only")
    check_quantize_data(quantize, accuracy_data=accuracy_data, calibration_data=calibration_data)
    model, ckpt = load_checkpoint(checkpoint, "cpu")
    if model.config.task != "regression":
        raise UserError("only regression (sentiment score) models are served; this checkpoint is binary")
    repo = Path(repo)
    version = next_version(repo)
    served = model_contract(model, ckpt["max_text_tokens"], ckpt["max_frames"] or 50,
                            attribution=attribution and model.config.center == "text",
                            max_context_tokens=batcher_options(ckpt)["max_context_tokens"])
    slot = candidate_slot(repo, live_model, served) if keep_serving else MODEL_NAME
    beside = keep_serving if slot == live_model else ()
    target = repo / slot / str(version)
    staging = repo / slot / f".staging-{version}"  # Triton ignores it until it is renamed
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        export_onnx(model, staging / contract.ONNX_FILE, served)
        diff = check_parity(model, staging / contract.ONNX_FILE, served)
        if not diff <= PARITY_TOLERANCE:
            raise RuntimeError(f"ONNX Runtime differs from PyTorch by {diff:.2e} (> {PARITY_TOLERANCE:.0e}) "
                               f"on padded inputs; not exporting")
        quantization = quantized_or_fp32(quantize, ckpt, checkpoint, staging, served, accuracy_data, calibration_data)
        invariance = check_batch_invariance(staging / contract.ONNX_FILE, model, served)
        served.write_metadata(staging, version=version, task=model.config.task,
                              modalities=list(model.config.modalities),
                              label_range=[-model.config.label_range, model.config.label_range],
                              text_encoder=ckpt["text_encoder"], trained_on=ckpt["dataset"],
                              parity_max_abs_diff=diff, batch_invariance_max_abs_diff=invariance, **quantization)
        tokenizer_for(checkpoint).save_pretrained(staging / contract.TOKENIZER_DIR)
        if backend == "python":
            for name, source in SERVING_SOURCES.items():
                shutil.copy(source, staging / name)
        config = dict(backend=backend, max_batch=max_batch, instances=instances, queue_delay_us=queue_delay_us,
                      tensorrt=tensorrt)
        if beside or not keep_serving:  # in the other slot, the config names the new version once it is there
            write_config(repo, served.config_pbtxt(**config, versions=beside, model=slot), slot)
        staging.rename(target)
        if keep_serving:
            write_config(repo, served.config_pbtxt(**config, versions=[*beside, version], model=slot), slot)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("exported %s as %s version %d (%s backend, parity %.1e)", checkpoint, slot, version, backend, diff)
    return target
