import math

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import random_batch, small_config, small_model
from trainer.model import (
    ABLATIONS,
    TeCaFNConfig,
    apply_ablation,
    info_nce,
    mine_hard_negatives,
    replacement_gate,
)


def test_prediction_shape_and_range(model, batch):
    model.eval()
    out = model(batch)
    assert out.prediction.shape == (6,)
    assert torch.all(out.prediction.abs() <= 3.0)


def test_training_forward_returns_every_loss_component(model, batch):
    model.train()
    out = model(batch)
    assert set(out.losses) == {"L_uccon_ta", "L_uccon_tv", "L_ap_ta", "L_ap_tv", "L_bicon"}
    losses = model.loss(out, batch["labels"])
    expected = losses["L_task"] + 0.1 * (losses["L_uccon"] + losses["L_bicon"]) + 0.1 * losses["L_ap"]
    assert torch.allclose(losses["total"], expected)
    losses["total"].backward()
    assert model.coat["audio"].layers[0].attn.q.weight.grad is not None


def _pad(batch, extra_text=4, extra_a=5, extra_v=3):
    padded = dict(batch)
    padded["input_ids"] = F.pad(batch["input_ids"], (0, extra_text))
    padded["attention_mask"] = F.pad(batch["attention_mask"], (0, extra_text))
    padded["audio"] = F.pad(batch["audio"], (0, 0, 0, extra_a), value=7.0)  # garbage in the padding
    padded["visual"] = F.pad(batch["visual"], (0, 0, 0, extra_v), value=-5.0)
    return padded


def test_padding_never_changes_the_prediction(model, batch):
    model.eval()
    with torch.no_grad():
        a = model(batch).prediction
        b = model(_pad(batch)).prediction
    assert torch.allclose(a, b, atol=1e-5)


def test_padding_garbage_changes_nothing_but_real_frames_do(model, batch):
    model.eval()
    changed = dict(batch)
    changed["audio"] = batch["audio"].clone()
    changed["audio"][0, 0] += 3.0  # a real frame of sample 0
    with torch.no_grad():
        a, b = model(batch).prediction, model(changed).prediction
    assert not torch.isclose(a[0], b[0])
    assert torch.allclose(a[1:], b[1:])


def test_info_nce_matches_a_hand_computation():
    q = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    k = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    tau = 0.5
    # cosine similarities: S = [[1, 1/sqrt2], [0, 1/sqrt2]]
    s = [[1.0, 1 / math.sqrt(2)], [0.0, 1 / math.sqrt(2)]]
    row = lambda i: -s[i][i] / tau + math.log(sum(math.exp(s[i][j] / tau) for j in range(2)))  # noqa: E731
    col = lambda j: -s[j][j] / tau + math.log(sum(math.exp(s[i][j] / tau) for i in range(2)))  # noqa: E731
    expected = 0.5 * ((row(0) + row(1)) / 2 + (col(0) + col(1)) / 2)
    loss, sim = info_nce(q, k, tau)
    assert sim.flatten().tolist() == pytest.approx([x for r in s for x in r], abs=1e-6)
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_mining_excludes_self_and_returns_exactly_the_top_num():
    torch.manual_seed(1)
    for b in (2, 3, 5, 16):
        sim = torch.randn(b, b)
        sim.fill_diagonal_(10.0)  # the sample itself is always the most similar: must still be excluded
        idx = mine_hard_negatives(sim, num=3)
        k = min(3, b - 1)
        assert idx.shape == (b, k)
        for i in range(b):
            assert i not in idx[i].tolist()
            others = sorted((j for j in range(b) if j != i), key=lambda j: -sim[i, j].item())[:k]
            assert set(idx[i].tolist()) == set(others)


def test_mining_without_hard_negatives_offers_every_other_sample():
    idx = mine_hard_negatives(torch.randn(5, 5), num=3, hard=False)
    assert idx.shape == (5, 4)
    for i in range(5):
        assert sorted(idx[i].tolist()) == [j for j in range(5) if j != i]


@pytest.mark.parametrize("p", [0.0, 0.3, 0.7, 1.0])
def test_gate_replacement_rate_is_p_and_labels_follow_table_2(p):
    g = torch.Generator().manual_seed(0)
    b, draws = 64, 200
    sim = torch.randn(b, b, generator=g)
    candidates = mine_hard_negatives(sim, 3)
    replaced = 0
    for _ in range(draws):
        source, label = replacement_gate(candidates, p, g)
        swapped = source != torch.arange(b)
        assert torch.equal(label, (~swapped).long())  # 1 = original pair, 0 = replaced
        for i in torch.nonzero(swapped).flatten().tolist():
            assert source[i].item() in candidates[i].tolist()  # only ever a hard negative
        replaced += int(swapped.sum())
    n = b * draws
    sigma = math.sqrt(n * p * (1 - p))
    assert abs(replaced - n * p) <= 3 * sigma + 1e-9


def test_gate_draws_uniformly_from_the_top_num():
    g = torch.Generator().manual_seed(0)
    candidates = torch.tensor([[1, 2, 3]])
    counts = torch.zeros(4)
    for _ in range(3000):
        source, _ = replacement_gate(torch.cat([candidates, torch.tensor([[0, 2, 3]])]), 1.0, g)
        counts[source[0]] += 1
    assert counts[0] == 0
    for j in (1, 2, 3):  # each ~1000; 3 sigma of a binomial(3000, 1/3) is ~77
        assert abs(counts[j] - 1000) < 80


def test_no_replacement_in_eval_mode(model, batch):
    model.eval()
    out = model(batch)
    assert out.pseudo_labels == {} and out.losses == {}


def test_in_eval_a_score_does_not_depend_on_the_rest_of_the_batch(model, batch):
    model.eval()
    with torch.no_grad():
        whole = model(batch).prediction
        alone = torch.cat([model({k: v[i:i + 1] for k, v in batch.items()}).prediction for i in range(6)])
    assert torch.allclose(whole, alone, atol=1e-5)


def test_gate_actually_swaps_the_side_modality_in_training():
    m = small_model(p=1.0)
    m.train()
    torch.manual_seed(0)
    out = m(random_batch(b=8))
    assert torch.all(out.pseudo_labels["ta"] == 0) and torch.all(out.pseudo_labels["tv"] == 0)


@pytest.mark.parametrize("name", list(ABLATIONS))
def test_every_ablation_builds_and_runs(name):
    config = apply_ablation(small_config(), name)
    torch.manual_seed(0)
    from tests.conftest import tiny_bert
    from trainer.model import TeCaFN
    m = TeCaFN(config, tiny_bert()).train()
    batch = random_batch()
    losses = m.loss(m(batch), batch["labels"])
    losses["total"].backward()
    assert torch.isfinite(losses["total"])


def test_ablations_switch_the_right_parts():
    out_of = lambda name: set(small_model(**_fields(name)).train()(random_batch()).losses)  # noqa: E731
    assert out_of("wo-uccon-ta") == {"L_uccon_tv", "L_ap_ta", "L_ap_tv", "L_bicon"}
    assert out_of("wo-gate") == {"L_uccon_ta", "L_uccon_tv", "L_bicon"}
    assert out_of("wo-bicon") == {"L_uccon_ta", "L_uccon_tv", "L_ap_ta", "L_ap_tv"}
    assert out_of("wo-v") == {"L_uccon_ta", "L_ap_ta"}
    assert out_of("wo-va") == set()
    assert out_of("audio-centred") == {"L_uccon_at", "L_uccon_av", "L_ap_at", "L_ap_av", "L_bicon"}


def _fields(name):
    c = apply_ablation(small_config(), name)
    return {k: getattr(c, k) for k in ("modalities", "center", "contrast_sides", "gate_sides",
                                       "hard_negative_sides", "use_bicon")}


def test_unknown_ablation_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown ablation 'wo-everything'.*full"):
        apply_ablation(TeCaFNConfig(), "wo-everything")


def test_config_rejects_nonsense():
    with pytest.raises(ValueError, match="p must be in"):
        TeCaFNConfig(p=1.5)
    with pytest.raises(ValueError, match="divisible"):
        TeCaFNConfig(d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="centre"):
        TeCaFNConfig(center="audio", modalities=("text",))


def test_batch_of_one_trains_without_swapping():
    m = small_model().train()
    out = m(random_batch(b=1))
    assert out.pseudo_labels["ta"].tolist() == [1]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_runs_on_cuda():
    m = small_model().cuda().train()
    batch = {k: v.cuda() for k, v in random_batch().items()}
    m.loss(m(batch), batch["labels"])["total"].backward()
