"""Distillation (trainer/distill.py): a student trained with a teacher's scores moves toward
them, against a student trained without them on the same seed; the scores are computed once."""
from dataclasses import replace
from functools import partial

import numpy as np
import pytest
from scipy import stats

from stream.errors import UserError
from trainer import distill
from trainer.data import load_dataset
from trainer.train import TrainOptions, checkpoint_predictions, train

SMALL = dict(encoder_layers=1, cross_layers=1, d_model=16, n_heads=2)


def quick(out, epochs=4, **extra) -> TrainOptions:
    return TrainOptions(out=out, epochs=epochs, text_encoder="tiny", progress=False, patience=100, max_frames=12,
                        model_overrides=SMALL, **extra)


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic", seed=0, n=300, max_frames=12)


@pytest.fixture(scope="module")
def teacher(data, tmp_path_factory):
    """A teacher that disagrees with the labels: trained on them negated, so that a student that
    follows it is told apart from one that follows the labels."""
    flipped = replace(data, **{s: replace(data.split(s), labels=-data.split(s).labels)
                               for s in ("train", "valid", "test")})
    out = tmp_path_factory.mktemp("teacher")
    train(flipped, quick(out, epochs=6))
    return out


def train_predictions(run, data) -> np.ndarray:
    return checkpoint_predictions(run / "checkpoint.pt", data.split("train"), "cpu")


def teacher_scores(teacher, data):
    return distill.teacher_scores(teacher, data, partial(checkpoint_predictions, device="cpu"))


@pytest.mark.slow
def test_a_student_with_a_teacher_moves_toward_its_scores(data, teacher, tmp_path):
    plain = train(data, quick(tmp_path / "plain"))
    taught = train(data, quick(tmp_path / "taught", teacher=teacher, distill_weight=0.8))
    assert taught["teacher"] == str(teacher) and taught["distill_weight"] == 0.8 and "teacher" not in plain
    scores = teacher_scores(teacher, data).numpy()
    np.testing.assert_allclose(scores, train_predictions(teacher, data), atol=1e-6)  # the cached scores are its own
    apart_plain = np.abs(train_predictions(tmp_path / "plain", data) - scores)
    apart_taught = np.abs(train_predictions(tmp_path / "taught", data) - scores)
    # each training segment: is the taught student nearer the teacher than the plain one (same seed)?
    p = stats.wilcoxon(apart_taught, apart_plain, alternative="less").pvalue
    assert apart_taught.mean() < apart_plain.mean() and p < 1e-3, (apart_taught.mean(), apart_plain.mean(), p)


@pytest.mark.slow
def test_teacher_scores_are_computed_once_and_follow_the_split(data, teacher):
    first = teacher_scores(teacher, data)
    kept = sorted((teacher / distill.SCORES_DIR).glob("*.npy"))
    assert len(kept) == 1
    stamp = kept[0].stat().st_mtime_ns
    assert np.array_equal(teacher_scores(teacher, data), first)
    assert kept[0].stat().st_mtime_ns == stamp  # read back, not computed again
    fewer = replace(data, train=data.train.subset(np.arange(100)))
    assert len(teacher_scores(teacher, fewer)) == 100  # another split, other scores
    assert len(list((teacher / distill.SCORES_DIR).glob("*.npy"))) == 2


def test_a_teacher_without_a_checkpoint_and_a_weight_without_a_teacher_are_one_line(tmp_path):
    with pytest.raises(UserError, match=r"^--teacher .*: no checkpoint.pt there nor in seed_\*/"):
        distill.teacher_checkpoints(tmp_path)
    with pytest.raises(UserError, match=r"^--distill-weight weighs a teacher's scores: give the teacher with "
                                        r"--teacher RUN_DIR$"):
        quick(tmp_path, distill_weight=0.5)
