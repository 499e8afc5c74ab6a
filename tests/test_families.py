"""The detector's false-alarm promise on every family of synthetic streams
(stream/alerts/families.py), each with a fixed seed, and the families themselves."""
import numpy as np
import pytest
from scipy.stats import binom, poisson, skew

from stream.alerts import baselines, bench, families
from stream.config import DetectorParams

STEADY_STREAMS = 250  # of 1000 segments: 25 false alarms expected at the default setting
# The band, 0.7-1.3 x the setting, widened by the count's own noise: a count outside the
# 99.9 % Poisson interval of every rate in the band says the promise is broken, whatever the seed.
TAIL = 0.0005


@pytest.mark.parametrize("name", list(families.families()))
def test_false_alarms_on_steady_streams_keep_the_setting(name):
    params = DetectorParams()
    _, calm = bench.build_family(families.families()[name], seed=23, per_shift=0, steady=STEADY_STREAMS,
                                 warmup=params.warmup)
    prior = bench.history_prior(families.families()[name].generate, 23, params)  # as the worker pools it
    alarms, _ = bench.cusum_alarms(calm, params, prior=prior)
    expected = alarms.size * params.false_alarms_per_10k / 1e4
    low = poisson.ppf(TAIL, bench.FA_BAND[0] * expected)
    high = poisson.ppf(1 - TAIL, bench.FA_BAND[1] * expected)
    assert low <= alarms.sum() <= high, f"{name}: {alarms.sum()} false alarms in {alarms.size} segments"


def test_large_shifts_soon_after_the_warm_up_are_caught_nearly_as_soon_as_by_the_oracle():
    """Shifts of 0.8 and 1.2 (the issue's recall@30 shifts) 20-60 segments after the warm-up, while
    the reference is young: within 30 segments the detector catches nearly as many as the
    level-estimating oracle (told the noise and each shift's size) on the same streams. The issue's
    3 points, widened by two standard errors of the difference of the two shares; with the
    allowance fixed at 1.15 x half the smallest shift, as before it grew for young references,
    the detector fell 11 points short here."""
    from stream.alerts import baselines
    params, family = DetectorParams(), families.families()["early-shifts"]
    rng = np.random.default_rng(31)
    shifted = [family.generate(rng, bench.SHIFT_LENGTH, family.shift_at(rng, params.warmup), sign * delta)
               for delta in (0.8, 1.2) for sign in (1, -1) for _ in range(60)]
    prior = bench.history_prior(family.generate, 31, params)
    caught = bench.delays(shifted, bench.cusum_alarms(shifted, params, prior=prior)[1]) <= 30
    told = bench.cusum_alarms(shifted, params, lambda s: baselines.oracle_fit(s.sd, s.rho, abs(s.delta)))[1]
    oracle = bench.delays(shifted, told) <= 30
    se = np.sqrt((caught.mean() * (1 - caught.mean()) + oracle.mean() * (1 - oracle.mean())) / len(shifted))
    assert caught.mean() >= oracle.mean() - bench.RECALL_SLACK - 2 * se, (caught.mean(), oracle.mean())


def test_the_heavy_tailed_marginal_is_standardised_skewed_and_heavy():
    m = families.sinh_arcsinh_marginal(**families.HEAVY_TAILED)
    x = m.quantile(np.random.default_rng(0).random(200_000))
    assert abs(x.mean()) < 0.01 and abs(x.std() - 1) < 0.01  # 200k draws: standard errors ~0.002
    assert skew(x) < -0.5 and np.mean(np.abs(x) > 2.5) > 1.5 * 0.0124  # a Gaussian has 1.24 % beyond 2.5 sd


def test_bursts_repeat_the_first_score_within_the_tolerance_and_outliers_are_misreads():
    rng = np.random.default_rng(5)
    x = rng.normal(size=5000)
    families._bursts(rng, x, 0.02)
    same = np.abs(np.diff(x)) <= 2 * families.BURST_TOL
    assert same.mean() > 0.05  # ~2 % of segments start a burst of 2-9 copies
    s = families.families()["outliers"].generate(np.random.default_rng(1), 20000)
    misread = np.abs(s.scores) >= families.OUTLIER_RANGE[0]
    assert 0.01 < misread.mean() < 0.04


def test_empirical_residuals_replace_the_stand_in(tmp_path):
    path = tmp_path / "residuals.txt"
    path.write_text("\n".join(str(v) for v in np.random.default_rng(0).exponential(size=500)))
    m = families.empirical_marginal(path)
    x = m.quantile(np.linspace(0.001, 0.999, 999))
    assert x.min() > -1.2 and skew(x) > 1  # an exponential, standardised: bounded below near -1, skewed right
    (tmp_path / "bad.txt").write_text("1\nnot a number\n")
    with pytest.raises(Exception, match="one number a line"):
        families.empirical_marginal(tmp_path / "bad.txt")


def test_an_unknown_family_is_one_line_and_exit_2_before_anything_runs():
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "stream.cli", "bench", "detect", "--families", "gaussian,bogus"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip().endswith("--families: no family bogus; known: " + ", ".join(families.families()))


def test_bench_detect_reports_each_family_as_json():
    import json
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "stream.cli", "bench", "detect", "--per-shift", "1", "--steady", "2",
                          "--families", "gaussian,outliers", "--decompose", "--json"], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr
    figures = json.loads(out.stdout)["families"]
    assert list(figures) == ["gaussian", "outliers"]
    for f in figures.values():
        assert f["steady_segments"] == 2 * bench.STEADY_LENGTH and f["shift_streams"] == 2 * len(bench.SHIFTS)
        assert set(f["meets"]) == {"false_alarms", "recall_60_ge_0.5", "recall_30_ge_0.8", "delay"}
        assert f["false_alarm_ratio"] == f["cusum"]["false_alarms"] / f["steady_segments"] * 1e4
        assert set(f["decomposition"]) == {"told-rho", "told-rho-sd"}
        assert all(d["0.5"]["shifts"] == 2 for d in f["decomposition"].values())
    # the table shows each family's delay against the bound at its streams' long-run sd as well
    table = bench.format_families(figures, 1.0).splitlines()
    for name, f in figures.items():
        row = next(line for line in table if line.startswith(f"| {name} |"))
        c, o = f["cusum"]["0.5"], f["oracle-level-estimated"]["0.5"]
        long_run = f"{c['median_delay'] / c['bound_long_run_sd']:.2f} ({o['median_delay'] / o['bound_long_run_sd']:.2f})"
        assert [cell.strip() for cell in row.split("|")][7] == long_run
        low, high = c["median_over_bound_interval"]  # and its delay with the median's 95 % interval
        delay = f"{c['median_over_bound']:.2f} [{low:.2f}-{high:.2f}]"
        assert [cell.strip() for cell in row.split("|")][6].startswith(delay)
    # and, decomposed, the detector's recall beside the told detectors' and the oracle's
    for name, f in figures.items():
        steps = [f["cusum"], *f["decomposition"].values(), f["oracle-level-estimated"]]
        recall_60 = " / ".join(f"{s['recall_60_ge_0.5']:.1%}" for s in steps)
        assert any(line.startswith(f"| {name} | {recall_60} | ") for line in table)


def test_bench_detect_false_alarms_only_counts_the_steady_streams_alone():
    import json
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "stream.cli", "bench", "detect", "--false-alarms-only", "--steady", "3",
                          "--families", "gaussian,mixture", "--json"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    figures = json.loads(out.stdout)
    assert list(figures) == ["gaussian", "mixture"]
    for name, f in figures.items():
        # the same count the detector gives on the same streams, fed as the worker feeds them
        _, calm = bench.build_family(families.families()[name], 7, 0, 3, DetectorParams().warmup)
        prior = bench.history_prior(families.families()[name].generate, 7, DetectorParams())
        alarms = bench.cusum_alarms(calm, DetectorParams(), prior=prior)[0]
        assert f["false_alarms"] == int(alarms.sum()) and f["steady_segments"] == 3 * bench.STEADY_LENGTH
        low, high = f["false_alarms_per_10k_interval"]
        assert low <= f["false_alarms_per_10k"] <= high
        assert f["within_band"] == (bench.FA_BAND[0] <= f["false_alarm_ratio"] <= bench.FA_BAND[1])
    for bad in (["--decompose"], ["--families", "none"]):
        out = subprocess.run([sys.executable, "-m", "stream.cli", "bench", "detect", "--false-alarms-only", *bad],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 2 and out.stdout == "" and "--false-alarms-only" in out.stderr


def test_the_median_delays_interval_covers_the_median_as_often_as_the_binomial_says():
    """Order statistics at the binomial's ranks: on 200 delays the interval runs from the 86th to
    the 115th, and covers the true median with probability 1 - 2 P(Bin(200, 1/2) <= 85)."""
    assert bench.median_interval(np.arange(1.0, 201.0)) == (86.0, 115.0)
    never_caught = np.r_[np.arange(1.0, 101.0), np.full(100, np.inf)]  # shifts never caught sort last
    assert bench.median_interval(never_caught) == (86.0, np.inf)
    rng = np.random.default_rng(5)
    draws = 2000
    covered = np.mean([low <= np.log(2) <= high for low, high in
                       (bench.median_interval(rng.exponential(1.0, 200)) for _ in range(draws))])
    coverage = 1 - 2 * binom.cdf(85, 200, 0.5)
    assert abs(covered - coverage) <= 4 * np.sqrt(coverage * (1 - coverage) / draws)


def test_bench_detect_delay_only_measures_the_half_shifts_alone():
    import json
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "stream.cli", "bench", "detect", "--delay-only", "--per-shift", "3",
                          "--families", "outliers", "--json"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    f = json.loads(out.stdout)["outliers"]
    # the same delays the detector gives on the same streams, fed as the worker feeds them
    family, params = families.families()["outliers"], DetectorParams()
    rng = np.random.default_rng(7)
    shifted = [family.generate(rng, bench.SHIFT_LENGTH, family.shift_at(rng, params.warmup), sign * 0.5)
               for sign in (1, -1) for _ in range(3)]
    prior = bench.history_prior(family.generate, 7, params)
    delays = bench.delays(shifted, bench.cusum_alarms(shifted, params, prior=prior)[1])
    assert f["shifts"] == 6 and f["median_delay"] == float(np.median(delays))
    assert f["median_delay_interval"] == list(bench.median_interval(delays))
    assert f["meets"] == (f["median_over_bound"] <= bench.DELAY_SLACK)
    # and the level-estimating oracle's on the same streams
    oracle = bench.cusum_alarms(shifted, params, lambda s: baselines.oracle_fit(s.sd, s.rho, 0.5))[1]
    assert f["oracle-level-estimated"]["median_delay"] == float(np.median(bench.delays(shifted, oracle)))
    o = f["oracle-level-estimated"]
    table = bench.format_delays({"outliers": f})
    assert f"| outliers | 6 | {f['recall_60']:.1%} ({o['recall_60']:.1%}) | {f['median_delay']:g} [" in table
    for bad in (["--decompose"], ["--families", "none"], ["--false-alarms-only"]):
        out = subprocess.run([sys.executable, "-m", "stream.cli", "bench", "detect", "--delay-only", *bad],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 2 and out.stdout == "" and "--delay-only" in out.stderr
