"""Memory-saving training ops: BatchNorm + activation as an autograd function that saves fewer
activations for the backward pass and recomputes the rest (one cheap elementwise pass), the
recomputation of activation outputs that the next op would save, and the switch for all of them
(the squeeze-excitation gate's op is in ``effnet.layers.gate``, the depthwise conv's in
``effnet.layers.depthwise``).

Why BN + activation. In a conv -> BN -> SiLU, autograd keeps three full-size tensors per layer: the
conv output (BN's backward needs its input), a copy of the BN output (SiLU's backward needs its
input; the in-place SiLU saves a clone, ``silu_``), and the SiLU output (the next conv's input).
The BN output is a per-channel affine map of the conv output, so :func:`batch_norm_act` keeps
one of the two and the (C,) statistics: one tensor of three. It keeps the BN output where it
can (SiLU's backward reads it as it is, and BN's backward runs on it with the shift and 1/scale
in place of the batch statistics) and writes the activation over the conv output, which nothing
else reads: no full-size tensor is freshly allocated. Where a channel's scale is
too small against its shift for that, it keeps the conv output and recomputes the BN output.
(A SiLU alone saving "only its input" would save nothing: PyTorch's SiLU already saves just its
input; the copy is what costs.) ReLU / ReLU6 after BN are left as they
are: in place, they save their output, which the next conv keeps anyway, and BN's backward needs
its input, not its output, so the in-place write is safe.

The activation output is still saved by the op that reads it next (the depthwise conv, the
SE-gated projection) for its weight gradient; :func:`recompute_activations` (entered by the
model's training forward) packs it as a reference to the BN output it came from, saved anyway,
and recomputes it when that backward runs: one elementwise pass for one full-size tensor.

The memory-saving ops (these and ``effnet.layers.gate``'s) are used only where they can be:
training mode with grad enabled, not under ``torch.jit`` scripting or tracing, ONNX export,
``torch.export`` or ``torch.compile``, all of which need the plain ops (a custom autograd
function cannot be exported or scripted, and the compilers fuse the plain ops themselves).
:func:`memory_efficient` switches them off (benchmarks, debugging); the gradients are those of
the plain ops (``tests/test_memory_saving.py``). None supports double backward
(``create_graph=True``): switch them off for that.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from effnet.layers.buffers import BufferPool

__all__ = ["batch_norm_act", "lean_ops_active", "memory_efficient", "memory_efficient_enabled",
           "observing_saved_tensors", "recompute_activations", "set_memory_efficient"]

_ENABLED = True


def set_memory_efficient(enabled: bool) -> bool:
    """Use (True, the default) or not the memory-saving training ops; returns the previous
    setting. Process-wide: every effnet model in this process follows it."""
    global _ENABLED
    if not isinstance(enabled, bool):
        raise ValueError(f"memory_efficient: expected True or False, got {enabled!r}")
    previous, _ENABLED = _ENABLED, enabled
    return previous


def memory_efficient_enabled() -> bool:
    """Whether the memory-saving training ops are switched on (see :func:`set_memory_efficient`)."""
    return _ENABLED


@contextlib.contextmanager
def memory_efficient(enabled: bool = True) -> Iterator[None]:
    """``with memory_efficient(False): ...`` trains with the plain ops inside the block, e.g.
    to compare memory and speed; the previous setting is restored on exit."""
    previous = set_memory_efficient(enabled)
    try:
        yield
    finally:
        set_memory_efficient(previous)


def lean_ops_active() -> bool:
    """The memory-saving ops may run now: switched on, grad enabled, and no tracer, exporter or
    compiler is recording the graph (they need the plain ops). The caller checks its own
    ``training`` flag and ``torch.jit.is_scripting()`` (which must be tested inline in a
    scripted ``forward``)."""
    return (_ENABLED and torch.is_grad_enabled() and not torch.jit.is_tracing()
            and not torch.onnx.is_in_onnx_export() and not torch.compiler.is_compiling()
            and not torch.compiler.is_exporting())


# --- BatchNorm + activation -----------------------------------------------------------------
def _act_kind(act: nn.Module) -> str | None:
    """The activations :func:`batch_norm_act` fuses (those whose backward needs their input)."""
    if type(act) is nn.SiLU:
        return "silu"
    if type(act) is nn.Hardswish:
        return "hardswish"
    if type(act) is nn.GELU:
        return "gelu_tanh" if act.approximate == "tanh" else "gelu"
    return None


def _act(kind: str, z: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """The activation of ``z`` into ``out`` (``z`` itself, the conv output, ...) or a new tensor:
    each element reads only its own input, so the kernels may write where they read."""
    if out is None:
        out = torch.empty_like(z)
    if kind == "silu":
        return torch.ops.aten.silu.out(z, out=out)
    if kind == "hardswish":
        return torch.ops.aten.hardswish.out(z, out=out)
    return torch.ops.aten.gelu.out(z, approximate="tanh" if kind == "gelu_tanh" else "none", out=out)


def _act_grad(kind: str, grad: torch.Tensor, z: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """The activation's input gradient, into ``out`` (may be ``z``, a buffer of the caller's own:
    each element reads only its own input) or a new tensor."""
    if out is None:
        out = torch.empty_like(z)
    if kind == "silu":
        return torch.ops.aten.silu_backward.grad_input(grad, z, grad_input=out)
    if kind == "hardswish":
        return torch.ops.aten.hardswish_backward.out(grad, z, out=out)
    approximate = "tanh" if kind == "gelu_tanh" else "none"
    return torch.ops.aten.gelu_backward.grad_input(grad, z, approximate=approximate, grad_input=out)


def _bn_backward(grad_z: torch.Tensor, inp: torch.Tensor, weight: torch.Tensor, mean: torch.Tensor,
                 invstd: torch.Tensor, eps: float, mask: list[bool]) -> tuple[torch.Tensor | None, ...]:
    """BN's gradients, as :meth:`_BatchNormAct.backward` returns them; the input gradient is
    written over ``grad_z`` (BN's second pass reads each element, then writes it)."""
    args = (grad_z, inp, weight, None, None, mean, invstd, True, eps, mask)
    if not mask[0]:
        _, gw, gb = torch.ops.aten.native_batch_norm_backward(*args)
        return None, gw, gb, None, None, None, None, None, None, None
    gw, gb = torch.empty_like(weight), torch.empty_like(weight)
    gx, gw, gb = torch.ops.aten.native_batch_norm_backward.out(*args, out0=grad_z, out1=gw, out2=gb)
    return gx, gw if mask[1] else None, gb if mask[2] else None, None, None, None, None, None, None, None


class _BatchNormAct(torch.autograd.Function):
    """Training-mode ``act(batch_norm(x))`` saving one full-size tensor: the BN output and 1/std
    (see ``_save_output``), else ``x`` and both (C,) batch statistics."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum, eps, kind, scratch, pool):  # type: ignore[override]
        # native_batch_norm is what F.batch_norm runs on CPU: the same output, the same
        # running-statistics update (momentum, unbiased variance), plus the batch mean and
        # 1/std that its backward takes.
        if pool is not None:  # the BN output into a buffer kept from an earlier step (layers.buffers)
            stats = (x.new_empty(x.shape[1]), x.new_empty(x.shape[1]))
            z, mean, invstd = torch.ops.aten.native_batch_norm.out(
                x, weight, bias, running_mean, running_var, True, momentum, eps,
                out=pool.empty_like(x, layer=weight), save_mean=stats[0], save_invstd=stats[1])
        else:
            z, mean, invstd = torch.native_batch_norm(x, weight, bias, running_mean, running_var, True, momentum, eps)
        ctx.eps, ctx.kind, ctx.pool = eps, kind, pool
        ctx.saved_output = _save_output(z, weight, bias)
        if ctx.saved_output:
            ctx.save_for_backward(z, weight, bias, invstd)
            _RECORDER.last = z  # for batch_norm_act to note the result as recomputable from z
            if scratch:  # the result over x: no fresh full-size buffer (its pages cost like the math)
                ctx.mark_dirty(x)
                return _act(kind, z, out=x)
            return _act(kind, z)
        ctx.save_for_backward(x, weight, bias, mean, invstd)
        return _act(kind, z, out=z)  # in place: grad is off here, so no copy is saved

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        if ctx.saved_output:
            return _backward_from_output(ctx, grad)
        x, weight, bias, mean, invstd = ctx.saved_tensors
        shape = (1, -1) + (1,) * (x.ndim - 2)  # per channel: (1, C, 1, 1)
        scale = weight * invstd
        shift = bias - mean * scale
        # The BN output, recomputed as the forward kernel computes it (in the statistics' float
        # precision, rounded to the input's dtype under mixed precision).
        z = torch.addcmul(shift.view(shape), x, scale.view(shape)).to(x.dtype)
        # One full-size buffer for the whole backward: z, then the activation's gradient over it,
        # then BN's input gradient over that (its second pass reads each element, then writes it).
        # A fresh CPU buffer of this size costs about as much as the arithmetic (its pages are
        # faulted in and zeroed on first touch), so the two it saves are worth the aliasing; the
        # gradients are bitwise those of separate buffers (tests/test_memory_saving.py).
        grad_z = _act_grad(ctx.kind, grad, z, out=z)
        return _bn_backward(grad_z, x, weight, mean, invstd, ctx.eps, list(ctx.needs_input_grad[:3]))


# How far a BN output may sit from its shift, in units of its scale, for its normalised input to
# be recovered from it: z = w * xhat + b gives xhat = (z - b) / w with an extra absolute error of
# about eps * |b / w| (float32: 64 * 6e-8 = 4e-6, the size of BN backward's own summation error).
_MAX_SHIFT_OVER_SCALE = 64.0


def _save_output(z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> bool:
    """Save the BN output ``z`` instead of its input, where that is exact enough and faster.

    Both are one full-size tensor, but the activation's backward needs ``z``: from ``x`` it must
    be recomputed (a read and a write of the whole tensor per layer, 8% of B0's CPU training
    step), from ``z`` it is there, and BN's backward runs on ``z`` with ``(b, 1/w)`` in place of
    the batch statistics. CPU float32/float64 only, where this was measured (1.1-1.4x faster
    backward on B0's layers) and where the check below costs no device sync; and only while every
    channel's scale is non-zero and large against its shift (see ``_MAX_SHIFT_OVER_SCALE``),
    else the input is saved as before."""
    if z.device.type != "cpu" or z.dtype not in (torch.float32, torch.float64):
        return False
    scale = weight.detach().abs()
    return bool((scale > 0).all() and (bias.detach().abs() <= _MAX_SHIFT_OVER_SCALE * scale).all())


def _backward_from_output(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    """:meth:`_BatchNormAct.backward` from the saved BN output ``z = w * xhat + b``.

    BN's backward needs ``xhat`` = (input - mean) * invstd; handed ``z`` as its input, ``b`` as
    the mean and ``1/w`` as invstd it forms the same ``xhat``, so the weight and bias gradients
    are unchanged, and its input gradient, ``weight * invstd * (...)``, comes out right with
    ``w * invstd * w`` as the weight (invstd being ``1/w`` there)."""
    z, weight, bias, invstd = ctx.saved_tensors
    # A buffer of its own (BN's backward still reads z): where the model has a pool, the BN output
    # of a layer whose backward is done, when one of this shape is free (not kept otherwise).
    grad_z = _act_grad(ctx.kind, grad, z, out=None if ctx.pool is None else ctx.pool.empty_like(z, keep=False))
    return _bn_backward(grad_z, z, weight * invstd * weight, bias, weight.reciprocal(), ctx.eps,
                        list(ctx.needs_input_grad[:3]))


def batch_norm_act(x: torch.Tensor, bn: nn.BatchNorm2d, act: nn.Module, scratch: bool = False,
                   pool: BufferPool | None = None) -> torch.Tensor | None:
    """``act(bn(x))`` for a training-mode ``bn``, saving one tensor for backward instead of two;
    ``None`` when this pair cannot be fused (another norm or activation, no affine parameters,
    no batch statistics): the caller then runs the modules. ``scratch=True``: ``x`` is the
    caller's own (a conv output nothing else reads) and may be overwritten with the result,
    which is then ``x`` itself. ``pool``: where the BN output and its gradient get their
    full-size buffers (:class:`~effnet.layers.buffers.BufferPool`; CPU), instead of fresh ones."""
    kind = _act_kind(act)
    if kind is None or type(bn) is not nn.BatchNorm2d or not bn.training or bn.weight is None:
        return None
    # nn.BatchNorm2d.forward's bookkeeping: count the batch; momentum None = cumulative average.
    momentum = 0.0 if bn.momentum is None else bn.momentum
    if bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:
            momentum = 1.0 / float(bn.num_batches_tracked)
    running_mean = bn.running_mean if bn.track_running_stats else None
    running_var = bn.running_var if bn.track_running_stats else None
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64) or x.dtype != bn.weight.dtype:
        pool = None  # CUDA's caching allocator already reuses its blocks; mixed precision: as measured
    _RECORDER.last = None
    try:
        y = _BatchNormAct.apply(x, bn.weight, bn.bias, running_mean, running_var, momentum, bn.eps, kind, scratch,
                                pool)
        z = _RECORDER.last
    finally:
        _RECORDER.last = None  # also when apply raises (a checkpoint's early stop does), not to keep z alive
    if z is not None:
        _RECORDER.note(y, z, kind, pool)
    return y


# --- activations recomputed from the BN output they came from ----------------------------------
# In MBConv the activation a = act(z) is saved twice over: z by batch_norm_act (its backward), and
# a by the op that reads it next, for that op's weight gradient: the depthwise conv after the
# expansion, the SE-gated 1x1 projection after the depthwise conv. While the model's forward runs
# under recompute_activations(), a saved tensor that is such an a is packed as a reference to z
# and recomputed (one elementwise pass) when that op's backward asks for it: of B0's saved
# activations (batch 8, 224 px) these copies were 116 of 435 MiB.
class _Recompute:
    """A saved activation output, packed as the BN output ``z`` it is recomputed from (``version``:
    z's version then)."""

    __slots__ = ("kind", "pool", "version", "z")

    def __init__(self, z: torch.Tensor, kind: str, pool: BufferPool | None) -> None:
        self.z, self.kind, self.pool, self.version = z, kind, pool, z._version


def _same_layout(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same shape, strides and dtype: ``act(b)`` recomputed as a dense tensor stands for ``a``."""
    return a.shape == b.shape and a.stride() == b.stride() and a.dtype == b.dtype


class _Recorder(threading.local):
    """Per thread: the activation outputs noted during the current forward (by data pointer: the
    tensor, its version then, z, kind, pool), the pack hook that uses them, and the BN output the
    last op saved."""

    table: dict[int, tuple[Any, int, torch.Tensor, str, BufferPool | None]] | None = None
    pack: Callable[[torch.Tensor], Any] | None = None
    observer: tuple[Callable[[torch.Tensor], Any], Callable[[torch.Tensor], None]] | None = None
    last: torch.Tensor | None = None

    def note(self, y: torch.Tensor, z: torch.Tensor, kind: str, pool: BufferPool | None) -> None:
        """Note ``y = act(z)`` while our pack hook is the innermost one: inside a region that
        another hook handles (a checkpointed block) that hook decides what is kept, and a
        reference to z here would keep what it meant to free."""
        if self.table is None or not _same_layout(y, z):
            return
        top = torch._C._autograd._top_saved_tensors_default_hooks(False)
        if top is not None and top[0] is self.pack:
            self.table[y.data_ptr()] = (weakref.ref(y), y._version, z, kind, pool)

    def recomputable(self, t: torch.Tensor) -> _Recompute | None:
        """``t``'s packing when it is a noted output, unchanged (same memory, layout and version,
        the output still alive, so its memory cannot have been reused), else None."""
        entry = None if self.table is None else self.table.get(t.data_ptr())
        if entry is None:
            return None
        ref, version, z, kind, pool = entry
        if ref() is None or t._version != version or not _same_layout(t, z):
            return None
        return _Recompute(z, kind, pool)


_RECORDER = _Recorder()


def _other_hooks_active() -> bool:
    """Saved-tensor hooks other than :func:`observing_saved_tensors`' are already active (a
    profiler's, offloading, torch.utils.checkpoint), hooks are disabled here, or this PyTorch
    cannot tell (it lacks the query)."""
    autograd = torch._C._autograd
    if not hasattr(autograd, "_top_saved_tensors_default_hooks") or not autograd._saved_tensors_hooks_is_enabled():
        return True
    top = autograd._top_saved_tensors_default_hooks(False)
    return top is not None and not (_RECORDER.observer is not None and top[0] is _RECORDER.observer[0])


@contextlib.contextmanager
def observing_saved_tensors(observe: Callable[[torch.Tensor], None]) -> Iterator[None]:
    """Call ``observe(t)`` for every tensor that a forward inside saves for backward, as training
    saves it: an effnet model's forward still recomputes its activations (they are not observed),
    where any other saved-tensor hook would make it stand aside. For counting activation memory
    (``effnet.profile.saved_activation_bytes``)."""

    def pack(t: torch.Tensor) -> torch.Tensor:
        observe(t)
        return t

    previous, _RECORDER.observer = _RECORDER.observer, (pack, observe)
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            yield
    finally:
        _RECORDER.observer = previous


class _Saved:
    """A tensor saved as it is: detached (a tensor that is its own op's output would otherwise
    form a reference cycle with its graph, which a forward never backwarded, e.g. a skipped
    non-finite loss, would leak) with its version then, checked when unpacked as autograd checks
    a tensor saved without hooks."""

    __slots__ = ("t", "version")

    def __init__(self, t: torch.Tensor) -> None:
        self.t, self.version = t.detach(), t._version


@contextlib.contextmanager
def recompute_activations() -> Iterator[bool]:
    """Inside: an activation output of :func:`batch_norm_act` that another op saves for backward
    is saved as a reference to the BN output it came from and recomputed in backward (see above).
    Yields whether recomputation is on: not inside another ``recompute_activations``, and not
    where other saved-tensor hooks are active, whose owner decides what is kept (checkpointing,
    offloading); :func:`observing_saved_tensors` is seen through."""
    if _RECORDER.table is not None or _other_hooks_active():
        yield False
        return
    observe = None if _RECORDER.observer is None else _RECORDER.observer[1]

    def pack(t: torch.Tensor) -> Any:
        packed = _RECORDER.recomputable(t)
        if packed is not None:
            return packed
        if observe is not None:
            observe(t)
        return _Saved(t)

    def unpack(p: Any) -> torch.Tensor:
        if type(p) is _Saved:
            if p.t._version != p.version:
                raise RuntimeError(f"one of the tensors saved for backward (shape {tuple(p.t.shape)}) was modified "
                                   f"by an in-place operation after it was saved (version {p.version} -> "
                                   f"{p.t._version}); make that operation out of place")
            return p.t
        if p.z._version != p.version:
            raise RuntimeError("a BN output saved for recomputing an activation was modified in place "
                               "before backward; switch the memory-saving ops off (memory_efficient(False))")
        # Into a buffer the pool keeps: SiLU over a fresh 147 MiB took 48 ms (its pages faulted in
        # and zeroed), into a kept one 8.8 ms (B0's largest map, batch 32, 2 threads).
        return _act(p.kind, p.z, out=None if p.pool is None else p.pool.empty_like(p.z))

    _RECORDER.table, _RECORDER.pack = {}, pack
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            yield True
    finally:
        _RECORDER.table, _RECORDER.pack = None, None

