"""`effnet train`, `effnet eval`, `effnet predict`: argument parsing over effnet.train, and the
figures (the training code returns data: this module draws ``curves.png`` after each checkpoint
and ``eval --confusion``).

`effnet train`'s options are derived from :class:`~effnet.train.config.TrainConfig` by a small
generator (:func:`add_config_options`): one ``--field-name`` per field, the type from the field's
annotation (bools as ``--x/--no-x``, tuples as several values, a ``str`` union as a word the
config resolves), help text and allowed values from the field's metadata. An option that is not
given is absent from the parsed arguments (``argparse.SUPPRESS``), so only what the user typed
overrides the recipe. A short alias table keeps the established spellings (``--lr``,
``--subset`` ...). Besides the fields, only what is not configuration: ``--resume``,
``--pretrained``, and ``--stages``/``--sizes`` that adjust the progressive ranges.

Why a generator rather than jsonargparse or tyro: neither is installed, and a runtime dependency
for one sub-command buys little here -- both would still need the alias table and the "not given
means the recipe's value" rule (the recipe, not the dataclass default, supplies the rest), and
the generator is plain argparse like every other sub-command, forty lines to read.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any

from effnet.commands.common import check_arguments, check_inference_memory, check_training_memory

if TYPE_CHECKING:
    from effnet.train import RunResult
    from effnet.train.config import Resolved

#: Established spellings kept beside the derived ``--field-name`` (both work).
ALIASES: dict[str, tuple[str, ...]] = {
    "lr_per_256": ("--lr",),
    "train_subset": ("--subset",),
    "save_every_steps": ("--save-every",),
    "dist_timeout_minutes": ("--dist-timeout",),
}

#: Placeholders in ``--help`` where the field name says less than a word would.
METAVARS: dict[str, str | tuple[str, ...]] = {
    "data": "DIR", "model": "NAME", "spec": "FILE", "weights": "FILE", "out": "DIR", "recipe": "NAME|FILE",
    "progressive": "PRESET", "train_subset": "N", "save_every_steps": "N", "dist_timeout_minutes": "MINUTES",
    "crop_scale": ("MIN", "MAX"), "extra": "KEY=VALUE",
}


#: Options whose default is the recipe's: their help lists each recipe's value.
RECIPE_DEPENDENT = ("epochs", "batch_size", "lr_per_256", "image_size")


def _option_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def _key_value(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE read as YAML (``3`` an int, ``true`` a bool, else a string)."""
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, yaml.safe_load(value)


def add_config_options(parser: argparse.ArgumentParser, config_cls: type) -> None:
    """One option per field of the dataclass ``config_cls``, parsed into its annotated type."""
    hints = typing.get_type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        tp = hints[f.name]
        # `X | None` (None: "the recipe's / spec's value") parses as X; `ProgressiveSpec | str`
        # takes the word (a preset name, "model", "on" or "off") that the config resolves.
        members = [a for a in typing.get_args(tp) if a is not type(None)]
        if typing.get_origin(tp) in (typing.Union, types.UnionType):
            tp = str if str in members else members[0]
        kw: dict[str, Any] = dict(dest=f.name, default=argparse.SUPPRESS, help=_help_text(f))
        if f.name in METAVARS:
            kw["metavar"] = METAVARS[f.name]
        if "choices" in f.metadata:
            kw["choices"] = f.metadata["choices"]
            kw.pop("metavar", None)  # argparse shows the choices
        if tp is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(tp) is tuple:
            args = typing.get_args(tp)
            kw["type"], kw["nargs"] = args[0], ("+" if args[-1] is Ellipsis else len(args))
        elif typing.get_origin(tp) is dict:
            kw["type"], kw["action"] = _key_value, "append"
        elif tp in (int, float, str):
            kw["type"] = tp
        else:
            raise TypeError(f"{config_cls.__name__}.{f.name}: no command-line form for type {tp!r}")
        parser.add_argument(_option_name(f.name), *ALIASES.get(f.name, ()), **kw)


def _help_text(f: dataclasses.Field) -> str:  # type: ignore[type-arg]
    """A field's help, with the recipe names spelled out where it refers to the RECIPES table."""
    text = f.metadata.get("help", "")
    if f.name in RECIPE_DEPENDENT:
        text += f" (default by recipe: {recipe_defaults(f.name)})".replace("%", "%%")
    if "RECIPES" in text:
        from effnet.train.config import RECIPES

        text = text.replace("(RECIPES)", f"({', '.join(RECIPES)})").replace("RECIPES", ", ".join(RECIPES))
    return text


def recipe_defaults(name: str) -> str:
    """Each recipe's value of the field ``name`` in a few words (``--help`` of the options whose
    default depends on the recipe)."""
    from effnet.train.config import TrainConfig
    from effnet.train.recipes import FINETUNE_EPOCHS, FINETUNE_FROZEN_LR, RECIPES

    sized = {"epochs": f"{FINETUNE_EPOCHS[0]}-{FINETUNE_EPOCHS[1]} from the data",
             "batch_size": "8-32 from the data", "image_size": "from the data and the weights"}
    default = {f.name: f.default for f in dataclasses.fields(TrainConfig)}[name]
    parts = []
    for recipe, values in RECIPES.items():
        value = sized[name] if recipe == "finetune" and name in sized else values.get(name, default)
        if name == "lr_per_256" and values.get("lr_batch_floor"):
            value = f"{value:g} (peak lr, not scaled below batch {values['lr_batch_floor']})"
        if name == "lr_per_256" and recipe == "finetune":
            value = value[:-1] + f"; {FINETUNE_FROZEN_LR:g} with --freeze-backbone)"
        parts.append(f"{recipe} {value if isinstance(value, str) else f'{value:g}' if value is not None else 'the spec'}")
    return "; ".join(parts)


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`TrainConfig` fields the user gave on the command line (and only those)."""
    from effnet.train.config import TrainConfig

    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
    if "extra" in given:
        given["extra"] = dict(given["extra"])  # [(key, value), ...] from repeated --extra
    return given


def resolve_args(args: argparse.Namespace) -> Resolved:
    """The config of a new run, with where each value came from: the options given, passed to
    ``effnet.train.config.resolve`` (``--pretrained`` becomes the cached weights file)."""
    from effnet.train.config import resolve

    overrides = config_overrides(args)
    if getattr(args, "pretrained", False):
        if "weights" in overrides or "model" not in overrides:
            raise ValueError("--pretrained needs --model NAME (the published weights of that model) and no --weights")
        from effnet.weights.hub import fetch_pretrained

        overrides["weights"] = str(fetch_pretrained(overrides["model"]))
    resolved = resolve(overrides.pop("recipe", None), stages=getattr(args, "stages", None),
                       sizes=getattr(args, "sizes", None), **overrides)
    if getattr(args, "pretrained", False):
        resolved.sources["weights"] = "flag (--pretrained)"
    return resolved


def describe_config(resolved: Resolved) -> list[str]:
    """``--dry-run``'s lines: every field's value and where it came from."""
    d = resolved.cfg.to_dict()
    width = max(map(len, d))
    return [f"  {_option_name(k)[2:]:<{width}}  {json.dumps(v) if isinstance(v, (dict, list)) else v}"
            f"  [{resolved.sources.get(k, 'default')}]" for k, v in d.items()]


def cmd_train(args: argparse.Namespace) -> int:
    from tqdm.contrib.logging import logging_redirect_tqdm

    from effnet.train import Interrupted

    if getattr(args, "dry_run", False):
        check_arguments(args)
        if getattr(args, "resume", None):
            raise ValueError("--dry-run shows a new run's settings; a resumed run's are in its config.yaml")
        resolved = resolve_args(args)
        if resolved.summary:
            print(resolved.summary)
        print(f"resolved configuration (recipe {resolved.cfg.recipe}; [where each value comes from]):")
        print("\n".join(describe_config(resolved)))
        print("dry run: nothing was trained and no run folder was created")
        return 0
    try:
        with logging_redirect_tqdm():  # log lines print above the progress bar, not through it
            result = _run_training(args)
    except Interrupted as e:
        # Stopped by SIGINT/SIGTERM at a safe point: the loop has logged the message with the
        # resume command (printing it again would show it twice); the exit status says which
        # signal (130, 143), as a shell expects.
        return e.exit_code
    if not result.is_main:
        return 0  # in a torchrun job, rank 0 reports
    print(f"{result.epochs} epochs: final top-1 {result.final_top1:.2f}%, best {result.best_top1:.2f}%")
    print(f"run folder: {result.run_dir}")
    if result.skipped:
        print(f"skipped {len(result.skipped)} unreadable image(s): {', '.join(result.skipped[:10])}")
    return 0


def _run_training(args: argparse.Namespace) -> RunResult:
    from effnet.train import TrainConfig, train

    check_arguments(args)
    if getattr(args, "resume", None):
        # A resumed run continues with its recorded config.yaml, changing at most the learning rate
        # and the epochs; anything else given would be silently ignored, so say so instead.
        from effnet.train.config import RESUME_CHANGES

        given = config_overrides(args)
        changes = {k: v for k, v in given.items() if k in RESUME_CHANGES}
        ignored = [ALIASES.get(k, (_option_name(k),))[0] for k in given if k not in RESUME_CHANGES]
        ignored += [f"--{k}" for k in ("pretrained", "stages", "sizes") if getattr(args, k, None)]
        if ignored:
            raise ValueError(f"--resume {args.resume} continues with the run's recorded config (config.yaml), "
                             f"changing only --lr and --epochs, so {', '.join(ignored)} would be ignored: drop "
                             f"them, or start a new run")
        return train(TrainConfig(), resume=args.resume, **({"resume_changes": changes} if changes else {}),
                     on_checkpoint=draw_curves)
    resolved = resolve_args(args)
    if resolved.summary:
        print(resolved.summary, flush=True)
    check_training_memory(resolved.cfg)
    return train(resolved.cfg, on_checkpoint=draw_curves)


def draw_curves(folder: Path, rows: list[dict[str, Any]]) -> None:
    """The report step of a run from the command line, after each epoch's checkpoint: the loss
    and accuracy curves (``curves.png``) of the metrics so far."""
    from effnet.train.rundir import CURVES_FILE
    from effnet.viz.plots import plot_curves

    plot_curves(folder / CURVES_FILE, rows)


def cmd_eval(args: argparse.Namespace) -> int:
    from effnet.preprocessing import Preprocessing
    from effnet.train import evaluate
    from effnet.train.evaluation import describe_path, describe_preprocessing

    check_arguments(args)
    if args.run and args.weights:
        raise ValueError(f"give the run folder {args.run} or --weights {args.weights}, not both")
    args.weights = args.weights or args.run
    if not args.weights:
        raise ValueError("what to evaluate: a run folder (effnet eval RUN_DIR) or --weights FILE|RUN_DIR")
    if args.confusion:
        from effnet.files import check_output

        check_output(args.confusion, inputs=[args.weights], overwrite=args.overwrite)
    check_inference_memory(args.weights, args.resolution, args.batch_size, args.device)
    # The confusion PNG is drawn after the scores are printed: a failed side file never loses them.
    r = evaluate(args.weights, args.data, batch_size=args.batch_size, device=args.device,
                 workers=args.workers, resolution=args.resolution,
                 fast=args.fast, int8=args.int8, runtime=args.runtime)
    if args.json:
        print(json.dumps(r.__dict__, indent=2), flush=True)
        _write_confusion(r, args.confusion)
        return 0
    print(f"preprocessing: {describe_preprocessing(Preprocessing.from_dict(r.preprocessing))}")
    print(f"inference: {describe_path(r.path)}")
    if r.int8_agreement is not None:
        print(f"int8 top-1 agrees with fp32 on {100 * r.int8_agreement:.2f}% of the images")
    print(f"{r.count} images: top-1 {r.top1:.2f}%  top-5 {r.top5:.2f}%  loss {r.loss:.4f}")
    for name, acc in r.per_class.items():
        print(f"  {name:>20s}  {acc:6.2f}%")
    if r.skipped:
        print(f"skipped {len(r.skipped)} unreadable image(s): {', '.join(r.skipped[:10])}")
    sys.stdout.flush()
    if _write_confusion(r, args.confusion):
        print(f"confusion matrix: {args.confusion}")
    return 0


def _write_confusion(r: object, path: str | None) -> bool:
    """The confusion matrix PNG of an evaluation, drawn once its scores are out."""
    if not path:
        return False
    import torch

    from effnet.viz.plots import plot_confusion

    plot_confusion(torch.tensor(r.confusion), list(r.class_names), path)  # type: ignore[attr-defined]
    return True


def cmd_predict(args: argparse.Namespace) -> int:
    from effnet.preprocessing import Preprocessing
    from effnet.train import predict
    from effnet.train.evaluation import describe_path, describe_preprocessing

    check_arguments(args)
    if args.out:
        from effnet.files import check_output

        if Path(args.out).suffix.lower() not in (".csv", ".json"):
            raise ValueError(f"--out {args.out}: expected a .csv or .json file name")
        check_output(args.out, inputs=[args.weights, *args.images], overwrite=args.overwrite)
    check_inference_memory(args.weights, args.resolution, args.batch_size, args.device)
    preds = predict(args.images, args.weights, topk=args.topk, device=args.device, resolution=args.resolution,
                    fast=args.fast, int8=args.int8, runtime=args.runtime, batch_size=args.batch_size)
    if args.out:
        write_predictions(preds, args.out)
        failed = sum(p.error is not None for p in preds)
        print(f"{len(preds)} image(s): predictions written to {args.out}"
              + (f" ({failed} unreadable, with their error)" if failed else ""))
    elif args.json:
        print(json.dumps([p.__dict__ for p in preds], indent=2))
    else:
        if preds:
            print(f"preprocessing: {describe_preprocessing(Preprocessing.from_dict(preds[0].preprocessing))}")
            print(f"inference: {describe_path(preds[0].path)}")
        for p in preds:
            if p.error:
                print(f"{p.image}: {p.error}")
                continue
            print(p.image + ": " + ", ".join(f"{name} {prob:.3f}" for name, prob in p.top))
    return 1 if any(p.error for p in preds) else 0


def write_predictions(preds: list, path: str) -> None:
    """``predict``'s results as CSV (image, class_1, prob_1 ... class_k, prob_k, error) or as a
    JSON list (``Prediction`` fields), by the file's extension."""
    from effnet.files import atomic_write

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            if path.lower().endswith(".json"):
                json.dump([p.__dict__ for p in preds], f, indent=2)
                return
            k = max((len(p.top) for p in preds), default=0)
            w = csv.writer(f)
            w.writerow(["image", *[c for i in range(1, k + 1) for c in (f"class_{i}", f"prob_{i}")], "error"])
            for p in preds:
                cells = [c for name, prob in p.top for c in (name, f"{prob:.6f}")]
                w.writerow([p.image, *cells, *[""] * (2 * k - len(cells)), p.error or ""])

    atomic_write(path, write)


def register(sub: argparse._SubParsersAction) -> None:
    from effnet.train.config import RECIPES, TrainConfig

    t = sub.add_parser("train", help="train or fine-tune (default: the digits job)",
                       description="Train or fine-tune an EfficientNet; with no options, trains on the "
                                   "built-in digits set. With --weights (or --pretrained) and no --recipe, "
                                   "fine-tunes with the finetune recipe sized to the data (it prints what it "
                                   "picked; --dry-run shows every value and its source). Writes a run folder (config, metrics.csv, "
                                   "best/last weights, curves.png, resume state). Options not given keep "
                                   f"the recipe's value (--recipe: {', '.join(RECIPES)} or a YAML file).")
    add_config_options(t, TrainConfig)
    t.add_argument("--resume", metavar="RUN_DIR", default=argparse.SUPPRESS,
                   help="continue a run where its last checkpoint left off (with its recorded config; only "
                        "--lr and --epochs may be changed)")
    t.add_argument("--pretrained", action="store_true", default=argparse.SUPPRESS,
                   help="start from --model's published ImageNet weights (downloaded once, cached; see "
                        "`effnet pretrained`)")
    t.add_argument("--dry-run", action="store_true", default=argparse.SUPPRESS,
                   help="print the resolved configuration, each value with where it came from (recipe, data, "
                        "weights, flag, default), and exit without training or creating the run folder")
    t.add_argument("--stages", type=int, default=argparse.SUPPRESS, metavar="N",
                   help="progressive learning: number of stages (with --progressive)")
    t.add_argument("--sizes", type=int, nargs=2, metavar=("MIN", "MAX"), default=argparse.SUPPRESS,
                   help="progressive learning: image size of the first and the last stage")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="top-1/top-5, per-class accuracy and confusion matrix of weights on data")
    e.add_argument("run", nargs="?", metavar="RUN_DIR",
                   help="a training run folder: its best weights on its recorded validation split")
    e.add_argument("--weights", metavar="FILE|RUN_DIR",
                   help="an effnet weight file, or a run folder (its best.safetensors)")
    e.add_argument("--data",
                   help="'digits' (its val split), DIR/val|valid|validation|test or DIR/<class>/* (default: "
                        "a run's recorded validation split, else digits); classes are matched by name")
    e.add_argument("--batch-size", type=int, default=64, metavar="N", help="images per batch (default 64)")
    e.add_argument("--workers", type=int, metavar="N",
                   help="image-decoding processes (default: 0 for digits, else the CPU count, up to 8; 0: in this process)")
    e.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or mps (default auto: CUDA if available)")
    e.add_argument("--confusion", metavar="PNG",
                   help="also write the confusion matrix as a PNG, after the scores (an existing file only "
                        "with --overwrite)")
    e.add_argument("--overwrite", action="store_true", help="replace an existing --confusion file")
    e.add_argument("--resolution", type=int, metavar="PX",
                   help="test at this crop size instead of the file's (FixRes: accuracy often rises above the training size)")
    _add_speed_options(e, "the int8 model is calibrated on the first batches of --data; prints its top-1 "
                          "agreement with fp32")
    e.add_argument("--json", action="store_true", help="print the scores as one JSON object")
    e.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="top-k classes of images")
    p.add_argument("images", nargs="+", metavar="IMAGE|DIR",
                   help="image files (JPEG, PNG, WebP), or folders searched recursively for them")
    p.add_argument("--weights", required=True, metavar="FILE|RUN_DIR",
                   help="an effnet weight file, or a run folder (its best.safetensors)")
    p.add_argument("--topk", type=int, default=5, metavar="K", help="classes to print per image (default 5)")
    p.add_argument("--batch-size", type=int, default=32, metavar="N",
                   help="images decoded and run at a time (default 32; memory holds one batch, not the folder)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or mps (default auto: CUDA if available)")
    p.add_argument("--resolution", type=int, metavar="PX",
                   help="test at this crop size instead of the file's (FixRes: accuracy often rises above the training size)")
    _add_speed_options(p, "the int8 model is calibrated on the first batch of the given images")
    p.add_argument("--json", action="store_true", help="print the predictions as a JSON list")
    p.add_argument("--out", metavar="FILE.csv|FILE.json",
                   help="write the predictions to a CSV (image, class_1, prob_1, ..., error) or JSON file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=cmd_predict)


def _add_speed_options(parser: argparse.ArgumentParser, int8_note: str) -> None:
    parser.add_argument("--runtime", choices=("auto", "torch", "onnxruntime", "openvino"), default="auto",
                        help="CPU runtime of the fp32 model: torch, or effnet's verified ONNX export (cached "
                             "beside the weights) on onnxruntime / openvino. Default auto: with --fast, the "
                             "fastest here (timed once and recorded; printed); otherwise the model as loaded")
    speed = parser.add_mutually_exclusive_group()
    speed.add_argument("--fast", action="store_true",
                       help="run effnet.optimize's fp32 copy (BatchNorm folded, channels-last): same results, faster")
    speed.add_argument("--int8", action="store_true",
                       help=f"run an int8 CPU model (post-training static quantization); {int8_note}")
