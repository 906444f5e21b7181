"""The libraries effnet is measured against, each built in *its* best configuration.

A builder per library (one for the three PyTorch peers, told apart by ``_TORCH_PEERS``) turns
an effnet model name into a :class:`Runner`: the library's equivalent network, randomly
initialised with the same regularisation (stochastic depth 0.2, the effnet spec's classifier
dropout), on the device, in the memory layout it runs fastest in, with the input converter and
forward calls it needs. Peers are optional: a library that cannot
be imported, or has no equivalent of a model, raises :class:`Unavailable` with the reason, and
the benchmark lists it as skipped. Nothing here is an effnet dependency; every import of a peer
is inside its builder.

Best configurations (fp32 on CPU; bf16 autocast on CUDA, applied by the runner's caller):

- torchvision, timm, efficientnet_pytorch, effnet: ``channels_last`` weights and inputs (oneDNN
  and cuDNN pick their NHWC kernels); efficientnet_pytorch built with its static "same" padding
  for the image size, and ``set_swish(memory_efficient=True)`` (its own recommendation for
  training, a custom autograd function that recomputes the sigmoid).
- Keras 3 ``keras.applications`` on the torch backend (``KERAS_BACKEND=torch``, set here when
  Keras is not imported yet): NHWC, Keras's native layout; called as ``model(x, training=...)``
  on torch tensors, trained with a torch optimiser on its ``requires_grad`` parameters (the
  Keras trainable weights); ``classifier_activation=None`` so it returns logits like the others.
- effnet: ``plain`` (as built), ``fast`` (``effnet.deploy.optimize``), ``int8``
  (``optimize(..., int8=True)``) for inference; ``default`` and ``memory-saving``
  (``set_grad_checkpointing(True)``) for training.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from effnet.bench.names import EFFNET_INFERENCE, EFFNET_TRAINING, LIBRARIES
from effnet.deploy import runtime
from effnet.deploy.optimize import TracedInference, optimize
from effnet.profile import count_params
from effnet.registry import get_spec, list_models
from effnet.weights import create_model

log = logging.getLogger(__name__)

DROP_PATH_RATE = 0.2  # torchvision's and effnet's default stochastic depth, passed to every peer


def use_keras_torch_backend(env: MutableMapping[str, str] | None = None) -> None:
    """Ask Keras 3 for its torch backend: ``KERAS_BACKEND=torch`` in ``env`` (default
    ``os.environ``; a subprocess's environment dict works too) unless the user chose one.

    Keras reads the variable once, at its first import, so call this before anything imports
    ``keras``; afterwards it changes nothing in this process (the Keras peer then says so).
    """
    (os.environ if env is None else env).setdefault("KERAS_BACKEND", "torch")


class Unavailable(RuntimeError):
    """A library or variant that cannot be measured here; the message says why."""


def label_of(lib: str, variant: str) -> str:
    """How a candidate is named in tables and JSON: ``effnet[fast]``, ``timm`` ..."""
    return f"effnet[{variant}]" if lib == "effnet" else lib


@dataclass
class Runner:
    """One network of one library, ready to time."""

    lib: str
    variant: str
    lib_model: str
    module: nn.Module
    roles: tuple[str, ...]  # "inference", "training"
    #: NCHW float batch -> what ``module`` takes (layout conversions happen once, outside timing).
    prepare: Callable[[torch.Tensor], object] = lambda x: x
    #: (prepared input, training?) -> logits
    call: Callable[[object, bool], torch.Tensor] | None = None
    #: inference must not use ``torch.inference_mode`` (Keras reads variables in ways it refuses).
    no_grad_only: bool = False
    #: the source network's parameter count, for runners whose module holds none (runtime sessions)
    n_params: int | None = None
    #: ``--compile`` wraps it in ``torch.compile``: False where the module is no torch network
    #: (runtime sessions, Keras) or one Inductor does not take (torch's FX int8)
    compilable: bool = True

    @property
    def label(self) -> str:
        return label_of(self.lib, self.variant)

    @property
    def params(self) -> int:
        return self.n_params if self.n_params is not None else count_params(self.module)

    def forward(self, x: object, training: bool = False) -> torch.Tensor:
        return self.call(x, training) if self.call is not None else self.module(x)


def compiled(runner: Runner) -> Runner:
    """``runner``'s network under ``torch.compile`` (``--compile``): effnet[fast] is a TorchScript
    trace of its optimised network, and Inductor compiles that network itself (what
    ``optimize(..., compile=True)`` returns). The first call compiles."""
    if not runner.compilable:
        raise ValueError(f"{runner.label}: not a torch network torch.compile can take")
    eager = runner.module.module if isinstance(runner.module, TracedInference) else runner.module
    # Static shapes: one compilation per batch size, each with the kernels of a fixed shape.
    return Runner(runner.lib, runner.variant, runner.lib_model, torch.compile(eager, dynamic=False), runner.roles,
                  prepare=runner.prepare, n_params=runner.params)


def candidates(libs: tuple[str, ...] | list[str] = LIBRARIES) -> list[tuple[str, str]]:
    """(library, variant) pairs to measure, effnet's variants first."""
    unknown = sorted(set(libs) - set(LIBRARIES))
    if unknown:
        raise ValueError(f"unknown librar{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)}: "
                         f"choose from {', '.join(LIBRARIES)}")
    out: list[tuple[str, str]] = []
    for lib in LIBRARIES:
        if lib in libs:
            out += [("effnet", v) for v in EFFNET_INFERENCE + EFFNET_TRAINING] if lib == "effnet" else [(lib, "")]
    return out


def roles_of(lib: str, variant: str) -> tuple[str, ...]:
    if lib == "onnxruntime":
        return ("inference",)
    if lib != "effnet":
        return ("inference", "training")
    return ("inference",) if variant in EFFNET_INFERENCE else ("training",)


def _import(module: str, lib: str) -> object:
    try:
        return importlib.import_module(module)
    except Exception as e:  # ImportError, or a broken install raising anything at import
        raise Unavailable(f"{lib} is not importable in this Python ({type(e).__name__}: {e}); "
                          f"install it in this Python (see benchmarks/README.md)") from e


def peer_name(lib: str, name: str, *, speed: bool = True) -> str | None:
    """What ``lib`` calls the effnet architecture ``name`` (None: it has no equivalent).

    ``speed=False`` gives timm's TF-ported V2 names (``tf_efficientnetv2_s``, the weights
    effnet imports, with dynamic "SAME" padding) instead of their static-padding twins."""
    v1 = {f"efficientnet_b{i}": i for i in range(9)}
    v2 = {f"efficientnetv2_{s}": s for s in ("s", "m", "l", "xl", "b0", "b1", "b2", "b3")}
    if lib == "effnet":
        return name
    if lib == "torchvision":
        if name in v1 and v1[name] <= 7:
            return name
        return f"efficientnet_v2_{v2[name]}" if v2.get(name) in ("s", "m", "l") else None
    if lib == "timm":
        # timm's tf_efficientnetv2_* pad dynamically (a pad op per strided conv); for speed the
        # static-padding twin with identical layers is the fair peer of effnet's symmetric padding.
        if name in v1 or name == "efficientnet_l2":
            return name
        if name in v2:
            twin = speed and v2[name] in ("s", "m", "l", "xl")
            return f"efficientnetv2_{v2[name]}" if twin else f"tf_efficientnetv2_{v2[name]}"
        # The deployed family (Lite, EdgeTPU, TinyNet): timm's names for the same architectures (equal parameters).
        if name.startswith(("efficientnet_lite", "tinynet_")):
            return name
        edgetpu = {"efficientnet_edgetpu_s": "efficientnet_es", "efficientnet_edgetpu_m": "efficientnet_em",
                   "efficientnet_edgetpu_l": "efficientnet_el"}
        return edgetpu.get(name)
    if lib == "keras":
        if name in v1 and v1[name] <= 7:
            return f"EfficientNetB{v1[name]}"
        return f"EfficientNetV2{v2[name].upper()}" if v2.get(name) not in (None, "xl") else None
    if lib == "efficientnet_pytorch":
        if name in v1:
            return f"efficientnet-b{v1[name]}"
        return "efficientnet-l2" if name == "efficientnet_l2" else None
    raise ValueError(f"lib: expected one of {', '.join(LIBRARIES)}, got {lib!r}")


def _channels_last(module: nn.Module, device: torch.device) -> nn.Module:
    return module.to(device=device, memory_format=torch.channels_last)


def _cl(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


def _effnet(name: str, variant: str, resolution: int, device: torch.device) -> Runner:
    model = _channels_last(create_model(name, drop_path_rate=DROP_PATH_RATE), device)
    runner = Runner("effnet", variant, name, model, roles_of("effnet", variant), prepare=_cl)
    if variant in ("plain", "default"):
        return runner
    if variant == "memory-saving":
        if not hasattr(model, "set_grad_checkpointing"):
            raise Unavailable("ConvNet.set_grad_checkpointing is not available in this effnet")
        model.set_grad_checkpointing(True)
        return runner
    if variant in ("ort", "openvino", "ort-int8", "openvino-int8"):
        return _effnet_session(runner, model, variant, resolution, device)
    example = _cl(torch.randn(1, 3, resolution, resolution, device=device))  # (B, C, H, W)
    kwargs: dict[str, object] = {}
    if variant == "int8":
        gen = torch.Generator().manual_seed(0)
        kwargs = {"int8": True, "calibration": [
            _cl(torch.randn(2, 3, resolution, resolution, generator=gen).to(device)) for _ in range(4)]}
    runner.compilable = variant != "int8"
    try:
        runner.module = optimize(model.eval(), example, **kwargs)
    except Exception as e:  # a variant that fails here must not stop the others being measured
        raise Unavailable(f"optimize(..., {', '.join(f'{k}=' for k in kwargs) or 'example_input'}) failed: "
                          f"{type(e).__name__}: {e}") from e
    return runner


def _effnet_session(runner: Runner, model: nn.Module, variant: str, resolution: int,
                    device: torch.device) -> Runner:
    """effnet's runtime sessions (effnet.deploy.runtime) on its verified ONNX export, CPU only."""
    if device.type != "cpu":
        raise Unavailable(f"effnet[{variant}] runs on the CPU (ONNX Runtime / OpenVINO CPU); device is {device.type}")
    on = "openvino" if variant.startswith("openvino") else "onnxruntime"
    # int8 on either runtime is made by ONNX Runtime's quantiser
    needs = [r for r in dict.fromkeys((on, "onnxruntime" if variant.endswith("int8") else on))
             if r not in runtime.available_runtimes()]
    if needs:
        raise Unavailable(f"{' and '.join(needs)} not installed (pip install 'effnet[runtime]')")
    params = count_params(model)
    model = model.eval().to(memory_format=torch.contiguous_format)
    try:
        if variant.endswith("int8"):
            gen = torch.Generator().manual_seed(0)
            calibration = [torch.randn(2, 3, resolution, resolution, generator=gen) for _ in range(4)]
            # Random weights: the agreement and speed guards would judge noise, so int8 is measured as is.
            module = runtime.int8_session(model, calibration, runtime=on, resolution=resolution, require_gain=False)
        else:
            module = runtime.session(model, on, resolution=resolution)
    except Exception as e:  # a variant that fails here must not stop the others being measured
        raise Unavailable(f"effnet.deploy.runtime ({variant}) failed: {type(e).__name__}: {e}") from e
    # Sessions take contiguous NCHW (a zero-copy numpy view); no channels-last conversion.
    return Runner("effnet", variant, runner.lib_model, module, runner.roles, n_params=params, compilable=False)


def _onnxruntime(name: str, resolution: int, device: torch.device) -> Runner:
    """Plain ONNX Runtime on a peer's own export: the first importable of torchvision, timm and
    efficientnet_pytorch, exported by ``torch.onnx.export`` with a dynamic batch axis, run with
    ONNX Runtime's default session options and the run's intra-op thread count."""
    import tempfile
    import warnings

    ort = _import("onnxruntime", "onnxruntime")
    if device.type != "cpu":
        raise Unavailable(f"onnxruntime is measured on the CPU here; device is {device.type}")
    reasons = []
    for lib in ("torchvision", "timm", "efficientnet_pytorch"):
        try:
            peer = _BUILDERS[lib](name, resolution, torch.device("cpu"))
            break
        except Unavailable as e:
            reasons.append(str(e))
    else:
        raise Unavailable(f"no peer to export for onnxruntime: {'; '.join(reasons)}")
    module = peer.module.eval().to(memory_format=torch.contiguous_format)
    if lib == "efficientnet_pytorch":
        module.set_swish(memory_efficient=False)  # its memory-efficient swish is a custom autograd op
    folder = tempfile.mkdtemp(prefix="effnet-bench-ort-")
    path = os.path.join(folder, "peer.onnx")
    x = torch.randn(1, 3, resolution, resolution)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), path, input_names=["input"], output_names=["logits"], dynamo=False,
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    import shutil

    shutil.rmtree(folder, ignore_errors=True)  # the session holds the graph

    class _Plain(nn.Module):
        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(session.run(None, {"input": t.numpy()})[0])

    return Runner("onnxruntime", "", f"{lib}:{peer.lib_model}", _Plain(), roles_of("onnxruntime", ""),
                  n_params=peer.params, compilable=False)


@dataclass(frozen=True)
class _TorchPeer:
    """What differs between the PyTorch peers: the module to import, what to add when it lacks
    a model, and how it builds its network (library module, its model name, image size, the
    effnet spec's classifier dropout) -> ``nn.Module`` with stochastic depth :data:`DROP_PATH_RATE`."""

    module: str
    lacks: str
    make: Callable[[Any, str, int, float], nn.Module]


def _efficientnet_pytorch_model(lib: Any, peer: str, resolution: int, dropout: float) -> nn.Module:
    # image_size gives static "same" padding (precomputed pads) instead of a pad per call.
    model = lib.EfficientNet.from_name(peer, image_size=resolution, drop_connect_rate=DROP_PATH_RATE,
                                       dropout_rate=dropout)
    model.set_swish(memory_efficient=True)
    return model


_TORCH_PEERS = {
    "torchvision": _TorchPeer("torchvision.models", "", lambda tv, peer, resolution, dropout: getattr(tv, peer)(
        stochastic_depth_prob=DROP_PATH_RATE, dropout=dropout)),
    "timm": _TorchPeer("timm", "", lambda timm, peer, resolution, dropout: timm.create_model(
        peer, drop_path_rate=DROP_PATH_RATE, drop_rate=dropout)),
    "efficientnet_pytorch": _TorchPeer("efficientnet_pytorch", " (it ports EfficientNet V1 only)",
                                       _efficientnet_pytorch_model),
}


def _torch_peer(lib: str, name: str, resolution: int, device: torch.device) -> Runner:
    """A PyTorch peer (torchvision, timm, efficientnet_pytorch): its network for ``name``,
    channels-last on ``device``."""
    how = _TORCH_PEERS[lib]
    module = _import(how.module, lib)  # a missing library is reported as such, whatever the model
    peer = peer_name(lib, name)
    if peer is None:
        raise Unavailable(f"{lib} has no {name}{how.lacks}")
    model = how.make(module, peer, resolution, get_spec(name).dropout)
    return Runner(lib, "", peer, _channels_last(model, device), roles_of(lib, ""), prepare=_cl)


def _keras(name: str, resolution: int, device: torch.device) -> Runner:
    use_keras_torch_backend()
    keras = _import("keras", "keras")
    peer = peer_name("keras", name)
    if peer is None:
        raise Unavailable(f"keras.applications has no {name}")
    if keras.backend.backend() != "torch":
        raise Unavailable(f"Keras runs on the {keras.backend.backend()!r} backend in this process; set "
                          f"KERAS_BACKEND=torch before Keras is first imported")
    if device.type != "cpu" and device.type != "cuda":
        raise Unavailable(f"Keras's torch backend runs on cpu or cuda, not {device.type}")
    # The application functions take no dropout arguments: Keras's own (the paper's) rates apply.
    model = getattr(keras.applications, peer)(weights=None, input_shape=(resolution, resolution, 3),
                                              classifier_activation=None)

    def nhwc(x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1).contiguous()  # (B, H, W, C): Keras's native layout

    return Runner("keras", "", peer, model, roles_of("keras", ""), prepare=nhwc,
                  call=lambda x, training: model(x, training=training), no_grad_only=True, compilable=False)


_BUILDERS: dict[str, Callable[[str, int, torch.device], Runner]] = {
    **{lib: functools.partial(_torch_peer, lib) for lib in _TORCH_PEERS}, "keras": _keras, "onnxruntime": _onnxruntime,
}


def build_runner(lib: str, variant: str, name: str, resolution: int, device: torch.device | str = "cpu") -> Runner:
    """``lib``'s network for the effnet model ``name``, in its best configuration, on ``device``.

    Raises :class:`Unavailable` (with the reason) for a library that is not importable, a model
    it lacks, or an effnet variant whose code is not in this effnet."""
    if name not in list_models():
        get_spec(name)  # raises the registry's error with suggestions
    device = torch.device(device)
    torch.manual_seed(0)
    if lib == "effnet":
        if variant not in EFFNET_INFERENCE + EFFNET_TRAINING:
            raise ValueError(f"effnet variant: expected one of {', '.join(EFFNET_INFERENCE + EFFNET_TRAINING)}, "
                             f"got {variant!r}")
        return _effnet(name, variant, resolution, device)
    if lib not in _BUILDERS:
        raise ValueError(f"lib: expected one of {', '.join(LIBRARIES)}, got {lib!r}")
    return _BUILDERS[lib](name, resolution, device)


def versions() -> dict[str, str]:
    """Versions of Python, torch, effnet and every peer (``'not installed'`` when absent)."""
    import platform
    from importlib.metadata import PackageNotFoundError, version
    from pathlib import Path

    # The installed distribution's version (the package front door is above every layer), and
    # which source tree ran: benchmarks/ puts a checkout on sys.path without installing it.
    try:
        mine = version("effnet")
    except PackageNotFoundError:
        mine = "not installed"
    use_keras_torch_backend()
    out = {"python": platform.python_version(), "torch": torch.__version__, "effnet": mine,
           "effnet_source": str(Path(__file__).resolve().parents[1])}
    for lib in (*LIBRARIES[1:], "openvino"):
        try:
            out[lib] = str(getattr(importlib.import_module(lib), "__version__", "installed"))
        except Exception:  # noqa: BLE001 - any import failure means: not usable here
            out[lib] = "not installed"
    return out


__all__ = ["DROP_PATH_RATE", "EFFNET_INFERENCE", "EFFNET_TRAINING", "LIBRARIES", "Runner", "Unavailable",
           "build_runner", "candidates", "compiled", "peer_name", "roles_of", "use_keras_torch_backend", "versions"]
