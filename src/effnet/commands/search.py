"""Sub-command `search`: the architecture search (:func:`effnet.search.run`), a thin layer."""

from __future__ import annotations

import argparse
import json

from effnet.commands.common import check_device, check_out_folder, check_positive


def cmd_search(args: argparse.Namespace) -> int:
    from effnet.search.run import run
    from effnet.search.space import load_space

    # Refused before a study file is created or anything trains.
    check_device(args.device)
    check_out_folder(args.out)
    check_positive("--train-subset", args.train_subset)
    space = load_space(args.space)  # refused here, before anything trains
    if not args.json:
        print(space.describe(), flush=True)  # the space's size, before the search starts
    overrides = {k: v for k, v in (("train_subset", args.train_subset), ("batch_size", args.batch_size),
                                   ("seed", args.train_seed)) if v is not None}
    rep = run(space, data=args.data, trials=args.trials, epochs=args.epochs, image_size=args.image_size,
              reward=args.reward, storage=args.storage, study=args.study, sampler=args.sampler, prune=args.prune,
              workers=args.workers, out=args.out, target_flops=args.target_flops,
              target_latency_ms=args.target_latency_ms, step_batch=args.step_batch, step_steps=args.step_steps,
              step_threads=args.step_threads, device=args.device, seed=args.seed, recipe=args.recipe,
              progress=not args.json, validate=args.validate, validate_epochs=args.validate_epochs, **overrides)
    if args.json:
        print(json.dumps(rep.to_dict()))
        return 0
    from effnet.search.run import format_table

    print(format_table(rep))
    print(f"files: {', '.join(f'{k} {v}' for k, v in sorted(rep.files.items()))}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from effnet.search.reward import B0_TARGET_FLOPS
    from effnet.search.run import REWARDS, SAMPLERS

    p = sub.add_parser("search", help="architecture search: EfficientNetV2's training-aware reward or "
                                      "EfficientNet-B0's FLOPs-aware one, trained on your data")
    p.add_argument("--space", required=True, help="v2-s, v2-b0, b0 or a space YAML file")
    p.add_argument("--data", default="digits", help="'digits' or an image folder")
    p.add_argument("--trials", type=int, required=True, help="finished trials the study should reach")
    p.add_argument("--epochs", type=int, default=4,
                   help="proxy training epochs per candidate (default 4; fewer cannot show whether a trial converged)")
    p.add_argument("--image-size", type=int, default=None,
                   help="proxy image size (default 64 on digits, else the base's training size)")
    p.add_argument("--validate", type=int, default=0, metavar="K",
                   help="retrain K finished candidates (the best half by reward and random others) for "
                        "--validate-epochs and report the Kendall tau between the proxy's ranking and the longer one")
    p.add_argument("--validate-epochs", type=int, default=None,
                   help="epochs of the validation retraining (default 3x --epochs)")
    p.add_argument("--reward", choices=REWARDS, default="v2",
                   help="v2: A*S^-0.07*P^-0.05; v1/v1-hard: MnasNet's ACC*(cost/T)^w; pareto: A, S, P front")
    p.add_argument("--target-flops", type=float, default=B0_TARGET_FLOPS, help="v1's T in FLOPs (default 400M)")
    p.add_argument("--target-latency-ms", type=float, default=None,
                   help="v1 on measured inference latency instead, with this target T")
    p.add_argument("--storage", default=None, help="Optuna storage URL (default sqlite:///OUT/study.db)")
    p.add_argument("--study", default=None, help="study name (default arch-SPACE-REWARD)")
    p.add_argument("--sampler", choices=SAMPLERS, default="tpe",
                   help="how candidates are drawn: Optuna's tpe (default), random, or nsga2 (multi-objective)")
    p.add_argument("--seed", type=int, default=None, help="seed of the sampler")
    p.add_argument("--prune", action="store_true", help="successive halving on top-1 after each epoch")
    p.add_argument("--workers", type=int, default=1, help="worker processes on this machine")
    p.add_argument("--out", default="arch_search", help="folder for best.yaml, table.txt, results.json, search.png")
    p.add_argument("--recipe", default=None, help="training recipe for every candidate")
    p.add_argument("--train-subset", type=int, default=None, help="train on the first N images only")
    p.add_argument("--batch-size", type=int, default=None, help="training batch size")
    p.add_argument("--train-seed", type=int, default=None, help="training seed")
    p.add_argument("--step-batch", type=int, default=16, help="batch of the step-time measurement S")
    p.add_argument("--step-steps", type=int, default=5, help="timed training steps for S's median")
    p.add_argument("--step-threads", type=int, default=1, help="CPU threads while measuring S")
    p.add_argument("--device", default="auto", help="device S is measured on (auto: cuda if present)")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(func=cmd_search)
