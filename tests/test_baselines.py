"""The ResNet / MobileNet baselines: specs in the EfficientNet spec language, built by the one
assembler, checked against the reference implementations' numbers (not against effnet's)."""

import pytest
import torch
from torch import nn

import effnet
from effnet.layers import BasicBlock, Bottleneck, DepthwiseSeparable, MBConv
from effnet.profile import count_flops, count_params
from effnet.specs import BASELINES, EFFICIENTNET_B0, MOBILENET_V1, RESNET18, RESNET50, ModelSpec, StageSpec

NAMES = ("resnet18", "resnet50", "mobilenet_v1", "mobilenet_v2")

# Trainable parameters with 1000 classes, from the references: torchvision 0.28's weights meta
# ("num_params": resnet18 11,689,512; resnet50 25,557,032; mobilenet_v2 3,504,872) and Keras
# applications' MobileNet (alpha 1.0) summary "Trainable params: 4,231,976" (its 1x1-conv
# classifier with bias holds as many weights as Linear(1024, 1000)).
PARAMS = {
    "resnet18": 11_689_512, "resnet50": 25_557_032, "mobilenet_v1": 4_231_976, "mobilenet_v2": 3_504_872,
}
# Multiply-adds at 224 px: torchvision 0.28's weights meta ("_ops", in G: 1.814 / 4.089 / 0.301;
# the docs' "GFLOPS" column, which counts multiply-adds) and MobileNetV1 Table 8 (569M mult-adds).
MACS_G = {"resnet18": 1.814, "resnet50": 4.089, "mobilenet_v1": 0.569, "mobilenet_v2": 0.301}

# (channels per feature map at strides 2, 4, 8, 16, 32): for ResNets the stem conv (before the
# max pool), then conv2_x..conv5_x (ResNet Table 1; timm's feature_info: act1, layer1..layer4);
# for the MobileNets the last block at each stride (MobileNetV1 / V2 tables).
FEATURE_CHANNELS = {
    "resnet18": [64, 64, 128, 256, 512], "resnet50": [64, 256, 512, 1024, 2048],
    "mobilenet_v1": [64, 128, 256, 512, 1024], "mobilenet_v2": [16, 24, 32, 96, 320],
}


def _meta_model(name: str, **kw) -> effnet.ConvNet:
    with torch.device("meta"):
        return effnet.create_model(name, **kw)


def test_baselines_are_registered():
    assert set(NAMES) <= set(effnet.list_models())
    assert set(BASELINES) == set(NAMES)
    for name in NAMES:
        assert effnet.get_spec(name).name == name
        # One model class: a baseline is a spec, not a new nn.Module type.
        assert type(_meta_model(name)) is effnet.ConvNet


@pytest.mark.parametrize("name", NAMES)
def test_parameter_counts_equal_the_references(name):
    assert count_params(_meta_model(name)) == PARAMS[name]


@pytest.mark.parametrize("name", NAMES)
def test_multiply_adds_match_the_references(name):
    assert count_flops(name) / 1e9 == pytest.approx(MACS_G[name], rel=0.02)


@pytest.mark.parametrize("name", [n if n == "mobilenet_v1" else pytest.param(n, marks=pytest.mark.slow)
                                  for n in NAMES])  # the others run forward/backward in test_model
def test_forward_backward_and_feature_map_strides(name):
    torch.manual_seed(0)
    model = effnet.create_model(name, num_classes=5)
    x = torch.randn(2, 3, 64, 96)
    out = model(x)
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    out.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    model.eval()
    with torch.no_grad():
        maps = model.feature_maps(x)
    assert [tuple(m.shape[-2:]) for m in maps] == [(32, 48), (16, 24), (8, 12), (4, 6), (2, 3)]
    assert [m.shape[1] for m in maps] == [f["channels"] for f in model.feature_info] == FEATURE_CHANNELS[name]
    assert [f["stride"] for f in model.feature_info] == [2, 4, 8, 16, 32]


@pytest.mark.parametrize("name", NAMES)
def test_spec_round_trips_through_yaml(name, tmp_path):
    spec = effnet.get_spec(name)
    assert ModelSpec.from_yaml(spec.to_yaml()) == spec
    assert ModelSpec.load(spec.save(tmp_path / f"{name}.yaml")) == spec


def test_resnet_stem_is_7x7_conv_and_max_pool():
    # ResNet Table 1: conv1 7x7, 64, stride 2; conv2_x starts with 3x3 max pool, stride 2.
    model = _meta_model("resnet50")
    assert model.stem.conv.kernel_size == (7, 7) and model.stem.conv.stride == (2, 2)
    assert model.stem.conv.padding == (3, 3)
    pool = model.stem_pool
    assert isinstance(pool, nn.MaxPool2d) and (pool.kernel_size, pool.stride, pool.padding) == (3, 2, 1)
    assert "stem_kernel: 7" in RESNET50.to_yaml() and "stem_pool: true" in RESNET50.to_yaml()


def test_resnet50_is_v1_5_bottleneck():
    model = _meta_model("resnet50")
    first = model.stages[1][0]  # conv3_1: 256 -> 512, stride 2
    assert isinstance(first, Bottleneck)
    # torchvision "V1.5": the stride sits on the 3x3 conv, the 1x1s have stride 1.
    assert first.conv1.conv.stride == (1, 1) and first.conv2.conv.stride == (2, 2)
    assert first.conv2.conv.kernel_size == (3, 3) and first.conv3.conv.stride == (1, 1)
    # ResNet Table 1: [1x1, 128; 3x3, 128; 1x1, 512] (expand 4 = 512 / 128).
    assert (first.conv1.conv.out_channels, first.conv2.conv.out_channels, first.conv3.conv.out_channels) == (
        128, 128, 512)
    # Projection shortcut (option B) where the shape changes, identity elsewhere; conv2_1 changes
    # channels (64 -> 256) at stride 1, so it projects too.
    assert first.shortcut.conv.stride == (2, 2) and first.shortcut.conv.kernel_size == (1, 1)
    assert model.stages[0][0].shortcut.conv.in_channels == 64
    assert isinstance(model.stages[0][1].shortcut, nn.Identity)
    # No activation on the last BN before the addition; ReLU after it.
    assert isinstance(first.conv3.act, nn.Identity) and isinstance(first.act, nn.ReLU)
    assert isinstance(model.head, nn.Identity) and model.num_features == 2048


def test_resnet18_basic_blocks():
    model = _meta_model("resnet18")
    assert all(isinstance(b, BasicBlock) for stage in model.stages for b in stage)
    assert [len(s) for s in model.stages] == [2, 2, 2, 2]
    # conv2_x keeps 64 channels at stride 1: identity shortcut; conv3_1 projects.
    assert isinstance(model.stages[0][0].shortcut, nn.Identity)
    assert model.stages[1][0].conv1.conv.stride == (2, 2) and model.stages[1][0].shortcut.conv.stride == (2, 2)
    assert isinstance(model.stages[1][0].conv2.act, nn.Identity)
    assert model.classifier.in_features == 512 and model.dropout.p == 0.0


def test_basic_block_adds_before_the_activation():
    # The output is relu(branch + shortcut): with the branch zeroed, an identity block is relu(x).
    torch.manual_seed(0)
    block = BasicBlock(4, 4, kernel=3, stride=1, expand=1, se=0.0).eval()
    nn.init.zeros_(block.conv2.bn.weight)
    x = torch.randn(1, 4, 8, 8)
    torch.testing.assert_close(block(x), x.relu())


def test_mobilenet_v1_is_the_keras_table():
    # Keras applications mobilenet.py: 13 depthwise-separable blocks, stride 2 in blocks 2, 4,
    # 6 and 12 (block 13 has stride 1, not Table 1's "s2" typo), pointwise widths as below.
    model = _meta_model("mobilenet_v1")
    blocks = [b for stage in model.stages for b in stage]
    assert all(isinstance(b, DepthwiseSeparable) for b in blocks) and len(blocks) == 13
    assert [b.conv_dw.conv.stride[0] for b in blocks] == [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1]
    assert [b.conv_pw.conv.out_channels for b in blocks] == [64, 128, 128, 256, 256] + [512] * 6 + [1024, 1024]
    assert all(b.conv_dw.conv.groups == b.conv_dw.conv.in_channels for b in blocks)
    assert all(isinstance(b.conv_pw.act, nn.ReLU6) for b in blocks)  # pointwise is not linear in V1
    assert isinstance(model.head, nn.Identity) and model.classifier.in_features == 1024
    assert model.dropout.p == pytest.approx(1e-3)


def test_mobilenet_v2_inverted_residuals():
    model = _meta_model("mobilenet_v2")
    blocks = [b for stage in model.stages for b in stage]
    assert all(isinstance(b, MBConv) for b in blocks) and len(blocks) == 17
    # Table 2, t=1 row: no expansion conv; no squeeze-excitation anywhere; linear projection.
    assert isinstance(blocks[0].conv_pw, nn.Identity)
    assert all(isinstance(b.se, nn.Identity) and isinstance(b.conv_pwl.act, nn.Identity) for b in blocks)
    assert isinstance(blocks[1].conv_pw.act, nn.ReLU6) and blocks[1].conv_pw.conv.out_channels == 96  # 16 * 6
    assert model.head.conv.out_channels == 1280 and isinstance(model.head.act, nn.ReLU6)
    assert model.dropout.p == pytest.approx(0.2)
    # Residual where input and output shapes agree (Table 2 repeats after the first of a row).
    assert [b.has_skip for b in blocks] == [False, False, True, False, True, True, False, True, True, True,
                                            False, True, True, False, True, True, False]


@pytest.mark.parametrize("name", NAMES)
def test_baseline_training_defaults_are_the_references(name):
    spec = effnet.get_spec(name)
    assert (spec.resolution, spec.bn_eps, spec.bn_momentum, spec.drop_path_rate) == (224, 1e-5, 0.1, 0.0)
    assert spec.activation == ("relu" if name.startswith("resnet") else "relu6")
    assert spec.round_limit == 0.9
    model = _meta_model(name)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all((m.eps, m.momentum) == (1e-5, 0.1) for m in bns)


def test_feature_extractor_without_head_conv():
    model = effnet.create_model("resnet18", num_classes=0).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = model(x)
        pooled = model.forward_features(x).mean(dim=(2, 3))  # (N, 512): conv5_x pooled
    assert out.shape == (2, 512)
    torch.testing.assert_close(out, pooled)


def test_width_scaled_baselines_build():
    # A width-scaled ResNet keeps "no head conv"; its bottleneck stays channels / 4 wide.
    half = effnet.scale(RESNET50, width=0.5, resolution=64)
    assert half.head_channels == 0 and [s.channels for s in half.stages] == [128, 256, 512, 1024]
    model = effnet.build(half.replace(num_classes=3)).eval()
    assert model.stages[0][0].conv1.conv.out_channels == 32
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3)
    assert effnet.build(effnet.scale(MOBILENET_V1, width=0.25, resolution=64)).num_features == 256


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(op="basic", expand=4), "no expansion"),
        (dict(op="dsconv", expand=6), "no expansion"),
        (dict(op="basic", se=0.25), "no squeeze-excitation"),
        (dict(op="bottleneck", expand=4, se=0.25), "no squeeze-excitation"),
        (dict(op="bottleneck", expand=128, channels=64), "at least 1 channel"),
    ],
)
def test_baseline_ops_are_validated(bad, match):
    good = dict(op="basic", repeats=1, kernel=3, stride=1, expand=1, channels=64)
    with pytest.raises(ValueError, match=match):
        StageSpec(**{**good, **bad})


def test_stem_and_head_fields_are_validated():
    with pytest.raises(ValueError, match="stem_kernel"):
        RESNET18.replace(stem_kernel=4)
    with pytest.raises(ValueError, match="stem_pool"):
        RESNET18.replace(stem_pool="yes")
    with pytest.raises(ValueError, match="head_channels"):
        RESNET18.replace(head_channels=-1)


def test_defaults_leave_existing_specs_and_models_unchanged():
    # A spec saved before the stem fields existed loads as it did, and serialises without them
    # (weight files, spec files and the lab's study digests stay byte-identical).
    text = EFFICIENTNET_B0.to_yaml()
    assert "stem_kernel" not in text and "stem_pool" not in text
    spec = ModelSpec.from_yaml(text)
    assert (spec.stem_kernel, spec.stem_pool) == (3, False) and spec == EFFICIENTNET_B0
    model = _meta_model("efficientnet_b0")
    assert model.stem.conv.kernel_size == (3, 3) and isinstance(model.stem_pool, nn.Identity)
    assert not any("stem_pool" in k for k in model.state_dict())
    assert model.num_features == 1280
