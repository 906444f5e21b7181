"""Counting and timing a network: parameters, multiply-adds (meta device), activation memory, latency.

Timings that compare candidates are *interleaved* (:func:`interleaved`): the candidates are sampled
in rounds, the order rotating each round, so load from other processes and clock changes fall on
all of them alike (timing A for a minute, then B, measures the machine as much as the code)."""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from effnet.layers.activations import observing_saved_tensors
from effnet.model import ConvNet, build
from effnet.registry import get_spec
from effnet.specs.base import ModelSpec

log = logging.getLogger(__name__)


def _resolve(model: str | ModelSpec, resolution: int | None) -> tuple[ModelSpec, int]:
    spec = get_spec(model) if isinstance(model, str) else model
    res = spec.resolution if resolution is None else resolution
    if not isinstance(res, int) or res <= 0:
        raise ValueError(f"resolution: expected a positive integer, got {res!r}")
    return spec, res


def count_params(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_flops(model: str | ModelSpec | nn.Module, resolution: int | None = None, batch: int = 1) -> int:
    """Multiply-adds of one forward pass at ``resolution`` (per batch of ``batch`` images).

    A name or spec is built on the meta device (no memory, no compute); a module is run as is
    on a meta input only if its parameters are on meta, otherwise on a real zero input. Both
    give the same count: the counter reads shapes, never values.
    """
    if isinstance(model, nn.Module):
        spec = getattr(model, "spec", None)
        res = resolution or (spec.resolution if spec else 224)
        device = next(model.parameters()).device
        in_ch = spec.in_channels if spec else 3
        x = torch.zeros(batch, in_ch, res, res, device=device)
        net = model
    else:
        spec, res = _resolve(model, resolution)
        with torch.device("meta"):
            net = build(spec)
        x = torch.empty(batch, spec.in_channels, res, res, device="meta")
    was_training = net.training
    net.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(x)
    net.train(was_training)
    # flop_counter counts 2 FLOPs per multiply-add for conv/matmul; the papers count MACs.
    return counter.get_total_flops() // 2


def activation_memory(model: nn.Module, resolution: int, batch: int = 1) -> int:
    """Bytes of activations autograd keeps for the backward pass of one training forward.

    Measured, not estimated: every tensor saved for backward is recorded through
    ``torch.autograd.graph.saved_tensors_hooks``; parameters and tensors sharing storage with
    one already counted are skipped.
    """
    device = next(model.parameters()).device
    in_ch = getattr(getattr(model, "spec", None), "in_channels", 3)
    x = torch.randn(batch, in_ch, resolution, resolution, device=device)
    was_training = model.training
    model.train()
    try:
        return saved_activation_bytes(lambda: model(x), list(model.parameters()))
    finally:
        model.train(was_training)


def saved_activation_bytes(forward: Callable[[], torch.Tensor], params: Sequence[torch.Tensor] = ()) -> int:
    """Bytes of the distinct tensors autograd saves for backward during ``forward()``.

    Recorded by :func:`effnet.layers.activations.observing_saved_tensors` (the activations an
    effnet model recomputes in backward are not counted, as they are not kept) and
    deduplicated by storage; parameters (``params``) are excluded. Deterministic and
    allocator-independent: exactly the activation memory a training step holds at the end of its
    forward pass.
    """
    param_ptrs = {p.untyped_storage().data_ptr() for p in params}
    seen: dict[int, int] = {}

    def observe(t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in param_ptrs:
            seen[ptr] = storage.nbytes()

    with observing_saved_tensors(observe):
        out = forward()  # kept alive until counted, so no saved storage is freed and reused
    total = sum(seen.values())
    del out
    return total


def rotation(names: Sequence[str], rounds: int) -> list[list[str]]:
    """The order candidates are sampled in each round: round ``r`` starts at ``names[r % n]``.

    >>> rotation(["a", "b", "c"], 4)
    [['a', 'b', 'c'], ['b', 'c', 'a'], ['c', 'a', 'b'], ['a', 'b', 'c']]
    """
    if rounds < 1:
        raise ValueError(f"rounds: expected >= 1, got {rounds}")
    names = list(names)
    n = len(names)
    return [names[r % n:] + names[:r % n] if n else [] for r in range(rounds)]


def sync(device: torch.device | str) -> None:
    """Wait for queued kernels: CUDA runs asynchronously, so a timer alone would measure the launch."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(
    fns: dict[Any, Callable[[], object]], *, warmup: int, iters: int, rounds: int,
    device: torch.device | str = "cpu", on_call: Callable[[Any], None] | None = None,
) -> dict[Any, list[float]]:
    """Seconds per call of each function: ``iters`` samples each, spread over ``rounds`` rounds in
    :func:`rotation` order, after ``warmup`` untimed calls of each. ``on_call(name)`` is told of
    every timed call (progress bars; the tests read the order from it)."""
    if iters < 1:
        raise ValueError(f"iters: expected >= 1, got {iters}")
    rounds = max(1, min(rounds, iters))
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    per_round = [iters // rounds + (1 if r < iters % rounds else 0) for r in range(rounds)]
    times: dict[Any, list[float]] = {k: [] for k in fns}
    for order, n in zip(rotation(list(fns), rounds), per_round):
        for name in order:
            for _ in range(n):
                t0 = time.perf_counter()
                fns[name]()
                sync(device)
                times[name].append(time.perf_counter() - t0)
                if on_call is not None:
                    on_call(name)
    return times


def median_ms(samples: Sequence[float]) -> float:
    return statistics.median(samples) * 1e3


def latency(
    model: nn.Module, resolution: int, batch: int = 1, warmup: int = 2, runs: int = 10,
    threads: int | None = None,
) -> float:
    """Median seconds of an inference forward pass (eval, ``torch.inference_mode``)."""
    if runs < 1:
        raise ValueError(f"runs: expected >= 1, got {runs}")
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    device = next(model.parameters()).device
    in_ch = getattr(getattr(model, "spec", None), "in_channels", 3)
    x = torch.randn(batch, in_ch, resolution, resolution, device=device)
    was_training = model.training
    model.eval()
    times = []
    try:
        with torch.inference_mode():
            for i in range(warmup + runs):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                model(x)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                if i >= warmup:
                    times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(old_threads)
        model.train(was_training)
    return statistics.median(times)


def step_time(
    model: str | ModelSpec | nn.Module, image_size: int, batch: int = 16, *, device: str | torch.device = "cpu",
    warmup: int = 2, steps: int = 5, threads: int | None = None, seed: int = 0,
) -> float:
    """Median seconds of one training step: forward, cross-entropy loss, backward and an
    optimiser step (SGD with momentum) on a fixed random batch of ``batch`` images at
    ``image_size``, after ``warmup`` untimed steps.

    This is the S of EfficientNetV2's training-aware search (V2 paper section 3.3: "S denotes
    the normalized training step time"): measured on the device in use, never estimated from
    FLOPs (V2's point is that FLOPs and speed disagree, e.g. depthwise convolutions, section
    3.2). The batch and its labels come from a generator seeded with ``seed``, so every model
    measured with the same arguments sees the same input. A name or spec is built fresh in
    training mode; a module is trained as is (its weights change: pass a copy to keep them).
    """
    if steps < 1:
        raise ValueError(f"steps: expected >= 1, got {steps}")
    if warmup < 0:
        raise ValueError(f"warmup: expected >= 0, got {warmup}")
    if batch < 1:
        raise ValueError(f"batch: expected >= 1, got {batch}")
    device = torch.device(device)
    net = model if isinstance(model, nn.Module) else build(_resolve(model, image_size)[0])
    net = net.to(device).eval()
    spec = getattr(net, "spec", None)
    in_ch = spec.in_channels if spec is not None else 3
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, in_ch, image_size, image_size, generator=gen).to(device)  # (B, C, H, W)
    with torch.no_grad():
        classes = net(x[:1]).shape[-1]  # the head's width: labels must lie below it
    net.train()
    y = torch.randint(0, classes, (batch,), generator=gen).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    times = []
    try:
        for i in range(warmup + steps):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)  # kernels run asynchronously: wait for the step to end
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(old_threads)
    return statistics.median(times)


@dataclass(frozen=True)
class Profile:
    """What ``effnet profile`` reports."""

    model: str
    resolution: int
    params: int
    flops: int
    activation_bytes: int | None = None
    latency_ms: float | None = None
    batch: int = 1
    threads: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def profile_model(
    model: str | ModelSpec, resolution: int | None = None, *, memory: bool = False, timing: bool = False,
    batch: int = 1, runs: int = 10, threads: int | None = None,
) -> Profile:
    """Parameters and multiply-adds (always), activation memory and CPU latency (when asked).

    The counts come from one build on the meta device: no weight is allocated and no
    convolution runs, so even EfficientNet-L2 at 800 px (480M parameters, 476G multiply-adds)
    takes well under a second; the meta counts equal real-device ones exactly (tests compare
    them with torchvision's and timm's). Only ``memory`` (activation bytes of one training
    forward) and ``timing`` (latency) build the real network and run it.
    """
    spec, res = _resolve(model, resolution)
    with torch.device("meta"):
        meta_net = build(spec)
    params = count_params(meta_net)
    flops = count_flops(meta_net, res)
    del meta_net
    net: ConvNet | None = build(spec) if memory or timing else None
    act = activation_memory(net, res, batch) if memory and net is not None else None
    lat = latency(net, res, batch, runs=runs, threads=threads) * 1e3 if timing and net is not None else None
    return Profile(model=spec.name, resolution=res, params=params, flops=flops, activation_bytes=act,
                   latency_ms=lat, batch=batch, threads=(threads or torch.get_num_threads()) if timing else None)


__all__ = ["Profile", "activation_memory", "count_flops", "count_params", "interleaved", "latency", "median_ms",
           "profile_model", "rotation", "sync",
           "saved_activation_bytes", "step_time"]
