"""`python -m effnet.bench.worker JOB_JSON`: one candidate's training steps, in a fresh process.

Started by :func:`run_worker` (below), one process per (model, library) and, when the
training steps are timed here, per round: the memory a previous network freed stays in a
process's heap, and it would both hide part of the next one's peak and hand it pages that need no
faulting in (on the CPU, a fresh process ran B0's training step up to 1.7x slower than the same
step in a process that had trained other networks first). Builds the candidate, measures its
first training step with :func:`effnet.bench.measure.peak_memory_bytes` (a compiled candidate:
the first after the step that compiles), then ``warmup`` untimed
and ``steps`` timed steps, and writes ``{"peak_bytes": N, "steady_peak_bytes": N, "times": [seconds,
...], "kernel": [seconds, ...], "faults": [count, ...]}`` on stdout (the one line the parent reads; this is a data channel,
not a report). ``kernel`` and ``faults`` are the process's system CPU time and minor page faults
during each timed step (``getrusage``, all threads): on the CPU, most of a step's system time is
the kernel faulting in and zeroing the memory the step asks for, which no library's arithmetic
shows and which moves with the host's memory state.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

try:
    import resource  # POSIX only: the system CPU time and page faults of each step
except ImportError:  # pragma: no cover - Windows
    resource = None  # type: ignore[assignment]

from effnet.bench.measure import MIB, peak_memory_bytes, resident_bytes, rotation, sync, train_step
from effnet.bench.peers import build_runner, compiled, use_keras_torch_backend
from effnet.hostmem import return_freed_memory

log = logging.getLogger(__name__)


def _cpu_counters() -> tuple[float, int] | None:
    """(system CPU seconds, minor page faults) of this process so far, all threads; None where
    ``getrusage`` does not exist (Windows)."""
    if resource is None:
        return None
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_stime, usage.ru_minflt


# --- the worker's side ------------------------------------------------------------------------
def measure(job: dict) -> dict[str, object]:
    """Peak bytes of the first training step of ``job``'s freshly built candidate, and the seconds
    of each of its next ``job["steps"]`` steps after ``job["warmup"]`` untimed ones. With
    ``job["compile"]`` the network runs under ``torch.compile`` and a step before all of that
    compiles it (with an optimiser of its own, so the measured step still creates the real one's
    state, as an eager first step does)."""
    torch.set_num_threads(int(job["threads"]))
    torch.set_flush_denormal(bool(job["flush_denormal"]))
    device = torch.device(job["device"])
    res, batch = int(job["resolution"]), int(job["batch"])
    runner = build_runner(job["lib"], job["variant"], job["model"], res, device)
    if job.get("compile"):
        runner = compiled(runner)
    runner.module.train()
    gen = torch.Generator().manual_seed(1)
    x = runner.prepare(torch.randn(batch, 3, res, res, generator=gen).to(device))  # (B, C, H, W)
    y = torch.randint(0, 1000, (batch,), generator=gen).to(device)
    params = [p for p in runner.module.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    dtype = getattr(torch, job["autocast"]) if job.get("autocast") else None

    def step(optimizer: torch.optim.Optimizer = opt) -> None:
        train_step(lambda t: runner.forward(t, True), optimizer, x, y, dtype)

    if job.get("compile"):
        # The compilation: its memory and time are the compiler's, not the step's. lr 0: the
        # weights stay as built; the throwaway optimiser's momentum goes with it.
        step(torch.optim.SGD(params, lr=0.0, momentum=0.9))
        gc.collect()
        return_freed_memory()  # or the next step's peak would reuse the first step's freed pages
    try:
        rss_before = resident_bytes()[0] if device.type == "cpu" else None
    except (OSError, RuntimeError):  # no /proc (not Linux): peak_memory_bytes says so below
        rss_before = None
    peak = peak_memory_bytes(step, device)
    for _ in range(int(job.get("warmup", 0))):
        step()
    times, kernel, faults = [], [], []
    for _ in range(int(job.get("steps", 0))):
        c0, t0 = _cpu_counters(), time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t0)
        c1 = _cpu_counters()
        if c0 is not None and c1 is not None:
            kernel.append(c1[0] - c0[0])
            faults.append(c1[1] - c0[1])
    # CPU: the peak over every step (the first one's reset it), above what the process held before
    # them: what a training run sees once freed blocks are reused, cached or fragmented.
    steady = resident_bytes()[1] - rss_before if rss_before is not None and times else None
    return {"peak_bytes": peak, "steady_peak_bytes": steady, "times": times, "kernel": kernel, "faults": faults}


# --- the parent's side: start workers and read their line --------------------------------------
def train_in_workers(name: str, cfg: Any, labels: list[str], entries: dict[str, dict[str, Any]],
                     bar: Any) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Seconds per training step of each candidate (``cfg``: the run's :class:`effnet.bench.runner.Config`,
    not imported here, which would make the two modules import each other), ``cfg.train_iters`` each, every round in a fresh
    worker process per candidate (:func:`rotation` order); the peak is the median of the workers'
    first-step peaks. Returns the seconds of every timed step and the system CPU seconds of each
    (where ``getrusage`` exists), per candidate. A candidate whose worker fails keeps a note and no
    training figures."""
    rounds = max(1, min(cfg.rounds, cfg.train_iters))
    per_round = [cfg.train_iters // rounds + (1 if r < cfg.train_iters % rounds else 0) for r in range(rounds)]
    times: dict[str, list[float]] = {lb: [] for lb in labels}
    kernel: dict[str, list[float]] = {lb: [] for lb in labels}
    peaks: dict[str, list[int]] = {lb: [] for lb in labels}
    steady: dict[str, list[int]] = {lb: [] for lb in labels}
    failed: set[str] = set()
    for order, n in zip(rotation(labels, rounds), per_round):
        for label in order:
            if label in failed:
                continue
            entry = entries[label]
            try:
                out = run_worker(entry["lib"], entry["variant"], name, cfg, steps=n, warmup=1,
                                 compile=label.endswith("+compile"))
            except RuntimeError as e:
                failed.add(label)
                entry["notes"].append(str(e))
                log.warning("%s %s: %s", name, label, e)
                continue
            times[label] += out["times"]
            kernel[label] += out["kernel"]
            peaks[label].append(int(out["peak_bytes"]))
            if out.get("steady_peak_bytes") is not None:
                steady[label].append(int(out["steady_peak_bytes"]))
            bar.update(n)
    if cfg.peak:
        for label, values in peaks.items():
            if values:
                entries[label]["metrics"][f"peak_train_b{cfg.train_batch}_mib"] = statistics.median(values) / MIB
            if steady[label] and label not in failed:
                entries[label]["metrics"][f"peak_train_b{cfg.train_batch}_steady_mib"] = (
                    statistics.median(steady[label]) / MIB)
    return ({lb: t for lb, t in times.items() if lb not in failed},
            {lb: k for lb, k in kernel.items() if lb not in failed and k})


def peak_in_subprocess(lib: str, variant: str, name: str, cfg: Any) -> int:
    """Peak memory (bytes) of the first training step of a freshly built network, measured by
    ``python -m effnet.bench.worker`` in a fresh process (see :func:`effnet.bench.measure.peak_memory_bytes`)."""
    return int(run_worker(lib, variant, name, cfg)["peak_bytes"])


def run_worker(lib: str, variant: str, name: str, cfg: Any, *, steps: int = 0, warmup: int = 0,
               compile: bool = False) -> dict[str, Any]:
    """``python -m effnet.bench.worker`` on one candidate in a fresh process: the peak bytes of its
    first training step and the seconds of ``steps`` timed steps after ``warmup`` untimed ones.
    ``compile``: the network under ``torch.compile``, its first step (the compilation) made before
    any of that is measured."""
    job = {"lib": lib, "variant": "" if variant == "best" else variant, "model": name,
           "resolution": cfg.train_resolution, "batch": cfg.train_batch, "device": cfg.device,
           "threads": cfg.threads or torch.get_num_threads(), "flush_denormal": cfg.flush_denormal,
           "autocast": cfg.autocast, "steps": steps, "warmup": warmup, "compile": compile}
    # The worker imports this effnet even where it is on sys.path only (benchmarks/bench.py runs a checkout).
    src = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)}
    use_keras_torch_backend(env)
    proc = subprocess.run([sys.executable, "-m", "effnet.bench.worker", json.dumps(job)], capture_output=True,
                          text=True, env=env)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"training worker for {lib} {name} failed: {last}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise ValueError("usage: python -m effnet.bench.worker JOB_JSON (run by effnet.bench, not by hand)")
    sys.stdout.write(json.dumps(measure(json.loads(args[0]))) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
