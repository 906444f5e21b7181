"""Stage and model specifications: the paper tables as frozen, serialisable data.

A :class:`ModelSpec` holds *absolute* channel counts and repeats, so a spec is always the exact
architecture that :func:`effnet.build` will construct. Scaling (``effnet.scaling``) is a pure
function from one spec to another.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from effnet.files import atomic_write

Op = Literal["mbconv", "fused", "basic", "bottleneck", "dsconv"]
Padding = Literal["symmetric", "same"]
HeadRule = Literal["scaled", "fixed", "at_least_base"]
_HEAD_RULES = ("scaled", "fixed", "at_least_base")

#: Smallest input side a network accepts: the stem and four stages reduce by 2 each
#: (output stride 32; a ResNet stem's conv and max pool take two of the five), so 32 px is the
#: least that leaves a 1x1 map (EfficientNet Table 1, ResNet Table 1).
MIN_INPUT_SIZE = 32

_OPS = ("mbconv", "fused", "basic", "bottleneck", "dsconv")
#: The baselines' ops (``effnet.specs.baselines``): none has squeeze-excitation, and the basic
#: block and depthwise-separable conv have no expansion; a value there would be silently ignored,
#: so it is refused.
_NO_SE_OPS = ("basic", "bottleneck", "dsconv")
_NO_EXPAND_OPS = ("basic", "dsconv")
_PADDINGS = ("symmetric", "same")
_ACTIVATIONS = ("silu", "relu", "relu6", "gelu", "hardswish")

#: ModelSpec fields added after specs were first saved, with the value every earlier spec has.
#: ``to_dict`` leaves them out at that value, so an existing spec serialises byte-identically
#: (the JSON inside weight files, saved spec files, and the study digest of
#: ``effnet.lab.budget.spec_id``, which refuses to resume a study whose base spec changed).
_ADDED_FIELDS: dict[str, Any] = {"stem_kernel": 3, "stem_pool": False}
#: The same for StageSpec fields: left out of a stage's dict at this value.
_ADDED_STAGE_FIELDS: dict[str, Any] = {"skip": True}
#: Ops whose residual is optional (``StageSpec.skip``): MBConv and Fused-MBConv add their input only
#: when the shape is kept anyway; a ResNet block *is* its shortcut, MobileNetV1's has none.
_SKIP_OPS = ("mbconv", "fused")


def check_fields(cls: type, keys: Any, what: str) -> None:
    """Refuse keys that are not fields of dataclass ``cls`` (a typo in a YAML file or an
    override must not be silently ignored)."""
    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(keys) - valid)
    if unknown:
        raise ValueError(f"unknown {what} field(s) {unknown}; valid fields are {sorted(valid)}")


@dataclass(frozen=True)
class StageSpec:
    """One row of a paper table: ``repeats`` identical blocks, the first with ``stride``.

    ``op`` names the block (``effnet.layers.BLOCKS``):

    - ``mbconv``: MobileNetV2 inverted residual / EfficientNet MBConv; ``expand`` is the
      expansion ratio (hidden = input channels x expand; 1 = no expansion conv).
    - ``fused``: EfficientNetV2 Fused-MBConv; ``expand`` as for ``mbconv``.
    - ``basic``: ResNet basic block (two kxk convs, ResNet Table 1 "18/34-layer"); ``expand`` 1.
    - ``bottleneck``: ResNet bottleneck (1x1, kxk, 1x1; ResNet Table 1 "50-layer" and up);
      ``expand`` is the *ResNet* expansion, the other way round: hidden = ``channels`` / expand
      (4 in the paper: 64-d bottleneck, 256-d output).
    - ``dsconv``: MobileNetV1 depthwise-separable conv (MobileNetV1 Figure 3); ``expand`` 1.

    ``se`` is the squeeze-excitation ratio relative to the block's *input* channels, as in the
    official code (``num_reduced_filters = max(1, int(input_filters * se_ratio))``); only the
    MBConv ops have SE (ResNet and MobileNetV1 have none, and SE-ResNet is not implemented).

    ``skip=False`` gives the stage's blocks no residual even where the shape is kept: the
    official block strings' ``noskip`` (``id_skip=False`` in efficientnet_model.py's MBConvBlock,
    applied to every repeat of the row), used by EfficientNet-EdgeTPU's first stage. Only the
    MBConv ops have the choice.
    """

    op: Op
    repeats: int
    kernel: int
    stride: int
    expand: float
    channels: int
    se: float = 0.0
    skip: bool = True

    def __post_init__(self) -> None:
        if self.op not in _OPS:
            raise ValueError(f"StageSpec.op: expected one of {_OPS}, got {self.op!r}")
        for name in ("repeats", "kernel", "stride", "channels"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"StageSpec.{name}: expected a positive integer, got {value!r}")
        if self.kernel % 2 == 0:
            raise ValueError(f"StageSpec.kernel: expected an odd kernel size, got {self.kernel}")
        if self.stride not in (1, 2):
            raise ValueError(f"StageSpec.stride: expected 1 or 2, got {self.stride}")
        if self.expand < 1:
            raise ValueError(f"StageSpec.expand: expected >= 1, got {self.expand}")
        if not 0.0 <= self.se < 1.0:
            raise ValueError(f"StageSpec.se: expected a ratio in [0, 1), got {self.se}")
        if self.op in _NO_EXPAND_OPS and self.expand != 1:
            raise ValueError(
                f"StageSpec.expand: op {self.op!r} has no expansion (ResNet basic block / MobileNetV1 "
                f"depthwise-separable conv), expected 1, got {self.expand}; use 'bottleneck' or "
                f"'mbconv' for a block with one"
            )
        if self.op == "bottleneck" and round(self.channels / self.expand) < 1:
            raise ValueError(
                f"StageSpec.expand: a bottleneck's hidden width is channels / expand = "
                f"{self.channels} / {self.expand}, expected at least 1 channel"
            )
        if not isinstance(self.skip, bool):
            raise ValueError(f"StageSpec.skip: expected true or false, got {self.skip!r}")
        if not self.skip and self.op not in _SKIP_OPS:
            raise ValueError(
                f"StageSpec.skip: op {self.op!r} has no optional residual (a ResNet block is built "
                f"around its shortcut, MobileNetV1's conv has none), expected true; only {_SKIP_OPS} "
                f"take skip: false"
            )
        if self.op in _NO_SE_OPS and self.se != 0:
            raise ValueError(
                f"StageSpec.se: op {self.op!r} has no squeeze-excitation (not in the ResNet / "
                f"MobileNetV1 papers, and not implemented), expected 0, got {self.se}"
            )


@dataclass(frozen=True)
class ModelSpec:
    """A whole network: stem, stages, head and the defaults it is trained and evaluated with.

    ``round_limit`` is the "10% rule" of channel rounding that :func:`effnet.scaling.scale`
    applies to this family (0.9 for V1; 0.0 disables it, as the V2 code does).
    BatchNorm momentum follows the PyTorch convention: TF/Keras ``momentum=0.99`` is
    PyTorch ``momentum=0.01`` (PyTorch weights the *new* batch statistic).
    ``num_classes=0`` means no classifier: the network ends in the pooled features
    (``num_features`` wide), as timm's ``num_classes=0`` does, and a weight file of such a
    model holds no classifier tensors.

    The stem is a ``stem_kernel`` x ``stem_kernel`` stride-2 conv-BN-act (3 for EfficientNet
    and the MobileNets), followed by a 3x3 stride-2 max pool (padding 1) when ``stem_pool``
    (ResNet Table 1 "conv1" and "conv2_x": 7x7 conv then max pool). The head is a 1x1 conv-BN-act
    to ``head_channels``; ``head_channels=0`` means no head conv (ResNet, MobileNetV1): the last
    stage's output is pooled, so ``num_features`` is the last stage's ``channels``.
    """

    name: str
    stages: tuple[StageSpec, ...]
    stem_channels: int
    head_channels: int
    resolution: int
    stem_kernel: int = 3
    stem_pool: bool = False
    dropout: float = 0.2
    drop_path_rate: float = 0.2
    activation: str = "silu"
    bn_eps: float = 1e-3
    bn_momentum: float = 0.01
    padding: Padding = "symmetric"
    in_channels: int = 3
    num_classes: int = 1000
    round_limit: float = 0.9
    train_resolution: int | None = None
    width: float = 1.0
    depth: float = 1.0
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not self.stages:
            raise ValueError("ModelSpec.stages: expected at least one stage, got none")
        stages = tuple(s if isinstance(s, StageSpec) else StageSpec(**s) for s in self.stages)
        object.__setattr__(self, "stages", stages)
        if not isinstance(self.resolution, int) or self.resolution <= 0:
            raise ValueError(
                f"ModelSpec.resolution: expected a positive integer, got {self.resolution!r}"
            )
        for name in ("stem_channels", "in_channels"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"ModelSpec.{name}: expected a positive integer, got {value!r}")
        if not isinstance(self.head_channels, int) or self.head_channels < 0:
            raise ValueError(
                f"ModelSpec.head_channels: expected a non-negative integer (0: no head conv), "
                f"got {self.head_channels!r}"
            )
        k = self.stem_kernel
        if not isinstance(k, int) or k < 1 or k % 2 == 0:
            raise ValueError(f"ModelSpec.stem_kernel: expected an odd positive integer, got {k!r}")
        if not isinstance(self.stem_pool, bool):
            raise ValueError(f"ModelSpec.stem_pool: expected true or false, got {self.stem_pool!r}")
        if not isinstance(self.num_classes, int) or self.num_classes < 0:
            raise ValueError(
                f"ModelSpec.num_classes: expected a non-negative integer (0: no classifier), "
                f"got {self.num_classes!r}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ModelSpec.dropout: expected a rate in [0, 1), got {self.dropout}")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(
                f"ModelSpec.drop_path_rate: expected a rate in [0, 1), got {self.drop_path_rate}"
            )
        if self.padding not in _PADDINGS:
            raise ValueError(f"ModelSpec.padding: expected one of {_PADDINGS}, got {self.padding!r}")
        if self.activation not in _ACTIVATIONS:
            raise ValueError(
                f"ModelSpec.activation: expected one of {_ACTIVATIONS}, got {self.activation!r}"
            )

    @property
    def num_blocks(self) -> int:
        return sum(s.repeats for s in self.stages)

    @property
    def num_features(self) -> int:
        """Width of the pooled features the classifier sees: the head conv's channels, or the
        last stage's when there is no head conv (``head_channels == 0``)."""
        return self.head_channels or self.stages[-1].channels

    def replace(self, **changes: Any) -> ModelSpec:
        """A copy with ``changes`` applied (validated like a new spec)."""
        check_fields(type(self), changes, "spec")
        return dataclasses.replace(self, **changes)

    # --- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["stages"] = [_stage_dict(s) for s in self.stages]
        for name, default in _ADDED_FIELDS.items():
            if d[name] == default and type(d[name]) is type(default):
                del d[name]  # absent = the default (see _ADDED_FIELDS)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        if not isinstance(d, dict):
            raise ValueError(f"ModelSpec.from_dict: expected a mapping, got {type(d).__name__}")
        check_fields(cls, d, "spec")
        d = dict(d)
        d["stages"] = tuple(StageSpec(**s) for s in d.get("stages", ()))
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        return cls.from_dict(json.loads(text))

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> ModelSpec:
        import yaml

        return cls.from_dict(yaml.safe_load(text))

    def save(self, path: str | Path) -> Path:
        """Write the spec as YAML (``.yaml``/``.yml``) or JSON (anything else)."""
        path = Path(path)
        text = self.to_yaml() if path.suffix in (".yaml", ".yml") else self.to_json()
        return atomic_write(path, lambda tmp: Path(tmp).write_text(text))

    @classmethod
    def load(cls, path: str | Path) -> ModelSpec:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"spec file not found: {path}")
        import yaml

        try:
            text = path.read_text()
            return cls.from_yaml(text) if path.suffix in (".yaml", ".yml") else cls.from_json(text)
        except (yaml.YAMLError, json.JSONDecodeError, UnicodeDecodeError) as e:
            # The parser's own message names "<unicode string>" and spans lines: say which file,
            # and where in it, in one line.
            reason = _parse_error_reason(e)
            raise ValueError(f"{path}: not a readable spec file ({reason}); expected a "
                             f"YAML/JSON spec such as `effnet.get_spec(NAME).save(PATH)` writes") from e
        except TypeError as e:  # a field of the wrong type (a list where a number belongs ...)
            raise ValueError(f"{path}: a spec field has the wrong type ({e})") from e


def _parse_error_reason(e: Exception) -> str:
    """One line for a YAML/JSON parse error: ``line L, column C: problem`` where the parser says."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None)
    if mark is not None and problem:
        context = getattr(e, "context", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}"
        return f"{type(e).__name__}: {where}: {problem}" + (f" ({context})" if context else "")
    return f"{type(e).__name__}: " + " ".join(str(e).split())


def _stage_dict(stage: StageSpec) -> dict[str, Any]:
    d = dataclasses.asdict(stage)
    for name, default in _ADDED_STAGE_FIELDS.items():
        if d[name] == default and type(d[name]) is type(default):
            del d[name]  # absent = the default (see _ADDED_FIELDS)
    return d


@dataclass(frozen=True)
class FamilyRow:
    """A published family member *derived by scaling* a base spec: how to scale it (width,
    depth) and the member's own evaluation resolution, dropout and V2 training size.

    A member that is a paper table of its own (B0, V2-S/M/L/XL, V2-B0) is registered as its
    :class:`ModelSpec` directly; a row carries only the facts of the derived member, never a
    copy of the base's, so every number has one home. Sources: EfficientNet Table 2 / official
    ``efficientnet_params``; EfficientNetV2 official ``efficientnetv2_params``.

    The last five fields are the rules in which other families scale differently from V1
    (EfficientNet-Lite, EdgeTPU, TinyNet): data honoured by
    :func:`effnet.scaling.compound.from_family`, not separate builders.
    """

    base: ModelSpec
    width: float
    depth: float
    resolution: int
    dropout: float
    train_resolution: int | None = None
    # --- rules in which a family departs from V1's scaling (defaults: V1's own rules) ---
    #: "ceil" (the official V1 code) or "round" (to nearest: TinyNet, timm ``depth_trunc='round'``).
    depth_rounding: str = "ceil"
    #: False keeps the base's stem width (EfficientNet-Lite, TinyNet: a fixed 32-channel stem).
    scale_stem: bool = True
    #: "scaled" (V1), "fixed" (Lite keeps 1280) or "at_least_base" (TinyNet: max(1280, scaled)).
    head: HeadRule = "scaled"
    #: Stage indices (negative counts from the end) whose repeats are *not* scaled with depth
    #: (Lite: the first and the last stage).
    fixed_repeats: tuple[int, ...] = ()
    #: (stage index, nominal input channels): the official code sizes that stage's *first* block's
    #: hidden width as round_filters(nominal x width) x expand although its real input differs
    #: (EdgeTPU's first stage, ``i24`` on a 32-channel stem; see ``effnet.specs.edgetpu``).
    nominal_input: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        if self.depth_rounding not in ("ceil", "round"):
            raise ValueError(f"FamilyRow.depth_rounding: expected 'ceil' or 'round', got {self.depth_rounding!r}")
        if self.head not in _HEAD_RULES:
            raise ValueError(f"FamilyRow.head: expected one of {_HEAD_RULES}, got {self.head!r}")
        n = len(self.base.stages)
        for i in (*self.fixed_repeats, *(i for i, _ in self.nominal_input)):
            if not -n <= i < n:
                raise ValueError(f"FamilyRow: stage index {i} out of range for {n} stages of {self.base.name}")
