import pytest
import torch
from torch import nn

import effnet
from effnet.layers import Conv2dSame, DropPath, FusedMBConv, MBConv
from effnet.profile import count_flops, count_params
from effnet.registry import get_spec

# Trainable parameters with 1000 classes (the common PyTorch ports; issue 2 acceptance).
PARAMS = {
    "efficientnet_b0": 5_288_548, "efficientnet_b1": 7_794_184, "efficientnet_b2": 9_109_994,
    "efficientnet_b3": 12_233_232, "efficientnet_b4": 19_341_616, "efficientnet_b5": 30_389_784,
    "efficientnet_b6": 43_040_704, "efficientnet_b7": 66_347_960, "efficientnetv2_s": 21_458_488,
    "efficientnetv2_m": 54_139_356, "efficientnetv2_l": 118_515_272, "efficientnetv2_xl": 208_119_808,
    "efficientnetv2_b0": 7_139_704, "efficientnetv2_b3": 14_358_406,
}
# Multiply-adds (G) at each model's own resolution.
MACS = {
    "efficientnet_b0": (0.386, 224), "efficientnet_b1": (0.687, 240), "efficientnet_b2": (0.994, 260),
    "efficientnet_b3": (1.827, 300), "efficientnet_b4": (4.394, 380), "efficientnet_b5": (10.27, 456),
    "efficientnet_b6": (19.07, 528), "efficientnet_b7": (37.75, 600), "efficientnetv2_s": (8.37, 384),
    "efficientnetv2_m": (24.58, 480), "efficientnetv2_l": (56.08, 480),
}


def _meta_model(name: str, **kw) -> effnet.EfficientNet:
    with torch.device("meta"):
        return effnet.create_model(name, **kw)


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_parameter_counts_are_exact(name):
    assert count_params(_meta_model(name)) == PARAMS[name]


@pytest.mark.parametrize("name", sorted(MACS))
def test_flops_match_the_papers(name):
    expected, res = MACS[name]
    assert get_spec(name).resolution == res
    assert count_flops(name) / 1e9 == pytest.approx(expected, rel=0.02)


@pytest.mark.parametrize("name", effnet.list_models())
def test_every_model_runs_forward_and_backward(name):
    torch.manual_seed(0)
    model = effnet.create_model(name, num_classes=7)
    # 64 px, not 32: at 32 px the stride-32 stages are 1x1, so a training-mode BatchNorm sees two
    # values per channel and its backward amplifies gradients until the 100+ blocks of V2-XL
    # overflow float32 (a property of batch statistics over 2 numbers, not of the network).
    x = torch.randn(2, 3, 64, 64)
    out = model(x)
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.stem.conv.weight.grad.abs().sum() > 0


def test_feature_maps_have_strides_2_to_32():
    model = effnet.create_model("efficientnet_b0").eval()
    x = torch.randn(1, 3, 64, 96)
    maps = model.feature_maps(x)
    assert [tuple(m.shape[-2:]) for m in maps] == [(32, 48), (16, 24), (8, 12), (4, 6), (2, 3)]
    assert [m.shape[1] for m in maps] == [f["channels"] for f in model.feature_info] == [16, 24, 40, 112, 320]
    v2 = effnet.create_model("efficientnetv2_s").eval()
    assert [m.shape[1] for m in v2.feature_maps(x)] == [24, 48, 64, 160, 256]


def test_forward_features_and_head_compose():
    model = effnet.create_model("efficientnetv2_b0", num_classes=5).eval()
    x = torch.randn(1, 3, 64, 64)
    feats = model.forward_features(x)
    assert feats.shape == (1, 1280, 2, 2)
    assert torch.allclose(model.forward_head(feats), model(x))
    assert model.forward_head(feats, pre_logits=True).shape == (1, 1280)


def test_reset_classifier():
    model = effnet.create_model("efficientnet_b0")
    model.reset_classifier(10)
    assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    model.reset_classifier(0)
    assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 1280)
    with pytest.raises(ValueError, match="num_classes"):
        model.reset_classifier(-1)


def test_overrides_dropout_drop_path_and_bn():
    model = effnet.create_model("efficientnet_b0", dropout=0.5, drop_path_rate=0.3, bn_momentum=0.1, bn_eps=1e-5)
    assert model.dropout.p == 0.5
    assert model.stem.bn.momentum == 0.1 and model.stem.bn.eps == 1e-5
    with pytest.raises(ValueError, match="unknown spec field"):
        effnet.create_model("efficientnet_b0", dropuot=0.1)


def test_stochastic_depth_grows_linearly_with_global_block_index():
    model = effnet.create_model("efficientnet_b0", drop_path_rate=0.2)
    blocks = [b for stage in model.stages for b in stage]
    n = len(blocks)
    assert n == 16
    for i, b in enumerate(blocks):
        expected = 0.2 * i / n
        if b.has_skip and expected > 0:
            assert isinstance(b.drop_path, DropPath) and b.drop_path.p == pytest.approx(expected)
        else:
            assert isinstance(b.drop_path, nn.Identity)


def test_drop_path_keeps_expectation_and_is_identity_in_eval():
    torch.manual_seed(0)
    dp = DropPath(0.25)
    x = torch.ones(20000, 1)
    y = dp.train()(x)
    assert torch.isclose(y, torch.zeros(())).logical_or(torch.isclose(y, torch.tensor(1 / 0.75))).all()
    assert y.mean().item() == pytest.approx(1.0, abs=0.03)
    assert torch.equal(dp.eval()(x), x)


def test_blocks_shapes_and_se_ratio_relative_to_input():
    mb = MBConv(24, 40, kernel=5, stride=2, expand=6, se=0.25)
    assert mb.se.reduce.out_channels == 6 and mb.se.reduce.in_channels == 144  # 0.25 * 24, not * 144
    assert mb(torch.randn(1, 24, 32, 32)).shape == (1, 40, 16, 16)
    fused = FusedMBConv(24, 24, kernel=3, stride=1, expand=1)
    assert fused.has_skip and isinstance(fused.conv_pwl, nn.Identity)
    assert FusedMBConv(24, 48, kernel=3, stride=2, expand=4)(torch.randn(1, 24, 32, 32)).shape == (1, 48, 16, 16)


@pytest.mark.parametrize("size", [224, 225, 31, 32])
@pytest.mark.parametrize("kernel", [3, 5])
def test_tf_same_padding(size, kernel):
    conv = Conv2dSame(1, 1, kernel, stride=2, bias=False)
    nn.init.ones_(conv.weight)
    x = torch.ones(1, 1, size, size)
    out = conv(x)
    assert out.shape[-1] == -(-size // 2)  # ceil(size / stride), TF "SAME"
    total = max((out.shape[-1] - 1) * 2 + kernel - size, 0)
    # TF pads the extra pixel at the bottom/right: the top-left output sees the smaller pad.
    assert out[0, 0, 0, 0].item() == (kernel - total // 2) ** 2


def test_same_padding_model_matches_symmetric_at_stride_one_only():
    torch.manual_seed(0)
    sym = effnet.create_model("efficientnet_b0").eval()
    same = effnet.create_model("efficientnet_b0", padding="same").eval()
    same.load_state_dict(sym.state_dict())
    x = torch.randn(1, 3, 64, 64)
    a, b = sym.forward_features(x), same.forward_features(x)
    assert a.shape == b.shape and ((a - b).abs().max() / a.abs().max()) > 1e-2
    assert isinstance(same.stem.conv, Conv2dSame) and not isinstance(sym.stem.conv, Conv2dSame)


def test_bad_inputs_are_refused_with_clear_messages():
    model = effnet.create_model("efficientnet_b0")
    with pytest.raises(ValueError, match="3 input channels, got 1"):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match="minimum of 32"):
        model(torch.randn(1, 3, 31, 64))
    with pytest.raises(ValueError, match="4-D"):
        model(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match=r"did you mean efficientnet_b0"):
        effnet.create_model("efficientnet-b0")
    with pytest.raises(ValueError, match="resolution"):
        effnet.create_model("efficientnet_b0", resolution=0)


def test_build_from_spec_and_in_channels():
    spec = effnet.scale(get_spec("efficientnet_b0"), width=0.5, depth=0.5, resolution=64)
    model = effnet.build(spec.replace(in_channels=1, num_classes=3))
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, 3)
