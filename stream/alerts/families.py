"""Families of synthetic score streams, each with one way real streams differ from the bench's
standard mix (stream/alerts/synthetic_scores.py), for `tecaflow bench detect`: a detector
calibrated on one noise shape must keep its false-alarm promise on the others.

Every family draws, per stream, a level in [-1, 1.5] and a noise scale (marginal sd) in SD_RANGE,
and builds the noise as a Gaussian copula: an AR(1) series of standard normals with lag-1
correlation phi, mapped through the marginal's quantile function. A Gaussian marginal gives plain
AR(1) noise; a skewed heavy-tailed one gives noise with that marginal and (nearly) that
autocorrelation. Event times are 0.5-5 s apart with gaps of 30 s to 30 min (GAP_RATE).

    gaussian         Gaussian marginal, phi in [0, 0.2], nothing else
    heavy-tailed     a skewed heavy-tailed marginal (HEAVY_TAILED, standardised), phi in [0, 0.3]
    near-duplicates  Gaussian, bursts of 3-10 copies of the burst's first score +-0.05
    early-shifts     Gaussian, shifts 20-60 segments after the warm-up, not 200-500
    autocorrelated   Gaussian, phi in [0.2, 0.3]
    outliers         Gaussian, 2 % of segments misread at +-(2.3 ... 3)
    mixture          all of the above at once: heavy tails, phi in [0, 0.3], 0-2 % outliers,
                     bursts, early shifts for half the shifted streams
    standard         the bench's original mix (synthetic_scores.generate)

The heavy-tailed marginal is a sinh-arcsinh transform of a normal (Jones & Pewsey 2009) with skew
and tail weight chosen to look like TeCaFN's within-stream residuals as the issue describes them
(skewed, heavier tails than a Gaussian): it is a stand-in, not a sample of a replay. A real
replay's residuals (one number a line) can replace it: `tecaflow bench detect --residuals FILE`
(empirical_marginal).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from scipy.special import ndtr

from stream.alerts import synthetic_scores
from stream.alerts.synthetic_scores import Series
from stream.errors import UserError

SD_RANGE = synthetic_scores.SD_RANGE
GAP_RATE = 0.005
BURST_TOL = 0.05
OUTLIER_RANGE = (2.3, 3.0)
EARLY_AFTER_WARMUP = (20, 60)
# sinh-arcsinh: X = sinh((asinh(Z) + SKEW) / TAIL); TAIL < 1 thickens both tails, SKEW < 0 leans left
HEAVY_TAILED = {"skew": -0.35, "tail": 0.75}
_MARGINAL_GRID = 4097  # quantile-table resolution: 1/4096 of probability between nodes


class Marginal:
    """A noise marginal with mean 0 and sd 1, as a quantile function tabulated once."""

    def __init__(self, name: str, sample: np.ndarray):
        sample = np.sort(np.asarray(sample, float))
        sample = (sample - sample.mean()) / sample.std()
        self.name = name
        self._table = np.quantile(sample, np.linspace(0.0, 1.0, _MARGINAL_GRID))

    def quantile(self, u: np.ndarray) -> np.ndarray:
        return np.interp(u * (_MARGINAL_GRID - 1), np.arange(_MARGINAL_GRID), self._table)


def sinh_arcsinh_marginal(skew: float, tail: float, draws: int = 400_000) -> Marginal:
    z = np.random.default_rng(0).standard_normal(draws)  # a fixed table: the same marginal every run
    return Marginal(f"sinh-arcsinh(skew {skew}, tail {tail})", np.sinh((np.arcsinh(z) + skew) / tail))


def empirical_marginal(path: Path) -> Marginal:
    """A replay's within-stream residuals (score minus its stream's mean), one number a line."""
    try:
        values = np.loadtxt(path, dtype=float, ndmin=1)
    except (OSError, ValueError) as e:
        raise UserError(f"--residuals {path}: expected one number a line ({e})") from None
    if values.size < 100 or not np.isfinite(values).all() or values.std() == 0:
        raise UserError(f"--residuals {path}: need at least 100 finite, not all equal residuals, got {values.size}")
    return Marginal(f"residuals of {Path(path).name}", values)


def _copula_noise(rng: np.random.Generator, length: int, phi: float, marginal: Marginal | None) -> np.ndarray:
    """Unit-sd noise: AR(1) standard normals (lag-1 correlation phi) through the marginal."""
    e = rng.standard_normal(length) * math.sqrt(1 - phi * phi)
    z = np.empty(length)
    z[0] = rng.standard_normal()
    for i in range(1, length):
        z[i] = phi * z[i - 1] + e[i]
    return z if marginal is None else marginal.quantile(ndtr(z))


def _bursts(rng: np.random.Generator, x: np.ndarray, rate: float) -> None:
    """Bursts of 3-10 near-duplicates: the burst's first score again, +-BURST_TOL."""
    i = 0
    while i < len(x):
        if rng.random() < rate:
            n = int(rng.integers(3, 11))
            x[i + 1:i + n] = x[i] + rng.uniform(-BURST_TOL, BURST_TOL, len(x[i + 1:i + n]))
            i += n
        else:
            i += 1


def _event_times(rng: np.random.Generator, length: int) -> np.ndarray:
    gaps = np.where(rng.random(length) < GAP_RATE, rng.uniform(30, 1800, length), rng.uniform(0.5, 5.0, length))
    return 1.764e9 + np.cumsum(gaps)


def _stream(rng, length, shift_at, delta, *, phi_range=(0.0, 0.2), marginal=None, outlier_rate=0.0,
            burst_rate=0.0) -> Series:
    level, sd, phi = rng.uniform(-1.0, 1.5), rng.uniform(*SD_RANGE), rng.uniform(*phi_range)
    x = level + sd * _copula_noise(rng, length, phi, marginal)
    if shift_at is not None:
        x[shift_at:] += delta
    outliers = rng.random(length) < outlier_rate
    x[outliers] = rng.choice((-1.0, 1.0), outliers.sum()) * rng.uniform(*OUTLIER_RANGE, outliers.sum())
    _bursts(rng, x, burst_rate)
    return Series(_event_times(rng, length), np.clip(x, -3.0, 3.0), level, sd, phi, shift_at, delta)


class Family:
    """A generator of streams: `generate(rng, length, shift_at, delta)` like synthetic_scores', and
    `shift_at(rng, warmup)`, where its shifts begin."""

    def __init__(self, name: str, make, early: float = 0.0):
        self.name, self._make, self.early = name, make, early

    def generate(self, rng, length, shift_at=None, delta=0.0) -> Series:
        return self._make(rng, length, shift_at, delta)

    def shift_at(self, rng: np.random.Generator, warmup: int) -> int:
        """Standard shifts begin 300-600 segments in; `early` of them 20-60 after the warm-up."""
        if rng.random() < self.early:
            return warmup + int(rng.integers(*EARLY_AFTER_WARMUP))
        return int(rng.integers(300, 600))


def families(marginal: Marginal | None = None) -> dict[str, Family]:
    """Every family by name; `marginal` replaces the heavy-tailed stand-in."""
    heavy = marginal or sinh_arcsinh_marginal(**HEAVY_TAILED)
    return {f.name: f for f in (
        Family("standard", lambda rng, n, at, d: synthetic_scores.generate(rng, n, at, d)),
        Family("gaussian", lambda rng, n, at, d: _stream(rng, n, at, d)),
        Family("heavy-tailed", lambda rng, n, at, d: _stream(rng, n, at, d, phi_range=(0.0, 0.3), marginal=heavy)),
        Family("near-duplicates", lambda rng, n, at, d: _stream(rng, n, at, d, burst_rate=0.02)),
        Family("early-shifts", lambda rng, n, at, d: _stream(rng, n, at, d), early=1.0),
        Family("autocorrelated", lambda rng, n, at, d: _stream(rng, n, at, d, phi_range=(0.2, 0.3))),
        Family("outliers", lambda rng, n, at, d: _stream(rng, n, at, d, outlier_rate=0.02)),
        Family("mixture", lambda rng, n, at, d: _stream(rng, n, at, d, phi_range=(0.0, 0.3), marginal=heavy,
                                                        outlier_rate=rng.uniform(0.0, 0.02), burst_rate=0.02),
               early=0.5),
    )}
