"""A stream's steady noise, estimated robustly: level, spread and lag-1 autocorrelation.

Scores come with outliers (a sarcastic line the model reads backwards) and with mild serial
correlation (neighbouring utterances share a topic). The level and spread are a winsorized mean
and standard deviation: values beyond WINSOR median-absolute-deviations are pulled in to that
bound, which keeps an outlier from moving either much while losing little against the plain mean
on clean Gaussian data (the median alone would need ~1.5x the segments for the same precision).
The autocorrelation is the lag-1 correlation of the same winsorized series, corrected for its
small-sample bias (it runs low by about (1 + 3 rho)/n, and too little whitening means false
alarms) and kept in [RHO_MIN, RHO_MAX]: a larger one would mean the "noise" is really a slow drift.
A negative estimate is kept: cutting it to 0 would bias the estimate of a stream with no
autocorrelation upwards (by 0.4/sqrt(n)), over-whiten it and give it fewer false alarms, and
later detections, than the threshold was set for. From a young reference the estimate errs by
about 0.1; shrink_rho pulls it towards 0 by its sampling variance, and the detector takes the
pulled estimate where that lowers its threshold (stream/alerts/detector.py, fit_reference). Once a
deployment has POOL_MIN_STREAMS streams past their warm-up, their warm-ups' autocorrelations make a
prior in place of 0 (pooled_rho_prior, empirical Bayes): streams scored by one model tend to share
much of theirs, and a young stream's estimate is pulled towards what its peers have.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

WINSOR = 2.5
RHO_MAX = 0.9
RHO_MIN = -0.5  # scores that alternate more strongly than this are not noise to whiten against
SIGMA_FLOOR = 0.02  # score units: a stream this flat is quantised, not noiseless
RHO_PRIOR_SD = 0.15  # how far from 0 a stream's autocorrelation plausibly lies (see shrink_rho)
POOL_MIN_STREAMS = 20  # streams past their warm-up before their autocorrelations make a prior
POOL_SD_FLOOR = 0.03  # the pooled prior's spread never claims the streams are more alike than this


def _winsorized_variance_factor(c: float) -> float:
    """E[clip(Z, -c, c)^2] for a standard normal Z: what winsorizing does to a Gaussian's variance."""
    cdf = 0.5 * (1 + math.erf(c / math.sqrt(2)))
    pdf = math.exp(-c * c / 2) / math.sqrt(2 * math.pi)
    return 2 * cdf - 1 - 2 * c * pdf + 2 * c * c * (1 - cdf)


WINSOR_FACTOR = _winsorized_variance_factor(WINSOR)


@dataclass(frozen=True)
class Noise:
    mean: float
    sd: float
    rho: float
    n: int

    @property
    def long_run_sd(self) -> float:
        """Standard deviation of a mean of n scores, times sqrt(n): what autocorrelation does to it."""
        return self.sd * math.sqrt((1 + self.rho) / (1 - self.rho))


def estimate(values) -> Noise:
    """Noise of a steady series, oldest first (order matters for the autocorrelation)."""
    x = np.asarray(values, dtype=float)
    if x.size < 3:
        raise ValueError(f"need at least 3 values to estimate noise, got {x.size}")
    median = float(np.median(x))
    mad = 1.4826 * float(np.median(np.abs(x - median)))
    spread = max(mad, SIGMA_FLOOR)
    w = np.clip(x, median - WINSOR * spread, median + WINSOR * spread)
    mean = float(w.mean())
    centred = w - mean
    sd = max(math.sqrt(float(centred @ centred) / (x.size - 1) / WINSOR_FACTOR), SIGMA_FLOOR)
    denom = float(centred @ centred)
    rho = float(centred[1:] @ centred[:-1]) / denom if denom > 0 else 0.0
    rho += (1 + 3 * rho) / x.size  # Kendall's bias: the lag-1 estimate runs low by about this
    return Noise(mean, sd, min(max(rho, RHO_MIN), RHO_MAX), int(x.size))


@dataclass(frozen=True)
class ShrunkRho:
    rho: float  # the estimate pulled towards 0
    variance_share: float  # what is left of the raw estimate's sampling variance, as a share of it
    bias: float  # how far below the true autocorrelation the pull leaves it, estimated (never < 0)


@dataclass(frozen=True)
class RhoPrior:
    """The autocorrelation of a deployment's streams as a population: its centre and spread."""
    mean: float
    sd: float


def shrink_rho(rho: float, n: int, prior: RhoPrior | None = None) -> ShrunkRho:
    """The autocorrelation estimated from n segments, pulled towards a prior by its sampling
    variance (1 - rho^2)/n (the posterior mean under a normal prior): from the 100-160 segments of
    a young reference the raw estimate errs by about 0.1, and the detector pays for that error in
    its threshold and its allowance.

    Without a pooled prior the pull is towards 0 with spread RHO_PRIOR_SD, a guess that is wrong
    for a stream far from 0: the pull then costs a bias, and `bias` is its estimate, on the side
    that means too little whitening (more false alarms), so the threshold can pay for it. With a
    prior pooled from the deployment's own streams (pooled_rho_prior), the error left is the
    posterior's, a share `weight` of the sampling variance, and no bias on average over them."""
    sampling = (1 - rho * rho) / n
    if prior is None:
        weight = RHO_PRIOR_SD ** 2 / (RHO_PRIOR_SD ** 2 + sampling)
        return ShrunkRho(weight * rho, weight * weight, max(0.0, (1 - weight) * rho))
    weight = prior.sd ** 2 / (prior.sd ** 2 + sampling)
    return ShrunkRho(prior.mean + weight * (rho - prior.mean), weight, 0.0)


def pooled_rho_prior(estimates) -> RhoPrior | None:
    """The prior a deployment's streams give, from (rho, n) estimated on each one's warm-up: their
    median, and the spread they vary by beyond their own sampling error (robustly, from the median
    absolute deviation; at least POOL_SD_FLOOR); None with fewer than POOL_MIN_STREAMS of them.
    Streams that differ widely give a wide prior, which pulls little."""
    pairs = [(float(r), int(n)) for r, n in estimates if n >= 3]
    if len(pairs) < POOL_MIN_STREAMS:
        return None
    rho, n = np.array([r for r, _ in pairs]), np.array([n for _, n in pairs], float)
    # robustly: a stream whose warm-up held a shift looks strongly autocorrelated
    centre = float(np.median(rho))
    spread = 1.4826 * float(np.median(np.abs(rho - centre)))
    sampling = float(np.mean((1 - rho * rho) / n))
    return RhoPrior(centre, math.sqrt(max(spread * spread - sampling, POOL_SD_FLOOR ** 2)))
