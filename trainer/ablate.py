"""Ablation studies: the rows of Table 5 and Fig. 3, the p / num sweeps of Tables 6 and 7 (and
context=0,1,2,3: how many previous transcripts the model reads), and
`--changes`: what each of tecaflow's own training changes contributes, added one at a time.

Every row is one ordinary training run (trainer/train.py) with the same data, seed(s) and budget;
the Markdown table has the paper's columns, as mean ± sd where there are several seeds, and the
test metrics with the sides removed (text only) where the model has sides.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

from stream.errors import UserError
from trainer.data import Dataset
from trainer.model import ABLATIONS
from trainer.train import TrainOptions, train

log = logging.getLogger(__name__)

TABLE5 = ("full", "wo-uccon-ta", "wo-uccon-tv", "wo-uccon", "wo-bicon", "wo-gate-ta", "wo-gate-tv", "wo-gate",
          "wo-hn-ta", "wo-hn-tv", "wo-hn", "wo-v", "wo-a", "wo-va", "audio-centred", "vision-centred")
SWEEPS = {"p": float, "num": int, "context": int}  # TeCaFNConfig fields a sweep may vary
METRICS = ("mae", "corr", "acc7", "acc2_has0", "acc2_non0", "f1_has0", "f1_non0")


@dataclass
class Run:
    name: str  # directory name and table label
    ablation: str = "full"
    model: dict = field(default_factory=dict)  # TeCaFNConfig overrides
    options: dict = field(default_factory=dict)  # TrainOptions overrides
    label: str | None = None

    @property
    def title(self) -> str:
        if self.label:
            return self.label
        return ABLATIONS[self.name][0] if self.name in ABLATIONS else f"TeCaFN, {self.name}"


def parse_sweep(text: str) -> tuple[str, list]:
    """'p=0.1,0.3,0.5' -> ('p', [0.1, 0.3, 0.5])."""
    name, _, values = text.partition("=")
    if name not in SWEEPS or not values:
        raise UserError(f"--sweep must look like p=0.1,0.4,0.7, num=1,3,5 or context=0,1,2,3; got {text!r}")
    try:
        parsed = [SWEEPS[name](v) for v in values.split(",")]
    except ValueError:
        raise UserError(f"--sweep {name}: values must be {SWEEPS[name].__name__}s, got {values!r}") from None
    return name, parsed


def plan(rows: list[str] | None, sweep: str | None) -> list[Run]:
    """The runs asked for: Table 5 / Fig. 3 rows, then a sweep."""
    runs = []
    for row in rows or ([] if sweep else list(TABLE5)):
        if row not in ABLATIONS:
            raise UserError(f"unknown ablation {row!r}; choose from {', '.join(ABLATIONS)}")
        runs.append(Run(row, row))
    if sweep:
        name, values = parse_sweep(sweep)
        runs += [Run(f"{name}={v}", "full", {name: v}) for v in values]
    return runs


def plan_changes(modality_dropout: float) -> list[Run]:
    """tecaflow's changes to training, cumulative: each row adds one to the row above. The first
    row trains as tecaflow did before them (plain batches, raw features, L_uccon on the features
    CoAt consumes, no modality dropout); the last is today's default."""
    before = dict(bucket=False, standardise=False, modality_dropout=0.0)
    return [
        Run("before", "full", {"contrast_mappers": False}, before, "as before (plain batches, raw features)"),
        Run("bucketing", "full", {"contrast_mappers": False}, {**before, "bucket": True}, "+ length bucketing"),
        Run("standardise", "full", {"contrast_mappers": False}, {"modality_dropout": 0.0}, "+ standardisation"),
        Run("mappers", "full", {}, {"modality_dropout": 0.0}, "+ contrast mappers"),
        Run("dropout", "full", {}, {"modality_dropout": modality_dropout},
            f"+ modality dropout {modality_dropout:g} (default)"),
        Run("dropout-wo-mappers", "full", {"contrast_mappers": False}, {"modality_dropout": modality_dropout},
            f"modality dropout {modality_dropout:g}, w/o mappers"),
    ]


def run_ablations(dataset: Dataset, base: TrainOptions, runs: list[Run]) -> str:
    out = Path(base.out)
    results = []
    for run in runs:
        log.info("ablation run %s", run.name)
        opts = replace(base, out=out / run.name.replace("=", "_"), ablation=run.ablation,
                       model_overrides={**base.model_overrides, **run.model}, **run.options)
        results.append((run, train(dataset, opts)))
    table = markdown_table(results, dataset.task)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablation.md").write_text(table)
    (out / "ablation.json").write_text(json.dumps(
        [{"run": r.name, "ablation": r.ablation, "test": m["test"], "removals": m.get("removals", {})}
         for r, m in results], indent=2))
    return table


def cell(value, scale: float = 1.0, digits: int = 3) -> str:
    """A number, or 'mean ± sd' for a summary over seeds."""
    if isinstance(value, dict):
        return f"{scale * value['mean']:.{digits}f} ± {scale * value['sd']:.{digits}f}"
    return f"{scale * value:.{digits}f}"


def metric_cells(m: dict) -> list[str]:
    return [cell(m["mae"]), cell(m["corr"]), cell(m["acc7"], 100, 2),
            f"{cell(m['acc2_has0'], 100, 2)} / {cell(m['acc2_non0'], 100, 2)}",
            f"{cell(m['f1_has0'], 100, 2)} / {cell(m['f1_non0'], 100, 2)}"]


def markdown_table(results, task: str = "regression") -> str:
    """One row per run; runs whose model has sides get a second row: test with them removed."""
    if task == "binary":
        lines = ["| Model | Acc-2 | F1 |", "|---|---|---|"]
        lines += [f"| {r.title} | {cell(m['test']['acc2'], 100, 2)} | {cell(m['test']['f1'], 100, 2)} |"
                  for r, m in results]
        return "\n".join(lines) + "\n"
    lines = ["| Model | test | MAE ↓ | Corr ↑ | Acc-7 ↑ | Acc-2 ↑ (has0 / non0) | F1 ↑ (has0 / non0) |",
             "|---|---|---|---|---|---|---|"]
    for run, m in results:
        lines.append("| " + " | ".join([run.title, "all sides", *metric_cells(m["test"])]) + " |")
        removals = m.get("removals", {})
        removed = removals.get("text_only") or next(iter(removals.values()), None)
        if removed is not None:
            lines.append("| " + " | ".join(["", "sides removed", *metric_cells(removed)]) + " |")
    return "\n".join(lines) + "\n"
