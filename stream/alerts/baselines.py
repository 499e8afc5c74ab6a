"""Detectors `tecaflow bench detect` compares the CUSUM with, run on many streams at once
(arrays of shape [streams, segments]; every stream advances one segment per step).

Each takes a threshold and returns the alarms as a boolean array [streams, segments] with the
direction (+1 up, -1 down) in a second array; after an alarm a detector starts over. `calibrate`
finds, for any of them, the threshold that gives a false-alarm rate on steady streams.
"""
from __future__ import annotations

import math

import numpy as np

from stream.alerts import detector, noise
from stream.alerts.detector import CLIP, DUPLICATE_SD_FRACTION, DUPLICATE_TOL


def two_window(x: np.ndarray, times: np.ndarray, z_threshold: float, reference: int = 60, recent: int = 20,
               rearm_z: float = 1.5, min_delta: float = 0.5, cooldown_s: float = 60.0):
    """tecaflow's former detector: z of the recent window's mean against the reference window's,
    with a minimum mean difference, hysteresis and an event-time cooldown."""
    streams, length = x.shape
    c1 = np.concatenate([np.zeros((streams, 1)), np.cumsum(x, 1)], 1)
    c2 = np.concatenate([np.zeros((streams, 1)), np.cumsum(x * x, 1)], 1)

    def window(end, n):  # mean, var of x[:, end-n:end]
        s, ss = c1[:, end] - c1[:, end - n], c2[:, end] - c2[:, end - n]
        m = s / n
        return m, np.maximum((ss - n * m * m) / (n - 1), 1e-4)

    alarms, direction = np.zeros_like(x, bool), np.zeros_like(x, np.int8)
    armed = np.ones(streams, bool)
    last = np.full(streams, -np.inf)
    for t in range(reference + recent - 1, length):
        m_ref, v_ref = window(t + 1 - recent, reference)
        m_rec, v_rec = window(t + 1, recent)
        delta = m_rec - m_ref
        z = delta / np.sqrt(v_ref / reference + v_rec / recent)
        armed |= np.abs(z) < rearm_z
        fire = armed & (np.abs(z) >= z_threshold) & (np.abs(delta) >= min_delta) & (times[:, t] - last >= cooldown_s)
        alarms[:, t], direction[:, t] = fire, np.sign(delta) * fire
        armed &= ~fire
        last = np.where(fire, times[:, t], last)
    return alarms, direction


def page_hinkley(x: np.ndarray, times: np.ndarray, threshold: float, min_shift: float = 0.5, warmup: int = 30):
    """Page–Hinkley, two-sided: cumulative deviations from the running mean since the last
    alarm, less min_shift/2 each, against their running extreme."""
    streams, length = x.shape
    alarms, direction = np.zeros_like(x, bool), np.zeros_like(x, np.int8)
    n, total = np.zeros(streams), np.zeros(streams)
    up, up_min, down, down_max = (np.zeros(streams) for _ in range(4))
    for t in range(length):
        n += 1
        total += x[:, t]
        mean = total / n
        up += x[:, t] - mean - min_shift / 2
        down += x[:, t] - mean + min_shift / 2
        up_min, down_max = np.minimum(up_min, up), np.maximum(down_max, down)
        fire_up = (n > warmup) & (up - up_min > threshold)
        fire_down = (n > warmup) & (down_max - down > threshold)
        fire = fire_up | fire_down
        alarms[:, t], direction[:, t] = fire, np.where(fire_up, 1, np.where(fire_down, -1, 0))
        for a in (n, total, up, up_min, down, down_max):
            a[fire] = 0.0
    return alarms, direction


def oracle_cusum(x: np.ndarray, times: np.ndarray, threshold: float, level: np.ndarray, sd: np.ndarray,
                 rho: np.ndarray, shift: np.ndarray):
    """Two-sided CUSUM told each stream's true level, noise sd, autocorrelation and shift size:
    whitened increments with allowance half the true shift, and the same outlier clipping and
    near-duplicate skipping as stream/alerts/detector.py. What it lacks against the detector is nothing
    but the need to estimate: the ceiling for any real detector."""
    streams, length = x.shape
    innovation_sd = sd * np.sqrt(1 - rho * rho)
    k = shift * (1 - rho) / innovation_sd / 2
    alarms, direction = np.zeros_like(x, bool), np.zeros_like(x, np.int8)
    up, down = np.zeros(streams), np.zeros(streams)
    lag, last = level.copy(), np.full(streams, np.nan)
    for t in range(length):
        repeat = np.abs(x[:, t] - last) <= np.minimum(DUPLICATE_TOL, DUPLICATE_SD_FRACTION * sd)
        last = np.where(repeat, last, x[:, t])
        predicted = level + rho * (lag - level)
        z = np.clip((x[:, t] - predicted) / innovation_sd, -CLIP, CLIP)
        lag = np.where(repeat, lag, predicted + z * innovation_sd)
        up = np.where(repeat, up, np.maximum(0, up + z - k))
        down = np.where(repeat, down, np.maximum(0, down - z - k))
        fire_up, fire_down = up >= threshold, down >= threshold
        fire = fire_up | fire_down
        alarms[:, t], direction[:, t] = fire, np.where(fire_up, 1, np.where(fire_down, -1, 0))
        up[fire], down[fire] = 0.0, 0.0
    return alarms, direction


def oracle_fit(sd: float, rho: float, shift: float):
    """A `fit` for stream/detector.step told what the issue's oracle is told: the stream's true noise
    sd, autocorrelation and shift size, but not its level. The level is estimated from the reference
    the detector builds (same warm-up, same exclusion of open runs); the allowance is half the true
    shift in innovation units, as in oracle_cusum; the threshold pays for the level's error alone.
    Between the detector and oracle_cusum: what is left of the gap once only the level is unknown."""
    k = shift * (1 - rho) / (sd * math.sqrt(1 - rho * rho)) / 2

    def fit(reference: list[float], params, prior=None) -> list:  # told rho: a prior has nothing to add
        n = len(reference)
        clip = detector.clip_for(detector.min_shift_in_innovation_sd(params.min_shift, sd, rho))
        b = detector.threshold_for(k, n, rho, params.run_length, clip, spread_known=True)
        return [noise.estimate(reference).mean, sd, rho, n, b, k]
    return fit


def told_fit(sd: float, rho: float, tell_sd: bool):
    """A `fit` for stream/detector.step told the stream's true autocorrelation (and its noise sd
    when `tell_sd`), but neither its level nor its shift size: the detector's own allowance and
    tails, its threshold paying for what is left to estimate. Between the detector and
    oracle_fit, it says what each estimate costs (`tecaflow bench detect --decompose`)."""
    def fit(reference: list[float], params, prior=None) -> list:  # told rho: a prior has nothing to add
        est = noise.estimate(reference)
        told_sd = sd if tell_sd else detector.floored_sd(est.sd, params)
        return detector.fit_with(reference, est.mean, told_sd, rho, params, rho_share=0.0, spread_known=tell_sd)
    return fit


def calibrate(run, per_10k: float, lo: float, hi: float, iterations: int = 14) -> float:
    """The smallest threshold (bisection in [lo, hi]) whose false alarms per 10k steady segments,
    as `run(threshold)` counts them, are at most per_10k."""
    for _ in range(iterations):
        mid = (lo + hi) / 2
        if run(mid) > per_10k:
            lo = mid
        else:
            hi = mid
    return hi
