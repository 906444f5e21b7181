"""Sub-commands `list`, `profile`, `scale` and `table`."""

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

    p = profile_model(args.name, args.resolution, memory=not args.no_memory, timing=not args.no_latency,
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


def cmd_scale(args: argparse.Namespace) -> int:
    from effnet.profile.study import compound_study
    from effnet.registry import get_spec

    rows = compound_study(get_spec(args.base), _phis(args), args.alpha, args.beta, args.gamma)
    if args.plot:
        from effnet.viz import plot_compound_study

        plot_compound_study(rows, args.plot, title=f"compound scaling of {args.base}")
    if args.json:
        print(json.dumps([r.to_dict() for r in rows]))
        return 0
    constraint = args.alpha * args.beta**2 * args.gamma**2
    print(f"compound scaling of {args.base}: alpha={args.alpha} beta={args.beta} gamma={args.gamma} "
          f"(alpha*beta^2*gamma^2 = {constraint:.3f})")
    _print_table(
        ["phi", "depth", "width", "resolution", "params", "FLOPs", "FLOPs ratio", "predicted"],
        [[f"{r.phi:g}", f"{r.depth:.3f}", f"{r.width:.3f}", str(r.resolution), _fmt_params(r.params),
          _fmt_flops(r.flops), f"{r.flops_ratio:.2f}x", f"{r.flops_ratio_predicted:.2f}x"] for r in rows],
    )
    return 0


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

    p = sub.add_parser("profile", help="parameters, FLOPs, activation memory and CPU latency of a model")
    p.add_argument("name")
    p.add_argument("--resolution", type=int, default=None, help="input size (default: the model's own)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--runs", type=int, default=10, help="timed runs for the latency median")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for the latency measurement")
    p.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    p.add_argument("--no-memory", action="store_true", help="skip the activation-memory measurement")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(func=cmd_profile)

    from effnet.scaling import ALPHA, BETA, GAMMA

    p = sub.add_parser("scale", help="compound-scale a base model for one or more phi")
    p.add_argument("--base", default="efficientnet_b0")
    p.add_argument("--phi", type=float, nargs="+", help="one or more compound coefficients (any real)")
    p.add_argument("--phi-range", type=float, nargs=3, metavar=("START", "STOP", "STEP"))
    p.add_argument("--alpha", type=float, default=ALPHA, help="depth base (default 1.2)")
    p.add_argument("--beta", type=float, default=BETA, help="width base (default 1.1)")
    p.add_argument("--gamma", type=float, default=GAMMA, help="resolution base (default 1.15)")
    p.add_argument("--json", action="store_true", help="a JSON list of objects")
    p.add_argument("--plot", metavar="PNG", help="also draw measured vs predicted FLOPs growth to this file")
    p.set_defaults(func=cmd_scale)

    p = sub.add_parser("table", help="the paper's Table 2 beside what effnet measures")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_table)
