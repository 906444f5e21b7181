"""Architecture search spaces as data: per stage of a base network, the choices a search may make.

EfficientNetV2 section 3.3: "Our search space is a stage-based factorized space similar to
(Tan et al., 2019), which consists of the design choices for convolutional operation types
{MBConv, Fused-MBConv}, number of layers, kernel size {3x3, 5x5}, expansion ratio {1, 4, 6}
... we reuse the same channel sizes from the backbone". MnasNet (Tan et al. 2019, section 4.1)
factorises the same way, per block (stage): conv op, kernel {3, 5}, SE ratio {0, 0.25},
layers {-1, 0, +1} relative to the backbone.

A :class:`SearchSpace` is a base :class:`~effnet.specs.base.ModelSpec` and one
:class:`StageChoices` per base stage; channels and strides always come from the base, so every
candidate has the base's stage boundaries and output stride. A candidate is a plain ModelSpec
(built, saved, loaded and trained like any other). Spaces are checked when made: a
choice no StageSpec accepts, or a layer delta that would leave a stage with no block, is refused
before anything trains.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from effnet.lab.budget import base_spec
from effnet.registry import get_spec
from effnet.specs.base import ModelSpec, StageSpec

if TYPE_CHECKING:
    import optuna

#: The block ops a search may choose (EfficientNetV2 section 3.3).
SEARCH_OPS = ("mbconv", "fused")


class SpaceError(ValueError):
    """A search space that is malformed or cannot produce a valid network (names the field)."""


@dataclass(frozen=True)
class StageChoices:
    """The choices for one stage: each a tuple of the values a candidate may take.

    ``layers`` are deltas added to the base stage's ``repeats`` (MnasNet's "skip ops"/layer
    count choice, section 4.1), so that one space serves the base at any depth."""

    op: tuple[str, ...]
    kernel: tuple[int, ...]
    expand: tuple[float, ...]
    se: tuple[float, ...]
    layers: tuple[int, ...]

    @property
    def size(self) -> int:
        return math.prod(len(getattr(self, f.name)) for f in fields(self))


@dataclass(frozen=True)
class SearchSpace:
    """A stage-wise factorised space around ``base`` (one :class:`StageChoices` per stage)."""

    name: str
    base: ModelSpec
    stages: tuple[StageChoices, ...]
    source: str = ""

    def __post_init__(self) -> None:
        check_space(self)

    @property
    def size(self) -> int:
        """The number of distinct candidates: the product of every stage's choice counts."""
        return math.prod(s.size for s in self.stages)

    @property
    def space_id(self) -> str:
        """The space's name and a digest of its base and choices: a study records the space it
        searched, so that resuming it with another space of the same name is refused."""
        blob = json.dumps({"base": self.base.to_dict(), "stages": [_stage_dict(s) for s in self.stages]},
                          sort_keys=True, default=str)
        return f"{self.name}@{hashlib.sha256(blob.encode()).hexdigest()[:12]}"

    def param_names(self, i: int) -> dict[str, str]:
        """Optuna parameter names of stage ``i``'s choices (``s0_op``, ``s0_kernel``...)."""
        return {f.name: f"s{i}_{f.name}" for f in fields(StageChoices)}

    def sample(self, trial: optuna.Trial) -> ModelSpec:
        """Draw a candidate through ``trial.suggest_categorical`` (one categorical per stage and
        choice), so that any Optuna sampler (TPE, random, NSGA-II) searches the space; a
        re-queued trial gets its recorded values back."""
        params: dict[str, Any] = {}
        for i, stage in enumerate(self.stages):
            for field_name, param in self.param_names(i).items():
                params[param] = trial.suggest_categorical(param, list(getattr(stage, field_name)))
        return self.candidate(params)

    def candidate(self, params: Mapping[str, Any]) -> ModelSpec:
        """The spec for one point of the space (``params`` as :meth:`sample` records them)."""
        stages = []
        for i, (base, choices) in enumerate(zip(self.base.stages, self.stages)):
            names = self.param_names(i)
            missing = sorted(n for n in names.values() if n not in params)
            if missing:
                raise SpaceError(f"candidate of space {self.name!r}: parameter(s) {missing} missing")
            value = {f: params[p] for f, p in names.items()}
            for f, v in value.items():
                if v not in getattr(choices, f):
                    raise SpaceError(f"candidate of space {self.name!r}: {names[f]}={v!r} is not one of "
                                     f"{list(getattr(choices, f))}")
            stages.append(StageSpec(op=value["op"], repeats=base.repeats + int(value["layers"]),
                                    kernel=int(value["kernel"]), stride=base.stride, expand=value["expand"],
                                    channels=base.channels, se=float(value["se"])))
        digest = hashlib.sha256(json.dumps(sorted(params.items()), default=str).encode()).hexdigest()[:8]
        return self.base.replace(name=f"{self.base.name}_search_{digest}", stages=tuple(stages),
                                 source=f"effnet search, space {self.name}")

    def base_params(self) -> dict[str, Any] | None:
        """The base network as a point of the space (every choice its own value, delta 0), or
        ``None`` when the space does not contain it."""
        params: dict[str, Any] = {}
        for i, (base, choices) in enumerate(zip(self.base.stages, self.stages)):
            own = {"op": base.op, "kernel": base.kernel, "expand": base.expand, "se": base.se, "layers": 0}
            for f, v in own.items():
                if v not in getattr(choices, f):
                    return None
                params[f"s{i}_{f}"] = v
        return params

    def contains(self, spec: ModelSpec) -> bool:
        """Whether ``spec`` is a candidate of this space (same channels and strides as the base,
        every stage's op, kernel, expansion, SE and layer delta among the choices)."""
        if len(spec.stages) != len(self.base.stages):
            return False
        for base, choices, s in zip(self.base.stages, self.stages, spec.stages):
            if (s.channels, s.stride) != (base.channels, base.stride):
                return False
            if s.op not in choices.op or s.kernel not in choices.kernel or s.expand not in choices.expand \
                    or s.se not in choices.se or s.repeats - base.repeats not in choices.layers:
                return False
        return True

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "base": self.base.name, "source": self.source,
                "stages": [_stage_dict(s) for s in self.stages]}

    def describe(self) -> str:
        """One line per stage: the base row and its choices."""
        lines = [f"space {self.name} around {self.base.name}: {self.size:,} candidates"]
        for i, (b, c) in enumerate(zip(self.base.stages, self.stages)):
            lines.append(f"  stage {i} ({b.channels} ch, stride {b.stride}, {b.repeats} layers): op {list(c.op)}, "
                         f"kernel {list(c.kernel)}, expand {list(c.expand)}, se {list(c.se)}, "
                         f"layers {[f'{d:+d}' for d in c.layers]}")
        return "\n".join(lines)


def _stage_dict(s: StageChoices) -> dict[str, list[Any]]:
    return {f.name: list(getattr(s, f.name)) for f in fields(s)}


def check_space(space: SearchSpace) -> None:
    """Refuse a space that is malformed or has a candidate that is no valid network, naming the
    field: each choice must be a non-empty list of distinct values StageSpec accepts, and no
    layer delta may leave a stage with fewer than one block. (Removing a stage would drop a
    stride-2 reduction or a channel change: another backbone, not a point of this space.)"""
    where = space.name
    if len(space.stages) != len(space.base.stages):
        raise SpaceError(f"space {where}: stages: expected one entry per stage of {space.base.name} "
                         f"({len(space.base.stages)}), got {len(space.stages)}")
    for i, (base, c) in enumerate(zip(space.base.stages, space.stages)):
        at = f"space {where}: stages[{i}]"
        for f in fields(StageChoices):
            values = getattr(c, f.name)
            if not isinstance(values, tuple) or not values:
                raise SpaceError(f"{at}.{f.name}: expected a non-empty list of choices, got {values!r}")
            if len(set(values)) != len(values):
                raise SpaceError(f"{at}.{f.name}: expected distinct choices, got {list(values)}")
        bad_op = [o for o in c.op if o not in SEARCH_OPS]
        if bad_op:
            raise SpaceError(f"{at}.op: expected choices among {list(SEARCH_OPS)}, got {bad_op}")
        for name in ("kernel", "layers"):
            bad = [v for v in getattr(c, name) if isinstance(v, bool) or not isinstance(v, int)]
            if bad:
                raise SpaceError(f"{at}.{name}: expected integers, got {bad}")
        bad = [k for k in c.kernel if k < 1 or k % 2 == 0]
        if bad:
            raise SpaceError(f"{at}.kernel: expected odd positive kernel sizes, got {bad}")
        bad = [e for e in c.expand if isinstance(e, bool) or not isinstance(e, (int, float)) or e < 1]
        if bad:
            raise SpaceError(f"{at}.expand: expected expansion ratios >= 1, got {bad}")
        bad = [r for r in c.se if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 <= r < 1]
        if bad:
            raise SpaceError(f"{at}.se: expected squeeze-excitation ratios in [0, 1), got {bad}")
        fewest = base.repeats + min(c.layers)
        if fewest < 1:
            kind = "a stride-2 stage (the network would lose a resolution reduction)" if base.stride == 2 \
                else f"a stage (the change to {base.channels} channels)"
            raise SpaceError(f"{at}.layers: delta {min(c.layers):+d} on the base's {base.repeats} layer(s) leaves "
                             f"{fewest}: it would remove {kind}; expected deltas >= {1 - base.repeats}")
        try:  # every per-stage combination must be a valid row (StageSpec's own checks)
            for op in c.op:
                for k in c.kernel:
                    for e in c.expand:
                        for r in c.se:
                            StageSpec(op, fewest, k, base.stride, e, base.channels, r)
        except ValueError as e:
            raise SpaceError(f"{at}: {e}") from e


# --- built-in spaces ----------------------------------------------------------------------------
def around(base: ModelSpec, name: str, *, op: Sequence[str], kernel: Sequence[int], expand: Sequence[float],
           se: Sequence[float], layers: Sequence[int] = (-1, 0, 1), source: str = "") -> SearchSpace:
    """The same choices for every stage of ``base``; layer deltas that would empty a stage are
    dropped for that stage (a one-layer stage gets {0, +1})."""
    stages = tuple(
        StageChoices(op=tuple(op), kernel=tuple(kernel), expand=tuple(expand), se=tuple(se),
                     layers=tuple(d for d in layers if s.repeats + d >= 1))
        for s in base.stages
    )
    return SearchSpace(name=name, base=base, stages=stages, source=source)


def _v2(base_name: str, name: str) -> SearchSpace:
    return around(get_spec(base_name), name, op=SEARCH_OPS, kernel=(3, 5), expand=(1, 4, 6), se=(0.0, 0.25),
                  source="EfficientNetV2 section 3.3 (op, kernel, expansion, layers; channels from the "
                         "backbone) with MnasNet's SE choice {0, 0.25}")


def _b0(name: str) -> SearchSpace:
    # MnasNet section 4.1: conv ops {depthwise-separable, MB3, MB6} (an MBConv of expansion 1 is a
    # depthwise-separable conv), kernel {3, 5}, SE {0, 0.25}, layers {-1, 0, +1}.
    return around(get_spec("efficientnet_b0"), name, op=("mbconv",), kernel=(3, 5), expand=(1, 3, 6),
                  se=(0.0, 0.25), source="MnasNet section 4.1 per-stage choices (EfficientNet B0's search)")


#: Built-in spaces: name -> factory (made on demand: building one reads the registry).
BUILTIN = {
    "v2-s": lambda: _v2("efficientnetv2_s", "v2-s"),
    "v2-b0": lambda: _v2("efficientnetv2_b0", "v2-b0"),
    "b0": lambda: _b0("b0"),
}


# --- user files ---------------------------------------------------------------------------------
_CHOICE_FIELDS = tuple(f.name for f in fields(StageChoices))


def space_from_dict(d: Any, *, where: str = "space", folder: Path | None = None) -> SearchSpace:
    """A space from its YAML form::

        name: my-space                 # optional (default: the file's stem)
        base: efficientnetv2_b0        # a registered model, or a spec file (relative to this file)
        default:                       # choices for every stage (optional)
          op: [mbconv, fused]
          kernel: [3, 5]
          expand: [1, 4, 6]
          se: [0, 0.25]
          layers: [0, 1]
        stages:                        # optional: one entry per base stage, overriding default
          - {op: [fused], layers: [0]}
          - {}

    A choice missing from both keeps the base stage's own value (layers: 0)."""
    if not isinstance(d, dict):
        raise SpaceError(f"{where}: expected a mapping with base, default and/or stages, got {type(d).__name__}")
    unknown = sorted(set(d) - {"name", "base", "default", "stages", "source"})
    if unknown:
        raise SpaceError(f"{where}: unknown field(s) {unknown}; expected name, base, default, stages, source")
    if "base" not in d:
        raise SpaceError(f"{where}: base: missing; expected a registered model name or a spec file")
    base_arg = d["base"]
    if isinstance(base_arg, ModelSpec):
        base = base_arg
    else:
        if not isinstance(base_arg, str):
            raise SpaceError(f"{where}: base: expected a model name or spec file, got {base_arg!r}")
        if folder is not None and Path(base_arg).suffix in (".yaml", ".yml", ".json") \
                and not Path(base_arg).is_absolute():
            base_arg = str(folder / base_arg)
        try:
            base = base_spec(base_arg)
        except (ValueError, KeyError, FileNotFoundError) as e:
            raise SpaceError(f"{where}: base: {e}") from e
    default = d.get("default") or {}
    if not isinstance(default, dict):
        raise SpaceError(f"{where}: default: expected a mapping of choices, got {default!r}")
    rows = d.get("stages")
    if rows is None:
        rows = [{} for _ in base.stages]
    if not isinstance(rows, list) or len(rows) != len(base.stages):
        got = len(rows) if isinstance(rows, list) else repr(rows)
        raise SpaceError(f"{where}: stages: expected a list of {len(base.stages)} entries (one per stage of "
                         f"{base.name}), got {got}")
    stages = []
    for i, (b, row) in enumerate(zip(base.stages, rows)):
        if not isinstance(row, dict):
            raise SpaceError(f"{where}: stages[{i}]: expected a mapping of choices, got {row!r}")
        for label, part in ((f"stages[{i}]", row), ("default", default)):
            bad = sorted(set(part) - set(_CHOICE_FIELDS))
            if bad:
                raise SpaceError(f"{where}: {label}.{bad[0]}: unknown choice; expected {list(_CHOICE_FIELDS)}")
        own = {"op": b.op, "kernel": b.kernel, "expand": b.expand, "se": b.se, "layers": 0}
        values = {}
        for f in _CHOICE_FIELDS:
            v = row.get(f, default.get(f, own[f]))
            v = v if isinstance(v, list) else [v]
            values[f] = tuple(v)
        stages.append(StageChoices(**values))
    name = str(d.get("name") or where)
    try:
        return SearchSpace(name=name, base=base, stages=tuple(stages), source=str(d.get("source", "")))
    except SpaceError as e:  # name the file, not only the space
        raise SpaceError(str(e).replace(f"space {name}", where, 1)) from e


def load_space(space: str | Path | SearchSpace) -> SearchSpace:
    """A built-in space (``v2-s``, ``v2-b0``, ``b0``), a YAML file, or a space as given."""
    if isinstance(space, SearchSpace):
        return space
    if str(space) in BUILTIN:
        return BUILTIN[str(space)]()
    path = Path(space)
    if path.suffix not in (".yaml", ".yml"):
        raise SpaceError(f"space {space!r}: expected one of {sorted(BUILTIN)} or a YAML file")
    if not path.is_file():
        raise FileNotFoundError(f"space file not found: {path}")
    import yaml

    try:
        d = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SpaceError(f"space file {path}: not valid YAML ({e})") from e
    if isinstance(d, dict):
        d.setdefault("name", path.stem)
    return space_from_dict(d, where=f"space file {path}", folder=path.parent)
