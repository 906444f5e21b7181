"""`effnet.bench.run` (:func:`run`, here): effnet next to every peer it can import, interleaved,
with ratios.

For each model, two phases, each building its networks fresh and freeing them after:

- **inference** at the model's resolution: every inference candidate (effnet ``plain``,
  ``fast``, ``int8`` and each peer) is timed at batch 1 (latency) and at ``batch``
  (throughput), ``eval()`` under ``torch.inference_mode`` (``no_grad`` for Keras);
- **training** at ``train_resolution`` and ``train_batch``: every training candidate (effnet
  ``default``, ``memory-saving`` and each peer) is timed on full steps (forward, cross-entropy
  on fixed random labels, backward, SGD momentum 0.9, ``zero_grad(set_to_none=True)``); the
  bytes autograd saves for backward are counted, and the peak memory of one step of a freshly
  built network is measured in a fresh subprocess per candidate (peak RSS rise on CPU,
  ``torch.cuda.max_memory_allocated`` on CUDA), so one candidate's freed memory cannot hide
  another's. On the CPU the steps are timed in those fresh processes too (one per candidate
  per round, rounds rotating the order): in a process that has trained other networks, a step
  reuses their freed heap instead of faulting in new pages, which made B0's step 1.3-1.7x
  faster than a user's fresh process sees, and by different amounts for different libraries.

Timings are interleaved (:func:`effnet.profile.measure.interleaved`) and reported as medians.
Ratios (:mod:`effnet.bench.report`) are **effnet cost / peer cost**: below 1 effnet is cheaper.
effnet's side of a ratio is its best fp32 configuration measured: the fastest fp32 inference
path at batch 1 and ``default`` for training; ``int8`` and ``memory-saving`` are listed beside
it, not used in ratios (a different precision, a different trade).
"""

from __future__ import annotations

import datetime
import logging
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from effnet.bench.measure import MIB, interleaved, median_ms, saved_activation_bytes, sync, train_step
from effnet.bench.peers import (
    LIBRARIES,
    Runner,
    Unavailable,
    build_runner,
    candidates,
    compiled,
    label_of,
    roles_of,
    versions,
)
from effnet.bench.report import ratios, reference_of
from effnet.bench.worker import peak_in_subprocess, train_in_workers
from effnet.registry import get_spec
from effnet.train.score import default_device

log = logging.getLogger(__name__)

#: The default models and the resolutions they are measured at (each model's own).
DEFAULT_MODELS = {"efficientnet_b0": 224, "efficientnet_b3": 300, "efficientnetv2_s": 384}
#: Every model at this side with --quick, small batches, few iterations: minutes on 2 CPU cores.
QUICK_RESOLUTION = 128
#: Fields of every JSON result (documented in the README; the tests check them).
RESULT_FIELDS = ("meta", "config", "skipped", "results")
MODEL_FIELDS = ("model", "resolution", "train_resolution", "entries", "reference", "ratios")
ENTRY_FIELDS = ("label", "lib", "variant", "lib_model", "roles", "status", "reason", "params", "metrics", "notes")


@dataclass
class Config:
    """What one benchmark run measures; :func:`run` documents each field."""

    models: dict[str, int]
    libs: tuple[str, ...] = LIBRARIES
    batch: int = 32
    train_batch: int = 32
    train_resolution: int = 128
    iters: int = 20
    batch_iters: int = 4
    train_iters: int = 4
    warmup: int = 2
    rounds: int = 2
    device: str = "cpu"
    threads: int | None = None
    peak: bool = True
    train: bool = True  # False: inference only (no training phase)
    compile: bool = False
    cuda_graphs: bool = True
    flush_denormal: bool = True
    quick: bool = False
    autocast: str | None = None  # "bfloat16" on CUDA
    progress: bool = True
    train_in_workers: bool = True  # CPU: time training steps in fresh processes (compiled ones too)


def _positive(name: str, value: int) -> int:
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return value


def make_config(
    models: Sequence[str] | None = None, *, resolution: int | None = None, libs: Sequence[str] = LIBRARIES,
    quick: bool = False, batch: int | None = None, train_batch: int | None = None,
    train_resolution: int | None = None, iters: int | None = None, batch_iters: int | None = None,
    train_iters: int | None = None, rounds: int | None = None, device: str | None = None,
    threads: int | None = None, peak: bool = True, train: bool = True, compile: bool = False, cuda_graphs: bool = True,
    flush_denormal: bool = True, progress: bool = True, train_in_workers: bool = True,
) -> Config:
    """The run's configuration: the defaults, or --quick's smaller ones, with overrides applied."""
    names = list(models) if models else list(DEFAULT_MODELS)
    for name in names:
        get_spec(name)  # an unknown name fails here, with the registry's suggestions
    res = {n: resolution or (QUICK_RESOLUTION if quick else DEFAULT_MODELS.get(n, get_spec(n).resolution))
           for n in names}
    dev = default_device(device or "auto")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device cuda: no CUDA device is visible; use --device cpu")
    small = {"batch": 8, "train_batch": 8, "train_resolution": 96, "iters": 6, "batch_iters": 2,
             "train_iters": 2, "rounds": 2} if quick else {}
    cfg = Config(
        models=res, libs=tuple(dict.fromkeys(libs)), device=str(dev), threads=threads, peak=peak, train=train,
        compile=compile, cuda_graphs=cuda_graphs and dev.type == "cuda",
        flush_denormal=flush_denormal and dev.type == "cpu", quick=quick, progress=progress,
        autocast="bfloat16" if dev.type == "cuda" else None, **small,
        # CUDA's caching allocator keeps its own pool per process: the in-process interleaving
        # stays there. A compiled candidate's worker compiles before it measures.
        train_in_workers=train_in_workers and dev.type == "cpu",
    )
    for key, value in (("batch", batch), ("train_batch", train_batch), ("train_resolution", train_resolution),
                       ("iters", iters), ("batch_iters", batch_iters), ("train_iters", train_iters),
                       ("rounds", rounds), ("threads", threads)):
        if value is not None:
            setattr(cfg, key, _positive(key, value))
    for key in ("batch", "train_batch", "train_resolution", "iters", "batch_iters", "train_iters", "rounds"):
        _positive(key, getattr(cfg, key))
    if any(r < 32 for r in res.values()) or cfg.train_resolution < 32:
        raise ValueError(f"resolution: expected >= 32 px (five stride-2 stages), got {min(*res.values(), cfg.train_resolution)}")
    candidates(cfg.libs)  # unknown library names fail here
    return cfg


# --- one model ----------------------------------------------------------------------------------
def _entry(lib: str, variant: str) -> dict[str, Any]:
    return {"label": label_of(lib, variant), "lib": lib, "variant": variant or "best", "lib_model": None,
            "roles": list(roles_of(lib, variant)), "status": "ok", "reason": None, "params": None,
            "metrics": {}, "notes": []}


def _autocast(cfg: Config, cache: bool = True) -> torch.autocast:
    dtype = getattr(torch, cfg.autocast) if cfg.autocast else None
    return torch.autocast(torch.device(cfg.device).type, dtype=dtype, enabled=dtype is not None,
                          cache_enabled=cache)


def _cuda_graph(runner: Runner, x: object, cfg: Config) -> Any:
    """A CUDA-graph replay of ``runner``'s batch-1 forward on the static input ``x``: one launch
    instead of hundreds of small kernels, the fastest way to run batch 1 on a GPU."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    # autocast's weight-cast cache must be off: cached casts made outside the capture would be
    # freed memory inside the graph (PyTorch's CUDA-graph notes).
    with torch.cuda.stream(stream), torch.inference_mode(), _autocast(cfg, cache=False):
        for _ in range(3):  # warm-up on a side stream, as capture requires
            runner.forward(x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.inference_mode(), _autocast(cfg, cache=False):
        runner.forward(x)
    return graph.replay


def _build_all(name: str, res: int, role: str, cfg: Config, entries: dict[str, dict[str, Any]]) -> dict[str, Runner]:
    runners: dict[str, Runner] = {}
    for lib, variant in candidates(cfg.libs):
        if role not in roles_of(lib, variant):
            continue
        entry = entries.setdefault(label_of(lib, variant), _entry(lib, variant))
        try:
            runner = build_runner(lib, variant, name, res, cfg.device)
        except Unavailable as e:
            entry.update(status="skipped", reason=str(e))
            log.info("%s %s: skipped: %s", name, entry["label"], e)
            continue
        entry.update(lib_model=runner.lib_model, params=runner.params)
        runners[entry["label"]] = runner
        if cfg.compile and runner.compilable:
            label = f"{entry['label']}+compile"
            # setdefault: the training phase must not wipe the inference figures of the same label
            compiled_entry = entries.setdefault(label, {**_entry(lib, variant), "label": label})
            if compiled_entry["status"] != "ok":
                continue  # its compilation failed in the previous phase: not tried again
            compiled_entry.update(lib_model=runner.lib_model, params=runner.params)
            try:
                runners[label] = compiled(runner)
            except Exception as e:  # noqa: BLE001 - torch.compile can refuse at once (a Python it lacks)
                _compile_failed(label, role, e, entries)
    return runners


def _compile_failed(label: str, phase: str, error: Exception, entries: dict[str, dict[str, Any]]) -> None:
    """Record a failed compilation: the label fails, or, where an earlier phase measured it, keeps
    those figures and a note says which phase failed."""
    message = f"torch.compile: {type(error).__name__}: {str(error)[:300]}"
    log.warning("%s (%s): %s", label, phase, message)
    entry = entries[label]
    if entry["metrics"]:
        entry["notes"].append(f"{phase}: {message}")
    else:
        entry.update(status="failed", reason=message)


def _compile_first(fns: dict[str, Callable[[], object]], runners: dict[str, Runner],
                   entries: dict[str, dict[str, Any]], key: str) -> None:
    """Make every ``+compile`` candidate's first call for ``key`` (``latency_b1``, ``train_b32`` ...),
    the compilation, before the timing. One that fails is reported (:func:`_compile_failed`) and
    dropped; the others are still measured."""
    for label in [lb for lb in fns if lb.endswith("+compile")]:
        start = time.perf_counter()
        try:
            fns[label]()
        except Exception as e:  # noqa: BLE001 - a network Inductor cannot compile must not stop the rest
            _compile_failed(label, key, e, entries)
            del fns[label], runners[label]
            continue
        entries[label]["notes"].append(f"{key}: first call (compilation) {time.perf_counter() - start:.0f} s")


def _inference(name: str, res: int, cfg: Config, entries: dict[str, dict[str, Any]], bar: Any) -> None:
    runners = _build_all(name, res, "inference", cfg, entries)
    for r in runners.values():
        r.module.eval()
    device = torch.device(cfg.device)
    gen = torch.Generator().manual_seed(0)
    for batch in (1, cfg.batch):
        x = torch.randn(batch, 3, res, res, generator=gen).to(device)  # (B, C, H, W)
        fns = {}
        for label, r in runners.items():
            xin = r.prepare(x)
            # Keras's Python-side variable handling and torch.compile's own graphs do not capture.
            if batch == 1 and cfg.cuda_graphs and r.lib != "keras" and not label.endswith("+compile"):
                try:
                    fns[label] = _cuda_graph(r, xin, cfg)
                    continue
                except Exception as e:  # noqa: BLE001 - an uncapturable model still runs eagerly
                    entries[label]["notes"].append(f"CUDA graph capture failed ({type(e).__name__}: {e}); eager")

            def fn(r: Runner = r, xin: object = xin) -> None:
                mode = torch.no_grad() if r.no_grad_only else torch.inference_mode()
                with mode, _autocast(cfg):
                    r.forward(xin)

            fns[label] = fn
        key = "latency_b1" if batch == 1 else f"throughput_b{batch}"
        bar.set_postfix_str(f"{name} {key}", refresh=False)
        _compile_first(fns, runners, entries, key)
        n = cfg.iters if batch == 1 else cfg.batch_iters
        times = interleaved(fns, warmup=cfg.warmup if batch == 1 else 1, iters=n, rounds=cfg.rounds,
                            device=device, on_call=lambda _: bar.update())
        for label, samples in times.items():
            m = entries[label]["metrics"]
            m[f"{key}_ms"] = median_ms(samples)
            m[f"{key}_ms_min"] = min(samples) * 1e3
            if batch > 1:
                m[f"{key}_img_s"] = batch / (m[f"{key}_ms"] / 1e3)
    runners.clear()
    _forget_compiled(cfg)


def _training(name: str, cfg: Config, entries: dict[str, dict[str, Any]], bar: Any) -> None:
    res, tb = cfg.train_resolution, cfg.train_batch
    runners = _build_all(name, res, "training", cfg, entries)
    device = torch.device(cfg.device)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(tb, 3, res, res, generator=gen).to(device)  # (B, C, H, W)
    y = torch.randint(0, 1000, (tb,), generator=gen).to(device)
    dtype = getattr(torch, cfg.autocast) if cfg.autocast else None
    fns = {}
    for label, r in runners.items():
        r.module.train()
        opt = torch.optim.SGD([p for p in r.module.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
        xin = r.prepare(x)
        fns[label] = lambda r=r, o=opt, xin=xin: train_step(lambda t: r.forward(t, True), o, xin, y, dtype)
    bar.set_postfix_str(f"{name} train_b{tb}", refresh=False)
    kernel: dict[str, list[float]] = {}
    if cfg.train_in_workers:
        # Each worker compiles its own (and reports a failure as a note); compiled networks are
        # not run here, so the saved-activation count below covers the eager ones only.
        for label in [lb for lb in runners if lb.endswith("+compile")]:
            del runners[label]
        times, kernel = train_in_workers(name, cfg, list(fns), entries, bar)
    else:
        _compile_first(fns, runners, entries, f"train_b{tb}")
        times = interleaved(fns, warmup=1, iters=cfg.train_iters, rounds=cfg.rounds, device=device,
                            on_call=lambda _: bar.update())
    for label, samples in times.items():
        m = entries[label]["metrics"]
        m[f"train_b{tb}_ms"] = median_ms(samples)
        m[f"train_b{tb}_ms_min"] = min(samples) * 1e3
        m[f"train_b{tb}_img_s"] = tb / (m[f"train_b{tb}_ms"] / 1e3)
        if label in kernel:  # the step's system CPU time (all threads): faulting in fresh memory, mostly
            m[f"train_b{tb}_kernel_ms"] = median_ms(kernel[label])
    for label, r in runners.items():
        with _autocast(cfg):
            saved = saved_activation_bytes(lambda r=r, xin=r.prepare(x): r.forward(xin, True),
                                           list(r.module.parameters()))
        entries[label]["metrics"][f"saved_act_b{tb}_mib"] = saved / MIB
        r.module.zero_grad(set_to_none=True)
    runners.clear()
    _forget_compiled(cfg)
    sync(device)
    if not cfg.peak or cfg.train_in_workers:  # the workers measured it
        return
    for label, entry in entries.items():
        if "training" not in entry["roles"] or entry["status"] != "ok" or label.endswith("+compile"):
            continue  # in-process timing (CUDA, --train-in-process): no compiled peak measured
        bar.set_postfix_str(f"{name} peak {label}", refresh=False)
        try:
            peak = peak_in_subprocess(entry["lib"], entry["variant"], name, cfg)
            entry["metrics"][f"peak_train_b{tb}_mib"] = peak / MIB
        except RuntimeError as e:
            entry["notes"].append(str(e))
            log.warning("%s %s: %s", name, label, e)


def _forget_compiled(cfg: Config) -> None:
    """Drop dynamo's compiled code and guards once a phase's networks are gone: the next phase and
    model start afresh instead of piling recompilations onto one frame (past dynamo's recompile
    limit it would run them eagerly, under a "+compile" label)."""
    if cfg.compile:
        torch._dynamo.reset()


def bench_model(name: str, resolution: int, cfg: Config, bar: Any = None) -> dict[str, Any]:
    """Every candidate of one model, both phases; the result record of that model."""
    bar = bar or tqdm(disable=True)
    entries: dict[str, dict[str, Any]] = {}
    _inference(name, resolution, cfg, entries, bar)
    if cfg.train:
        _training(name, cfg, entries, bar)
    ref = reference_of(entries)
    return {"model": name, "resolution": resolution, "train_resolution": cfg.train_resolution,
            "entries": entries, "reference": ref, "ratios": ratios(entries, ref)}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run(models: Sequence[str] | None = None, **options: Any) -> dict[str, Any]:
    """Benchmark effnet's ``models`` against every importable peer; the result dict (JSON-ready).

    ``models``: effnet names (default B0 @ 224, B3 @ 300, V2-S @ 384). Options (see
    :func:`make_config`): ``resolution`` (one side for every model), ``libs`` (subset of
    :data:`effnet.bench.peers.LIBRARIES`), ``quick`` (every model at 128 px, batch 8, training
    batch 8 at 96 px, few iterations), ``batch`` (throughput batch, 32), ``train_batch`` (32),
    ``train_resolution`` (128), ``iters`` / ``batch_iters`` / ``train_iters`` (timed calls per
    candidate), ``rounds`` (interleaving rounds), ``device`` (cuda when visible), ``threads``,
    ``peak`` (peak training memory in subprocesses), ``compile`` (add ``torch.compile`` runs),
    ``cuda_graphs`` (batch-1 latency replayed from a CUDA graph, CUDA only),
    ``flush_denormal`` (CPU), ``progress`` (a tqdm bar), ``train_in_workers`` (CPU: time the
    training steps in fresh processes, the default; False: in this process, interleaved).

    The dict has :data:`RESULT_FIELDS`: ``meta`` (date, versions, device, load), ``config``,
    ``skipped`` (libraries unusable here, with the reason) and ``results`` (one record per model
    with :data:`MODEL_FIELDS`; ``entries`` maps a label such as ``effnet[fast]`` or ``timm`` to a
    record with :data:`ENTRY_FIELDS`).
    """
    cfg = options.pop("config", None) or make_config(models, **options)
    device = torch.device(cfg.device)
    old_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    # Random weights can push SE gates to sigmoid(-large) ~ 1e-40: subnormal floats that slow x86
    # kernels several-fold by an amount that depends on the init scheme, not on the code (trained
    # weights do not do this). Flushed for every library alike.
    torch.set_flush_denormal(cfg.flush_denormal)
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "versions": versions(), "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
            "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
            "loadavg_start": list(os.getloadavg()), "python": sys.executable}
    per_model = (2 * len(cfg.libs) + 4) * (cfg.iters + cfg.batch_iters) + 2 * len(cfg.libs) * cfg.train_iters
    results = []
    try:
        # delay: a run that measures nothing (every library unavailable) ends before a bar is drawn
        with tqdm(total=per_model * len(cfg.models), desc="bench", unit="call", disable=not cfg.progress,
                  delay=2) as bar:
            for name, res in cfg.models.items():
                results.append(bench_model(name, res, cfg, bar))
    finally:
        torch.set_num_threads(old_threads)
        torch.set_flush_denormal(False)  # torch's default (it has no getter to restore from)
    meta["loadavg_end"] = list(os.getloadavg())
    if not any(e["status"] == "ok" for record in results for e in record["entries"].values()):
        reasons = sorted({e["reason"] for record in results for e in record["entries"].values() if e["reason"]})
        raise RuntimeError(f"nothing was measured: every library asked for is unavailable here ({'; '.join(reasons)}); "
                           f"install one or pass --libs effnet")
    skipped: dict[str, str] = {}
    for record in results:
        for entry in record["entries"].values():
            if entry["status"] == "skipped" and entry["lib"] != "effnet" and "not importable" in (entry["reason"] or ""):
                skipped[entry["lib"]] = entry["reason"]
    config = {k: v for k, v in asdict(cfg).items() if k != "progress"}
    return {"meta": meta, "config": config,
            "skipped": [{"lib": k, "reason": v} for k, v in skipped.items()], "results": results}


__all__ = ["DEFAULT_MODELS", "ENTRY_FIELDS", "MODEL_FIELDS", "QUICK_RESOLUTION", "RESULT_FIELDS", "Config",
           "bench_model", "make_config", "run"]
