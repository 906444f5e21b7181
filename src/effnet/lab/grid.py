"""Step 1 of compound scaling, as a tool: find alpha, beta, gamma by training the grid.

EfficientNet section 3.3: "fixing phi = 1 ... we do a small grid search of alpha, beta, gamma
based on Equation 2 and 3" under alpha * beta^2 * gamma^2 ~= 2, alpha, beta, gamma >= 1; for B0
it found alpha = 1.2, beta = 1.1, gamma = 1.15. Here every grid point (``effnet scale grid``)
scales the baseline by (alpha^phi, beta^phi, gamma^phi) and is trained with effnet's own
training code (:func:`effnet.train.run_trial`, in-process) under one budget: the same recipe,
epochs and data; the input size grows with gamma^phi from the base's training size. The trials
live in an Optuna study (:mod:`effnet.lab.store`): resumable, shared by workers, prunable.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from effnet.lab import engine, store
from effnet.lab.budget import TrialBudget, base_spec, trial_budget
from effnet.scaling import ALPHA, BETA, GAMMA, compound_scale
from effnet.specs.base import ModelSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GridTrial:
    """One grid point's outcome (``state`` "complete" or "pruned"; a pruned point's top-1 is
    its last reported epoch's). ``flops`` is at the nominal size (``resolution``, what the grid
    matches), ``flops_trial`` at the size the point trained at; ``curve`` its per-epoch top-1 and
    ``status`` whether it had stopped improving (:func:`effnet.lab.engine.convergence`)."""

    key: str
    alpha: float
    beta: float
    gamma: float
    state: str
    top1: float
    flops: int
    flops_ratio: float
    flops_ratio_predicted: float
    params: int
    image_size: int
    epochs: int
    seconds: float
    step_ms: float
    flops_trial: int = 0
    curve: list[float] = field(default_factory=list)
    status: str = engine.IMPROVING


@dataclass
class GridReport(engine.LabReport):
    """A grid search's outcome: the rows, the best point and the files written."""

    base: str
    phi: float
    rows: list[GridTrial]
    best: GridTrial | None
    candidates: int
    epochs_per_candidate: int
    epochs_trained: int
    pruned: int

    @property
    def epochs_saved(self) -> int:
        """Training epochs the pruner spared, against training every point to the end."""
        return self.candidates * self.epochs_per_candidate - self.epochs_trained

    @property
    def complete(self) -> bool:
        return len(self.rows) == self.candidates

    def command(self, phis: str = "1 2 3 4 5 6 7") -> str:
        """The ``effnet scale`` command that scales the base with the best coefficients."""
        if self.best is None:
            return ""
        b = self.best
        return f"effnet scale --base {self.base} --alpha {b.alpha:g} --beta {b.beta:g} --gamma {b.gamma:g} --phi {phis}"

    def derived(self) -> dict[str, Any]:
        return {"epochs_saved": self.epochs_saved, "command": self.command()}


def study_candidates(base: Any, phi: float, step: float, tolerance: float) -> list[store.Candidate]:
    """The distinct grid points (``effnet scale grid``) as study candidates, with their
    measured FLOPs ratio."""
    from effnet.profile.sweep import measure_grid  # loads torch: the CLI parser imports this module

    rows = measure_grid(base, phi=phi, step=step, tolerance=tolerance)
    return [
        store.Candidate(
            key=f"a{r.alpha:.4g}_b{r.beta:.4g}_g{r.gamma:.4g}",
            params={"alpha": r.alpha, "beta": r.beta, "gamma": r.gamma},
            attrs={"flops": r.flops, "flops_ratio": r.flops_ratio,
                   "flops_ratio_predicted": r.flops_ratio_predicted},
        )
        for r in rows
    ]


#: EfficientNet section 3.3's answer for B0, retrained beside the search's own best by --validate.
PAPER_POINT = (ALPHA, BETA, GAMMA)


def search(
    base: str | ModelSpec = "efficientnet_b0", *, data: str = "digits", epochs: int = 4, phi: float = 1.0,
    step: float = 0.05, tolerance: float = 0.1, image_size: int | None = None, storage: str | None = None,
    study: str | None = None, workers: int = 1, prune: bool = False, out: str | Path = "scale_search",
    recipe: str | None = None, progress: bool = True, validate: int = 0, validate_epochs: int | None = None,
    **overrides: Any,
) -> GridReport:
    """Grid-search alpha, beta, gamma for ``base`` (a registered name or a spec file) on
    ``data`` (``digits`` or an image folder): train every grid point for ``epochs`` and
    report validation top-1 against FLOPs. Writes ``results.json``, ``table.txt`` and
    ``search.png`` into ``out`` and returns the report.

    - ``image_size``: the base's training size (default: 64 for digits, else the base's
      resolution); a point trains at ``image_size * gamma^phi`` (with a progressive recipe,
      its size range is scaled by gamma^phi).
    - ``storage``/``study``: an Optuna storage URL (default ``sqlite:///OUT/study.db``) and
      study name (default from the base and phi). The same command again resumes; another
      worker (``workers`` here, or the same command on another machine with the same URL)
      shares the grid.
    - ``prune``: successive halving (Optuna's ``SuccessiveHalvingPruner``) stops points
      whose accuracy after an epoch is in the lower part of those seen at that epoch.
    - ``validate``: retrain that many points (the best half and random others, plus the
      paper's (1.2, 1.1, 1.15) when in the grid) for ``validate_epochs`` (default 3x
      ``epochs``) and report the Kendall tau between the two rankings.
    - ``recipe`` and ``overrides``: the training recipe and any TrainConfig field
      (``batch_size``, ``train_subset``, ``seed``...), the same for every point.
    """
    engine.check_run(workers, validate)
    spec = base_spec(base)
    budget = trial_budget(spec, data=data, epochs=epochs, image_size=image_size, recipe=recipe, overrides=overrides)
    out = Path(out)
    storage = storage or store.default_storage(out)
    store.check_storage(storage)  # before the grid is measured
    candidates = study_candidates(spec, phi, step, tolerance)
    study = study or f"scale-{spec.name}-phi{phi:g}"
    settings = {"kind": "scale-search", "base": budget.base_id, "phi": phi, "step": step,
                "tolerance": tolerance, "prune": prune, **budget.settings}
    specs, sizes = {}, {}
    for c in candidates:
        a, b, g = c.params["alpha"], c.params["beta"], c.params["gamma"]
        specs[c.key] = compound_scale(spec, phi, a, b, g).replace(name=f"{spec.name}_{c.key}").to_dict()
        sizes[c.key] = budget.scaled_size(g**phi)
    job = engine.SpecJob(storage, study, settings, candidates, budget.to_dict(), specs, sizes, prune)
    engine.run_job(job, workers, progress, budget.warnings(),
                   "scale search %s: %d grid point(s), %d epoch(s) each at %d px x gamma^%g, study %r in %s",
                   spec.name, len(candidates), epochs, budget.image_size, phi, study, storage)
    rep = report(job, _base_arg(base, spec, out), phi, str(out), spec.name, write=False)
    if validate and rep.complete:
        scores = {r.key: r.top1 for r in rep.rows if r.state == "complete"}
        chosen = engine.pick_for_validation(scores, validate, seed=0)
        paper = next((r.key for r in rep.rows if (r.alpha, r.beta, r.gamma) == PAPER_POINT), None)
        if paper is not None and paper not in chosen and paper in scores:
            chosen.append(paper)
        by_key = {r.key: r for r in rep.rows}
        items = [(k, _label(by_key[k]), ModelSpec.from_dict(specs[k]), sizes[k], scores[k]) for k in chosen]
        if paper is None:
            # Off this grid (e.g. step 0.1): trained beside the search's answer all the same, unranked.
            a, b, g = PAPER_POINT
            items.append(("paper", f"paper ({a:g}, {b:g}, {g:g})",
                          compound_scale(spec, phi, a, b, g).replace(name=f"{spec.name}_paper"),
                          budget.scaled_size(g**phi), math.nan))
        rep.validation = engine.validate(
            budget, storage=storage, study_name=study, settings=settings, chosen=items,
            epochs=validate_epochs or engine.VALIDATE_FACTOR * epochs, workers=workers, progress=progress)
    return _write(rep, job, Path(out), spec.name)


def _label(r: GridTrial) -> str:
    return f"({r.alpha:g}, {r.beta:g}, {r.gamma:g})"


def _base_arg(base: str | ModelSpec, spec: ModelSpec, out: Path) -> str:
    """How the report's `effnet scale` command names the base: as given, or (a spec made in
    Python) the spec file written beside the results."""
    if isinstance(base, str):
        return base
    path = out / "base.yaml"
    out.mkdir(parents=True, exist_ok=True)
    spec.save(path)
    return str(path)


def report(job: engine.SpecJob, base: str, phi: float, out: str, base_name: str, write: bool = True) -> GridReport:
    """Read the study back into rows (and, with ``write``, write the JSON, table and plot)."""
    study = job.open()
    done = store.results(study)
    by_key = {c.key: c for c in job.candidates}
    rows = []
    for key, t in done.items():
        if key not in by_key:
            continue
        c, u = by_key[key], t.user_attrs
        curve = [float(v) for v in u.get("curve", [])]
        rows.append(GridTrial(
            key=key, alpha=c.params["alpha"], beta=c.params["beta"], gamma=c.params["gamma"],
            state="complete" if t.state.name == "COMPLETE" else "pruned",
            top1=float(t.value if t.value is not None else u.get("top1", math.nan)),
            flops=int(c.attrs["flops"]), flops_ratio=float(c.attrs["flops_ratio"]),
            flops_ratio_predicted=float(c.attrs["flops_ratio_predicted"]), params=int(u.get("params", 0)),
            image_size=int(u.get("image_size", 0)), epochs=int(u.get("epochs_trained", 0)),
            seconds=float(u.get("seconds", math.nan)), step_ms=float(u.get("step_ms", math.nan)),
            flops_trial=int(u.get("flops_trained", 0)), curve=curve, status=engine.convergence(curve),
        ))
    rows.sort(key=lambda r: (r.alpha, r.beta, r.gamma))
    complete = [r for r in rows if r.state == "complete"]
    best = max(complete, key=lambda r: (r.top1, -r.flops)) if complete else None
    budget = TrialBudget.from_dict(job.budget)
    rep = GridReport(
        study=job.study_name, storage=job.storage, base=base, phi=phi, rows=rows, best=best,
        candidates=len(job.candidates), epochs_per_candidate=int(job.budget["epochs"]),
        epochs_trained=sum(r.epochs for r in rows), pruned=sum(r.state == "pruned" for r in rows),
        protocol={**budget.protocol(), "flops_at": "nominal resolution (flops) and trial size (flops_trial)"},
        warnings=budget.warnings(),
    )
    return _write(rep, job, Path(out), base_name) if write else rep


def _write(rep: GridReport, job: engine.SpecJob, folder: Path, base_name: str) -> GridReport:
    # effnet.viz loads torch on import, and the CLI parser imports this module.
    from effnet.viz.plots import plot_accuracy_flops

    def draw(path: Path) -> None:
        best = rep.best
        points = [{"label": _label(r) + engine.mark(r.status), "flops": r.flops, "top1": r.top1,
                   "pruned": r.state == "pruned"} for r in rep.rows]
        marked = {"label": f"best {_label(best)}{engine.mark(best.status)}", "flops": best.flops,
                  "top1": best.top1} if best else None
        plot_accuracy_flops(path, points, best=marked,
                            title=f"{base_name}: grid of (alpha, beta, gamma) at phi={rep.phi:g}\n"
                                  + engine.figure_note(job.budget, [r.status for r in rep.rows], rep.validation))

    engine.write_report(rep, folder, format_table, "search.png", draw if rep.rows else None)
    return rep


def format_table(rep: GridReport) -> str:
    head = (f"{'alpha':>5} {'beta':>5} {'gamma':>5}  {'FLOPs x pred':>12} {'x meas':>7}  {'FLOPs':>8}  "
            f"{'@trial':>8}  {'params':>8}  {'px':>4}  {'top-1':>7}  {'epochs':>6}  {'train s':>7}  {'step ms':>7}  "
            "state")

    def line(r: GridTrial) -> str:
        mark = "  <- best" if rep.best is not None and r.key == rep.best.key else ""
        return (f"{r.alpha:5.2f} {r.beta:5.2f} {r.gamma:5.2f}  {r.flops_ratio_predicted:12.3f} "
                f"{r.flops_ratio:7.3f}  {r.flops / 1e6:7.1f}M  {r.flops_trial / 1e6:7.1f}M  "
                f"{r.params / 1e6:7.2f}M  {r.image_size:4d}  {r.top1:6.2f}{engine.mark(r.status):1}  {r.epochs:6d}  "
                f"{r.seconds:7.1f}  {r.step_ms:7.1f}  {r.state}{mark}")

    done = (f"{len(rep.rows)}/{rep.candidates} grid point(s) done, {rep.pruned} pruned; "
            f"{rep.epochs_trained} training epoch(s) of {rep.candidates * rep.epochs_per_candidate} "
            f"for the full grid ({rep.epochs_saved} saved by pruning)" if rep.complete else
            f"{len(rep.rows)}/{rep.candidates} grid point(s) done so far: run the same command to go on")
    best = rep.best
    named = [f"best: alpha={best.alpha:g} beta={best.beta:g} gamma={best.gamma:g} (top-1 {best.top1:.2f}%)",
             f"scale with it: {rep.command()}"] if best is not None else []
    return engine.format_table(rep, head, rep.rows, line, [done],
                               engine.winner_lines(rep, rep.rows, "the best point", best, named))
