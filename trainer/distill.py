"""Distillation: a student (MiniLM, say) learns from a teacher's scores as well as the labels.

`tecaflow train --teacher RUN_DIR [--distill-weight α]`: the task loss becomes

    L_task = (1 - α) · L(prediction, label) + α · L(prediction, teacher's score)

with L the task's own loss (MAE for regression; for binary tasks cross-entropy against the
teacher's probability), and the rest of TeCaFN's loss as it is. The teacher is the run directory
of any trained model: its checkpoint.pt, or with several seeds (seed_*/checkpoint.pt) the mean of
their scores, an ensemble. Teacher and student need not share an encoder, a tokenizer or input
limits: the teacher reads the training split through its own checkpoint's.

The teacher's scores on the training split are computed once and kept in the teacher's run
directory (teacher_scores/), named by a digest of its checkpoints and of the split, so that the
students of a sweep (several α, several seeds) share them and a changed teacher or split is never
served stale scores.
"""
from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from stream.errors import UserError
from stream.packaged import sha256_of
from trainer.data import Dataset, Split

log = logging.getLogger(__name__)

DEFAULT_WEIGHT = 0.5
SCORES_DIR = "teacher_scores"


def teacher_checkpoints(run_dir: Path) -> list[Path]:
    """The teacher's checkpoint, or its seeds' checkpoints, or the UserError that says what is missing."""
    run_dir = Path(run_dir)
    if (run_dir / "checkpoint.pt").is_file():
        return [run_dir / "checkpoint.pt"]
    seeds = sorted(run_dir.glob("seed_*/checkpoint.pt"))
    if not seeds:
        raise UserError(f"--teacher {run_dir}: no checkpoint.pt there nor in seed_*/ (give a `tecaflow train` "
                        f"run directory)")
    return seeds


def split_digest(split: Split) -> str:
    """What the teacher's scores depend on in the split: its ids (which order context), texts, labels and frames."""
    digest = hashlib.sha256()
    for text in (*split.ids, *split.texts):
        digest.update(text.encode() + b"\0")
    for array in (split.labels, split.audio, split.audio_lengths, split.visual, split.visual_lengths):
        if array is not None:
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def teacher_scores(run_dir: Path, dataset: Dataset, score: Callable[[Path, Split], np.ndarray]) -> torch.Tensor:
    """The teacher's score for every training sample, in the split's order: from its cache, or
    computed now by `score(checkpoint, split)` (then kept)."""
    checkpoints = teacher_checkpoints(run_dir)
    split = dataset.split("train")
    key = hashlib.sha256("".join(sha256_of(c) for c in checkpoints).encode() + split_digest(split).encode())
    path = Path(run_dir) / SCORES_DIR / f"{dataset.name}-train-{key.hexdigest()[:16]}.npy"
    if path.is_file():
        scores = np.load(path)
        log.info("teacher %s: its %d training scores from %s", run_dir, len(scores), path)
    else:
        scores = np.mean([score(c, split) for c in checkpoints], axis=0).astype(np.float32)
        path.parent.mkdir(exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.npy")
        np.save(partial, scores)
        os.replace(partial, path)  # whole or not at all, for a student starting beside this one
        log.info("teacher %s (%d checkpoint%s): %d training scores, kept in %s", run_dir, len(checkpoints),
                 "s" * (len(checkpoints) > 1), len(scores), path)
    return torch.from_numpy(scores)


def distilled(model, out, losses: dict[str, torch.Tensor], teacher: torch.Tensor, weight: float) -> dict:
    """`losses` with L_task mixed with the same loss against the teacher's scores, and the total with it."""
    target = torch.sigmoid(teacher) if model.config.task == "binary" else teacher  # logits -> probabilities
    toward_teacher = model.loss(out, target)["L_task"]
    task = (1 - weight) * losses["L_task"] + weight * toward_teacher
    return {**losses, "L_task": task, "total": losses["total"] - losses["L_task"] + task}
