"""Ablation studies: the rows of Table 5 and Fig. 3, and the p / num sweeps of Tables 6 and 7.

Every row is one ordinary training run (trainer/train.py) with the same data, seed and budget;
the Markdown table has the paper's columns.
"""
from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

from stream.errors import UserError
from trainer.data import Dataset
from trainer.model import ABLATIONS
from trainer.train import TrainOptions, train

log = logging.getLogger(__name__)

TABLE5 = ("full", "wo-uccon-ta", "wo-uccon-tv", "wo-uccon", "wo-bicon", "wo-gate-ta", "wo-gate-tv", "wo-gate",
          "wo-hn-ta", "wo-hn-tv", "wo-hn", "wo-v", "wo-a", "wo-va", "audio-centred", "vision-centred")
SWEEPS = {"p": float, "num": int}


def parse_sweep(text: str) -> tuple[str, list]:
    """'p=0.1,0.3,0.5' -> ('p', [0.1, 0.3, 0.5])."""
    name, _, values = text.partition("=")
    if name not in SWEEPS or not values:
        raise UserError(f"--sweep must look like p=0.1,0.4,0.7 or num=1,3,5; got {text!r}")
    try:
        parsed = [SWEEPS[name](v) for v in values.split(",")]
    except ValueError:
        raise UserError(f"--sweep {name}: values must be {SWEEPS[name].__name__}s, got {values!r}") from None
    return name, parsed


def plan(rows: list[str] | None, sweep: str | None) -> list[tuple[str, str, dict]]:
    """(run name, ablation, model overrides) for every run asked for."""
    runs = []
    for row in rows or ([] if sweep else list(TABLE5)):
        if row not in ABLATIONS:
            raise UserError(f"unknown ablation {row!r}; choose from {', '.join(ABLATIONS)}")
        runs.append((row, row, {}))
    if sweep:
        name, values = parse_sweep(sweep)
        runs += [(f"{name}={v}", "full", {name: v}) for v in values]
    return runs


def run_ablations(dataset: Dataset, base: TrainOptions, rows=None, sweep=None) -> str:
    out = Path(base.out)
    results = []
    for run_name, ablation, overrides in plan(rows, sweep):
        log.info("ablation run %s", run_name)
        opts = replace(base, out=out / run_name.replace("=", "_"), ablation=ablation,
                       model_overrides={**base.model_overrides, **overrides})
        metrics = train(dataset, opts)
        results.append((run_name, ablation, metrics["test"]))
    table = markdown_table(results, dataset.task)
    (out / "ablation.md").write_text(table)
    (out / "ablation.json").write_text(json.dumps(
        [{"run": r, "ablation": a, "test": m} for r, a, m in results], indent=2))
    return table


def markdown_table(results, task: str = "regression") -> str:
    if task == "binary":
        lines = ["| Model | Acc-2 | F1 |", "|---|---|---|"]
        lines += [f"| {_label(r, a)} | {100 * m['acc2']:.2f} | {100 * m['f1']:.2f} |" for r, a, m in results]
        return "\n".join(lines) + "\n"
    lines = ["| Model | MAE ↓ | Corr ↑ | Acc-7 ↑ | Acc-2 ↑ (has0/non0) | F1 ↑ (has0/non0) |",
             "|---|---|---|---|---|---|"]
    for run, ablation, m in results:
        lines.append(f"| {_label(run, ablation)} | {m['mae']:.3f} | {m['corr']:.3f} | {100 * m['acc7']:.2f} | "
                     f"{100 * m['acc2_has0']:.2f}/{100 * m['acc2_non0']:.2f} | "
                     f"{100 * m['f1_has0']:.2f}/{100 * m['f1_non0']:.2f} |")
    return "\n".join(lines) + "\n"


def _label(run: str, ablation: str) -> str:
    return ABLATIONS[run][0] if run in ABLATIONS else f"TeCaFN, {run}"
