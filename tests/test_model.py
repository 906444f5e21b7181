import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import effnet
from conftest import REPRESENTATIVES
from effnet.layers import DropPath, FusedMBConv, MBConv, make_conv
from effnet.profile import count_flops, count_params
from effnet.registry import get_spec
from effnet.specs.paper import PAPER_TABLE_2

# Trainable parameters with 1000 classes: the common PyTorch ports (torchvision / timm, listed in
# docs/paper.md section 3); V2-XL and V2-B0/B3 as timm 1.0.31 counts them (benchmarks/reference/2026-11-21_parity.json).
PARAMS = {
    "efficientnet_b0": 5_288_548, "efficientnet_b1": 7_794_184, "efficientnet_b2": 9_109_994,
    "efficientnet_b3": 12_233_232, "efficientnet_b4": 19_341_616, "efficientnet_b5": 30_389_784,
    "efficientnet_b6": 43_040_704, "efficientnet_b7": 66_347_960, "efficientnetv2_s": 21_458_488,
    "efficientnetv2_m": 54_139_356, "efficientnetv2_l": 118_515_272, "efficientnetv2_xl": 208_119_808,
    "efficientnetv2_b0": 7_139_704, "efficientnetv2_b3": 14_358_406,
}
# Multiply-adds at each model's own resolution, measured on the reference implementations, not on
# effnet: timm 1.0.31 (all) and torchvision 0.28 (B0-B7, V2-S/M/L; equal wherever both exist), each
# built on the meta device and counted with torch.utils.flop_counter / 2 (benchmarks/parity.py,
# benchmarks/reference/2026-11-21_parity.json).
PEER_MACS = {
    "efficientnet_b0": 385_814_752, "efficientnet_b1": 686_802_832, "efficientnet_b2": 993_561_872,
    "efficientnet_b3": 1_827_141_392, "efficientnet_b4": 4_393_771_024, "efficientnet_b5": 10_266_384_752,
    "efficientnet_b6": 19_067_593_536, "efficientnet_b7": 37_745_884_192, "efficientnet_b8": 62_597_461_568,
    "efficientnet_l2": 475_703_653_280, "efficientnetv2_s": 8_365_617_152, "efficientnetv2_m": 24_582_460_384,
    "efficientnetv2_l": 56_079_699_008, "efficientnetv2_xl": 93_353_451_520, "efficientnetv2_b0": 718_086_176,
    "efficientnetv2_b1": 1_196_819_360, "efficientnetv2_b2": 1_697_542_832, "efficientnetv2_b3": 3_011_458_816,
}


def _meta_model(name: str, **kw) -> effnet.ConvNet:
    with torch.device("meta"):
        return effnet.create_model(name, **kw)


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_parameter_counts_are_exact(name):
    assert count_params(_meta_model(name)) == PARAMS[name]


@pytest.mark.parametrize("name", sorted(PEER_MACS))
def test_flops_equal_the_reference_implementations(name):
    assert count_flops(name) == PEER_MACS[name]


@pytest.mark.parametrize("row", PAPER_TABLE_2, ids=lambda r: r.model)
def test_flops_match_the_papers(row):
    # EfficientNet Table 2 / the EfficientNetV2 README give FLOPs to two significant figures
    # ("4.2B" for B4, which is 4.39B in every implementation above): 5% covers that rounding.
    assert get_spec(row.model).resolution == row.resolution
    assert count_flops(row.model) / 1e9 == pytest.approx(row.flops_b, rel=0.05)


# Every model is counted on the meta device above. Forward and backward run by default on one model
# per kind of block (conftest.REPRESENTATIVES); the rest of the registry, the huge models included
# (B5-B8, L2 with 480M parameters and several GB, V2-M/L/XL), only under ``slow``.
@pytest.mark.parametrize("name", [n if n in REPRESENTATIVES else pytest.param(n, marks=pytest.mark.slow)
                                  for n in effnet.list_models()])
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
    # A stem with a max pool (ResNet): stride 2 is the stem conv, stride 4 the first stage.
    resnet = effnet.create_model("resnet18").eval()
    assert [f["module"] for f in resnet.feature_info] == ["stem", "stages.0", "stages.1", "stages.2", "stages.3"]
    assert [tuple(m.shape[-2:]) for m in resnet.feature_maps(x)] == [(32, 48), (16, 24), (8, 12), (4, 6), (2, 3)]
    # Were the first stage strided, the stride-4 map would be the pooled stem itself.
    spec = get_spec("resnet18")
    first = dataclasses.replace(spec.stages[0], stride=2)
    strided = effnet.build(spec.replace(stages=(first, *spec.stages[1:3])))
    assert [(f["stride"], f["module"]) for f in strided.feature_info] == [
        (2, "stem"), (4, "stem_pool"), (8, "stages.0"), (16, "stages.1"), (32, "stages.2")]
    assert [tuple(m.shape[-2:]) for m in strided.eval().feature_maps(x)] == [
        (32, 48), (16, 24), (8, 12), (4, 6), (2, 3)]


def test_reset_classifier():
    model = effnet.create_model("efficientnet_b0")
    model.reset_classifier(10)
    assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 10) and model.spec.num_classes == 10
    model.reset_classifier(0)
    assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 1280)
    with pytest.raises(ValueError, match="num_classes"):
        model.reset_classifier(-1)


def test_model_without_classifier_saves_and_loads_as_a_feature_extractor(tmp_path):
    # A regression: reset_classifier(0) recorded num_classes=1, so load_model expected a classifier
    # that the file does not hold ("missing key(s) classifier.weight").
    from effnet.weights import save_weights

    torch.manual_seed(0)
    model = effnet.create_model("efficientnet_b0", num_classes=10).eval()
    model.reset_classifier(0)
    assert model.spec.num_classes == 0
    loaded = effnet.load_model(save_weights(model, tmp_path / "features.safetensors"))
    assert loaded.spec.num_classes == 0 and isinstance(loaded.classifier, nn.Identity)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = loaded(x)
        pooled = model.forward_features(x).mean(dim=(2, 3))  # global average pool: (N, head_channels)
    assert out.shape == (2, 1280)
    torch.testing.assert_close(out, pooled)


def test_num_classes_zero_builds_no_classifier():
    model = _meta_model("efficientnet_b0", num_classes=0)
    assert isinstance(model.classifier, nn.Identity)
    assert count_params(model) == PARAMS["efficientnet_b0"] - (1280 * 1000 + 1000)  # minus Linear(1280, 1000)
    with pytest.raises(ValueError, match="num_classes"):
        get_spec("efficientnet_b0").replace(num_classes=-1)


def test_changes_enter_through_the_spec_only():
    # A regression: overrides entered in three places; build() and ConvNet() take a finished spec.
    spec = get_spec("efficientnet_b0")
    with pytest.raises(TypeError):
        effnet.build(spec, num_classes=3)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        effnet.ConvNet(spec, dropout=0.5)  # type: ignore[call-arg]
    with torch.device("meta"):
        model = effnet.build(spec.replace(num_classes=3, dropout=0.5))
    assert model.classifier.out_features == 3 and model.dropout.p == 0.5


def test_overrides_dropout_drop_path_and_bn():
    model = effnet.create_model("efficientnet_b0", dropout=0.5, drop_path_rate=0.3, bn_momentum=0.1, bn_eps=1e-5)
    assert model.dropout.p == 0.5
    assert model.stem.bn.momentum == 0.1 and model.stem.bn.eps == 1e-5
    with pytest.raises(ValueError, match="unknown spec field"):
        effnet.create_model("efficientnet_b0", dropuot=0.1)
    # width/depth in a spec record its scaling; as overrides they would only mislabel B0.
    with pytest.raises(ValueError, match=r"scale the spec instead"):
        effnet.create_model("efficientnet_b0", width=0.5)


def test_stochastic_depth_ramp_is_the_published_one():
    # Block i of N gets drop_path_rate * i / N: torchvision efficientnet.py
    # (``stochastic_depth_prob * float(stage_block_id) / total_stage_blocks``) and the official
    # tensorflow/tpu efficientnet_model.py (``drop_rate *= float(idx) / len(self._blocks)``).
    # B0 has 16 blocks, so 0.2 * i / 16 = 0.0125 * i. Blocks without a residual (first of a stage
    # whose channels or stride change) have nothing to drop: None.
    expected = [None, None, 0.025, None, 0.05, None, 0.075, 0.0875, None, 0.1125, 0.125,
                None, 0.15, 0.1625, 0.175, None]
    model = _meta_model("efficientnet_b0", drop_path_rate=0.2)
    got = [b.drop_path.p if isinstance(b.drop_path, DropPath) else None for stage in model.stages for b in stage]
    assert got == pytest.approx(expected)


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


# TF "SAME" padding, worked by hand from TensorFlow's definition (tf.nn, "Notes on padding"):
# out = ceil(in / stride); total = max((out - 1) * stride + kernel - in, 0); before = total // 2,
# after = total - before (the odd pixel goes to the bottom/right).
@pytest.mark.parametrize(
    "size, kernel, stride, pads",
    [
        (224, 3, 2, (0, 1)),  # out 112: 111*2 + 3 - 224 = 1
        (225, 3, 2, (1, 1)),  # out 113: 112*2 + 3 - 225 = 2
        (7, 3, 2, (1, 1)),    # out 4: 3*2 + 3 - 7 = 2
        (8, 3, 2, (0, 1)),    # out 4: 3*2 + 3 - 8 = 1
        (224, 5, 2, (1, 2)),  # out 112: 111*2 + 5 - 224 = 3
        (9, 5, 2, (2, 2)),    # out 5: 4*2 + 5 - 9 = 4
        (7, 3, 1, (1, 1)),    # stride 1: total = kernel - 1, split evenly = PyTorch's symmetric k // 2
        (8, 5, 1, (2, 2)),
    ],
)
def test_tf_same_padding_matches_explicit_padding(size, kernel, stride, pads):
    torch.manual_seed(0)
    conv = make_conv(2, 3, kernel, stride, padding="same")
    nn.init.normal_(conv.weight)
    x = torch.randn(1, 2, size, size)
    before, after = pads
    expected = F.conv2d(F.pad(x, (before, after, before, after)), conv.weight, stride=stride)
    assert expected.shape[-1] == -(-size // stride)  # ceil(size / stride)
    torch.testing.assert_close(conv(x), expected)


def test_tf_same_padding_is_per_dimension():
    # 7 x 8 input, kernel 3, stride 2: height pads (1, 1), width (0, 1) (see the table above).
    torch.manual_seed(0)
    conv = make_conv(1, 1, 3, 2, padding="same")
    x = torch.randn(1, 1, 7, 8)
    expected = F.conv2d(F.pad(x, (0, 1, 1, 1)), conv.weight, stride=2)
    torch.testing.assert_close(conv(x), expected)


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


def test_zero_init_leaves_noskip_blocks_alone():
    # EdgeTPU-M's first row is ``noskip`` (efficientnet_edgetpu_builder.py): its 24 -> 24 block
    # adds no input, so zeroing its last BN would make it output zeros, not the identity.
    spec = get_spec("efficientnet_edgetpu_m").replace(num_classes=10)
    net = effnet.build(spec.replace(extra={**spec.extra, "zero_init_last": True})).eval()
    noskip = [b for i, s in enumerate(spec.stages) if not s.skip for b in net.stages[i]]
    assert len(noskip) == 2 and all(b.conv_pwl.bn.weight.abs().sum() > 0 for b in noskip)
    # Residual blocks count: every block after the first of each row, minus the noskip one.
    expected = sum(s.repeats - 1 for s in spec.stages if s.skip)
    zeroed = [b for stage in net.stages for b in stage if torch.count_nonzero(b.conv_pwl.bn.weight) == 0]
    assert len(zeroed) == expected


def test_the_class_is_named_for_what_it_builds_and_its_old_name_still_works(tmp_path):
    """One class builds EfficientNet and the ResNet / MobileNet baselines: ``ConvNet``, with
    ``EfficientNet`` kept as the same class. A weight file records the spec as data, never the
    class name, so files load whatever the class is called."""
    from safetensors import safe_open

    from effnet.weights import save_weights

    assert effnet.EfficientNet is effnet.ConvNet
    model = effnet.build(get_spec("resnet18").replace(num_classes=3))
    assert type(model) is effnet.ConvNet and isinstance(model, effnet.EfficientNet)
    path = save_weights(model, tmp_path / "r18.safetensors")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert not [k for k, v in meta.items() if "ConvNet" in v or "EfficientNet" in v]
