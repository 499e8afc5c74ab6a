import pytest
import torch

from stream.errors import UserError
from trainer.ablate import markdown_table, parse_sweep, plan, run_ablations
from trainer.bench import loop_gate, vector_gate
from trainer.data import load_dataset
from trainer.train import TrainOptions


def test_plan_and_sweeps():
    assert [r for r, _, _ in plan(None, None)][:3] == ["full", "wo-uccon-ta", "wo-uccon-tv"]
    assert plan(["wo-v"], "num=1,5") == [("wo-v", "wo-v", {}), ("num=1", "full", {"num": 1}),
                                         ("num=5", "full", {"num": 5})]
    with pytest.raises(UserError, match="must be ints"):
        parse_sweep("num=1.5")
    with pytest.raises(UserError, match="unknown ablation"):
        plan(["wo-x"], None)


def test_ablation_run_writes_the_papers_table(tmp_path):
    ds = load_dataset("synthetic", n=60, max_frames=8)
    opts = TrainOptions(out=tmp_path, epochs=1, text_encoder="tiny", progress=False, max_frames=8,
                        model_overrides=dict(encoder_layers=1, cross_layers=1, d_model=16, n_heads=2))
    table = run_ablations(ds, opts, rows=["full", "wo-gate"], sweep="p=0.3")
    lines = table.strip().splitlines()
    assert lines[0].startswith("| Model | MAE")
    assert [line.split("|")[1].strip() for line in lines[2:]] == ["TeCaFN", "w/o gates", "TeCaFN, p=0.3"]
    assert (tmp_path / "ablation.md").read_text() == table
    assert (tmp_path / "p_0.3" / "metrics.json").exists()


def test_binary_table():
    assert "| Acc-2 | F1 |" in markdown_table([("full", "full", {"acc2": 0.5, "f1": 0.4})], "binary")


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
