"""The trainer's subcommands of `tecaflow`: train, evaluate, ablate, export, bench gate.

Registering them imports nothing heavy; torch and the model load only when one of them runs.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from stream.arguments import REPO_HELP, positive
from stream.contract import BACKENDS, DEFAULT_INSTANCES
from stream.errors import UserError
from trainer.options import add_option_flags, options_from

log = logging.getLogger(__name__)

DATA_HELP = ("'synthetic' (the seeded generator), a folder with utterances.csv (+ audio*.npz, visual*.npz), "
             "an MMSA CMU-MOSI/MOSEI .pkl, or a UR-FUNNY folder. Pickles can run code when loaded: "
             "only name pickle files you trust")


def add_training_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help=DATA_HELP)
    add_option_flags(p)  # one flag per TrainOptions field (trainer/options.py)
    p.add_argument("--synthetic-size", type=positive(int), default=1200, help="utterances for --data synthetic")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a TeCaFNConfig field, e.g. --set p=0.4 --set cross_layers=2 (repeatable)")


def register(sub) -> None:
    p = sub.add_parser("train", help="train TeCaFN and write a run directory")
    add_training_args(p)
    p.add_argument("--ablation", default="full", metavar="NAME",
                   help="a row of the paper's Table 5 / Fig. 3 (full, wo-uccon, wo-gate, wo-v, ...: "
                        "a name that is not one lists them all)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="metrics of a checkpoint on a dataset, as JSON")
    p.add_argument("--checkpoint", required=True, type=Path)
    p.add_argument("--data", required=True, help=DATA_HELP)
    add_option_flags(p, ("device", "seed"))
    p.add_argument("--split", action="append", choices=("train", "valid", "test"),
                   help="splits to evaluate (default valid and test)")
    p.add_argument("--synthetic-size", type=positive(int), default=1200)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("ablate", help="Table 5 / Fig. 3 rows and p / num / context sweeps, as a Markdown table")
    add_training_args(p)
    p.add_argument("--rows", nargs="+", metavar="NAME", help="ablations to run (default: all of Table 5 and Fig. 3)")
    p.add_argument("--sweep", help="p=0.1,0.3,0.5,0.7,0.9 (Table 6), num=1,2,3,4,5 (Table 7) or context=0,1,2,3 "
                                   "(previous transcripts read)")
    p.add_argument("--changes", action="store_true",
                   help="instead of Table 5: what each of tecaflow's training changes contributes, added one at a "
                        "time (length bucketing, standardisation, contrast mappers, modality dropout)")
    p.set_defaults(func=cmd_ablate)

    p = sub.add_parser("export", help="export a checkpoint as a new version in a Triton model repository")
    p.add_argument("--checkpoint", required=True, type=Path)
    p.add_argument("--repo", type=Path, help=REPO_HELP)
    p.add_argument("--backend", choices=BACKENDS, default="python",
                   help="python: ONNX Runtime inside Triton's Python backend (what the embedded Triton runs); "
                        "onnxruntime: Triton's native ONNX Runtime backend on GPU (NVIDIA's container)")
    p.add_argument("--max-batch", type=positive(int), default=64)
    p.add_argument("--queue-delay-us", type=positive(int), default=2000, help="dynamic batching queue delay bound")
    p.add_argument("--instances", type=positive(int), default=DEFAULT_INSTANCES,
                   help="model instances, each with its share of the cores")
    p.add_argument("--tensorrt", action="store_true", help="TensorRT acceleration (onnxruntime backend)")
    p.add_argument("--no-attribution", dest="attribution", action="store_false",
                   help="serve the score alone, without the text-only score and each side's contribution "
                        "(attribution costs a few passes of the fusion layers; `tecaflow bench serve` measures it)")
    # int8 by default on the CPU (python) backend where it holds: on the real CMU-MOSI test split it
    # moved a MiniLM model's MAE by +0.007 and -0.008 on two checkpoints (the bar was 0.01) and nearly
    # doubles throughput on CPU (README, Benchmarks); a trained MPNet model's is within tolerance only
    # with its feed-forward output projections fp32 (export.INT8_STEPS), and a graph past it at every
    # step is served fp32 by `auto`. Not on the GPU backend: TensorRT and CUDA take fp32/fp16 graphs.
    p.add_argument("--quantize", choices=("none", "int8", "auto"),
                   help="int8: serve ONNX Runtime's static int8 quantization of the graph (scales calibrated on "
                        "training segments), refused when it strays from fp32 past its tolerance; auto: int8 "
                        "where it stays within it, else fp32 (logged, and in tecafn.json); none: the fp32 graph "
                        "(default: auto for the python backend, none for onnxruntime)")
    p.add_argument("--calibration-data",
                   help="with --quantize int8 or auto: calibrate on this dataset's training split instead of the sample "
                        "the training run wrote beside the checkpoint (calibration.npz)")
    p.add_argument("--accuracy-data", help="with --quantize: report the test MAE change on this dataset "
                                           "(e.g. ../shared/data/cmu-mosi)")
    p.add_argument("--candidate", action="store_true",
                   help="export without promoting: the new version shadows the live one (docs/shadow.md) until "
                        "`tecaflow promote`")
    p.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    from functools import partial

    from stream.config import Settings
    from trainer.export import export
    settings = Settings.from_env()
    repo = args.repo or Path(settings.model_repo)
    exporting = partial(export, args.checkpoint, repo, args.backend, args.max_batch, args.tensorrt, args.queue_delay_us,
                        args.instances, args.quantize or ("auto" if args.backend == "python" else "none"),
                        args.accuracy_data, attribution=args.attribution, calibration_data=args.calibration_data)
    from stream.shadow.cli import export_candidate, export_live
    target = (export_candidate if args.candidate else export_live)(settings, repo, exporting)
    print(target)
    return 0


def register_bench(bench_sub) -> None:
    p = bench_sub.add_parser("gate", help="vectorised mining + gate vs a per-sample loop; step overhead")
    p.add_argument("--json", action="store_true")
    p.add_argument("--repeat", type=positive(int), default=20)
    p.set_defaults(func=cmd_bench_gate)

    p = bench_sub.add_parser("train", help="training samples/s with plain batches vs length-bucketed batches")
    p.add_argument("--data", required=True, help=DATA_HELP)
    add_option_flags(p, ("text_encoder", "batch_size", "device", "max_text_tokens", "seed"))
    p.add_argument("--steps", type=positive(int), default=20, help="timed training steps per setting")
    p.add_argument("--synthetic-size", type=positive(int), default=1200)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_train)


def parse_overrides(items: list[str]) -> dict:
    from dataclasses import fields

    from trainer.model import TeCaFNConfig, check_ranges
    types = {f.name: f.type for f in fields(TeCaFNConfig)}
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in types:
            raise UserError(f"--set {item!r}: expected FIELD=VALUE with FIELD one of {', '.join(types)}")
        kind = types[name]
        try:
            if "tuple" in str(kind):
                out[name] = tuple(v for v in value.split(",") if v)
            elif kind in ("bool", bool):
                out[name] = value.lower() in ("1", "true", "yes")
            else:
                out[name] = {"int": int, "float": float, "str": str}.get(str(kind), str)(value)
        except ValueError:
            raise UserError(f"--set {item!r}: {value!r} is not a valid {kind}") from None
        try:  # the range now, before the data loads; how fields combine is checked with the model
            check_ranges({name: out[name]})
        except ValueError as e:
            raise UserError(f"--set {item!r}: {e}") from None
    return out


def _options(args, **extra):
    return options_from(args, model_overrides=parse_overrides(args.set), **extra)


def _dataset(args):
    from trainer.data import load_dataset
    options = {"seed": args.seed, "n": args.synthetic_size} if args.data == "synthetic" else {}
    ds = load_dataset(args.data, **options)
    log.info("data %s", ds.describe())
    return ds


def cmd_train(args) -> int:
    from trainer.model import ABLATIONS
    from trainer.train import resolve_device, train
    if args.ablation not in ABLATIONS:
        raise UserError(f"--ablation {args.ablation!r}: choose one of {', '.join(ABLATIONS)}")
    opts = _options(args, ablation=args.ablation)
    resolve_device(opts.device)  # before loading data: a wrong device is the cheaper error
    metrics = train(_dataset(args), opts)
    print(json.dumps({"out": str(args.out), **{k: metrics[k] for k in ("valid", "test", "removals")}}, indent=2))
    return 0


def cmd_evaluate(args) -> int:
    from trainer.train import evaluate_checkpoint
    result = evaluate_checkpoint(args.checkpoint, _dataset(args), args.device, tuple(args.split or ("valid", "test")))
    print(json.dumps(result, indent=2))
    return 0


def cmd_ablate(args) -> int:
    from trainer.ablate import plan, plan_changes, run_ablations
    if args.changes and (args.rows or args.sweep):
        raise UserError("--changes runs its own rows; leave out --rows and --sweep")
    runs = plan_changes(args.modality_dropout) if args.changes else plan(args.rows, args.sweep)
    print(run_ablations(_dataset(args), _options(args), runs))
    return 0


def cmd_bench_train(args) -> int:
    from trainer.bench import bench_train, format_train_report
    result = bench_train(_dataset(args), args.text_encoder, args.batch_size, args.steps, args.device,
                         args.max_text_tokens, args.seed)
    print(json.dumps(result, indent=2) if args.json else format_train_report(result))
    return 0


def cmd_bench_gate(args) -> int:
    from trainer.bench import bench_gate, format_report
    result = bench_gate(repeat=args.repeat)
    print(json.dumps(result, indent=2) if args.json else format_report(result))
    return 0
