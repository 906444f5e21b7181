"""Fit a budget: the largest scaled model under a FLOPs, parameter or latency limit.

Compound scaling answers "how do I grow B0 for more resources" with phi; users ask the inverse,
"which phi fits 2 GFLOPs, 10 M parameters or 15 ms on my machine". Cost grows with phi for every
strategy, so the answer is a bracket-and-bisect over phi on a grid of ``step`` (distinct
candidates are phi = k * step): the largest candidate within the budget and the next one up,
which is over it. FLOPs and parameters are counted on the meta device (no memory, no
compute); latency is measured on the device in use (median of timed runs after warm-up).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import effnet.profile
from effnet.lab.budget import base_spec
from effnet.scaling import size_problems
from effnet.scaling.strategies import get_strategy
from effnet.specs.base import ModelSpec

# effnet.profile loads its torch-backed names on first use (PEP 562): the CLI parser imports
# this module, which must not load torch.

log = logging.getLogger(__name__)

_UNITS = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_TIME = {"s": 1.0, "ms": 1e-3, "us": 1e-6}


def parse_count(text: str | float, what: str) -> float:
    """'2G', '10M', '1.5e9', 400e6 -> a number (k/M/G/T are powers of 1000)."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kmgt]?)\s*", str(text), re.IGNORECASE)
        if not m:
            raise ValueError(f"{what}: expected a number with an optional k/M/G/T suffix (e.g. 2G, 10M), got {text!r}")
        value = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if value <= 0:
        raise ValueError(f"{what}: expected a positive budget, got {text!r}")
    return value


def parse_seconds(text: str | float, what: str = "max latency") -> float:
    """'15ms', '0.2s', '800us' -> seconds; a bare number is milliseconds (as latency is quoted)."""
    if isinstance(text, (int, float)):
        value = float(text) * 1e-3
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*(ms|s|us)?\s*", str(text), re.IGNORECASE)
        if not m:
            raise ValueError(f"{what}: expected a time such as 15ms or 0.2s, got {text!r}")
        value = float(m.group(1)) * _TIME[(m.group(2) or "ms").lower()]
    if value <= 0:
        raise ValueError(f"{what}: expected a positive time, got {text!r}")
    return value


@dataclass(frozen=True)
class FitCandidate:
    phi: float
    name: str
    depth: float
    width: float
    resolution: int
    flops: int
    params: int
    latency_ms: float | None
    cost: float
    fits: bool


@dataclass
class FitResult:
    base: str
    strategy: str
    budget: str  # e.g. "flops <= 1e+09"
    best: FitCandidate | None
    next_larger: FitCandidate | None
    #: Why the answer is not the budget's limit, when the largest buildable model still fits.
    capped: str | None = None
    tried: list[FitCandidate] = field(default_factory=list)
    spec: ModelSpec | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"base": self.base, "strategy": self.strategy, "budget": self.budget,
                "best": asdict(self.best) if self.best else None,
                "next_larger": asdict(self.next_larger) if self.next_larger else None, "capped": self.capped,
                "tried": [asdict(c) for c in self.tried], "spec": self.spec.to_dict() if self.spec else None}


def fit(
    base: str | ModelSpec = "efficientnet_b0", *, max_flops: str | float | None = None,
    max_params: str | float | None = None, max_latency: str | float | None = None, strategy: str = "compound",
    step: float = 0.05, device: str = "cpu", batch: int = 1, runs: int = 10, phi_limit: float = 20.0,
) -> FitResult:
    """The largest model ``strategy`` makes from ``base`` within one budget: ``max_flops``
    (multiply-adds, '2G'), ``max_params`` ('10M') or ``max_latency`` ('15ms' for a batch of
    ``batch`` on ``device``). Returns it (``best``, with its ``spec``), the next larger
    candidate (over the budget) and every candidate measured on the way."""
    given = {k: v for k, v in (("flops", max_flops), ("params", max_params), ("latency", max_latency))
             if v is not None}
    if len(given) != 1:
        raise ValueError("give exactly one budget: --max-flops, --max-params or --max-latency "
                         f"(got {', '.join(given) or 'none'})")
    if step <= 0:
        raise ValueError(f"step: expected > 0, got {step}")
    if batch < 1:
        raise ValueError(f"batch: expected >= 1, got {batch}")
    kind, raw = next(iter(given.items()))
    limit = parse_seconds(raw) if kind == "latency" else parse_count(raw, f"max {kind}")
    spec0 = base_spec(base)
    rule = get_strategy(strategy)
    measure = _measure(kind, device, batch, runs)
    tried: dict[int, FitCandidate | None] = {}
    specs: dict[int, ModelSpec] = {}

    def at(k: int) -> FitCandidate | None:
        """Candidate k (phi = k * step), or None where the strategy makes no valid model."""
        if k not in tried:
            try:
                spec = spec0 if k == 0 else rule.apply(spec0, k * step)
                if size_problems(spec):
                    raise ValueError("; ".join(size_problems(spec)))
            except ValueError as e:
                log.debug("phi=%g: no model (%s)", k * step, e)
                tried[k] = None
                return None
            specs[k] = spec
            tried[k] = measure(spec, k * step, limit)
        return tried[k]

    def fits(k: int) -> bool:
        c = at(k)
        return c is not None and c.fits

    lo_k = _bracket(fits, phi_limit / step)
    result = FitResult(spec0.name, strategy, f"{kind} <= {_fmt(kind, limit)}", None, None)
    if lo_k is None:
        smallest = min((c for c in tried.values() if c is not None), key=lambda c: c.cost, default=None)
        hint = f"; the smallest tried ({smallest.name}) needs {_fmt(kind, smallest.cost)}" if smallest else ""
        result.tried = sorted((c for c in tried.values() if c is not None), key=lambda c: c.phi)
        raise ValueError(f"no model of strategy {strategy!r} from {spec0.name} fits {result.budget}{hint}")
    result.best, result.spec = at(lo_k), specs[lo_k]
    result.next_larger = at(lo_k + 1)
    if result.next_larger is None or result.next_larger.fits:
        # The search stopped at phi_limit or the size limits, not at the budget.
        result.capped = (f"the budget was not reached: the search stops at phi {phi_limit:g} and at the sizes "
                         f"effnet builds, so phi={lo_k * step:g} is the largest model searched, not the largest "
                         f"within the budget")
    result.tried = sorted((c for c in tried.values() if c is not None), key=lambda c: c.phi)
    return result


def _bracket(fits: Callable[[int], bool], k_max: float) -> int | None:
    """The largest integer k with fits(k), cost being nondecreasing in k: double the step
    away from 0 until the answer flips, then bisect."""
    if fits(0):
        lo, hi = 0, 1
        while fits(hi):
            lo, hi = hi, hi * 2
            if hi > k_max:
                # The limit of sensible sizes comes before the budget: bisect up to the limit
                # itself, so that the answer is the largest size effnet builds, not the last
                # doubling below it.
                top = int(k_max)
                if fits(top):
                    return top
                hi = top
                break
    else:
        hi, lo = 0, -1
        while not fits(lo):
            hi, lo = lo, lo * 2
            if -lo > k_max:
                return None
    while hi - lo > 1:  # fits(lo), not fits(hi)
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


def _fmt(kind: str, value: float) -> str:
    if kind == "latency":
        return f"{value * 1e3:.3g} ms"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.4g}{unit}"
    return f"{value:.4g}"


def _measure(kind: str, device: str, batch: int, runs: int) -> Callable[[ModelSpec, float, float], FitCandidate]:
    import torch

    from effnet.model import build  # loads torch: the CLI parser imports this module

    def measure(spec: ModelSpec, phi: float, limit: float) -> FitCandidate:
        with torch.device("meta"):
            params = effnet.profile.count_params(build(spec))
        flops = effnet.profile.count_flops(spec)
        lat = None
        if kind == "latency":
            model = build(spec).to(device).eval()
            lat = effnet.profile.latency(model, spec.resolution, batch=batch, runs=runs)
            del model
        cost = {"flops": flops, "params": params, "latency": lat if lat is not None else math.inf}[kind]
        log.info("phi=%.3g %s: %s", phi, spec.name, _fmt(kind, cost))
        return FitCandidate(phi=round(phi, 6), name=spec.name, depth=spec.depth, width=spec.width,
                            resolution=spec.resolution, flops=flops, params=params,
                            latency_ms=None if lat is None else lat * 1e3, cost=cost, fits=cost <= limit)

    return measure
