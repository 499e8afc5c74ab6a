"""Synthetic score series shaped like the model's real output, for `tecaflow bench detect` and
the detector's tests.

Per stream: a level in [-1, 1.5]; AR(1) noise with a marginal sd drawn from SD_RANGE (about 0.75,
the within-stream spread of TeCaFN scores) and a lag-1 correlation from RHO_RANGE (mild: nearby
utterances share a topic); OUTLIER_RATE of segments replaced by a uniform score in [-3, 3] (the
model misreads one line); bursts of near-duplicates (a repost, a chant) starting at BURST_RATE per
segment and lasting 3-10 segments, each within 0.01 of the burst's first score; scores clipped to
the model's range [-3, 3]; event times about 2 s apart with an occasional gap of minutes.
An optional step of `delta` from segment `shift_at` on.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SD_RANGE = (0.65, 0.85)
RHO_RANGE = (0.0, 0.2)
OUTLIER_RATE = 0.01
BURST_RATE = 0.01
GAP_RATE = 0.005


@dataclass
class Series:
    times: np.ndarray
    scores: np.ndarray
    level: float
    sd: float
    rho: float
    shift_at: int | None = None
    delta: float = 0.0


def generate(rng: np.random.Generator, length: int, shift_at: int | None = None, delta: float = 0.0) -> Series:
    level = rng.uniform(-1.0, 1.5)
    sd, rho = rng.uniform(*SD_RANGE), rng.uniform(*RHO_RANGE)
    innovations = rng.normal(0.0, sd * np.sqrt(1 - rho * rho), length)
    noise = np.empty(length)
    noise[0] = rng.normal(0.0, sd)
    for i in range(1, length):
        noise[i] = rho * noise[i - 1] + innovations[i]
    x = level + noise
    if shift_at is not None:
        x[shift_at:] += delta
    outliers = rng.random(length) < OUTLIER_RATE
    x[outliers] = rng.uniform(-3.0, 3.0, outliers.sum())
    i = 0
    while i < length:
        if rng.random() < BURST_RATE:
            n = int(rng.integers(3, 11))
            x[i + 1:i + n] = x[i] + rng.uniform(-0.01, 0.01, len(x[i + 1:i + n]))
            i += n
        else:
            i += 1
    gaps = np.where(rng.random(length) < GAP_RATE, rng.uniform(60, 600, length), rng.exponential(2.0, length))
    return Series(1.764e9 + np.cumsum(gaps), np.clip(x, -3.0, 3.0), level, sd, rho, shift_at, delta)
