"""Scaling strategies compared at matched FLOPs, trained on your data (EfficientNet Figure 3,
Figure 8 and Table 3: width, depth, resolution and compound scaling of one baseline, each
scaled to the same FLOPs and trained alike).

For each strategy and FLOPs multiple, the strategy's coefficient phi is solved for so that
the *measured* FLOPs of the scaled model are within ``tolerance`` (5%) of the multiple; each
scaled model and the baseline are then trained under one budget in a shared Optuna study
(resumable, several workers) and plotted as accuracy against FLOPs, one line per strategy.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import effnet.profile
from effnet.lab import engine, store
from effnet.lab.budget import base_spec, trial_budget
from effnet.scaling.strategies import get_strategy
from effnet.specs.base import ModelSpec

# effnet.profile loads its torch-backed names on first use (PEP 562): the CLI parser imports
# this module, which must not load torch.

log = logging.getLogger(__name__)

DEFAULT_STRATEGIES = ("width", "depth", "resolution", "compound")


@dataclass(frozen=True)
class Matched:
    """A strategy's model at one FLOPs multiple."""

    strategy: str
    multiple: float
    phi: float
    spec: ModelSpec
    flops: int
    flops_ratio: float


def solve_phi(base: ModelSpec, strategy: str, multiple: float, *, tolerance: float = 0.05,
              iterations: int = 30) -> Matched:
    """The phi at which ``strategy`` scales ``base`` to ``multiple`` times its measured FLOPs.

    FLOPs grow with phi for every strategy, but in steps (channels round to 8, repeats to
    integers), so the ratio is bracketed and bisected; of the bracket's two ends the closer
    wins. A multiple no phi reaches within ``tolerance`` is refused, naming the closest.
    """
    if multiple <= 0:
        raise ValueError(f"FLOPs multiple: expected > 0, got {multiple}")
    if tolerance <= 0:
        raise ValueError(f"tolerance: expected > 0, got {tolerance}")
    rule = get_strategy(strategy)
    base_flops = effnet.profile.count_flops(base)
    cache: dict[float, tuple[ModelSpec, float]] = {}
    counted: dict[ModelSpec, float] = {}  # rounding maps whole ranges of phi to one architecture

    def ratio(phi: float) -> float:
        if phi not in cache:
            spec = rule.apply(base, phi)
            if spec not in counted:
                counted[spec] = effnet.profile.count_flops(spec) / base_flops
            cache[phi] = (spec, counted[spec])
        return cache[phi][1]

    lo, hi = 0.0, 1.0 if multiple >= 1 else -1.0
    if multiple < 1:
        lo, hi = hi, lo
    for _ in range(12):  # widen the bracket until it holds the multiple
        if ratio(lo) <= multiple <= ratio(hi):
            break
        lo, hi = (hi, hi * 2) if multiple >= 1 else (lo * 2, lo)
    else:
        raise ValueError(f"strategy {strategy!r} does not reach {multiple:g}x the FLOPs of {base.name} "
                         f"for phi in [{lo:g}, {hi:g}]")
    for _ in range(iterations):
        mid = (lo + hi) / 2
        if ratio(mid) < multiple:
            lo = mid
        else:
            hi = mid
        # Close enough, or the bracket is finer than any phi a user would quote (FLOPs move in
        # rounding steps, so the ratio may never come within 1e-3 of the multiple).
        if abs(ratio(hi) / multiple - 1) < 1e-3 or hi - lo < 1e-4:
            break
    phi = min((lo, hi), key=lambda p: abs(ratio(p) / multiple - 1))
    spec, r = cache[phi]
    if abs(r / multiple - 1) > tolerance:
        raise ValueError(f"strategy {strategy!r} cannot scale {base.name} to {multiple:g}x FLOPs within "
                         f"{tolerance:.0%}: the closest is {r:.3f}x at phi={phi:.4g} (rounding of channels or "
                         f"repeats makes the FLOPs jump there); pick another multiple")
    flops = effnet.profile.count_flops(spec)
    return Matched(strategy, multiple, phi, spec.replace(name=f"{base.name}_{strategy}_x{multiple:g}"), flops, r)


@dataclass(frozen=True)
class StudyRow:
    strategy: str  # "baseline" for the unscaled base
    multiple: float
    phi: float
    depth: float
    width: float
    resolution: int
    flops: int
    flops_ratio: float
    params: int
    image_size: int
    top1: float
    seconds: float
    flops_trial: int = 0  # at the size it trained at (``flops`` is at its nominal ``resolution``)
    curve: list[float] = field(default_factory=list)
    status: str = engine.IMPROVING

    @property
    def key(self) -> str:
        return "baseline" if self.strategy == "baseline" else f"{self.strategy}@{self.multiple:g}"


@dataclass
class StudyReport(engine.LabReport):
    """A scaling study's outcome: a row per trained model (the baseline among them)."""

    base: str
    rows: list[StudyRow]
    candidates: int

    def summary(self) -> list[str]:
        """What the study can conclude: per FLOPs multiple, the best strategy, and whether the
        candidates it beat had converged (a winner among unconverged points is provisional)."""
        out = []
        classes = self.protocol.get("classes")
        chance = engine.chance_line([r.top1 for r in self.rows], classes)
        if chance and all(engine.at_chance(r.top1, classes) for r in self.rows):
            return [chance.replace("warning: ", "") + "; the study concludes nothing"]
        if chance:
            out.append(chance)
        base = next((r for r in self.rows if r.strategy == "baseline"), None)
        for m in sorted({r.multiple for r in self.rows if r.strategy != "baseline"}):
            at = sorted((r for r in self.rows if r.strategy != "baseline" and r.multiple == m), key=lambda r: -r.top1)
            best = at[0]
            gap = f", {best.top1 - at[1].top1:+.2f} over {at[1].strategy}" if len(at) > 1 else ""
            line = f"at {m:g}x FLOPs: {best.strategy} best ({best.top1:.2f}%{gap})"
            noise = engine.noise_points(best.top1, self.protocol.get("val_images"))
            if len(at) > 1 and best.top1 - at[1].top1 < noise:
                line += (f"; within the validation noise (2 standard errors = {noise:.1f} points on "
                         f"{self.protocol.get('val_images')} images): not a ranking")
            if any(r.status != engine.CONVERGED for r in at):
                line += "; provisional: " + ", ".join(r.strategy for r in at if r.status != engine.CONVERGED) + \
                        " still improving, so more epochs may reorder them"
            out.append(line)
        if base is not None:
            far = [r for r in self.rows if r.strategy != "baseline" and base.top1 - r.top1 > 10]
            for r in far:
                out.append(f"{r.key}: {base.top1 - r.top1:.1f} points under the baseline"
                           + (" and still improving: at this budget it shows how fast the model trains, not what "
                              "the strategy reaches (give more --epochs)" if r.status != engine.CONVERGED
                              else ", converged"))
        saturated = [r for r in self.rows if r.top1 >= 99.0]
        if len(saturated) >= 2:
            out.append(f"{len(saturated)} model(s) at >= 99% top-1: the data set is too easy to separate them at "
                       "this size; differences below the validation noise (~1 point) are not findings")
        return out

    def row_dict(self, row: StudyRow) -> dict[str, Any]:
        return {**asdict(row), "key": row.key}

    def derived(self) -> dict[str, Any]:
        return {"summary": self.summary()}


def study(
    base: str | ModelSpec = "efficientnet_b0", *, data: str = "digits", flops: tuple[float, ...] = (2.0,),
    strategies: tuple[str, ...] = DEFAULT_STRATEGIES, epochs: int = 4, image_size: int | None = None,
    storage: str | None = None, study_name: str | None = None, workers: int = 1, tolerance: float = 0.05,
    out: str | Path = "scale_study", recipe: str | None = None, progress: bool = True, validate: int = 0,
    validate_epochs: int | None = None, **overrides: Any,
) -> StudyReport:
    """Scale ``base`` by each of ``strategies`` to each FLOPs multiple in ``flops`` (matched
    within ``tolerance``), train those models and the baseline under one budget, and write
    ``results.json``, ``table.txt`` and ``study.png`` (accuracy against FLOPs, a line per
    strategy) into ``out``. Storage, resume, workers and ``validate`` as
    :func:`effnet.lab.search`."""
    if not flops:
        raise ValueError("flops: give at least one FLOPs multiple, e.g. 2")
    if not strategies:
        raise ValueError("strategies: give at least one strategy")
    engine.check_run(workers, validate)
    too_big = [m for m in flops if not 0 < m <= MAX_MULTIPLE]
    if too_big:
        raise ValueError(f"flops: FLOPs multiples are ratios to the base, in (0, {MAX_MULTIPLE:g}]; got "
                         f"{', '.join(f'{m:g}' for m in too_big)} (e.g. --flops 2,4)")
    spec = base_spec(base)
    budget = trial_budget(spec, data=data, epochs=epochs, image_size=image_size, recipe=recipe, overrides=overrides)
    out = Path(out)
    storage = storage or store.default_storage(out)
    store.check_storage(storage)  # before the candidates are matched and measured
    matched = [solve_phi(spec, s, m, tolerance=tolerance) for s in strategies for m in flops]
    base_flops = effnet.profile.count_flops(spec)
    candidates = [store.Candidate("baseline", {"phi": 0.0}, {"strategy": "baseline", "multiple": 1.0,
                                                             "flops": base_flops, "flops_ratio": 1.0})]
    specs = {"baseline": spec.to_dict()}
    sizes = {"baseline": budget.image_size}
    for m in matched:
        key = f"{m.strategy}@{m.multiple:g}"
        candidates.append(store.Candidate(key, {"phi": m.phi}, {"strategy": m.strategy, "multiple": m.multiple,
                                                               "flops": m.flops, "flops_ratio": m.flops_ratio}))
        specs[key] = m.spec.to_dict()
        sizes[key] = budget.scaled_size(m.spec.resolution / spec.resolution)
    study_name = study_name or f"study-{spec.name}"
    settings = {"kind": "scale-study", "base": budget.base_id, "flops": sorted(flops),
                "strategies": sorted(strategies), "tolerance": tolerance, **budget.settings}
    job = engine.SpecJob(storage, study_name, settings, candidates, budget.to_dict(), specs, sizes)
    engine.run_job(job, workers, progress, budget.warnings(),
                   "scaling study of %s: %d model(s) (%s at %s x FLOPs, and the baseline), %d epoch(s) each",
                   spec.name, len(candidates), ", ".join(strategies), ", ".join(f"{m:g}" for m in flops), epochs)
    rep = _report(job, spec, budget)
    if validate and len(rep.rows) == rep.candidates:
        scores = {r.key: r.top1 for r in rep.rows}
        chosen = engine.pick_for_validation(scores, validate, seed=0)
        rep.validation = engine.validate(
            budget, storage=storage, study_name=study_name, settings=settings,
            chosen=[(k, k, ModelSpec.from_dict(specs[k]), sizes[k], scores[k]) for k in chosen],
            epochs=validate_epochs or engine.VALIDATE_FACTOR * epochs, workers=workers, progress=progress)
    return _write(rep, out)


#: Largest FLOPs multiple a study accepts: a ratio to the base, not a FLOPs count (1e9 would
#: ask for a model a billion times the base's cost).
MAX_MULTIPLE = 64.0


def _report(job: engine.SpecJob, base: ModelSpec, budget: Any) -> StudyReport:
    done = store.results(job.open())
    rows = []
    for c in job.candidates:
        t = done.get(c.key)
        if t is None:
            continue
        s = ModelSpec.from_dict(job.specs[c.key])
        u = t.user_attrs
        curve = [float(v) for v in u.get("curve", [])]
        rows.append(StudyRow(
            strategy=c.attrs["strategy"], multiple=c.attrs["multiple"], phi=c.params["phi"],
            depth=s.depth / base.depth, width=s.width / base.width, resolution=s.resolution,
            flops=c.attrs["flops"], flops_ratio=c.attrs["flops_ratio"], params=int(u.get("params", 0)),
            image_size=int(u.get("image_size", 0)), top1=float(t.value if t.value is not None else math.nan),
            seconds=float(u.get("seconds", math.nan)), flops_trial=int(u.get("flops_trained", 0)), curve=curve,
            status=engine.convergence(curve),
        ))
    return StudyReport(job.study_name, job.storage, base.name, rows, len(job.candidates),
                       protocol={**budget.protocol(), "flops_at": "nominal resolution (flops) and trial size "
                                                                  "(flops_trial)"},
                       warnings=budget.warnings())


def _write(rep: StudyReport, out: Path) -> StudyReport:
    # effnet.viz loads torch on import, and the CLI parser imports this module.
    from effnet.viz.plots import plot_strategies

    def draw(path: Path) -> None:
        baseline = next((r for r in rep.rows if r.strategy == "baseline"), None)
        lines: dict[str, list[tuple[float, float]]] = {}
        for r in rep.rows:
            if r.strategy != "baseline":
                lines.setdefault(r.strategy, []).append((r.flops, r.top1))
        # A strategy with an unconverged point is named with a * in the legend.
        lines = {k + ("*" if any(r.strategy == k and r.status != engine.CONVERGED for r in rep.rows) else ""): v
                 for k, v in lines.items()}
        if baseline is not None:
            for pts in lines.values():
                pts.append((baseline.flops, baseline.top1))
        plot_strategies(path, {k: sorted(v) for k, v in lines.items()},
                        baseline=(baseline.flops, baseline.top1) if baseline else None,
                        title=f"{rep.base} scaled at matched FLOPs\n"
                              + engine.figure_note(rep.protocol, [r.status for r in rep.rows], rep.validation))

    engine.write_report(rep, out, format_study, "study.png", draw if rep.rows else None)
    return rep


def format_study(rep: StudyReport) -> str:
    head = (f"{'strategy':<10} {'FLOPs x':>7} {'phi':>7}  {'depth':>5} {'width':>5} {'res':>4}  {'FLOPs':>8} "
            f"{'x meas':>6}  {'@trial':>8}  {'params':>7}  {'px':>4}  {'top-1':>7}  {'train s':>7}  curve (top-1 per epoch)")

    def line(r: StudyRow) -> str:
        curve = " ".join(f"{v:.0f}" for v in r.curve)
        return (f"{r.strategy:<10} {r.multiple:7g} {r.phi:7.3f}  {r.depth:5.2f} {r.width:5.2f} "
                f"{r.resolution:4d}  {r.flops / 1e6:7.1f}M {r.flops_ratio:6.3f}  {r.flops_trial / 1e6:7.1f}M  "
                f"{r.params / 1e6:6.2f}M  {r.image_size:4d}  {r.top1:6.2f}{engine.mark(r.status):1}  "
                f"{r.seconds:7.1f}  {curve}")

    notes = ([f"{len(rep.rows)}/{rep.candidates} model(s) done so far: run the same command to go on"]
             if len(rep.rows) < rep.candidates else [])
    return engine.format_table(rep, head, rep.rows, line, notes, rep.summary() if rep.rows else [])
