"""`tecaflow bench gate`: the vectorised hard-negative mining + replacement gate against a
per-sample Python loop like the public reference implementation, on the same tensors, and one
whole training step with and without cross-sample fusion. Prints ratios measured in one run.
"""
from __future__ import annotations

import random
import statistics
import time

import numpy as np
import torch

from trainer.model import (
    TeCaFN,
    TeCaFNConfig,
    apply_ablation,
    mine_hard_negatives,
    replacement_gate,
)


def loop_gate(side: torch.Tensor, side_mask: torch.Tensor, similarity: torch.Tensor, p: float, num: int):
    """The per-sample loop, shaped like the reference code: argsort a row, list the candidates
    by membership in the top-num tensor, draw one with numpy, stack the chosen rows together.
    (Unlike the reference, it never lets the sample itself shrink the candidate set.)"""
    b = side.shape[0]
    chosen, chosen_mask, labels = [], [], []
    for i in range(b):
        order = torch.argsort(similarity[i], descending=True)
        top = order[order != i][:num]  # the top-num other samples, as a tensor (as the reference has it)
        if random.random() < p:
            candidates = [j for j in range(b) if j != i and j in top]
            j = int(np.random.choice(candidates))
            labels.append(0)
        else:
            j = i
            labels.append(1)
        chosen.append(side[j])
        chosen_mask.append(side_mask[j])
    return torch.stack(chosen), torch.stack(chosen_mask), torch.tensor(labels)


def vector_gate(side, side_mask, similarity, p, num):
    source, labels = replacement_gate(mine_hard_negatives(similarity, num), p)
    return side[source], side_mask[source], labels


def _time(fn, repeat: int) -> float:
    """Median seconds of fn() over `repeat` calls, after one warm-up."""
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_gate(batch_sizes=(32, 64, 128), repeat: int = 20, steps: int = 10, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    d, t = 30, 50
    result = {"gate": {}, "step": {}}
    for b in batch_sizes:
        side = torch.randn(b, t, d)
        mask = torch.ones(b, t, dtype=torch.bool)
        similarity = torch.nn.functional.normalize(torch.randn(b, d), dim=-1) @ \
            torch.nn.functional.normalize(torch.randn(b, d), dim=-1).t()
        loop = _time(lambda: loop_gate(side, mask, similarity, 0.7, 3), repeat)
        vec = _time(lambda: vector_gate(side, mask, similarity, 0.7, 3), repeat)
        result["gate"][str(b)] = {"loop_s": loop, "vectorised_s": vec, "speedup": loop / vec}
    result["step"] = bench_step(steps=steps)
    return result


def bench_step(batch_size: int = 32, steps: int = 10) -> dict:
    """A full training step (tiny text encoder) with the gates on against the gates off.

    The runs interleave so that machine noise hits both alike."""
    from transformers import BertConfig, BertModel

    def model_for(ablation: str) -> TeCaFN:
        torch.manual_seed(0)
        enc = BertModel(BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=128), add_pooling_layer=False)
        return TeCaFN(apply_ablation(TeCaFNConfig(d_text=64), ablation), enc).train()

    g = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(0, 1000, (batch_size, 32), generator=g),
             "attention_mask": torch.ones(batch_size, 32, dtype=torch.long),
             "audio": torch.randn(batch_size, 50, 5, generator=g), "audio_lengths": torch.full((batch_size,), 50),
             "visual": torch.randn(batch_size, 50, 20, generator=g), "visual_lengths": torch.full((batch_size,), 50),
             "labels": torch.rand(batch_size, generator=g) * 6 - 3}
    models = {"with_fusion": model_for("full"), "without_fusion": model_for("wo-gate")}

    def step(model):
        model.zero_grad()
        model.loss(model(batch), batch["labels"])["total"].backward()

    times = {k: [] for k in models}
    for m in models.values():
        step(m)
    for _ in range(steps):
        for k, m in models.items():
            t = time.perf_counter()
            step(m)
            times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"with_fusion_s": med["with_fusion"], "without_fusion_s": med["without_fusion"],
            "ratio": med["with_fusion"] / med["without_fusion"], "batch_size": batch_size}


def format_report(r: dict) -> str:
    lines = ["mining + replacement gate: per-sample loop vs vectorised (median of repeats)",
             f"{'batch':>6} {'loop ms':>10} {'vector ms':>10} {'speedup':>9}"]
    for b, v in r["gate"].items():
        lines.append(f"{b:>6} {1e3 * v['loop_s']:>10.3f} {1e3 * v['vectorised_s']:>10.3f} {v['speedup']:>8.1f}x")
    s = r["step"]
    lines.append(f"training step, batch {s['batch_size']}: with cross-sample fusion {1e3 * s['with_fusion_s']:.1f} ms, "
                 f"without {1e3 * s['without_fusion_s']:.1f} ms, ratio {s['ratio']:.3f}")
    return "\n".join(lines)


SPEED_SETTINGS = {  # name: (length-bucketed batches, fused Adam)
    "before": (False, False),
    "bucketed": (True, False),
    "bucketed+fused": (True, True),
}


def bench_train(dataset, text_encoder: str = "minilm", batch_size: int = 32, steps: int = 20, device: str = "cpu",
                max_text_tokens: int = 50, seed: int = 1111) -> dict:
    """`tecaflow bench train`: training samples/s as tecaflow trained before (plain shuffled
    batches, per-parameter Adam), with length-bucketed batches, and with fused Adam as well
    (today's default). One model, steps interleaved so machine noise hits all alike. Also the
    mean padded text length per batch, which is what bucketing saves."""
    from trainer.data import Batcher
    from trainer.text_encoder import load_tokenizer
    from trainer.train import (
        TrainOptions,
        build_model,
        make_optimizer,
        resolve_device,
        train_step,
    )

    dev = resolve_device(device)
    torch.manual_seed(seed)
    opts = TrainOptions(out=".", text_encoder=text_encoder, batch_size=batch_size, device=device,
                        max_text_tokens=max_text_tokens, modality_dropout=0.0)
    model, _ = build_model(dataset, opts)
    model.to(dev).train()
    batcher = Batcher(dataset.train, load_tokenizer(text_encoder), max_text_tokens, opts.max_frames, name="train")
    g = torch.Generator().manual_seed(seed)
    settings = {name: (batcher.order(batch_size, shuffle=True, generator=g, bucket=bucket),
                       make_optimizer(model, opts, fused=fused))
                for name, (bucket, fused) in SPEED_SETTINGS.items()}
    stats = {name: {"seconds": 0.0, "samples": 0, "tokens": []} for name in settings}
    n = min(steps + 1, *(len(order) for order, _ in settings.values()))
    for i in range(n):
        for name, (order, optimizer) in settings.items():
            batch = batcher.batch(order[i], dev)
            _sync(dev)
            t = time.perf_counter()
            train_step(model, optimizer, batch, opts, None)
            _sync(dev)
            if i == 0:  # warm-up
                continue
            stats[name]["seconds"] += time.perf_counter() - t
            stats[name]["samples"] += len(order[i])
            stats[name]["tokens"].append(batch["input_ids"].shape[1])
    result = {"settings": {name: {"samples_per_s": s["samples"] / s["seconds"], "steps": n - 1,
                                  "mean_padded_tokens": float(np.mean(s["tokens"]))}
                           for name, s in stats.items()}}
    base = result["settings"]["before"]["samples_per_s"]
    for s in result["settings"].values():
        s["speedup"] = s["samples_per_s"] / base
    result.update(dataset=dataset.name, text_encoder=text_encoder, batch_size=batch_size, device=str(dev),
                  threads=torch.get_num_threads())
    return result


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def format_train_report(r: dict) -> str:
    first = next(iter(r["settings"].values()))
    lines = [f"training throughput on {r['dataset']} ({r['text_encoder']}, batch {r['batch_size']}, {r['device']}, "
             f"{r['threads']} threads), {first['steps']} interleaved steps each"]
    for name, s in r["settings"].items():
        lines.append(f"  {name:>15}: {s['samples_per_s']:7.1f} samples/s ({s['speedup']:.2f}x), "
                     f"mean padded text length {s['mean_padded_tokens']:.1f} tokens")
    return "\n".join(lines)
