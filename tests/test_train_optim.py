"""The recipe's pieces against hand-computed values: schedule, RMSProp (TF form), EMA,
weight-decay groups, progressive ramps."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from effnet.data.progressive import V2_PRESETS, ProgressiveSpec, Range, Stage, plan, stage_at
from effnet.registry import get_spec
from effnet.train.model import ModelEMA, RMSpropTF, lr_at, param_groups, scaled_lr


def test_linear_lr_scaling():
    assert scaled_lr(0.016, 4096) == pytest.approx(0.256)  # EfficientNet: 0.256 at batch 4096
    assert scaled_lr(0.016, 256) == pytest.approx(0.016)


def test_warmup_then_decay_every_2_4_epochs():
    spe, peak = 10, 1.0  # 10 steps per epoch
    kw = dict(warmup_epochs=5, decay_rate=0.97, decay_epochs=2.4)
    assert lr_at(0, spe, peak, **kw) == 0.0
    assert lr_at(25, spe, peak, **kw) == pytest.approx(0.5)  # half way through 50 warm-up steps
    # After warm-up the staircase counts from step 0 (official exponential_decay): step 50 is
    # floor(50 / 24) = 2 decays in.
    assert lr_at(50, spe, peak, **kw) == pytest.approx(0.97**2)
    assert lr_at(71, spe, peak, **kw) == pytest.approx(0.97**2)
    assert lr_at(72, spe, peak, **kw) == pytest.approx(0.97**3)  # 3 * 2.4 epochs = 72 steps
    assert lr_at(240, spe, peak, **kw) == pytest.approx(0.97**10)


def test_cosine_and_constant():
    assert lr_at(0, 10, 1.0, warmup_epochs=0, schedule="cosine", total_epochs=10) == pytest.approx(1.0)
    assert lr_at(50, 10, 1.0, warmup_epochs=0, schedule="cosine", total_epochs=10) == pytest.approx(0.5)
    assert lr_at(100, 10, 1.0, warmup_epochs=0, schedule="cosine", total_epochs=10) == pytest.approx(0.0)
    assert lr_at(7, 10, 0.3, warmup_epochs=0, schedule="constant") == 0.3
    with pytest.raises(ValueError, match="schedule"):
        lr_at(7, 10, 0.3, warmup_epochs=0, schedule="linear")


def test_rmsprop_tf_matches_hand_computed_steps():
    p = nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = RMSpropTF([p], lr=0.1, rho=0.9, momentum=0.9, eps=1e-3, weight_decay=0.0)
    ms, mom, w = [1.0, 1.0], [0.0, 0.0], [1.0, -2.0]
    for grads in ([0.5, -1.0], [0.2, 0.4]):
        p.grad = torch.tensor(grads)
        opt.step()
        for i, g in enumerate(grads):
            ms[i] = 0.9 * ms[i] + 0.1 * g * g  # starts at 1 (TF1)
            mom[i] = 0.9 * mom[i] + 0.1 * g / math.sqrt(ms[i] + 1e-3)  # eps inside the root
            w[i] -= mom[i]
        assert p.detach().tolist() == pytest.approx(w, rel=1e-6)


def _steps(opt: torch.optim.Optimizer, p: nn.Parameter, grads) -> list[list[float]]:
    """Apply ``grads`` one step each; the parameter after every step."""
    after = []
    for g in grads:
        p.grad = torch.tensor(g)
        opt.step()
        after.append(p.detach().tolist())
    return after


def test_rmsprop_tf_against_torch_rmsprop():
    """torch.optim.RMSprop is the reference for the algorithm; RMSpropTF differs from it only in
    TF1's two details (mean square started at 1, eps inside the square root)."""
    grads = ([0.5, -1.0], [0.2, 0.4])
    kw = dict(lr=0.1, momentum=0.9)
    # 1. With torch's mean square started at 1 and a negligible eps, the two agree step for step.
    a, b = nn.Parameter(torch.tensor([1.0, -2.0])), nn.Parameter(torch.tensor([1.0, -2.0]))
    ref = torch.optim.RMSprop([b], alpha=0.9, eps=1e-12, **kw)
    ref.state[b] = {"step": torch.tensor(0.0), "square_avg": torch.ones_like(b),
                    "momentum_buffer": torch.zeros_like(b)}
    assert _steps(RMSpropTF([a], rho=0.9, eps=1e-12, **kw), a, grads) == [
        pytest.approx(w, rel=1e-6) for w in _steps(ref, b, grads)]
    # 2. With the recipe's eps 1e-3 and each optimiser's own start, against the two forms by hand.
    a, b = nn.Parameter(torch.tensor([1.0, -2.0])), nn.Parameter(torch.tensor([1.0, -2.0]))
    tf_steps = _steps(RMSpropTF([a], rho=0.9, eps=1e-3, **kw), a, grads)
    torch_steps = _steps(torch.optim.RMSprop([b], alpha=0.9, eps=1e-3, **kw), b, grads)
    for form, got in (("tf", tf_steps), ("torch", torch_steps)):
        ms, mom, w = [1.0 if form == "tf" else 0.0] * 2, [0.0, 0.0], [1.0, -2.0]
        for step, g in enumerate(grads):
            for i in range(2):
                ms[i] = 0.9 * ms[i] + 0.1 * g[i] ** 2
                denom = math.sqrt(ms[i] + 1e-3) if form == "tf" else math.sqrt(ms[i]) + 1e-3
                mom[i] = 0.9 * mom[i] + g[i] / denom
                w[i] -= 0.1 * mom[i]  # constant lr: lr inside (TF) or outside (torch) the buffer agree
            assert got[step] == pytest.approx(w, rel=1e-6), (form, step)
    # torch's first step is ~lr * sqrt(10) per coordinate (ms from 0), TF's ~lr * g (ms from 1).
    assert abs(torch_steps[0][0] - 1.0) > 2 * abs(tf_steps[0][0] - 1.0)


def test_rmsprop_tf_weight_decay_is_coupled():
    p = nn.Parameter(torch.tensor([2.0]))
    p.grad = torch.tensor([0.0])
    RMSpropTF([p], lr=1.0, momentum=0.0, eps=1e-3, weight_decay=0.5).step()
    g = 0.5 * 2.0
    assert p.item() == pytest.approx(2.0 - g / math.sqrt(0.9 + 0.1 * g * g + 1e-3), rel=1e-6)


def test_weight_decay_groups_exclude_batchnorm_and_bias():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=True), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    decay, no_decay = param_groups(model, 1e-5)
    assert decay["weight_decay"] == 1e-5 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(model[0].weight), id(model[3].weight)}
    assert {id(p) for p in no_decay["params"]} == {
        id(model[0].bias), id(model[1].weight), id(model[1].bias), id(model[3].bias)}


def test_ema_hand_computed():
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = ModelEMA(model, decay=0.5, warmup=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)
    assert ema.module.weight.item() == pytest.approx(0.5)
    ema.update(model)
    assert ema.module.weight.item() == pytest.approx(0.75)


def _bn_after_two_updates(**ema_kw) -> tuple[ModelEMA, nn.BatchNorm1d]:
    """A BatchNorm EMA (decay 0.5, no warm-up) updated twice with known live statistics.
    The EMA starts as the fresh layer: weight 1, running mean 0, var 1, 0 batches tracked."""
    live = nn.BatchNorm1d(2)
    ema = ModelEMA(live, decay=0.5, warmup=False, **ema_kw)
    for weight, mean, var, batches in (([3.0, 3.0], [2.0, 4.0], [3.0, 5.0], 7),
                                       ([1.0, 5.0], [4.0, 0.0], [1.0, 1.0], 9)):
        with torch.no_grad():
            live.weight.copy_(torch.tensor(weight))
            live.running_mean.copy_(torch.tensor(mean))
            live.running_var.copy_(torch.tensor(var))
            live.num_batches_tracked.fill_(batches)
        ema.update(live)
    return ema, live


def test_ema_averages_batchnorm_statistics_by_default():
    """The official code's EMA covers BN moving_mean/moving_variance (tensorflow/tpu efficientnet
    utils.get_ema_vars), so by default the statistics are averaged like the weights."""
    ema, _ = _bn_after_two_updates()
    m = ema.module
    # weight: 1 -> 0.5 * 1 + 0.5 * 3 = 2 -> 0.5 * 2 + 0.5 * [1, 5] = [1.5, 3.5]
    assert m.weight.tolist() == pytest.approx([1.5, 3.5])
    # mean: 0 -> [1, 2] -> 0.5 * [1, 2] + 0.5 * [4, 0] = [2.5, 1]
    assert m.running_mean.tolist() == pytest.approx([2.5, 1.0])
    # var: 1 -> 0.5 + 0.5 * [3, 5] = [2, 3] -> 0.5 * [2, 3] + 0.5 * [1, 1] = [1.5, 2]
    assert m.running_var.tolist() == pytest.approx([1.5, 2.0])
    assert m.num_batches_tracked.item() == 9 and m.num_batches_tracked.dtype == torch.long  # a counter: copied


def test_ema_can_copy_batchnorm_statistics():
    ema, live = _bn_after_two_updates(buffers="copy")
    assert ema.module.weight.tolist() == pytest.approx([1.5, 3.5])  # weights still averaged
    assert ema.module.running_mean.tolist() == [4.0, 0.0]
    assert ema.module.running_var.tolist() == [1.0, 1.0]
    assert ema.module.num_batches_tracked.item() == 9
    with pytest.raises(ValueError, match="buffers"):
        ModelEMA(live, buffers="mean")


def test_ema_warmup_caps_decay_and_state_round_trips():
    model = nn.BatchNorm1d(2)
    ema = ModelEMA(model, decay=0.9999)
    assert ema.current_decay() == pytest.approx(1 / 10)  # (1 + 0) / (10 + 0)
    model.running_mean.fill_(3.0)
    ema.update(model)
    assert ema.current_decay() == pytest.approx(2 / 11)
    assert ema.module.running_mean.tolist() == pytest.approx([0.9 * 3.0] * 2)  # 0.1 * 0 + 0.9 * 3
    other = ModelEMA(model)
    other.load_state_dict(ema.state_dict())
    assert other.updates == 1 and torch.equal(other.module.running_mean, ema.module.running_mean)


B0 = get_spec("efficientnet_b0")  # trains and is evaluated at 224 px


def values(stages):
    return [(s.image_size, s.dropout, s.randaugment, s.mixup) for s in stages]


def test_progressive_ramps_linear():
    spec = ProgressiveSpec(3, Range(32, 64), Range(0.1, 0.3), Range(5, 15), Range(0.0, 0.2))
    assert values(plan(spec, 3, B0)) == [(32, pytest.approx(0.1), pytest.approx(5), pytest.approx(0.0)),
                                         (48, pytest.approx(0.2), pytest.approx(10), pytest.approx(0.1)),
                                         (64, pytest.approx(0.3), pytest.approx(15), pytest.approx(0.2))]


def test_progressive_official_sizes_v2_s():
    spec = ProgressiveSpec(**{**V2_PRESETS["efficientnetv2_s"].__dict__, "size_rule": "official"})
    assert [s.image_size for s in plan(spec, 4, B0)] == [171, 214, 257, 300]  # docs/paper.md section 8
    assert [round(s.mixup, 4) for s in plan(V2_PRESETS["efficientnetv2_m"], 4, B0)] == [0.0, 0.0667, 0.1333, 0.2]
    assert [s.randaugment for s in plan(V2_PRESETS["efficientnetv2_l"], 4, B0)][::3] == [5, 25]


def test_progressive_ranges_left_out_keep_the_recipes_values():
    stages = plan(ProgressiveSpec(2, Range(32, 48), None, None, None), 2, B0, randaugment=7.0, mixup=0.3)
    assert values(stages) == [(32, None, 7.0, 0.3), (48, None, 7.0, 0.3)]  # None dropout: the model's own


def test_one_stage_without_progressive_learning():
    assert plan(None, 5, B0) == [Stage(0, 0, 224, 224, None, 0.0, 0.0)]  # the spec's own size
    assert plan(None, 5, B0, image_size=64, randaugment=9.0, mixup=0.2) == [Stage(0, 0, 64, 64, None, 9.0, 0.2)]
    assert plan(None, 5, B0, image_size=200, eval_size=256)[0].eval_size == 256  # --eval-size wins


def test_each_stage_is_evaluated_at_the_specs_train_eval_ratio():
    """V2-S grows 128 -> 300 px (V2 Table 6) and is evaluated at 384 (official README): each
    stage at its size x 384 / 300, by hand: 128 -> 163.8, 185 -> 236.8, 242 -> 309.8."""
    v2s = get_spec("efficientnetv2_s")
    stages = plan(V2_PRESETS["efficientnetv2_s"], 8, v2s)
    assert [(s.image_size, s.eval_size) for s in stages] == [(128, 164), (185, 237), (242, 310), (300, 384)]
    # With --eval-size, the last stage is evaluated at it and the earlier ones in proportion.
    assert [s.eval_size for s in plan(ProgressiveSpec(2, Range(32, 64)), 2, B0, eval_size=80)] == [40, 80]


def test_progressive_plan_splits_epochs():
    stages = plan(ProgressiveSpec(4, Range(128, 300)), 350, B0)
    assert [s.first_epoch for s in stages] == [0, 88, 176, 263]  # ~87 epochs per stage
    assert stage_at(stages, 87).index == 0 and stage_at(stages, 88).index == 1
    assert stage_at(stages, 349).image_size == 300
    assert len(plan(ProgressiveSpec(4), 2, B0)) == 2  # never more stages than epochs
    spec = ProgressiveSpec(3, Range(32, 64), size_divisor=8)
    assert [s.image_size for s in plan(spec, 6, B0)] == [32, 48, 64]
