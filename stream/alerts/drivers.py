"""What moved when a stream's sentiment shifted: an alert's drivers. No Faust, no Redis in here.

A brand team's first question after "sentiment dropped" is "about what?". The drivers answer it
from the stream's recent segments as Redis keeps them (tf:{s}:recent: id, event time, score,
transcript and, where the model gave them, the text-only score and each side's contribution),
split at the alert's change point into the shifted window (change point to the alert) and the
REFERENCE_SEGMENTS before it:

- segments: the shifted window's segments that pushed the statistic hardest, i.e. those farthest
  from the reference mean in the alert's direction (ids and transcripts);
- modalities: how far the mean text-only score (the words) and each side's mean contribution
  (score minus the score without that side: the voice, the face) moved against the reference,
  and which of them moved most in the alert's direction;
- terms: words over-represented in the shifted window's transcripts against the reference's,
  by the log-odds ratio with an informative Dirichlet prior ("Fightin' Words", Monroe, Colaresi
  & Quinn 2008, eq. 22 and 24), the prior being the two windows' pooled counts.

Everything is a pure function of the segments given, ties broken by id and term, so an alert's
drivers come out the same whoever computes them, before or after a worker restart.
"""
from __future__ import annotations

import math
import re
from collections import Counter

from stream.schema import SIDES

TOP_SEGMENTS = 5
REFERENCE_SEGMENTS = 100  # recent segments before the change point the window is compared with
TOP_TERMS = 8
MIN_TERM_Z = 1.96  # a term must be over-represented at the 5 % level to count as a driver
PRIOR_SCALE = 1.0  # prior counts per pooled count: alpha_w = PRIOR_SCALE x (window + reference count of w)
_WORD = re.compile(r"[^\W_](?:[\w']*[^\W_])?")


def words(text: str) -> list[str]:
    """A transcript's words, lower-cased (letters and digits, inner apostrophes kept)."""
    return _WORD.findall(text.lower())


def split_at_change_point(recent: list[dict], change_at: float, alert_at: float) -> tuple[list[dict], list[dict]]:
    """(shifted window, reference) of the recent segments, oldest first: the window from the change
    point's event time to the alert's, the reference the REFERENCE_SEGMENTS before the change
    point; later segments (recorded in the same batch after the alert) belong to neither. A fixed
    reference length keeps the drivers the same when detection runs again later (a redelivered
    batch), after newer segments have pushed older ones out of the recent list."""
    ordered = sorted(recent, key=lambda s: (s["event_time"], s["segment_id"]))
    window = [s for s in ordered if change_at <= s["event_time"] <= alert_at]
    reference = [s for s in ordered if s["event_time"] < change_at][-REFERENCE_SEGMENTS:]
    return window, reference


def top_segments(window: list[dict], reference_mean: float, direction: str, top: int = TOP_SEGMENTS) -> list[dict]:
    sign = 1.0 if direction == "up" else -1.0
    ranked = sorted(window, key=lambda s: (-sign * (s["score"] - reference_mean), s["segment_id"]))
    return [{"segment_id": s["segment_id"], "event_time": s["event_time"], "score": round(s["score"], 4),
             "text": s.get("text", "")} for s in ranked[:top]]


def _components(segment: dict) -> dict[str, float] | None:
    """words: the text-only score; each side: its contribution. None without attribution."""
    if segment.get("text_only") is None or segment.get("contributions") is None:
        return None
    return {"words": float(segment["text_only"]),
            **{side: float(v) for side, v in segment["contributions"].items() if side in SIDES}}


def modality_change(window: list[dict], reference: list[dict], direction: str) -> dict | None:
    """Mean of each component in the window minus in the reference, over the segments that had
    it; `moved_most`: the component that moved furthest in the alert's direction. None when either
    side has no attributed segment."""
    def means(segments):
        sums, counts = Counter(), Counter()
        for parts in filter(None, map(_components, segments)):
            sums.update(parts)
            counts.update(parts.keys())
        return {name: sums[name] / counts[name] for name in counts}, counts
    (after, n_after), (before, n_before) = means(window), means(reference)
    names = [name for name in ("words", *SIDES) if name in after and name in before]
    if not names:
        return None
    change = {name: round(after[name] - before[name], 4) for name in names}
    sign = 1.0 if direction == "up" else -1.0
    return {"change": change, "moved_most": max(names, key=lambda name: (sign * change[name], name == "words")),
            "segments": {"window": n_after["words"], "reference": n_before["words"]}}


def fightin_words(window_texts: list[str], reference_texts: list[str], top: int = TOP_TERMS,
                  prior_scale: float = PRIOR_SCALE, min_z: float = MIN_TERM_Z) -> list[dict]:
    """Terms over-represented in the window against the reference: z-scores of the log-odds ratio
    with an informative Dirichlet prior (alpha_w = prior_scale x pooled count of w), best first,
    those with z >= min_z only."""
    a, b = Counter(w for t in window_texts for w in words(t)), Counter(w for t in reference_texts for w in words(t))
    n_a, n_b = sum(a.values()), sum(b.values())
    if not n_a or not n_b:
        return []
    prior = {w: prior_scale * (a[w] + b[w]) for w in a}
    alpha0 = prior_scale * (n_a + n_b)
    scored = []
    for w, alpha in prior.items():
        rest_a, rest_b = n_a + alpha0 - a[w] - alpha, n_b + alpha0 - b[w] - alpha
        if rest_a <= 0 or rest_b <= 0:
            continue  # the only word on both sides: its odds are infinite on both, and equal
        delta = math.log((a[w] + alpha) / rest_a) - math.log((b[w] + alpha) / rest_b)
        z = delta / math.sqrt(1 / (a[w] + alpha) + 1 / (b[w] + alpha))
        if z >= min_z:
            scored.append((-z, w))
    return [{"term": w, "z": round(-z, 3), "window": a[w], "reference": b[w]} for z, w in sorted(scored)[:top]]


def drivers(recent: list[dict], change_at: float, alert_at: float, reference_mean: float, direction: str) -> dict:
    """An alert's drivers from the stream's recent segments (as TrendStore.recent gives them)."""
    window, reference = split_at_change_point(recent, change_at, alert_at)
    return {"segments": top_segments(window, reference_mean, direction),
            "modalities": modality_change(window, reference, direction),
            "terms": fightin_words([s.get("text", "") for s in window], [s.get("text", "") for s in reference]),
            "window_segments": len(window), "reference_segments": len(reference)}


def summary(d: dict) -> str:
    """One line: what moved, for the webhook, `tecaflow trends` and the dashboard."""
    if not d:
        return ""
    parts = []
    if d.get("terms"):
        parts.append("about " + ", ".join(f"“{t['term']}”" for t in d["terms"][:5]))
    if d.get("modalities"):
        m = d["modalities"]
        name = {"words": "the words", "audio": "the voice", "visual": "the face"}.get(m["moved_most"], m["moved_most"])
        parts.append(f"{name} moved most ({m['change'][m['moved_most']]:+.2f})")
    return "; ".join(parts)
