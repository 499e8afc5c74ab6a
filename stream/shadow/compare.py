"""How far a candidate's scores and alerts are from the live model's, on the same segments: pure
numpy, no I/O.

Distributions (the two sets of scores, paired or not):
    wasserstein   the 1-Wasserstein distance (the area between the two empirical CDFs), divided by
                  the live scores' standard deviation: 1.0 moves every score by one within-stream
                  spread, whatever the scale of the labels
    ks            Kolmogorov-Smirnov statistic: the largest gap between the two CDFs
    psi           population stability index over the live scores' deciles
Agreement (the same segments, pair by pair): MAE, Pearson correlation, sign agreement, and 7-class
agreement (scores rounded and clipped to [-3, 3], as Acc-7 is computed).
Alerts: an alert of one is matched by an alert of the other on the same stream, in the same
direction, within `tolerance` segments; the candidate's precision and recall against the live
alerts, their Jaccard index, and the alerts left unmatched on either side.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PSI_BINS = 10
PSI_FLOOR = 1e-4  # a share of 0 in a bin would make PSI infinite
HISTOGRAM_EDGES = np.linspace(-3, 3, 25)  # the label range in quarter points


def cdf_gaps(live: np.ndarray, candidate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """|F_live - F_candidate| on each interval between consecutive pooled values, and the
    intervals' widths."""
    pooled = np.sort(np.concatenate([live, candidate]))
    f_live = np.searchsorted(np.sort(live), pooled, side="right") / len(live)
    f_candidate = np.searchsorted(np.sort(candidate), pooled, side="right") / len(candidate)
    return np.abs(f_live - f_candidate), np.diff(pooled, append=pooled[-1])


def wasserstein(live: np.ndarray, candidate: np.ndarray) -> float:
    gaps, widths = cdf_gaps(live, candidate)
    distance = float(np.sum(gaps * widths))
    spread = float(np.std(live))
    return distance / spread if spread > 0 else (0.0 if distance == 0 else float("inf"))


def ks(live: np.ndarray, candidate: np.ndarray) -> float:
    return float(np.max(cdf_gaps(live, candidate)[0]))


def psi(live: np.ndarray, candidate: np.ndarray, bins: int = PSI_BINS) -> float:
    """sum over bins of (c - l) * ln(c / l), the bins cut at the live scores' quantiles."""
    edges = np.unique(np.quantile(live, np.linspace(0, 1, bins + 1)[1:-1]))
    l_share = np.bincount(np.searchsorted(edges, live, side="right"), minlength=len(edges) + 1) / len(live)
    c_share = np.bincount(np.searchsorted(edges, candidate, side="right"), minlength=len(edges) + 1) / len(candidate)
    l_share, c_share = np.maximum(l_share, PSI_FLOOR), np.maximum(c_share, PSI_FLOOR)
    return float(np.sum((c_share - l_share) * np.log(c_share / l_share)))


def seven_class(scores: np.ndarray) -> np.ndarray:
    return np.round(np.clip(scores, -3, 3)).astype(int)


def correlation(a: np.ndarray, b: np.ndarray) -> float | None:
    """Pearson's r; None where either side is constant (r is undefined)."""
    if len(a) < 2 or np.std(a) == 0 or np.std(b) == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def scores(live: np.ndarray, candidate: np.ndarray) -> dict:
    """Every distance and agreement of two paired score arrays (the same segments, in order)."""
    live, candidate = np.asarray(live, float), np.asarray(candidate, float)
    if len(live) == 0:
        return {"segments": 0}
    return {"segments": int(len(live)),
            "wasserstein": wasserstein(live, candidate), "ks": ks(live, candidate), "psi": psi(live, candidate),
            "mae": float(np.mean(np.abs(live - candidate))), "correlation": correlation(live, candidate),
            "sign_agreement": float(np.mean(np.sign(live) == np.sign(candidate))),
            "class7_agreement": float(np.mean(seven_class(live) == seven_class(candidate))),
            "live_mean": float(np.mean(live)), "candidate_mean": float(np.mean(candidate))}


def histogram(live: np.ndarray, candidate: np.ndarray) -> dict:
    """Both score distributions over the same bins, as shares, to be drawn side by side."""
    def shares(x):
        counts, _ = np.histogram(np.clip(x, -3, 3), HISTOGRAM_EDGES)
        return (counts / max(1, len(x))).tolist()
    return {"edges": HISTOGRAM_EDGES.tolist(), "live": shares(np.asarray(live, float)),
            "candidate": shares(np.asarray(candidate, float))}


def contributions_moved(live: list[dict], candidate: list[dict]) -> dict[str, float]:
    """Per side, the mean absolute change of how far that side moved a score (candidate minus live),
    over the segments both models attributed."""
    moved: dict[str, list[float]] = {}
    for l_side, c_side in zip(live, candidate):
        for side in set(l_side or {}) & set(c_side or {}):
            moved.setdefault(side, []).append(abs(c_side[side] - l_side[side]))
    return {side: float(np.mean(v)) for side, v in sorted(moved.items())}


@dataclass(frozen=True)
class AlertMark:
    """An alert where it was raised: its stream, its position in the stream (segments), its direction."""
    stream: str
    position: int
    direction: str
    id: str | None = None
    event_time: float | None = None  # of the score that raised it, to open the stream there


def alerts(live: list[AlertMark], candidate: list[AlertMark], tolerance: int) -> dict:
    """Match each candidate alert to the nearest unmatched live alert of its stream and direction
    within `tolerance` segments (nearest pairs first)."""
    pairs = sorted((abs(c.position - l.position), i, j) for i, c in enumerate(candidate)
                   for j, l in enumerate(live)
                   if c.stream == l.stream and c.direction == l.direction and abs(c.position - l.position) <= tolerance)
    used_c, used_l = set(), set()
    for _, i, j in pairs:
        if i not in used_c and j not in used_l:
            used_c.add(i)
            used_l.add(j)
    matched = len(used_c)
    union = len(live) + len(candidate) - matched
    return {"live": len(live), "candidate": len(candidate), "matched": matched,
            "precision": matched / len(candidate) if candidate else None,
            "recall": matched / len(live) if live else None,
            "jaccard": matched / union if union else 1.0,
            "only_live": [vars(a) for j, a in enumerate(live) if j not in used_l],
            "only_candidate": [vars(a) for i, a in enumerate(candidate) if i not in used_c]}
