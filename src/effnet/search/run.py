"""Training-aware architecture search (EfficientNetV2 section 3.3) and the FLOPs/latency-aware
search of EfficientNet-B0 (MnasNet), on the user's device and data.

Each trial draws a candidate from a :class:`~effnet.search.space.SearchSpace` through the
study's sampler, measures it (training step time S on the device in use, parameters P, FLOPs),
trains it briefly under one :class:`~effnet.lab.budget.TrialBudget` for its accuracy A, and
records all of them with the reward. The study (Optuna's, through :mod:`effnet.lab.store`, the
scaling search's machinery) owns every trial: re-running the command resumes, workers share it,
a killed worker's candidate is trained again. The base network's S0 and P0 are
measured once per study and kept in the study, so every trial, resumed run and worker divides
by the same numbers.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import effnet.profile
from effnet.lab import engine, store
from effnet.lab.budget import TrialBudget, trial_budget
from effnet.search.reward import B0_TARGET_FLOPS, mnas_hard, mnas_soft, pareto_front, v2_reward
from effnet.search.space import SearchSpace, load_space
from effnet.specs.base import ModelSpec

# effnet.profile loads its torch-backed names on first use (PEP 562): the CLI parser imports
# this module, which must not load torch.

log = logging.getLogger(__name__)

REWARDS = ("v2", "v1", "v1-hard", "pareto")
SAMPLERS = ("tpe", "random", "nsga2")
#: Study user attribute: the base's measured step time (ms), parameters and FLOPs.
BASE = "effnet.search.base"
#: Trial user attribute marking the trial that trains the base network itself.
IS_BASE = "effnet.search.is_base"
#: Pareto mode's objectives (V2's three quantities, kept apart): A up, S down, P down.
PARETO_DIRECTIONS = ["maximize", "minimize", "minimize"]


@dataclass(frozen=True)
class StepBudget:
    """How S is measured, the same for every trial and the base: median of ``steps`` training
    steps after ``warmup``, on a fixed random batch of ``batch`` images at the proxy size, with
    ``threads`` CPU threads (fixed, so that workers sharing a machine measure alike)."""

    batch: int = 16
    warmup: int = 2
    steps: int = 5
    threads: int = 1
    device: str = "cpu"


@dataclass(frozen=True)
class TrialRow:
    """One finished trial: what it chose, what was measured and its reward."""

    number: int
    state: str
    top1: float
    step_ms: float
    params: int
    flops: int
    reward: float
    v2_reward: float
    epochs: int
    seconds: float
    arch: str
    choices: dict[str, Any]
    is_base: bool = False
    on_front: bool = False
    curve: list[float] = field(default_factory=list)
    status: str = engine.IMPROVING
    flops_trial: int = 0


@dataclass
class SearchReport(engine.LabReport):
    """An architecture search's outcome."""

    space: str
    space_size: int
    reward: str
    trials: int
    base_step_ms: float
    base_params: int
    base_flops: int
    rows: list[TrialRow]
    best: TrialRow | None
    front: list[int] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return len(self.rows) >= self.trials


def arch_string(spec: ModelSpec) -> str:
    """A stage per word: op (M MBConv, F Fused), kernel, expansion, SE, layers; e.g. ``F3e4x2``,
    ``M5e6sx3`` (``s``: with SE)."""
    return " ".join(f"{'F' if s.op == 'fused' else 'M'}{s.kernel}e{s.expand:g}{'s' if s.se else ''}x{s.repeats}"
                    for s in spec.stages)


def make_sampler(name: str, seed: int | None = None) -> Any:
    """Optuna's TPE (Bergstra et al. 2011; multi-objective too), random search, or NSGA-II
    (Deb et al. 2002; a genetic search for Pareto fronts)."""
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    raise ValueError(f"sampler: expected one of {SAMPLERS}, got {name!r}")


def _device(device: str) -> str:
    from effnet.train.score import default_device

    return str(default_device(device))


@dataclass
class ArchJob(engine.StudyJob):
    """A sampled search of ``trials`` candidates drawn from ``space`` by the study's sampler."""

    space: SearchSpace
    budget: dict[str, Any]
    reward: str
    target: float
    target_kind: str
    prune: bool
    sampler: str
    seed: int | None
    trials: int
    step: StepBudget
    main_pid: int
    out: str

    def study_options(self) -> dict[str, Any]:
        seed = self.seed
        if seed is not None and os.getpid() != self.main_pid:
            seed += os.getpid()  # workers must not all propose the same sequence of candidates
        return {"prune": self.prune, "directions": PARETO_DIRECTIONS if self.reward == "pareto" else None,
                "sampler": make_sampler(self.sampler, seed)}

    def evaluate(self, trial: Any) -> tuple[float | list[float], dict[str, Any]]:
        budget = TrialBudget.from_dict(self.budget)
        spec = self.space.sample(trial)
        base = trial.study.user_attrs[BASE]
        m = measure(spec, budget.image_size, self.step, self.target_kind)
        # Recorded before training, so that a pruned or failed trial keeps its measurements.
        for k, v in m.items():
            trial.set_user_attr(k, v)
        top1, attrs = budget.train(spec, budget.image_size, trial if self.prune else None)
        # TrialBudget's step_ms is throughput over a whole epoch (data loading included): not S.
        attrs["throughput_step_ms"] = attrs.pop("step_ms", math.nan)
        v2 = v2_reward(top1, m["step_time_ms"], m["params"], s0=base["step_time_ms"], p0=base["params"])
        attrs.update(top1=top1, v2_reward=v2)
        if self.reward == "pareto":
            attrs["reward"] = v2
            return [top1, m["step_time_ms"], float(m["params"])], attrs
        if self.reward == "v2":
            value = v2
        else:
            cost = m["flops"] if self.target_kind == "flops" else m["latency_ms"]
            value = (mnas_hard if self.reward == "v1-hard" else mnas_soft)(top1, cost, self.target)
        attrs["reward"] = value
        return value, attrs


def measure(spec: ModelSpec, image_size: int, step: StepBudget, target_kind: str = "flops") -> dict[str, Any]:
    """S (median training step, ms), P (parameters with the spec's own head, as the papers
    count them) and FLOPs (multiply-adds at the spec's own resolution, the scale of MnasNet's
    and EfficientNet's T = 400M); with ``target_kind="latency"`` also the inference latency at
    ``image_size`` (batch 1)."""
    import torch

    from effnet.model import build  # loads torch: the CLI parser imports this module

    with torch.device("meta"):
        params = effnet.profile.count_params(build(spec))
    out: dict[str, Any] = {
        "step_time_ms": 1e3 * effnet.profile.step_time(spec, image_size, step.batch, device=step.device,
                                                       warmup=step.warmup, steps=step.steps, threads=step.threads),
        "params": params, "flops": effnet.profile.count_flops(spec, spec.resolution),
    }
    if target_kind == "latency":
        net = build(spec).to(step.device)
        out["latency_ms"] = 1e3 * effnet.profile.latency(net, image_size, threads=step.threads)
    return out


def _base_metrics(job: ArchJob, study: Any) -> dict[str, Any]:
    """The base's S0, P0 and FLOPs: measured once per study and stored in it; the base itself
    is queued as the study's first trial when the space contains it (its reward is the
    reference every candidate is compared to)."""
    known = study.user_attrs.get(BASE)
    if known is not None:
        return known
    budget = TrialBudget.from_dict(job.budget)
    log.info("measuring the base %s (training step time at %d px, batch %d, %s)", job.space.base.name,
             budget.image_size, job.step.batch, job.step.device)
    m = measure(job.space.base, budget.image_size, job.step, job.target_kind)
    # Another process may have measured it meanwhile: the first one recorded wins, for all.
    chosen = store.first_writer(lambda: store.open_study(job.storage, job.study_name, job.settings), BASE, m)
    point = job.space.base_params()
    if chosen == m and point is not None and not study.trials:
        study.enqueue_trial(point, user_attrs={IS_BASE: True, store.KEY: "base"})
    return chosen


def run(
    space: str | Path | SearchSpace, *, data: str = "digits", trials: int = 20, epochs: int = 4,
    image_size: int | None = None, reward: str = "v2", storage: str | None = None, study: str | None = None,
    sampler: str = "tpe", prune: bool = False, workers: int = 1, out: str | Path = "arch_search",
    target_flops: float = B0_TARGET_FLOPS, target_latency_ms: float | None = None, step_batch: int = 16,
    step_warmup: int = 2, step_steps: int = 5, step_threads: int = 1, device: str = "auto",
    seed: int | None = None, recipe: str | None = None, progress: bool = True, validate: int = 0,
    validate_epochs: int | None = None, **overrides: Any,
) -> SearchReport:
    """Search ``space`` (a :class:`SearchSpace`, ``v2-s``, ``v2-b0``, ``b0`` or a YAML file) on
    ``data`` (``digits`` or an image folder) until the study has ``trials`` finished trials.

    - ``reward``: ``v2`` (A * (S/S0)^-0.07 * (P/P0)^-0.05, EfficientNetV2), ``v1`` / ``v1-hard``
      (MnasNet's ACC * (cost/T)^w, soft or hard, with cost = FLOPs and T = ``target_flops``, or
      the inference latency and T = ``target_latency_ms`` when that is given), or ``pareto``
      (A, S and P as three objectives; the report's front is the non-dominated trials).
    - ``epochs``, ``image_size``, ``recipe``, ``overrides`` (TrainConfig fields such as
      ``train_subset``, ``batch_size``): the proxy training every candidate gets (default size:
      64 px on digits, else the base's training size).
    - ``step_*``, ``device``: how S is measured (median of ``step_steps`` training steps after
      ``step_warmup`` on a fixed batch of ``step_batch``, ``step_threads`` CPU threads).
    - ``storage``/``study``/``workers``/``prune``: as for ``effnet scale search`` (default storage
      ``sqlite:///OUT/study.db``; the same command resumes; successive halving on top-1).
    - ``sampler``: ``tpe``, ``random`` or ``nsga2``; ``seed`` seeds it.
    - ``validate``: retrain that many finished candidates (the best half by reward and random
      others) for ``validate_epochs`` (default 3x ``epochs``) and report the Kendall tau between
      the proxy's ranking and the longer one (on the same reward, recomputed with the longer
      top-1).

    Writes ``best.yaml`` (the best candidate's spec), ``table.txt``, ``results.json`` and
    ``search.png`` into ``out`` (and ``front/`` in Pareto mode) and returns the report.
    """
    if reward not in REWARDS:
        raise ValueError(f"reward: expected one of {REWARDS}, got {reward!r}")
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler: expected one of {SAMPLERS}, got {sampler!r}")
    for name, value in (("trials", trials), ("epochs", epochs)):
        if value < 1:
            raise ValueError(f"{name}: expected >= 1, got {value}")
    engine.check_run(workers, validate)
    if not target_flops > 0 or (target_latency_ms is not None and not target_latency_ms > 0):
        raise ValueError(f"target: expected a positive --target-flops / --target-latency-ms, got "
                         f"{target_latency_ms if target_latency_ms is not None else target_flops:g}")
    if prune and reward == "pareto":
        raise ValueError("prune: the Pareto mode has three objectives and cannot be pruned; use reward v2 or v1")
    the_space = load_space(space)  # refused here, before anything is measured or trained
    budget = trial_budget(the_space.base, data=data, epochs=epochs, image_size=image_size, recipe=recipe,
                          overrides=overrides)
    step = StepBudget(batch=step_batch, warmup=step_warmup, steps=step_steps, threads=step_threads,
                      device=_device(device))
    target_kind = "latency" if target_latency_ms is not None else "flops"
    target = float(target_latency_ms if target_latency_ms is not None else target_flops)
    out = Path(out)
    storage = storage or store.default_storage(out)
    study_name = study or f"arch-{the_space.name}-{reward}"
    settings = {"kind": "arch-search", "space": the_space.space_id, "reward": reward, "prune": prune,
                "target": target if reward.startswith("v1") else None, "target_kind": target_kind,
                "step": asdict(step), **budget.settings}
    job = ArchJob(storage, study_name, settings, the_space, budget.to_dict(), reward, target, target_kind, prune,
               sampler, seed, trials, step, os.getpid(), str(out))
    log.info("%s", the_space.describe())
    base = _base_metrics(job, job.open())  # the settings check happens once, before anything is measured
    started = time.time()
    engine.run_job(job, workers, progress, budget.warnings(),
                   "base %s: training step %.1f ms, %d parameters; searching %d trial(s), %d epoch(s) each at %d px, "
                   "reward %s, study %r in %s", the_space.base.name, base["step_time_ms"], base["params"], trials,
                   epochs, budget.image_size, reward, study_name, storage)
    log.info("search took %.1f s", time.time() - started)
    rep = report(job, write=False)
    if validate and rep.complete and rep.reward != "pareto":
        rep.validation = _validate(job, rep, validate, validate_epochs or engine.VALIDATE_FACTOR * epochs, workers,
                                   progress)
    return _write(rep, job, Path(job.out))


def _validate(job: ArchJob, rep: SearchReport, k: int, epochs: int, workers: int, progress: bool) -> engine.Validation:
    """Retrain ``k`` finished candidates longer and rank them again by the search's own reward,
    with each candidate's S and P as measured and the longer run's top-1 as A (the reward is
    A times a factor of S and P, so the longer reward is the longer top-1 times that factor)."""
    budget = TrialBudget.from_dict(job.budget)
    done = {f"trial{r.number}": r for r in rep.rows if r.state == "complete"}
    chosen = engine.pick_for_validation({key: r.reward for key, r in done.items()}, k, seed=0)
    items = [(key, f"#{done[key].number} {done[key].arch}", job.space.candidate(done[key].choices),
              budget.image_size, done[key].reward) for key in chosen]
    factors = {key: done[key].reward / done[key].top1 if done[key].top1 else 1.0 for key in chosen}
    return engine.validate(budget, storage=job.storage, study_name=job.study_name, settings=job.settings,
                           chosen=items, epochs=epochs, workers=workers, progress=progress, factors=factors,
                           score=f"reward ({job.reward})")


def _row(t: Any, space: SearchSpace) -> TrialRow:
    u = t.user_attrs
    spec = space.candidate(t.params)
    top1 = float(u.get("top1", math.nan))
    curve = [float(v) for v in u.get("curve", [])]
    return TrialRow(number=t.number, state=t.state.name.lower(), top1=top1, step_ms=float(u["step_time_ms"]),
                    params=int(u["params"]), flops=int(u["flops"]), reward=float(u.get("reward", math.nan)),
                    v2_reward=float(u.get("v2_reward", math.nan)), epochs=int(u.get("epochs_trained", 0)),
                    seconds=float(u.get("seconds", math.nan)), arch=arch_string(spec), choices=dict(t.params),
                    is_base=bool(u.get(IS_BASE, False)), curve=curve, status=engine.convergence(curve),
                    flops_trial=int(u.get("flops_trained", 0)))


def report(job: ArchJob, write: bool = True) -> SearchReport:
    """Read the study back into rows; write best.yaml, the table, results.json and the plot."""
    budget = TrialBudget.from_dict(job.budget)
    study = job.open()
    base = study.user_attrs.get(BASE, {})
    rows = [_row(t, job.space) for t in store.finished_trials(study) if "step_time_ms" in t.user_attrs and t.params]
    complete = [r for r in rows if r.state == "complete"]
    front: list[int] = []
    if job.reward == "pareto":
        idx = pareto_front([(r.top1, r.step_ms, r.params) for r in complete])
        front = [complete[i].number for i in idx]
        rows = [TrialRow(**{**asdict(r), "on_front": r.number in front}) for r in rows]
        complete = [r for r in rows if r.state == "complete"]
        # One spec to train next: the front member V2's reward prefers (the front holds them all).
        best = max((r for r in complete if r.on_front), key=lambda r: r.v2_reward, default=None)
    else:
        best = max(complete, key=lambda r: r.reward, default=None)
    rep = SearchReport(study=job.study_name, storage=job.storage, space=job.space.name, space_size=job.space.size,
                       reward=job.reward, trials=job.trials, base_step_ms=float(base.get("step_time_ms", math.nan)),
                       base_params=int(base.get("params", 0)), base_flops=int(base.get("flops", 0)), rows=rows,
                       best=best, front=front, protocol=budget.protocol(), warnings=budget.warnings())
    return _write(rep, job, Path(job.out)) if write else rep


def _write(rep: SearchReport, job: ArchJob, folder: Path) -> SearchReport:
    # effnet.viz loads torch on import, and the CLI parser imports this module.
    from effnet.viz.plots import plot_search

    folder.mkdir(parents=True, exist_ok=True)  # best.yaml and front/ first: the table names best.yaml
    if rep.best is not None:
        job.space.candidate(rep.best.choices).save(folder / "best.yaml")
        rep.files["best"] = str(folder / "best.yaml")
    if rep.front:
        for r in rep.rows:
            if r.on_front:
                job.space.candidate(r.choices).save(folder / "front" / f"trial_{r.number}.yaml")
        rep.files["front"] = str(folder / "front")
    pareto = job.reward == "pareto"

    def draw(path: Path) -> None:
        points = [{"step_ms": r.step_ms, "y": r.top1 if pareto else r.reward,
                   "label": f"#{r.number}{engine.mark(r.status)}",
                   "pruned": r.state == "pruned", "front": r.on_front, "base": r.is_base,
                   "best": rep.best is not None and r.number == rep.best.number} for r in rep.rows]
        plot_search(path, points, base_step_ms=rep.base_step_ms, pareto=pareto,
                    ylabel="validation top-1 (%)" if pareto else f"reward ({rep.reward})",
                    title=f"{rep.space} search: {len(rep.rows)} trial(s)\n"
                          + engine.figure_note(job.budget, [r.status for r in rep.rows], rep.validation))

    engine.write_report(rep, folder, format_table, "search.png", draw if rep.rows else None)
    return rep


def _ratio(value: float, base: float) -> str:
    """``value / base`` in a 5-wide column, or ``-`` when the base is unknown (0: a study whose
    base was never measured) rather than a ZeroDivisionError."""
    return f"{value / base:5.2f}" if base else f"{'-':>5}"


def format_table(rep: SearchReport) -> str:
    head = (f"{'trial':>5}  {'state':<8}  {'top-1':>6}  {'S ms':>7}  {'S/S0':>5}  {'params':>7}  {'P/P0':>5}  "
            f"{'FLOPs':>8}  {'reward':>7}  architecture (per stage: op kernel e=expand s=SE x=layers)")

    def line(r: TrialRow) -> str:
        marks = [m for m, on in (("base", r.is_base), ("front", r.on_front),
                                 ("best", rep.best is not None and r.number == rep.best.number)) if on]
        return (f"{r.number:5d}  {r.state:<8}  {r.top1:5.1f}{engine.mark(r.status):1}  {r.step_ms:7.1f}  "
                f"{_ratio(r.step_ms, rep.base_step_ms)}  {r.params / 1e6:6.2f}M  {_ratio(r.params, rep.base_params)}  "
                f"{r.flops / 1e6:7.1f}M  {r.reward:7.2f}  {r.arch}{'  <- ' + ', '.join(marks) if marks else ''}")

    notes = [f"base: training step {rep.base_step_ms:.1f} ms, {rep.base_params / 1e6:.2f}M parameters, "
             f"{rep.base_flops / 1e6:.1f}M FLOPs; space {rep.space} has {rep.space_size:,} candidates",
             f"{len(rep.rows)}/{rep.trials} trial(s) finished" if rep.complete else
             f"{len(rep.rows)}/{rep.trials} trial(s) finished so far: run the same command to go on"]
    if rep.reward == "pareto":
        notes.append(f"Pareto front (max top-1, min S, min P): trials {rep.front}")
    best = rep.best
    named = [f"best: trial {best.number} (reward {best.reward:.2f}, top-1 {best.top1:.2f}%): {best.arch}",
             *([f"train it: effnet train --spec {rep.files['best']}"] if "best" in rep.files else [])] \
        if best is not None else []
    return engine.format_table(rep, head, sorted(rep.rows, key=lambda r: r.number), line, notes,
                               engine.winner_lines(rep, rep.rows, "the best trial", best, named))
