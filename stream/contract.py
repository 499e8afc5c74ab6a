"""The serving contract of TeCaFN: what `tecaflow export` writes, Triton serves and clients send.

This module is the one home of
    the names        input_ids, attention_mask, with context context_ids and context_mask (the k
                     previous transcripts of the segment's stream, context_tokens), <modality>,
                     <modality>_lengths and `present` (which sides a segment has) in; `score`,
                     and with attribution `text_only` and `contribution` (what each side moved
                     the score) out
    the shape        each modality's feature width, the frame and token limits, the batch limit,
                     and the context: k and its token limit (k = 0: no context inputs at all)
    the files        <repo>/tecafn/config.pbtxt (written and read through Triton's own
                     model_config_pb2) and, in each version directory, tecafn.json, model.onnx,
                     model.py (the Python-backend model) and tokenizer/
    the padding      one function turns variable-length arrays into a batch; the client, the
                     Python-backend model and the export's parity check all use it
    the tokenizer    loaded with the `tokenizers` library from the version's tokenizer.json

trainer/export.py writes the contract, stream/triton_model.py serves it (export copies this file
beside it as tecaflow_contract.py: Triton's own image has no tecaflow installed), and
stream/triton_client.py and the worker read it back from Triton. At import time it needs only
numpy and the standard library, so that the Python backend's interpreter can load it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

MODEL_NAME = "tecafn"
# The second slot of a model (blue/green): a candidate whose contract differs from the live
# version's is served as another Triton model, since one config.pbtxt serves all of a model's
# versions. Roles name (model, version); versions are numbered across both slots, so a version
# names one model directory.
SECOND_SLOT = "_b"
SCORE = "score"
TEXT_ONLY = "text_only"  # the score from the words alone
CONTRIBUTION = "contribution"  # [B, len(PRESENCE)]: score minus the score without that side
TEXT_INPUTS = ("input_ids", "attention_mask")
CONTEXT_INPUTS = ("context_ids", "context_mask")  # [B, T_c]: the previous transcripts, with context
TOKEN_INPUTS = TEXT_INPUTS + CONTEXT_INPUTS  # inputs of token positions, padded and bucketed alike
PRESENT = "present"  # bool [B, len(PRESENCE)]: which sides each segment has
PRESENCE = ("audio", "visual")  # the columns of `present` and `contribution`, whatever the model has
BACKENDS = ("python", "onnxruntime")
# Model instances per export: one per Triton call a worker keeps running (TECAFLOW_TRITON_CALLS),
# each with its share of the cores. On 2 CPU cores ONNX Runtime keeps 1.6 of them busy with one session of two threads (many
# of the graph's nodes are too small to split), and two one-thread sessions side by side do 1.4x
# as much (`tecaflow bench pipeline --instances 1|2`, README).
DEFAULT_INSTANCES = 2

METADATA_FILE = "tecafn.json"
ONNX_FILE = "model.onnx"
PYTHON_MODEL_FILE = "model.py"
CONTRACT_FILE = "tecaflow_contract.py"  # this module, as copied beside the Python-backend model
TOKENIZER_DIR = "tokenizer"
CONFIG_FILE = "config.pbtxt"


def lengths_name(modality: str) -> str:
    return f"{modality}_lengths"


class ContractError(ValueError):
    """A request or a model repository that does not match the contract."""


@dataclass(frozen=True)
class ModelContract:
    widths: dict[str, int]  # feature width of each non-text modality, in the model's input order
    max_text_tokens: int
    max_frames: int
    max_batch: int = 0
    presence: bool = False  # the model takes `present`, and sides with zero frames
    attribution: bool = False  # the model returns `text_only` and `contribution` beside the score
    context: int = 0  # k: previous transcripts of the stream the model reads (0: no context inputs)
    max_context_tokens: int = 0

    @property
    def sequences(self) -> tuple[str, ...]:
        return tuple(self.widths)

    @property
    def token_inputs(self) -> tuple[str, ...]:
        return TEXT_INPUTS + CONTEXT_INPUTS if self.context else TEXT_INPUTS

    @property
    def inputs(self) -> tuple[str, ...]:
        names = list(self.token_inputs)
        for m in self.widths:
            names += [m, lengths_name(m)]
        return tuple(names + [PRESENT] * self.presence)

    @property
    def outputs(self) -> tuple[str, ...]:
        return (SCORE, TEXT_ONLY, CONTRIBUTION) if self.attribution else (SCORE,)

    def same_interface(self, other: "ModelContract") -> bool:
        """Whether one config.pbtxt serves both: the same inputs and outputs (the batch limit is
        the config's own)."""
        return replace(self, max_batch=0) == replace(other, max_batch=0)

    # ---- tecafn.json: the contract plus where the model came from --------------------------
    def metadata(self, **provenance) -> dict:
        return {"model": MODEL_NAME, "inputs": list(self.inputs), "outputs": list(self.outputs),
                "widths": dict(self.widths), "max_text_tokens": self.max_text_tokens, "max_frames": self.max_frames,
                "presence": self.presence, "attribution": self.attribution, "context": self.context,
                "max_context_tokens": self.max_context_tokens, "tokenizer": TOKENIZER_DIR, **provenance}

    def write_metadata(self, version_dir: Path, **provenance) -> None:
        (Path(version_dir) / METADATA_FILE).write_text(json.dumps(self.metadata(**provenance), indent=2))

    @classmethod
    def read_metadata(cls, version_dir: Path | str) -> "ModelContract":
        meta = json.loads((Path(version_dir) / METADATA_FILE).read_text())
        return cls(widths={m: int(w) for m, w in meta["widths"].items()}, max_text_tokens=int(meta["max_text_tokens"]),
                   max_frames=int(meta["max_frames"]), presence=bool(meta.get("presence")),
                   attribution=bool(meta.get("attribution")), context=int(meta.get("context", 0)),
                   max_context_tokens=int(meta.get("max_context_tokens", 0)))

    # ---- config.pbtxt ------------------------------------------------------------------------
    def model_config(self, backend: str = "python", max_batch: int = 64, instances: int = DEFAULT_INSTANCES,
                     queue_delay_us: int = 2000, tensorrt: bool = False, versions: Sequence[str | int] = (),
                     model: str = MODEL_NAME):
        """Triton's ModelConfig for this contract, serving the newest version or exactly `versions`
        (a live one and a candidate: stream/shadow/roles.py). The Python backend takes ragged batches (it
        pads across requests itself); ONNX Runtime batches only requests of equal shapes, so its
        clients pad to fixed sizes and its lengths are scalars per segment."""
        from tritonclient.grpc import model_config_pb2 as pb

        if backend not in BACKENDS:
            raise ContractError(f"backend must be one of {BACKENDS}, not {backend!r}")
        ragged = backend == "python"
        config = pb.ModelConfig(name=model, max_batch_size=max_batch)
        if ragged:
            config.backend = "python"
        else:
            config.platform = "onnxruntime_onnx"
        for name in self.token_inputs:
            config.input.add(name=name, data_type=pb.TYPE_INT64, dims=[-1], allow_ragged_batch=ragged)
        for m, width in self.widths.items():
            config.input.add(name=m, data_type=pb.TYPE_FP32, dims=[-1, width], allow_ragged_batch=ragged)
            lengths = config.input.add(name=lengths_name(m), data_type=pb.TYPE_INT64, dims=[1])
            if not ragged:
                lengths.reshape.shape[:] = []
        if self.presence:
            config.input.add(name=PRESENT, data_type=pb.TYPE_BOOL, dims=[len(PRESENCE)])
        for name in self.outputs:
            output = config.output.add(name=name, data_type=pb.TYPE_FP32,
                                       dims=[len(PRESENCE)] if name == CONTRIBUTION else [1])
            if not ragged and name != CONTRIBUTION:
                output.reshape.shape[:] = []
        # Small preferred sizes make the batcher dispatch half-full batches under load; ask for 16+.
        config.dynamic_batching.preferred_batch_size[:] = sorted({b for b in (16, 32, 64, 128, max_batch)
                                                                   if b <= max_batch})
        config.dynamic_batching.max_queue_delay_microseconds = queue_delay_us
        config.instance_group.add(count=instances, kind=pb.ModelInstanceGroup.KIND_CPU if ragged
                                  else pb.ModelInstanceGroup.KIND_GPU)
        if versions:
            config.version_policy.specific.versions[:] = sorted({int(v) for v in versions})
        else:
            config.version_policy.latest.num_versions = 1
        if tensorrt:
            trt = config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
            trt.parameters["precision_mode"] = "FP16"
            trt.parameters["max_workspace_size_bytes"] = "1073741824"
        config.parameters["max_text_tokens"].string_value = str(self.max_text_tokens)
        config.parameters["max_frames"].string_value = str(self.max_frames)
        if self.context:  # a model without context keeps the config it always had
            config.parameters["context"].string_value = str(self.context)
            config.parameters["max_context_tokens"].string_value = str(self.max_context_tokens)
        return config

    def config_pbtxt(self, **options) -> str:
        from google.protobuf import text_format
        return text_format.MessageToString(self.model_config(**options))

    @classmethod
    def from_model_config(cls, config) -> "ModelContract":
        """From Triton's model config: a ModelConfig, or the JSON dict its clients return."""
        if isinstance(config, dict):
            from google.protobuf import json_format
            from tritonclient.grpc import model_config_pb2 as pb
            config = json_format.ParseDict(config, pb.ModelConfig(), ignore_unknown_fields=True)
        try:
            widths = {i.name: int(i.dims[-1]) for i in config.input if i.name not in (*TOKEN_INPUTS, PRESENT)
                      and not i.name.endswith("_lengths")}
            context = config.parameters["context"].string_value if "context" in config.parameters else "0"
            context_tokens = config.parameters["max_context_tokens"].string_value if context != "0" else "0"
            return cls(widths=widths, max_text_tokens=int(config.parameters["max_text_tokens"].string_value),
                       max_frames=int(config.parameters["max_frames"].string_value),
                       max_batch=int(config.max_batch_size),
                       presence=any(i.name == PRESENT for i in config.input),
                       attribution=any(o.name == TEXT_ONLY for o in config.output),
                       context=int(context), max_context_tokens=int(context_tokens))
        except (ValueError, IndexError) as e:
            raise ContractError(f"model {config.name!r} is not a tecaflow export: {e}") from None

    @classmethod
    def read_config_pbtxt(cls, path: Path | str) -> "ModelContract":
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2 as pb
        return cls.from_model_config(text_format.Parse(Path(path).read_text(), pb.ModelConfig()))

    # ---- batches -----------------------------------------------------------------------------
    def batch(self, input_ids: np.ndarray, attention_mask: np.ndarray,
              frames: dict[str, Sequence[np.ndarray]],
              context: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Model inputs for a batch: tokens as given, the context's (ids, mask) where given (a
        model with context needs them; the worker adds them once it has read the store), each
        modality's [T_i, d] frames padded to the batch's longest, with lengths [B, 1], and which
        sides each segment has. A side with no frames is absent for a model that takes `present`;
        an older model gets one zero frame."""
        out = {"input_ids": input_ids.astype(np.int64), "attention_mask": attention_mask.astype(np.int64)}
        if self.context and context is not None:
            out.update(zip(CONTEXT_INPUTS, (a.astype(np.int64) for a in context)))
        for m, width in self.widths.items():
            seqs = [np.asarray(s, np.float32).reshape(-1, width) for s in frames[m]]
            out[m] = pad_and_stack([s[None] for s in seqs], minimum=1)
            shortest = 0 if self.presence else 1
            out[lengths_name(m)] = np.array([[max(shortest, len(s))] for s in seqs], dtype=np.int64)
        if self.presence:
            n = len(input_ids)
            out[PRESENT] = np.array([[m in frames and len(frames[m][i]) > 0 for m in PRESENCE] for i in range(n)],
                                    dtype=bool).reshape(n, len(PRESENCE))
        return out

    def attributions(self, outputs: dict[str, np.ndarray], present: np.ndarray | None = None
                     ) -> list[tuple[float, dict[str, float]]] | None:
        """Per segment: (text-only score, {side: what it moved the score}) for the sides the
        segment had and the model has; None when the model gives no attribution."""
        if not self.attribution:
            return None
        text_only = outputs[TEXT_ONLY].reshape(-1)
        moved = outputs[CONTRIBUTION].reshape(len(text_only), len(PRESENCE))
        has = np.ones_like(moved, bool) if present is None else present
        return [(float(text_only[i]), {m: float(moved[i, j]) for j, m in enumerate(PRESENCE)
                                       if m in self.widths and has[i, j]}) for i in range(len(text_only))]

    def check_request(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A request's arrays, validated beyond what Triton checks; lengths flattened to [n]."""
        for name in self.inputs:
            if name not in arrays:
                raise ContractError(f"missing input {name!r}")
        ids, mask = arrays["input_ids"], arrays["attention_mask"]
        n = ids.shape[0]
        if mask.shape != ids.shape:
            raise ContractError(f"attention_mask shape {mask.shape} != input_ids shape {ids.shape}")
        if ids.shape[1] > self.max_text_tokens:
            raise ContractError(f"{ids.shape[1]} tokens > max_text_tokens {self.max_text_tokens}")
        if self.context:
            context_ids, context_mask = (arrays[name] for name in CONTEXT_INPUTS)
            if context_ids.shape != context_mask.shape or context_ids.ndim != 2 or context_ids.shape[0] != n:
                raise ContractError(f"context_ids {context_ids.shape} and context_mask {context_mask.shape} must both "
                                    f"be [{n}, T_c]")
            if context_ids.shape[1] > self.max_context_tokens:
                raise ContractError(f"{context_ids.shape[1]} context tokens > max_context_tokens "
                                    f"{self.max_context_tokens}")
        out = dict(arrays)
        shortest = 0 if self.presence else 1
        for m in self.widths:
            frames, lengths = arrays[m], arrays[lengths_name(m)].reshape(-1)
            out[lengths_name(m)] = lengths
            if frames.shape[0] != n or lengths.shape[0] != n:
                raise ContractError(f"{m}: batch {frames.shape[0]} / lengths {lengths.shape[0]} != input_ids batch {n}")
            if frames.shape[1] > self.max_frames:
                raise ContractError(f"{m}: {frames.shape[1]} frames > max_frames {self.max_frames}")
            if np.any(lengths < shortest) or np.any(lengths > frames.shape[1]):
                raise ContractError(f"{lengths_name(m)} must be in [{shortest}, {frames.shape[1]}]")
            if not np.all(np.isfinite(frames)):
                raise ContractError(f"{m}: NaN or Inf in the frames")
        if self.presence and arrays[PRESENT].shape != (n, len(PRESENCE)):
            raise ContractError(f"{PRESENT} shape {arrays[PRESENT].shape} != ({n}, {len(PRESENCE)})")
        return out

    def length_buckets(self, feed: dict[str, np.ndarray]) -> dict[tuple[int, ...], np.ndarray]:
        """The rows of a checked feed (lengths [n]) grouped by the lengths they are computed at:
        (text, the context where the model has it, then each sequence side) -> row indices, each
        length bucket_length of the row's own."""
        keys = [np.array([bucket_length(int(t), self.max_text_tokens) for t in feed["attention_mask"].sum(1)])]
        if self.context:
            keys += [np.array([bucket_length(int(t), self.max_context_tokens) for t in feed["context_mask"].sum(1)])]
        keys += [np.array([bucket_length(int(n), self.max_frames) for n in feed[lengths_name(m)]]) for m in self.widths]
        groups: dict[tuple[int, ...], list[int]] = {}
        for row, key in enumerate(zip(*keys)):
            groups.setdefault(tuple(int(k) for k in key), []).append(row)
        return {key: np.array(rows) for key, rows in groups.items()}

    def bucket_lengths(self, key: tuple[int, ...]) -> dict[str, int]:
        """The length each padded input of a bucket (a key of length_buckets) is computed at."""
        lengths = iter(key)
        out = dict.fromkeys(TEXT_INPUTS, next(lengths))
        if self.context:
            out |= dict.fromkeys(CONTEXT_INPUTS, next(lengths))
        return out | dict(zip(self.widths, lengths))

    def run_by_bucket(self, run, feed: dict[str, np.ndarray], names: Sequence[str]) -> dict[str, np.ndarray]:
        """`run(feed) -> [array per name]` over a checked feed, so that each segment's outputs depend
        on that segment alone: ONNX Runtime's float rounding depends on the lengths a batch is
        padded to (reductions over a different number of positions round differently, by ~1e-7),
        and an int8 graph can turn such a difference into a whole quantization step (~1e-4 on the
        score). Each row is therefore computed at lengths that follow from its own (its bucket),
        with the other rows of its bucket, never as a batch of one; those shapes give the same
        outputs bit for bit whatever the other rows (checked at every export: trainer/export.py)."""
        n = len(feed["input_ids"])
        out: dict[str, np.ndarray] = {}
        for key, rows in self.length_buckets(feed).items():
            part = {name: a[rows] for name, a in feed.items()}
            for name, length in self.bucket_lengths(key).items():
                part[name] = fit_length(part[name], length)
            for name, result in zip(names, run(never_one_row(part))):
                if name not in out:
                    out[name] = np.zeros((n, *result.shape[1:]), result.dtype)
                out[name][rows] = result[:len(rows)]
        return out

    def concatenate(self, requests: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """Several checked requests as one batch: sequences padded to the longest among them."""
        feed = {}
        for name in self.inputs:
            arrays = [r[name] for r in requests]
            feed[name] = np.concatenate(arrays) if arrays[0].ndim == 1 else pad_and_stack(arrays)
        return feed


def context_tokens(previous: Sequence[Sequence[int]], separator: int, limit: int) -> list[int]:
    """A segment's context as token ids: the token ids of the previous segments' transcripts (each
    tokenized without special tokens), oldest first, each followed by the separator, cut to the
    last `limit` ids (the oldest words go first). The trainer and the worker both build it here."""
    ids: list[int] = []
    for piece in previous:
        ids += [*piece, separator]
    return ids[-limit:] if limit > 0 else []


def bucket_length(real: int, limit: int) -> int:
    """The length a sequence of `real` positions is computed at: the next multiple of 8 (of 64
    past 64), at most `limit` (the contract's maximum) unless the sequence itself is longer. Fine
    steps waste little padding; every step is one more group a batch may split into."""
    step = 8 if real <= 64 else 64
    length = max(step, -(-real // step) * step)
    return max(real, min(length, limit), 1)


def never_one_row(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The feed with its row repeated when it has exactly one. ONNX Runtime computes a one-row
    batch with other kernels (matrix-vector products) whose float rounding differs from the
    batched kernels' by ~1e-7, and an int8 graph can turn such a difference into a whole
    quantization step. From two rows on, at the same lengths, a row's outputs do not depend on
    the other rows (ModelContract.run_by_bucket)."""
    if len(feed["input_ids"]) != 1:
        return feed
    return {k: np.concatenate([v, v]) for k, v in feed.items()}


def trimmed(feed: dict[str, np.ndarray], sides: Iterable[str]) -> dict[str, np.ndarray]:
    """A feed (lengths [n]) cut to its longest text, context and each side's longest frames (at
    least one)."""
    out = dict(feed)
    for ids, mask in (TEXT_INPUTS, CONTEXT_INPUTS):
        if mask in feed:
            tokens = max(1, int(feed[mask].sum(1).max()))
            out[ids], out[mask] = fit_length(feed[ids], tokens), fit_length(feed[mask], tokens)
    for m in sides:
        out[m] = fit_length(feed[m], max(1, int(feed[lengths_name(m)].max())))
    return out


def each_row(feed: dict[str, np.ndarray], sides: Iterable[str]) -> list[dict[str, np.ndarray]]:
    """A checked feed (lengths [n]) as one request per segment, each trimmed to its own lengths."""
    sides = list(sides)
    return [trimmed({k: v[i:i + 1] for k, v in feed.items()}, sides) for i in range(len(feed["input_ids"]))]


def fit_length(a: np.ndarray, length: int) -> np.ndarray:
    """`a` [n, T, ...] cut or zero-padded to T = length (only padding is ever cut)."""
    if a.shape[1] >= length:
        return a[:, :length]
    out = np.zeros((a.shape[0], length, *a.shape[2:]), a.dtype)
    out[:, :a.shape[1]] = a
    return out


def pad_and_stack(arrays: Iterable[np.ndarray], minimum: int = 0) -> np.ndarray:
    """Arrays [n_i, T_i, ...] zero-padded on axis 1 to the longest T (at least `minimum`) and
    concatenated on axis 0. The model masks padding, so how much there is never changes a score."""
    arrays = list(arrays)
    longest = max([minimum, *(a.shape[1] for a in arrays)])
    # one zero array filled by slices: np.pad per array cost the worker ~2 ms a batch
    out = np.zeros((sum(a.shape[0] for a in arrays), longest, *arrays[0].shape[2:]),
                   dtype=np.result_type(*arrays))
    row = 0
    for a in arrays:
        out[row:row + a.shape[0], :a.shape[1]] = a
        row += a.shape[0]
    return out


# ---- the model repository ------------------------------------------------------------------
def slots(model: str = MODEL_NAME) -> tuple[str, str]:
    """The two Triton models a model's versions are served as: itself, and its second slot."""
    base = model.removesuffix(SECOND_SLOT)
    return base, base + SECOND_SLOT


def other_slot(model: str) -> str:
    first, second = slots(model)
    return second if model == first else first


def versions(repo: Path | str, model: str = MODEL_NAME) -> list[Path]:
    """The model's version directories, oldest first."""
    return sorted((p for p in (Path(repo) / model).glob("[0-9]*") if p.is_dir() and p.name.isdigit()),
                  key=lambda p: int(p.name))


def slot_of(repo: Path | str, version: str, model: str = MODEL_NAME) -> str | None:
    """The slot of `model` whose directory holds `version` (None: neither)."""
    return next((slot for slot in slots(model) if (Path(repo) / slot / version).is_dir()), None)


def newest_version(repo: Path | str, model: str = MODEL_NAME) -> int:
    """The highest version number in either slot of `model` (0: none)."""
    return max((int(p.name) for slot in slots(model) for p in versions(repo, slot)), default=0)


def tokenizer_dir(repo: Path | str, model: str = MODEL_NAME, version: str | None = None) -> Path:
    """The tokenizer exported beside `version` of `model` (the one Triton serves), or beside the
    newest version on disk when that is not known."""
    found = versions(repo, model)
    if version is not None:
        if not (Path(repo) / model / version / TOKENIZER_DIR).is_dir():
            raise ContractError(f"Triton serves version {version} of {model}, and {Path(repo) / model / version} "
                                f"holds no {TOKENIZER_DIR}/")
        return Path(repo) / model / version / TOKENIZER_DIR
    if not found:
        raise ContractError(f"{Path(repo) / model} has no exported version")
    return found[-1] / TOKENIZER_DIR


class Tokenizer:
    """The exported tokenizer, through the `tokenizers` library (no transformers, no torch): the
    same ids, padding and truncation as the Hugging Face fast tokenizer the model trained with."""

    def __init__(self, directory: Path | str, max_tokens: int):
        from tokenizers import Tokenizer as Backend

        path = Path(directory) / "tokenizer.json"
        if not path.is_file():
            raise ContractError(f"no tokenizer.json in {directory}: export the model with `tecaflow export`")
        self.backend = Backend.from_file(str(path))
        settings = json.loads((Path(directory) / "tokenizer_config.json").read_text()) \
            if (Path(directory) / "tokenizer_config.json").is_file() else {}
        pad_token = special_token(settings, "pad_token", "[PAD]")
        self.separator = self.backend.token_to_id(special_token(settings, "sep_token", "[SEP]")) or 0
        self.backend.enable_truncation(max_tokens)
        self.backend.enable_padding(pad_id=self.backend.token_to_id(pad_token) or 0, pad_token=pad_token)

    def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        encoded = self.backend.encode_batch(list(texts))
        return (np.array([e.ids for e in encoded], dtype=np.int64),
                np.array([e.attention_mask for e in encoded], dtype=np.int64))

    def context(self, previous: Sequence[Sequence[str]], max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
        """context_ids and context_mask [B, T_c] (T_c at least 1) of segments whose previous
        transcripts, oldest first, are `previous`: as the trainer builds them (context_tokens)."""
        texts = sorted({t for texts in previous for t in texts})
        encoded = self.backend.encode_batch(texts, add_special_tokens=False) if texts else []
        pieces = {t: [i for i, real in zip(e.ids, e.attention_mask) if real] for t, e in zip(texts, encoded)}
        rows = [context_tokens([pieces[t] for t in texts], self.separator, max_tokens) for texts in previous]
        lengths = np.array([len(row) for row in rows], np.int64)
        ids = np.zeros((len(rows), max(1, int(lengths.max(initial=0)))), np.int64)
        for i, row in enumerate(rows):
            ids[i, :len(row)] = row
        return ids, (np.arange(ids.shape[1])[None, :] < lengths[:, None]).astype(np.int64)


def special_token(settings: dict, name: str, default: str) -> str:
    """A special token's text from tokenizer_config.json's settings (a string or an AddedToken dict)."""
    token = settings.get(name, default)
    return token.get("content", default) if isinstance(token, dict) else token
