"""`effnet train`, `effnet eval`, `effnet predict`: argument parsing over effnet.train."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from effnet.data.progressive import ProgressiveSpec
    from effnet.train import RunResult


def _train(args: argparse.Namespace) -> int:
    from tqdm.contrib.logging import logging_redirect_tqdm

    with logging_redirect_tqdm():  # log lines print above the progress bar, not through it
        result = _run_training(args)
    if not result.is_main:
        return 0  # in a torchrun job, rank 0 reports
    print(f"{result.epochs} epochs: final top-1 {result.final_top1:.2f}%, best {result.best_top1:.2f}%")
    print(f"run folder: {result.run_dir}")
    if result.skipped:
        print(f"skipped {len(result.skipped)} unreadable image(s): {', '.join(result.skipped[:10])}")
    return 0


def _run_training(args: argparse.Namespace) -> RunResult:
    from effnet.train import resolve_config, train

    if args.resume:
        return train(resolve_config(), resume=args.resume)
    weights = args.weights
    if args.pretrained:
        if weights or not args.model:
            raise ValueError("--pretrained needs --model NAME (the published weights of that model) and no --weights")
        from effnet.weights.hub import fetch_pretrained

        weights = str(fetch_pretrained(args.model))
    cfg = resolve_config(
        args.recipe, data=args.data, model=args.model, spec=args.spec, weights=weights,
        epochs=args.epochs, out=args.out, batch_size=args.batch_size, lr_per_256=args.lr,
        image_size=args.image_size, freeze_backbone=args.freeze_backbone or None, seed=args.seed,
        workers=args.workers, device=args.device, amp=args.amp, compile=args.compile or None,
        accum_steps=args.accum_steps, save_every_steps=args.save_every, schedule=args.schedule,
        width=args.width, depth=args.depth, threads=args.threads, train_subset=args.subset,
        channels_last=False if args.no_channels_last else None, ema=False if args.no_ema else None,
        sync_bn=args.sync_bn or None, deterministic=args.deterministic or None,
        dist_timeout_minutes=args.dist_timeout, log_steps=args.log_steps or None,
    )
    progressive = _progressive(args, cfg.progressive)
    if progressive is not cfg.progressive:
        cfg.progressive, cfg.autoaugment = progressive, False  # V2 pairs progressive with RandAugment
    return train(cfg)


def _progressive(args: argparse.Namespace, current: ProgressiveSpec | None) -> ProgressiveSpec | None:
    """``--progressive PRESET`` picks the ranges (else the recipe's); ``--stages``/``--sizes`` adjust them."""
    from effnet.data.progressive import V2_PRESETS, ProgressiveSpec, Range

    spec = current
    if args.progressive:
        if args.progressive in V2_PRESETS:
            spec = V2_PRESETS[args.progressive]
        elif args.progressive == "on":
            spec = current or ProgressiveSpec()
        else:
            raise ValueError(f"--progressive: expected 'on' or one of {sorted(V2_PRESETS)}, got {args.progressive!r}")
    if (args.stages or args.sizes) and spec is None:
        raise ValueError("--stages/--sizes need progressive learning: add --progressive on (or a preset)")
    changes: dict = {}
    if args.stages:
        changes["stages"] = args.stages
    if args.sizes:
        changes["image_size"] = Range(*args.sizes)
    return ProgressiveSpec(**{**spec.__dict__, **changes}) if changes and spec else spec


def _eval(args: argparse.Namespace) -> int:
    from effnet.train import evaluate

    r = evaluate(args.weights, args.data, batch_size=args.batch_size, device=args.device,
                 confusion_png=args.confusion, workers=args.workers)
    if args.json:
        print(json.dumps(r.__dict__, indent=2))
        return 0
    print(f"{r.count} images: top-1 {r.top1:.2f}%  top-5 {r.top5:.2f}%  loss {r.loss:.4f}")
    for name, acc in r.per_class.items():
        print(f"  {name:>20s}  {acc:6.2f}%")
    if r.confusion_png:
        print(f"confusion matrix: {r.confusion_png}")
    if r.skipped:
        print(f"skipped {len(r.skipped)} unreadable image(s): {', '.join(r.skipped[:10])}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from effnet.train import predict

    preds = predict(args.images, args.weights, topk=args.topk, device=args.device)
    if args.json:
        print(json.dumps([p.__dict__ for p in preds], indent=2))
    else:
        for p in preds:
            if p.error:
                print(f"{p.image}: {p.error}")
                continue
            print(p.image + ": " + ", ".join(f"{name} {prob:.3f}" for name, prob in p.top))
    return 1 if any(p.error for p in preds) else 0


def register(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("train", help="train or fine-tune (default: the digits job)",
                       description="Train or fine-tune an EfficientNet; with no options, trains on the "
                                   "built-in digits set. Writes a run folder (config, metrics.csv, "
                                   "best/last weights, curves.png, resume state).")
    t.add_argument("--data", help="'digits' (default), DIR/train+DIR/val, or DIR/<class>/* split by seed")
    t.add_argument("--model", help="registered model name (effnet list)")
    t.add_argument("--spec", help="spec file (YAML/JSON) instead of --model")
    t.add_argument("--weights", help="initial weights (fine-tuning; a new head if the class count differs)")
    t.add_argument("--pretrained", action="store_true",
                   help="start from --model's published ImageNet weights (downloaded once, cached; see "
                        "`effnet pretrained`)")
    t.add_argument("--recipe", help="digits, digits_progressive, paper_v1, paper_v2, transfer_v2, debug, "
                                    "or a YAML file (default: digits for digits data, else paper_v1)")
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", type=int,
                   help="images per process and step (under torchrun the global batch is this x world size)")
    t.add_argument("--accum-steps", type=int, help="gradient accumulation micro-batches per step")
    t.add_argument("--lr", type=float, help="learning rate per 256 images (scaled linearly with batch size)")
    t.add_argument("--schedule", choices=["exponential", "cosine", "constant"])
    t.add_argument("--image-size", type=int)
    t.add_argument("--width", type=float, help="extra width multiplier on the model")
    t.add_argument("--depth", type=float, help="extra depth multiplier on the model")
    t.add_argument("--progressive", metavar="PRESET",
                   help="V2 progressive learning: 'on' or efficientnetv2_s/m/l (paper Table 6)")
    t.add_argument("--stages", type=int, help="progressive stages")
    t.add_argument("--sizes", type=int, nargs=2, metavar=("MIN", "MAX"), help="progressive image sizes")
    t.add_argument("--freeze-backbone", action="store_true", help="train only the classifier")
    t.add_argument("--out", help="run folder (default: runs/<timestamp>)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue a run where its last checkpoint left off")
    t.add_argument("--save-every", type=int, help="also checkpoint every N optimiser steps")
    t.add_argument("--seed", type=int)
    t.add_argument("--subset", type=int, metavar="N", help="train on the first N training images only (smoke tests)")
    t.add_argument("--workers", type=int, help="data loader processes")
    t.add_argument("--threads", type=int, help="torch CPU threads (default: all cores)")
    t.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: auto)")
    t.add_argument("--amp", choices=["auto", "bf16", "fp16", "off"], help="mixed precision")
    t.add_argument("--compile", action="store_true", help="torch.compile the model")
    t.add_argument("--no-channels-last", action="store_true")
    t.add_argument("--no-ema", action="store_true", help="evaluate/save the raw weights, not their EMA")
    t.add_argument("--log-steps", action="store_true", help="write steps.csv: the loss of every optimiser step")
    t.add_argument("--deterministic", action="store_true",
                   help="torch.use_deterministic_algorithms (reproducible, slower)")
    t.add_argument("--sync-bn", action="store_true",
                   help="under torchrun: BatchNorm statistics over the global batch (SyncBatchNorm)")
    t.add_argument("--dist-timeout", type=float, metavar="MINUTES",
                   help="under torchrun: fail a collective that waits longer than this (default 30)")
    t.set_defaults(func=_train)

    e = sub.add_parser("eval", help="top-1/top-5, per-class accuracy and confusion matrix of weights on data")
    e.add_argument("--weights", required=True)
    e.add_argument("--data", default="digits", help="'digits' (its val split), DIR/val or DIR/<class>/*")
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--workers", type=int)
    e.add_argument("--device", default="auto")
    e.add_argument("--confusion", metavar="PNG", help="write the confusion matrix as a PNG")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=_eval)

    p = sub.add_parser("predict", help="top-k classes of images")
    p.add_argument("images", nargs="+")
    p.add_argument("--weights", required=True)
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_predict)
