"""The processes of a training job: data-parallel training with PyTorch's own engine
(``torch.distributed`` process groups and ``DistributedDataParallel``, launched by
``torchrun``), and the signals that stop a run at a safe point.

``torchrun --nproc_per_node=N -m effnet train ...`` starts N copies of the same command and
sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (and the rendezvous address) in each one's
environment; :func:`start` joins the group they describe. Without those variables every helper
here is a no-op and a run is the plain single-process one.

**Stopping on SIGINT (Ctrl-C) or SIGTERM.**
Python's default SIGINT handler raises ``KeyboardInterrupt`` wherever the main thread happens to
be. Inside a training step that can be a weakref callback or a ``__del__``, where the exception
is printed as "Exception ignored in ..." and swallowed, so the run went on to the end; elsewhere
it tears through the loop with a traceback. Here the handler only records the signal; the loop
looks at the record after each optimiser step (and after each epoch), writes its position to
``state.pt`` and raises :class:`Interrupted`, which the CLI turns into the resume command and
the conventional exit status ``128 + signal`` (130 for SIGINT, 143 for SIGTERM).

A second SIGINT while the first is being honoured raises ``KeyboardInterrupt`` at once, for a
user who will not wait for the safe point (checkpoints are written atomically, so the files
already on disk stay whole).

DataLoader workers forked while the handler is installed inherit it and ignore both signals, so
a terminal's Ctrl-C (sent to the whole process group) leaves them serving batches until the main
process stops. SIGTERM is different: PyTorch installs its own SIGTERM handler in each worker,
which makes the worker die of it, so a SIGTERM sent to the whole group while loader workers run
(``workers > 0``) ends the run with PyTorch's "DataLoader worker ... is killed by signal" error
and only the last checkpoint. Send SIGTERM to the main process alone (``kill PID``; systemd
``KillMode=mixed``; Slurm ``--signal``) to stop at the next step with the position saved.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dist:
    """Where this process sits in the job (``world == 1``: not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    owns_group: bool = False  # this module created the process group, so it destroys it

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def start(device: str, timeout_minutes: float) -> Dist:
    """Join the process group that torchrun's environment describes (or one the caller already
    initialised). NCCL for CUDA devices, Gloo for CPU. The timeout is finite so that a rank stuck
    in a collective whose peer vanished raises instead of hanging forever."""
    if dist.is_available() and dist.is_initialized():
        return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)),
                    int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world <= 1:
        return Dist()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0))
    cuda = device != "cpu" and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank)  # before NCCL init: one GPU per process
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(minutes=timeout_minutes))
    return Dist(rank, world, local_rank, int(os.environ.get("LOCAL_WORLD_SIZE", 1)), owns_group=True)


def stop(d: Dist) -> None:
    if d.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def gradient_sync(forward: nn.Module, sync: bool) -> contextlib.AbstractContextManager[Any]:
    """Gradient accumulation under DDP: the micro-batches before an optimiser step's last one
    run in ``no_sync`` (their gradients add up locally), and the last one's backward all-reduces
    the sum once, instead of one all-reduce per micro-batch (PyTorch DDP ``no_sync`` docs)."""
    ddp = getattr(forward, "_orig_mod", forward)  # under torch.compile, the wrapped module
    if sync or not isinstance(ddp, nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext()
    return ddp.no_sync()


def average_gradients(d: Dist, model: nn.Module) -> None:
    """Mean of every gradient over the ranks, as DDP's backward would have made it: for an
    accumulation whose last micro-batch was skipped, so that its ``no_sync`` gradients were never
    all-reduced (the ranks would otherwise step with different gradients and drift apart)."""
    if not (d.enabled and dist.is_initialized()):
        return
    for p in model.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad.div_(d.world)


def barrier(d: Dist) -> None:
    """Wait until every rank reaches this point (no-op without a process group)."""
    if d.enabled and dist.is_initialized():
        dist.barrier()


def device_for(d: Dist, device: torch.device) -> torch.device:
    """Under DDP each process drives the GPU numbered by its local rank."""
    if d.enabled and device.type == "cuda":
        return torch.device("cuda", d.local_rank)
    return device


def broadcast_object(d: Dist, obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (e.g. a run folder named from rank 0's clock)."""
    if not d.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_object(d: Dist, obj: Any) -> list[Any]:
    if not d.enabled:
        return [obj]
    out: list[Any] = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


def sum_floats(d: Dist, values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum of ``values`` over all ranks (float64, so counts stay exact)."""
    if not d.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def all_agree(d: Dist, flag: bool, device: torch.device) -> bool:
    """True only when ``flag`` holds on every rank."""
    if not d.enabled:
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def any_rank(d: Dist, flag: bool, device: torch.device) -> bool:
    """True when ``flag`` holds on some rank (e.g. a stop signal that reached one process)."""
    return not all_agree(d, not flag, device)


def broadcast_buffers(d: Dist, module: nn.Module) -> None:
    """Rank 0's buffers (BatchNorm statistics) everywhere: without SyncBatchNorm each rank's
    statistics follow its own shard, and evaluation must score one model, the one rank 0 saves."""
    if d.enabled:
        for b in module.buffers():
            dist.broadcast(b, src=0)


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) whose backward is also a sum over ranks: the gradient of a global sum with
    respect to one rank's term collects every rank's downstream loss."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class _DistributedBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are taken over the whole global batch, for devices
    where ``nn.SyncBatchNorm`` has no kernel (it refuses CPU tensors, so Gloo jobs use this).

    The sums go through :class:`_SumOverRanks`, whose backward all-reduces the gradients of the
    statistics: each rank's input gradient then holds every rank's loss term, as with
    ``nn.SyncBatchNorm``. Two passes (mean, then squared
    deviations) keep the variance as accurate as the single-process kernel's.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        dims = (0, 2, 3)
        count = torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype, device=x.device)
        totals = _SumOverRanks.apply(torch.cat([x.sum(dims), count]))  # (C + 1,): channel sums, image count
        n = totals[-1]
        mean = totals[:-1] / n
        centred = x - mean[None, :, None, None]
        var = _SumOverRanks.apply(centred.square().sum(dims)) / n  # biased, as BatchNorm normalises with
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1), alpha=m)  # unbiased, as torch
        y = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm2d normalised over the global batch: ``nn.SyncBatchNorm`` on GPUs,
    :class:`_DistributedBatchNorm2d` on CPU. Parameter and buffer names are unchanged, so
    checkpoints stay those of the plain model."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            new = _DistributedBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                          child.track_running_stats)
            new.load_state_dict(child.state_dict())
            new.to(child.weight.device if child.affine else device)
            if child.affine:
                # The same Parameter objects, so requires_grad (a frozen backbone) carries over.
                new.weight, new.bias = child.weight, child.bias
            setattr(model, name, new)
        else:
            convert_sync_batchnorm(child, device)
    return model


# --- stop signals ----------------------------------------------------------------------------------
#: The signals that stop a run at its next safe point.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A run stopped by a signal at a safe point, its position saved in ``run_dir`` (``None``
    for a trial that keeps no folder).

    A ``KeyboardInterrupt`` (not an ``Exception``), so that code which records a failed trial
    with ``except Exception`` and moves on (a search) stops as the user asked instead.
    """

    def __init__(self, message: str, signum: int, run_dir: Path | None, is_main: bool = True) -> None:
        super().__init__(message)
        # is_main: False on the ranks > 0 of a torchrun job, which should not repeat the message.
        self.signum, self.run_dir, self.is_main = signum, run_dir, is_main

    def __reduce__(self) -> tuple[Any, ...]:  # picklable (e.g. across processes) with its fields
        return type(self), (self.args[0], self.signum, self.run_dir, self.is_main)

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        """The shell convention for death by a signal: 128 + its number (130, 143)."""
        return 128 + self.signum


class StopSignals:
    """Context manager: while inside it, SIGINT and SIGTERM set :attr:`signum` instead of
    interrupting; the previous handlers are put back on exit.

    Handlers can only be installed from the main thread (``signal.signal`` raises elsewhere);
    in another thread (e.g. an Optuna study running trials in threads) nothing is installed and
    the process keeps its own handling.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        self._pid = os.getpid()

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._pid:
            # A forked child (a DataLoader worker) inherits this handler. A terminal's Ctrl-C
            # reaches the whole process group; the worker ignores it and keeps serving batches
            # until the main process stops at its safe point and shuts the loader down (had
            # it died of the signal, the main process would fail on its next batch instead).
            return
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now
        if self.signum is None:
            self.signum = signum
        # os.write, not logging: a handler runs between two bytecodes of the main thread, which
        # may be inside a logging call already.
        name = signal.Signals(signum).name
        os.write(2, f"\neffnet: {name} received: stopping at the next safe point and saving the position "
                    f"(Ctrl-C again stops at once)\n".encode())

    def __enter__(self) -> StopSignals:
        self._pid = os.getpid()
        if threading.current_thread() is threading.main_thread():
            for s in STOP_SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        for s, previous in self._previous.items():
            # None: a handler not installed from Python; the default action is the closest.
            signal.signal(s, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()
