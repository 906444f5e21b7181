"""Sub-commands `list`, `profile`, `scale` (with its actions: `scale grid`) and `table`."""

from __future__ import annotations

import argparse
import json


def _fmt_params(n: int) -> str:
    return f"{n / 1e6:.2f}M"


def _fmt_flops(n: int) -> str:
    return f"{n / 1e9:.3f}G"


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))))


def cmd_list(args: argparse.Namespace) -> int:
    import torch

    from effnet.model import build
    from effnet.profile import count_flops, count_params
    from effnet.registry import get_spec, list_models

    names = list_models(args.pattern)
    if not names:
        raise ValueError(f"no model matches {args.pattern!r}; run `effnet list` to see all names")
    rows = []
    for name in names:
        spec = get_spec(name)
        with torch.device("meta"):
            params = count_params(build(spec))
        rows.append([name, str(spec.resolution), _fmt_params(params), _fmt_flops(count_flops(spec))])
    _print_table(["model", "resolution", "params", "FLOPs (MACs)"], rows)
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from effnet.profile import profile_model
    from effnet.specs.base import ModelSpec

    if (args.name is None) == (args.spec is None):
        raise ValueError("give a model name or --spec FILE (a saved spec, e.g. a search's best.yaml), not both")
    for on, off in (("latency", "no_latency"), ("memory", "no_memory")):
        if getattr(args, on) and getattr(args, off):
            raise ValueError(f"--{on} and --{off.replace('_', '-')} contradict each other; give one of them")
    model = args.name if args.spec is None else ModelSpec.load(args.spec)
    # Counts are instant (meta device); the real network is built and run only for --latency/--memory.
    p = profile_model(model, args.resolution, memory=args.memory, timing=args.latency,
                      batch=args.batch, runs=args.runs, threads=args.threads)
    if args.json:
        print(json.dumps(p.to_dict()))
        return 0
    rows = [["model", p.model], ["resolution", str(p.resolution)], ["params", f"{p.params:,}"],
            ["FLOPs (multiply-adds)", f"{p.flops:,} ({_fmt_flops(p.flops)})"]]
    if p.activation_bytes is not None:
        rows.append([f"activation memory (train, batch {p.batch})", f"{p.activation_bytes / 2**20:.1f} MiB"])
    if p.latency_ms is not None:
        rows.append([f"CPU latency (batch {p.batch}, {p.threads} threads)", f"{p.latency_ms:.1f} ms"])
    _print_table(["", ""], rows)
    return 0


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
    from effnet.profile.study import scale_study
    from effnet.scaling import get_strategy

    strategy = get_strategy(args.strategy or "compound")
    coefficients = _coefficients(args, strategy.name)
    rows = scale_study(base_spec(args.base), _phis(args), strategy.name, **coefficients)
    if args.plot:
        from effnet.viz import plot_compound_study

        plot_compound_study(rows, args.plot, title=f"{strategy.name} scaling of {args.base}")
    if args.json:
        print(json.dumps([r.to_dict() for r in rows]))
        return 0
    print(f"{strategy.name} scaling of {args.base}: {strategy.describe(**coefficients)} [{strategy.source}]")
    _print_table(
        ["phi", "depth", "width", "resolution", "params", "FLOPs", "FLOPs ratio", "predicted"],
        [[f"{r.phi:g}", f"{r.depth:.3f}", f"{r.width:.3f}", str(r.resolution), _fmt_params(r.params),
          _fmt_flops(r.flops), f"{r.flops_ratio:.2f}x", f"{r.flops_ratio_predicted:.2f}x"] for r in rows],
    )
    return 0


def _coefficient_list(points: tuple[tuple[float, float, float], ...]) -> str:
    return " ".join(f"({a:g},{b:g},{g:g})" for a, b, g in points)


def cmd_scale_grid(args: argparse.Namespace) -> int:
    """`effnet scale grid`: the (alpha, beta, gamma) candidates with measured FLOPs."""
    from effnet.lab.budget import base_spec
    from effnet.profile.study import measure_grid
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
    _print_table(
        ["alpha", "beta", "gamma", "a*b^2*g^2", "predicted", "measured", "FLOPs", "params", "res", "blocks",
         "same network as"],
        [[f"{r.alpha:g}", f"{r.beta:g}", f"{r.gamma:g}", f"{r.product:.3f}", f"{r.flops_ratio_predicted:.3f}x",
          f"{r.flops_ratio:.3f}x", _fmt_flops(r.flops), _fmt_params(r.params), str(r.resolution), str(r.blocks),
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


def cmd_table(args: argparse.Namespace) -> int:
    import torch

    from effnet.model import build
    from effnet.profile import count_flops, count_params
    from effnet.registry import get_spec
    from effnet.specs.paper import PAPER_TABLE_2

    rows, out = [], []
    for r in PAPER_TABLE_2:
        spec = get_spec(r.model)
        with torch.device("meta"):
            params = count_params(build(spec))
        flops = count_flops(spec)
        out.append({"model": r.model, "resolution": r.resolution, "top1": r.top1,
                    "paper_params_m": r.params_m, "params": params,
                    "paper_flops_b": r.flops_b, "flops": flops, "source": r.source})
        rows.append([r.model, str(r.resolution), f"{r.top1:.1f}", f"{r.params_m:g}M", _fmt_params(params),
                     f"{r.flops_b:g}B", f"{flops / 1e9:.2f}B"])
    if args.json:
        print(json.dumps(out))
        return 0
    _print_table(["model", "res", "top-1 (paper)", "params (paper)", "params (effnet)",
                  "FLOPs (paper)", "FLOPs (effnet)"], rows)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list", help="model names with resolution, params and FLOPs")
    p.add_argument("pattern", nargs="?", default=None, help="substring or glob filter, e.g. 'efficientnetv2*'")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("profile", help="parameters and FLOPs of a model at once (meta device); activation "
                                       "memory and latency with --memory / --latency")
    p.add_argument("name", nargs="?", default=None, help="registered model (or give --spec)")
    p.add_argument("--spec", metavar="FILE", default=None, help="a spec file (YAML/JSON) instead of a name")
    p.add_argument("--resolution", type=int, default=None, help="input size (default: the model's own)")
    p.add_argument("--batch", type=int, default=1, help="batch of the latency and memory measurements")
    p.add_argument("--latency", action="store_true",
                   help="also build the real network and measure its inference latency (median of --runs)")
    p.add_argument("--memory", action="store_true",
                   help="also build the real network and measure the activation memory of a training forward")
    p.add_argument("--runs", type=int, default=10, help="timed runs for the latency median")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for the latency measurement")
    # Kept so that scripts written when latency and memory were measured by default still run.
    p.add_argument("--no-latency", action="store_true", help="no latency measurement (the default now)")
    p.add_argument("--no-memory", action="store_true", help="no activation-memory measurement (the default now)")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(func=cmd_profile)

    _register_scale(sub)

    p = sub.add_parser("table", help="the paper's Table 2 beside what effnet measures")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_table)


def _register_scale(sub: argparse._SubParsersAction) -> None:
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
    p.add_argument("--phi-range", type=float, nargs=3, metavar=("START", "STOP", "STEP"))
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


def _register_scale_lab(actions: argparse._SubParsersAction) -> None:
    """`scale search`, `scale study` and `scale fit`: the scaling lab (effnet.lab), which trains."""
    from effnet.lab.cli import register

    register(actions)


#: Actions under `effnet scale`, each a function adding its sub-parser(s).
SCALE_ACTIONS = (_register_scale_grid, _register_scale_lab)
