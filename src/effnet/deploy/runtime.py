"""Runtime sessions: one effnet model on the CPU runtime that runs it fastest, same outputs.

A :class:`Session` is an ``nn.Module`` whose forward runs the model through one runtime:

- ``"torch"``: :func:`effnet.deploy.optimize.optimize`'s traced copy (BatchNorm folded,
  channels-last, static padding);
- ``"onnxruntime"`` / ``"openvino"``: effnet's verified ONNX export
  (:func:`effnet.deploy.export.export`, BatchNorm folded, dynamic batch), run by ONNX Runtime's
  CPU provider or OpenVINO's CPU plugin (fp32 inference precision: OpenVINO would otherwise run
  bf16 on CPUs that have it).

The export is cached next to the weight file, ``W.<key>.onnx`` (+ the export's ``.json``), where
the key hashes the weight file's bytes, the resolution and effnet's version: new weights or a new
effnet make a new export, never a stale one. Every runtime is checked against the eager model
the first time it runs a cached export (max |runtime - eager| / max(1, max |eager|) <= 1e-4 on
random pixels at batch 2; the export itself is verified on random and real images by
:func:`~effnet.deploy.export.export`), and the checks are recorded in ``W.<key>.onnx.checks.json``.

``runtime="auto"`` times every runtime installed here at batch 1 (a few interleaved calls, once)
and keeps the fastest; the choice is recorded in the same file for this thread count (delete
the ``auto@N threads`` entry, or the file, to measure again, e.g. after timing on a busy machine).
On a 2-core x86 machine OpenVINO and ONNX Runtime were within ~15% of each other for B0 and
Lite0, both faster than the torch path (benchmarks/reference/2026-12-04_runtimes_*: a busy machine).

int8 (:func:`int8_session`) runs on either runtime, each with the QDQ layout its kernels fuse
best (:func:`effnet.deploy.quantize.quantize_onnx`); ``runtime="auto"`` times both and keeps the
fastest int8 that agrees with fp32. On the same 2-core x86 CPU (AVX-512 VNNI), batch 32, OpenVINO's
int8 ran 1.6x to 1.9x (B0) and 2.5x to 3.2x (Lite0) the faster fp32 session, ONNX Runtime's own
1.4x to 1.6x and ~2x (benchmarks/reference/2026-12-05_int8_*: a busy machine).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.util
import json
import logging
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from effnet.deploy import optimize as torch_path  # the module: this one defines its own optimize()
from effnet.deploy.export import effnet_version, export
from effnet.deploy.quantize import agreement, calibration_key, quantize_onnx
from effnet.deploy.runners import MICRO_BATCH, RUNNERS
from effnet.files import atomic_write
from effnet.profile.measure import interleaved, median_ms
from effnet.weights import load_model

__all__ = ["INT8_RUNTIMES", "MICRO_BATCH", "RUNTIMES", "TOLERANCE", "Session", "available_runtimes", "choose_runtime", "describe", "int8_session",
           "last_choice", "optimize", "session"]

log = logging.getLogger(__name__)

#: The runtimes a session can use, in the order ``auto`` tries them.
RUNTIMES = ("torch", "onnxruntime", "openvino")
#: Largest accepted max |runtime - eager| / max(1, max |eager|) (the export's own measure).
TOLERANCE = 1e-4
#: ``auto``: timed batch-1 calls per runtime (after two warm-up calls), interleaved.
AUTO_CALLS = 8
#: The runtimes int8 can run on (:func:`int8_session`); ONNX Runtime's quantiser makes the model for both.
INT8_RUNTIMES = ("onnxruntime", "openvino")
#: int8 is kept only when its top-1 equals fp32's on at least this fraction of the calibration images.
MIN_AGREEMENT = 0.9
#: ... and when it is faster than the fp32 session on the largest calibration batch (median of these calls).
INT8_SPEED_CALLS = 3

_MODULES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}
_EXTRA = "pip install 'effnet[runtime]'"


def available_runtimes() -> list[str]:
    """The runtimes importable in this Python (torch always), without importing them."""
    return [r for r in RUNTIMES if r == "torch" or importlib.util.find_spec(_MODULES[r]) is not None]


def _check_micro_batch(value: int | str | None) -> int | str | None:
    if value is None or value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    raise ValueError(f"micro_batch: expected a positive number of images, 'auto' or None, got {value!r}")


def _check_runtime(runtime: str) -> None:
    if runtime not in (*RUNTIMES, "auto"):
        raise ValueError(f"runtime {runtime!r}: expected one of {', '.join((*RUNTIMES, 'auto'))}")
    if runtime != "auto" and runtime not in available_runtimes():
        raise RuntimeError(f"runtime {runtime!r} is not installed in this Python: {_EXTRA} (or pip install "
                           f"{_MODULES[runtime]})")


def _error(y: torch.Tensor, ref: torch.Tensor) -> float:
    return (y.float() - ref.float()).abs().max().item() / max(1.0, ref.abs().max().item())


class Session(nn.Module):
    """A model on one runtime; ``session(x)`` takes an (N, 3, H, W) float32 tensor at
    :attr:`resolution` (any batch) and returns float32 logits as a tensor.

    ``class_names``, ``preprocessing`` and ``spec`` are the source model's; ``onnx_path`` is the
    export a non-torch session runs (None for torch); ``max_error`` is the first-time check
    against eager (None when an earlier process recorded it)."""

    def __init__(self, runtime: str, run: Callable[[torch.Tensor], torch.Tensor], *, resolution: int,
                 source: nn.Module, module: nn.Module | None = None, onnx_path: Path | None = None,
                 threads: int | None = None, keep: Any = None, micro_batch: int | str | None = "auto") -> None:
        super().__init__()
        self._micro_batch = _check_micro_batch(micro_batch)
        self.runtime = runtime
        self.resolution = resolution
        self.onnx_path = onnx_path
        self.threads = threads
        self.max_error: float | None = None
        self.precision = "fp32"  # "int8": ONNX Runtime's static int8 model (int8_session)
        self.int8_agreement: float | None = None  # int8: top-1 agreement with fp32 on the calibration images
        self.int8_fallback: str | None = None  # why int8 was refused and this fp32 session returned
        self.module = module  # the torch path's traced module (registered: .to/.eval reach it)
        self.__dict__["_run"] = run  # not registered: for torch it is ``module`` itself
        self._keep = keep  # a temporary folder that must live as long as the session
        for name in ("class_names", "preprocessing", "spec"):
            object.__setattr__(self, name, getattr(source, name, None))

    @property
    def micro_batch(self) -> int | None:
        """Images per runtime call: a larger batch runs in chunks of this many (each image's
        outputs as a whole-batch call gives them, within float rounding; faster where a chunk's
        feature maps stay nearer the caches). ``"auto"``
        (the default) is :data:`~effnet.deploy.runners.MICRO_BATCH` for this runtime and
        precision; ``None`` runs every batch whole. Settable."""
        if self._micro_batch == "auto":
            return MICRO_BATCH.get((self.runtime, self.precision))
        return self._micro_batch  # type: ignore[return-value]

    @micro_batch.setter
    def micro_batch(self, value: int | str | None) -> None:
        self._micro_batch = _check_micro_batch(value)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or tuple(x.shape[-2:]) != (self.resolution, self.resolution):
            raise ValueError(f"{self.runtime} session: expected (N, C, {self.resolution}, {self.resolution}) input, "
                             f"got {tuple(x.shape)} (the export is fixed to its resolution; build a session at "
                             f"the other size)")
        return torch_path.run_in_chunks(self._run, x, self.micro_batch)

    def extra_repr(self) -> str:
        return (f"runtime={self.runtime}, precision={self.precision}, resolution={self.resolution}, "
                f"threads={self.threads}, micro_batch={self.micro_batch}")

    def path_label(self, asked: str) -> str:
        """``plain:onnxruntime``, ``int8:onnxruntime`` ...: the inference path asked for (``fast``
        when int8 fell back) and the runtime it ran on."""
        path = "int8" if self.precision == "int8" else "fast" if asked == "int8" else asked
        return f"{path}:{self.runtime}"


# --- the export and its cache --------------------------------------------------------------------
def _key(weights: Path, resolution: int) -> str:
    """Hash of the weight file's bytes, the resolution and effnet's version."""
    h = hashlib.sha256()
    with open(weights, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    h.update(f"|{resolution}|{effnet_version()}".encode())
    return h.hexdigest()[:16]


def _onnx_for(source: str | Path | nn.Module, reference: nn.Module, resolution: int,
              cache_dir: str | Path | None) -> tuple[Path, Any]:
    """The verified ONNX export of ``source`` at ``resolution`` (dynamic batch, BN folded): cached
    next to a weight file, in a temporary folder for a model object. Returns (path, folder to keep)."""
    keep = None
    if isinstance(source, nn.Module):
        keep = tempfile.TemporaryDirectory(prefix="effnet-session-")
        path = Path(keep.name) / "model.onnx"
    else:
        weights = Path(source)
        folder = Path(cache_dir) if cache_dir is not None else weights.parent
        path = folder / f"{weights.stem}.{_key(weights, resolution)}.onnx"
        if path.is_file() and path.with_name(path.name + ".json").is_file():
            log.info("session: cached export %s", path)
            return path, None
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".effnet-probe-"):
                pass  # the folder takes new files
        except OSError as e:
            keep = tempfile.TemporaryDirectory(prefix="effnet-session-")
            log.warning("session: cannot write the export next to %s (%s); using %s for this process only "
                        "(pass cache_dir to keep it)", weights, e, keep.name)
            path = Path(keep.name) / path.name
    model = reference if isinstance(source, nn.Module) else source
    log.info("session: exporting %s to ONNX at %d px (verified against eager, once)", source
             if not isinstance(source, nn.Module) else "the model", resolution)
    export(model, path, "onnx", resolution=resolution, dynamic_batch=True, fast=True, overwrite=True)
    return path, keep


def _checks_path(onnx_path: Path) -> Path:
    return onnx_path.with_name(onnx_path.name + ".checks.json")


def _read_checks(onnx_path: Path) -> dict[str, Any]:
    try:
        return json.loads(_checks_path(onnx_path).read_text())
    except (OSError, ValueError):
        return {}


def _record(onnx_path: Path, key: str, value: Any) -> None:
    data = _read_checks(onnx_path)
    data[key] = value
    text = json.dumps(data, indent=2, sort_keys=True)
    with contextlib.suppress(OSError):  # a read-only cache only loses the record, not the session
        atomic_write(_checks_path(onnx_path), lambda tmp: Path(tmp).write_text(text))




def _load_reference(source: str | Path | nn.Module) -> nn.Module:
    if isinstance(source, nn.Module):
        # The caller's model is never changed: a model in training mode is copied to evaluate.
        return copy.deepcopy(source).eval() if source.training else source
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"weight file not found: {source} (a session is built from an effnet "
                                f".safetensors file or a model object)")
    return load_model(path).eval()


def session(source: str | Path | nn.Module, runtime: str = "auto", *, resolution: int | None = None,
            threads: int | None = None, cache_dir: str | Path | None = None,
            micro_batch: int | str | None = "auto") -> Session:
    """``source`` (an effnet weight file or a model) as a :class:`Session` on ``runtime``.

    ``runtime``: ``"torch"``, ``"onnxruntime"``, ``"openvino"`` or ``"auto"`` (the fastest here,
    see :func:`choose_runtime`). ``resolution``: the input side (default the model's). ``threads``:
    intra-op threads (default torch's current count). ``cache_dir``: where a weight file's export
    is kept (default its folder). ``micro_batch``: images per runtime call for larger batches
    (:attr:`Session.micro_batch`). The first run of each runtime on an export is checked against
    the eager model (1e-4); a larger difference raises ``RuntimeError``.
    """
    _check_runtime(runtime)
    _check_micro_batch(micro_batch)
    reference = _load_reference(source)
    spec = getattr(reference, "spec", None)
    res = int(resolution or getattr(getattr(reference, "preprocessing", None), "resolution", 0)
              or getattr(spec, "resolution", 224))
    threads = int(threads or torch.get_num_threads())
    onnx = None
    if runtime == "auto":
        runtime, onnx = _choose(source, reference, res, threads, cache_dir)
    s = _build(source, reference, runtime, res, threads, cache_dir, onnx)
    s.micro_batch = micro_batch
    return s


def _build(source: str | Path | nn.Module, reference: nn.Module, runtime: str, res: int, threads: int,
           cache_dir: str | Path | None, onnx: tuple[Path, Any] | None = None) -> Session:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, res, res, generator=gen)
    if runtime == "torch":
        module = torch_path.optimize(reference, x[:1])
        s = Session("torch", module, resolution=res, source=reference, module=module, threads=threads)
        checked = None  # in process, every time: a trace is built fresh
    else:
        onnx_path, keep = onnx or _onnx_for(source, reference, res, cache_dir)
        runner = RUNNERS[runtime](onnx_path, threads)
        s = Session(runtime, runner, resolution=res, source=reference, onnx_path=onnx_path, threads=threads,
                    keep=keep)
        checked = _read_checks(onnx_path).get(runtime)
    if checked is None:
        with torch.no_grad():
            err = _error(s(x), reference(x))
        if not err <= TOLERANCE:
            raise RuntimeError(f"{runtime} session differs from eager PyTorch by {err:.3g} (tolerance {TOLERANCE:g}); "
                               f"use runtime='torch'")
        s.max_error = err
        if s.onnx_path is not None and s._keep is None:
            _record(s.onnx_path, runtime, {"max_error": err})
        log.info("session: %s matches eager within %.2g", runtime, err)
    return s


def choose_runtime(source: str | Path | nn.Module, *, resolution: int | None = None, threads: int | None = None,
                   cache_dir: str | Path | None = None, reference: nn.Module | None = None) -> str:
    """The runtime with the lowest batch-1 latency on this machine for ``source``: every installed
    runtime timed in turn (two warm-up calls, then :data:`AUTO_CALLS` interleaved calls each,
    median). For a weight file the answer is recorded beside its export, per thread count, and
    reused; :func:`last_choice` tells how it was made."""
    reference = reference if reference is not None else _load_reference(source)
    res = int(resolution or getattr(getattr(reference, "spec", None), "resolution", 224))
    return _choose(source, reference, res, int(threads or torch.get_num_threads()), cache_dir)[0]


def _choose(source: str | Path | nn.Module, reference: nn.Module, res: int, threads: int,
            cache_dir: str | Path | None) -> tuple[str, tuple[Path, Any] | None]:
    """(choice, the export it was timed on) for :func:`choose_runtime` and :func:`session`."""
    candidates = available_runtimes()
    if len(candidates) == 1:
        _LAST.update(choice="torch", timings_ms={}, cached=False)
        return "torch", None
    record_key = f"auto@{threads}threads"
    onnx_path, keep = _onnx_for(source, reference, res, cache_dir)
    recorded = _read_checks(onnx_path).get(record_key) if keep is None else None
    if recorded and recorded.get("choice") in candidates and set(recorded.get("timings_ms", {})) == set(candidates):
        _LAST.update(choice=recorded["choice"], timings_ms=recorded["timings_ms"], cached=True)
        return str(recorded["choice"]), (onnx_path, keep)
    sessions = {r: _build(source, reference, r, res, threads, cache_dir, (onnx_path, keep)) for r in candidates}
    x = torch.randn(1, 3, res, res)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        medians = {r: round(ms, 3) for r, ms in _median_ms(sessions, x, AUTO_CALLS, warmup=2).items()}
    finally:
        torch.set_num_threads(before)
    choice = min(medians, key=medians.__getitem__)
    log.info("runtime auto: %s (batch-1 median ms: %s)", choice, medians)
    if keep is None:
        _record(onnx_path, record_key, {"choice": choice, "timings_ms": medians})
    _LAST.update(choice=choice, timings_ms=medians, cached=False)
    return choice, (onnx_path, keep)


_LAST: dict[str, Any] = {}


def last_choice() -> dict[str, Any]:
    """How the last ``auto`` was decided: ``{"choice", "timings_ms", "cached"}`` (empty before any)."""
    return dict(_LAST)


def describe(runtime: str) -> str:
    """The runtime's name and version, and how ``auto`` chose it when it did, for the CLI to print."""
    from importlib.metadata import PackageNotFoundError, version

    names = {"torch": "PyTorch (effnet.optimize: BN folded, channels-last, traced)",
             "onnxruntime": "ONNX Runtime (CPU, effnet's verified ONNX export)",
             "openvino": "OpenVINO (CPU, effnet's verified ONNX export)"}
    try:
        text = f"{names[runtime]} {version(runtime)}"
    except (KeyError, PackageNotFoundError):
        text = names.get(runtime, runtime)
    if _LAST.get("choice") == runtime and _LAST.get("timings_ms"):
        times = ", ".join(f"{r} {ms:.1f} ms" for r, ms in sorted(_LAST["timings_ms"].items(), key=lambda kv: kv[1]))
        text += f"; auto: fastest at batch 1 here ({times}{', recorded earlier' if _LAST.get('cached') else ''})"
    return text


def optimize(model: nn.Module, example_input: torch.Tensor | None = None, *, runtime: str = "torch",
             int8: bool = False, calibration: Iterable[torch.Tensor] | None = None, **options: Any) -> nn.Module:
    """``effnet.optimize``: :func:`effnet.deploy.optimize.optimize` for ``runtime="torch"`` (every
    option of it accepted), else a :class:`Session` on effnet's verified ONNX export of ``model``
    (``"onnxruntime"``, ``"openvino"``, or ``"auto"``: the fastest of those installed, timed at
    batch 1), checked against ``model`` within 1e-4. With ``int8=True`` a runtime other than torch
    runs a static int8 model calibrated on ``calibration`` on that runtime (``"auto"``: the
    fastest int8 that agrees with fp32), or the fp32 session when int8 does not pay
    (:func:`int8_session`)."""
    if runtime == "torch":
        return torch_path.optimize(model, example_input, int8=int8, calibration=calibration, **options)
    _check_runtime(runtime)
    if options:
        raise ValueError(f"optimize: {', '.join(sorted(options))} appl{'ies' if len(options) == 1 else 'y'} to "
                         f"runtime='torch' only; runtime={runtime!r} runs the ONNX export")
    if example_input is None or not isinstance(example_input, torch.Tensor) or example_input.ndim != 4:
        raise ValueError(f"optimize: runtime={runtime!r} needs an (N, C, H, W) example_input (the export's size)")
    resolution = int(example_input.shape[-1])
    if int8:
        return int8_session(model, list(calibration) if calibration is not None else [example_input],
                            runtime=runtime, resolution=resolution)
    if calibration is not None:
        raise ValueError("optimize: calibration batches are only used with int8=True")
    return session(model, runtime, resolution=resolution)


def int8_session(source: str | Path | nn.Module, calibration: Iterable[torch.Tensor], *,
                 runtime: str = "onnxruntime", resolution: int | None = None, threads: int | None = None,
                 cache_dir: str | Path | None = None, require_gain: bool = True,
                 micro_batch: int | str | None = "auto") -> Session:
    """Static int8 of ``source``, calibrated on ``calibration`` (float input batches preprocessed
    like real inputs: the user's images), or the fastest fp32 session when int8 does not pay.

    ``runtime``: ``"onnxruntime"``, ``"openvino"`` or ``"auto"`` (every installed one of
    :data:`INT8_RUNTIMES` is tried and the fastest int8 that agrees is kept). The verified fp32
    export is quantised by :func:`effnet.deploy.quantize.quantize_onnx` in the layout of each
    runtime (cached beside the export under a hash of the calibration batches). int8 is kept
    only if (1) its top-1 class equals the eager fp32 model's on at least :data:`MIN_AGREEMENT`
    of the calibration images and (2) it is faster than the fp32 sessions of the same runtimes
    on the largest calibration batch (interleaved calls, median); otherwise a warning says which
    failed and the fastest fp32 session comes back with ``int8_fallback`` set to the reason.
    ``int8_agreement`` holds the measured agreement either way. ``require_gain=False`` (a named
    runtime only) returns the int8 session without either check (benchmarks of random-weight
    models, where agreement would judge noise). ``micro_batch``: as :func:`session`'s, set on the
    session returned (the speed check compares each session with its own default).
    """
    _check_micro_batch(micro_batch)
    s = _int8_or_fp32(source, calibration, runtime, resolution, threads, cache_dir, require_gain)
    s.micro_batch = micro_batch
    return s


def _int8_or_fp32(source: str | Path | nn.Module, calibration: Iterable[torch.Tensor], runtime: str,
                  resolution: int | None, threads: int | None, cache_dir: str | Path | None,
                  require_gain: bool) -> Session:
    """:func:`int8_session`'s choice: the int8 session kept, or the fp32 fallback with its reason."""
    if runtime not in (*INT8_RUNTIMES, "auto"):
        raise ValueError(f"int8 runtime {runtime!r}: expected one of {', '.join((*INT8_RUNTIMES, 'auto'))}")
    _check_runtime("onnxruntime")  # the quantiser is ONNX Runtime's, whichever runtime runs the result
    if runtime == "auto":
        if not require_gain:
            raise ValueError("int8: require_gain=False measures one named runtime; pass runtime='onnxruntime' "
                             "or 'openvino'")
        candidates = [r for r in INT8_RUNTIMES if r in available_runtimes()]
    else:
        _check_runtime(runtime)
        candidates = [runtime]
    batches = [b for b in calibration]
    if not batches or not all(isinstance(b, torch.Tensor) and b.ndim == 4 for b in batches):
        raise ValueError("int8: calibration must be one or more (N, C, H, W) input tensors (the user's images)")
    reference = _load_reference(source)
    res = int(resolution or batches[0].shape[-1])
    threads = int(threads or torch.get_num_threads())
    onnx_path, keep = _onnx_for(source, reference, res, cache_dir)
    key = calibration_key(batches)
    int8s: dict[str, Session] = {}
    for r in candidates:
        int8_path = onnx_path.with_name(f"{onnx_path.stem}.int8-{key}{'' if r == 'onnxruntime' else '-' + r}.onnx")
        if not int8_path.is_file():
            quantize_onnx(onnx_path, int8_path, batches, target=r)
        s = Session(r, RUNNERS[r](int8_path, threads), resolution=res, source=reference, onnx_path=int8_path,
                    threads=threads, keep=keep)
        s.precision = "int8"
        int8s[r] = s
    if not require_gain:
        return int8s[runtime]
    agree = {r: agreement(reference, s, batches) for r, s in int8s.items()}
    fp32s = {r: _build(source, reference, r, res, threads, cache_dir, (onnx_path, keep)) for r in candidates}
    largest = max(batches, key=len)
    ms = _median_ms({**{("int8", r): s for r, s in int8s.items()}, **{("fp32", r): s for r, s in fp32s.items()}},
                    largest, INT8_SPEED_CALLS)
    fp32_best = min(candidates, key=lambda r: ms["fp32", r])
    agreeing = [r for r in candidates if agree[r] >= MIN_AGREEMENT]
    best = min(agreeing or candidates, key=lambda r: ms["int8", r])
    reason = None
    if not agreeing:
        reason = (f"int8 top-1 agrees with fp32 on {agree[best]:.1%} of the calibration images, below "
                  f"{MIN_AGREEMENT:.0%}")
    elif ms["int8", best] >= ms["fp32", fp32_best]:
        reason = (f"int8 is not faster here (batch {len(largest)}: int8 on {best} {ms['int8', best]:.1f} ms vs "
                  f"fp32 on {fp32_best} {ms['fp32', fp32_best]:.1f} ms)")
    if reason is not None:
        log.warning("%s: running fp32 on %s instead", reason, fp32_best)
        fallback = fp32s[fp32_best]
        fallback.int8_fallback, fallback.int8_agreement = reason, agree[best]
        return fallback
    log.info("int8 on %s: top-1 agreement with fp32 %.1f%%, batch %d %.1f ms vs fp32 on %s %.1f ms (all: %s)",
             best, 100 * agree[best], len(largest), ms["int8", best], fp32_best, ms["fp32", fp32_best],
             ", ".join(f"{p} {r} {t:.1f} ms" for (p, r), t in ms.items()))
    int8s[best].int8_agreement = agree[best]
    return int8s[best]


def _median_ms(sessions: dict[Any, Session], x: torch.Tensor, calls: int, warmup: int = 1) -> dict[Any, float]:
    """Median ms of ``calls`` calls of each session on ``x``, interleaved (one call each per round,
    the order rotating) after ``warmup`` calls each: load from other processes falls on all alike."""
    fns = {k: (lambda s=s: s(x)) for k, s in sessions.items()}
    times = interleaved(fns, warmup=warmup, iters=calls, rounds=calls)
    return {k: median_ms(t) for k, t in times.items()}
