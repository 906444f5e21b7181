"""`python -m effnet.bench.worker JOB_JSON`: the peak memory of one training step, in a fresh process.

Run by :func:`effnet.bench.run.peak_in_subprocess`, one process per (model, library): the
memory a previous network freed stays in this process's heap and would hide part of the next
one's peak. Builds the candidate, measures its first training step with
:func:`effnet.bench.measure.peak_memory_bytes` and writes ``{"peak_bytes": N}`` on stdout (the
one line the parent reads; this is a data channel, not a report).
"""

from __future__ import annotations

import json
import sys

import torch

from effnet.bench.measure import peak_memory_bytes, train_step
from effnet.bench.peers import build_runner


def measure(job: dict) -> int:
    """Peak bytes of the first training step of ``job``'s freshly built candidate."""
    torch.set_num_threads(int(job["threads"]))
    torch.set_flush_denormal(bool(job["flush_denormal"]))
    device = torch.device(job["device"])
    res, batch = int(job["resolution"]), int(job["batch"])
    runner = build_runner(job["lib"], job["variant"], job["model"], res, device)
    runner.module.train()
    gen = torch.Generator().manual_seed(1)
    x = runner.prepare(torch.randn(batch, 3, res, res, generator=gen).to(device))  # (B, C, H, W)
    y = torch.randint(0, 1000, (batch,), generator=gen).to(device)
    opt = torch.optim.SGD([p for p in runner.module.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    dtype = getattr(torch, job["autocast"]) if job.get("autocast") else None
    return peak_memory_bytes(lambda: train_step(lambda t: runner.forward(t, True), opt, x, y, dtype), device)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise ValueError("usage: python -m effnet.bench.worker JOB_JSON (run by effnet.bench, not by hand)")
    sys.stdout.write(json.dumps({"peak_bytes": measure(json.loads(args[0]))}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
