"""Training options, declared once: `TrainOptions` is what `train()` takes, and each field's
declaration also makes its `tecaflow train` / `ablate` flag (`add_option_flags`), as
stream/config.py makes settings from one declaration. Importable without torch, so that
`tecaflow --help` stays light."""
from __future__ import annotations

import argparse
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

from stream.arguments import non_negative, positive, probability
from stream.errors import UserError
from trainer.defaults import DEFAULT_MAX_CONTEXT_TOKENS, DEFAULT_MAX_FRAMES, DEFAULT_MODALITY_DROPOUT, MAX_FRAMES


def frames(text):
    value = positive(int)(text)
    if value > MAX_FRAMES:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_FRAMES} (the positional table's length), got {text}")
    return value


def option(default=MISSING, help: str = "", *, type=None, metavar: str | None = None, flag: bool = True,
           default_factory=MISSING):
    """One option's declaration; `flag=False`: set by the program, or by a flag of its own (--set,
    --ablation), not by a flag of the field's name. A bool's flag turns its default around:
    --freeze-encoder for False, --no-progress for True."""
    return field(default=default, default_factory=default_factory,
                 metadata=dict(help=help, type=type, metavar=metavar, flag=flag))


@dataclass
class TrainOptions:
    out: Path = option(help="run directory (created)", type=Path)
    epochs: int = option(40, type=positive(int))
    batch_size: int = option(32, type=positive(int))
    lr: float = option(1e-3, "learning rate, all but the text encoder", type=positive(float))
    lr_encoder: float | None = option(None, "text encoder learning rate (default 5e-5; the main rate for 'tiny')",
                                      type=positive(float))
    weight_decay: float = option(1e-4, type=float)
    freeze_encoder: bool = option(False, "keep the text encoder's weights fixed")
    clip: float = option(1.0, "gradient norm clip", type=positive(float))
    patience: int = option(10, "early-stopping patience in epochs", type=positive(int))
    seed: int = option(1111, type=int)
    device: str = option("cpu", "cpu or cuda[:N]")
    text_encoder: str = option("mpnet", "mpnet (offline all-mpnet-base-v2, MPNet-base: `make mpnet` installs it; "
                                        "the default: the quality docs/model.md reports), minilm (offline "
                                        "all-MiniLM-L6-v2: faster to serve, lower quality), tiny "
                                        "(small random BERT), or a local BERT-family path")
    ablation: str = option("full", flag=False)
    max_text_tokens: int = option(50, type=positive(int))
    max_frames: int | None = option(DEFAULT_MAX_FRAMES, f"audio/visual frames kept per segment (default "
                                    f"{DEFAULT_MAX_FRAMES}, at most {MAX_FRAMES}); longer sequences are cut and the "
                                    "log says how many", type=frames)
    context: int = option(0, "the model reads the transcripts of the K previous segments of the same stream "
                          "(the data's earlier clips of the same video; never their labels); 0: none", type=non_negative(int),
                          metavar="K")
    context_tokens: int = option(DEFAULT_MAX_CONTEXT_TOKENS, "context tokens read at most (the newest kept; "
                                 f"default {DEFAULT_MAX_CONTEXT_TOKENS})", type=positive(int), metavar="N")
    log_every: int = option(10, "loss trace period K in steps", type=positive(int))
    model_overrides: dict = option(flag=False, default_factory=dict)  # TeCaFNConfig fields, e.g. {"p": 0.4}
    progress: bool = option(True, "no progress bar")
    modality_dropout: float = option(DEFAULT_MODALITY_DROPOUT, "per sample and side, hide audio / vision with "
                                     "probability P while training, so the model scores segments that lack one "
                                     f"(default {DEFAULT_MODALITY_DROPOUT}; 0 turns it off)", type=probability,
                                     metavar="P")
    standardise: bool = option(True, flag=False)  # per-dimension feature standardisation from the training split
    bucket: bool = option(True, flag=False)  # length-bucketed batches
    teacher: Path | None = option(None, "distil: also learn from the scores of this trained run directory (its "
                                  "checkpoint.pt, or the mean of its seed_*/ checkpoints), computed once on the "
                                  "training split and kept there", type=Path, metavar="RUN_DIR")
    distill_weight: float | None = option(None, "with --teacher: the task loss is (1 - α) · L(labels) + α · "
                                          "L(teacher's scores) (default 0.5)", type=probability, metavar="α")
    seeds: int = option(1, "train N times (seeds --seed, --seed + 1, ...) and report each metric as mean ± sd",
                        type=positive(int), metavar="N")

    def __post_init__(self):
        if not 0.0 <= self.modality_dropout < 1.0:
            raise ValueError(f"modality dropout must be in [0, 1), got {self.modality_dropout}")
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {self.seeds}")
        if self.distill_weight is not None and self.teacher is None:
            raise UserError("--distill-weight weighs a teacher's scores: give the teacher with --teacher RUN_DIR")


def flagged(names: tuple[str, ...] | None = None):
    """The fields that have a flag of their own (those of `names` only, where given)."""
    return [f for f in fields(TrainOptions) if f.metadata["flag"] and (names is None or f.name in names)]


def add_option_flags(parser: argparse.ArgumentParser, names: tuple[str, ...] | None = None) -> None:
    """A flag for each option with one (or for those of `names`), with its default, type and help."""
    for f in flagged(names):
        meta, flag = f.metadata, "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):
            parser.add_argument(flag if not f.default else f"--no-{flag[2:]}", dest=f.name, help=meta["help"],
                                action="store_false" if f.default else "store_true")
        elif f.default is MISSING:
            parser.add_argument(flag, required=True, type=meta["type"], help=meta["help"])
        else:
            parser.add_argument(flag, default=f.default, type=meta["type"], metavar=meta["metavar"],
                                help=meta["help"] or None)


def options_from(args: argparse.Namespace, **extra) -> TrainOptions:
    """The options the flags of `add_option_flags(parser)` gave, and `extra`."""
    return TrainOptions(**{f.name: getattr(args, f.name) for f in flagged()}, **extra)
