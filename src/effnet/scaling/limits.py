"""Sizes that make sense, checked on a spec before any module is built from it.

Counting a network (``effnet.profile.count_flops``) builds its modules: on the meta device, so
without memory, but still one Python object per layer. A compound coefficient such as phi = 60
asks B0 for ~900,000 blocks and a ~980,000-px input and would run for hours before printing
anything. These checks read the spec alone (block counts, channels, resolution are numbers in
it), so an absurd request is refused at once, with the size it would have had.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from effnet.specs.base import MIN_INPUT_SIZE, ModelSpec


@dataclass(frozen=True)
class SizeLimits:
    """Bounds on a spec worth building and counting: about 10x the largest published
    EfficientNet in each dimension, so every published model and its reasonable scalings pass.

    Largest published: V2-XL has 100 blocks (official ``v2_xl_block``), L2 88; L2's head has
    5,504 channels (1280 x 4.3) and it is evaluated at 800 px (official ``efficientnet_params``).
    ``min_resolution``: the network's output stride is 32, so a smaller input leaves no pixel.
    """

    max_blocks: int = 1000
    max_channels: int = 65536
    max_resolution: int = 8192
    min_resolution: int = MIN_INPUT_SIZE


DEFAULT_LIMITS = SizeLimits()


def size_problems(spec: ModelSpec, limits: SizeLimits = DEFAULT_LIMITS) -> list[str]:
    """What about ``spec``'s size is out of ``limits`` (empty when it is fine); reads the spec
    only, never builds a module."""
    problems = []
    if spec.num_blocks > limits.max_blocks:
        problems.append(f"{spec.num_blocks:,} blocks (limit {limits.max_blocks:,})")
    widest = max(spec.stem_channels, spec.head_channels, *(s.channels for s in spec.stages))
    if widest > limits.max_channels:
        problems.append(f"{widest:,} channels in its widest layer (limit {limits.max_channels:,})")
    if spec.resolution > limits.max_resolution:
        problems.append(f"a {spec.resolution:,}-px input (limit {limits.max_resolution:,})")
    if spec.resolution < limits.min_resolution:
        problems.append(f"a {spec.resolution}-px input (minimum {limits.min_resolution}: output stride 32)")
    return problems


def describe_size(spec: ModelSpec) -> str:
    """Blocks, widest layer and resolution of ``spec``, in words (for error messages)."""
    widest = max(spec.stem_channels, spec.head_channels, *(s.channels for s in spec.stages))
    return (f"{spec.num_blocks:,} blocks, up to {widest:,} channels, {spec.resolution:,}-px input")


def phi_bound(ok: Callable[[float], bool], direction: float) -> float:
    """The last phi from 0 towards ``direction`` (-1 or +1) for which ``ok`` holds, to 0.01 and
    truncated towards 0 (inwards), assuming ``ok(0)`` and that ``ok`` fails only beyond a point.

    The bracket doubles until ``ok`` fails, then 40 bisection steps close it; a direction where
    it never fails up to |phi| = 10^4 has no bound (e.g. gamma = 1 never shrinks the input).
    """
    good, bad = 0.0, direction
    while ok(bad):
        good, bad = bad, bad * 2
        if abs(bad) > 1e4:
            return direction * float("inf")
    for _ in range(40):
        mid = (good + bad) / 2
        good, bad = (mid, bad) if ok(mid) else (good, mid)
    return int(good * 100) / 100


# --- memory ------------------------------------------------------------------------------------
def activation_bytes(spec: ModelSpec, resolution: int | None = None, batch: int = 1, *, training: bool = False,
                     bytes_per_value: int = 4) -> int:
    """A lower bound on the activation memory of one forward pass, read from the spec alone.

    Inference holds at least one block's input, its widest hidden tensor and its output at
    once; a training step keeps at least every block's hidden and output tensor for backward.
    Both grow with ``resolution ** 2`` and ``batch``; the true use is higher (BatchNorm and
    activation copies, the allocator), so a size refused by this bound cannot fit.
    """
    side = float(spec.resolution if resolution is None else resolution)
    side /= 2 * (2 if spec.stem_pool else 1)  # the stem's stride (and a ResNet stem's pool)
    values = [spec.stem_channels * side * side]  # (per image) tensors a pass holds, block by block
    peak = values[0] + spec.in_channels * (2 * side) ** 2
    total = values[0]
    cin = spec.stem_channels
    for stage in spec.stages:
        for i in range(stage.repeats):
            stride = stage.stride if i == 0 else 1
            out_side = side / stride
            if stage.op == "bottleneck":
                hidden = max(1, round(stage.channels / stage.expand)) * out_side * out_side
            else:
                hidden = cin * stage.expand * (side * side if stage.op == "mbconv" else out_side * out_side)
            out = stage.channels * out_side * out_side
            peak = max(peak, cin * side * side + hidden + out)
            total += hidden + out
            cin, side = stage.channels, out_side
    head = spec.head_channels * side * side
    peak, total = max(peak, cin * side * side + head), total + head
    return int((total if training else peak) * batch * bytes_per_value)
