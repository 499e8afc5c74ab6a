"""Sentiment shift detection on one stream's series of scores: a two-window mean test.

The recent window (the last `recent` scores) is compared with the reference window (the
`reference` scores before it). z = (mean_recent - mean_ref) / sqrt(var_ref/n_ref + var_rec/n_rec).
An alert needs:
    |z| >= z                     the shift is large against the noise (standard-error units),
    |mean difference| >= min_delta   and large in score units (tiny but certain shifts are not news),
    armed                        after an alert the detector disarms until |z| < rearm_z (hysteresis),
    cooldown_s                   event-time seconds since the stream's last alert.
The reference and recent windows must both be full (the minimum count).

The state is a small dict the caller stores (in Redis): `evaluated` is how many segments of the
stream have been looked at, so a redelivered batch re-runs nothing and loses nothing.
"""
from __future__ import annotations

import math

from stream.config import DetectorParams

VARIANCE_FLOOR = 1e-4  # a perfectly flat window would make any change infinitely significant


def initial_state() -> dict:
    return {"armed": True, "last_alert": None, "evaluated": 0}


def _mean_var(xs: list[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    return m, sum((x - m) ** 2 for x in xs) / max(1, len(xs) - 1)


def two_window_test(scores: list[float], params: DetectorParams) -> tuple[float, float, float, float] | None:
    """(z, delta, mean_ref, mean_recent) for the last scores, or None when too few."""
    need = params.reference + params.recent
    if len(scores) < need:
        return None
    ref = scores[-need:-params.recent]
    rec = scores[-params.recent:]
    m_ref, v_ref = _mean_var(ref)
    m_rec, v_rec = _mean_var(rec)
    se = math.sqrt(max(v_ref, VARIANCE_FLOOR) / len(ref) + max(v_rec, VARIANCE_FLOOR) / len(rec))
    return (m_rec - m_ref) / se, m_rec - m_ref, m_ref, m_rec


def scan(stream: str, window: list[tuple[float, float]], total: int, state: dict, params: DetectorParams
         ) -> tuple[list[dict], dict]:
    """Evaluate every segment not yet evaluated.

    window: (event_time, score) of the stream's last segments, oldest first; its last item is
    segment number `total` of the stream. Returns (alerts, new state)."""
    state = {**initial_state(), **state}
    alerts = []
    first = max(state["evaluated"] + 1, total - len(window) + 1)
    for position in range(first, total + 1):
        upto = len(window) - (total - position)  # window[:upto] ends at this segment
        series = [s for _, s in window[:upto]]
        result = two_window_test(series, params)
        if result is None:
            continue
        z, delta, m_ref, m_rec = result
        t = window[upto - 1][0]
        if not state["armed"]:
            if abs(z) < params.rearm_z:
                state["armed"] = True
            continue
        cooled = state["last_alert"] is None or t - state["last_alert"] >= params.cooldown_s
        if abs(z) >= params.z and abs(delta) >= params.min_delta and cooled:
            need = params.reference + params.recent
            alerts.append({
                "stream_id": stream, "event_time": t, "direction": "up" if delta > 0 else "down",
                "magnitude": round(delta, 4), "z": round(z, 3),
                "reference": {"mean": round(m_ref, 4), "n": params.reference, "from": window[upto - need][0],
                              "to": window[upto - params.recent - 1][0]},
                "recent": {"mean": round(m_rec, 4), "n": params.recent, "from": window[upto - params.recent][0],
                           "to": t},
            })
            state["armed"] = False
            state["last_alert"] = t
    state["evaluated"] = max(state["evaluated"], total)
    return alerts, state
