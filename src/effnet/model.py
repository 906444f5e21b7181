"""spec -> nn.Module: the one assembler (EfficientNet V1/V2 and the ResNet / MobileNet
baselines), feature maps and classifier reset."""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from effnet.layers import BLOCKS, ConvBnAct
from effnet.layers.activations import lean_ops_active, recompute_activations
from effnet.layers.buffers import BufferPool
from effnet.specs.base import MIN_INPUT_SIZE, ModelSpec

__all__ = ["MIN_INPUT_SIZE", "ConvNet", "EfficientNet", "build", "check_input"]


class ConvNet(nn.Module):
    """The convolutional network a :class:`~effnet.specs.ModelSpec` describes: EfficientNet V1/V2
    (and Lite, EdgeTPU, TinyNet), and the ResNet / MobileNet baselines written in the same spec
    language (``effnet.specs.baselines``). Named for what it builds, not for one family of it.

    Layout: ``stem`` (kxk stride-2 conv-BN-act) -> ``stem_pool`` (3x3 stride-2 max pool when
    ``spec.stem_pool``, else an identity) -> ``stages[i][j]`` (the blocks of
    ``effnet.layers.BLOCKS``: MBConv, Fused-MBConv, ResNet basic / bottleneck, depthwise-separable)
    -> ``head`` (1x1 conv-BN-act; an identity when ``spec.head_channels == 0``) -> global average
    pool -> ``dropout`` -> ``classifier`` (an identity when ``spec.num_classes == 0``: the output
    is then the pooled features, ``num_features`` wide).

    The spec is taken as it is: changes (classes, dropout ...) are made to the spec first, in
    one place, :func:`effnet.create_model` or ``spec.replace(...)``.

    :meth:`set_grad_checkpointing` trades compute for memory in training (each block's
    activations are recomputed during backward instead of kept).
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        if not isinstance(spec, ModelSpec):
            raise TypeError(f"ConvNet: expected a ModelSpec, got {type(spec).__name__}")
        self.spec = spec
        norm = dict(bn_eps=spec.bn_eps, bn_momentum=spec.bn_momentum)

        self.stem = ConvBnAct(spec.in_channels, spec.stem_channels, spec.stem_kernel, 2,
                              act=spec.activation, padding=spec.padding, **norm)
        # ResNet's "conv2_x" starts with a 3x3 stride-2 max pool, padding 1 (ResNet Table 1;
        # torchvision resnet.py and Keras applications resnet.py pad it by 1 on every side). Its
        # input follows a ReLU (>= 0), so PyTorch's -inf padding acts as Keras's zero padding.
        self.stem_pool = nn.MaxPool2d(3, 2, padding=1) if spec.stem_pool else nn.Identity()
        # Stochastic depth: the drop rate grows linearly with the *global* block index i, as
        # drop_path_rate * i / num_blocks: 0 at the first block, just under drop_path_rate at the
        # last (EfficientNet section 5.2, survival 0.8; the official code and torchvision).
        total, index = spec.num_blocks, 0
        in_ch = spec.stem_channels
        stages: list[nn.Sequential] = []
        strides: list[int] = []  # a local first: TorchScript rejects annotated attributes in __init__
        stride = 4 if spec.stem_pool else 2
        for stage in spec.stages:
            blocks = []
            # Only the MBConv ops take ``skip`` (StageSpec refuses skip=False elsewhere).
            skip = {} if stage.skip else {"skip": False}
            for j in range(stage.repeats):
                blocks.append(BLOCKS[stage.op](
                    in_ch, stage.channels, kernel=stage.kernel, stride=stage.stride if j == 0 else 1,
                    expand=stage.expand, se=stage.se, drop_path=spec.drop_path_rate * index / total,
                    act=spec.activation, padding=spec.padding, **skip, **norm,
                ))
                in_ch = stage.channels
                index += 1
            stride *= stage.stride
            strides.append(stride)
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self._strides = strides
        # head_channels 0: no head conv (ResNet, MobileNetV1), the last stage is pooled directly.
        self.head = (ConvBnAct(in_ch, spec.head_channels, 1, act=spec.activation, **norm)
                     if spec.head_channels else nn.Identity())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(spec.dropout)
        self.num_features = spec.num_features
        self.classifier = self._new_classifier(spec.num_classes)
        self.feature_info = self._feature_info()
        self.grad_checkpointing = False
        # One pool of full-size CPU training buffers for every conv-BN-act layer of this model
        # (effnet.layers.buffers: their pages are faulted in once, not every step).
        self.buffer_pool = BufferPool()
        for m in self.modules():
            if isinstance(m, ConvBnAct):
                m.buffer_pool = self.buffer_pool
        self._init_weights()
        if spec.extra.get(ZERO_INIT_LAST, False):
            zero_init_last(self)

    # --- construction helpers ------------------------------------------------------------
    def _new_classifier(self, num_classes: int) -> nn.Module:
        # 0 classes: no classifier, the pooled features are the output (timm's convention).
        return nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def _init_weights(self) -> None:
        # Official TF initialisers: conv He-normal on fan-out; dense uniform(+-1/sqrt(out)).
        # fan-out counts one group's outputs (k * k * out / groups): for a depthwise conv TF's
        # kernel is (k, k, C, 1), so fan-out is k * k. PyTorch's own fan-out (out * k * k) would
        # shrink depthwise weights by sqrt(C) and make activations vanish through the stages.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def _feature_info(self) -> list[dict[str, int | str]]:
        """For each output stride 2..32, the last module producing it: ``module`` is its name
        (``stem``, ``stem_pool``, ``stages.i``) and ``stage`` its stage index (-1 = the stem)."""
        stem = {"stage": -1, "channels": self.spec.stem_channels}
        info: dict[int, dict[str, int | str]] = {2: {"module": "stem", **stem}}
        if self.spec.stem_pool:
            info[4] = {"module": "stem_pool", **stem}
        for i, (s, stage) in enumerate(zip(self._strides, self.spec.stages)):
            info[s] = {"module": f"stages.{i}", "stage": i, "channels": stage.channels}
        return [{"stride": s, **info[s]} for s in (2, 4, 8, 16, 32) if s in info]

    # --- forward ------------------------------------------------------------------------
    def train(self, mode: bool = True) -> ConvNet:
        """``nn.Module.train``; leaving training also frees the training buffers' pool."""
        super().train(mode)
        if not mode and getattr(self, "buffer_pool", None) is not None:
            self.buffer_pool.clear()
        return self

    @torch.jit.unused
    def _step_begins(self) -> None:
        # A compiled graph runs the plain ops, which never ask the pool (and dynamo cannot trace
        # its lock: torch.compile(fullgraph=True) would refuse the model).
        if torch.compiler.is_compiling():
            return
        # A forward without grad (in training mode: a teacher's or pseudo-label pass) asks the pool
        # for nothing, so it begins no step (else the next would drop every shape as unused).
        if self.training and torch.is_grad_enabled() and getattr(self, "buffer_pool", None) is not None:
            self.buffer_pool.next_step()  # (getattr: a module pickled before has no pool)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C_in, H, W) -> (N, num_features, H/32, W/32), before pooling."""
        if not torch.jit.is_scripting():  # the messages are Python (f-strings of shapes)
            check_input(self, x)
            self._step_begins()
        if not torch.jit.is_scripting():  # noqa: SIM102 (scripting skips only a block guarded alone)
            if self._recomputing_now():
                return self._features_recomputing(x)
        return self._features(x)

    @torch.jit.unused
    def _recomputing_now(self) -> bool:
        # Checkpointed blocks save almost nothing already (their own hooks would win inside them).
        return self.training and lean_ops_active() and not self._checkpointing_now()

    @torch.jit.unused
    def _features_recomputing(self, x: torch.Tensor) -> torch.Tensor:
        # Activations that the next op saves are kept as the BN outputs they come from
        # (effnet.layers.activations.recompute_activations): one full-size tensor fewer per
        # MBConv's expansion and depthwise conv.
        with recompute_activations():
            return self._features(x)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_pool(self.stem(x))
        if not torch.jit.is_scripting():  # noqa: SIM102 (scripting skips only a block guarded alone)
            if self._checkpointing_now():
                for stage in self.stages:
                    for block in stage:
                        x = _checkpoint_block(block, x)
                return self.head(x)
        for stage in self.stages:
            x = stage(x)
        return self.head(x)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing (timm's name for it): in training with grad enabled, each
        block of the stages keeps only its input for the backward pass and recomputes its
        forward during backward (``torch.utils.checkpoint``, non-reentrant). Saves most of the
        activation memory for about one extra forward pass per step; the gradients, the
        BatchNorm running statistics and the stochastic-depth draws are those of the plain
        model (``tests/test_memory_saving.py``). Evaluation is unaffected."""
        if not isinstance(enable, bool):
            raise ValueError(f"set_grad_checkpointing: expected True or False, got {enable!r}")
        self.grad_checkpointing = enable

    @torch.jit.unused
    def _checkpointing_now(self) -> bool:
        # Tracers and exporters record the plain graph (checkpoint only matters for backward).
        # getattr: a whole module pickled before this attribute existed has none.
        return (getattr(self, "grad_checkpointing", False) and self.training and torch.is_grad_enabled()
                and not torch.jit.is_tracing() and not torch.onnx.is_in_onnx_export())

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.pool(x).flatten(1)  # (N, num_features)
        if pre_logits:
            return x
        return self.classifier(self.dropout(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """One feature map per output stride 2, 4, 8, 16, 32 (for detection/segmentation).

        Each is the output of the last module at that stride (``feature_info`` names it and its
        channels): for a ResNet stride 2 is the stem conv, before the max pool.
        """
        check_input(self, x)
        self._step_begins()
        wanted = {f["module"] for f in self.feature_info}
        out: list[torch.Tensor] = []
        modules = [("stem", self.stem), ("stem_pool", self.stem_pool),
                   *((f"stages.{i}", stage) for i, stage in enumerate(self.stages))]
        for name, module in modules:
            x = module(x)
            if name in wanted:
                out.append(x)
        return out

    # --- heads ----------------------------------------------------------------------------
    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a freshly initialised one for ``num_classes`` outputs
        (``num_classes=0`` leaves an identity, so ``forward`` returns pooled features).

        The spec records the new count, 0 included, so that a model saved afterwards is
        rebuilt with the same head (no classifier tensors expected for 0)."""
        if not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes: expected a non-negative integer, got {num_classes!r}")
        self.classifier = self._new_classifier(num_classes)
        if isinstance(self.classifier, nn.Linear):
            # Official TF dense initialiser, as in _init_weights.
            bound = 1.0 / math.sqrt(num_classes)
            nn.init.uniform_(self.classifier.weight, -bound, bound)
            nn.init.zeros_(self.classifier.bias)
        self.spec = self.spec.replace(num_classes=num_classes)

    def set_dropout(self, p: float) -> None:
        """Change the classifier dropout (progressive learning grows it during training)."""
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout: expected a rate in [0, 1), got {p}")
        self.dropout.p = p


class _RunningStatsKept:
    """Restore the BatchNorm running statistics of ``module`` on exit: the recomputation of a
    checkpointed block runs its forward a second time in training mode, which would update
    them twice per step (and count the batch twice). A class, not a generator: the checkpoint
    enters the same object at every recomputation (a second backward with ``retain_graph``)."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.kept: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __enter__(self) -> None:
        self.kept = [(buf, buf.clone()) for m in self.module.modules()
                     if isinstance(m, nn.modules.batchnorm._BatchNorm)
                     for buf in (m.running_mean, m.running_var, m.num_batches_tracked) if buf is not None]

    def __exit__(self, *exc: object) -> None:
        with torch.no_grad():
            for buf, value in self.kept:
                buf.copy_(value)
        self.kept = []


def _checkpoint_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    from torch.utils.checkpoint import checkpoint

    # RNG state is preserved by default, so DropPath draws the same mask when recomputed.
    if torch.compiler.is_compiling():
        # The compiled backward recomputes values only, without replaying the statistics update
        # (and dynamo refuses a custom context_fn).
        return checkpoint(block, x, use_reentrant=False)
    return checkpoint(block, x, use_reentrant=False,
                      context_fn=lambda: (contextlib.nullcontext(), _RunningStatsKept(block)))


#: ``ModelSpec.extra`` key: start every residual branch at zero (:func:`zero_init_last`).
ZERO_INIT_LAST = "zero_init_last"


def zero_init_last(model: nn.Module) -> int:
    """Set the scale (gamma) of the last BatchNorm of every residual branch to zero, so that each
    residual block starts as the identity (Goyal et al. 2017, "Accurate, Large Minibatch SGD",
    section 5.1; timm's ``zero_init_last``). Returns how many branches were zeroed.

    The official EfficientNet code does not do this, so the registered models keep gamma = 1;
    effnet's short training trials (the scaling lab, the architecture search) switch it on with
    ``spec.extra["zero_init_last"] = True``. Measured on digits (3 epochs, 32 px): B0 at half
    depth scaled 4x in FLOPs by depth reached 20% top-1 with gamma = 1 and 94% with this, the
    unscaled base 91% either way; so a short trial without it penalises depth for how it
    starts, not for what depth buys."""
    count = 0
    for stage in getattr(model, "stages", []):
        for block in stage:
            # MBConv/Fused-MBConv add their input only when the shape is kept; ResNet blocks always
            # add a shortcut (identity or projection).
            if not (getattr(block, "has_skip", False) or hasattr(block, "shortcut")):
                continue
            norms = [m for name, m in block.named_modules()
                     if isinstance(m, nn.BatchNorm2d) and not name.startswith("shortcut")]
            if norms:
                nn.init.zeros_(norms[-1].weight)
                count += 1
    return count


def check_input(model: nn.Module, x: torch.Tensor) -> None:
    """Refuse an input ``model`` (a :class:`ConvNet`, or a model carrying its ``spec``, such as the
    int8 one) cannot mean, saying what to convert."""
    # What a caller most often passes by mistake (a PIL-style uint8 array, NHWC, float64 from
    # numpy, a list), each named with the conversion, instead of an error deep inside a conv.
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor of shape (N, {model.spec.in_channels}, H, W) and dtype "
                        f"float32, got {type(x).__name__}; convert with torch.as_tensor(...), and permute "
                        f"NHWC arrays with .permute(0, 3, 1, 2)")
    if not x.is_floating_point():
        raise TypeError(f"expected a float input (normalised pixels), got dtype {x.dtype}; convert uint8 "
                        f"pixels with x.float() / 255 and normalise with the model's preprocessing "
                        f"(effnet.load_model(..., include_preprocessing=True) takes 0-255 floats)")
    param = next(model.parameters(), None)
    if (param is not None and x.dtype != param.dtype and not torch.is_autocast_enabled(x.device.type)):
        raise TypeError(f"input dtype {x.dtype} differs from the model's {param.dtype} parameters; "
                        f"convert the input with x.to({param.dtype}) (or the model with model.to({x.dtype}))")
    if (x.ndim == 4 and x.shape[1] != model.spec.in_channels and x.shape[-1] == model.spec.in_channels):
        raise ValueError(f"input shape {tuple(x.shape)} looks channels-last (N, H, W, C); the model expects "
                         f"(N, {model.spec.in_channels}, H, W): permute with x.permute(0, 3, 1, 2)")
    if x.ndim != 4:
        raise ValueError(f"expected a 4-D input (N, C, H, W), got shape {tuple(x.shape)}")
    if x.shape[1] != model.spec.in_channels:
        raise ValueError(
            f"expected {model.spec.in_channels} input channels, got {x.shape[1]} "
            f"(shape {tuple(x.shape)}); convert grayscale to RGB or build with in_channels="
            f"{x.shape[1]}"
        )
    if min(x.shape[-2:]) < MIN_INPUT_SIZE:
        raise ValueError(
            f"input spatial size {tuple(x.shape[-2:])} is below the minimum of {MIN_INPUT_SIZE} "
            f"px (five stride-2 reductions); resize the input"
        )
    # NaN/inf in gives NaN out with no error: refused in evaluation (a reduction and one sync
    # per forward; training batches come from decoded images). Traced/compiled graphs skip it,
    # a data-dependent branch would not export.
    if (not model.training and not torch.jit.is_tracing() and not torch.compiler.is_compiling()
            and x.device.type != "meta" and not bool(torch.isfinite(x).all())):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"input holds {bad} NaN/inf value(s) (shape {tuple(x.shape)}); check the image "
                         f"decoding and normalisation that produced it")


#: ``EfficientNet``, the name users of other libraries reach for, is the same class (``isinstance``
#: checks agree; no saved format records the name: weight files hold tensors plus the spec as JSON).
#: Inside the package the class is ``ConvNet``: it also builds the ResNet and MobileNet baselines.
EfficientNet = ConvNet


def build(spec: ModelSpec) -> ConvNet:
    """Build the network a finished spec describes (make changes with ``spec.replace`` or
    :func:`effnet.create_model` first)."""
    return ConvNet(spec)
