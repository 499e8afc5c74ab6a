import pytest
import torch

from stream.errors import UserError
from trainer.ablate import (
    Run,
    markdown_table,
    parse_sweep,
    plan,
    plan_changes,
    run_ablations,
)
from trainer.bench import loop_gate, vector_gate
from trainer.data import load_dataset
from trainer.train import TrainOptions


def test_plan_and_sweeps():
    assert [r.name for r in plan(None, None)][:3] == ["full", "wo-uccon-ta", "wo-uccon-tv"]
    assert plan(["wo-v"], "num=1,5") == [Run("wo-v", "wo-v"), Run("num=1", "full", {"num": 1}),
                                         Run("num=5", "full", {"num": 5})]
    with pytest.raises(UserError, match="must be ints"):
        parse_sweep("num=1.5")
    with pytest.raises(UserError, match="unknown ablation"):
        plan(["wo-x"], None)


@pytest.mark.slow  # trains several small models
def test_ablation_run_writes_the_papers_table(tmp_path):
    ds = load_dataset("synthetic", n=60, max_frames=8)
    opts = TrainOptions(out=tmp_path, epochs=1, text_encoder="tiny", progress=False, max_frames=8,
                        model_overrides=dict(encoder_layers=1, cross_layers=1, d_model=16, n_heads=2))
    table = run_ablations(ds, opts, plan(["full", "wo-gate"], "p=0.3"))
    lines = table.strip().splitlines()
    assert lines[0].startswith("| Model | test | MAE")
    assert [line.split("|")[1].strip() for line in lines[2:]] == ["TeCaFN", "", "w/o gates", "",
                                                                  "TeCaFN, p=0.3", ""]
    assert [line.split("|")[2].strip() for line in lines[2:4]] == ["all sides", "sides removed"]
    assert (tmp_path / "ablation.md").read_text() == table
    assert (tmp_path / "p_0.3" / "metrics.json").exists()


@pytest.mark.slow  # trains several small models
def test_changes_add_one_thing_per_row_and_seeds_give_mean_and_sd(tmp_path):
    runs = plan_changes(0.25)
    assert [r.name for r in runs] == ["before", "bucketing", "standardise", "mappers", "dropout",
                                      "dropout-wo-mappers"]
    first, last = runs[0], runs[4]
    assert first.options == {"bucket": False, "standardise": False, "modality_dropout": 0.0}
    assert first.model == {"contrast_mappers": False}
    assert last.options == {"modality_dropout": 0.25} and last.model == {}
    ds = load_dataset("synthetic", n=60, max_frames=8)
    opts = TrainOptions(out=tmp_path, epochs=1, text_encoder="tiny", progress=False, max_frames=8, seeds=2,
                        model_overrides=dict(encoder_layers=1, cross_layers=1, d_model=16, n_heads=2))
    table = run_ablations(ds, opts, [runs[0]])
    row = table.strip().splitlines()[2]
    assert row.count("±") == 7  # every metric as mean ± sd
    for seed in (1111, 1112):
        saved = (tmp_path / "before" / f"seed_{seed}" / "checkpoint.pt")
        assert saved.exists()


def test_binary_table():
    table = markdown_table([(Run("full"), {"test": {"acc2": 0.5, "f1": 0.4}})], "binary")
    assert "| Acc-2 | F1 |" in table and "| TeCaFN | 50.00 | 40.00 |" in table


def test_the_benchmarked_loop_and_vector_gates_do_the_same_job():
    torch.manual_seed(0)
    b = 16
    side, mask = torch.randn(b, 5, 3), torch.ones(b, 5, dtype=torch.bool)
    sim = torch.randn(b, b)
    top = sim.masked_fill(torch.eye(b, dtype=torch.bool), float("-inf")).topk(3, dim=1).indices
    for gate in (loop_gate, vector_gate):
        chosen, _, labels = gate(side, mask, sim, 1.0, 3)
        assert labels.tolist() == [0] * b
        for i in range(b):
            j = next(j for j in range(b) if torch.equal(chosen[i], side[j]))
            assert j != i and j in top[i].tolist()


@pytest.mark.slow  # trains several small models
def test_bench_train_measures_every_setting_on_the_same_batches():
    from trainer.bench import SPEED_SETTINGS, bench_train, format_train_report
    ds = load_dataset("synthetic", n=200, max_frames=8)
    result = bench_train(ds, "tiny", batch_size=16, steps=3)
    assert set(result["settings"]) == set(SPEED_SETTINGS)
    for s in result["settings"].values():
        assert s["samples_per_s"] > 0 and s["steps"] == 3
    assert result["settings"]["before"]["speedup"] == 1.0
    assert "bucketed+fused" in format_train_report(result)
