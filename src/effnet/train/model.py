"""The pipeline's fourth step, the model: the network to train (a name, a spec, or initial
weights with a new head), made ready to train (frozen backbone, SyncBatchNorm, EMA, DDP,
torch.compile), and its optimiser and learning-rate schedule.

The optimiser, schedule, weight-decay groups and weight EMA are the EfficientNet recipe's
(EfficientNet section 5.2; EfficientNetV2 section 5.1; official TF code), written out.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from effnet.model import ConvNet, build
from effnet.registry import get_spec
from effnet.scaling import scale
from effnet.specs.base import ModelSpec
from effnet.train import distributed
from effnet.train.config import TrainConfig
from effnet.weights import model_from_weights, read_weights

log = logging.getLogger(__name__)


# --- the network -------------------------------------------------------------------------------
def build_model(cfg: TrainConfig, num_classes: int, spec: ModelSpec | None = None) -> ConvNet:
    """The network to train: ``spec`` when given (a trial's candidate, or the architecture a
    resumed run recorded, whose weights come from the resume state); else, with ``weights``, the
    file's own architecture and weights, with a new head when the class count differs (the
    file's preprocessing is attached as ``model.preprocessing``); else ``cfg.spec`` (a file) or
    ``cfg.model`` (a name), times ``width``/``depth``. The head is sized for ``num_classes`` and
    the config's dropout, drop-path and BatchNorm-momentum overrides apply in every case."""
    overrides = {k: v for k, v in dict(dropout=cfg.dropout, drop_path_rate=cfg.drop_path_rate,
                                       bn_momentum=cfg.bn_momentum).items() if v is not None}
    if spec is not None:
        return build(spec.replace(num_classes=num_classes, **overrides))
    if cfg.weights:
        wf = read_weights(cfg.weights)
        log.info("initial weights %s (%s, source %s); model/width/depth options are ignored",
                 cfg.weights, wf.spec.name, wf.source or "unknown")
        model = model_from_weights(wf, what=f"weights {cfg.weights}", num_classes=num_classes, **overrides)
        if num_classes != wf.spec.num_classes:
            # A zero head starts every image at loss ln(C) (Kolesnikov et al. 2020, BiT, section 3.3).
            # The TF initialiser's +-1/sqrt(C) is made for 1000 classes: for 3 it gives logits of
            # several units from 1280 pretrained features, and the first epochs (loss 3 instead of
            # ln 3 = 1.1) are spent undoing it.
            nn.init.zeros_(model.classifier.weight)
            nn.init.zeros_(model.classifier.bias)
            log.info("new %d-class head, initialised to zero (the weights have %d classes)", num_classes,
                     wf.spec.num_classes)
        return model
    base = ModelSpec.load(cfg.spec) if cfg.spec else get_spec(cfg.model)
    if cfg.width != 1.0 or cfg.depth != 1.0:
        # Named by its multipliers only: the input size is the run's (image_size), not the spec's.
        base = scale(base, width=cfg.width, depth=cfg.depth, name=f"{base.name}_w{cfg.width:g}_d{cfg.depth:g}")
    return build(base.replace(num_classes=num_classes, **overrides))


def prepare_model(cfg: TrainConfig, d: distributed.Dist, device: torch.device,
                  model: ConvNet) -> tuple[ConvNet, ModelEMA | None, nn.Module]:
    """``(model, ema, forward)``: the network made ready to train, its weight average, and
    what a step calls."""
    if cfg.freeze_backbone:
        # Fine-tune only the classifier; the backbone (incl. its BatchNorm statistics) stays fixed.
        log.info("%s", freeze_backbone(model))
    if cfg.sync_bn and d.enabled:
        model = distributed.convert_sync_batchnorm(model, device)
    elif cfg.sync_bn:
        log.info("sync_bn ignored: a single process already normalises over the whole batch")
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.memory_saving:
        model.set_grad_checkpointing(True)
        log.info("memory saving: activation checkpointing per block (recomputed in the backward pass)")
    ema = ModelEMA(model, cfg.ema_decay, buffers=cfg.ema_buffers) if cfg.ema else None
    # ``model`` stays the plain network; ``ddp`` wraps it to average gradients across ranks
    # during backward.
    ddp = (nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
           if d.enabled else None)
    forward: nn.Module = ddp or model
    if cfg.compile:
        forward = torch.compile(forward)  # type: ignore[assignment]
    return model, ema, forward


def freeze_backbone(model: nn.Module) -> str:
    """Train only the classifier: every other parameter stops taking gradients. Returns the line
    that says what is frozen (the loop also keeps the backbone's BatchNorm statistics fixed)."""
    frozen: dict[str, int] = {}
    total = trainable = 0
    for name, p in model.named_parameters():
        keep = name.startswith("classifier.")
        p.requires_grad_(keep)
        total += p.numel()
        if keep:
            trainable += p.numel()
        else:
            top = name.split(".")[0]
            frozen[top] = frozen.get(top, 0) + p.numel()
    return (f"frozen backbone: {total - trainable:,} of {total:,} parameters frozen "
            f"({', '.join(frozen)}, with their BatchNorm statistics); training {trainable:,} in the classifier")


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """Mixed precision: bf16 where the device supports it (no loss scaling needed), fp16 on
    request (with a GradScaler); ``auto`` is off on CPU, where bf16 is rarely faster."""
    if cfg.amp == "off" or (cfg.amp == "auto" and device.type != "cuda"):
        return None
    if cfg.amp == "fp16":
        return torch.float16
    if cfg.amp == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


# --- the optimiser -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Schedule:
    """The optimiser's schedule. The linear scaling rule (lr per 256 images) applies to the
    global batch: per-process batch x processes x accumulation steps."""

    global_batch: int
    peak_lr: float
    steps_per_epoch: int

    def lr(self, cfg: TrainConfig, step: int) -> float:
        return lr_at(step, self.steps_per_epoch, self.peak_lr, warmup_epochs=cfg.warmup_epochs,
                     schedule=cfg.schedule, decay_rate=cfg.decay_rate, decay_epochs=cfg.decay_epochs,
                     total_epochs=cfg.epochs, min_lr=cfg.min_lr)


def peak_lr(cfg: TrainConfig, global_batch: int) -> float:
    """The linear scaling rule on ``global_batch``, counted as at least ``lr_batch_floor``."""
    return scaled_lr(cfg.lr_per_256, max(global_batch, cfg.lr_batch_floor))


def make_schedule(cfg: TrainConfig, d: distributed.Dist, batches_per_epoch: int) -> Schedule:
    global_batch = cfg.batch_size * d.world * cfg.accum_steps
    steps_per_epoch = max(1, batches_per_epoch // cfg.accum_steps)
    return Schedule(global_batch, peak_lr(cfg, global_batch), steps_per_epoch)


def make_optimizer(cfg: TrainConfig, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "rmsprop_tf":
        return RMSpropTF(groups, lr=lr, rho=cfg.rmsprop_rho, momentum=cfg.momentum, eps=cfg.rmsprop_eps)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=lr)


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
    leaving the few SE/classifier biases undecayed too is the common PyTorch practice (timm):
    a bias scales nothing, so decaying it only pulls the outputs' offsets towards zero."""
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
