import numpy as np
import pytest
from scipy.stats import pearsonr
from sklearn.metrics import accuracy_score, f1_score

from trainer.metrics import binary_metrics, regression_metrics


def test_hand_worked_case():
    truth = np.array([-2.6, -0.4, 0.0, 0.0, 1.4, 2.8])
    pred = np.array([-1.4, 0.2, -0.3, 0.1, 1.6, 3.5])
    m = regression_metrics(pred, truth)
    assert m["mae"] == pytest.approx(np.mean([1.2, 0.6, 0.3, 0.1, 0.2, 0.7]))
    # rounded, clipped: truth [-3, 0, 0, 0, 1, 3], pred [-1, 0, 0, 0, 2, 3] -> 4 of 6
    assert m["acc7"] == pytest.approx(4 / 6)
    # has0: truth>=0 [F,F,T,T,T,T], pred>=0 [F,T,F,T,T,T] -> 4 of 6
    assert m["acc2_has0"] == pytest.approx(4 / 6)
    # non0 drops the two zeros: truth>0 [F,F,T,T], pred>0 [F,T,T,T] -> 3 of 4
    assert m["acc2_non0"] == pytest.approx(3 / 4)


def test_against_scikit_learn_and_scipy():
    rng = np.random.default_rng(0)
    truth = np.round(rng.uniform(-3, 3, 500) * 2) / 2  # has exact zeros, as MOSI does
    pred = np.clip(truth + rng.normal(0, 0.9, 500), -3.2, 3.2)
    m = regression_metrics(pred, truth)
    assert m["corr"] == pytest.approx(pearsonr(pred, truth)[0], abs=1e-10)
    assert m["f1_has0"] == pytest.approx(f1_score(truth >= 0, pred >= 0, average="weighted"), abs=1e-12)
    nz = truth != 0
    assert (truth == 0).sum() > 0
    assert m["acc2_non0"] == pytest.approx(accuracy_score(truth[nz] > 0, pred[nz] > 0))
    assert m["f1_non0"] == pytest.approx(f1_score(truth[nz] > 0, pred[nz] > 0, average="weighted"), abs=1e-12)


def test_binary_metrics():
    m = binary_metrics([2.0, -1.0, 0.5, -0.2], [1, 0, 0, 0])
    assert m["acc2"] == pytest.approx(0.75)
    assert m["f1"] == pytest.approx(f1_score([1, 0, 0, 0], [1, 0, 1, 0], average="weighted"))


def test_mismatched_lengths_are_an_error():
    with pytest.raises(ValueError, match="equally long"):
        regression_metrics([1.0, 2.0], [1.0])
