"""One training step of effnet and its peers, A/B interleaved in one process, for tuning effnet's
training ops on a busy machine.

    python benchmarks/train_step.py effnet effnet:plain timm --rounds 12
    python benchmarks/train_step.py effnet timm --threads 1 --cpu-time     # CPU seconds, not wall
    python benchmarks/train_step.py effnet timm --peak                     # + peak RSS per candidate
    python benchmarks/train_step.py effnet --profile                       # top ops of the step

Candidates: ``effnet`` (``create_model``, its default training ops), ``effnet:plain`` (the
memory-saving ops switched off: what autograd saves for plain PyTorch modules), ``effnet:nopool``
(the default ops with their full-size buffers allocated afresh each step), ``effnet:keeppages`` (the
pool keeping every buffer's pages resident, none given back during the backward), ``effnet:memsaving``
(``--memory-saving``: every block checkpointed), ``effnet:norecompute``
(the default ops saving each activation that the next op reads, not recomputing it), ``timm``,
``torchvision``; a ``+compile`` suffix wraps the network in ``torch.compile``. Every network is
channels_last with channels_last inputs, stochastic depth 0.2, trained by SGD (momentum 0.9) on a
fixed random batch with cross-entropy, as ``effnet bench`` trains (``effnet.bench.measure``).

Rounds rotate the candidates' order; the table gives the median and the minimum per candidate and
the ratio to the fastest peer (effnet cost / peer cost, < 1 = effnet cheaper). ``--cpu-time``
times the calling thread's CPU seconds (``time.thread_time``) instead of the wall clock: with one
thread, CPU autograd runs on that thread, so other processes' load drops out of the figure.
``--peak`` measures each candidate's first step in a fresh subprocess, as ``effnet bench`` does
(rise of the peak RSS, ``VmHWM``, reset through ``/proc/self/clear_refs``). timm and torchvision
are never effnet dependencies: run this with a Python that has them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))  # this checkout's effnet

import torch  # noqa: E402
from torch import nn  # noqa: E402

import effnet  # noqa: E402
from effnet.layers import ConvBnAct, memory_efficient  # noqa: E402

DROP_PATH = 0.2


def build(candidate: str, model: str) -> tuple[nn.Module, Callable[[], object]]:
    """(network, context factory for its step) of one candidate name."""
    name, *flags = candidate.split("+")
    lib, _, variant = name.partition(":")
    compiled = "compile" in flags
    if lib == "effnet":
        net = effnet.create_model(model, drop_path_rate=DROP_PATH)
        lean = variant != "plain"
        context = lambda: memory_efficient(lean)  # noqa: E731
        if variant == "nopool":  # the training buffers allocated afresh every step (effnet.layers.buffers)
            for m in net.modules():
                if isinstance(m, ConvBnAct):
                    m.buffer_pool = None
        if variant == "keeppages":  # every pool buffer's pages kept resident between steps (effnet.layers.buffers)
            net.buffer_pool.gives_back_pages = False
        if variant == "memsaving":  # effnet train --memory-saving: every block checkpointed
            net.set_grad_checkpointing(True)
        if variant == "norecompute":  # the activations the next op saves kept as they are (effnet.layers.activations)
            net._recomputing_now = lambda: False
    elif lib == "timm":
        import timm

        net = timm.create_model(model, drop_path_rate=DROP_PATH, drop_rate=0.2)
        context = memory_efficient
    elif lib == "torchvision":
        import torchvision

        net = getattr(torchvision.models, model)(stochastic_depth_prob=DROP_PATH, dropout=0.2)
        context = memory_efficient
    else:
        raise ValueError(f"candidate: expected effnet[:plain|:nopool|:keeppages|:memsaving|:norecompute], timm or torchvision [+compile], got {candidate!r}")
    net = net.to(memory_format=torch.channels_last).train()
    if compiled:
        net = torch.compile(net)
    return net, context


class Step:
    def __init__(self, candidate: str, args: argparse.Namespace) -> None:
        self.net, self.context = build(candidate, args.model)
        gen = torch.Generator().manual_seed(1)
        self.x = torch.randn(args.batch, 3, args.resolution, args.resolution, generator=gen).contiguous(
            memory_format=torch.channels_last)
        self.y = torch.randint(0, 1000, (args.batch,), generator=gen)
        self.opt = torch.optim.SGD(self.net.parameters(), lr=0.01, momentum=0.9)

    def __call__(self) -> None:
        with self.context():
            loss = nn.functional.cross_entropy(self.net(self.x).float(), self.y)
            loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


def _kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def peak_worker(candidate: str, args: argparse.Namespace) -> int:
    step = Step(candidate, args)
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS to the current RSS
    before = _kib("VmRSS")
    step()
    return (_kib("VmHWM") - before) * 1024


def isolated_worker(candidate: str, args: argparse.Namespace) -> dict[str, object]:
    """Warm-up then ``--steps`` timed steps of one candidate alone in this (fresh) process, and the
    rise of the peak RSS over all of them (the steady state, not only the first step)."""
    step = Step(candidate, args)
    Path("/proc/self/clear_refs").write_text("5")
    before = _kib("VmRSS")
    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        step()
        times.append((time.perf_counter() - t) * 1000)
    return {"times": times, "peak_bytes": (_kib("VmHWM") - before) * 1024}


def run_isolated(names: list[str], args: argparse.Namespace) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Each round starts one fresh process per candidate (order rotated): a process that trained
    another network first would hand this one a heap of freed memory, which changes its time."""
    times: dict[str, list[float]] = {c: [] for c in names}
    peaks: dict[str, list[float]] = {c: [] for c in names}
    for r in range(args.rounds):
        for c in names[r % len(names):] + names[:r % len(names)]:
            cmd = [sys.executable, __file__, "--isolated-worker", c, "--model", args.model, "--batch", str(args.batch),
                   "--resolution", str(args.resolution), "--threads", str(args.threads), "--warmup",
                   str(args.warmup), "--steps", str(args.steps), "x"]
            out = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()[-1])
            times[c] += out["times"]
            peaks[c].append(out["peak_bytes"] / 2**20)
    return times, {c: max(v) for c, v in peaks.items()}


def report(names: list[str], times: dict[str, list[float]], peaks: dict[str, float], args: argparse.Namespace,
           unit: str) -> None:
    """The table: median and minimum step per candidate, ratios to the fastest peer, peaks."""
    peers = [c for c in names if not c.startswith("effnet")]
    best = min(peers, key=lambda c: statistics.median(times[c])) if peers else None
    best_mem = min(peers, key=lambda c: peaks[c]) if peers and peaks else None
    where = ", one fresh process per candidate per round" if args.isolated else ""
    print(f"# {args.model} batch {args.batch} @ {args.resolution} px, {args.threads} threads, {args.rounds} rounds{where}, "
          f"torch {torch.__version__}; ratios vs {best or '-'}")
    print(f"{'candidate':24s} {'median ' + unit:>12s} {'min ' + unit:>10s} {'ratio med':>9s} {'ratio min':>9s}"
          f" {'peak MiB':>9s} {'ratio':>6s}")
    for c in names:
        med, low = statistics.median(times[c]), min(times[c])
        rm = med / statistics.median(times[best]) if best else float("nan")
        rl = low / min(times[best]) if best else float("nan")
        pk = peaks.get(c, float("nan"))
        rp = pk / peaks[best_mem] if best_mem else float("nan")
        print(f"{c:24s} {med:12.1f} {low:10.1f} {rm:9.3f} {rl:9.3f} {pk:9.1f} {rp:6.3f}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("candidates", nargs="+")
    p.add_argument("--model", default="efficientnet_b0")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--resolution", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--cpu-time", action="store_true", help="thread CPU time instead of wall time")
    p.add_argument("--peak", action="store_true", help="peak RSS of the first step, one subprocess each")
    p.add_argument("--profile", action="store_true", help="top ops of 3 steps of each candidate")
    p.add_argument("--isolated", action="store_true",
                   help="time each candidate in fresh processes (--steps steps per process, one process per "
                        "candidate per round); the peak is then the steady-state peak of those steps")
    p.add_argument("--steps", type=int, default=4, help="timed steps per process with --isolated")
    p.add_argument("--peak-worker", help=argparse.SUPPRESS)
    p.add_argument("--isolated-worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    if args.peak_worker:
        print(json.dumps({"peak_bytes": peak_worker(args.peak_worker, args)}))
        return 0
    if args.isolated_worker:
        print(json.dumps(isolated_worker(args.isolated_worker, args)))
        return 0
    if args.isolated:
        names = list(args.candidates)
        times, peaks = run_isolated(names, args)
        report(names, times, peaks, args, "ms")
        return 0
    clock = time.thread_time if args.cpu_time else time.perf_counter
    steps = {c: Step(c, args) for c in args.candidates}
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    times: dict[str, list[float]] = {c: [] for c in steps}
    names = list(steps)
    for r in range(args.rounds):
        for c in names[r % len(names):] + names[:r % len(names)]:
            t = clock()
            steps[c]()
            times[c].append((clock() - t) * 1000)
    peaks: dict[str, float] = {}
    if args.peak:
        for c in names:
            cmd = [sys.executable, __file__, "--peak-worker", c, "--model", args.model, "--batch", str(args.batch),
                   "--resolution", str(args.resolution), "--threads", str(args.threads), "x"]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            peaks[c] = json.loads(out.strip().splitlines()[-1])["peak_bytes"] / 2**20
    report(names, times, peaks, args, "cpu ms" if args.cpu_time else "ms")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        for c in names:
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(3):
                    steps[c]()
            print(f"\n## {c}: top ops by self CPU time, 3 steps")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    return 0


if __name__ == "__main__":
    sys.exit(main())
