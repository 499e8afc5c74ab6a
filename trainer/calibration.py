"""The int8 export's calibration sample: training segments, as the model takes them.

Static int8 quantization fixes every activation's scale at export, from what the activations of
real segments look like, so that a segment's score never depends on which segments share its
batch (dynamic quantization measures the scales on each batch). Training writes a sample of its
training split beside the checkpoint; the export reads it, or builds one from a dataset for a
checkpoint trained before the sample existed (`tecaflow export --calibration-data`).

    <run>/calibration.npz   input_ids, attention_mask, <side>, <side>_lengths of CALIBRATION_SEGMENTS
                            training segments drawn at random (no labels)
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from stream.contract import trimmed
from stream.errors import UserError
from trainer.data import Batcher

CALIBRATION_FILE = "calibration.npz"
CALIBRATION_SEGMENTS = 256


def draw(batcher: Batcher, seed: int = 0, segments: int = CALIBRATION_SEGMENTS) -> dict[str, np.ndarray]:
    """`segments` segments of the batcher's split at random (all of a smaller split), padded together."""
    generator = torch.Generator().manual_seed(seed)
    index = torch.randperm(len(batcher), generator=generator)[:segments]
    return {k: v.numpy() for k, v in batcher.batch(index).items() if k != "labels"}


def save(path: Path, batcher: Batcher, seed: int = 0) -> None:
    np.savez_compressed(path, **draw(batcher, seed))


def load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as sample:
        return {k: sample[k] for k in sample.files}


def for_checkpoint(checkpoint: Path, data: str | None, tokenizer, ckpt: dict) -> tuple[dict[str, np.ndarray], str]:
    """The sample to calibrate `checkpoint` (saved as `ckpt`) with and where it came from: drawn
    from `data`'s training split when given, else the one its training run wrote."""
    if data is not None:
        from trainer.data import batcher_options, load_dataset
        batcher = Batcher(load_dataset(data).split("train"), tokenizer, name="calibration", **batcher_options(ckpt))
        return draw(batcher), f"{data} (train split)"
    path = Path(checkpoint).parent / CALIBRATION_FILE
    if not path.is_file():
        raise UserError(f"{path}: no calibration sample beside the checkpoint (it was trained before int8 export "
                        f"calibrated its scales): give --calibration-data with its training data, or "
                        f"--quantize none")
    return load(path), str(path)


def chunks(sample: dict[str, np.ndarray], rows: int) -> list[dict[str, np.ndarray]]:
    """The sample in batches of `rows`, each trimmed to its own longest text and frames."""
    sides = [k.removesuffix("_lengths") for k in sample if k.endswith("_lengths")]
    return [trimmed({k: v[start:start + rows] for k, v in sample.items()}, sides)
            for start in range(0, len(sample["input_ids"]), rows)]
