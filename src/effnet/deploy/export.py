"""Verified export: ONNX, TorchScript or a ``torch.export`` program, checked against eager PyTorch.

:func:`export` builds the deployment model (TF "same" padding made static with
:func:`effnet.deploy.optimize.static_padding`; BatchNorm folded with ``fast=True`` through
:func:`effnet.deploy.optimize.optimize`; fp16 with ``half=True``), writes it into a temporary
folder beside the output, loads it back with the format's own runtime (ONNX Runtime on CPU,
``torch.jit.load``, ``torch.export.load``), runs random and real images through it and through
the *unoptimised* eager model, and only then moves it into place with ``os.replace``. A
verification failure deletes the temporary folder and raises, naming the largest difference:
a half-written or wrong export is never left under the output name.

Beside the export, ``OUT.json`` records what a deployment needs and nothing else provides: the
input name, shape and dtype (``"batch"`` for a dynamic batch axis), the preprocessing recorded
in the weights (resize, centre crop, interpolation, ``(pixels * scale - mean) / std``), the
class names, the effnet version and the verification result.

Error measure: ``max|export - eager| / max(1, max|eager|)`` over every check, i.e. absolute
for logits within +-1 and relative to the largest logit beyond (a trained model's logits reach
10-20, where float32 round-off alone is ~1e-6 relative); tolerance 1e-4. An fp16 export is
compared with the float32 eager model on class probabilities instead, ``max |softmax(export) -
softmax(eager)|``, tolerance 1e-2: fp16 keeps ~3 significant digits, and with the real Lite0
weights ONNX Runtime's fp16 logits drift by up to 1.7% of the largest one (PyTorch's own fp16:
0.9%), which moves probabilities by at most 7.9e-3 on random pixels, 2.3e-3 on real photos.
"""

from __future__ import annotations

import copy
import dataclasses
import errno
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from effnet import registry
from effnet.data.datasets import DECODE_ERRORS, decode
from effnet.deploy.formats import FORMATS, INPUT_NAME, MIN_OPSET, OUTPUT_NAME, Runner, load, max_opset, write
from effnet.deploy.optimize import optimize, static_padding
from effnet.files import check_output, commit, disk_full
from effnet.hostmem import check_memory
from effnet.preprocessing import EvalTransform, Normalize, Preprocessing
from effnet.scaling.limits import activation_bytes
from effnet.specs.base import MIN_INPUT_SIZE
from effnet.weights import create_model, load_model

__all__ = ["FORMATS", "Check", "ExportResult", "export", "sample_images"]

log = logging.getLogger(__name__)

TOLERANCE = 1e-4
HALF_TOLERANCE = 1e-2
#: scikit-image's bundled photographs, used as the real images when none are given.
SAMPLE_PHOTOS = ("chelsea.png", "coffee.png", "astronaut.png")


@dataclass(frozen=True)
class Check:
    """One verification run: which input, its batch size, and the export's difference from eager."""

    input: str
    batch: int
    max_abs_diff: float
    error: float  # max_abs_diff / max(1, max |eager|); fp16: max |softmax difference|


@dataclass
class ExportResult:
    """What :func:`export` wrote and how well the export matched eager PyTorch."""

    path: Path
    metadata_path: Path
    format: str
    max_error: float
    tolerance: float
    checks: list[Check]
    metadata: dict[str, Any] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)  # everything written, the export's data files included


# --- inputs -------------------------------------------------------------------------------------
def _load_source(source: str | Path | nn.Module) -> tuple[nn.Module, Preprocessing, list[str] | None, str]:
    """(eval model, preprocessing, class names, description) from a weight file, a registered
    model name (random weights) or a model object."""
    if isinstance(source, nn.Module):
        spec = getattr(source, "spec", None)
        prep = getattr(source, "preprocessing", None) or Preprocessing(
            resolution=getattr(spec, "resolution", 224))
        return copy.deepcopy(source).float().eval(), prep, getattr(source, "class_names", None), (
            f"model object ({getattr(spec, 'name', type(source).__name__)})")
    path = Path(source)
    if path.is_file():
        model = load_model(path)
        return model, model.preprocessing, model.class_names, str(path)  # type: ignore[return-value]
    if isinstance(source, str) and source in registry.REGISTRY:
        # A name is a convenience for trying the export pipeline: the weights are random.
        log.warning("%s: a registered model name, exported with random weights (pass a weight "
                    "file for a trained model)", source)
        model = create_model(source).eval()
        return model, Preprocessing(resolution=model.spec.resolution), None, f"{source} (random weights)"
    if path.suffix or os.sep in str(source):
        raise FileNotFoundError(f"weight file not found: {source} (expected an effnet .safetensors file; "
                                f"`effnet convert` makes one from torchvision/timm/Keras weights)")
    registry.get_spec(str(source))  # raises "unknown model ..., did you mean ...?"
    raise AssertionError("unreachable")  # pragma: no cover


def _check_resolution(resolution: object) -> int:
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < MIN_INPUT_SIZE:
        raise ValueError(
            f"resolution {resolution!r}: the model needs an integer of at least {MIN_INPUT_SIZE} px "
            f"(five stride-2 reductions); pass --resolution {MIN_INPUT_SIZE} or more")
    return resolution


def sample_images() -> list[Path]:
    """scikit-image's bundled photographs (a cat, a cup of coffee, an astronaut) when it is
    installed, else an empty list: real images for the verification without asking for any."""
    try:
        from skimage import data as skimage_data
    except ImportError:
        return []
    folder = Path(skimage_data.data_dir)
    return [folder / n for n in SAMPLE_PHOTOS if (folder / n).is_file()]


def _real_batch(images: Sequence[str | Path], prep: Preprocessing) -> torch.Tensor:
    """The images as the weights expect them: resized, centre-cropped, normalised, (N, 3, R, R)."""
    transform, normalize = EvalTransform(prep), Normalize(prep)
    out = []
    for image in images:
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"image not found: {path}")
        try:
            img = decode(path)
        except DECODE_ERRORS as e:
            raise ValueError(f"cannot read image {path} ({type(e).__name__}: {e}); pass a readable "
                             f"JPEG/PNG/WebP, or leave it out") from e
        out.append(normalize(transform(img)[None]))
    return torch.cat(out)


def _random_batch(batch: int, resolution: int, prep: Preprocessing, seed: int) -> torch.Tensor:
    """Uniform random pixels 0..255, normalised as real images are (so the input range is real)."""
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (batch, 3, resolution, resolution), generator=g)
    return Normalize(prep)(pixels)


def _output_path(out: str | Path, format: str) -> Path:
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"output {out} is a folder: expected a file name such as {out / ('model' + FORMATS[format])}")
    return out


def effnet_version() -> str:
    """The installed effnet's version, recorded beside exported and checked files."""
    # From the installed distribution: the package front door (effnet.__version__) is above
    # every layer, so layered modules do not import it.
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("effnet")
    except PackageNotFoundError:
        return "unknown"


def _error(y: torch.Tensor, ref: torch.Tensor, probabilities: bool = False) -> tuple[float, float]:
    """(max |y - ref|, the error measure of the module docstring)."""
    y = y.float()
    diff = (y - ref).abs().max().item()
    if diff != diff:  # NaN: the export produced garbage (or fp16 overflowed)
        return float("inf"), float("inf")
    if probabilities and ref.ndim == 2 and ref.shape[1] > 1:
        return diff, (y.softmax(1) - ref.softmax(1)).abs().max().item()
    return diff, diff / max(1.0, ref.abs().max().item())


def _check_request(weights: str | Path | nn.Module, out: str | Path, format: str, batch_size: int, opset: int,
                   images: list[str | Path] | None, overwrite: bool) -> Path:
    """Refuse a bad request before any work: the format, batch size and opset, an output that
    exists (without ``overwrite``) or is an input, a missing ONNX runtime, missing images.
    Returns the output path."""
    if format not in FORMATS:
        raise ValueError(f"unsupported format {format!r}: expected one of {', '.join(FORMATS)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
    if format == "onnx" and not MIN_OPSET <= opset <= max_opset():
        raise ValueError(f"--opset {opset}: ONNX Runtime runs opsets {MIN_OPSET} to {max_opset()} of this "
                         f"export; choose one in that range (default 17)")
    path = _output_path(out, format)
    sources = [weights] if isinstance(weights, (str, Path)) and Path(weights).exists() else []
    check_output(path, inputs=[*sources, *(images or [])], overwrite=overwrite)
    check_output(path.parent / f"{path.name}.json", inputs=sources, overwrite=overwrite)
    if format == "onnx":  # fail before the (long) export when the runtime is missing
        for module in ("onnx", "onnxruntime"):
            try:
                __import__(module)
            except ImportError as e:
                raise RuntimeError(f"ONNX export needs {module}: pip install 'effnet[export]'") from e
    if images is not None:
        missing = [str(p) for p in images if not Path(p).is_file()]
        if missing:
            raise FileNotFoundError(f"image(s) not found: {', '.join(missing)}")
    return path


def _check_reference(reference: nn.Module, resolution: int, largest_batch: int) -> None:
    """Refuse a model the export cannot verify (not RGB) or an input size that would not fit in
    memory, before the export allocates."""
    spec = getattr(reference, "spec", None)
    if spec is not None:
        # A huge --resolution would run for minutes, then die in the allocator (verification runs
        # the reference and the export at batch 3).
        check_memory(activation_bytes(spec, resolution, largest_batch),
                     f"export at {resolution} px", "pass a smaller --resolution")
    in_channels = getattr(spec, "in_channels", 3)
    if in_channels != 3:
        raise ValueError(f"export: the model takes {in_channels} input channels; the verification feeds "
                         f"RGB images (3 channels)")


def _verification_inputs(images: list[str | Path] | None, prep: Preprocessing, resolution: int, batch_size: int,
                         dynamic_batch: bool, seed: int) -> list[tuple[str, torch.Tensor]]:
    """(name, batch) pairs in the float32 normalised input space: random pixels at the export's
    batch sizes, then the real images (chunks of ``batch_size`` for a fixed batch, the last one
    filled up with random pixels)."""
    batches = [1, 3] if dynamic_batch else [batch_size]
    inputs = [(f"random pixels, batch {b}", _random_batch(b, resolution, prep, seed + i)) for i, b in enumerate(batches)]
    photos = sample_images() if images is None else images
    if not photos:
        log.warning("export: verifying on random pixels only (%s)", "no images given" if images is not None
                    else "scikit-image, whose sample photos are the default real images, is not installed")
        return inputs
    real = _real_batch(photos, prep)
    if dynamic_batch:
        inputs.append((f"{len(photos)} real image(s)", real))
        return inputs
    for start in range(0, len(real), batch_size):
        chunk = real[start:start + batch_size]
        if len(chunk) < batch_size:
            chunk = torch.cat([chunk, _random_batch(batch_size - len(chunk), resolution, prep, seed + 99)])
        inputs.append((f"real image(s) {start + 1}-{min(start + batch_size, len(real))}", chunk))
    return inputs


def _deployment_model(reference: nn.Module, example: torch.Tensor, resolution: int, fast: bool,
                      dtype: torch.dtype) -> nn.Module:
    """The model that is exported: static padding (TF "same" made fixed for this size), BN folded
    with ``fast``, in ``dtype``, frozen; the reference stays the unoptimised float32 eager model."""
    deploy = optimize(reference, example, trace=False) if fast else static_padding(reference, resolution)
    deploy = deploy.eval().to(dtype)
    for p in deploy.parameters():
        p.requires_grad_(False)
    return deploy


def _write_and_load(deploy: nn.Module, example: torch.Tensor, tmp: Path, format: str, dynamic_batch: bool,
                    opset: int, dynamo: bool, path: Path, described: str,
                    step: Callable[[], object]) -> tuple[Runner, str]:
    """Write the export to ``tmp`` and load it back with its runtime; a failure of either says
    that nothing was written to ``path``."""
    try:
        with torch.no_grad():
            write(format, deploy, example, tmp, dynamic_batch=dynamic_batch, opset=opset, dynamo=dynamo)
    except Exception as e:
        if disk_full(path.parent):  # the exporter's own words would blame the conversion
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from e
        hint = " (try --dynamo, the other ONNX exporter)" if format == "onnx" and not dynamo else ""
        raise RuntimeError(f"export failed: the {format} exporter could not convert {described} "
                           f"({type(e).__name__}: {e}){hint}; nothing was written to {path}") from e
    step()
    try:
        loaded = load(format, tmp)
    except Exception as e:
        raise RuntimeError(f"export verification failed: {format} export of {described} cannot be loaded "
                           f"by its runtime ({type(e).__name__}: {e}); nothing was written to {path}") from e
    step()
    return loaded


def _verify(reference: nn.Module, run: Runner, inputs: list[tuple[str, torch.Tensor]], dtype: torch.dtype,
            format: str, half: bool, tolerance: float, path: Path,
            step: Callable[[], object]) -> tuple[list[Check], Check, int]:
    """Run the export and the eager reference on every input: (checks, the worst one, the number
    of outputs). Raises ``RuntimeError`` on a failed run, a wrong shape or an error above
    ``tolerance``."""
    checks: list[Check] = []
    outputs = 0
    with torch.no_grad():
        for name, x in inputs:
            ref = reference(x)
            try:
                y = run(x.to(dtype))
            except Exception as e:
                raise RuntimeError(f"export verification failed: the {format} export cannot run {name} "
                                   f"({type(e).__name__}: {e}); nothing was written to {path}") from e
            if tuple(y.shape) != tuple(ref.shape):
                raise RuntimeError(f"export verification failed: {format} output shape {tuple(y.shape)} on "
                                   f"{name}, eager {tuple(ref.shape)}; nothing was written to {path}")
            diff, err = _error(y, ref, probabilities=half)
            checks.append(Check(name, len(x), diff, err))
            outputs = int(ref.shape[1])
            log.debug("verify %s: max |diff| %.3g, error %.3g", name, diff, err)
            step()
    worst = max(checks, key=lambda c: c.error)
    if not worst.error <= tolerance:
        raise RuntimeError(
            f"export verification failed: the {format} export differs from eager PyTorch by {worst.error:.3g} "
            f"(max |diff| {worst.max_abs_diff:.3g} on {worst.input}), above the tolerance {tolerance:g}; "
            f"nothing was written to {path}")
    return checks, worst, outputs


def _metadata(*, format: str, path: Path, files: list[str], reference: nn.Module, described: str,
              dynamic_batch: bool, batch_size: int, half: bool, fast: bool, resolution: int, outputs: int,
              prep: Preprocessing, class_names: list[str] | None, opset: int, dynamo: bool, runtime: str,
              tolerance: float, checks: list[Check], worst: Check) -> dict[str, Any]:
    """The ``OUT.json`` written beside the export: what it takes, what it returns, how it was checked."""
    batch: str | int = "batch" if dynamic_batch else batch_size
    return {
        "format": format,
        "file": path.name,
        "files": files,
        "effnet_version": effnet_version(),
        "model": getattr(getattr(reference, "spec", None), "name", type(reference).__name__),
        "weights": described,
        "input": {
            "name": INPUT_NAME if format == "onnx" else "x",
            "shape": [batch, 3, resolution, resolution],
            "dynamic_axes": {"0": "batch"} if dynamic_batch else {},
            "dtype": "float16" if half else "float32",
            "layout": "NCHW, RGB, normalised: (pixels * scale - mean) / std",
        },
        "output": {"name": OUTPUT_NAME if format == "onnx" else "output", "shape": [batch, outputs],
                   "meaning": "logits (apply softmax for probabilities)"},
        "resolution": resolution,
        "preprocessing": {**prep.to_dict(), "resize": prep.resize,
                          "steps": "resize shorter side to `resize` (interpolation), centre crop "
                                   "`resolution`, then (pixels * scale - mean) / std per channel"},
        "class_names": list(class_names) if class_names is not None else None,
        "optimizations": {"static_padding": True, "fold_batchnorm": fast, "half": half},
        "onnx": {"opset": opset, "exporter": "dynamo" if dynamo else "torchscript"} if format == "onnx" else None,
        "verification": {
            "runtime": runtime,
            "reference": "eager PyTorch, float32, unoptimised",
            "error": ("max |softmax(export) - softmax(eager)|" if half
                      else "max |export - eager| / max(1, max |eager|)"),
            "tolerance": tolerance,
            "max_error": worst.error,
            "checks": [dataclasses.asdict(c) for c in checks],
        },
    }


def _commit_all(tmpdir: Path, export_file: Path, meta_file: Path, folder: Path) -> list[Path]:
    """Move everything in ``tmpdir`` into ``folder``: data files first, the export next, the JSON
    last, so that a reader that sees the JSON sees all."""
    order = [f for f in tmpdir.iterdir() if f not in (export_file, meta_file)] + [export_file, meta_file]
    written = []
    for f in order:
        commit(f, folder / f.name)
        written.append(folder / f.name)
    return written


def export(
    weights: str | Path | nn.Module,
    out: str | Path,
    format: str = "onnx",
    *,
    resolution: int | None = None,
    dynamic_batch: bool = False,
    batch_size: int = 1,
    half: bool = False,
    fast: bool = False,
    images: Sequence[str | Path] | None = None,
    tolerance: float | None = None,
    opset: int = 17,
    dynamo: bool = False,
    seed: int = 0,
    overwrite: bool = False,
) -> ExportResult:
    """Export ``weights`` to ``out`` in ``format`` and verify it against eager PyTorch.

    ``weights``: an effnet weight file (its preprocessing and class names are recorded beside
    the export), a registered model name (random weights: for trying the pipeline), or a model.
    ``format``: ``"onnx"``, ``"torchscript"`` or ``"exported-program"``. ``resolution``: the
    input size (default: the one the weights record); TF "same" padding is fixed for it, so the
    export takes that size only. ``dynamic_batch``: the batch axis is symbolic (verified at batch
    1 and 3); otherwise the export's batch is ``batch_size``. ``half``: float16 weights and
    input (checked on probabilities, see the module docstring). ``fast``:
    :func:`effnet.deploy.optimize.optimize` (BatchNorm folding) first.
    ``images``: real images to verify on (default: scikit-image's sample photographs when it is
    installed). ``tolerance``: default 1e-4, or 1e-2 with ``half`` (see the module docstring
    for the error measure). ``dynamo``: ONNX through ``torch.export`` instead of the
    TorchScript-based exporter (same result here, about 5x slower to export B0).
    ``overwrite``: replace an existing ``out`` (and its ``.json``); without it an existing file
    is refused before any work, and ``out`` may never be the weight file itself.

    Returns an :class:`ExportResult`; raises ``RuntimeError`` (nothing written) when the export
    differs from eager PyTorch by more than the tolerance.
    """
    images = list(images) if images is not None else None
    path = _check_request(weights, out, format, batch_size, opset, images, overwrite)
    reference, recorded, class_names, described = _load_source(weights)
    resolution = _check_resolution(recorded.resolution if resolution is None else resolution)
    prep = dataclasses.replace(recorded, resolution=resolution)
    _check_reference(reference, resolution, max(batch_size, 3 if dynamic_batch else 1))
    tolerance = (HALF_TOLERANCE if half else TOLERANCE) if tolerance is None else tolerance
    inputs = _verification_inputs(images, prep, resolution, batch_size, dynamic_batch, seed)

    steps = tqdm(total=3 + len(inputs), desc=f"export {format}", unit="step", disable=None)
    dtype = torch.float16 if half else torch.float32
    example = _random_batch(2 if dynamic_batch else batch_size, resolution, prep, seed + 7)
    deploy = _deployment_model(reference, example, resolution, fast, dtype)
    steps.update()

    path.parent.mkdir(parents=True, exist_ok=True)
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        tmp = tmpdir / path.name
        log.info("exporting %s to %s (%s, %d px, %s batch%s%s)", described, path, format, resolution,
                 "dynamic" if dynamic_batch else f"fixed {batch_size}", ", fp16" if half else "",
                 ", BN folded" if fast else "")
        run, runtime = _write_and_load(deploy, example.to(dtype), tmp, format, dynamic_batch, opset, dynamo,
                                       path, described, steps.update)
        checks, worst, outputs = _verify(reference, run, inputs, dtype, format, half, tolerance, path, steps.update)
        meta = _metadata(format=format, path=path, files=sorted(f.name for f in tmpdir.iterdir()),
                         reference=reference, described=described, dynamic_batch=dynamic_batch,
                         batch_size=batch_size, half=half, fast=fast, resolution=resolution, outputs=outputs,
                         prep=prep, class_names=class_names, opset=opset, dynamo=dynamo, runtime=runtime,
                         tolerance=tolerance, checks=checks, worst=worst)
        meta_file = tmpdir / f"{path.name}.json"
        meta_file.write_text(json.dumps(meta, indent=2) + "\n")
        written = _commit_all(tmpdir, tmp, meta_file, path.parent)
    finally:
        steps.close()
        shutil.rmtree(tmpdir, ignore_errors=True)
    log.info("exported %s: max error %.3g (tolerance %g) over %d checks with %s", path, worst.error,
             tolerance, len(checks), runtime)
    return ExportResult(path, path.parent / meta_file.name, format, worst.error, tolerance, checks, meta, written)
