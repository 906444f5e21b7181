"""Accuracy against cost: the published curves beside your own runs (``effnet plot``).

The EfficientNet papers' Figure 1 / Figure 5 layout: ImageNet top-1 against FLOPs
(multiply-adds) and against parameters, the published B0-B7 and V2 models as lines with
labelled points. Your points (training runs, scaling searches and studies, architecture
searches, a plain JSON list) go on panels of their own: they are usually measured on another
data set at another resolution (digits at 32 px: ~98% at a few MFLOPs), and one axis holding
both would read as if a digits run beat EfficientNet-B7. Points that say they are ImageNet
results (``"dataset": "imagenet"``) join the published panels.

Plain JSON schema (a list, or ``{"points": [...]}``)::

    [{"name": "my_b0", "top1": 76.3, "flops": 390000000, "params": 5300000,
      "dataset": "imagenet", "series": "my runs"}, ...]

``top1`` in percent; ``flops`` in multiply-adds (or ``gflops``), ``params`` as a count (or
``params_m``, millions); at least one of the two costs; ``dataset`` and ``series`` (the legend
entry) are optional. Reading run folders needs the weights layer and lives in
``effnet.commands.viz``; everything here works on loaded data.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from effnet.files import atomic_write
from effnet.profile.measure import profile_model
from effnet.specs.base import ModelSpec
from effnet.specs.paper import PaperResult, paper_curves
from effnet.viz.plots import cost_axis, pyplot

log = logging.getLogger(__name__)

IMAGENET = "imagenet"


@dataclass(frozen=True)
class ResultPoint:
    """One model's accuracy and cost. ``flops``: multiply-adds; ``params``: a count."""

    name: str
    top1: float
    flops: float | None = None
    params: float | None = None
    dataset: str = ""
    series: str = ""
    line: bool = False  # join the series' points with a line (a scaling curve), else markers only

    @property
    def on_imagenet(self) -> bool:
        return self.dataset.lower() == IMAGENET


def paper_points() -> list[ResultPoint]:
    """The published curves as points (series = curve name, short labels: B0, V2-S ...)."""
    out = []
    for curve, rows in paper_curves().items():
        for r in rows:
            out.append(ResultPoint(short_name(r), r.top1, r.flops_b * 1e9, r.params_m * 1e6, IMAGENET,
                                   f"{curve} (published)", line=True))
    return out


def short_name(row: PaperResult | str) -> str:
    """``efficientnet_b3`` -> ``B3``, ``efficientnetv2_s`` -> ``V2-S``."""
    name = row if isinstance(row, str) else row.model
    if name.startswith("efficientnetv2_"):
        return "V2-" + name.split("_", 1)[1].upper()
    if name.startswith("efficientnet_"):
        return name.split("_", 1)[1].upper()
    return name


def _number(value: Any, what: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{where}: {what} must be a finite number, got {value!r}")
    return float(value)


def plain_points(items: Sequence[Any], where: str) -> list[ResultPoint]:
    """Points from the plain JSON schema (see the module docstring); ``where`` names the file
    in errors."""
    if not isinstance(items, list) or not items:
        raise ValueError(f"{where}: expected a non-empty JSON list of {{name, top1, flops or params}} objects")
    out = []
    for i, item in enumerate(items):
        at = f"{where}, entry {i}"
        if not isinstance(item, dict):
            raise ValueError(f"{at}: expected an object with name, top1 and flops or params, got {type(item).__name__}")
        missing = [k for k in ("name", "top1") if k not in item]
        if missing:
            raise ValueError(f"{at}: missing {', '.join(missing)} (schema: name, top1, flops or params)")
        top1 = _number(item["top1"], "top1", at)
        if not 0 <= top1 <= 100:
            raise ValueError(f"{at}: top1 is a percentage in 0..100, got {top1:g}")
        flops = params = None
        if "flops" in item:
            flops = _number(item["flops"], "flops", at)
            if flops < 1e3:  # no network is under a thousand multiply-adds: a unit slip
                raise ValueError(f"{at}: flops {flops:g} looks like GFLOPs; flops counts multiply-adds "
                                 f"(e.g. 390000000), or write gflops: {flops:g}")
        elif "gflops" in item:
            flops = _number(item["gflops"], "gflops", at) * 1e9
        if "params" in item:
            params = _number(item["params"], "params", at)
            if params < 1e3:
                raise ValueError(f"{at}: params {params:g} looks like millions; params is a count "
                                 f"(e.g. 5300000), or write params_m: {params:g}")
        elif "params_m" in item:
            params = _number(item["params_m"], "params_m", at) * 1e6
        if flops is None and params is None:
            raise ValueError(f"{at}: needs flops (multiply-adds), gflops, params or params_m")
        out.append(ResultPoint(str(item["name"]), top1, flops, params, str(item.get("dataset", "")),
                               str(item.get("series", "") or Path(where).stem), bool(item.get("line", False))))
    return out


def report_points(report: dict[str, Any], where: str, dataset: str = "") -> list[ResultPoint]:
    """Points from a ``results.json`` of ``effnet scale search`` (a grid point each),
    ``effnet scale study`` (a line per strategy, through the baseline) or ``effnet search``
    (a trial each). Pruned and unfinished trials are left out (their accuracy is a partial
    epoch count's)."""
    rows = report.get("rows")
    if not isinstance(rows, list):
        raise ValueError(f"{where}: expected an effnet results.json with a 'rows' list")
    done = [r for r in rows if isinstance(r, dict) and r.get("state", "complete") == "complete"]
    if len(done) < len(rows):
        log.info("%s: %d pruned or unfinished row(s) left out", where, len(rows) - len(done))
    if not done:
        raise ValueError(f"{where}: no finished rows to plot")
    base = report.get("base") or report.get("space") or Path(where).parent.name
    out: list[ResultPoint] = []
    first = done[0]
    if "strategy" in first:  # scale study: the baseline starts every strategy's line
        baseline = [r for r in done if r["strategy"] == "baseline"]
        for r in done:
            if r["strategy"] == "baseline":
                continue
            out.append(ResultPoint(f"{r['strategy']} x{r['multiple']:g}", r["top1"], r["flops"], r["params"], dataset,
                                   f"study: {r['strategy']}", line=True))
        for b in baseline:
            for s in sorted({p.series for p in out}):
                out.append(ResultPoint("baseline", b["top1"], b["flops"], b["params"], dataset, s, line=True))
        if not out:
            out = [ResultPoint("baseline", b["top1"], b["flops"], b["params"], dataset, "study: baseline")
                   for b in baseline]
    elif "alpha" in first:  # scale search: one point per (alpha, beta, gamma)
        for r in done:
            out.append(ResultPoint(f"a{r['alpha']:g} b{r['beta']:g} g{r['gamma']:g}", r["top1"], r["flops"],
                                   r["params"], dataset, f"scale search ({base})"))
    elif "arch" in first:  # architecture search: one point per trial
        for r in done:
            out.append(ResultPoint(f"trial {r['number']}", r["top1"], r["flops"], r["params"], dataset,
                                   f"search ({base})"))
    else:
        raise ValueError(f"{where}: rows are neither a scale search's, a scale study's nor a search's "
                         "(expected alpha/beta/gamma, strategy or arch fields)")
    return out


def read_json_points(path: str | Path, dataset: str = "") -> list[ResultPoint]:
    """Points from a JSON file: the plain schema or an effnet ``results.json``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expected a results.json or a JSON list of points)")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e}); expected a results.json or a JSON list of points") from None
    if isinstance(data, dict) and "points" in data:
        data = data["points"]
    if isinstance(data, list):
        return plain_points(data, str(path))
    if isinstance(data, dict) and "rows" in data:
        return report_points(data, str(path), dataset)
    raise ValueError(f"{path}: expected a JSON list of {{name, top1, flops or params}} or an effnet results.json")


def run_point(name: str, metrics: Iterable[dict[str, Any]], spec: ModelSpec, resolution: int,
              dataset: str = "", series: str = "training runs") -> ResultPoint:
    """A training run's point: its best validation top-1 (the epoch ``best.safetensors``
    holds) and the cost of its architecture at its evaluation ``resolution``, measured."""
    tops = [float(r["val_top1"]) for r in metrics if r.get("val_top1") not in (None, "")]
    if not tops:
        raise ValueError(f"run {name}: its metrics have no finished epoch yet (no val_top1)")
    prof = profile_model(spec, resolution, memory=False, timing=False)
    return ResultPoint(name, max(tops), float(prof.flops), float(prof.params), dataset, series)


# --- the figure ---------------------------------------------------------------------------
def _unit(values: list[float], kind: str) -> tuple[float, str]:
    """A divisor and its name so that tick labels read 0.4 ... 37 (G) or 5 ... 300 (M)."""
    top = max(values) if values else 1.0
    if kind == "flops":
        return (1e9, "GFLOPs") if top >= 1e9 else (1e6, "MFLOPs")
    return (1e6, "params (M)") if top >= 1e5 else (1e3, "params (K)")


def _draw(ax: Any, points: list[ResultPoint], kind: str, label_all: bool, colors: dict[str, Any]) -> list[tuple]:
    """One panel: a line or markers per series. Returns the labels to place, (text, x, y, color):
    every point when few, else each series' best."""
    pts = [p for p in points if getattr(p, kind) is not None]
    scale, unit = _unit([getattr(p, kind) for p in pts], kind)
    series: dict[str, list[ResultPoint]] = {}
    for p in pts:
        series.setdefault(p.series, []).append(p)
    labels = []
    for name, group in series.items():
        group = sorted(group, key=lambda p: getattr(p, kind))
        xs = [getattr(p, kind) / scale for p in group]
        ys = [p.top1 for p in group]
        color = colors.setdefault(name, f"C{len(colors) % 10}")
        ax.plot(xs, ys, "o-" if group[0].line else "o", color=color, label=name, ms=5, lw=1.6)
        best = max(group, key=lambda p: p.top1)
        labels += [(p.name, x, y, color) for p, x, y in zip(group, xs, ys) if label_all or p is best]
    # A point shared by several series (a study's baseline starts every strategy's line) is
    # labelled once.
    seen: set[tuple[str, float, float]] = set()
    labels = [lab for lab in labels if lab[:3] not in seen and not seen.add(lab[:3])]
    cost_axis(ax, [getattr(p, kind) / scale for p in pts], unit)
    return labels


#: Where a label may sit around its point: (dx, dy) in points and the text's alignment.
_SPOTS = ((5, 4, "left", "bottom"), (-5, 4, "right", "bottom"), (5, -4, "left", "top"),
          (-5, -4, "right", "top"), (0, 7, "center", "bottom"), (0, -7, "center", "top"),
          (8, 0, "left", "center"), (-8, 0, "right", "center"))


def _place_labels(fig: Any, ax: Any, labels: list[tuple]) -> None:
    """Put each label at the spot around its point that covers the fewest other labels,
    markers and line pieces (a greedy search in display coordinates): published curves cross,
    and fixed offsets put V2-S on top of B5."""
    import numpy as np

    renderer = fig.canvas.get_renderer()
    # Everything drawn so far, sampled densely along each line, as display points to avoid.
    obstacles = []
    for line in ax.get_lines():
        xy = ax.transData.transform(np.column_stack(line.get_data()))
        for a, b in zip(xy[:-1], xy[1:]):
            obstacles.extend(a + (b - a) * t for t in np.linspace(0, 1, 12))
        obstacles.extend(xy)
    obstacles = np.array(obstacles) if obstacles else np.zeros((0, 2))
    placed: list[Any] = []
    legend = ax.get_legend()
    avoid_boxes = [legend.get_window_extent(renderer)] if legend is not None else []
    axes_box = ax.get_window_extent(renderer)  # fixed: the layout is done before labels are placed
    for text, x, y, color in labels:
        best, best_cost = None, None
        for dx, dy, ha, va in _SPOTS:
            t = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=7, color=color,
                            ha=ha, va=va)
            t.set_in_layout(False)
            box = t.get_window_extent(renderer).expanded(1.08, 1.15)
            inside = ((obstacles[:, 0] >= box.x0) & (obstacles[:, 0] <= box.x1)
                      & (obstacles[:, 1] >= box.y0) & (obstacles[:, 1] <= box.y1)).sum()
            overlap = sum(_overlap(box, b) for b in placed + avoid_boxes)
            outside = box.width * box.height - _overlap(box, axes_box)
            cost = inside * 20 + overlap + outside * 2
            if best_cost is None or cost < best_cost:
                if best is not None:
                    best[0].remove()
                best, best_cost = (t, box), cost
            else:
                t.remove()
        if best is not None:
            placed.append(best[1])


def _overlap(a: Any, b: Any) -> float:
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return w * h if w > 0 and h > 0 else 0.0


def plot_results(path: str | Path, points: Sequence[ResultPoint], *, paper: bool = True, title: str = "",
                 formats: Sequence[str] = ("png", "svg")) -> list[Path]:
    """Accuracy against FLOPs (left) and against parameters (right): a row for the published
    ImageNet curves (with any ImageNet points of yours), a row for your other points. Writes
    ``path`` with each suffix in ``formats``; returns the files."""
    bad = [f for f in formats if f not in ("png", "svg", "pdf")]
    if bad or not formats:
        raise ValueError(f"formats: expected some of png, svg, pdf, got {list(formats)}")
    theirs = paper_points() if paper else []
    imagenet = theirs + [p for p in points if p.on_imagenet]
    mine = [p for p in points if not p.on_imagenet]
    if not imagenet and not mine:
        raise ValueError("plot: nothing to plot; give run folders, results.json files or JSON point lists "
                         "(or leave the published curves on)")
    rows = [("ImageNet", imagenet)] if imagenet else []
    if mine:
        sets = sorted({p.dataset for p in mine if p.dataset})
        rows.append((f"your runs{' on ' + ', '.join(sets) if sets else ''}", mine))
    plt = pyplot()
    # SVG text stays text (not glyph outlines): labels can be searched, edited and restyled.
    with plt.rc_context({"svg.fonttype": "none"}):
        return _plot_rows(plt, rows, Path(path), title, formats)


def _plot_rows(plt: Any, rows: list[tuple[str, list[ResultPoint]]], path: Path, title: str,
               formats: Sequence[str]) -> list[Path]:
    fig, axes = plt.subplots(len(rows), 2, figsize=(12, 4.8 * len(rows)), squeeze=False)
    colors: dict[str, Any] = {}
    pending: list[tuple[Any, list[tuple]]] = []
    for r, (name, pts) in enumerate(rows):
        for c, kind in enumerate(("flops", "params")):
            ax = axes[r][c]
            have = [p for p in pts if getattr(p, kind) is not None]
            if not have:
                ax.text(0.5, 0.5, f"no {kind} given for these points", ha="center", va="center",
                        transform=ax.transAxes)
                ax.set_axis_off()
                continue
            many = len({p.name for p in have}) > 24
            pending.append((ax, _draw(ax, have, kind, label_all=not many, colors=colors)))
            ax.set_ylabel("top-1 (%)")
            what = "FLOPs (multiply-adds)" if kind == "flops" else "parameters"
            ax.set_title(f"{name}: top-1 against {what}", fontsize=10)
            # The published curves rise to the upper right, leaving the lower right free.
            ax.legend(fontsize=8, loc="lower right" if r == 0 and name == "ImageNet" else "best")
            ax.margins(x=0.08, y=0.08)
    if title:
        fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    for ax, labels in pending:  # after the layout: placement works in final display coordinates
        _place_labels(fig, ax, labels)
    out = [atomic_write(path.with_suffix(f".{f}"), lambda tmp, f=f: fig.savefig(tmp, format=f, dpi=110))
           for f in formats]  # formats checked by plot_results
    plt.close(fig)
    return out
