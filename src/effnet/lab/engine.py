"""The one engine under every study of the lab and the architecture search.

A study trains candidates under one :class:`~effnet.lab.budget.TrialBudget` in an Optuna
study (:mod:`effnet.lab.store`). What must be the same for all of them is written once here:

- :class:`StudyJob` and :func:`run_job`: what the workers get (a study to open and a way to
  train a candidate) and how a run starts them;
- :class:`SpecJob`: a fixed list of candidates, each a spec trained at a size (the grid of
  ``effnet scale search``, the strategies of ``effnet scale study``, and the validation
  retraining of any study, the architecture search's included);
- :class:`LabReport` and :func:`format_table`: the report every study returns (its protocol,
  warnings, rows, validation and files; ``results.json``) and the table it prints;
- :func:`convergence`: whether a trial's learning curve had stopped improving;
- :func:`pick_for_validation`, :func:`validate` and :func:`kendall_tau`: how well the short
  trials' ranking predicts the ranking under a longer budget;
- :func:`winner_line` and :func:`protocol_lines`: what a table may claim about its winner and
  the budget it was measured under.

The grid, strategy and architecture jobs on top (:mod:`effnet.lab.grid`,
:mod:`effnet.lab.compare`, :mod:`effnet.search.run`) only say which candidates exist, how
their rows read and what their summary concludes.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import KW_ONLY, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from effnet.lab import queue, store
from effnet.lab.budget import TrialBudget
from effnet.specs.base import ModelSpec

log = logging.getLogger(__name__)

#: A trial is "converged" when its best top-1 over the last ``CONVERGENCE_WINDOW`` epochs beats
#: its best before them by at most ``CONVERGENCE_GAIN`` points. One epoch: with two, a 4-epoch
#: trial compares epochs 3-4 with epochs 1-2, the steep start, and a curve flat since epoch 3
#: (46, 80, 99, 99 on digits) reads as improving. One point, the size of the epoch-to-epoch
#: noise of a small validation set (digits has 359 images: one image is 0.28 points); a noisy
#: uptick above it errs on the side of "improving".
CONVERGENCE_WINDOW = 1
CONVERGENCE_GAIN = 1.0
CONVERGED, IMPROVING = "converged", "improving"
#: How tables mark an unconverged candidate.
UNCONVERGED_MARK = "*"
#: A top-1 within this many points of chance (100 / classes) means the trial learned nothing a
#: ranking could use, converged or not.
CHANCE_MARGIN = 5.0
#: ``--validate K``: the validation budget's epochs as a multiple of the proxy's.
VALIDATE_FACTOR = 3


def convergence(curve: Sequence[float], window: int = CONVERGENCE_WINDOW, min_gain: float = CONVERGENCE_GAIN) -> str:
    """``"converged"`` when the best of the last ``window`` values of ``curve`` (per-epoch
    validation top-1) exceeds the best before them by at most ``min_gain``; else
    ``"improving"``. A curve of ``window`` epochs or fewer cannot show that it stopped
    improving, so it counts as improving."""
    if window < 1:
        raise ValueError(f"window: expected >= 1, got {window}")
    values = [float(v) for v in curve]
    if len(values) <= window:
        return IMPROVING
    gain = max(values[-window:]) - max(values[:-window])
    return IMPROVING if gain > min_gain else CONVERGED


def mark(status: str) -> str:
    return "" if status == CONVERGED else UNCONVERGED_MARK


def kendall_tau(proxy: Sequence[float], longer: Sequence[float]) -> float:
    """Kendall's tau-b (ties counted as in scipy.stats.kendalltau) between the proxy scores of
    some candidates and their scores under a longer budget: 1 when the proxy orders them as
    the longer training does, -1 when reversed, about 0 when its order is noise. NaN for fewer
    than two candidates."""
    from scipy.stats import kendalltau

    if len(proxy) != len(longer):
        raise ValueError(f"kendall_tau: {len(proxy)} proxy scores but {len(longer)} longer ones")
    if len(proxy) < 2:
        return math.nan
    return float(kendalltau(list(proxy), list(longer)).statistic)


def pick_for_validation(scores: Mapping[str, float], k: int, seed: int = 0) -> list[str]:
    """``k`` candidates to retrain: the proxy's best ceil(k/2) (a search's answer is among
    them) and the rest drawn at random from the others (a ranking judged on its top alone
    would miss a proxy that orders the rest by noise). Seeded: every run picks the same."""
    if k < 2:
        raise ValueError(f"validate: expected >= 2 candidates (a rank correlation needs two), got {k}")
    ranked = sorted(scores, key=lambda key: (-scores[key], key))
    top = ranked[: math.ceil(k / 2)]
    rest = ranked[len(top):]
    return top + random.Random(seed).sample(rest, min(len(rest), k - len(top)))


def check_run(workers: int, validate: int) -> None:
    """Refuse a worker count or a ``--validate K`` that no study can run, before any work."""
    if workers < 1:
        raise ValueError(f"workers: expected >= 1, got {workers}")
    if validate and validate < 2:
        raise ValueError(f"validate: expected 0 (off) or >= 2 candidates, got {validate}")


@dataclass
class StudyJob:
    """What every worker process of a study needs (picklable: extra workers are spawned): the
    study to open. A job adds what it trains: a fixed list of ``candidates`` with
    ``evaluate(trial, candidate)`` (:class:`SpecJob`), or a number of sampled ``trials`` with
    ``evaluate(trial)`` (the architecture search); see :func:`effnet.lab.queue.run_workers`."""

    storage: str
    study_name: str
    settings: dict[str, Any]

    def study_options(self) -> dict[str, Any]:
        """Keyword arguments of :func:`effnet.lab.store.open_study` beyond name and settings."""
        return {}

    def open(self) -> Any:
        return store.open_study(self.storage, self.study_name, self.settings, **self.study_options())


def run_job(job: StudyJob, workers: int, progress: bool, warnings: Sequence[str], message: str, *args: Any) -> None:
    """Open ``job``'s study once (its settings are checked before any worker starts), log the
    budget's ``warnings`` and what runs (``message % args``), and train until the study is done."""
    job.open()
    for w in warnings:
        log.warning("%s", w)
    log.info(message, *args)
    queue.run_workers(job, workers, progress)


@dataclass
class SpecJob(StudyJob):
    """A fixed list of candidates, each a spec (as a dict: exact and picklable) trained at its
    own size under one budget."""

    candidates: list[store.Candidate]
    budget: dict[str, Any]
    specs: dict[str, dict[str, Any]]
    sizes: dict[str, int]
    prune: bool = False

    def study_options(self) -> dict[str, Any]:
        return {"prune": self.prune}

    def evaluate(self, trial: Any, cand: store.Candidate) -> tuple[float, dict[str, Any]]:
        budget = TrialBudget.from_dict(self.budget)
        return budget.train(ModelSpec.from_dict(self.specs[cand.key]), self.sizes[cand.key],
                            trial if self.prune else None)


@dataclass(frozen=True)
class ValidatedRow:
    key: str
    label: str
    proxy: float
    longer: float
    curve: list[float]
    status: str
    proxy_rank: int
    longer_rank: int


@dataclass
class Validation:
    """The proxy ranking checked against a longer budget on ``rows``."""

    study: str
    epochs: int
    proxy_epochs: int
    rows: list[ValidatedRow]
    requested: int
    tau: float
    score: str = "top-1"
    #: With a reward as the score: the tau of top-1 alone (proxy top-1 against longer top-1).
    #: The reward's S and P factor is the same in both runs, so it agrees with itself and lifts
    #: the reward's tau; this one is the proxy training's own fidelity.
    tau_top1: float = math.nan

    @property
    def complete(self) -> bool:
        return len(self.rows) == self.requested

    def to_dict(self) -> dict[str, Any]:
        return {"study": self.study, "epochs": self.epochs, "proxy_epochs": self.proxy_epochs, "score": self.score,
                "candidates": self.requested, "kendall_tau": None if math.isnan(self.tau) else self.tau,
                "kendall_tau_top1": None if math.isnan(self.tau_top1) else self.tau_top1,
                "rows": [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(r).items()}
                         for r in self.rows]}

    def lines(self) -> list[str]:
        out = [f"validation: {len(self.rows)}/{self.requested} candidate(s) retrained for {self.epochs} epoch(s) "
               f"(the proxy trained {self.proxy_epochs}), ranked by {self.score}"]
        head = f"  {'candidate':<28} {'proxy':>6} {'rank':>4}  {'longer':>6} {'rank':>4}"
        out += [head]
        for r in sorted(self.rows, key=lambda r: (r.proxy_rank or len(self.rows) + 1, r.key)):
            proxy, pr, lr = ((f"{r.proxy:6.2f}", f"{r.proxy_rank:4d}", f"{r.longer_rank:3d}") if r.proxy_rank
                             else (f"{'-':>6}", f"{'-':>4}", f"{'-':>3}"))
            out.append(f"  {r.label[:28]:<28} {proxy} {pr}  {r.longer:6.2f}{mark(r.status):1} {lr}")
        ranked = sum(bool(r.proxy_rank) for r in self.rows)
        tau = "n/a (fewer than 2 retrained)" if math.isnan(self.tau) else f"{self.tau:.2f}"
        out.append(f"rank fidelity: Kendall tau {tau} between the proxy's ranking and the longer one over "
                   f"{ranked} candidate(s) (1: same order; 0: the proxy's order is noise)")
        if not math.isnan(self.tau_top1):
            out.append(f"  by top-1 alone (without the {self.score}'s shared step-time and size factor): "
                       f"Kendall tau {self.tau_top1:.2f}")
        return out


def _ranks(values: Sequence[float]) -> list[int]:
    order = sorted(range(len(values)), key=lambda i: -values[i])
    ranks = [0] * len(values)
    for r, i in enumerate(order, 1):
        ranks[i] = r
    return ranks


def validate(
    budget: TrialBudget, *, storage: str, study_name: str, settings: Mapping[str, Any],
    chosen: Sequence[tuple[str, str, ModelSpec, int, float]], epochs: int, workers: int = 1, progress: bool = True,
    factors: Mapping[str, float] | None = None, score: str = "top-1",
) -> Validation:
    """Retrain ``chosen`` (key, label, spec, image size, proxy score) for ``epochs`` in their own
    study (``study_name``; resumable and shared like any other) and compare the orders. A
    reference with a NaN proxy score (trained only here) is reported but not ranked.
    ``factors``: the longer run's score of a candidate is its top-1 times this (default 1): a
    search ranking by a reward A * f(S, P) compares the longer A under the same f."""
    longer = budget.longer(epochs)
    name = f"{study_name}-validate{epochs}"
    job = SpecJob(storage, name, {**settings, "kind": f"{settings.get('kind', 'study')}-validate",
                                  **longer.settings},
                  [store.Candidate(key, {}, {}) for key, *_ in chosen], longer.to_dict(),
                  {key: spec.to_dict() for key, _, spec, _, _ in chosen}, {key: size for key, _, _, size, _ in chosen})
    run_job(job, workers, progress, (), "validating the proxy: %d candidate(s) retrained for %d epoch(s) in study %r",
            len(chosen), epochs, name)
    done = store.results(job.open())
    have = [(key, label, proxy, done[key]) for key, label, _, _, proxy in chosen
            if key in done and done[key].value is not None]
    # A reference point trained only here (no proxy score: NaN) is shown, not ranked.
    ranked = [h for h in have if not math.isnan(h[2])]
    proxies = [p for _, _, p, _ in ranked]
    factors = factors or {}
    longs = [float(t.value) * factors.get(key, 1.0) for key, _, _, t in ranked]
    pr, lr = dict(zip([h[0] for h in ranked], _ranks(proxies))), dict(zip([h[0] for h in ranked], _ranks(longs)))
    rows = [ValidatedRow(key, label, p, float(t.value) * factors.get(key, 1.0), list(t.user_attrs.get("curve", [])),
                         convergence(t.user_attrs.get("curve", [])), pr.get(key, 0), lr.get(key, 0))
            for key, label, p, t in have]
    tau_top1 = math.nan
    if factors:
        tau_top1 = kendall_tau([p / factors.get(k, 1.0) for (k, *_), p in zip(ranked, proxies)],
                               [float(t.value) for *_, t in ranked])
    return Validation(name, epochs, budget.epochs, rows, len(chosen), kendall_tau(proxies, longs), score, tau_top1)


def at_chance(top1: float, classes: int | None) -> bool:
    """Whether ``top1`` (%) is no better than guessing among ``classes`` (within
    :data:`CHANCE_MARGIN` points)."""
    return bool(classes) and top1 <= 100.0 / classes + CHANCE_MARGIN  # type: ignore[operator]


def chance_line(tops: Sequence[float], classes: int | None) -> str:
    """A warning when candidates scored at chance (empty when none did)."""
    n = sum(at_chance(t, classes) for t in tops)
    if not n or not classes:
        return ""
    what = "no candidate" if n == len(tops) else f"{n}/{len(tops)} candidate(s)"
    return (f"warning: {what} learned above chance ({100.0 / classes:.1f}% for {classes} classes, within "
            f"{CHANCE_MARGIN:g} points): at this budget the ranking among them is noise")


def noise_points(top1: float, val_images: int | None) -> float:
    """Two standard errors (points) of a top-1 measured on ``val_images`` images (binomial):
    a gap smaller than this between two candidates is not a finding."""
    if not val_images:
        return math.nan
    p = min(max(top1 / 100.0, 0.0), 1.0)
    return 200.0 * math.sqrt(max(p * (1 - p), 0.25 / val_images) / val_images)


def winner_line(what: str, status: str, top1: float | None = None, classes: int | None = None) -> str:
    """The caveat a summary must carry when it names a winner that had not converged or that
    scored at chance."""
    if top1 is not None and at_chance(top1, classes):
        return f"note: {what} scored at chance: it is not a finding; give a larger budget"
    if status == CONVERGED:
        return ""
    return (f"note: {what} was still improving when its trial ended ({UNCONVERGED_MARK} in the table): "
            "at this budget the ranking is provisional; give more --epochs or check it with --validate K")


def unconverged_line(statuses: Sequence[str]) -> str:
    n = sum(s != CONVERGED for s in statuses)
    if not n:
        return (f"every candidate converged (its last {CONVERGENCE_WINDOW} epoch(s) gained <= {CONVERGENCE_GAIN:g} "
                "point over the best before)")
    return (f"{UNCONVERGED_MARK} {n}/{len(statuses)} candidate(s) still improving at the end of their trial "
            f"(the last {CONVERGENCE_WINDOW} epoch(s) gained > {CONVERGENCE_GAIN:g} point over the best before): "
            "their top-1 is a lower bound")


def protocol_lines_from(protocol: Mapping[str, Any], warnings: Sequence[str]) -> list[str]:
    """A report's protocol (:meth:`TrialBudget.protocol`) as one line, then a ``warning:`` line
    for each way its budget is too small."""
    p = protocol
    if not p:
        return []
    subset = f" (first {p['train_subset']} training images)" if p.get("train_subset") else ""
    lines = [f"protocol: {p['data']}{subset}, {p['epochs']} epoch(s) per trial at {p['image_size']} px (base), recipe "
             f"{p['recipe']}{' (progressive)' if p.get('progressive') else ''}, seed {p['seed']}, "
             f"EMA {'on' if p['ema'] else 'off'}, residual branches "
             f"{'zero-initialised' if p['zero_init_last'] else 'as the official models'}"]
    return lines + [f"warning: {w}" for w in warnings]


# --- the report every study returns, and its table ---------------------------------------------------
@dataclass
class LabReport:
    """What every study reports besides its own rows: the study, the budget's protocol and
    warnings, the validation (``--validate K``) and the files written. A report adds its
    fields (``rows`` among them: each with ``top1`` and ``status``) after ``study`` and
    ``storage``; these four stay keyword-only, so each report's own fields keep their order."""

    study: str
    storage: str
    _: KW_ONLY
    files: dict[str, str] = field(default_factory=dict)
    protocol: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    validation: Validation | None = None

    def row_dict(self, row: Any) -> dict[str, Any]:
        """One row of ``results.json``."""
        return asdict(row)

    def derived(self) -> dict[str, Any]:
        """Values computed from the fields that ``results.json`` records too."""
        return {}

    def to_dict(self) -> dict[str, Any]:
        """``results.json``: the study, the protocol and warnings, the report's own fields, then
        the validation and the files."""
        common = ("study", "storage", "files", "protocol", "warnings", "validation")
        own: dict[str, Any] = {}
        for f in fields(self):
            if f.name in common:
                continue
            value = getattr(self, f.name)
            if f.name == "rows":
                value = [self.row_dict(r) for r in value]
            elif f.name == "best":
                value = asdict(value) if value is not None else None
            own[f.name] = value
        return {"study": self.study, "storage": self.storage, "protocol": self.protocol, "warnings": self.warnings,
                **own, **self.derived(), "validation": self.validation.to_dict() if self.validation else None,
                "files": self.files}


def format_table(rep: LabReport, head: str, rows: Sequence[Any], line: Callable[[Any], str], notes: Sequence[str],
                 findings: Sequence[str]) -> str:
    """A study's table: the protocol and its warnings, the column heads, ``line(row)`` for each
    of ``rows``, then ``notes`` (how far the study got), whether the rows had converged, the
    study's own ``findings`` and the validation."""
    lines = [*protocol_lines_from(rep.protocol, rep.warnings), head, "-" * len(head), *map(line, rows), "", *notes]
    if rows:
        lines.append(unconverged_line([r.status for r in rows]))
    lines += findings
    if rep.validation is not None:
        lines += rep.validation.lines()
    return "\n".join(lines)


def winner_lines(rep: LabReport, rows: Sequence[Any], what: str, best: Any, named: Sequence[str]) -> list[str]:
    """A search's findings: the chance warning over its ``rows``, then, when it has a ``best``,
    the lines ``named`` that name it, with the caveat (:func:`winner_line`) after the first."""
    classes = rep.protocol.get("classes")
    out = [x for x in [chance_line([r.top1 for r in rows], classes)] if x] if rows else []
    if best is not None:
        caveat = winner_line(what, best.status, best.top1, classes)
        out += [named[0], *([caveat] if caveat else []), *named[1:]]
    return out


def write_report(rep: LabReport, folder: Path, table: Callable[[Any], str], figure: str,
                 draw: Callable[[Path], Any] | None) -> None:
    """Write a study's outcome into ``folder``: ``draw(folder / figure)`` (``None``: nothing to
    draw yet), then ``table.txt`` (``table(rep)``) and ``results.json``, each path in
    ``rep.files``."""
    folder.mkdir(parents=True, exist_ok=True)
    if draw is not None:
        draw(folder / figure)
        rep.files["png"] = str(folder / figure)
    store.save_report(folder, table(rep), rep)


def figure_note(budget: Mapping[str, Any], statuses: Sequence[str], validation: Validation | None) -> str:
    """The second line of a study's figure title: the budget of each trial, how many points were
    still improving (marked ``*``) and the validation's Kendall tau."""
    improving = sum(s != CONVERGED for s in statuses)
    return (f"{budget.get('epochs')} epoch(s) at {budget.get('image_size')} px on {Path(str(budget.get('data'))).name}; "
            f"* still improving ({improving}){tau_note(validation)}")


def tau_note(validation: Validation | None) -> str:
    """The validation's Kendall tau for a figure's title (empty without one)."""
    if validation is None or math.isnan(validation.tau):
        return ""
    note = f"; Kendall tau {validation.tau:.2f} vs {validation.epochs} epochs"
    if not math.isnan(validation.tau_top1):
        note += f" (top-1 alone {validation.tau_top1:.2f})"
    return note
