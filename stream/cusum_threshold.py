"""The CUSUM threshold that gives the false-alarm rate a user asked for.

A one-sided CUSUM S = max(0, S + z - k) on unit-variance increments z alarms when S >= b; with
no change, Siegmund's approximation gives its average run length as
    ARL(drift, b) = (exp(-2 drift b') + 2 drift b' - 1) / (2 drift^2),   b' = b + 1.166,
for increments z - k of mean `drift` (= -k when nothing changed). Two sides alarm at the sum of
their rates.

The reference the increments are measured against is itself estimated from n segments, and that
matters more than anything else here: a reference mean off by 0.1 sd turns one side's drift from
-k into -(k - 0.1) and multiplies its false alarms several-fold. So the rate is averaged over the
estimation error: the reference mean's error is N(0, 1/n) in increment units (for an AR(1)
series whitened with its own coefficient this holds exactly, autocorrelation included), and the
relative error of the noise level is N(0, 1/(2 n_eff)), and an error r in the autocorrelation
leaves the whitened increments correlated at about r ~ N(0, (1 - rho^2)/n), which scales their
long-run spread by about 1 + r. The threshold is the smallest b whose
averaged rate is at most 1/run_length. Few reference segments therefore mean a higher threshold,
not more false alarms.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

_NODES_M, _WEIGHTS_M = np.polynomial.hermite_e.hermegauss(16)
_NODES_S, _WEIGHTS_S = np.polynomial.hermite_e.hermegauss(6)
_WEIGHTS_M = _WEIGHTS_M / _WEIGHTS_M.sum()
_WEIGHTS_S = _WEIGHTS_S / _WEIGHTS_S.sum()


def run_length(drift, b):
    """Siegmund's average run length of a one-sided CUSUM with unit-variance increments."""
    bb = b + 1.166
    drift = np.where(np.abs(drift) < 1e-9, 1e-9, drift)
    x = -2.0 * drift * bb
    return (np.expm1(np.minimum(x, 700.0)) - x) / (2.0 * drift * drift)


def false_alarm_rate(k: float, b: float, n: int, rho: float = 0.0) -> float:
    """Two-sided alarms per segment of a CUSUM with allowance k and threshold b (increment sd units),
    averaged over the error of a reference estimated from n segments."""
    m = _NODES_M[:, None] / math.sqrt(n)                      # reference mean error
    n_eff = n * (1 - rho * rho) / (1 + rho * rho)
    spread_error = math.sqrt(1 / (2 * n_eff) + (1 - rho * rho) / n)
    scale = 1.0 + _NODES_S[None, :] * spread_error             # noise level: estimated / true
    scale = np.maximum(scale, 0.2)
    # increments z/scale: drift and threshold in true units are (±m - k)·scale... dividing by the
    # increment sd 1/scale gives drift (±m - k)·scale and threshold b·scale.
    rate = 0.0
    for sign in (1.0, -1.0):
        rate = rate + 1.0 / run_length((sign * m - k) * scale, b * scale)
    return float((_WEIGHTS_M[:, None] * _WEIGHTS_S[None, :] * rate).sum())


@lru_cache(maxsize=1 << 15)
def _threshold(k_milli: int, n: int, rho_centi: int, run_length_target: float) -> float:
    k, rho = k_milli / 1000.0, rho_centi / 100.0
    lo, hi = 0.0, 1.0
    while false_alarm_rate(k, hi, n, rho) > 1.0 / run_length_target:
        hi *= 2.0
        if hi > 1e4:
            raise ValueError(f"no CUSUM threshold reaches a run length of {run_length_target} (k={k}, n={n})")
    for _ in range(40):
        mid = (lo + hi) / 2
        if false_alarm_rate(k, mid, n, rho) > 1.0 / run_length_target:
            lo = mid
        else:
            hi = mid
    return hi


def threshold(k: float, n: int, rho: float, target_run_length: float) -> float:
    """Threshold b (increment sd units) for two sides with allowance k, a reference of n segments
    and autocorrelation rho, so that false alarms come every `target_run_length` segments.
    The arguments are rounded towards a higher threshold (k down to 0.005, n down to a step of a
    geometric grid, rho up to 0.05) so that nearby streams and refits share one computation."""
    n_grid = int(2 ** (math.floor(4 * math.log2(max(3, n))) / 4))
    return _threshold(max(5, 5 * math.floor(k * 200)), max(3, n_grid), min(95, 5 * math.ceil(rho * 20)),
                      float(target_run_length))
