"""Sub-commands `list`, `profile` and `table`: counts and measurements of registered models."""

from __future__ import annotations

import argparse
import json

from effnet.commands.common import fmt_flops, fmt_params, print_table


def cmd_list(args: argparse.Namespace) -> int:
    # Stored counts (effnet.profile.counts): listing needs no torch and no network build.
    from effnet.profile.counts import counts_of
    from effnet.registry import list_models

    names = list_models(args.pattern)
    if not names:
        raise ValueError(f"no model matches {args.pattern!r}; run `effnet list` to see all names")
    rows = []
    for name in names:
        c = counts_of(name)
        rows.append([name, str(c.resolution), fmt_params(c.params), fmt_flops(c.flops)])
    print_table(["model", "resolution", "params", "FLOPs (MACs)"], rows)
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from effnet.profile import profile_model
    from effnet.specs.base import ModelSpec

    if (args.name is None) == (args.spec is None):
        raise ValueError("give a model name or --spec FILE (a saved spec, e.g. a search's best.yaml), not both")
    for on, off in (("latency", "no_latency"), ("memory", "no_memory")):
        if getattr(args, on) and getattr(args, off):
            raise ValueError(f"--{on} and --{off.replace('_', '-')} contradict each other; give one of them")
    for option, value, least in (("--batch", args.batch, 1), ("--runs", args.runs, 1), ("--threads", args.threads, 1),
                                 ("--resolution", args.resolution, 32)):
        if value is not None and value < least:
            raise ValueError(f"{option} {value}: expected at least {least}")
    model = args.name if args.spec is None else ModelSpec.load(args.spec)
    if args.memory or args.latency:  # these run the real network: refuse a size that cannot fit
        from effnet.hostmem import check_memory
        from effnet.registry import get_spec
        from effnet.scaling.limits import activation_bytes

        spec = model if isinstance(model, ModelSpec) else get_spec(model)
        res = args.resolution or spec.resolution
        check_memory(activation_bytes(spec, res, args.batch, training=args.memory),
                     f"measuring at {res} px, batch {args.batch},", "pass a smaller --resolution or --batch")
    # Counts are instant (meta device); the real network is built and run only for --latency/--memory.
    p = profile_model(model, args.resolution, memory=args.memory, timing=args.latency,
                      batch=args.batch, runs=args.runs, threads=args.threads)
    if args.json:
        print(json.dumps(p.to_dict()))
        return 0
    rows = [["model", p.model], ["resolution", str(p.resolution)], ["params", f"{p.params:,}"],
            ["FLOPs (multiply-adds)", f"{p.flops:,} ({fmt_flops(p.flops)})"]]
    if p.activation_bytes is not None:
        rows.append([f"activation memory (train, batch {p.batch})", f"{p.activation_bytes / 2**20:.1f} MiB"])
    if p.latency_ms is not None:
        rows.append([f"CPU latency (batch {p.batch}, {p.threads} threads)", f"{p.latency_ms:.1f} ms"])
    print_table(["", ""], rows)
    return 0


def cmd_table(args: argparse.Namespace) -> int:
    from effnet.profile.counts import counts_of
    from effnet.specs.paper import PAPER_TABLE_2

    rows, out = [], []
    for r in PAPER_TABLE_2:
        c = counts_of(r.model)  # stored counts at the model's own resolution
        params, flops = c.params, c.flops
        out.append({"model": r.model, "resolution": r.resolution, "top1": r.top1,
                    "paper_params_m": r.params_m, "params": params,
                    "paper_flops_b": r.flops_b, "flops": flops, "source": r.source})
        rows.append([r.model, str(r.resolution), f"{r.top1:.1f}", f"{r.params_m:g}M", fmt_params(params),
                     f"{r.flops_b:g}B", f"{flops / 1e9:.2f}B"])
    if args.json:
        print(json.dumps(out))
        return 0
    print_table(["model", "res", "top-1 (paper)", "params (paper)", "params (effnet)",
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

    p = sub.add_parser("table", help="the paper's Table 2 beside what effnet measures")
    p.add_argument("--json", action="store_true", help="a JSON list of objects")
    p.set_defaults(func=cmd_table)
