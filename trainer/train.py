"""The one training loop for every TeCaFN variant, evaluation, and checkpoints.

A run directory holds:
    checkpoint.pt   the best model on valid (config, weights, encoder architecture, data widths)
    tokenizer/      the tokenizer that goes with it
    losses.csv      every component of the loss every K steps (L_task, L_uccon, L_bicon, L_ap)
    losses.png      the same as a plot (the paper's Fig. 4)
    metrics.json    valid and test metrics of the best checkpoint (test also with each side
                    removed), and what the run cost

With several seeds (`seeds` > 1) every seed gets its own run directory seed_<S>/ and the top
directory holds summary.json: every metric as mean and sd over the seeds.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import random
import resource
import time
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from stream.errors import UserError
from trainer import calibration, distill
from trainer.data import Batcher, Dataset, Split, batcher_options, feature_stats
from trainer.metrics import compute_metrics, summarise
from trainer.model import (
    PRESENCE,
    TeCaFN,
    TeCaFNConfig,
    apply_ablation,
    modality_dropout,
)
from trainer.options import TrainOptions
from trainer.text_encoder import (
    build_text_encoder,
    load_tokenizer,
    rebuild_text_encoder,
)

log = logging.getLogger(__name__)

LOSS_COLUMNS = ("L_task", "L_uccon", "L_bicon", "L_ap", "total")
CHECKPOINT_FORMAT = "tecaflow-tecafn-2"  # 2: standardisation buffers, contrast mappers


def resolve_device(name: str) -> torch.device:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine")
    if name != "cpu" and not name.startswith("cuda"):
        raise UserError(f"--device must be cpu or cuda[:N], not {name!r}")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_config(dataset: Dataset, text_width: int, opts: TrainOptions) -> TeCaFNConfig:
    """The paper's defaults, fitted to the data, then the ablation and any overrides."""
    base = TeCaFNConfig(d_text=text_width, d_audio=max(1, dataset.width("audio")),
                        d_visual=max(1, dataset.width("visual")), task=dataset.task, context=opts.context)
    config = apply_ablation(base, opts.ablation)
    unknown = set(opts.model_overrides) - set(asdict(config))
    if unknown:
        raise UserError(f"unknown model options {sorted(unknown)}")
    try:
        config = TeCaFNConfig(**{**asdict(config), **opts.model_overrides})
    except ValueError as e:  # the overrides came from --set
        raise UserError(f"model options {opts.model_overrides}: {e}") from None
    absent = [m for m in config.modalities if m not in dataset.modalities]
    if config.center in absent:
        raise UserError(f"ablation {opts.ablation!r} centres on {config.center}, which {dataset.name} lacks")
    if absent:  # a dataset without a modality runs as the matching "w/o" setting, said out loud
        log.warning("%s has no %s: running without it (the paper's 'w/o %s' setting)", dataset.name,
                    " or ".join(absent), ", ".join(m[0].upper() for m in absent))
    return TeCaFNConfig(**{**asdict(config), "modalities": tuple(m for m in config.modalities
                                                                     if m in dataset.modalities)})


def build_model(dataset: Dataset, opts: TrainOptions):
    encoder, encoder_config = build_text_encoder(opts.text_encoder)
    config = build_config(dataset, encoder.config.hidden_size, opts)
    check_context(config, encoder, dataset, opts)
    model = TeCaFN(config, encoder)
    if opts.standardise:
        model.set_feature_stats(feature_stats(dataset.train))
    if opts.freeze_encoder:
        for p in model.text_encoder.parameters():
            p.requires_grad_(False)
    return model, encoder_config


def check_context(config: TeCaFNConfig, encoder, dataset: Dataset, opts: TrainOptions) -> None:
    """A model with context needs streams in the data and room in the encoder for both texts."""
    if not config.context:
        return
    if dataset.train.history is None:
        raise UserError(f"--context {config.context}: {dataset.name} does not say which stream each segment belongs "
                        f"to (utterances.csv columns video_id and clip_id)")
    room = getattr(encoder.config, "max_position_embeddings", None)
    if room is not None and opts.max_text_tokens + opts.context_tokens > room:
        raise UserError(f"--max-text-tokens {opts.max_text_tokens} + --context-tokens {opts.context_tokens} exceed "
                        f"the text encoder's {room} positions")


def make_optimizer(model: TeCaFN, opts: TrainOptions, fused: bool = True) -> torch.optim.Optimizer:
    """Adam, two learning rates. fused: one kernel for all parameters (5x cheaper than the
    per-parameter loop on 2 CPU cores, where the step over MiniLM's 22.7 M weights was a third
    of a training step); the same update up to float rounding."""
    encoder = [p for p in model.text_encoder.parameters() if p.requires_grad]
    encoder_ids = {id(p) for p in model.text_encoder.parameters()}
    rest = [p for p in model.parameters() if id(p) not in encoder_ids]
    groups = [{"params": rest, "lr": opts.lr}]
    if encoder:
        lr_encoder = opts.lr_encoder
        if lr_encoder is None:  # a randomly initialised encoder learns at the main rate
            lr_encoder = opts.lr if opts.text_encoder == "tiny" else 5e-5
        groups.append({"params": encoder, "lr": lr_encoder})
    return torch.optim.Adam(groups, weight_decay=opts.weight_decay, fused=fused)


@torch.no_grad()
def predict(model: TeCaFN, batcher: Batcher, device, batch_size: int = 128,
            without: tuple[str, ...] = ()) -> np.ndarray:
    """Predictions in the split's order; `without` names sides to treat as absent."""
    model.eval()
    out = torch.empty(len(batcher))
    for index in batcher.order(batch_size):
        batch = batcher.batch(index, device)
        if without:
            batch["present"] = without_sides(len(index), without, device)
        out[index] = model(batch).prediction.float().cpu()
    return out.numpy()


def without_sides(b: int, sides: tuple[str, ...], device) -> torch.Tensor:
    return torch.tensor([[m not in sides for m in PRESENCE]] * b, dtype=torch.bool, device=device)


def evaluate_split(model: TeCaFN, batcher: Batcher, device, without: tuple[str, ...] = ()) -> dict[str, float]:
    return compute_metrics(predict(model, batcher, device, without=without), batcher.split.labels, model.config.task)


def evaluate_removals(model: TeCaFN, batcher: Batcher, device) -> dict[str, dict]:
    """Test metrics with each side the model has removed, and with all of them (text only)."""
    sides = tuple(m for m in model.config.sides if m in PRESENCE)
    out = {f"without_{m}": evaluate_split(model, batcher, device, (m,)) for m in sides}
    if len(sides) > 1:
        out["text_only"] = evaluate_split(model, batcher, device, sides)
    return out


def train(dataset: Dataset, opts: TrainOptions) -> dict:
    """`opts.seeds` runs; one run directory, or one per seed and a summary over them."""
    if opts.seeds == 1:
        return train_once(dataset, opts)
    out = Path(opts.out)
    runs = [train_once(dataset, replace(opts, out=out / f"seed_{opts.seed + i}", seed=opts.seed + i, seeds=1))
            for i in range(opts.seeds)]
    summary = summarise_runs(runs)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    log.info("%d seeds: test %s", opts.seeds, format_summary(summary["test"]))
    return summary


def summarise_runs(runs: list[dict]) -> dict:
    """Mean and sd of every metric of every evaluated split over the runs, and the runs."""
    keys = [k for k, v in runs[0].items() if isinstance(v, dict) and k != "removals"]
    summary = {k: summarise([r[k] for r in runs]) for k in keys}
    if "removals" in runs[0]:
        summary["removals"] = {k: summarise([r["removals"][k] for r in runs]) for k in runs[0]["removals"]}
    summary["seeds"] = [r["seed"] for r in runs]
    summary["runs"] = runs
    return summary


def format_summary(s: dict) -> str:
    return " ".join(f"{k}={v['mean']:.4f}±{v['sd']:.4f}" for k, v in s.items())


def train_once(dataset: Dataset, opts: TrainOptions) -> dict:
    """Train, keep the best checkpoint on valid MAE (or accuracy), write the run directory."""
    device = resolve_device(opts.device)
    teacher = distill.teacher_scores(opts.teacher, dataset, partial(checkpoint_predictions, device=device)) \
        if opts.teacher else None
    seed_everything(opts.seed)
    model, encoder_config = build_model(dataset, opts)
    model.to(device)
    tokenizer = load_tokenizer(opts.text_encoder)
    out = Path(opts.out)  # made only now: a model that cannot be built leaves no empty run directory
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out / "tokenizer")
    batchers = {s: Batcher(dataset.split(s), tokenizer, opts.max_text_tokens, opts.max_frames, name=s,
                           context=model.config.context, max_context_tokens=opts.context_tokens)
                for s in ("train", "valid", "test")}
    calibration.save(out / calibration.CALIBRATION_FILE, batchers["train"], opts.seed)
    optimizer = make_optimizer(model, opts)
    generator = torch.Generator().manual_seed(opts.seed)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("%s | %s | %d parameters | ablation %s | context %d | modality dropout %.2f | device %s",
             dataset.describe(), type(model.text_encoder).__name__, n_params, opts.ablation, model.config.context,
             opts.modality_dropout, device)

    trace = LossTrace(out / "losses.csv")
    best, best_epoch, stale = None, -1, 0
    started = time.time()
    steps_per_epoch = len(batchers["train"].order(opts.batch_size, bucket=opts.bucket))
    bar = tqdm(total=opts.epochs * steps_per_epoch, desc="train", disable=not opts.progress, unit="step")
    step, seen, train_seconds = 0, 0, 0.0
    for epoch in range(opts.epochs):
        model.train()
        epoch_started = time.time()
        for index in batchers["train"].order(opts.batch_size, shuffle=True, generator=generator, bucket=opts.bucket):
            batch = batchers["train"].batch(index, device)
            losses = train_step(model, optimizer, batch, opts, generator,
                                None if teacher is None else teacher[index].to(device))
            step += 1
            check_finite(losses, step, epoch)
            seen += len(batch["labels"])
            if step % opts.log_every == 0:
                trace.add(step, epoch, losses)
            bar.update(1)
            bar.set_postfix(loss=f"{losses['total'].item():.3f}", epoch=epoch)
        train_seconds += time.time() - epoch_started
        valid = evaluate_split(model, batchers["valid"], device)
        score = valid["acc2"] if model.config.task == "binary" else -valid["mae"]
        if best is None or score > best:
            best, best_epoch, stale = score, epoch, 0
            save_checkpoint(out / "checkpoint.pt", model, encoder_config, opts, dataset)
        else:
            stale += 1
        log.info("epoch %d: valid %s%s", epoch, _fmt(valid), " (best)" if stale == 0 else "")
        if stale >= opts.patience:
            log.info("early stop: no improvement on valid for %d epochs", opts.patience)
            break
    bar.close()
    trace.close()
    trace.plot(out / "losses.png")

    model = load_checkpoint(out / "checkpoint.pt", device)[0]
    metrics = {
        "valid": evaluate_split(model, batchers["valid"], device),
        "test": evaluate_split(model, batchers["test"], device),
        "removals": evaluate_removals(model, batchers["test"], device),
        "best_epoch": best_epoch,
        "epochs_run": epoch + 1,
        "train_seconds": round(time.time() - started, 1),
        "train_samples_per_s": round(seen / max(train_seconds, 1e-9), 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "parameters": n_params,
        "dataset": dataset.name,
        "ablation": opts.ablation,
        "context": model.config.context,
        "modality_dropout": opts.modality_dropout,
        "seed": opts.seed,
        "text_encoder": opts.text_encoder,
        "device": str(device),
        **({"teacher": str(opts.teacher), "distill_weight": distill_weight(opts)} if opts.teacher else {}),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    log.info("test %s", _fmt(metrics["test"]))
    return metrics


def train_step(model: TeCaFN, optimizer, batch: dict, opts: TrainOptions, generator,
               teacher: torch.Tensor | None = None) -> dict:
    """One optimisation step; modality dropout hides sides of random samples first. With the
    teacher's scores of the batch, the task loss also pulls toward them (trainer/distill.py)."""
    if opts.modality_dropout > 0:
        batch = {**batch, "present": modality_dropout(model.presence(batch), opts.modality_dropout, generator)}
    out = model(batch, generator=None)
    losses = model.loss(out, batch["labels"])
    if teacher is not None:
        losses = distill.distilled(model, out, losses, teacher, distill_weight(opts))
    optimizer.zero_grad(set_to_none=True)
    losses["total"].backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), opts.clip)
    optimizer.step()
    return losses


def distill_weight(opts: TrainOptions) -> float:
    return distill.DEFAULT_WEIGHT if opts.distill_weight is None else opts.distill_weight


def check_finite(losses: dict[str, torch.Tensor], step: int, epoch: int) -> None:
    """Stop at the first NaN or infinite loss: the weights are NaN from the next step on, and
    every later checkpoint would be a model that scores NaN."""
    total = losses["total"].item()
    if not math.isfinite(total):
        parts = ", ".join(f"{k}={losses[k].item():.4g}" for k in LOSS_COLUMNS[:-1])
        raise UserError(f"training diverged at step {step} (epoch {epoch}): loss {total} ({parts}); "
                        f"lower --lr or --clip, or check the --set values")


def _fmt(m: dict) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in m.items())


class LossTrace:
    """Per-component losses every K steps, as CSV and as a plot."""

    def __init__(self, path: Path):
        self.path = path
        self.file = path.open("w", newline="")
        self.writer = csv.writer(self.file)
        self.writer.writerow(("step", "epoch", *LOSS_COLUMNS))

    def add(self, step: int, epoch: int, losses: dict[str, torch.Tensor]) -> None:
        self.writer.writerow((step, epoch, *(f"{losses[k].item():.6f}" for k in LOSS_COLUMNS)))
        self.file.flush()

    def close(self) -> None:
        self.file.close()

    def plot(self, png: Path) -> None:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        with self.path.open() as f:
            rows = list(csv.DictReader(f))
        fig, ax = plt.subplots(figsize=(8, 4.5))
        if rows:
            steps = [int(r["step"]) for r in rows]
            for k in LOSS_COLUMNS:
                ax.plot(steps, [float(r[k]) for r in rows], label=k, lw=1.2 if k != "total" else 2)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_title("TeCaFN loss components")
        if rows:
            ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(png, dpi=110)
        plt.close(fig)


# --------------------------------------------------------------------------------------------
# Checkpoints

def save_checkpoint(path: Path, model: TeCaFN, encoder_config: dict, opts: TrainOptions, dataset: Dataset):
    torch.save({
        "format": CHECKPOINT_FORMAT,
        "config": model.config.to_dict(),
        "encoder_config": encoder_config,
        "state_dict": model.state_dict(),
        "max_text_tokens": opts.max_text_tokens,
        "max_frames": opts.max_frames,
        "max_context_tokens": opts.context_tokens,
        "text_encoder": opts.text_encoder,
        "dataset": dataset.name,
    }, path)


def load_checkpoint(path: Path, device="cpu") -> tuple[TeCaFN, dict]:
    """The model (in eval mode) and the checkpoint's metadata; the tokenizer is in path.parent."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint")
    ckpt = read_checkpoint_file(path, device)
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        if str(ckpt.get("format", "")).startswith("tecaflow-tecafn-"):
            raise UserError(f"{path}: checkpoint format {ckpt['format']} is older than {CHECKPOINT_FORMAT} "
                             f"(no feature standardisation); retrain it")
        raise UserError(f"{path}: not a tecaflow checkpoint (no {CHECKPOINT_FORMAT} format mark)")
    model = TeCaFN(TeCaFNConfig.from_dict(ckpt["config"]), rebuild_text_encoder(ckpt["encoder_config"]))
    model.load_state_dict(ckpt["state_dict"])
    model.to(device).eval()
    return model, ckpt


def read_checkpoint_file(path: Path, device) -> dict:
    """The saved dict, or a UserError for a file that is not one: any other file (a text file,
    losses.csv, a truncated save) fails inside torch.load with a traceback that says nothing the
    user can act on, and PyTorch's advice for pickles (weights_only=False) would run their code."""
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except OSError:
        raise  # unreadable: the CLI names the file and the reason
    except Exception as e:
        raise UserError(f"{path}: not a tecaflow checkpoint (torch.load cannot read it as weights: "
                        f"{type(e).__name__})") from None
    if not isinstance(ckpt, dict):
        raise UserError(f"{path}: not a tecaflow checkpoint (it holds a {type(ckpt).__name__}, not a dict)")
    return ckpt


def checkpoint_batcher(checkpoint: Path, ckpt: dict, split: Split, name: str) -> Batcher:
    """A split as the checkpoint's model reads it: its tokenizer, its text and frame limits."""
    return Batcher(split, tokenizer_for(checkpoint), name=name, **batcher_options(ckpt))


def checkpoint_predictions(checkpoint: Path, split: Split, device) -> np.ndarray:
    model, ckpt = load_checkpoint(checkpoint, device)
    return predict(model, checkpoint_batcher(checkpoint, ckpt, split, "predict"), device)


def tokenizer_for(checkpoint: Path):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(Path(checkpoint).parent / "tokenizer", local_files_only=True)


def evaluate_checkpoint(checkpoint: Path, dataset: Dataset, device: str = "cpu",
                        splits=("valid", "test")) -> dict:
    dev = resolve_device(device)
    model, ckpt = load_checkpoint(checkpoint, dev)
    for m in model.config.modalities:
        if m != "text" and dataset.width(m) != getattr(model.config, f"d_{m}"):
            raise UserError(f"{dataset.name}: {m} width {dataset.width(m)} differs from the checkpoint's "
                             f"{getattr(model.config, f'd_{m}')}")
    return {s: evaluate_split(model, checkpoint_batcher(checkpoint, ckpt, dataset.split(s), s), dev) for s in splits}
