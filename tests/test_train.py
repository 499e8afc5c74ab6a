"""Training on the synthetic set: the loss falls, the model beats the mean, and the multimodal
model beats its text-only ablation with the same budget. Small but real runs (tiny BERT)."""
import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from stream.errors import UserError
from trainer.data import load_dataset
from trainer.train import TrainOptions, evaluate_checkpoint, train

SMALL = dict(encoder_layers=1, cross_layers=1, d_model=32, n_heads=4)


@pytest.fixture(scope="module")
def synthetic():
    # Strong non-text cues make the multimodal gain visible in a few epochs.
    return load_dataset("synthetic", seed=0, n=600, cue_strength=1.5, max_frames=20)


@pytest.fixture(scope="module")
def full_run(synthetic, tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    metrics = train(synthetic, TrainOptions(out=out, epochs=8, text_encoder="tiny", progress=False, patience=100,
                                            log_every=2, model_overrides=SMALL))
    return out, metrics


@pytest.mark.slow
def test_training_lowers_the_loss_and_beats_the_mean(synthetic, full_run):
    out, metrics = full_run
    with (out / "losses.csv").open() as f:
        task = [float(r["L_task"]) for r in csv.DictReader(f)]
    assert np.mean(task[-5:]) < 0.8 * np.mean(task[:5])
    mean_mae = float(np.mean(np.abs(synthetic.test.labels - synthetic.train.labels.mean())))
    assert metrics["test"]["mae"] < 0.9 * mean_mae
    assert metrics["test"]["corr"] > 0.3
    written = json.loads((out / "metrics.json").read_text())
    assert set(written["test"]) == {"mae", "corr", "acc7", "acc2_has0", "acc2_non0", "f1_has0", "f1_non0"}
    assert (out / "losses.png").stat().st_size > 1000


@pytest.mark.slow
def test_full_model_beats_the_text_only_ablation_with_the_same_budget(synthetic, full_run, tmp_path):
    _, full = full_run
    text_only = train(synthetic, TrainOptions(out=tmp_path, epochs=8, text_encoder="tiny", progress=False,
                                              patience=100, ablation="wo-va", model_overrides=SMALL))
    assert full["test"]["mae"] < text_only["test"]["mae"]
    assert full["test"]["corr"] > text_only["test"]["corr"]


@pytest.mark.slow
def test_evaluate_reproduces_the_saved_metrics(synthetic, full_run):
    out, metrics = full_run
    again = evaluate_checkpoint(out / "checkpoint.pt", synthetic)
    assert again["test"]["mae"] == pytest.approx(metrics["test"]["mae"], abs=1e-6)


def test_evaluate_rejects_data_of_the_wrong_width(synthetic, full_run):
    out, _ = full_run
    other = load_dataset("synthetic", seed=0, n=60, d_audio=9)
    with pytest.raises(UserError, match="audio width 9 differs from the checkpoint's 5"):
        evaluate_checkpoint(out / "checkpoint.pt", other)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "stream.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args, message", [
    (["train", "--data", "/no/such/dir", "--out", "x"], "no such file or directory"),
    (["train", "--data", "synthetic", "--out", "x", "--ablation", "wo-magic"], "--ablation 'wo-magic': choose one of full"),
    (["train", "--data", "synthetic", "--out", "x", "--epochs", "0"], "must be > 0"),
    (["train", "--data", "synthetic", "--out", "x", "--set", "bogus=1"], "expected FIELD=VALUE"),
    (["train", "--data", "synthetic", "--out", "x", "--device", "cuda:7"], "CUDA is not available"),
    (["evaluate", "--checkpoint", "/no/ckpt.pt", "--data", "synthetic"], "no such checkpoint"),
    (["ablate", "--data", "synthetic", "--out", "x", "--sweep", "q=1,2"], "--sweep must look like"),
    (["ablate", "--data", "synthetic", "--out", "x", "--rows", "full", "wo-nothing"], "unknown ablation 'wo-nothing'"),
])
def test_cli_bad_input_is_one_clear_line(args, message, tmp_path):
    if "--device" in args:
        import torch
        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
    result = run_cli(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
