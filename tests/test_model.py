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
    modality_dropout,
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


def test_non_finite_padding_changes_nothing(model, batch):
    model.eval()
    padded = _pad(batch)
    padded["audio"][:, -5:] = float("nan")
    padded["visual"][:, -3:] = float("inf")
    with torch.no_grad():
        assert torch.allclose(model(batch).prediction, model(padded).prediction, atol=1e-5)


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
    # each of these failed deep inside torch, or (tau=0) trained to NaN without a word
    for field, value, allowed in (("d_model", 0, "an integer >= 1"), ("dropout", 1.0, "in \\[0, 1\\)"),
                                  ("conv_kernel", 2, "an odd integer"), ("tau", 0.0, "a finite number > 0"),
                                  ("tau", float("nan"), "a finite number > 0"), ("gamma1", -0.1, "a finite number >= 0")):
        with pytest.raises(ValueError, match=f"{field} must be {allowed}"):
            TeCaFNConfig(**{field: value})


def test_config_accepts_the_edges_of_each_range():
    edges = TeCaFNConfig(d_model=1, n_heads=1, encoder_layers=0, cross_layers=0, conv_kernel=1, dropout=0.0, p=1.0,
                         gamma1=0.0, gamma2=0.0, num=1)
    assert TeCaFNConfig.from_dict(edges.to_dict()) == edges
    assert all(apply_ablation(TeCaFNConfig(), name) for name in ABLATIONS)


def test_batch_of_one_trains_without_swapping():
    m = small_model().train()
    out = m(random_batch(b=1))
    assert out.pseudo_labels["ta"].tolist() == [1]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_runs_on_cuda():
    m = small_model().cuda().train()
    batch = {k: v.cuda() for k, v in random_batch().items()}
    m.loss(m(batch), batch["labels"])["total"].backward()


# --------------------------------------------------------------------------------------------
# Missing modalities: the presence input

def _without_audio_frames(batch, rows):
    """The same segments, with audio truly absent for `rows`: zero frames and garbage after."""
    absent = dict(batch)
    absent["audio_lengths"] = batch["audio_lengths"].clone()
    absent["audio_lengths"][rows] = 0
    absent["audio"] = batch["audio"].clone()
    absent["audio"][rows] = 99.0
    return absent


def test_a_flagged_absent_side_scores_as_if_it_had_no_frames(model, batch):
    model.eval()
    present = torch.ones(6, 2, dtype=torch.bool)
    present[[1, 4], 0] = False  # samples 1 and 4: no audio
    with torch.no_grad():
        flagged = model({**batch, "present": present}).prediction
        no_frames = model(_without_audio_frames(batch, [1, 4])).prediction
        full = model(batch).prediction
    assert torch.allclose(flagged, no_frames, atol=1e-6)
    assert not torch.isclose(flagged[1], full[1]) and not torch.isclose(flagged[4], full[4])
    assert torch.allclose(flagged[[0, 2, 3, 5]], full[[0, 2, 3, 5]], atol=1e-6)


def test_a_batch_with_zero_frames_gives_the_scores_of_flagged_absence(model, batch):
    model.eval()
    empty = {**batch, "audio": batch["audio"][:, :0], "audio_lengths": torch.zeros(6, dtype=torch.long)}
    with torch.no_grad():
        a = model(empty).prediction
        b = model({**batch, "present": torch.tensor([[False, True]] * 6)}).prediction
    assert torch.allclose(a, b, atol=1e-6)


def test_a_batch_without_the_modality_at_all_gives_the_same_scores(model, batch):
    model.eval()
    no_visual = {k: v for k, v in batch.items() if not k.startswith("visual")}
    present = torch.tensor([[True, False]] * 6)
    with torch.no_grad():
        a = model(no_visual).prediction
        b = model({**batch, "present": present}).prediction
    assert torch.allclose(a, b, atol=1e-6)


def test_a_partial_segment_never_depends_on_the_others_in_its_batch(model, batch):
    model.eval()
    present = torch.tensor([[True, True], [False, True], [True, False], [False, False], [True, True], [False, True]])
    padded = _pad({**batch, "present": present})
    shuffled = torch.tensor([5, 3, 0, 4, 1, 2])
    with torch.no_grad():
        whole = model({**batch, "present": present}).prediction
        alone = torch.cat([model({k: v[i:i + 1] for k, v in {**batch, "present": present}.items()}).prediction
                           for i in range(6)])
        other_padding = model(padded).prediction
        other_order = model({k: v[shuffled] for k, v in {**batch, "present": present}.items()}).prediction
    assert torch.allclose(whole, alone, atol=1e-5)
    assert torch.allclose(whole, other_padding, atol=1e-5)
    assert torch.allclose(whole[shuffled], other_order, atol=1e-5)


def test_a_model_trained_without_a_modality_takes_the_same_presence_input():
    m = small_model(modalities=("text", "audio"), contrast_sides=("audio",), gate_sides=("audio",),
                    hard_negative_sides=("audio",)).eval()
    batch = {k: v for k, v in random_batch().items() if not k.startswith("visual")}
    present = torch.tensor([[True, True], [False, True], [True, False], [False, False], [True, True], [True, True]])
    with torch.no_grad():
        scores = m({**batch, "present": present}).prediction
        attribution = m.score_with_attribution({**batch, "present": present})
    assert torch.allclose(scores, attribution.score, atol=1e-6)
    assert torch.all(attribution.contribution[:, 1] == 0)  # no vision in this model
    assert torch.all(attribution.interaction.abs() < 1e-6)
    assert torch.all(attribution.contribution[[1, 3], 0] == 0)  # audio absent there
    assert torch.all(attribution.contribution[[0, 2, 4, 5], 0] != 0)


def test_training_with_absent_sides_keeps_them_out_of_contrast_gate_and_pair_losses():
    m = small_model(p=1.0).train()
    batch = random_batch(b=8)
    present = torch.ones(8, 2, dtype=torch.bool)
    present[:3, 0] = False  # three samples without audio
    torch.manual_seed(0)
    out = m({**batch, "present": present})
    label = out.pseudo_labels["ta"]
    assert torch.all(label[:3] == 1)  # never swapped
    assert torch.all(label[3:] == 0)  # p = 1: every sample with audio is swapped ...
    losses = m.loss(out, batch["labels"])
    losses["total"].backward()
    assert all(torch.isfinite(v) for v in losses.values())


def test_modality_dropout_hides_sides_at_the_rate_asked():
    g = torch.Generator().manual_seed(0)
    present = torch.ones(4000, 2, dtype=torch.bool)
    present[:1000, 1] = False
    dropped = modality_dropout(present, 0.3, g)
    assert not torch.any(dropped & ~present)  # never adds a side
    rate = 1 - dropped[1000:].float().mean().item()
    assert abs(rate - 0.3) < 0.02  # 3 sigma of 6000 draws is ~0.018
    assert torch.equal(modality_dropout(present, 0.0, g), present)


# --------------------------------------------------------------------------------------------
# Attribution

def test_attribution_sums_hold_and_match_separate_forwards(model, batch):
    model.eval()
    present = torch.tensor([[True, True], [False, True], [True, False], [False, False], [True, True], [True, True]])
    b = {**batch, "present": present}
    with torch.no_grad():
        att = model.score_with_attribution(b)
        score = model(b).prediction
        no_audio = model({**b, "present": present & torch.tensor([False, True])}).prediction
        no_visual = model({**b, "present": present & torch.tensor([True, False])}).prediction
        text_only = model({**b, "present": torch.zeros_like(present)}).prediction
    assert torch.allclose(att.score, score, atol=1e-5)
    assert torch.allclose(att.text_only, text_only, atol=1e-5)
    assert torch.allclose(att.contribution[:, 0], score - no_audio, atol=1e-5)
    assert torch.allclose(att.contribution[:, 1], score - no_visual, atol=1e-5)
    total = att.text_only + att.contribution.sum(-1) + att.interaction
    assert torch.allclose(total, att.score, atol=1e-6)
    assert torch.all(att.contribution[1, 0] == 0) and torch.all(att.contribution[2, 1] == 0)
    assert torch.allclose(att.score[3], att.text_only[3])  # nothing but text


def test_attribution_exports_to_one_onnx_graph_with_a_presence_input(model, tmp_path):
    import numpy as np
    import onnxruntime as ort

    class Wrapper(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, audio, audio_lengths, visual, visual_lengths, present):
            a = self.m.score_with_attribution(dict(input_ids=input_ids, attention_mask=attention_mask, audio=audio,
                                                   audio_lengths=audio_lengths, visual=visual,
                                                   visual_lengths=visual_lengths, present=present))
            return a.score, a.text_only, a.contribution, a.interaction

    wrapper = Wrapper(model).eval()  # export restores the wrapper's mode: an untouched wrapper would train
    names = ["input_ids", "attention_mask", "audio", "audio_lengths", "visual", "visual_lengths", "present"]
    example = {**random_batch(b=3), "present": torch.tensor([[True, True], [False, True], [True, False]])}
    path = tmp_path / "m.onnx"
    dynamic = {n: {0: "b"} for n in names}
    for n, axis in (("input_ids", "t"), ("attention_mask", "t"), ("audio", "ta"), ("visual", "tv")):
        dynamic[n] = {0: "b", 1: axis}
    with torch.enable_grad():
        torch.onnx.export(wrapper, tuple(example[n] for n in names), str(path), input_names=names,
                          output_names=["score", "text_only", "contribution", "interaction"],
                          dynamic_axes=dynamic, opset_version=17, dynamo=False)
    other = {**random_batch(b=5, t_text=7, t_a=13, t_v=4, seed=3),
             "present": torch.tensor([[True, True], [False, False], [True, False], [False, True], [True, True]])}
    with torch.no_grad():
        expected = wrapper(*(other[n] for n in names))
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {n: other[n].numpy() for n in names})
    for e, g in zip(expected, got):
        np.testing.assert_allclose(g, e.numpy(), atol=1e-4)


# --------------------------------------------------------------------------------------------
# Contrast mappers and standardisation

def test_uccon_compares_mapped_features_and_the_switch_turns_the_mappers_off(batch):
    on, off = small_model().train(), small_model(contrast_mappers=False).train()
    assert {"ta_text", "ta_audio", "tv_text", "tv_visual", "f1", "f2"} <= set(on.mappers)
    assert len(off.mappers) == 0
    torch.manual_seed(0)
    losses = on.loss(on(batch), batch["labels"])
    losses["L_uccon"].backward()
    assert on.mappers["ta_audio"].net[0].weight.grad is not None
    assert on.mappers["f1"].net[0].weight.grad is None  # L_bicon alone reaches f1
    on.zero_grad()
    on.loss(on(batch), batch["labels"])["L_bicon"].backward()
    assert on.mappers["f1"].net[0].weight.grad is not None


def test_standardisation_is_applied_inside_the_model(model, batch):
    model.eval()
    mean, std = torch.randn(5), torch.rand(5) + 0.5
    with torch.no_grad():
        raw = model(batch).prediction
        model.set_feature_stats({"audio": (mean, std)})
        shifted = model({**batch, "audio": batch["audio"] * std + mean}).prediction
    assert torch.allclose(raw, shifted, atol=1e-5)
    with pytest.raises(ValueError, match=r"audio statistics must have shape \(5,\)"):
        model.set_feature_stats({"audio": (torch.zeros(3), torch.ones(3))})


def test_a_constant_feature_is_centred_not_blown_up(model):
    model.set_feature_stats({"visual": (torch.ones(7), torch.zeros(7))})
    assert torch.equal(model.visual_std, torch.ones(7))
