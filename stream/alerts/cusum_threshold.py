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
long-run spread by about 1 + r. The detector pulls its autocorrelation estimate towards 0
(noise.shrink_rho): that leaves a share `rho_share` of the error's variance and adds a bias
`rho_bias` (the estimate too low, so too little whitening), which shifts the error r by that much
and the long-run spread with it. The threshold is the smallest b whose averaged rate is at most
1/run_length. Few reference segments therefore mean a higher threshold, not more false alarms. A
CUSUM told the noise level and autocorrelation (the bench's oracle that estimates only the level)
averages over the mean's error alone (`spread_known`); one told the autocorrelation only, over the
mean's and the noise level's (`rho_share` 0: `tecaflow bench detect --decompose`).

The detector clips each increment to +-clip sd (an outlier is not evidence), which thins the tails
the false alarms come from. Siegmund's formula holds for any increment law once 2 drift is
replaced by the root theta of E[exp(theta (Y - k))] = 1 (Wald's exponential tilt); for Y a
standard normal clipped to +-clip that root is 2k times `tilt_gain(k, clip)`, a little over 1
(1.03 at k = 0.35, clip 2.5), so the clipped CUSUM earns a threshold a few percent lower for the
same false-alarm rate.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

THRESHOLD_PRECISION = 1e-3
GAIN_STEP = 0.02  # grid of empirical tilt gains: nearby streams share one threshold computation
GAIN_MAX = 3.0  # increment sd units: a thousandth of a segment's evidence
_NODES_M, _WEIGHTS_M = np.polynomial.hermite_e.hermegauss(16)
_NODES_S, _WEIGHTS_S = np.polynomial.hermite_e.hermegauss(6)
_WEIGHTS_M = _WEIGHTS_M / _WEIGHTS_M.sum()
_WEIGHTS_S = _WEIGHTS_S / _WEIGHTS_S.sum()


def run_length(drift, b, gain: float = 1.0):
    """Siegmund's average run length of a one-sided CUSUM with unit-variance increments; `gain`
    scales the exponential tilt 2 drift for increments that are not Gaussian (see tilt_gain)."""
    bb = b + 1.166
    drift = np.where(np.abs(drift) < 1e-9, 1e-9, drift)
    x = -2.0 * gain * drift * bb
    return (np.expm1(np.minimum(x, 700.0)) - x) / (2.0 * gain * drift * drift)


def _normal_cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def _log_mgf_clipped(t: float, clip: float) -> float:
    """log E[exp(t Y)] for Y a standard normal clipped to [-clip, clip], in logs throughout (t and
    clip reach 20 and more for quiet streams, where exp(t^2 / 2) alone would overflow)."""
    logs = [math.log(0.5 * math.erfc(clip / math.sqrt(2.0))) + t * clip,   # the clipped tails
            math.log(0.5 * math.erfc(clip / math.sqrt(2.0))) - t * clip]
    inside = _normal_cdf(clip - t) - _normal_cdf(-clip - t)  # mass that stays unclipped, tilted
    if inside > 0:
        logs.append(t * t / 2 + math.log(inside))
    top = max(logs)
    return top + math.log(sum(math.exp(v - top) for v in logs))


@lru_cache(maxsize=4096)
def _tilt_gain(k_milli: int, clip_centi: int) -> float:
    k, clip = k_milli / 1000.0, clip_centi / 100.0
    if k >= clip:
        raise ValueError(f"allowance {k} at or above the clip {clip}: increments could never be positive")
    lo, hi = 2.0 * k, 4.0 * k  # clipping only thins the tails: the root lies above the Gaussian 2k
    while _log_mgf_clipped(hi, clip) - hi * k < 0:  # near the clip the root lies further out
        lo, hi = hi, 2.0 * hi
    for _ in range(60):
        mid = (lo + hi) / 2
        if _log_mgf_clipped(mid, clip) - mid * k < 0:
            lo = mid
        else:
            hi = mid
    return lo / (2.0 * k)


def tilt_gain(k: float, clip: float | None) -> float:
    """theta / 2k, theta the positive root of E[exp(theta (Y - k))] = 1 for Y a standard normal
    clipped to +-clip (1 without clipping). Rounded towards a higher threshold: k down to 0.001,
    clip up to 0.01."""
    if clip is None or k <= 0:
        return 1.0
    return _tilt_gain(max(1, math.floor(k * 1000)), math.ceil(clip * 100))


def empirical_tilt_gain(increments: np.ndarray, k: float) -> float:
    """theta / 2k, theta the positive root of mean(exp(theta (z - k))) = 1 over a stream's own
    (whitened, standardised, clipped) innovations z: Wald's tilt of the noise the stream has, not
    of a Gaussian. A heavier tail on one side gives that side a smaller tilt, so a higher
    threshold. Rounded down to GAIN_STEP, towards a higher threshold."""
    z = np.asarray(increments, float) - k
    if z.size == 0 or z.mean() >= 0:
        return GAIN_STEP  # no negative drift: the most cautious threshold the grid has
    if z.max() <= 0:
        return GAIN_MAX  # increments never positive: nothing this noise does reaches a threshold

    def below_root(step: int) -> bool:
        # log mean exp(theta z) is convex and 0 at theta = 0, falling first: negative exactly
        # below the root
        v = 2.0 * k * step * GAIN_STEP * z
        top = v.max()
        return top + math.log(np.exp(v - top).mean()) < 0
    # the answer is a grid step, so the search runs over steps (8 evaluations, where bisecting
    # the root to float precision took 40)
    lo, hi = 0, round(GAIN_MAX / GAIN_STEP)
    if below_root(hi):
        return GAIN_MAX
    while hi - lo > 1:  # below_root(lo) (or lo = 0), not below_root(hi)
        mid = (lo + hi) // 2
        if below_root(mid):
            lo = mid
        else:
            hi = mid
    return max(GAIN_STEP, lo * GAIN_STEP)


def false_alarm_rate(k: float, b: float, n: int, rho: float = 0.0, clip: float | None = None,
                     spread_known: bool = False, gains: tuple[float, float] | None = None,
                     rho_share: float = 1.0, rho_bias: float = 0.0) -> float:
    """Two-sided alarms per segment of a CUSUM with allowance k and threshold b (increment sd units),
    increments clipped to +-clip, averaged over the error of a reference estimated from n segments
    (of its mean only, when the noise level and autocorrelation are known: `spread_known`; of its
    mean and noise level, when the autocorrelation is: `rho_share` 0). `rho_share`: the share of
    the autocorrelation estimate's sampling variance (1 - rho^2)/n it still has; `rho_bias`: how
    far below the true one it lies (see the module's docstring).
    `gains`: each side's tilt gain (up, down) from the stream's own innovations
    (empirical_tilt_gain); by default a clipped Gaussian's, the same on both sides."""
    m = _NODES_M[:, None] / math.sqrt(n)                      # reference mean error
    n_eff = n * (1 - rho * rho) / (1 + rho * rho)
    rho_error = rho_share * (1 - rho * rho) / n
    spread_error = 0.0 if spread_known else math.sqrt(1 / (2 * n_eff) + rho_error)
    scale = 1.0 - rho_bias + _NODES_S[None, :] * spread_error  # noise level: estimated / true
    scale = np.maximum(scale, 0.2)
    # increments z/scale: drift and threshold in true units are (±m - k)·scale... dividing by the
    # increment sd 1/scale gives drift (±m - k)·scale and threshold b·scale.
    gains = gains or (tilt_gain(k, clip),) * 2
    rate = 0.0
    for sign, gain in zip((1.0, -1.0), gains):
        rate = rate + 1.0 / run_length((sign * m - k) * scale, b * scale, gain)
    return float((_WEIGHTS_M[:, None] * _WEIGHTS_S[None, :] * rate).sum())


@lru_cache(maxsize=1 << 15)
def _threshold(k_milli: int, n: int, rho_centi: int, run_length_target: float, clip: float | None,
               spread_known: bool = False, gains: tuple[float, float] | None = None, rho_share: float = 1.0,
               rho_bias: float = 0.0) -> float:
    k, rho = k_milli / 1000.0, rho_centi / 100.0
    lo, hi = 0.0, 1.0
    while false_alarm_rate(k, hi, n, rho, clip, spread_known, gains, rho_share, rho_bias) > 1.0 / run_length_target:
        hi *= 2.0
        if hi > 1e4:
            raise ValueError(f"no CUSUM threshold reaches a run length of {run_length_target} (k={k}, n={n})")
    while hi - lo > THRESHOLD_PRECISION:
        mid = (lo + hi) / 2
        if false_alarm_rate(k, mid, n, rho, clip, spread_known, gains, rho_share, rho_bias) > 1.0 / run_length_target:
            lo = mid
        else:
            hi = mid
    return hi


N_STEPS_PER_DOUBLING = 16  # the reference-size grid: about 4 % apart


def threshold(k: float, n: int, rho: float, target_run_length: float, clip: float | None = None,
              spread_known: bool = False, gains: tuple[float, float] | None = None, rho_share: float = 1.0,
              rho_bias: float = 0.0) -> float:
    """Threshold b (increment sd units) for two sides with allowance k, a reference of n segments,
    autocorrelation rho and increments clipped to +-clip, so that false alarms come every
    `target_run_length` segments. The arguments are rounded towards a higher threshold (k down to
    0.005, n down to a step of a geometric grid about 4 % apart, rho up to 0.05; rho hardly moves
    the threshold) so that nearby streams and refits share one computation. Rounding n costs under
    0.1 of a threshold near 13, where a grid 19 % apart cost about 0.3, a segment of delay.
    `spread_known`: only the reference mean is estimated (`tecaflow bench detect`'s oracle that is
    told the noise level and autocorrelation but not the level). `gains`: each side's tilt gain
    from the stream's own innovations (empirical_tilt_gain), already on a grid. `rho_share`,
    `rho_bias`: what is left of the autocorrelation's error (false_alarm_rate; rounded up to 0.05
    and 0.01); a share of 0 means it is told (`bench detect --decompose`)."""
    steps = N_STEPS_PER_DOUBLING
    n_grid = int(2 ** (math.floor(steps * math.log2(max(3, n))) / steps))
    return _threshold(max(5, 5 * math.floor(k * 200)), max(3, n_grid), min(95, 5 * math.ceil(rho * 20)),
                      float(target_run_length), clip, spread_known, gains,
                      math.ceil(rho_share * 20) / 20, math.ceil(rho_bias * 100) / 100)
