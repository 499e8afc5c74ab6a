"""Sentiment shift detection on one stream's scores: a two-sided CUSUM against a robust reference.

Each segment's score x is compared with what the stream's steady noise predicts (stream/alerts/noise.py:
level mu, spread sd, lag-1 autocorrelation rho, estimated from the stream's own steady segments):

    innovation z = (x - mu - rho (lag - mu)) / (sd sqrt(1 - rho^2)),   clipped to +-CLIP
    up   = max(0, up   + z - k)        down = max(0, down - z - k)
    alert when up or down reaches b

k is allowance_factor(n) (1.15; up to 1.6 while the reference is young) times half the smallest
shift worth an alert (TECAFLOW_ALERT_MIN_SHIFT) as the clipped innovations see it (in innovation
units, times the share of the reference's innovations inside the clip), and b comes from the false
alarms the user accepts (TECAFLOW_ALERT_FALSE_ALARMS_PER_10K; see stream/alerts/cusum_threshold.py).
This is Page's CUSUM, the detector that attains Lorden's bound on detection delay, made to survive
real score streams:

- autocorrelation: whitening with rho keeps correlated noise from looking like evidence; from a
  young reference rho errs by about 0.1, and where pulling it towards 0 (noise.shrink_rho) lowers
  the threshold, the pulled rho is used and the threshold pays for its bias (fit_reference); once
  the deployment has enough streams, a young reference is pulled towards the autocorrelation
  their warm-ups show instead (noise.pooled_rho_prior, the `prior` of step);
- outliers: an innovation counts at most CLIP sd, and the lag carries the clipped value, so one
  wild score moves the statistic by a bounded amount, once; and no single segment, however far
  out, raises an alert on its own (threshold_for);
- quiet streams: where the smallest shift worth an alert is many noise sds, the noise level is
  taken as at least min_shift / MAX_SHIFT_IN_SD (a shift that large is caught within a segment or
  two anyway) and the clip widens with the allowance, so the CUSUM can still rise;
- near-duplicate bursts: a score within DUPLICATE_TOL of the previous kept one (a repost, a
  repeated chant; less on a quiet stream, see duplicate_tol) is the same observation again and
  is skipped, so ten copies weigh as one;
- the stream's own tails: the threshold uses Wald's tilt of the reference's own innovations, side
  by side (cusum_threshold.empirical_tilt_gain), not a Gaussian's: a skewed or heavy-tailed
  stream gets a higher threshold on its heavy side rather than more false alarms;
- no silent absorption: a segment joins the reference only once neither side's current run
  includes it (it lies before the run's start, or the run fell back to zero), or a run has held
  it so long that its evidence averages under 0.86 of the smallest shift worth an alert; a shift
  worth an alert cannot become the new normal unannounced. The run start is also the
  change-point estimate.
- no selection bias: the last 1.5/k^2 segments before any run stay out of the reference too
  (see _selection_gap).
- reset: after an alert the reference restarts empty; the stream is watched again once it holds
  TECAFLOW_ALERT_WARMUP new segments, with a threshold that accounts for how few that is.

The fit (level, sd, rho, n, b, k) comes from fit_reference; `tecaflow bench detect` runs this same
code with its oracle's fit, told the true noise, in its place.

The state is a JSON-able dict the caller stores (in Redis): `evaluated` counts the segments of the
stream already looked at, so a redelivered batch re-runs nothing and loses nothing.
"""
from __future__ import annotations

import logging
import math

import numpy as np

from stream.alerts import cusum_threshold, noise
from stream.config import DetectorParams
from stream.schema import Alert

log = logging.getLogger(__name__)

# A score this close to the previous kept one is the same observation again (a repost, a chant,
# scored with the model's jitter). Bursts whose copies spread +-0.05 around the first made
# false alarms 4 times the setting at a tolerance of 0.02 (bench detect, family near-duplicates):
# most copies passed as fresh evidence for the burst's level. On a quiet stream 0.05 would be
# most of its noise, so the tolerance is at most DUPLICATE_SD_FRACTION of the fitted noise sd
# (0.07 x 0.75 is 0.05), and DUPLICATE_TOL_UNFITTED before there is a fit.
DUPLICATE_TOL = 0.05  # score units
DUPLICATE_SD_FRACTION = 0.07
DUPLICATE_TOL_UNFITTED = 0.02
# Innovations are clipped at CLIP sd (Huber's psi), or at the smallest shift plus CLIP_ABOVE_SHIFT
# where that is more (2.0-2.3 on streams of sd 0.65-0.85): beyond it a score is an outlier, not
# evidence. Scores have heavier tails than a Gaussian's, and for those a lower clip keeps more of
# the evidence a shift brings per segment: with the skewed heavy-tailed marginal of `bench detect`
# (stream/alerts/families.py) in units of its sd, E[psi']^2 / Var(psi) is 1.14 at 2.0 against
# 1.09 at 2.5 (1.22 at 1.5), and a Gaussian loses 1 % of it at 2.0 (3.5 % at 1.5). Against a
# clip of max(2.5, shift + 1.5), with the allowance matched to the clipped shift (fit_with), the
# heavy-tailed family's median delay at 0.5 went from 1.11 to 0.99 x Lorden's bound and the
# mixture's recall@30 of shifts >= 0.8 from 79.0 to 82.0 % (seed 7), false alarms 0.89-1.09 x
# the setting on 1.5 million steady segments of every family (0.89-1.14 before).
CLIP = 2.0
# The allowance is tuned to a shift allowance_factor(n) times the smallest worth an alert, n the
# reference's size. Half the shift (factor 1) is optimal when the reference is known exactly; an
# estimated one raises the threshold, and more so for small allowances, so that Siegmund's expected
# delay for a min_shift change is within 1 % of its minimum for factors 1.0-1.2 at 200-500
# reference segments (lowest near 1.1). A factor in the upper part of that range catches larger
# shifts, whose size the detector cannot know, sooner. While the reference is young its error is a
# larger share of a small allowance and the threshold it needs grows faster still: the factor is
# YOUNG_ALLOWANCE_FACTOR up to YOUNG_REFERENCE segments, falling linearly to ALLOWANCE_FACTOR at
# SETTLED_REFERENCE. On shifts 20-60 segments after the warm-up (`bench detect`, early-shifts,
# seed 7) it caught 79 % of the 0.8 shifts within 30 segments against 67 % at a fixed 1.15, and
# the median delay of a 0.5 shift fell from 1.28 to 1.23 x Lorden's bound; on shifts after 200-500
# segments the 0.5 shifts' median delay moved by at most 0.01 x the bound.
ALLOWANCE_FACTOR = 1.15
YOUNG_ALLOWANCE_FACTOR = 1.6
YOUNG_REFERENCE, SETTLED_REFERENCE = 100, 300
# A quiet stream (a saturated or quantised model) can have a noise sd of a few hundredths: a 0.5
# shift is then 25 sd, the allowance would exceed the clip and the CUSUM could never rise. The sd
# the detector uses is at least min_shift / MAX_SHIFT_IN_SD: such a stream's threshold errs on
# the safe side, and a min_shift change still adds about 3 sd per segment.
MAX_SHIFT_IN_SD = 6.0
# Innovation sd units: the clip is never below the smallest shift plus this. On a quiet stream (sd
# 0.2, the smallest shift 2.5 sd) 1.0 gave 1.6 false alarms per 10k where 1.5 gives 0.95: with an
# allowance that large the threshold is small, and Siegmund's approximation less exact.
CLIP_ABOVE_SHIFT = 1.5
# The allowance is matched to the shift as the clipped innovations see it: a small shift d moves
# the mean of psi(z) by d P(|z| < clip), the share of the reference's innovations inside the clip,
# taken as at least MIN_INSIDE_SHARE (below that the clip is no longer above the noise).
MIN_INSIDE_SHARE = 0.5
REFERENCE_KEPT = 500  # steady segments the noise estimate is drawn from
REFIT_EVERY = 16  # steady segments between re-estimates of the noise


def initial_state() -> dict:
    return {"evaluated": 0, "reference": [], "pending": [], "up": 0.0, "down": 0.0, "up_from": None,
            "down_from": None, "last": None, "lag": None, "fit": None, "unfitted": 0, "duplicates": 0, "alerts": 0,
            "rho_prior": None, "warmup_rho": None}


def min_shift_in_innovation_sd(min_shift: float, sd: float, rho: float) -> float:
    """The smallest shift worth an alert as the innovations see it: a level shift d moves each
    whitened innovation by d (1 - rho) / (sd sqrt(1 - rho^2))."""
    return min_shift / sd * math.sqrt((1 - rho) / (1 + rho))


def allowance_factor(n: int) -> float:
    """The allowance, as a multiple of half the smallest shift worth an alert, for a reference of
    n segments: YOUNG_ALLOWANCE_FACTOR while it is young, ALLOWANCE_FACTOR once it has settled."""
    young = min(1.0, max(0.0, (SETTLED_REFERENCE - n) / (SETTLED_REFERENCE - YOUNG_REFERENCE)))
    return ALLOWANCE_FACTOR + (YOUNG_ALLOWANCE_FACTOR - ALLOWANCE_FACTOR) * young


def clip_for(min_shift_innovation: float) -> float:
    """The clip of innovations: CLIP, widened where the smallest shift worth an alert comes near
    it (quiet streams), since an allowance near the clip would leave the CUSUM unable to rise."""
    return max(CLIP, min_shift_innovation + CLIP_ABOVE_SHIFT)


def threshold_for(k: float, n: int, rho: float, run_length: float, clip: float, spread_known: bool = False,
                  gains: tuple[float, float] | None = None, rho_share: float = 1.0, rho_bias: float = 0.0) -> float:
    """The threshold for the asked false-alarm rate (stream/alerts/cusum_threshold.py), and never one a
    single clipped innovation can reach: one segment is an outlier until the next confirms it."""
    b = cusum_threshold.threshold(k, n, rho, run_length, clip, spread_known, gains, rho_share, rho_bias)
    return max(b, clip - k + cusum_threshold.THRESHOLD_PRECISION)


def fit_reference(reference: list[float], params: DetectorParams, prior: noise.RhoPrior | None = None) -> list:
    """[mean, sd, rho, n, b, k] from the reference: the noise estimated robustly (its sd at least
    min_shift / MAX_SHIFT_IN_SD), the allowance k for a shift allowance_factor(n) times min_shift,
    and the threshold b that pays for the estimate; with the autocorrelation as estimated or pulled
    by its sampling variance towards the prior the deployment's streams give while the reference
    is young (or towards 0, its threshold paying for the pull's bias; noise.shrink_rho), whichever
    gives the lower threshold."""
    est = noise.estimate(reference)
    # The deployment's prior serves young references. A settled one errs by 0.05 at most, and a
    # pull towards the streams' median then leaves one far from it under-whitened: pooled at every
    # age, false alarms on `bench detect`'s heavy-tailed family went from 1.30 to 1.40 per 10k.
    young = prior if est.n < SETTLED_REFERENCE else None
    sd, pulled = floored_sd(est.sd, params), noise.shrink_rho(est.rho, est.n, young)
    raw = fit_with(reference, est.mean, sd, est.rho, params)
    shrunk = fit_with(reference, est.mean, sd, pulled.rho, params, pulled.variance_share, rho_bias=pulled.bias)
    # The pull pays off where the variance it removes is worth more than the bias it then pays for
    # (a young reference, a small autocorrelation); on older references with a larger one it
    # raised the threshold and cost the 0.5 shifts of `bench detect` half a segment of delay.
    return min(raw, shrunk, key=lambda fit: fit[4])


def floored_sd(sd: float, params: DetectorParams) -> float:
    """The noise sd the detector uses: at least min_shift / MAX_SHIFT_IN_SD (quiet streams)."""
    return max(sd, params.min_shift / MAX_SHIFT_IN_SD)


def fit_with(reference: list[float], mean: float, sd: float, rho: float, params: DetectorParams,
             rho_share: float = 1.0, spread_known: bool = False, rho_bias: float = 0.0) -> list:
    """[mean, sd, rho, n, b, k] for this noise: the allowance from min_shift, the threshold from the
    reference's own innovations, paying for what was estimated (all of it, unless the
    autocorrelation, or the noise level and autocorrelation, were told: `bench detect --decompose`).
    `rho_share`, `rho_bias`: what is left of the autocorrelation's error (cusum_threshold)."""
    n = len(reference)
    shift = min_shift_in_innovation_sd(params.min_shift, sd, rho)
    clip, raw = clip_for(shift), innovations(reference, mean, sd, rho)
    inside = max(MIN_INSIDE_SHARE, float(np.mean(np.abs(raw) < clip))) if raw.size else 1.0
    k = allowance_factor(n) * shift * inside / 2
    z = np.clip(raw, -clip, clip)
    gains = (cusum_threshold.empirical_tilt_gain(z, k), cusum_threshold.empirical_tilt_gain(-z, k))
    b = threshold_for(k, n, rho, params.run_length, clip, spread_known, gains, rho_share, rho_bias)
    return [mean, sd, rho, n, b, k]


def innovations(values, mean: float, sd: float, rho: float) -> np.ndarray:
    """Each value's whitened innovation against the one before, in innovation sd units."""
    x = np.asarray(values, float) - mean
    return (x[1:] - rho * x[:-1]) / (sd * math.sqrt(1 - rho * rho))


def duplicate_tol(sd: float | None) -> float:
    """How close to the previous kept score a score is a near-duplicate, for a stream whose fitted
    noise sd is `sd` (None: not fitted yet; see DUPLICATE_TOL)."""
    return DUPLICATE_TOL_UNFITTED if sd is None else min(DUPLICATE_TOL, DUPLICATE_SD_FRACTION * sd)


def _refit(state: dict, params: DetectorParams, fit) -> None:
    """Re-estimate the noise from the reference and derive k and b from it."""
    ref = state["reference"]
    del ref[:-REFERENCE_KEPT]
    prior = state["rho_prior"]
    state["fit"] = fit(ref, params, None if prior is None else noise.RhoPrior(*prior))
    state["unfitted"] = 0


def _selection_gap(k: float) -> int:
    """Segments kept out of the reference just before any run (and before the present). A run
    starts right after its CUSUM sat at zero, and a CUSUM sits at zero because the scores just
    before were not high (for the up side; not low, for the down side): about the last 1/k^2 of
    them, the walk's memory, are selected to lean against the run. In the reference they would
    pull its mean towards them and the run would lean its own way by that much more: on simulated
    AR(1) noise, false alarms then came up to 1.6 times as often as the threshold was set for at
    100-300 reference segments, and with the gap as often as with an independent reference."""
    return math.ceil(1.5 / (k * k))


def _confirm_steady(state: dict) -> None:
    """Move into the reference the pending segments that no open run includes, less the selection
    gap before the earliest run (or before now), and those an open run has held for longer than
    twice the delay a min_shift change needs: a real shift of that size gains at least k/2 per
    segment and reaches b within 2b/k segments, so a run still short of b after 2b/k averages
    less than 1.5 k, 0.86 of the smallest shift worth an alert. Without this, a reference slightly
    off (after a short warm-up) holds a run open near zero drift for thousands of segments, the
    reference never grows, and the threshold never comes down."""
    pending = state["pending"]
    starts = [f for f in (state["up_from"], state["down_from"]) if f is not None]
    _, _, _, _, b, k = state["fit"]
    cut = max((min(starts) if starts else len(pending)) - _selection_gap(k), len(pending) - math.ceil(2 * b / k))
    if cut <= 0:
        return
    state["reference"].extend(x for _, x, _ in pending[:cut])
    del pending[:cut]
    for side in ("up_from", "down_from"):
        if state[side] is not None:
            state[side] = max(0, state[side] - cut)
    state["unfitted"] += cut


def _alert(state: dict, stream: str, t: float, side: str) -> Alert:
    mean, sd, rho, n, b, k = state["fit"]
    post = state["pending"][state[f"{side}_from"]:]
    # the scores themselves: their clipped values are measured from the old level and would
    # understate a large shift
    level = sum(x for _, x, _ in post) / len(post)
    magnitude = level - mean
    se = sd * math.sqrt((1 + rho) / (1 - rho)) * math.sqrt(1 / len(post) + 1 / n)
    statistic = state[side]
    return Alert(
        stream, t, side, round(magnitude, 4), (round(magnitude - 1.96 * se, 4), round(magnitude + 1.96 * se, 4)),
        round(magnitude / se, 3),
        change_point={"event_time": post[0][0], "segments_since": len(post)},
        evidence={"statistic": round(statistic, 3), "threshold": round(b, 3),
                  "log_likelihood_ratio": round(2 * k * statistic, 3), "allowance": round(k, 4),
                  "outliers_clipped": sum(1 for _, x, c in post if abs(x - c) > 1e-12),
                  "duplicates_skipped": state["duplicates"]},
        reference={"mean": round(mean, 4), "sd": round(sd, 4), "rho": round(rho, 3), "n": n},
        recent={"mean": round(level, 4), "n": len(post), "from": post[0][0], "to": t},
    )


def _reset_after_alert(state: dict) -> None:
    """Start a fresh reference from the next segment. The run that raised the alert is not reused:
    it was selected for leaning one way, and a reference built from it would lean that way too."""
    state.update(reference=[], pending=[], up=0.0, down=0.0, up_from=None, down_from=None, fit=None,
                 alerts=state["alerts"] + 1)


def _clip(state: dict, params: DetectorParams) -> float:
    _, sd, rho, _, _, _ = state["fit"]
    return clip_for(min_shift_in_innovation_sd(params.min_shift, sd, rho))


def collapse_near_duplicates(values: list[float], tol: float) -> list[float]:
    """The values less those within tol of the previous kept one, as step skips them."""
    kept: list[float] = []
    for x in values:
        if not kept or abs(x - kept[-1]) > tol:
            kept.append(x)
    return kept


def _collapse_warmup_duplicates(state: dict, params: DetectorParams) -> None:
    """The warm-up was collected at DUPLICATE_TOL_UNFITTED, before the noise level was known; once
    it is, the warm-up's near-duplicates at the tolerance every later segment meets are collapsed
    too. Copies of a burst that pass the narrower tolerance sit next to each other in the
    reference and read as autocorrelation: on `bench detect`'s near-duplicates family the warm-up's
    lag-1 estimate ran 0.045 above the true one, and the detector whitened too much."""
    ref = state["reference"]
    kept = collapse_near_duplicates(ref, duplicate_tol(floored_sd(noise.estimate(ref).sd, params)))
    if len(kept) >= 3:
        state["duplicates"] += len(ref) - len(kept)
        state["reference"] = kept


def _arm(state: dict, params: DetectorParams, fit) -> None:
    _refit(state, params, fit)
    mean, sd, clip = state["fit"][0], state["fit"][1], _clip(state, params)
    state["lag"] = min(max(state["lag"], mean - clip * sd), mean + clip * sd)


def step(state: dict, t: float, x: float, params: DetectorParams, stream: str = "", fit=fit_reference,
         prior: noise.RhoPrior | None = None) -> Alert | None:
    """Look at one more score (event time t); returns an alert or None. Changes `state` in place.
    `fit` turns the reference into [mean, sd, rho, n, b, k]; the worker always uses fit_reference
    (`tecaflow bench detect` passes its oracle's, which is told the true noise). `prior`: the
    autocorrelation the deployment's streams give (noise.pooled_rho_prior), taken into the
    state when a warm-up ends: a redelivered batch decides as the first delivery did, whatever the
    prior is by then, until the stream warms up again after an alert."""
    last = state["last"]
    if last is not None and abs(x - last) <= duplicate_tol(None if state["fit"] is None else state["fit"][1]):
        state["duplicates"] += 1
        return None
    state["last"] = x
    if state["fit"] is None:  # warming up: every segment is reference
        state["reference"].append(x)
        state["lag"] = x
        if len(state["reference"]) >= params.warmup:
            _collapse_warmup_duplicates(state, params)
            # the deployment's prior is pooled from warm-ups: every stream has one, of one size,
            # by the time its peers need the prior
            state["warmup_rho"] = [round(noise.estimate(state["reference"]).rho, 4), len(state["reference"])]
            state["rho_prior"] = None if prior is None else [prior.mean, prior.sd]
            _arm(state, params, fit)
        return None
    mean, sd, rho, _, b, k = state["fit"]
    innovation_sd = sd * math.sqrt(1 - rho * rho)
    predicted = mean + rho * (state["lag"] - mean)
    clip = _clip(state, params)
    z = min(max((x - predicted) / innovation_sd, -clip), clip)
    state["lag"] = predicted + z * innovation_sd
    pending = state["pending"]
    pending.append([t, x, state["lag"]])
    for side, increment in (("up", z - k), ("down", -z - k)):
        value = max(0.0, state[side] + increment)
        if value == 0.0:
            state[f"{side}_from"] = None
        elif state[f"{side}_from"] is None:
            state[f"{side}_from"] = len(pending) - 1
        state[side] = value
    if state["up"] >= b or state["down"] >= b:
        alert = _alert(state, stream, t, "up" if state["up"] >= state["down"] else "down")
        _reset_after_alert(state)
        return alert
    _confirm_steady(state)
    if state["unfitted"] >= REFIT_EVERY:
        _refit(state, params, fit)
    return None


def scan(stream: str, window: list[tuple[float, float]], total: int, state: dict, params: DetectorParams,
         prior: noise.RhoPrior | None = None) -> tuple[list[Alert], dict]:
    """Evaluate every segment not yet evaluated.

    window: (event_time, score) of the stream's last segments, oldest first; its last item is
    segment number `total` of the stream; prior: as in step. Returns (alerts, new state)."""
    state = {**initial_state(), **state}
    first = max(state["evaluated"] + 1, total - len(window) + 1)
    if first > state["evaluated"] + 1:
        log.warning("stream %s: %d segments left the window before the detector saw them", stream,
                    first - state["evaluated"] - 1)
    alerts = []
    for position in range(first, total + 1):
        t, x = window[len(window) - (total - position) - 1]
        alert = step(state, t, x, params, stream, prior=prior)
        if alert is not None:
            alerts.append(alert)
    state["evaluated"] = max(state["evaluated"], total)
    return alerts, state
