"""Side-by-side speed and memory: effnet vs torchvision vs timm, in one process and one run.

    bash benchmarks/run.sh                     # defaults: B0 @ 224, B3 @ 192, V2-S @ 160 px
    /tmp/peers/bin/python benchmarks/bench.py --full --out results.json

For each model, the three libraries' networks are built side by side and every measurement is
interleaved across them (rounds x libraries, the library order rotating each round), so load
from other processes and clock changes fall on all three alike. Reported (all lower is better
except img/s):

- latency_b1_ms: batch 1, ``eval()`` + ``torch.inference_mode``, median over ``--iters``
  timed calls after ``--warmup`` untimed ones.
- throughput_bN: batch N (``--batches``), same protocol; reported as ms per batch and img/s.
- train_bN_ms: one training step at batch ``--train-batch``: forward, cross-entropy on fixed
  random labels, backward, SGD (momentum 0.9) step, ``zero_grad(set_to_none=True)``; median.
- saved_act_bN_mib: bytes of the distinct tensors autograd saves for backward during one
  training-mode forward (``torch.autograd.graph.saved_tensors_hooks``, deduplicated by
  storage, parameters excluded). Deterministic and allocator-independent: it is the
  activation memory a training step must hold at the end of the forward pass.
- peak_bN_mib: peak memory of the first training step of a freshly built model above the
  memory held just before it (model, input, labels). On CPU: the rise of the process's peak
  RSS (VmHWM, reset through /proc/self/clear_refs) in a fresh subprocess per model, so no
  allocator cache from another model can hide it; it includes gradients, momentum buffers and
  oneDNN workspaces. On CUDA: ``torch.cuda.max_memory_allocated`` minus the allocation
  before the step (caching-allocator reserve excluded).

On CPU denormals are flushed to zero unless ``--keep-denormals`` (random-init SE gates produce
subnormals whose cost depends on the init, not the implementation: see README.md).

Ratios are effnet / peer of the cost (time, time per image, bytes): < 1 means effnet is
cheaper. Models run at ``--resolution`` (default: B0 224, B3 192, V2-S 160, reduced from the
B3 / V2-S evaluation sizes of 300 / 384 so the default run takes minutes on 2 cores; others 224);
``--full`` uses each model's evaluation resolution.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from peers import LIBS, build, peer_name, versions
from torch import nn

DEFAULT_MODELS = ("efficientnet_b0", "efficientnet_b3", "efficientnetv2_s")
#: Default input sides: B0 at its own 224; B3 (300) and V2-S (384) reduced so that the default
#: run takes minutes, not an hour, on 2 CPU cores. Other models default to 224.
DEFAULT_RESOLUTION = {"efficientnet_b0": 224, "efficientnet_b3": 192, "efficientnetv2_s": 160}
MIB = 2**20


# --- measurement primitives --------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(fns: dict[str, Callable[[], object]], *, warmup: int, iters: int, rounds: int,
                device: torch.device) -> dict[str, list[float]]:
    """Seconds per call of each fn, ``iters`` samples each, interleaved over ``rounds``."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    order = list(fns)
    per_round = [iters // rounds + (1 if r < iters % rounds else 0) for r in range(rounds)]
    for r, n in enumerate(per_round):
        for k in order[r % len(order):] + order[:r % len(order)]:  # rotate who goes first
            for _ in range(n):
                t0 = time.perf_counter()
                fns[k]()
                _sync(device)
                times[k].append(time.perf_counter() - t0)
    return times


def saved_activation_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes of distinct non-parameter tensors saved for backward by one forward pass."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in params:
            seen[ptr] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)  # kept alive until counted, so no saved storage is freed and reused
    total = sum(seen.values())
    del out
    return total


def _train_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def peak_step_bytes(lib: str, name: str, resolution: int, batch: int, device: torch.device,
                    channels_last: bool) -> int:
    """Peak memory of the first training step of a fresh model above what is held before it."""
    model, x, y = _setup(lib, name, resolution, batch, device, channels_last)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        _train_step(model, opt, x, y)
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak-RSS high-water mark (Linux >= 4.0)
    before = _rss_kib("VmRSS")
    _train_step(model, opt, x, y)
    return (_rss_kib("VmHWM") - before) * 1024


def _peak_in_subprocess(args: argparse.Namespace, lib: str, name: str, resolution: int) -> int | None:
    cmd = [sys.executable, __file__, "--peak-worker", lib, name, str(resolution), str(args.train_batch),
           "--threads", str(args.threads)] + (["--channels-last"] if args.channels_last_now else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"  peak-memory worker failed for {lib} {name}: {proc.stderr.strip().splitlines()[-1:]}")
        return None
    return int(proc.stdout.strip().splitlines()[-1])


# --- one model, three libraries ----------------------------------------------------------------
def _setup(lib: str, name: str, resolution: int, batch: int, device: torch.device,
           channels_last: bool) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = build(lib, name, speed=True).to(device)
    x = torch.randn(batch, 3, resolution, resolution, device=device)  # (B, C, H, W)
    y = torch.randint(0, 1000, (batch,), device=device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    return model, x, y


def bench_model(name: str, resolution: int, args: argparse.Namespace, device: torch.device,
                variant: str) -> list[dict[str, object]]:
    channels_last, compiled = "channels_last" in variant, "compile" in variant
    libs = [lib for lib in LIBS if lib in args.libs and peer_name(lib, name, speed=True)]
    models = {lib: _setup(lib, name, resolution, 1, device, channels_last)[0] for lib in libs}
    params = {lib: sum(p.numel() for p in m.parameters() if p.requires_grad) for lib, m in models.items()}
    if len(set(params.values())) > 1:
        print(f"  WARNING {name}: parameter counts differ across libraries: {params}")
    runners = {lib: torch.compile(m) if compiled else m for lib, m in models.items()}
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    metrics: dict[str, dict[str, float]] = {lib: {} for lib in libs}

    def record(key: str, times: dict[str, list[float]], batch: int) -> None:
        for lib, ts in times.items():
            med = statistics.median(ts)
            metrics[lib][f"{key}_ms"] = med * 1e3
            if key.startswith("throughput"):
                metrics[lib][f"{key}_img_s"] = batch / med
            metrics[lib][f"{key}_ms_min"] = min(ts) * 1e3

    # inference: latency at batch 1, throughput at the larger batches
    for m in models.values():
        m.eval()
    for batch in (1, *args.batches):
        x = torch.randn(batch, 3, resolution, resolution, device=device).contiguous(memory_format=fmt)
        iters = args.iters if batch == 1 else max(args.rounds, args.iters * 2 // batch)
        warmup = args.warmup if batch == 1 else 1  # a few big batches warm up as much as many small ones
        with torch.inference_mode():
            times = interleaved({lib: (lambda r=r, x=x: r(x)) for lib, r in runners.items()},
                                warmup=warmup, iters=iters, rounds=args.rounds, device=device)
        record("latency_b1" if batch == 1 else f"throughput_b{batch}", times, batch)

    # training step
    tb = args.train_batch
    x = torch.randn(tb, 3, resolution, resolution, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 1000, (tb,), device=device)
    steps = {}
    for lib, m in models.items():
        m.train()
        opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
        steps[lib] = lambda r=runners[lib], o=opt: _train_step(r, o, x, y)
    times = interleaved(steps, warmup=1, iters=args.train_iters,
                        rounds=min(args.rounds, args.train_iters), device=device)
    record(f"train_b{tb}", times, tb)

    # memory
    for lib, m in models.items():
        metrics[lib][f"saved_act_b{tb}_mib"] = saved_activation_bytes(m, x) / MIB
    del models, runners, steps
    if not args.no_peak and not compiled:
        for lib in libs:
            if device.type == "cuda":
                peak = peak_step_bytes(lib, name, resolution, tb, device, channels_last)
            else:
                args.channels_last_now = channels_last
                peak = _peak_in_subprocess(args, lib, name, resolution)
            if peak is not None:
                metrics[lib][f"peak_b{tb}_mib"] = peak / MIB

    return [{"model": name, "lib": lib, "lib_model": peer_name(lib, name, speed=True), "variant": variant,
             "resolution": resolution, "params": params[lib], "metrics": metrics[lib]} for lib in libs]


# --- report -------------------------------------------------------------------------------------
def table(results: list[dict[str, object]]) -> str:
    """One markdown table: rows (model, variant, metric), columns per library and ratios."""
    peers = [lib for lib in LIBS[1:] if any(r["lib"] == lib for r in results)]
    head = f"| {'model @ res':<24} | {'variant':<13} | {'metric':<24} | {'effnet':>9} | " + " | ".join(
        f"{p:>11}" for p in peers) + " | " + " | ".join(f"{'effnet/' + p:>18}" for p in peers) + " |"
    lines = [head, "|" + "|".join(":" + "-" * (len(c) - 1) if i < 3 else "-" * (len(c) - 1) + ":"
                                  for i, c in enumerate(head.split("|")[1:-1])) + "|"]
    keys: list[tuple[str, str, int]] = []
    for r in results:
        k = (r["model"], r["variant"], r["resolution"])
        if k not in keys:
            keys.append(k)
    for model, variant, res in keys:
        by_lib = {r["lib"]: r["metrics"] for r in results
                  if (r["model"], r["variant"], r["resolution"]) == (model, variant, res)}
        base = by_lib.get("effnet", {})
        for metric in [m for m in base if not m.endswith("_min") and not m.endswith("_img_s")]:
            label, cost = metric, metric
            if metric.startswith("throughput"):
                label = metric.replace("_ms", "_img_s")  # shown as img/s; ratio of time per image
            cells, ratios = [], []
            for p in peers:
                v = by_lib.get(p, {}).get(label)
                cells.append(f"{v:>11.1f}" if v is not None else f"{'-':>11}")
                c = by_lib.get(p, {}).get(cost)
                ratios.append(f"{base[cost] / c:>18.3f}" if c else f"{'-':>18}")
            lines.append(f"| {model + ' @ ' + str(res):<24} | {variant:<13} | {label:<24} | "
                         f"{base[label]:>9.1f} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    return "\n".join(lines)


def _cpu_name() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="effnet model names")
    ap.add_argument("--libs", nargs="+", default=list(LIBS), choices=LIBS)
    ap.add_argument("--resolution", type=int, default=None,
                    help="input side for every model (default: B0 224, B3 192, V2-S 160, others 224)")
    ap.add_argument("--full", action="store_true", help="each model's own evaluation resolution")
    ap.add_argument("--batches", nargs="+", type=int, default=[8, 32], help="throughput batch sizes")
    ap.add_argument("--train-batch", type=int, default=8)
    ap.add_argument("--iters", type=int, default=30, help="timed batch-1 calls (fewer for larger batches)")
    ap.add_argument("--train-iters", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3, help="interleaving rounds across libraries")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--variants", nargs="+", default=["eager"],
                    choices=["eager", "channels_last", "compile", "compile+channels_last"])
    ap.add_argument("--no-peak", action="store_true", help="skip the peak-memory measurement")
    ap.add_argument("--keep-denormals", action="store_true",
                    help="do not flush denormals to zero on CPU (see README: random-init artefact)")
    ap.add_argument("--out", default=None, help="write all results as JSON to this file")
    ap.add_argument("--peak-worker", nargs=4, metavar=("LIB", "MODEL", "RES", "BATCH"), help=argparse.SUPPRESS)
    ap.add_argument("--channels-last", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    # Randomly initialised networks can push SE gates to sigmoid(-large) ~ 1e-40: subnormal
    # floats that make x86 kernels several times slower, by an amount that depends on the
    # init scheme, not on the implementation. Trained weights do not do this, so by default
    # the CPU runs flush denormals to zero (the same for every library).
    flush = device.type == "cpu" and not args.keep_denormals
    torch.set_flush_denormal(flush)

    if args.peak_worker:  # child process of _peak_in_subprocess: print one integer
        lib, name, res, batch = args.peak_worker
        print(peak_step_bytes(lib, name, int(res), int(batch), device, args.channels_last))
        return 0

    import effnet

    meta = {"date": datetime.date.today().isoformat(), "versions": versions(), "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
            "cpu_count": os.cpu_count(), "threads": args.threads, "loadavg_start": os.getloadavg(),
            "flush_denormal": flush,
            "args": {k: v for k, v in vars(args).items() if k not in ("peak_worker", "channels_last")}}
    print(f"# {meta['date']}  {meta['device_name']}  threads={args.threads}  "
          f"load={meta['loadavg_start'][0]:.1f}  "
          + "  ".join(f"{k} {v}" for k, v in meta["versions"].items()))
    results: list[dict[str, object]] = []
    t_start = time.perf_counter()
    for variant in args.variants:
        for name in args.models:
            res = (effnet.get_spec(name).resolution if args.full
                   else args.resolution or DEFAULT_RESOLUTION.get(name, 224))
            t0 = time.perf_counter()
            results += bench_model(name, res, args, device, variant)
            print(f"  {name} @ {res} [{variant}] done in {time.perf_counter() - t0:.0f} s", flush=True)
    meta["wall_s"] = round(time.perf_counter() - t_start, 1)
    meta["loadavg_end"] = os.getloadavg()
    busy = max(meta["loadavg_start"][0], meta["loadavg_end"][0])
    if busy > (os.cpu_count() or 1) - args.threads + 0.5:
        print(f"\nNOTE: the machine was busy (1-min load average up to {busy:.1f} on {os.cpu_count()} "
              "cores): absolute times are inflated and noisy; the interleaved ratios are the robust part, "
              "and --threads 1 suffers least from oversubscription.")
    print()
    print(table(results))
    print("\nratios: effnet cost / peer cost (time, time per image, bytes); < 1 = effnet cheaper. "
          "img/s: higher is better.")
    if args.out:
        Path(args.out).write_text(json.dumps({"meta": meta, "results": results}, indent=2))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
