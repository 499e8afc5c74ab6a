"""Context in the model and its training data: a model with k > 0 reads the transcripts of the k
previous segments of the stream after the utterance (trainer/model.py context_conditioned_text);
k = 0 is the model as it was, and a model given no context scores as the k = 0 model does."""
import csv

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stream.contract import context_tokens
from stream.errors import UserError
from tests.conftest import random_batch, small_config, tiny_bert
from trainer.data import Batcher, DataError, load_dataset, load_native
from trainer.model import TeCaFN, context_conditioned_text
from trainer.text_encoder import load_tokenizer
from trainer.train import TrainOptions, load_checkpoint, predict, tokenizer_for, train


def models(k: int) -> tuple[TeCaFN, TeCaFN]:
    """A k = 0 model and a k-context model with the very same weights, in eval mode."""
    torch.manual_seed(0)
    plain = TeCaFN(small_config(), tiny_bert()).eval()
    with_context = TeCaFN(small_config(context=k), tiny_bert()).eval()
    with_context.load_state_dict(plain.state_dict())
    return plain, with_context


def with_context(batch: dict, width: int = 7, seed: int = 1, real: list[int] | None = None) -> dict:
    g = torch.Generator().manual_seed(seed)
    b = batch["input_ids"].shape[0]
    n = torch.tensor(real) if real is not None else torch.randint(0, width + 1, (b,), generator=g)
    mask = (torch.arange(width)[None, :] < n[:, None]).long()
    return {**batch, "context_ids": torch.randint(1, 200, (b, width), generator=g) * mask, "context_mask": mask}


def test_context_adds_no_weights_and_a_k0_model_ignores_context_inputs():
    plain, contextual = models(2)
    assert plain.state_dict().keys() == contextual.state_dict().keys()
    batch = random_batch()
    with torch.no_grad():
        # k = 0 takes the path it always took: context inputs change nothing, bit for bit
        assert torch.equal(plain(batch).prediction, plain(with_context(batch)).prediction)


def test_a_context_model_without_context_scores_bit_for_bit_as_the_k0_model():
    plain, contextual = models(3)
    batch = random_batch()
    empty = with_context(batch, width=0)
    with torch.no_grad():
        expected = plain(batch).prediction
        assert torch.equal(contextual(batch).prediction, expected)  # no context inputs at all
        assert torch.equal(contextual(empty).prediction, expected)  # context inputs of no tokens
        # context padding only: the same up to the float rounding of a longer padded sequence
        padded = contextual(with_context(batch, width=5, real=[0] * 6)).prediction
    assert torch.allclose(padded, expected, atol=1e-5)


def test_context_changes_scores_and_only_of_the_segments_that_have_it():
    _, contextual = models(2)
    batch = random_batch()
    given = with_context(batch, real=[0, 4, 0, 7, 2, 0])
    with torch.no_grad():
        without = contextual(batch).prediction
        got = contextual(given).prediction
    has = given["context_mask"].sum(1) > 0
    assert torch.all((got - without).abs()[has] > 1e-4)
    assert torch.allclose(got[~has], without[~has], atol=1e-5)


class Recorder(torch.nn.Module):
    """A text encoder that returns its input ids as states, so a test can see what it was given."""

    def __init__(self):
        super().__init__()
        self.seen = {}

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        self.seen = dict(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return type("Out", (), {"last_hidden_state": input_ids[..., None].float()})


def test_the_encoder_reads_utterance_then_context_without_a_gap_and_types_the_context():
    ids = torch.tensor([[101, 5, 6, 102, 0], [101, 7, 102, 0, 0]])
    mask = (ids > 0).long()
    context_ids = torch.tensor([[8, 102, 9, 102], [0, 0, 0, 0]])
    encoder = Recorder()
    states = context_conditioned_text(encoder, ids, mask, context_ids, (context_ids > 0).long(), typed=True)
    assert encoder.seen["input_ids"].tolist() == [[101, 5, 6, 102, 8, 102, 9, 102, 0],
                                                  [101, 7, 102, 0, 0, 0, 0, 0, 0]]
    assert encoder.seen["attention_mask"].tolist() == [[1] * 8 + [0], [1] * 3 + [0] * 6]
    assert encoder.seen["token_type_ids"].tolist() == [[0] * 4 + [1] * 4 + [0], [0] * 9]
    # the utterance's own positions come back, at the places they have without context
    assert states.shape[:2] == ids.shape
    assert states[0, :4, 0].tolist() == [101, 5, 6, 102]
    context_conditioned_text(encoder, ids, mask, context_ids, (context_ids > 0).long(), typed=False)
    assert "token_type_ids" not in encoder.seen or encoder.seen["token_type_ids"] is None


def test_padding_and_batch_mates_never_change_a_score_with_context():
    _, contextual = models(2)
    batch = with_context(random_batch())
    padded = dict(batch)
    for name in ("input_ids", "attention_mask", "context_ids", "context_mask"):
        padded[name] = F.pad(batch[name], (0, 6))
    with torch.no_grad():
        whole = contextual(batch).prediction
        assert torch.allclose(contextual(padded).prediction, whole, atol=1e-5)
        alone = torch.stack([contextual({k: v[i:i + 1] for k, v in batch.items()}).prediction[0] for i in range(6)])
    assert torch.allclose(alone, whole, atol=1e-5)


def test_training_with_context_reaches_the_encoder():
    _, contextual = models(2)
    contextual.train()
    batch = with_context(random_batch(), real=[3, 4, 0, 7, 2, 5])
    losses = contextual.loss(contextual(batch), batch["labels"])
    losses["total"].backward()
    assert contextual.text_encoder.embeddings.token_type_embeddings.weight.grad[1].abs().sum() > 0


# ---- data --------------------------------------------------------------------------------------

def test_context_tokens_keep_the_newest_and_end_each_transcript_with_the_separator():
    assert context_tokens([[1, 2], [3], [4, 5, 6]], 9, 100) == [1, 2, 9, 3, 9, 4, 5, 6, 9]
    assert context_tokens([[1, 2], [3], [4, 5, 6]], 9, 5) == [3, 9, 4, 5, 6, 9][-5:]
    assert context_tokens([], 9, 5) == []


def write_native(root, rows):
    root.mkdir()
    with (root / "utterances.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow(row)


def mosi_like(tmp_path):
    """Two videos; clips listed out of order (10 after 2 in number, not in text), in all splits."""
    rows = []
    for video, mode in (("vidA", "train"), ("vidB", "test")):
        for clip in (10, 2, 1, 3):
            rows.append(dict(id=f"{video}_{clip}", video_id=video, clip_id=clip, start=clip, end=clip + 1,
                             text=f"{video} clip {clip}", label=0.5, mode=mode))
    rows.append(dict(id="vidC_1", video_id="vidC", clip_id=1, start=0, end=1, text="valid one", label=1.0,
                     mode="valid"))
    write_native(tmp_path / "mosi", rows)
    return load_native(tmp_path / "mosi")


def test_native_history_is_the_earlier_clips_of_the_same_video_in_clip_order(tmp_path):
    ds = mosi_like(tmp_path)
    history = dict(zip(ds.train.ids, ds.train.history))
    assert history["vidA_1"] == []
    assert history["vidA_3"] == ["vidA clip 1", "vidA clip 2"]
    assert history["vidA_10"] == ["vidA clip 1", "vidA clip 2", "vidA clip 3"]
    assert dict(zip(ds.test.ids, ds.test.history))["vidB_2"] == ["vidB clip 1"]


def test_batcher_context_is_the_k_previous_transcripts_joined_by_the_separator(tmp_path):
    ds = mosi_like(tmp_path)
    tokenizer = load_tokenizer("tiny")
    batcher = Batcher(ds.train, tokenizer, max_text_tokens=16, context=2, max_context_tokens=64)
    row = ds.train.ids.index("vidA_10")
    batch = batcher.batch(torch.tensor([row]))
    pieces = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in ("vidA clip 2", "vidA clip 3")]
    assert batch["context_ids"][0].tolist() == context_tokens(pieces, tokenizer.sep_token_id, 64)
    first = batcher.batch(torch.tensor([ds.train.ids.index("vidA_1")]))
    assert first["context_mask"].sum() == 0  # a stream's first segment has no context
    cut = Batcher(ds.train, tokenizer, max_text_tokens=16, context=3, max_context_tokens=5).batch(torch.tensor([row]))
    assert cut["context_ids"][0].tolist() == batch["context_ids"][0].tolist()[-5:]  # the oldest words go first


def test_context_without_streams_in_the_data_is_a_clear_error(tmp_path):
    write_native(tmp_path / "flat", [dict(id=f"u{i}", text="a b", label=0, mode=m) for i, m in
                                     enumerate(["train", "valid", "test"])])
    flat = load_native(tmp_path / "flat")
    assert flat.train.history is None
    with pytest.raises(DataError, match="video_id and clip_id"):
        Batcher(flat.train, load_tokenizer("tiny"), context=1)
    with pytest.raises(UserError, match="video_id and clip_id"):
        train(flat, TrainOptions(out=tmp_path / "run", epochs=1, text_encoder="tiny", progress=False, context=1))
    assert not (tmp_path / "run").exists()


def test_synthetic_streams_give_every_segment_its_predecessors():
    ds = load_dataset("synthetic", seed=3, n=40, max_frames=12)
    texts = ds.train.texts
    assert ds.train.history[0] == []
    assert ds.train.history[3] == texts[:3]
    assert ds.train.history[8] == []  # streams of 8 segments


@pytest.mark.slow
def test_a_context_run_checkpoints_its_context_and_scores_the_same_after_loading(tmp_path):
    ds = load_dataset("synthetic", seed=0, n=120, max_frames=12)
    metrics = train(ds, TrainOptions(out=tmp_path / "run", epochs=2, text_encoder="tiny", progress=False,
                                     context=2, context_tokens=24, model_overrides=dict(encoder_layers=1, cross_layers=1,
                                                                                         d_model=16, n_heads=2)))
    assert metrics["context"] == 2
    model, ckpt = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert model.config.context == 2 and ckpt["max_context_tokens"] == 24
    batcher = Batcher(ds.test, tokenizer_for(tmp_path / "run" / "checkpoint.pt"), ckpt["max_text_tokens"],
                      ckpt["max_frames"], context=2, max_context_tokens=24)
    scores = predict(model, batcher, "cpu")
    from trainer.metrics import compute_metrics
    assert np.isclose(compute_metrics(scores, ds.test.labels)["mae"], metrics["test"]["mae"], atol=1e-6)
    # and the context was read: without it the same checkpoint scores otherwise
    blind = predict(model, Batcher(ds.test, tokenizer_for(tmp_path / "run" / "checkpoint.pt"), ckpt["max_text_tokens"],
                                   ckpt["max_frames"]), "cpu")
    assert np.abs(blind - scores).max() > 1e-4


@pytest.mark.slow  # trains four small models
def test_a_context_sweep_trains_each_k_over_seeds(tmp_path):
    import json

    from trainer.ablate import plan, run_ablations
    ds = load_dataset("synthetic", n=60, max_frames=8)
    opts = TrainOptions(out=tmp_path, epochs=1, text_encoder="tiny", progress=False, max_frames=8, seeds=2,
                        model_overrides=dict(encoder_layers=1, cross_layers=1, d_model=16, n_heads=2))
    table = run_ablations(ds, opts, plan([], "context=0,2"))
    assert [line.split("|")[1].strip() for line in table.strip().splitlines()[2::2]] == ["TeCaFN, context=0",
                                                                                       "TeCaFN, context=2"]
    for k in (0, 2):
        runs = json.loads((tmp_path / f"context_{k}" / "summary.json").read_text())["runs"]
        assert [r["context"] for r in runs] == [k, k] and [r["seed"] for r in runs] == [1111, 1112]
