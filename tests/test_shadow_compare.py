"""The comparison's maths against independent answers: scipy's, and cases worked by hand."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from stream.shadow import compare
from stream.shadow.compare import AlertMark


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_wasserstein_and_ks_equal_scipys(seed):
    rng = np.random.default_rng(seed)
    live, candidate = rng.normal(0, 0.8, 300), rng.normal(0.3, 1.1, 170)
    assert compare.wasserstein(live, candidate) == pytest.approx(
        stats.wasserstein_distance(live, candidate) / np.std(live), rel=1e-9)
    assert compare.ks(live, candidate) == pytest.approx(stats.ks_2samp(live, candidate).statistic, rel=1e-12)


def test_a_shift_moves_every_score_by_its_size():
    """W1 between a sample and itself shifted by d is d: normalised, d over the live spread."""
    live = np.random.default_rng(3).normal(0, 0.75, 500)
    assert compare.wasserstein(live, live + 0.5) == pytest.approx(0.5 / np.std(live))
    assert compare.wasserstein(live, live) == 0.0
    assert compare.ks(live, live) == 0.0


def test_psi_by_hand():
    """Live 0..9 cut at its deciles: one value a bin, 10 % each. A candidate with all of its 10
    scores in the lowest bin: that bin 1.0, the other nine floored at 1e-4."""
    live = np.arange(10, dtype=float)
    expected = (1.0 - 0.1) * np.log(1.0 / 0.1) + 9 * (1e-4 - 0.1) * np.log(1e-4 / 0.1)
    assert compare.psi(live, np.full(10, -5.0)) == pytest.approx(expected)
    assert compare.psi(live, live) == 0.0


def test_agreement_by_hand():
    live = np.array([-2.4, -0.6, 0.2, 1.4, 2.6])
    candidate = np.array([-2.6, 0.4, 0.6, 1.6, 3.4])
    s = compare.scores(live, candidate)
    assert s["mae"] == pytest.approx((0.2 + 1.0 + 0.4 + 0.2 + 0.8) / 5)
    assert s["sign_agreement"] == pytest.approx(4 / 5)  # -0.6 against +0.4 differs
    # 7 classes: live -2 -1 0 1 3, candidate -3 0 1 2 3 -> only the last agrees
    assert s["class7_agreement"] == pytest.approx(1 / 5)
    assert s["correlation"] == pytest.approx(stats.pearsonr(live, candidate).statistic)


def test_the_same_scores_agree_fully():
    live = np.random.default_rng(4).normal(0, 1, 200)
    s = compare.scores(live, live.copy())
    assert (s["mae"], s["wasserstein"], s["ks"], s["psi"]) == (0.0, 0.0, 0.0, 0.0)
    assert s["sign_agreement"] == s["class7_agreement"] == 1.0
    assert s["correlation"] == pytest.approx(1.0)


def test_alerts_match_within_the_tolerance_only():
    live = [AlertMark("a", 100, "down"), AlertMark("a", 400, "up"), AlertMark("b", 50, "up")]
    candidate = [AlertMark("a", 108, "down"),  # matches a@100 (8 apart)
                 AlertMark("a", 430, "up"),  # 30 apart: beyond 20
                 AlertMark("b", 52, "down")]  # wrong direction
    found = compare.alerts(live, candidate, tolerance=20)
    assert found["matched"] == 1
    assert found["precision"] == pytest.approx(1 / 3) and found["recall"] == pytest.approx(1 / 3)
    assert found["jaccard"] == pytest.approx(1 / 5)
    assert {(m["stream"], m["position"]) for m in found["only_live"]} == {("a", 400), ("b", 50)}
    assert compare.alerts(live, candidate, tolerance=30)["matched"] == 2


def test_no_alerts_on_either_side_is_agreement():
    found = compare.alerts([], [], tolerance=5)
    assert found["jaccard"] == 1.0 and found["only_live"] == found["only_candidate"] == []


def test_contributions_moved_per_side():
    moved = compare.contributions_moved([{"audio": 0.1, "vision": -0.2}, {"audio": 0.3}, None],
                                        [{"audio": 0.4, "vision": -0.2}, {"audio": 0.0}, {"audio": 1.0}])
    assert moved == {"audio": pytest.approx(0.3), "vision": pytest.approx(0.0)}


def test_the_histogram_counts_each_side_in_quarter_points():
    found = compare.histogram(np.array([-3.0, -0.1, 0.1, 0.2]), np.array([2.9, 5.0]))
    assert len(found["edges"]) == 25 and sum(found["live"]) == pytest.approx(1.0)
    assert found["live"][0] == 0.25 and found["live"][11] == 0.25 and found["live"][12] == 0.5
    assert found["candidate"][23] == 1.0  # 5.0 is clipped into the last bin
