"""Evaluation and prediction with the preprocessing recorded in a weight file."""

from __future__ import annotations

import dataclasses
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from effnet.data import (
    DIGITS,
    IMAGE_EXTENSIONS,
    UNREADABLE,
    DecodedDataset,
    SkipLog,
    Split,
    default_workers,
    load_digits_split,
    load_eval_split,
    load_splits,
    make_loader,
)
from effnet.data.datasets import DECODE_ERRORS, decode, seeded_split
from effnet.deploy.optimize import optimize, run_in_chunks
from effnet.deploy.quantize import agreement as top1_agreement  # ``agreement`` names the measured value here
from effnet.deploy.runtime import RUNTIMES, available_runtimes, describe, int8_session, session
from effnet.preprocessing import EvalTransform, Normalize, Preprocessing
from effnet.specs.base import MIN_INPUT_SIZE
from effnet.train.score import default_device, score
from effnet.weights import load_model
from effnet.weights.format import BEST_WEIGHTS, CONFIG_FILE, SPLIT_FILE

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    """Scores on one split; accuracies in percent."""

    top1: float
    top5: float
    loss: float
    count: int
    per_class: dict[str, float]
    confusion: list[list[int]]  # rows: true class, columns: predicted class
    class_names: list[str]
    skipped: list[str] = field(default_factory=list)
    preprocessing: dict[str, object] = field(default_factory=dict)  # what was used (Preprocessing fields)
    path: str = "plain"  # the inference path: plain, fast (fp32) or int8 (see effnet.deploy)
    int8_agreement: float | None = None  # with int8: the fraction of images where int8's top-1 = fp32's
    trained_on: int = 0  # images of the evaluated split that the run (its split.json) trained on


def eval_preprocessing(recorded: Preprocessing, resolution: int | None = None) -> Preprocessing:
    """The evaluation view of a weight file: what it records, at ``resolution`` when given.

    Testing above the training size often raises accuracy, since random-resized-crop training
    makes objects look larger than a centre crop at the same size does (Touvron et al. 2019,
    "Fixing the train-test resolution discrepancy", FixRes). The crop fraction, interpolation and
    normalisation stay the file's; only the crop size (and so the resize) changes.
    """
    if resolution is None:
        return recorded
    if not isinstance(resolution, int) or resolution < MIN_INPUT_SIZE:
        raise ValueError(f"resolution: expected an integer >= {MIN_INPUT_SIZE} px, got {resolution!r}")
    return dataclasses.replace(recorded, resolution=resolution)


def describe_preprocessing(p: Preprocessing) -> str:
    """One line saying how images were prepared, e.g. for the CLI to print."""
    mean = ", ".join(f"{m / p.scale:.4g}" for m in p.mean)
    std = ", ".join(f"{s / p.scale:.4g}" for s in p.std)
    return (f"resize shorter side to {p.resize} ({p.interpolation}), centre crop {p.resolution} "
            f"(crop_pct {p.crop_pct:g}), input = (pixels - [{mean}]) / [{std}]")


def _inference_path(fast: bool, int8: bool, device: torch.device) -> str:
    if int8 and device.type != "cpu":
        raise ValueError(f"--int8 runs on the CPU only (quantized kernels), got device {device}; use --device cpu")
    return "int8" if int8 else "fast" if fast else "plain"


def _optimized(model: nn.Module, path: str, example: torch.Tensor,
               calibration: list[torch.Tensor] | None = None, runtime: str = "torch",
               weights: str | Path | None = None) -> nn.Module:
    """``model`` itself for the plain path, else :func:`effnet.deploy.optimize.optimize`'s copy
    (fp32, or int8 calibrated on ``calibration``); an fp32 path on a runtime other than torch is
    :func:`effnet.deploy.runtime.session` of the weight file (its export cached beside it)."""
    if runtime != "torch":
        source = weights if weights is not None else model
        if path == "int8":  # static int8 on ``runtime`` (auto: the fastest that agrees), else fp32
            return int8_session(source, calibration or [example], runtime=runtime,
                                resolution=int(example.shape[-1]))
        return session(source, runtime, resolution=int(example.shape[-1]))
    if path == "plain":
        return model
    int8 = path == "int8"
    # optimize's copies keep class_names / preprocessing (deepcopy, TracedInference, Int8Model).
    return optimize(model, example, int8=int8, calibration=calibration if int8 else None)


def _route(path: str, runtime: str, device: torch.device) -> str:
    """The runtime an fp32 path runs on: ``auto`` picks the fastest for ``--fast`` on the CPU
    (effnet.deploy.runtime.choose_runtime); the plain path stays the model as loaded unless a
    runtime is named."""
    if runtime not in (*RUNTIMES, "auto"):
        raise ValueError(f"--runtime {runtime!r}: expected one of {', '.join((*RUNTIMES, 'auto'))}")
    if runtime not in ("torch", "auto") and device.type != "cpu":
        raise ValueError(f"--runtime {runtime} runs on the CPU; use --device cpu (or --runtime torch on {device})")
    if device.type != "cpu" or (runtime == "auto" and path == "plain"):
        return "torch"
    if path == "int8" and runtime == "auto":
        # int8: the quantiser is ONNX Runtime's; with it installed, every installed runtime's int8
        # is tried and the fastest that agrees with fp32 is kept (int8_session); else torch's FX one.
        return "auto" if "onnxruntime" in available_runtimes() else "torch"
    return runtime


def describe_path(path: str) -> str:
    """One line naming the inference path (``fast:onnxruntime``: a runtime session), for the CLI."""
    path, _, runtime = path.partition(":")
    if runtime:
        what = "int8 (static, calibrated on the inputs)" if path == "int8" else f"{path} fp32"
        return f"{what} on {describe(runtime)}"
    return {
        "plain": "plain (eval-mode model as loaded)",
        "fast": "fast (effnet.optimize: BatchNorm folded, channels-last, static padding; fp32)",
        "int8": "int8 (effnet.optimize int8=True: x86 static quantization, calibrated on the inputs; CPU)",
    }[path]


def _load(weights: str | Path, device: torch.device) -> tuple[nn.Module, list[str]]:
    model = load_model(weights, map_location=device)
    names = model.class_names or [str(i) for i in range(model.spec.num_classes)]  # type: ignore[union-attr]
    return model, list(names)


def evaluate(
    weights: str | Path, data: str | Path | None = None, *, batch_size: int = 64, workers: int | None = None,
    device: str = "auto", val_fraction: float = 0.2, seed: int = 0,
    resolution: int | None = None, fast: bool = False, int8: bool = False, calibration_batches: int = 4,
    runtime: str = "auto",
) -> EvalResult:
    """Top-1/top-5, per-class accuracy and confusion matrix of a weight file on ``data`` (the
    ``digits`` val split, ``DIR/val`` or a folder of class sub-folders), preprocessed as the
    file records (resize, centre-crop fraction, normalisation); ``resolution`` tests at another
    crop size (FixRes, see :func:`eval_preprocessing`). ``EvalResult.preprocessing`` says what
    was used.

    ``fast`` runs :func:`effnet.deploy.optimize.optimize`'s fp32 copy (same scores up to float
    rounding); ``int8`` its int8 CPU model, calibrated on the first ``calibration_batches``
    batches of ``data`` (only their activation ranges are used, never labels), and sets
    ``EvalResult.int8_agreement``: how often int8's top-1 equals the fp32 model's.

    ``data=None``: for a training run's weights (a run folder, or a file in one), the run's own
    validation split as it recorded it (``split.json``); else ``digits``. Scoring images the run
    trained on logs a warning with their count (``EvalResult.trained_on``). The data's classes
    are matched to the model's by name (a subset is fine); classes the model does not know are
    refused, listing both.

    ``EvalResult.confusion`` holds the matrix as numbers; ``effnet eval --confusion PNG`` (or
    ``effnet.viz.plot_confusion``) draws it.
    """
    dev = default_device("cpu" if int8 and device == "auto" else device)
    path = _inference_path(fast, int8, dev)
    runtime = _route(path, runtime, dev)  # ``runtime``: torch/onnxruntime/openvino/auto (effnet.deploy.runtime)
    model, names = _load(weights, dev)
    record = run_record(weights)
    if data is None and record is not None:
        split, data = recorded_val_split(record), record["data"]
        log.info("evaluating on the run's recorded validation split: %d images of %s", len(split), data)
    else:
        data = DIGITS if data is None else data
        split = load_eval_split(data, val_fraction, seed)
    trained_on = 0 if record is None else overlap_with_training(record, data, split, val_fraction, seed)
    if trained_on:
        log.warning("%d of the %d images evaluated were in the run's training split: these scores are not "
                    "held-out (evaluate the run's own validation split with `effnet eval %s`)", trained_on,
                    len(split), Path(weights).parent if Path(weights).is_file() else weights)
    split = match_classes(split, names, getattr(model, "class_names", None) is not None, data, weights)
    prep = eval_preprocessing(model.preprocessing, resolution)  # type: ignore[union-attr]
    log.debug("evaluating %s with: %s", weights, describe_preprocessing(prep))
    ds = DecodedDataset(split, EvalTransform(prep), prep.resolution)
    loader = make_loader(ds, batch_size, workers=default_workers(data) if workers is None else workers)
    skips = SkipLog()
    normalize = Normalize(prep).to(dev)
    agreement = None
    if path != "plain" or runtime != "torch":
        # The fp32 path only needs one example (its size); int8 calibrates on the batches.
        calibration = _calibration_batches(loader, normalize, dev, calibration_batches if path == "int8" else 1)
        fast_model = _optimized(model, path, calibration[0][:1], calibration, runtime, weights)
        path = fast_model.path_label(path) if runtime != "torch" else path
        if path.partition(":")[0] == "int8":
            agreement = top1_agreement(model, fast_model, _images(loader, normalize, dev))
        model = fast_model
    log.debug("inference path: %s", describe_path(path))
    loss, top1, top5, confusion = score(model, loader, normalize, dev, len(names), split, skips)
    totals = confusion.sum(1)
    per_class = {names[i]: 100.0 * confusion[i, i].item() / totals[i].item()
                 for i in range(len(names)) if totals[i] > 0}
    skips.report()
    return EvalResult(top1, top5, loss, int(totals.sum()), per_class, confusion.tolist(), names,
                      sorted(skips.skipped), prep.to_dict(), path, agreement, trained_on)


def match_classes(split: Split, names: list[str], named: bool, data: object, weights: object) -> Split:
    """``split`` relabelled to the model's class indices, matched by name. Every class of the
    data must be one of the model's (a subset is fine); a model without recorded class names is
    matched by index, which needs the same count."""
    if not named:
        if len(split.class_names) != len(names):
            raise ValueError(f"{data} has {len(split.class_names)} classes but the model in {weights} predicts "
                             f"{len(names)} and records no class names to match them by")
        log.warning("the model in %s records no class names: %s's classes %s are scored by index", weights, data,
                    split.class_names)
        return Split(split.items, split.labels, names)
    unknown = [c for c in split.class_names if c not in names]
    if unknown:
        raise ValueError(f"the classes of {data} do not match the model's: {unknown} are not among the model's "
                         f"classes; data classes: {split.class_names}; model classes ({len(names)}): "
                         f"{names[:50]}{' ...' if len(names) > 50 else ''}")
    remap = [names.index(c) for c in split.class_names]
    return Split(split.items, [remap[y] for y in split.labels], names)


def run_record(weights: str | Path) -> dict | None:
    """The ``split.json`` of the training run ``weights`` belongs to (a run folder or a file in
    one); for a run folder without that file, its ``config.yaml``'s data, seed and fraction (the
    split is drawn again from them); None outside a run folder."""
    import json

    import yaml

    path = Path(weights)
    folder = path if path.is_dir() else path.parent
    if (folder / SPLIT_FILE).is_file():
        return json.loads((folder / SPLIT_FILE).read_text())
    if (folder / CONFIG_FILE).is_file() and (folder / BEST_WEIGHTS).is_file():
        cfg = yaml.safe_load((folder / CONFIG_FILE).read_text()) or {}
        if "data" in cfg:
            return {"data": cfg["data"], "val_fraction": cfg.get("val_fraction", 0.2), "seed": cfg.get("seed", 0)}
    return None


def _redrawn(record: dict) -> tuple[Split, Split]:
    """A recorded split without file lists, drawn again from its data, fraction and seed."""
    return load_splits(record["data"], record["val_fraction"], record["seed"])


def recorded_val_split(record: dict) -> Split:
    """The validation split a run recorded: its file list, or digits' seed and fraction."""
    if record["data"] == DIGITS:
        return load_digits_split(record["val_fraction"], record["seed"])[1]
    if "val" not in record:
        return _redrawn(record)[1]
    root = Path(record["data"])
    items = [root / rel for rel, _ in record["val"]]
    missing = [p for p in items if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} of the run's {len(items)} validation images are gone (first: "
                                f"{missing[0]}); pass --data DIR to evaluate on a folder instead")
    return Split(items, [label for _, label in record["val"]], record["class_names"])


def overlap_with_training(record: dict, data: object, split: Split, val_fraction: float, seed: int) -> int:
    """How many images of ``split`` (evaluated as ``data``) the run trained on."""
    if record["data"] == DIGITS or str(data) == DIGITS:
        if record["data"] != DIGITS or str(data) != DIGITS:
            return 0
        from sklearn.datasets import load_digits

        labels = [int(t) for t in load_digits().target]
        trained, _ = seeded_split(len(labels), labels, record["val_fraction"], record["seed"])
        _, evaluated = seeded_split(len(labels), labels, val_fraction, seed)
        return len(set(trained) & set(evaluated))
    root = Path(record["data"])
    if "train" in record:
        trained = {str((root / rel).resolve()) for rel, _ in record["train"]}
    else:
        trained = {str(Path(p).resolve()) for p in _redrawn(record)[0].items if isinstance(p, Path)}
    return sum(str(Path(item).resolve()) in trained for item in split.items if isinstance(item, Path))


def _images(loader: torch.utils.data.DataLoader, normalize: nn.Module, device: torch.device):  # noqa: ANN202
    """The loader's readable images, normalised, batch by batch (labels dropped)."""
    for images, labels, _ in loader:
        images = images[labels != UNREADABLE]
        if len(images):
            yield normalize(images.to(device))


def _calibration_batches(loader: torch.utils.data.DataLoader, normalize: nn.Module, device: torch.device,
                         count: int) -> list[torch.Tensor]:
    if count < 1:
        raise ValueError(f"calibration_batches: expected at least 1, got {count}")
    batches = []
    for batch in _images(loader, normalize, device):
        batches.append(batch)
        if len(batches) == count:
            break
    if not batches:
        raise ValueError("evaluation: no readable image to calibrate or optimise on")
    return batches


@dataclass
class Prediction:
    image: str
    top: list[tuple[str, float]]  # (class name, probability), best first
    error: str | None = None
    preprocessing: dict[str, object] = field(default_factory=dict)  # what was used (Preprocessing fields)
    path: str = "plain"  # the inference path: plain, fast (fp32) or int8 (see effnet.deploy)


def image_files(paths: list[str | Path]) -> list[Path]:
    """``paths`` with each folder replaced by the image files under it (recursively, the
    extensions of :data:`effnet.data.IMAGE_EXTENSIONS`, sorted); files are kept as given."""
    out: list[Path] = []
    for path in map(Path, paths):
        if not path.is_dir():
            out.append(path)
            continue
        found = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not found:
            raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under the folder {path}")
        out += found
    return out


#: Images per call of the plain model on the CPU: B0 at 224 px, 2 threads (2-core AMD EPYC), ran
#: 22.5 ms per image at batch 1, 20.9 at 4, 30.3 at 8 and 41.1 at 32 (a larger batch's feature
#: maps leave the caches); the optimised paths chunk their own calls (micro_batch).
PLAIN_CPU_CHUNK = 4


def _decoded(paths: list[Path], transform: nn.Module, normalize: nn.Module,
             device: torch.device) -> list[tuple[str, torch.Tensor | None, str | None]]:
    """(path, its (1, C, H, W) input on ``device``, None) per readable file; (path, None, the read
    error) per unreadable one."""
    out: list[tuple[str, torch.Tensor | None, str | None]] = []
    for path in paths:
        try:
            img = decode(path)
        except DECODE_ERRORS as e:
            out.append((str(path), None, f"cannot read image: {e}"))
            continue
        out.append((str(path), normalize(transform(img)[None].to(device)), None))
    return out


@torch.no_grad()
def predict(
    images: list[str | Path], weights: str | Path, *, topk: int = 5, device: str = "auto",
    resolution: int | None = None, fast: bool = False, int8: bool = False, runtime: str = "auto",
    batch_size: int = 32,
) -> list[Prediction]:
    """Top-``k`` class names and probabilities for each image file (folders are searched
    recursively for image files, see :func:`image_files`; an unreadable one gets
    ``error`` set instead of crashing the batch), preprocessed as the file records, at
    ``resolution`` when given (FixRes, see :func:`eval_preprocessing`).

    Images are decoded and run ``batch_size`` at a time, so memory holds one batch, not the
    folder (a progress bar shows on a terminal when there is more than one batch).
    ``fast``: through :func:`effnet.deploy.optimize.optimize` (fp32, same predictions up to float
    rounding); ``int8``: its int8 CPU model, calibrated on the first batch's readable images.
    ``Prediction.path`` says which was used."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"predict: batch_size must be a positive number of images, got {batch_size!r}")
    dev = default_device("cpu" if int8 and device == "auto" else device)
    route = _inference_path(fast, int8, dev)
    runtime = _route(route, runtime, dev)  # ``runtime``: torch/onnxruntime/openvino/auto (effnet.deploy.runtime)
    model, names = _load(weights, dev)
    prep = eval_preprocessing(model.preprocessing, resolution)  # type: ignore[union-attr]
    used = prep.to_dict()
    transform, normalize = EvalTransform(prep), Normalize(prep).to(dev)
    files = image_files(images)
    to_build = route != "plain" or runtime != "torch"  # an optimised path, built on the first images
    chunk = PLAIN_CPU_CHUNK if not to_build and dev.type == "cpu" else None
    out: list[Prediction] = []
    with tqdm(total=len(files), desc="predict", unit="image", file=sys.stderr, leave=False,
              disable=None if len(files) > batch_size else True) as bar:
        for start in range(0, len(files), batch_size):
            batch = _decoded(files[start:start + batch_size], transform, normalize, dev)
            readable = [x for _, x, _ in batch if x is not None]
            if readable and to_build:  # once, on the first batch with a readable image
                model = _optimized(model, route, readable[0], [torch.cat(readable)], runtime, weights)
                route = model.path_label(route) if runtime != "torch" else route
                to_build = False
            probs = iter(run_in_chunks(model, torch.cat(readable), chunk).float().softmax(dim=1) if readable else ())
            for path, x, error in batch:
                if x is None:
                    out.append(Prediction(path, [], error, used))
                    continue
                row = next(probs)
                p, i = row.topk(min(topk, len(row)))
                out.append(Prediction(path, [(names[j], float(q)) for q, j in zip(p.tolist(), i.tolist())],
                                      preprocessing=used))
            bar.update(len(batch))
    for pred in out:  # every row names the path that ran (known once the first batch built it)
        pred.path = route
    log.debug("inference path: %s", describe_path(route))
    return out
