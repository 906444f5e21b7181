"""`effnet scale` and its actions: the pure table (`scale`), the coefficient grid (`scale grid`),
and the scaling lab's trained actions (`scale search | study | fit`, thin layers over
:mod:`effnet.lab`)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from effnet.commands.common import check_out_folder, check_positive, fmt_flops, fmt_params, print_table


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers such as 2,4, got {text!r}") from None


def _names(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def _training_options(p: argparse.ArgumentParser, out: str) -> None:
    """The options search and study share: data, budget, storage, workers."""
    # --base and --json may also come before the action (`effnet scale --base X search`): SUPPRESS
    # keeps the parent parser's value unless repeated here.
    p.add_argument("--base", default=argparse.SUPPRESS, help="registered model or spec file (default efficientnet_b0)")
    p.add_argument("--base-width", type=float, default=1.0,
                   help="shrink (or grow) the base's width first, e.g. 0.5 for a quick run on a CPU")
    p.add_argument("--base-depth", type=float, default=1.0, help="the same for the base's depth")
    p.add_argument("--data", default="digits", help="'digits' (default) or an image folder")
    p.add_argument("--epochs", type=int, default=4,
                   help="training epochs per candidate (default 4; fewer cannot show whether a trial converged)")
    p.add_argument("--image-size", type=int, help="the base's training size (default: 64 for digits, else "
                                                  "the base's resolution); candidates scale it with their resolution")
    p.add_argument("--validate", type=int, default=0, metavar="K",
                   help="retrain K candidates (the proxy's best half and random others) for --validate-epochs and "
                        "report the Kendall tau between the two rankings (default 0: off)")
    p.add_argument("--validate-epochs", type=int, default=None,
                   help="epochs of the validation retraining (default 3x --epochs)")
    p.add_argument("--recipe", help="training recipe name or YAML (default: digits for digits, else paper_v1)")
    p.add_argument("--batch-size", type=int, help="training batch size (default: the recipe's)")
    p.add_argument("--train-subset", type=int, help="train on the first N training images only")
    p.add_argument("--seed", type=int, help="training seed (default: the recipe's), the same for every candidate")
    p.add_argument("--storage", help="Optuna storage URL shared by all workers (default sqlite:///OUT/study.db); "
                                     "e.g. postgresql://user:pw@host/db for workers on several machines")
    p.add_argument("--study", help="study name (default from the base); the same name resumes")
    p.add_argument("--workers", type=int, default=1, help="worker processes on this machine (default 1)")
    p.add_argument("--out", default=out, help=f"folder for the table, JSON and plot (default {out})")
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print the results as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _check_training_options(args: argparse.Namespace) -> None:
    """What search and study can refuse before any training: the output folder and the counts."""
    check_out_folder(args.out)
    for option in ("train_subset", "batch_size", "epochs", "workers"):
        check_positive("--" + option.replace("_", "-"), getattr(args, option, None))


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in (("batch_size", args.batch_size), ("train_subset", args.train_subset),
                              ("seed", args.seed)) if v is not None}


def _base(args: argparse.Namespace) -> Any:
    """The base as named, or a spec scaled by --base-width/--base-depth first."""
    if args.base_width == 1.0 and args.base_depth == 1.0:
        return args.base
    from effnet.lab.budget import base_spec
    from effnet.scaling import scale

    return scale(base_spec(args.base), width=args.base_width, depth=args.base_depth)


def _quiet_optuna() -> None:
    import optuna

    # One line per trial from Optuna itself would interleave with effnet's own log and table.
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def _show(args: argparse.Namespace, rep: Any, table: str) -> int:
    """A lab report as JSON (``--json``) or as its table and the files written."""
    if args.json:
        print(json.dumps(rep.to_dict(), indent=2))
    else:
        print(table)
        print("files: " + ", ".join(rep.files.values()))
    return 0


def _lab_command(fn: Any) -> Any:
    """A handler that trains in a study (`scale search`, `scale study`): its options are refused
    before any training, Optuna's per-trial log is silenced, and Ctrl-C / SIGTERM (the running
    candidate is recorded as unfinished) ends with how to go on."""
    def run(args: argparse.Namespace) -> int:
        _check_training_options(args)
        _quiet_optuna()
        try:
            return fn(args)
        except KeyboardInterrupt as e:
            code = getattr(e, "exit_code", 130)
            print(f"effnet {args.command}: stopped. Finished candidates are kept in the study; run the same "
                  "command again to go on (the interrupted candidate is trained again).", file=sys.stderr)
            return code
    return run


@_lab_command
def cmd_scale_search(args: argparse.Namespace) -> int:
    from effnet.lab import search
    from effnet.lab.grid import format_table

    rep = search(_base(args), data=args.data, epochs=args.epochs, phi=args.search_phi, step=args.step,
                 tolerance=args.tolerance, image_size=args.image_size, storage=args.storage, study=args.study,
                 workers=args.workers, prune=args.prune, out=args.out, recipe=args.recipe,
                 progress=not args.no_progress, validate=args.validate, validate_epochs=args.validate_epochs,
                 **_overrides(args))
    return _show(args, rep, format_table(rep))


@_lab_command
def cmd_scale_study(args: argparse.Namespace) -> int:
    from effnet.lab import study
    from effnet.lab.compare import format_study

    rep = study(_base(args), data=args.data, flops=args.flops, strategies=args.strategies, epochs=args.epochs,
                image_size=args.image_size, storage=args.storage, study_name=args.study, workers=args.workers,
                out=args.out, recipe=args.recipe, progress=not args.no_progress, validate=args.validate,
                validate_epochs=args.validate_epochs, **_overrides(args))
    return _show(args, rep, format_study(rep))


def cmd_scale_fit(args: argparse.Namespace) -> int:
    import errno
    from pathlib import Path

    from effnet.files import check_output
    from effnet.lab import fit

    if args.save:
        # Checked before the search (a folder, an unwritable folder, the base spec file, an
        # existing file), and written after the result is printed, so a failed write never loses
        # the result.
        overwrite = getattr(args, "overwrite", None)
        check_output(args.save, inputs=[args.base] if Path(args.base).is_file() else [],
                     overwrite=overwrite is None or overwrite)
        if overwrite is None and Path(args.save).is_file():  # no --overwrite option here: never replace
            raise FileExistsError(errno.EEXIST, f"{args.save} already exists and scale fit does not replace files: "
                                  f"choose another --save path (or remove the file first)", args.save)
    r = fit(args.base, max_flops=args.max_flops, max_params=args.max_params, max_latency=args.max_latency,
            strategy=args.fit_strategy, step=args.step, device=args.device, batch=args.batch)
    if args.json:
        print(json.dumps(r.to_dict(), indent=2), flush=True)
        if args.save and r.spec is not None:
            r.spec.save(args.save)
        return 0
    head = f"{'phi':>6}  {'depth':>5} {'width':>5} {'res':>4}  {'params':>8}  {'FLOPs':>8}  {'latency':>9}  fits"
    print(f"{r.base}, strategy {r.strategy}, budget {r.budget}: candidates measured")
    print(head)
    print("-" * len(head))
    for c in r.tried:
        lat = f"{c.latency_ms:7.2f}ms" if c.latency_ms is not None else "        -"
        mark = "  <- largest that fits" if r.best is not None and c.phi == r.best.phi else ""
        print(f"{c.phi:6.2f}  {c.depth:5.2f} {c.width:5.2f} {c.resolution:4d}  {c.params / 1e6:7.2f}M  "
              f"{c.flops / 1e9:7.3f}G  {lat}  {'yes' if c.fits else 'no'}{mark}")
    if r.best is not None:
        print(f"largest that fits: phi={r.best.phi:g} ({r.best.name}, {r.best.resolution} px)")
    if r.capped:
        print(f"note: {r.capped}")
    elif r.next_larger is not None:
        print(f"next larger: phi={r.next_larger.phi:g} is over the budget")
    if args.save and r.spec is not None:
        sys.stdout.flush()
        r.spec.save(args.save)
        print(f"spec written to {args.save} (train it: effnet train --spec {args.save})")
    elif args.save:
        print(f"no spec written to {args.save}: no candidate fits the budget")
    return 0


def _register_scale_lab(scale_sub: Any) -> None:
    """`scale search`, `scale study` and `scale fit`: the scaling lab (effnet.lab), which trains."""
    """Add `search`, `study` and `fit` under `effnet scale`."""
    p = scale_sub.add_parser("search", help="find alpha, beta, gamma by training the grid (EfficientNet step 1)",
                             description="Train every grid point (effnet scale grid) under one budget in a "
                                         "resumable Optuna study and report accuracy against FLOPs.")
    _training_options(p, "scale_search")
    p.add_argument("--phi", dest="search_phi", metavar="PHI", type=float, default=1.0,
                   help="scale the candidates by this phi (default 1)")
    p.add_argument("--step", type=float, default=0.05, help="grid step (default 0.05)")
    p.add_argument("--tolerance", type=float, default=0.1, help="|alpha*beta^2*gamma^2 - 2| limit (default 0.1)")
    p.add_argument("--prune", action="store_true", help="stop weak candidates early (successive halving)")
    p.set_defaults(func=cmd_scale_search, command="scale search")

    p = scale_sub.add_parser("study", help="compare scaling strategies at matched FLOPs, trained on your data",
                             description="Scale the base by each strategy to each FLOPs multiple (within 5%), "
                                         "train them and the baseline, plot accuracy against FLOPs.")
    _training_options(p, "scale_study")
    p.add_argument("--flops", type=_floats, default=(2.0,), help="FLOPs multiples, comma-separated (default 2)")
    p.add_argument("--strategies", type=_names, default=("width", "depth", "resolution", "compound"),
                   help="comma-separated (default width,depth,resolution,compound)")
    p.set_defaults(func=cmd_scale_study, command="scale study")

    p = scale_sub.add_parser("fit", help="the largest scaled model within a FLOPs, params or latency budget")
    p.add_argument("--base", default=argparse.SUPPRESS, help="registered model or spec file (default efficientnet_b0)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--max-flops", help="multiply-adds, e.g. 2G")
    g.add_argument("--max-params", help="parameters, e.g. 10M")
    g.add_argument("--max-latency", help="inference latency of a batch, e.g. 15ms")
    p.add_argument("--strategy", dest="fit_strategy", default="compound", help="scaling strategy (default compound)")
    p.add_argument("--step", type=float, default=0.05, help="phi resolution of the candidates (default 0.05)")
    p.add_argument("--device", default="cpu", help="device for --max-latency (cpu, cuda)")
    p.add_argument("--batch", type=int, default=1, help="batch for --max-latency (default 1)")
    p.add_argument("--save", help="write the chosen spec to this YAML/JSON file")
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print the result as JSON")
    p.set_defaults(func=cmd_scale_fit, command="scale fit")


def _phis(args: argparse.Namespace) -> list[float]:
    phis = list(args.phi or [])
    if args.phi_range:
        start, stop, step = args.phi_range
        if step <= 0:
            raise ValueError(f"--phi-range: step must be positive, got {step}")
        n = int(round((stop - start) / step))
        phis += [round(start + i * step, 10) for i in range(n + 1)]
    if not phis:
        raise ValueError("give at least one --phi value (or --phi-range START STOP STEP)")
    return phis


#: Coefficient options of `effnet scale`: option dest -> (coefficient name, strategies taking it).
#: Defaults are None so that an option given to a strategy without that coefficient is refused
#: rather than silently ignored; unset coefficients take the strategy's own defaults.
_COEFFICIENT_OPTIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "alpha": ("alpha", ("compound", "v2")),
    "beta": ("beta", ("compound", "v2")),
    "gamma": ("gamma", ("compound", "v2")),
    "fast_alpha": ("alpha", ("fast",)),
    "width_floor": ("width_floor", ("tiny",)),
}


def _option(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _coefficients(args: argparse.Namespace, strategy: str) -> dict[str, float]:
    """The strategy coefficients given on the command line (the rest keep their defaults)."""
    out = {}
    for dest, (name, strategies) in _COEFFICIENT_OPTIONS.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        if strategy not in strategies:
            own = [_option(d) for d, (_, ss) in _COEFFICIENT_OPTIONS.items() if strategy in ss]
            raise ValueError(f"{_option(dest)} is a coefficient of strategy {'/'.join(strategies)}, not of "
                             f"{strategy!r} (its options: {', '.join(own) or 'none'})")
        out[name] = value
    return out


def cmd_scale(args: argparse.Namespace) -> int:
    """The plain table: ``base`` scaled by one strategy for each phi."""
    from effnet.lab.budget import base_spec
    from effnet.profile.sweep import scale_sweep
    from effnet.scaling import get_strategy

    strategy = get_strategy(args.strategy or "compound")
    coefficients = _coefficients(args, strategy.name)
    rows = scale_sweep(base_spec(args.base), _phis(args), strategy.name, **coefficients)
    if args.plot:
        from effnet.viz import plot_scale_sweep

        plot_scale_sweep(rows, args.plot, title=f"{strategy.name} scaling of {args.base}")
    if args.json:
        print(json.dumps([r.to_dict() for r in rows]))
        return 0
    print(f"{strategy.name} scaling of {args.base}: {strategy.describe(**coefficients)} [{strategy.source}]")
    print_table(
        ["phi", "depth", "width", "resolution", "params", "FLOPs", "FLOPs ratio", "predicted"],
        [[f"{r.phi:g}", f"{r.depth:.3f}", f"{r.width:.3f}", str(r.resolution), fmt_params(r.params),
          fmt_flops(r.flops), f"{r.flops_ratio:.2f}x", f"{r.flops_ratio_predicted:.2f}x"] for r in rows],
    )
    return 0


def _coefficient_list(points: tuple[tuple[float, float, float], ...]) -> str:
    return " ".join(f"({a:g},{b:g},{g:g})" for a, b, g in points)


def cmd_scale_grid(args: argparse.Namespace) -> int:
    """`effnet scale grid`: the (alpha, beta, gamma) candidates with measured FLOPs."""
    from effnet.lab.budget import base_spec
    from effnet.profile.sweep import measure_grid
    from effnet.scaling import grid_points

    _refuse_table_options(args, "grid")
    spec = base_spec(args.base)
    points = grid_points(phi=args.grid_phi, step=args.step, tolerance=args.tolerance)
    rows = measure_grid(spec, points, progress=True)
    if args.json:
        print(json.dumps({"base": spec.name, "phi": args.grid_phi, "step": args.step, "tolerance": args.tolerance,
                          "grid_points": len(points), "candidates": [r.to_dict() for r in rows]}))
        return 0
    print(f"grid for {spec.name} at phi={args.grid_phi:g}: {len(points)} (alpha, beta, gamma) >= 1 on step "
          f"{args.step:g} with |alpha*beta^2*gamma^2 - 2| <= {args.tolerance:g}; {len(rows)} distinct "
          f"network(s) after rounding")
    print_table(
        ["alpha", "beta", "gamma", "a*b^2*g^2", "predicted", "measured", "FLOPs", "params", "res", "blocks",
         "same network as"],
        [[f"{r.alpha:g}", f"{r.beta:g}", f"{r.gamma:g}", f"{r.product:.3f}", f"{r.flops_ratio_predicted:.3f}x",
          f"{r.flops_ratio:.3f}x", fmt_flops(r.flops), fmt_params(r.params), str(r.resolution), str(r.blocks),
          _coefficient_list(r.collapsed)] for r in rows],
    )
    return 0


def _refuse_table_options(args: argparse.Namespace, action: str) -> None:
    """Options of the plain `effnet scale` table given before an action's name do not apply to it."""
    given = [_option(d) for d in ("phi", "phi_range", "strategy", "plot", *_COEFFICIENT_OPTIONS)
             if getattr(args, d, None) is not None]
    if given:
        raise ValueError(f"{', '.join(given)}: option(s) of the plain `effnet scale` table, not of "
                         f"`effnet scale {action}`; write {action}'s options after {action!r} "
                         f"(`effnet scale {action} --help`)")


def register(sub: argparse._SubParsersAction) -> None:
    """`effnet scale` (the plain table) and its actions (`effnet scale grid`, ...): one small
    ``_register_scale_<action>`` function per action, listed in ``SCALE_ACTIONS``."""
    from effnet.scaling import ALPHA, BETA, GAMMA, STRATEGIES

    p = sub.add_parser("scale", help="scale a base model by a strategy for one or more phi; `scale grid` lists "
                                     "compound coefficient candidates")
    p.add_argument("--base", "--base-spec", default="efficientnet_b0",
                   help="registered model or spec file (YAML/JSON); --base-spec is the same option")
    p.add_argument("--strategy", default=None,
                   help=f"one of {', '.join(STRATEGIES)} (default compound); phi is the strategy's coefficient, "
                        f"2^phi its FLOPs multiple ((alpha*beta^2*gamma^2)^phi for compound and v2)")
    p.add_argument("--phi", type=float, nargs="+", help="one or more scaling coefficients (any real)")
    p.add_argument("--phi-range", type=float, nargs=3, metavar=("START", "STOP", "STEP"),
                   help="every phi from START to STOP in steps of STEP (both ends included)")
    p.add_argument("--alpha", type=float, default=None, help=f"compound/v2: depth base (default {ALPHA})")
    p.add_argument("--beta", type=float, default=None, help=f"compound/v2: width base (default {BETA})")
    p.add_argument("--gamma", type=float, default=None, help=f"compound/v2: resolution base (default {GAMMA})")
    p.add_argument("--fast-alpha", type=float, default=None,
                   help=f"fast: width share of the FLOPs growth (default {STRATEGIES['fast'].coefficients['alpha']})")
    p.add_argument("--width-floor", type=float, default=None,
                   help=f"tiny: smallest width multiple before depth and resolution shrink "
                        f"(default {STRATEGIES['tiny'].coefficients['width_floor']})")
    p.add_argument("--json", action="store_true", help="a JSON list of objects")
    p.add_argument("--plot", metavar="PNG", help="also draw measured vs predicted FLOPs growth to this file")
    p.set_defaults(func=cmd_scale)
    actions = p.add_subparsers(dest="action", required=False, metavar="ACTION")
    for register_action in SCALE_ACTIONS:
        register_action(actions)


def _register_scale_grid(actions: argparse._SubParsersAction) -> None:
    p = actions.add_parser(
        "grid", help="every (alpha, beta, gamma) >= 1 on a grid with alpha*beta^2*gamma^2 ~= 2, with the "
                     "predicted and measured FLOPs ratio of the scaled base (EfficientNet section 3.3)")
    # --base and --json mean the same before or after `grid`: SUPPRESS keeps the parent's value
    # when the option is not repeated here (a sub-parser default would overwrite it).
    p.add_argument("--base", default=argparse.SUPPRESS, help="base model (default efficientnet_b0)")
    p.add_argument("--phi", dest="grid_phi", metavar="PHI", type=float, default=1.0,
                   help="scale the base at this phi (> 0, default 1)")
    p.add_argument("--step", type=float, default=0.05, help="grid step of alpha, beta, gamma (default 0.05)")
    p.add_argument("--tolerance", type=float, default=0.1,
                   help="keep |alpha*beta^2*gamma^2 - 2| <= this (default 0.1)")
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="one JSON object")
    # Errors read `effnet scale grid: error: ...` (effnet.cli prints the command's name).
    p.set_defaults(func=cmd_scale_grid, command="scale grid")


#: Actions under `effnet scale`, each a function adding its sub-parser(s).
SCALE_ACTIONS = (_register_scale_grid, _register_scale_lab)
