"""Shared fixtures: a tiny randomly initialised BERT and small batches, for speed."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertModel

from trainer.model import TeCaFN, TeCaFNConfig

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
MOSI_DIR = SHARED / "data" / "cmu-mosi"


def tiny_bert(hidden: int = 32) -> BertModel:
    torch.manual_seed(0)
    return BertModel(BertConfig(vocab_size=200, hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=64, max_position_embeddings=64), add_pooling_layer=False)


def small_config(**kw) -> TeCaFNConfig:
    base = dict(d_text=32, d_audio=5, d_visual=7, d_model=16, n_heads=2, encoder_layers=1, cross_layers=1,
                fusion_hidden=16, dropout=0.0)
    base.update(kw)
    return TeCaFNConfig(**base)


def small_model(**kw) -> TeCaFN:
    torch.manual_seed(0)
    return TeCaFN(small_config(**kw), tiny_bert())


def random_batch(b: int = 6, t_text: int = 9, t_a: int = 11, t_v: int = 8, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    text_len = torch.randint(3, t_text + 1, (b,), generator=g)
    mask = (torch.arange(t_text)[None, :] < text_len[:, None]).long()
    return {
        "input_ids": torch.randint(1, 200, (b, t_text), generator=g) * mask,
        "attention_mask": mask,
        "audio": torch.randn(b, t_a, 5, generator=g),
        "audio_lengths": torch.randint(1, t_a + 1, (b,), generator=g),
        "visual": torch.randn(b, t_v, 7, generator=g),
        "visual_lengths": torch.randint(1, t_v + 1, (b,), generator=g),
        "labels": torch.rand(b, generator=g) * 6 - 3,
    }


@pytest.fixture
def model():
    return small_model()


@pytest.fixture
def batch():
    return random_batch()
