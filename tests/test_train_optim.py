"""The recipe's pieces against hand-computed values: schedule, RMSProp (TF form), EMA,
weight-decay groups, progressive ramps."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from effnet.data.progressive import V2_PRESETS, ProgressiveSpec, Range, plan, stage_at, stage_values
from effnet.train.optim import ModelEMA, RMSpropTF, lr_at, param_groups, scaled_lr


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


def test_rmsprop_tf_differs_from_torch_form():
    """With eps outside the root (torch.optim.RMSprop) the first step is not the same."""
    a, b = nn.Parameter(torch.tensor([0.01])), nn.Parameter(torch.tensor([0.01]))
    for p in (a, b):
        p.grad = torch.tensor([1e-3])
    RMSpropTF([a], lr=1.0, momentum=0.0, eps=1e-3).step()
    expected = 0.01 - 1e-3 / math.sqrt(0.9 + 0.1 * 1e-6 + 1e-3)
    assert a.item() == pytest.approx(expected, rel=1e-6)


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


def test_ema_warmup_caps_decay_and_copies_buffers():
    model = nn.BatchNorm1d(2)
    ema = ModelEMA(model, decay=0.9999)
    assert ema.current_decay() == pytest.approx(1 / 10)  # (1 + 0) / (10 + 0)
    model.running_mean.fill_(3.0)
    ema.update(model)
    assert ema.current_decay() == pytest.approx(2 / 11)
    assert ema.module.running_mean.tolist() == [3.0, 3.0]
    state = ema.state_dict()
    other = ModelEMA(model)
    other.load_state_dict(state)
    assert other.updates == 1


def test_progressive_ramps_linear():
    spec = ProgressiveSpec(3, Range(32, 64), Range(0.1, 0.3), Range(5, 15), Range(0.0, 0.2))
    assert stage_values(spec, 0) == (32, pytest.approx(0.1), pytest.approx(5), pytest.approx(0.0))
    assert stage_values(spec, 1) == (48, pytest.approx(0.2), pytest.approx(10), pytest.approx(0.1))
    assert stage_values(spec, 2) == (64, pytest.approx(0.3), pytest.approx(15), pytest.approx(0.2))


def test_progressive_official_sizes_v2_s():
    spec = ProgressiveSpec(**{**V2_PRESETS["efficientnetv2_s"].__dict__, "size_rule": "official"})
    assert [stage_values(spec, i)[0] for i in range(4)] == [171, 214, 257, 300]  # PAPER.md section 8
    paper = V2_PRESETS["efficientnetv2_m"]
    assert [round(stage_values(paper, i)[3], 4) for i in range(4)] == [0.0, 0.0667, 0.1333, 0.2]
    assert [stage_values(V2_PRESETS["efficientnetv2_l"], i)[2] for i in (0, 3)] == [5, 25]


def test_progressive_plan_splits_epochs():
    stages = plan(ProgressiveSpec(4, Range(128, 300)), 350)
    assert [s.first_epoch for s in stages] == [0, 88, 176, 263]  # ~87 epochs per stage
    assert stage_at(stages, 87).index == 0 and stage_at(stages, 88).index == 1
    assert stage_at(stages, 349).image_size == 300
    assert len(plan(ProgressiveSpec(4), 2)) == 2  # never more stages than epochs
    spec = ProgressiveSpec(3, Range(32, 64), size_divisor=8)
    assert [s.image_size for s in plan(spec, 6)] == [32, 48, 64]
