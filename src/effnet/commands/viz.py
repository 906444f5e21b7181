"""`effnet cam` and `effnet plot`: class activation maps and accuracy-against-cost figures.

This is the top layer, so it is where weight files, images and run folders are opened; the
maps and figures themselves are :mod:`effnet.viz.cam` and :mod:`effnet.viz.figures`, which
work on loaded objects. ``cam_images`` and ``read_points`` are the typed functions behind the
two commands.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from effnet.viz.cam import ImageCam
    from effnet.viz.figures import ResultPoint

log = logging.getLogger(__name__)


# --- effnet cam -----------------------------------------------------------------------------
@dataclass
class CamReport:
    """What ``effnet cam`` made: each (image, model label, method)'s map, the files written and
    the images that could not be read (path -> reason)."""

    cams: dict[tuple[str, str, str], ImageCam] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def _labels(weights: list[str], labels: list[str] | None) -> list[str]:
    if labels:
        if len(labels) != len(weights):
            raise ValueError(f"--labels: expected one label per model ({len(weights)}), got {len(labels)}")
        return list(labels)
    stems = [_run_label(Path(w)) for w in weights]
    # Two files with one name (runs/a/model, runs/b/model): use the parent folder too.
    return [f"{Path(w).parent.name}/{s}" if stems.count(s) > 1 else s for w, s in zip(weights, stems)]


def _run_label(path: Path) -> str:
    """A model's label: a training run's folder name for the run (its best weights) or
    ``RUN/last`` for its last weights, else the file's stem."""
    from effnet.weights.format import BEST_WEIGHTS, CONFIG_FILE, LAST_WEIGHTS

    if path.is_dir():
        return path.resolve().name
    if path.stem in (Path(BEST_WEIGHTS).stem, Path(LAST_WEIGHTS).stem) and (path.parent / CONFIG_FILE).is_file():
        run = path.resolve().parent.name
        return run if path.stem == Path(BEST_WEIGHTS).stem else f"{run}/last"
    return path.stem


def _check_cam_options(images: list[str | Path], weights: list[str | Path], methods: tuple[str, ...], view: str,
                       topk: int) -> None:
    """Refuse a `cam` call that cannot make a map, before any model is loaded."""
    from effnet.viz.cam import CAM_METHODS, VIEWS

    if not images:
        raise ValueError("cam: no images given")
    if not weights:
        raise ValueError("cam: no model given; pass --weights FILE (and --compare FILE... for more)")
    bad = [m for m in methods if m not in CAM_METHODS]
    if bad or not methods:
        raise ValueError(f"method: expected {' or '.join(CAM_METHODS)}, got {', '.join(bad) or 'none'}")
    if view not in VIEWS:
        raise ValueError(f"view: expected one of {', '.join(VIEWS)}, got {view!r}")
    if topk < 1:
        raise ValueError(f"topk: expected at least 1, got {topk}")


def _load_cam_models(weights: list[str | Path], target: int | str | None, device: str) -> list[tuple]:
    """(model, its normaliser, its class names, the target class index or None) per weight
    file; every model is loaded first, so that a missing file fails before any work."""
    import torch

    from effnet.preprocessing import Normalize
    from effnet.viz.cam import resolve_class
    from effnet.weights import load_model

    dev = torch.device(device)
    models = []
    for w in weights:
        m = load_model(w, map_location=dev)
        models.append((m, Normalize(m.preprocessing).to(dev), list(m.class_names or []),
                       resolve_class(target, list(m.class_names or [str(i) for i in range(m.spec.num_classes)]))))
    return models


def _decode_images(images: list[str | Path], report: CamReport) -> list[tuple[Path, object]]:
    """The images that decode, as (path, image); the others go to ``report.skipped`` with the
    reason. None readable is an error."""
    from effnet.data.datasets import DECODE_ERRORS, decode

    decoded = []
    for path in images:
        try:
            decoded.append((Path(path), decode(Path(path))))
        except FileNotFoundError:
            report.skipped[str(path)] = "no such file"
        except DECODE_ERRORS as e:
            report.skipped[str(path)] = f"cannot read image: {type(e).__name__}: {e}"
    for path, reason in report.skipped.items():
        log.warning("skipping %s: %s", path, reason)
    if not decoded:
        raise ValueError(f"cam: none of the {len(images)} image(s) could be read: "
                         + "; ".join(f"{p} ({r})" for p, r in report.skipped.items()))
    return decoded


def _plan_cam_files(out: Path, stems: list[str], tag: str, compare: bool, inputs: list[str | Path],
                    overwrite: bool) -> list[Path]:
    """The files to write, named and checked before any map is drawn: never over an input image
    or weight file, nor over an earlier figure unless ``overwrite``."""
    from effnet.files import check_output

    used: set[str] = set()
    planned: list[Path] = []
    for stem in ([] if compare else stems):
        stem = stem if stem not in used else f"{stem}_{len(used)}"
        used.add(stem)
        planned.append(out / f"{stem}_{tag}.png")
    if compare:
        planned.append(out / f"compare_{tag}.png")
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file; expected a folder for the maps")
    for target_file in planned:
        check_output(target_file, inputs=inputs, overwrite=overwrite)
    return planned


def cam_images(
    images: list[str | Path], weights: list[str | Path], out: str | Path, *, methods: tuple[str, ...] = ("cam",),
    target: int | str | None = None, view: str = "full", layer: str | None = None, topk: int = 3,
    labels: list[str] | None = None, compare: bool = False, device: str = "cpu", overwrite: bool = False,
) -> CamReport:
    """Maps of each image under each model (a weight file each) and method, drawn over the
    original images into ``out``: ``<image>_<methods>.png`` per image (a column per method), or,
    with ``compare``, one ``compare_<methods>.png`` grid (a row per image, a column per model and
    method; EfficientNet Figure 7). Unreadable images are skipped and listed in the report; none
    readable is an error."""
    from tqdm import tqdm

    from effnet.viz.cam import image_cam, plot_cams

    _check_cam_options(images, weights, methods, view, topk)
    names = _labels([str(w) for w in weights], labels)
    models = _load_cam_models(weights, target, device)
    report = CamReport()
    decoded = _decode_images(images, report)
    tag = "_".join(methods)
    files = iter(_plan_cam_files(Path(out), [p.stem for p, _ in decoded], tag, compare, [*images, *weights],
                                 overwrite))
    grid: list[list[ImageCam]] = []
    work = len(decoded) * len(models) * len(methods)
    with tqdm(total=work, desc="cam", unit="map", disable=work < 4, file=sys.stderr) as bar:
        for path, img in decoded:
            row = []
            for label, (model, normalize, classes, t) in zip(names, models):
                for method in methods:
                    # --layer is Grad-CAM's; CAM beside it stays on the last feature map.
                    cam = image_cam(model, img, model.preprocessing, normalize, classes, method=method, target=t,
                                    view=view, topk=topk, layer=layer if method == "gradcam" else None)
                    report.cams[(str(path), label, method)] = cam
                    row.append(cam)
                    bar.update()
            grid.append(row)
            if not compare:
                # One model: each panel title already names its method, and the figure title the model.
                cols = [] if len(models) == 1 else [f"{lab} {m}" for lab in names for m in methods]
                report.files.append(plot_cams(next(files), [row], col_labels=cols,
                                              title=f"{path.name}: {', '.join(names)}"))
    if compare:
        cols = [f"{lab}" if len(methods) == 1 else f"{lab}: {m}" for lab in names for m in methods]
        cols = cols if len(models) > 1 else []  # one model: the panel titles name the method
        report.files.append(plot_cams(next(files), grid, row_labels=[p.name for p, _ in decoded],
                                      col_labels=cols))
    return report


def cmd_cam(args: argparse.Namespace) -> int:
    import torch

    from effnet.train import auto_threads

    # On a shared CPU, spinning OpenMP threads on busy cores cost more than they give (see
    # auto_threads): 2 threads on a loaded 2-core machine took 27 s for 4 maps, 1 thread 6 s.
    torch.set_num_threads(args.threads or auto_threads())
    weights = ([args.weights] if args.weights else []) + list(args.compare or [])
    methods = ("cam", "gradcam") if args.method == "both" else (args.method,)
    rep = cam_images(args.images, weights, args.out, methods=methods, target=args.cls, view=args.view,
                     layer=args.layer, topk=args.topk, labels=args.labels, compare=bool(args.compare or args.grid),
                     device=args.device, overwrite=args.overwrite)
    if args.json:
        print(json.dumps({
            "maps": [{"image": img, "model": model, "method": method, "view": c.view,
                      "target": {"index": c.target[0], "name": c.target[1], "probability": c.target[2]},
                      "top": [{"name": n, "probability": p} for n, p in c.top], "peak_xy": list(c.peak),
                      "region_xyxy": list(c.box), "input_wh": list(c.input_size)}
                     for (img, model, method), c in rep.cams.items()],
            "files": [str(f) for f in rep.files], "skipped": rep.skipped}, indent=2))
    else:
        for (img, model, method), c in rep.cams.items():
            top = ", ".join(f"{n} {p:.3f}" for n, p in c.top)
            print(f"{img} [{model}, {method}, {c.view} view {c.input_size[0]}x{c.input_size[1]}]: {top}; "
                  f"map of {c.target[1]!r} peaks at x={c.peak[0]} y={c.peak[1]}")
        for f in rep.files:
            print(f"wrote {f}")
        if rep.skipped:
            print(f"skipped {len(rep.skipped)} unreadable image(s): "
                  + "; ".join(f"{p} ({r})" for p, r in rep.skipped.items()))
    return 1 if rep.skipped else 0


# --- effnet plot ----------------------------------------------------------------------------
def read_run(folder: str | Path) -> ResultPoint:
    """A training run folder (``effnet train --out``) as a point: best validation top-1 from
    ``metrics.csv``; FLOPs and parameters of the architecture recorded in ``best.safetensors``
    at its recorded evaluation resolution; the data set from ``config.yaml``."""
    import yaml

    from effnet.train.rundir import METRICS_FILE
    from effnet.viz.figures import run_point
    from effnet.weights import read_weights
    from effnet.weights.format import BEST_WEIGHTS, CONFIG_FILE

    folder = Path(folder)
    metrics = folder / METRICS_FILE
    if not metrics.is_file():
        raise ValueError(f"{folder}: not a run folder (no {METRICS_FILE}); expected an `effnet train --out` folder, "
                         "a results.json or a JSON list of points")
    try:
        with open(metrics, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError) as e:
        raise ValueError(f"{metrics}: cannot read ({e})") from None
    weights = folder / BEST_WEIGHTS
    if not weights.is_file():
        raise ValueError(f"{folder}: no {BEST_WEIGHTS} (the run has not finished an epoch); nothing to plot")
    wf = read_weights(weights)
    dataset = ""
    config = folder / CONFIG_FILE
    if config.is_file():
        try:
            data = (yaml.safe_load(config.read_text()) or {}).get("data", "")
        except (yaml.YAMLError, AttributeError, UnicodeDecodeError) as e:
            raise ValueError(f"{config}: not a readable run config ({e})") from None
        # A folder path names its data set by its last part.
        dataset = Path(str(data)).name if data else ""
    return run_point(folder.name, rows, wf.spec, wf.preprocessing.resolution, dataset)


def read_points(sources: list[str | Path], dataset: str = "") -> list[ResultPoint]:
    """Points from each source: a run folder, a folder holding a ``results.json`` (``effnet
    scale search|study``, ``effnet search``), or a JSON file (a results.json or the plain
    schema of :mod:`effnet.viz.figures`). ``dataset`` names the data of results files, which
    do not record it."""
    from effnet.train.rundir import METRICS_FILE
    from effnet.viz.figures import read_json_points

    points: list[ResultPoint] = []
    for src in sources:
        p = Path(src)
        if not p.exists():
            raise FileNotFoundError(f"{p}: no such run folder or file")
        if p.is_dir():
            if (p / METRICS_FILE).is_file():
                points.append(read_run(p))
            elif (p / "results.json").is_file():
                points.extend(read_json_points(p / "results.json", dataset))
            else:
                raise ValueError(f"{p}: neither a run folder (metrics.csv) nor a results folder (results.json)")
        else:
            points.extend(read_json_points(p, dataset))
    return points


def cmd_plot(args: argparse.Namespace) -> int:
    from effnet.files import check_output
    from effnet.viz.figures import plot_results

    for fmt in args.format:  # checked before the sources are read: never over a source or an earlier figure
        check_output(Path(args.out).with_suffix(f".{fmt}"), inputs=args.sources, overwrite=args.overwrite)
    points = read_points(args.sources, args.dataset or "")
    files = plot_results(args.out, points, paper=not args.no_paper, title=args.title or "",
                         formats=tuple(args.format))
    for p in points:
        cost = ", ".join(x for x in (f"{p.flops / 1e6:.1f} MFLOPs" if p.flops else "",
                                     f"{p.params / 1e6:.2f}M params" if p.params else "") if x)
        print(f"{p.series}: {p.name}: top-1 {p.top1:.2f}% ({cost}){' [' + p.dataset + ']' if p.dataset else ''}")
    for f in files:
        print(f"wrote {f}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    c = sub.add_parser(
        "cam", help="class activation maps (CAM / Grad-CAM) overlaid on images",
        description="Draw where a model finds the evidence for a class (CAM: classifier weights times the last "
                    "feature map; Grad-CAM: gradient-weighted) over each original image, with the top-k "
                    "predictions in the title. --compare puts several models side by side "
                    "(EfficientNet Figure 7: a row per image, a column per model).",
    )
    c.add_argument("images", nargs="+", metavar="IMAGE")
    c.add_argument("--weights", help="an effnet weight file (effnet train / effnet convert output)")
    c.add_argument("--compare", nargs="+", metavar="W", help="more weight files: one comparison grid")
    c.add_argument("--grid", action="store_true",
                   help="one grid for all images (a row each) instead of a file per image (implied by --compare)")
    c.add_argument("--labels", nargs="+", help="column names for the models (default: the file names)")
    c.add_argument("--class", dest="cls", metavar="K",
                   help="class to explain, an index or a name ('tiger cat'); default each image's top-1")
    c.add_argument("--method", choices=("cam", "gradcam", "both"), default="cam",
                   help="exact CAM (classifier weights x last feature map), Grad-CAM, or both side by side "
                        "(default cam)")
    c.add_argument("--view", choices=("full", "crop"), default="full",
                   help="full: the whole image, shorter side resized as for evaluation (default); crop: the "
                        "evaluation centre crop, as effnet predict sees it, mapped back onto the image")
    c.add_argument("--layer", help="Grad-CAM at this module (e.g. stages.4) instead of the last feature map")
    c.add_argument("--topk", type=int, default=3, help="classes named in each map's title (default 3)")
    c.add_argument("--out", default="cam", metavar="DIR",
                   help="output folder (default ./cam); a map already there is replaced only with --overwrite")
    c.add_argument("--overwrite", action="store_true", help="replace maps that exist in --out")
    c.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    c.add_argument("--threads", type=int, help="CPU threads (default: the cores other processes leave idle)")
    c.add_argument("--json", action="store_true", help="print the predictions, peaks and files as JSON")
    c.set_defaults(func=cmd_cam)

    p = sub.add_parser(
        "plot", help="accuracy against FLOPs and parameters: the published curves and your runs",
        description="Top-1 against FLOPs and against parameters (EfficientNet Figure 1 / Figure 5): the published "
                    "B0-B7 and V2 curves, and, on panels of their own, your training runs, scaling searches and "
                    "studies, architecture searches, or a JSON list of {name, top1, flops or params}.",
    )
    p.add_argument("sources", nargs="*", metavar="SOURCE",
                   help="run folder, results folder/results.json, or JSON points file")
    p.add_argument("--out", default="effnet_plot", metavar="PATH",
                   help="output path without suffix; one file per --format (default effnet_plot); an "
                        "existing file is replaced only with --overwrite, a SOURCE never")
    p.add_argument("--overwrite", action="store_true", help="replace figures that exist")
    p.add_argument("--format", nargs="+", default=["png", "svg"], choices=("png", "svg", "pdf"),
                   help="file formats written (default png svg)")
    p.add_argument("--no-paper", action="store_true", help="leave out the published curves")
    p.add_argument("--dataset", help="data set name for results.json files (they do not record it)")
    p.add_argument("--title", help="figure title (default: what is plotted)")
    p.set_defaults(func=cmd_plot)
