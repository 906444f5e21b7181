"""Architecture search rewards as small pure functions, side by side.

Each takes the measured numbers of one candidate and returns the value a search maximises;
accuracy ``a`` is in whatever unit the caller uses (effnet passes top-1 in %), the reward is in
the same unit, so a candidate at the base's cost scores its accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence

#: EfficientNetV2 section 3.3: "w = -0.07 and v = -0.05 are empirically determined".
V2_W, V2_V = -0.07, -0.05
#: MnasNet section 3 / EfficientNet section 4: w = -0.07 (alpha = beta = w: the soft form).
MNAS_W = -0.07
#: EfficientNet section 4: "T is the target FLOPS ... T = 400M".
B0_TARGET_FLOPS = 400e6


def v2_reward(a: float, s: float, p: float, *, s0: float, p0: float, w: float = V2_W, v: float = V2_V) -> float:
    """EfficientNetV2's training-aware reward, A * S^w * P^v (V2 paper section 3.3), with the
    training step time ``s`` and parameter count ``p`` normalised by the base model's ``s0``
    and ``p0`` ("S denotes the normalized training step time and P the parameter size")."""
    if s <= 0 or p <= 0 or s0 <= 0 or p0 <= 0:
        raise ValueError(f"v2_reward: step times and parameter counts must be positive, got s={s}, p={p}, "
                         f"s0={s0}, p0={p0}")
    return a * (s / s0) ** w * (p / p0) ** v


def mnas_reward(a: float, cost: float, target: float, *, alpha: float = MNAS_W, beta: float = MNAS_W) -> float:
    """MnasNet's reward, ACC(m) * (cost(m) / T)^w with w = ``alpha`` when cost <= T, else ``beta``
    (MnasNet section 3, Equation 2). ``cost`` is latency there and FLOPs in EfficientNet's B0
    search (section 4: "ACC(m) x [FLOPS(m)/T]^w, where ... w = -0.07 ... T = 400M")."""
    if cost <= 0 or target <= 0:
        raise ValueError(f"mnas_reward: cost and target must be positive, got cost={cost}, target={target}")
    w = alpha if cost <= target else beta
    return a * (cost / target) ** w


def mnas_soft(a: float, cost: float, target: float = B0_TARGET_FLOPS) -> float:
    """The soft constraint, alpha = beta = -0.07 (MnasNet section 3; EfficientNet-B0's search)."""
    return mnas_reward(a, cost, target, alpha=MNAS_W, beta=MNAS_W)


def mnas_hard(a: float, cost: float, target: float = B0_TARGET_FLOPS) -> float:
    """The hard constraint, alpha = 0, beta = -1 (MnasNet section 3): accuracy alone within the
    target, sharply penalised beyond it."""
    return mnas_reward(a, cost, target, alpha=0.0, beta=-1.0)


def dominates(x: Sequence[float], y: Sequence[float]) -> bool:
    """Whether (accuracy, step time, params) ``x`` Pareto-dominates ``y``: at least as accurate,
    as fast and as small, and strictly better in one of them."""
    (ax, sx, px), (ay, sy, py) = x, y
    no_worse = ax >= ay and sx <= sy and px <= py
    return no_worse and (ax > ay or sx < sy or px < py)


def pareto_front(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices of the non-dominated points among (accuracy, step time, params) triples:
    maximise accuracy, minimise step time and parameters (V2's three objectives, kept apart
    instead of folded into one reward). O(n^2), fine for a search's few hundred trials."""
    return [i for i, x in enumerate(points) if not any(dominates(y, x) for j, y in enumerate(points) if j != i)]
