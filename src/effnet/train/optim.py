"""Optimiser, learning-rate schedule, weight-decay groups and weight EMA of the EfficientNet
recipe (EfficientNet section 5.2; EfficientNetV2 section 5.1; official TF code), written out."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable

import torch
from torch import nn


class RMSpropTF(torch.optim.Optimizer):
    """RMSProp as TensorFlow 1 computes it (the papers' optimiser: decay 0.9, momentum 0.9, eps 1e-3).

    Per parameter, with gradient ``g`` (plus coupled L2 weight decay ``wd * p``, as the TF code
    adds ``wd * l2`` to the loss)::

        ms  = rho * ms + (1 - rho) * g**2          # ms starts at 1, not 0 (TF1 RMSPropOptimizer)
        mom = momentum * mom + lr * g / sqrt(ms + eps)
        p   = p - mom

    Two differences from ``torch.optim.RMSprop``: epsilon sits *inside* the square root
    (torch: ``sqrt(ms) + eps``), which matters with the recipe's large eps 1e-3; and the learning
    rate multiplies the gradient before it enters the momentum buffer, so a changing lr does not
    rescale the momentum already accumulated.
    """

    def __init__(
        self, params: Iterable, lr: float = 0.016, rho: float = 0.9, momentum: float = 0.9,
        eps: float = 1e-3, weight_decay: float = 0.0,
    ) -> None:
        if lr < 0 or not 0 <= rho < 1 or momentum < 0 or eps <= 0 or weight_decay < 0:
            raise ValueError(
                f"RMSpropTF: expected lr >= 0, 0 <= rho < 1, momentum >= 0, eps > 0, weight_decay >= 0; "
                f"got lr={lr}, rho={rho}, momentum={momentum}, eps={eps}, weight_decay={weight_decay}"
            )
        super().__init__(params, dict(lr=lr, rho=rho, momentum=momentum, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, rho, momentum, eps, wd = (group[k] for k in ("lr", "rho", "momentum", "eps", "weight_decay"))
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad.float()
                if wd:
                    g = g.add(p.float(), alpha=wd)
                state = self.state[p]
                if not state:
                    state["ms"] = torch.ones_like(g)
                    state["mom"] = torch.zeros_like(g)
                ms, mom = state["ms"], state["mom"]
                ms.mul_(rho).addcmul_(g, g, value=1 - rho)
                update = g / (ms + eps).sqrt()
                if momentum > 0:
                    mom.mul_(momentum).add_(update, alpha=lr)
                    p.sub_(mom.to(p.dtype))
                else:
                    p.sub_((update * lr).to(p.dtype))
        return loss


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: weight decay on conv/linear weights only, none on BatchNorm and biases
    (1-D parameters). The official V1 code excludes only BatchNorm variables from its L2 term;
    leaving the few SE/classifier biases undecayed too is the common PyTorch practice (timm)
    and what the issue asks for."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def scaled_lr(lr_per_256: float, batch_size: int) -> float:
    """Linear scaling rule: the recipe's lr is per 256 images (0.016 x 4096/256 = 0.256)."""
    return lr_per_256 * batch_size / 256


def lr_at(
    step: int, steps_per_epoch: int, peak: float, *, warmup_epochs: float = 5.0, schedule: str = "exponential",
    decay_rate: float = 0.97, decay_epochs: float = 2.4, total_epochs: float = 350.0, min_lr: float = 0.0,
) -> float:
    """Learning rate at optimiser step ``step`` (0-based).

    Warm-up: linear from 0 to ``peak`` over ``warmup_epochs``. After it:

    - ``"exponential"``: ``peak * decay_rate ** floor(step / (decay_epochs * steps_per_epoch))``
      -- x0.97 every 2.4 epochs, counted from step 0 as the official code's staircase
      ``exponential_decay`` does (the warm-up only overrides the first epochs);
    - ``"cosine"``: ``peak * 0.5 * (1 + cos(pi * step / total_steps))`` (V2 transfer recipe);
    - ``"constant"``: ``peak``.
    """
    warmup = warmup_epochs * steps_per_epoch
    if step < warmup:
        return peak * step / warmup
    if schedule == "exponential":
        lr = peak * decay_rate ** math.floor(step / (decay_epochs * steps_per_epoch))
    elif schedule == "cosine":
        total = max(total_epochs * steps_per_epoch, 1)
        lr = peak * 0.5 * (1 + math.cos(math.pi * min(step / total, 1.0)))
    elif schedule == "constant":
        lr = peak
    else:
        raise ValueError(f"lr schedule: expected 'exponential', 'cosine' or 'constant', got {schedule!r}")
    return max(lr, min_lr)


class ModelEMA:
    """Exponential moving average of the weights, the model that is evaluated and saved
    (official code: decay 0.9999; ``ema = decay * ema + (1 - decay) * w`` after every step).

    Early on the decay is capped at ``(1 + n) / (10 + n)`` after ``n`` updates (as TF's
    ``ExponentialMovingAverage(num_updates=...)`` does), so short runs are not dominated by the
    random initialisation.

    ``buffers`` says what happens to the BatchNorm running statistics:

    - ``"average"`` (default, the official behaviour): floating-point buffers (``running_mean``,
      ``running_var``) are averaged with the same decay as the weights. The official code's
      ``ExponentialMovingAverage`` covers ``utils.get_ema_vars()`` = the trainable variables plus
      every ``moving_mean``/``moving_variance`` (tensorflow/tpu, models/official/efficientnet/
      utils.py), so the EMA model's statistics describe the averaged weights' activations
      rather than the last step's.
    - ``"copy"``: buffers are copied from the live model (timm's ``ModelEmaV2`` behaviour).

    Integer buffers (``num_batches_tracked``) are a counter, not an estimate: always copied.
    """

    BUFFER_MODES = ("average", "copy")

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = True,
                 buffers: str = "average") -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay: expected a value in [0, 1), got {decay}")
        if buffers not in self.BUFFER_MODES:
            raise ValueError(f"EMA buffers: expected 'average' or 'copy', got {buffers!r}")
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay, self.warmup, self.buffers, self.updates = decay, warmup, buffers, 0

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        self.updates += 1
        # Walk the two modules side by side (same structure: the EMA is a deep copy) instead of
        # building two state dicts every step; lerp_ is ema + (1 - d) * (w - ema).
        ema_params, params = list(self.module.parameters()), [p.detach() for p in model.parameters()]
        averaged, sources = ema_params, [p.to(e.dtype) for e, p in zip(ema_params, params)]
        for e, b in zip(self.module.buffers(), model.buffers()):
            if self.buffers == "average" and e.is_floating_point():
                averaged.append(e)
                sources.append(b.to(e.dtype))
            else:
                e.copy_(b)
        if averaged:
            torch._foreach_lerp_(averaged, sources, 1.0 - d)

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
