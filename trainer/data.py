"""Datasets: one in-memory form, and readers for the formats researchers have.

    native      a directory: utterances.csv (id,text,label,mode, and optionally video_id,clip_id: the
                stream a segment belongs to and its place in it) and optional audio*.npz /
                visual*.npz keyed by id (no pickle). ../shared/data/cmu-mosi is in this layout.
    mmsa        MMSA-style CMU-MOSI / CMU-MOSEI pickles (unaligned_50.pkl, aligned_50.pkl)
    ur-funny    the UR-FUNNY v2 folder of SDK pickles (data_folds.pkl, language_sdk.pkl, ...)
    synthetic   the seeded generator in trainer/synthetic.py

Where the data says which stream each segment belongs to and in what order (MOSI's video and clip
ids, the synthetic streams), each split carries every segment's earlier transcripts, the context
a model with k > 0 reads (trainer/model.py); their labels are never used.

Pickles can run code when loaded: the pickle readers are for local files the user names.
"""
from __future__ import annotations

import csv
import logging
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from stream.contract import pad_and_stack
from stream.errors import UserError
from stream.contract import context_tokens
from trainer.defaults import DEFAULT_MAX_CONTEXT_TOKENS, DEFAULT_MAX_FRAMES  # noqa: F401 - part of the readers' API

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")


class DataError(UserError, ValueError):
    """Input data that cannot be used, with a message that says why and where."""


@dataclass
class Split:
    """One split. Sequence modalities are padded [N, T, d] with their real lengths [N]."""

    ids: list[str]
    texts: list[str]
    labels: np.ndarray  # float32 [N]
    audio: np.ndarray | None = None
    audio_lengths: np.ndarray | None = None
    visual: np.ndarray | None = None
    visual_lengths: np.ndarray | None = None
    # every segment's earlier transcripts in its stream, oldest first (None: the data has no streams)
    history: list[list[str]] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, index) -> "Split":
        index = np.asarray(index)
        pick = lambda a: None if a is None else a[index]  # noqa: E731
        history = None if self.history is None else [self.history[i] for i in index]
        return Split([self.ids[i] for i in index], [self.texts[i] for i in index], self.labels[index],
                     pick(self.audio), pick(self.audio_lengths), pick(self.visual), pick(self.visual_lengths), history)


@dataclass
class Dataset:
    name: str
    train: Split
    valid: Split
    test: Split
    task: str = "regression"  # or "binary"

    def split(self, name: str) -> Split:
        return {"train": self.train, "valid": self.valid, "test": self.test}[name]

    @property
    def modalities(self) -> tuple[str, ...]:
        present = [m for m in ("audio", "visual") if getattr(self.train, m) is not None]
        return ("text", *present)

    def width(self, modality: str) -> int:
        array = getattr(self.train, modality)
        return 0 if array is None else int(array.shape[-1])

    def describe(self) -> str:
        widths = ", ".join(f"{m} d={self.width(m)}" for m in self.modalities if m != "text")
        return (f"{self.name}: train {len(self.train)}, valid {len(self.valid)}, test {len(self.test)}; "
                f"modalities text{', ' + widths if widths else ''}")


# --------------------------------------------------------------------------------------------
# Validation shared by every reader

def check_split(split: Split, where: str, task: str = "regression") -> None:
    n = len(split.ids)
    if len(split.texts) != n or len(split.labels) != n:
        raise DataError(f"{where}: {n} ids but {len(split.texts)} texts and {len(split.labels)} labels")
    if not np.all(np.isfinite(split.labels)):
        raise DataError(f"{where}: labels contain NaN or Inf (first at row {int(np.argmin(np.isfinite(split.labels)))})")
    if task == "regression" and np.any(np.abs(split.labels) > 3.0):
        bad = int(np.argmax(np.abs(split.labels) > 3.0))
        raise DataError(f"{where}: label {split.labels[bad]} of {split.ids[bad]!r} is outside [-3, 3]")
    if task == "binary" and not np.all(np.isin(split.labels, (0.0, 1.0))):
        raise DataError(f"{where}: binary labels must be 0 or 1")
    if split.history is not None and len(split.history) != n:
        raise DataError(f"{where}: {n} ids but {len(split.history)} histories")
    for m in ("audio", "visual"):
        array, lengths = getattr(split, m), getattr(split, f"{m}_lengths")
        if array is None:
            continue
        if array.ndim != 3 or array.shape[0] != n:
            raise DataError(f"{where}: {m} must be [N={n}, T, d], got shape {array.shape}")
        if lengths is None or lengths.shape != (n,):
            raise DataError(f"{where}: {m} needs one length per row")
        if np.any(lengths < 1) or np.any(lengths > array.shape[1]):
            raise DataError(f"{where}: {m} lengths must be in [1, {array.shape[1]}]")
        if not np.all(np.isfinite(array)):
            row = int(np.argmax(~np.isfinite(array).all(axis=(1, 2))))
            raise DataError(f"{where}: {m} features contain NaN or Inf (first in {split.ids[row]!r})")


def check_dataset(ds: Dataset) -> Dataset:
    for name in SPLITS:
        split = ds.split(name)
        if len(split) == 0:
            raise DataError(f"{ds.name}: the {name} split is empty")
        check_split(split, f"{ds.name}/{name}", ds.task)
        for m in ("audio", "visual"):
            if (getattr(split, m) is None) != (getattr(ds.train, m) is None):
                raise DataError(f"{ds.name}: {m} is present in some splits and not in others")
            array = getattr(split, m)
            if array is not None and array.shape[-1] != ds.width(m):
                raise DataError(f"{ds.name}/{name}: {m} width {array.shape[-1]} "
                                f"differs from train's {ds.width(m)}")
    return ds


BUCKET_POOL = 50  # length bucketing sorts within pools of this many batches


def pad_sequences(seqs: list[np.ndarray], max_frames: int | None = None, what: str = "frames"
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Pad a list of [T_i, d] arrays to [N, T, d] and return lengths. Sequences longer than
    max_frames (None: no cap) are cut, and the log says how many and how long they were."""
    full = np.array([len(s) for s in seqs], dtype=np.int64)
    if max_frames is not None:
        _log_cut(full, max_frames, what)
    lengths = np.maximum(np.minimum(full, max_frames or max(1, int(full.max()))), 1)
    d = next((np.shape(s)[-1] for s in seqs if np.ndim(s) == 2), 1)
    kept = [np.asarray(s, np.float32).reshape(-1, d)[:n][None] for s, n in zip(seqs, lengths)]
    return pad_and_stack(kept, minimum=int(lengths.max())), lengths


def stream_histories(streams: list[str], places: list, texts: list[str]) -> list[list[str]]:
    """For every row, the texts of the rows of the same stream placed before it, oldest first."""
    rows: dict[str, list[int]] = {}
    for i, stream in enumerate(streams):
        rows.setdefault(stream, []).append(i)
    histories: list[list[str]] = [[] for _ in streams]
    for members in rows.values():
        members.sort(key=lambda i: places[i])
        for n, i in enumerate(members):
            histories[i] = [texts[j] for j in members[:n]]
    return histories


def clip_place(clip_id: str) -> tuple:
    """The order of clip ids: by number where they are numbers ("2" before "10"), else as text."""
    return (0, int(clip_id), "") if clip_id.isdigit() else (1, 0, clip_id)


# --------------------------------------------------------------------------------------------
# Native format

def load_native(root: Path) -> Dataset:
    root = Path(root)
    csv_path = root / "utterances.csv"
    if not csv_path.is_file():
        raise DataError(f"{root}: no utterances.csv (expected columns id,text,label,mode)")
    with csv_path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"id", "text", "label", "mode"} - set(reader.fieldnames or ())
        if missing:
            raise DataError(f"{csv_path}: missing columns {sorted(missing)}")
        rows = list(reader)
    ids, seen = [], set()
    for line, row in enumerate(rows, start=2):
        if row["id"] in seen:
            raise DataError(f"{csv_path}:{line}: duplicate id {row['id']!r}")
        if row["mode"] not in SPLITS:
            raise DataError(f"{csv_path}:{line}: mode {row['mode']!r} is not one of {SPLITS}")
        try:
            float(row["label"])
        except ValueError:
            raise DataError(f"{csv_path}:{line}: label {row['label']!r} is not a number") from None
        seen.add(row["id"])
        ids.append(row["id"])
    arrays = {m: _read_modality(root, m, ids) for m in ("audio", "visual")}
    histories = None
    if {"video_id", "clip_id"} <= set(reader.fieldnames):  # streams: the earlier clips of the same video
        histories = stream_histories([row["video_id"] for row in rows], [clip_place(row["clip_id"]) for row in rows],
                                     [row["text"] or "" for row in rows])

    def split(mode: str) -> Split:
        index = [i for i, row in enumerate(rows) if row["mode"] == mode]
        s = Split([ids[i] for i in index], [rows[i]["text"] or "" for i in index],
                  np.array([float(rows[i]["label"]) for i in index], dtype=np.float32),
                  history=None if histories is None else [histories[i] for i in index])
        for m, found in arrays.items():
            if found is not None:
                setattr(s, m, found[0][index])
                setattr(s, f"{m}_lengths", found[1][index])
        return s

    return check_dataset(Dataset(root.name, split("train"), split("valid"), split("test")))


def _read_modality(root: Path, modality: str, ids: list[str]):
    files = sorted(root.glob(f"{modality}*.npz"))
    if not files:
        return None
    if len(files) > 1:
        raise DataError(f"{root}: several {modality}*.npz files ({', '.join(f.name for f in files)}); keep one")
    path = files[0]
    try:
        with np.load(path, allow_pickle=False) as npz:
            contents = {k: npz[k] for k in npz.files}
    except ValueError as e:
        raise DataError(f"{path}: cannot be read without pickle ({e})") from None
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{path}: cannot be read as .npz ({e})") from None
    for key in ("ids", modality):
        if key not in contents:
            raise DataError(f"{path}: missing array {key!r} (has {sorted(contents)})")
    array = contents[modality].astype(np.float32)
    file_ids = [str(i) for i in contents["ids"]]
    if array.ndim == 2:  # one vector per utterance: a sequence of one frame
        array, lengths = array[:, None, :], np.ones(len(array), dtype=np.int64)
    elif array.ndim == 3:
        if "lengths" not in contents:
            raise DataError(f"{path}: a [N, T, d] array needs 'lengths'")
        lengths = contents["lengths"].astype(np.int64)
    else:
        raise DataError(f"{path}: {modality} must be [N, d] or [N, T, d], got {array.shape}")
    if len(file_ids) != len(array):
        raise DataError(f"{path}: {len(file_ids)} ids but {len(array)} rows")
    position = {i: n for n, i in enumerate(file_ids)}
    absent = [i for i in ids if i not in position]
    if absent:
        raise DataError(f"{path}: no {modality} for {len(absent)} utterances, e.g. {absent[:3]}")
    order = np.array([position[i] for i in ids])
    return array[order], lengths[order]


# --------------------------------------------------------------------------------------------
# MMSA pickles (CMU-MOSI / CMU-MOSEI)

MMSA_KEYS = ("raw_text", "audio", "vision", "regression_labels", "id")


def load_mmsa_pickle(path: Path) -> Dataset:
    """MMSA's {train,valid,test} dicts; aligned files carry no lengths (inferred from padding)."""
    path = Path(path)
    data = _unpickle(path)
    splits = {}
    for name in SPLITS:
        if name not in data:
            raise DataError(f"{path}: no {name!r} split (has {sorted(data)})")
        part = data[name]
        missing = [k for k in MMSA_KEYS if k not in part]
        if missing:
            raise DataError(f"{path}/{name}: missing keys {missing}")
        s = Split([str(i) for i in part["id"]], [str(t) for t in part["raw_text"]],
                  np.asarray(part["regression_labels"], dtype=np.float32).reshape(-1))
        for ours, theirs in (("audio", "audio"), ("visual", "vision")):
            array = np.asarray(part[theirs], dtype=np.float32)
            bad = ~np.isfinite(array)
            if bad.any():  # MOSEI's COVAREP holds -inf; MMSA zeroes it, and so do we
                log.warning("%s/%s: %d non-finite %s values set to 0", path.name, name, int(bad.sum()), ours)
                array = np.where(bad, 0.0, array).astype(np.float32)
            lengths = part.get(f"{theirs}_lengths")
            lengths = _lengths_from_padding(array) if lengths is None else np.asarray(lengths, dtype=np.int64)
            setattr(s, ours, array)
            setattr(s, f"{ours}_lengths", np.clip(lengths, 1, array.shape[1]))
        splits[name] = s
    _mmsa_histories(splits)
    return check_dataset(Dataset(path.stem, splits["train"], splits["valid"], splits["test"]))


def _mmsa_histories(splits: dict[str, Split]) -> None:
    """MMSA ids are "<video>$_$<clip>": the earlier clips of the same video, across the splits."""
    every = [(name, i, *sid.split("$_$", 1)) for name, s in splits.items() for i, sid in enumerate(s.ids)]
    if not every or any(len(parts) != 4 for parts in every):
        return
    texts = [splits[name].texts[i] for name, i, _, _ in every]
    histories = stream_histories([video for *_, video, _ in every], [clip_place(clip) for *_, clip in every], texts)
    for name, s in splits.items():
        s.history = [h for (owner, *_), h in zip(every, histories) if owner == name]


def _lengths_from_padding(array: np.ndarray) -> np.ndarray:
    nonzero = np.abs(array).sum(-1) > 0  # [N, T]
    last = array.shape[1] - np.argmax(nonzero[:, ::-1], axis=1)
    return np.where(nonzero.any(1), last, 1).astype(np.int64)


def _unpickle(path: Path):
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        with path.open("rb") as f:
            return pickle.load(f)  # noqa: S301 - only files the user names
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError) as e:
        raise DataError(f"{path}: not a readable pickle ({e})") from None


# --------------------------------------------------------------------------------------------
# UR-FUNNY v2 (humor detection, binary)

URFUNNY_FILES = ("data_folds.pkl", "language_sdk.pkl", "covarep_features_sdk.pkl",
                 "openface_features_sdk.pkl", "humor_label_sdk.pkl")


def load_urfunny(root: Path, max_frames: int | None = None) -> Dataset:
    """Punchline text, word-aligned COVAREP and OpenFace features, humour label 0/1."""
    root = Path(root)
    missing = [f for f in URFUNNY_FILES if not (root / f).is_file()]
    if missing:
        raise DataError(f"{root}: not a UR-FUNNY folder, missing {missing}")
    folds, language, covarep, openface, labels = (_unpickle(root / f) for f in URFUNNY_FILES)
    splits = {}
    for ours, theirs in (("train", "train"), ("valid", "dev"), ("test", "test")):
        if theirs not in folds:
            raise DataError(f"{root}/data_folds.pkl: no {theirs!r} fold (has {sorted(folds)})")
        ids = [i for i in folds[theirs] if i in language and i in labels]
        if len(ids) < len(folds[theirs]):
            log.warning("UR-FUNNY %s: %d ids without text or label skipped", ours, len(folds[theirs]) - len(ids))
        try:
            texts = [str(language[i]["punchline_sentence"]) for i in ids]
            audio = [np.asarray(covarep[i]["punchline_features"], dtype=np.float32) for i in ids]
            visual = [np.asarray(openface[i]["punchline_features"], dtype=np.float32) for i in ids]
        except KeyError as e:
            raise DataError(f"{root}: an entry lacks key {e} (expected punchline_sentence / punchline_features)") from None
        a, al = pad_sequences([np.nan_to_num(x) for x in audio], max_frames, f"UR-FUNNY {ours} audio")
        v, vl = pad_sequences([np.nan_to_num(x) for x in visual], max_frames, f"UR-FUNNY {ours} visual")
        splits[ours] = Split([str(i) for i in ids], texts, np.array([float(labels[i]) for i in ids], np.float32),
                             a, al, v, vl)
    return check_dataset(Dataset("ur-funny", splits["train"], splits["valid"], splits["test"], task="binary"))


# --------------------------------------------------------------------------------------------

def synthetic_dataset(seed: int = 0, **options) -> Dataset:
    """The seeded generator's utterances (trainer/synthetic.py) as a Dataset."""
    from trainer.synthetic import generate
    raw = generate(seed=seed, **options)
    audio, audio_lengths = pad_sequences(raw.audio)
    visual, visual_lengths = pad_sequences(raw.visual)
    histories = stream_histories(raw.streams, list(range(len(raw.ids))), raw.texts)

    def split(name: str) -> Split:
        lo, hi = raw.bounds[name]
        return Split(raw.ids[lo:hi], raw.texts[lo:hi], raw.labels[lo:hi], audio[lo:hi], audio_lengths[lo:hi],
                     visual[lo:hi], visual_lengths[lo:hi], histories[lo:hi])

    return Dataset(raw.name, split("train"), split("valid"), split("test"))


def load_dataset(spec: str, seed: int = 0, **synthetic_options) -> Dataset:
    """`synthetic`, a native directory, an MMSA .pkl, or a UR-FUNNY folder."""
    if spec == "synthetic":
        return check_dataset(synthetic_dataset(seed=seed, **synthetic_options))
    path = Path(spec)
    if not path.exists():
        raise DataError(f"{spec}: no such file or directory (give 'synthetic', a dataset folder "
                        f"with utterances.csv, an MMSA .pkl, or a UR-FUNNY folder)")
    if path.is_file() and path.suffix == ".pkl":
        return load_mmsa_pickle(path)
    if path.is_dir() and (path / "utterances.csv").exists():
        return load_native(path)
    if path.is_dir() and (path / "data_folds.pkl").exists():
        return load_urfunny(path)
    raise DataError(f"{spec}: not a dataset (no utterances.csv, not an MMSA .pkl, not a UR-FUNNY folder)")


# --------------------------------------------------------------------------------------------
# Feature statistics (standardisation)

def feature_stats(split: Split) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-dimension mean and sd of every frame modality over the real frames of a split
    (padding excluded). The model keeps them (TeCaFN.set_feature_stats) and applies them."""
    stats = {}
    for m in ("audio", "visual"):
        array, lengths = getattr(split, m), getattr(split, f"{m}_lengths")
        if array is None:
            continue
        real = np.arange(array.shape[1])[None, :] < lengths[:, None]
        frames = array[real].astype(np.float64)
        stats[m] = (frames.mean(0).astype(np.float32), frames.std(0).astype(np.float32))
    return stats


def _log_cut(lengths: np.ndarray, max_frames: int, what: str) -> None:
    cut = lengths > max_frames
    if cut.any():
        log.warning("%s: %d of %d sequences are longer than max_frames=%d and were cut (longest %d frames); "
                    "raise --max-frames to keep them whole", what, int(cut.sum()), len(lengths), max_frames,
                    int(lengths.max()))


# --------------------------------------------------------------------------------------------
# Batching

def bucketed_batches(lengths: torch.Tensor, batch_size: int, shuffle: bool = False,
                     generator: torch.Generator | None = None, pool: int = BUCKET_POOL) -> list[torch.Tensor]:
    """Batches of indices whose members have similar lengths, so a batch pads to little more
    than its own members. Shuffled: a random permutation is cut into pools of `pool` batches,
    each pool is sorted by length and cut into batches, and the batches are shuffled; every
    sample still comes once per epoch and batch composition changes from epoch to epoch."""
    n = len(lengths)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    batches = []
    step = batch_size * pool
    for start in range(0, n, step):
        chunk = order[start:start + step]
        chunk = chunk[torch.argsort(lengths[chunk], stable=True)]
        batches += list(chunk.split(batch_size))
    if shuffle:
        batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
    return batches


def context_arrays(split: Split, tokenizer, k: int, max_text_tokens: int, max_context_tokens: int,
                   name: str = "split") -> tuple[torch.Tensor, torch.Tensor]:
    """context_ids and context_mask [N, T_c] of a split: each segment's k previous transcripts
    (stream.contract.context_tokens: the worker builds a served segment's context the same way)."""
    if split.history is None:
        raise DataError(f"{name}: a model with context needs each segment's stream and place in it "
                        f"(utterances.csv columns video_id and clip_id), and this data has none")
    previous = [h[-k:] for h in split.history]
    texts = sorted({t for h in previous for t in h})
    pieces = dict(zip(texts, tokenizer(texts, add_special_tokens=False, truncation=True,
                                       max_length=max_text_tokens)["input_ids"])) if texts else {}
    rows = [context_tokens([pieces[t] for t in h], tokenizer.sep_token_id, max_context_tokens) for h in previous]
    width = max([0, *map(len, rows)])
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, :len(row)] = 1
    return ids, mask


def batcher_options(ckpt: dict) -> dict:
    """How a checkpoint's segments are batched (Batcher's options): its token and frame limits,
    and its context."""
    return dict(max_text_tokens=ckpt["max_text_tokens"], max_frames=ckpt["max_frames"],
                context=ckpt["config"].get("context", 0),
                max_context_tokens=ckpt.get("max_context_tokens", DEFAULT_MAX_CONTEXT_TOKENS))


class Batcher:
    """Tokenizes a split once and yields padded tensor batches for the model."""

    def __init__(self, split: Split, tokenizer, max_text_tokens: int = 50,
                 max_frames: int | None = DEFAULT_MAX_FRAMES, name: str = "split", context: int = 0,
                 max_context_tokens: int = DEFAULT_MAX_CONTEXT_TOKENS):
        """context: k, the previous transcripts each segment gets as context_ids / context_mask (0: none)."""
        self.split = split
        enc = tokenizer(split.texts, padding="max_length", truncation=True, max_length=max_text_tokens,
                        return_tensors="pt")
        self.input_ids, self.attention_mask = enc["input_ids"], enc["attention_mask"]
        self.context = context_arrays(split, tokenizer, context, max_text_tokens, max_context_tokens, name) \
            if context else None
        self.labels = torch.from_numpy(split.labels)
        self.seq = {}
        for m in ("audio", "visual"):
            array, lengths = getattr(split, m), getattr(split, f"{m}_lengths")
            if array is not None:
                t = array.shape[1] if max_frames is None else min(max_frames, array.shape[1])
                if max_frames is not None:
                    _log_cut(lengths, max_frames, f"{name} {m}")
                self.seq[m] = (torch.from_numpy(np.ascontiguousarray(array[:, :t])),
                               torch.from_numpy(np.minimum(lengths, t)))
        # The cost of a sample: its text tokens, then its longest frame sequence.
        frames = torch.stack([lengths for _, lengths in self.seq.values()]).amax(0) if self.seq \
            else torch.zeros(len(split), dtype=torch.long)
        longest = int(frames.max()) if len(frames) else 0
        tokens = self.attention_mask.sum(1).long() + (0 if self.context is None else self.context[1].sum(1))
        self.cost = tokens * (longest + 1) + frames

    def __len__(self) -> int:
        return len(self.split)

    def batch(self, index: torch.Tensor, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        # Trim padding to the longest member so short batches run fast.
        mask = self.attention_mask[index]
        t_len = max(1, int(mask.sum(1).max()))
        out = {"input_ids": self.input_ids[index, :t_len], "attention_mask": mask[:, :t_len],
               "labels": self.labels[index]}
        if self.context is not None:
            ids, context_mask = self.context[0][index], self.context[1][index]
            c_len = int(context_mask.sum(1).max())
            out["context_ids"], out["context_mask"] = ids[:, :c_len], context_mask[:, :c_len]
        for m, (array, lengths) in self.seq.items():
            lens = lengths[index]
            out[m] = array[index, : int(lens.max())]
            out[f"{m}_lengths"] = lens
        return {k: v.to(device) for k, v in out.items()}

    def order(self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None,
              bucket: bool = True) -> list[torch.Tensor]:
        """The index batches of one pass: length-bucketed, or plain consecutive slices."""
        if bucket:
            return bucketed_batches(self.cost, batch_size, shuffle, generator)
        order = torch.randperm(len(self), generator=generator) if shuffle else torch.arange(len(self))
        return list(order.split(batch_size))

    def batches(self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None,
                device="cpu", bucket: bool = True):
        for index in self.order(batch_size, shuffle, generator, bucket):
            yield self.batch(index, device)
