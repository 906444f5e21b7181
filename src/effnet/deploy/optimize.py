"""The fast inference path: module surgery on a *copy* of a model, outputs unchanged.

* :func:`static_padding` replaces the run-time TF "SAME" padding of
  :class:`effnet.layers.Conv2dSame` by fixed pads for one input size (export and tracing see
  plain convs, and no padding arithmetic runs per call);
* :func:`fold_batchnorm` folds every eval-mode BatchNorm into the conv before it;
* :func:`optimize` is the front door: BN folding, static padding, channels-last weights,
  optional ``torch.compile`` and optional int8 (``effnet.deploy.quantize``).

The input model is never modified: every function works on ``copy.deepcopy(model)``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterable

import torch
from torch import nn

from effnet.deploy.quantize import quantize
from effnet.deploy.surgery import fold_batchnorm, set_child, static_padding
from effnet.layers import Conv2dSame, SqueezeExcite

__all__ = ["TracedInference", "fold_batchnorm", "optimize", "static_padding"]

log = logging.getLogger(__name__)


class _LinearSqueezeExcite(nn.Module):
    """:class:`~effnet.layers.SqueezeExcite` with its 1x1 convs as ``nn.Linear`` on the pooled
    (B, C) vector: the same arithmetic without 4-D conv dispatch on 1x1 maps."""

    def __init__(self, se: SqueezeExcite) -> None:
        super().__init__()
        self.reduce = _linear_from_conv(se.reduce)
        self.act = se.act
        self.expand = _linear_from_conv(se.expand)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.expand(self.act(self.reduce(x.mean((2, 3)))))  # (B, C)
        return x * torch.sigmoid(s)[:, :, None, None]


def _linear_from_conv(conv: nn.Conv2d) -> nn.Linear:
    if conv.kernel_size != (1, 1) or conv.groups != 1:
        raise ValueError(f"expected a 1x1 dense conv, got kernel {conv.kernel_size}, groups {conv.groups}")
    linear = nn.Linear(conv.in_channels, conv.out_channels, bias=conv.bias is not None,
                       device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        linear.weight.copy_(conv.weight.flatten(1))
        if conv.bias is not None:
            linear.bias.copy_(conv.bias)
    return linear


def _linear_squeeze_excite(model: nn.Module) -> int:
    names = [name for name, m in model.named_modules() if type(m) is SqueezeExcite]
    for name in names:
        set_child(model, name, _LinearSqueezeExcite(model.get_submodule(name)))
    return len(names)


def run_in_chunks(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, chunk: int | None) -> torch.Tensor:
    """``fn(x)`` for an (N, ...) batch, called on at most ``chunk`` images at a time (``None``: all at
    once) and joined in order: the micro-batching of :class:`TracedInference` and of the runtime
    sessions (:class:`effnet.deploy.runtime.Session`)."""
    if chunk is None or len(x) <= chunk:
        return fn(x)
    return torch.cat([fn(part) for part in x.split(chunk)])


class TracedInference(nn.Module):
    """An optimised network called through its TorchScript trace.

    At batch 1 a B0 forward is ~250 Python module calls, and their overhead is a sizeable part
    of the time: through the trace B0 took 6.5 ms against 7.9 ms eager (2 CPU threads, 224 px;
    batch 32 unchanged, 281 vs 283 ms). The eager module stays available as ``module`` and
    answers every other attribute (``spec``, ``num_features``, ``forward_features`` ...). The
    trace holds no input-size logic (padding was made static), so it runs any batch size at the
    traced resolution.

    An input of another height or width does not go through the trace: the eager module answers
    it, except for a network with TF "same" padding, whose pads were fixed for the traced size
    (:func:`static_padding`), where the result would be silently wrong (B0 traced at 224 px
    called at 225 px: another top-1 probability): that call is refused with what to do.

    A batch larger than ``micro_batch`` images goes through the trace in chunks of that many (one
    tensor back, in order; ``None``: whole). On 2 threads of a 2-core AMD EPYC (32 MiB L3), batch
    32 took 298 ms in chunks of 4 against 434 ms whole (B0, 224 px) and 1126 against 2165 ms (B3,
    300 px; chunks of 2: 1257, of 8: 1422): a chunk's feature maps stay nearer the caches.
    """

    #: images per call through the trace for a larger batch (see the class docstring); settable
    micro_batch: int | None = 4

    def __init__(self, module: nn.Module, example_input: torch.Tensor) -> None:
        super().__init__()
        self.module = module
        self.input_size = (int(example_input.shape[-2]), int(example_input.shape[-1]))
        # Pads fixed for input_size (optimize made TF "same" padding static); a module without
        # a spec is treated the same way, as nothing says its layers work at another size.
        spec = getattr(module, "spec", None)
        self.fixed_size = spec is None or getattr(spec, "padding", "same") == "same"
        # The model's input checks turn into constants for the traced size; the tracer warns
        # about each such Python bool, which is exactly what is intended here.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            self.traced = torch.jit.trace(module, example_input, check_trace=False)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = tuple(x.shape[-2:]) if isinstance(x, torch.Tensor) and x.ndim == 4 else None
        if size == self.input_size:
            # The trace skips the model's own input checks (a data-dependent branch does not
            # trace), so the one that matters for a silent wrong answer is repeated here.
            if not bool(torch.isfinite(x).all()):
                bad = int((~torch.isfinite(x)).sum())
                raise ValueError(f"input holds {bad} NaN/inf value(s) (shape {tuple(x.shape)}); check the image "
                                 f"decoding and normalisation that produced it")
            return run_in_chunks(self.traced, x, self.micro_batch)
        if size is not None and self.fixed_size:
            h, w = self.input_size
            raise ValueError(f"this optimised model was traced for {h}x{w} inputs and its TF 'same' padding fixed "
                             f"for that size; got {size[0]}x{size[1]}: resize the input to {h}x{w}, or call "
                             f"effnet.optimize again with an example input of this size")
        return self.module(x)  # another size (symmetric padding) or a wrong input the model names

    def __getattr__(self, name: str) -> object:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["module"], name)


def optimize(
    model: nn.Module, example_input: torch.Tensor | None = None, *, int8: bool = False,
    compile: bool = False, calibration: Iterable[torch.Tensor] | None = None,
    channels_last: bool = True, linear_se: bool = False, trace: bool | None = None,
) -> nn.Module:
    """The fast inference copy of ``model`` (not modified): same outputs, less time.

    fp32 (the default): eval mode, BatchNorm folded into the convs (:func:`fold_batchnorm`),
    weights in channels-last layout, TF "same" padding made static for ``example_input``'s
    size (:func:`static_padding`; skipped without an example), ``requires_grad`` off. Outputs
    match the eval-mode model within float rounding (~1e-5); attributes such as ``spec``,
    ``num_features`` and ``classifier`` stay, so ``forward_features`` / ``forward_head`` work.

    Measured on B0 at 224 px, 2 CPU threads (README): channels-last weights are the big win
    (oneDNN's NHWC depthwise and 1x1 kernels); BN folding removes a pass over every feature
    map. A channels-last *input* is not needed: the first conv with channels-last weights
    returns channels-last maps. ``linear_se`` (squeeze-excitation 1x1 convs run as Linear on
    the pooled vectors) and ``torch.jit.freeze`` measured no gain, so they are off / absent.

    With ``example_input`` the result is also traced (:class:`TracedInference`; ``trace=False``
    returns the eager module, e.g. for ``torch.export``): less Python per call, which is most of
    the gain at batch 1. ``compile=True`` wraps the result in ``torch.compile`` instead (first
    call compiles; needs a C++ compiler on CPU). ``int8=True`` returns :func:`effnet.deploy.quantize.quantize`'s CPU int8
    model instead, calibrated on ``calibration`` (an iterable of input batches; default
    ``example_input``).
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"optimize: expected an nn.Module, got {type(model).__name__}")
    if example_input is not None and (not isinstance(example_input, torch.Tensor) or example_input.ndim != 4):
        raise ValueError(f"optimize: example_input must be an (N, C, H, W) tensor, got "
                         f"{getattr(example_input, 'shape', type(example_input).__name__)}")
    if int8:
        if compile:
            raise ValueError("optimize: int8 and compile together are not supported; pick one")
        return quantize(model, example_input, calibration=calibration)
    if calibration is not None:
        raise ValueError("optimize: calibration batches are only used with int8=True")
    if trace and (example_input is None or compile):
        raise ValueError("optimize: trace=True needs an example_input and cannot be combined with compile")

    out = fold_batchnorm(model)
    if example_input is not None:
        out = static_padding(out, (int(example_input.shape[-2]), int(example_input.shape[-1])))
    elif any(type(m) is Conv2dSame for m in out.modules()):
        log.info("optimize: no example_input, so TF 'same' padding stays dynamic (computed per call)")
    if linear_se:
        _linear_squeeze_excite(out)
    if channels_last:
        out = out.to(memory_format=torch.channels_last)
    for p in out.parameters():
        p.requires_grad_(False)
    if compile:
        return torch.compile(out)
    if example_input is not None and trace is not False:
        out = TracedInference(out, example_input.to(memory_format=torch.channels_last) if channels_last
                              else example_input)
    return out
