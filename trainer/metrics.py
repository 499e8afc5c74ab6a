"""Evaluation metrics as the multimodal sentiment literature computes them (MMSA / MMIM).

Regression (CMU-MOSI, CMU-MOSEI), predictions and labels in [-3, 3]:
    mae        mean absolute error
    corr       Pearson correlation
    acc7       7-class accuracy after clipping to [-3, 3] and rounding to the nearest integer
    acc2_has0  / f1_has0   negative (< 0) vs non-negative (>= 0), every sample
    acc2_non0  / f1_non0   negative vs positive, samples whose label is exactly 0 left out
F1 is the support-weighted F1 over the two classes.
Binary (UR-FUNNY): acc2, the accuracy of logit > 0 against the 0/1 label.
"""
from __future__ import annotations

import numpy as np


def weighted_f1(truth: np.ndarray, pred: np.ndarray) -> float:
    """Support-weighted F1 over the classes present in truth (as sklearn's average='weighted')."""
    truth, pred = np.asarray(truth, bool), np.asarray(pred, bool)
    total, score = len(truth), 0.0
    for cls in (False, True):
        support = np.sum(truth == cls)
        if support == 0:
            continue
        tp = np.sum((pred == cls) & (truth == cls))
        predicted = np.sum(pred == cls)
        precision = tp / predicted if predicted else 0.0
        recall = tp / support
        f1 = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
        score += f1 * support / total
    return float(score)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else 0.0


def regression_metrics(pred, truth) -> dict[str, float]:
    pred = np.asarray(pred, dtype=np.float64).reshape(-1)
    truth = np.asarray(truth, dtype=np.float64).reshape(-1)
    if pred.shape != truth.shape or pred.size == 0:
        raise ValueError(f"need equally long non-empty predictions and labels, got {pred.shape} and {truth.shape}")
    non0 = truth != 0
    out = {
        "mae": float(np.mean(np.abs(pred - truth))),
        "corr": pearson(pred, truth),
        "acc7": float(np.mean(np.round(np.clip(pred, -3, 3)) == np.round(np.clip(truth, -3, 3)))),
        "acc2_has0": float(np.mean((pred >= 0) == (truth >= 0))),
        "f1_has0": weighted_f1(truth >= 0, pred >= 0),
        "acc2_non0": float(np.mean((pred[non0] > 0) == (truth[non0] > 0))) if non0.any() else float("nan"),
        "f1_non0": weighted_f1(truth[non0] > 0, pred[non0] > 0) if non0.any() else float("nan"),
    }
    return out


def binary_metrics(logits, truth) -> dict[str, float]:
    logits = np.asarray(logits, dtype=np.float64).reshape(-1)
    truth = np.asarray(truth).reshape(-1) > 0.5
    return {"acc2": float(np.mean((logits > 0) == truth)), "f1": weighted_f1(truth, logits > 0)}


def compute_metrics(pred, truth, task: str = "regression") -> dict[str, float]:
    return binary_metrics(pred, truth) if task == "binary" else regression_metrics(pred, truth)


def summarise(runs: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Every metric of several runs (seeds) as {"mean", "sd", "n"}; sd is the sample sd (n - 1)."""
    if not runs:
        raise ValueError("nothing to summarise")
    out = {}
    for key in runs[0]:
        values = np.array([r[key] for r in runs], dtype=np.float64)
        out[key] = {"mean": float(np.mean(values)),
                    "sd": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0, "n": len(values)}
    return out
