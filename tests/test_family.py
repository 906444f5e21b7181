"""EfficientNet-Lite, EfficientNet-EdgeTPU and TinyNet: data, not builders, and
equal to the reference implementation's parameter counts and MACs."""

from __future__ import annotations

import pytest
import torch

from effnet.model import build
from effnet.profile import count_flops
from effnet.registry import get_spec, list_models
from effnet.scaling.compound import from_family
from effnet.specs import EDGETPU_FAMILY, LITE_FAMILY, TINYNET_FAMILY, FamilyRow

# Independent numbers: timm 1.0.31 (where torchvision and timm import), parameters of
# ``timm.create_model(name)`` with 1000 classes (sum of numel of ``parameters()``, so no BN
# running statistics), and multiply-adds of one image at effnet's resolution counted with
# torch.utils.flop_counter.FlopCounterMode // 2 on the meta device. timm evaluates Lite3/Lite4 at
# 300/380 px; these MACs are at the official 280/300 px, the resolution effnet registers.
# effnet name -> (timm name, parameters, MACs).
TIMM = {
    "efficientnet_lite0": ("efficientnet_lite0", 4652008, 385187552),
    "efficientnet_lite1": ("efficientnet_lite1", 5416680, 600185232),
    "efficientnet_lite2": ("efficientnet_lite2", 6092072, 859736272),
    "efficientnet_lite3": ("efficientnet_lite3", 8197096, 1383321872),
    "efficientnet_lite4": ("efficientnet_lite4", 13006568, 2553034336),
    "efficientnet_edgetpu_s": ("efficientnet_es", 5438392, 1788731008),
    "efficientnet_edgetpu_m": ("efficientnet_em", 6899496, 3013321088),
    "efficientnet_edgetpu_l": ("efficientnet_el", 10589712, 7936082848),
    "tinynet_a": ("tinynet_a", 6187972, 336867712),
    "tinynet_b": ("tinynet_b", 3730562, 200709360),
    "tinynet_c": ("tinynet_c", 2457234, 99536432),
    "tinynet_d": ("tinynet_d", 2338446, 51580656),
    "tinynet_e": ("tinynet_e", 2042972, 24356848),
}

# Official resolutions: efficientnet_lite_builder ``efficientnet_lite_params``,
# efficientnet_edgetpu_builder ``efficientnet_edgetpu_params``, timm's TinyNet input sizes.
RESOLUTION = {
    "efficientnet_lite0": 224, "efficientnet_lite1": 240, "efficientnet_lite2": 260,
    "efficientnet_lite3": 280, "efficientnet_lite4": 300, "efficientnet_edgetpu_s": 224,
    "efficientnet_edgetpu_m": 240, "efficientnet_edgetpu_l": 300, "tinynet_a": 192, "tinynet_b": 188,
    "tinynet_c": 184, "tinynet_d": 152, "tinynet_e": 106,
}


@pytest.mark.parametrize("name", sorted(TIMM))
def test_parameters_equal_timm_and_macs_within_2_percent(name):
    _, params, macs = TIMM[name]
    spec = get_spec(name)
    assert spec.resolution == RESOLUTION[name]
    with torch.device("meta"):
        model = build(spec)
    assert sum(p.numel() for p in model.parameters()) == params
    assert abs(count_flops(spec) - macs) / macs < 0.02


def test_listed():
    assert set(TIMM) <= set(list_models())


def test_rules_are_data_on_the_family_rows():
    lite4 = get_spec("efficientnet_lite4")
    # Lite: no SE, ReLU6; stem 32 and head 1280 unscaled at width 1.4; first and last stage
    # keep one block at depth 1.8.
    assert lite4.activation == "relu6" and all(s.se == 0 for s in lite4.stages)
    assert (lite4.stem_channels, lite4.head_channels) == (32, 1280)
    assert [s.repeats for s in lite4.stages] == [1, 4, 4, 6, 6, 8, 1]
    # EdgeTPU: fused early stages, ReLU, no SE; L scales stem and head (40, 1536).
    el = get_spec("efficientnet_edgetpu_l")
    assert el.activation == "relu" and all(s.se == 0 for s in el.stages)
    assert [s.op for s in el.stages[:4]] == ["fused"] * 4 and el.stages[4].op == "mbconv"
    assert (el.stem_channels, el.head_channels) == (40, 1536)
    # TinyNet: stem fixed at 32, head at least 1280, repeats rounded to nearest.
    e = get_spec("tinynet_e")
    assert (e.stem_channels, e.head_channels) == (32, 1280)
    assert [s.repeats for s in e.stages] == [1, 1, 1, 2, 2, 2, 1]
    for family in (LITE_FAMILY, EDGETPU_FAMILY, TINYNET_FAMILY):
        for name, entry in family.items():
            if isinstance(entry, FamilyRow):
                assert from_family(name, entry) == get_spec(name)


def test_family_row_rejects_bad_rules():
    base = get_spec("efficientnet_b0")
    with pytest.raises(ValueError, match="depth_rounding"):
        FamilyRow(base, 1.0, 1.0, 224, 0.2, depth_rounding="floor")
    with pytest.raises(ValueError, match="head"):
        FamilyRow(base, 1.0, 1.0, 224, 0.2, head="wide")
    with pytest.raises(ValueError, match="out of range"):
        FamilyRow(base, 1.0, 1.0, 224, 0.2, fixed_repeats=(7,))


@pytest.mark.parametrize("name", ["efficientnet_lite1", "efficientnet_edgetpu_m", "tinynet_e"])
def test_forward_and_serialise(name):
    spec = get_spec(name).replace(num_classes=10)
    model = build(spec).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)
    assert type(spec).from_json(spec.to_json()) == spec


# --- noskip: the official EdgeTPU first row ``r1_k3_s11_e4_i24_o24_c1_noskip``
# (efficientnet_edgetpu_builder.py; the decoder sets id_skip=('noskip' not in block_string) and
# every repeat of the row keeps it). timm's ``_gen_efficientnet_edge`` writes the same row as
# ``er_r1_k3_s1_e4_c24_fc24_noskip``.
def _hand_forward(model, noskip_stages):
    """The network computed from its parts with the residual rule written out here: a block
    adds its input when its stride is 1 and its channels are kept (MobileNetV2 section 3.3,
    EfficientNet's MBConv), except in the stages the official block strings mark ``noskip``."""
    x = model.stem_pool(model.stem(_X[model.spec.name]))
    for i, stage in enumerate(model.stages):
        for j, b in enumerate(stage):
            first = model.spec.stages[i] if j == 0 else None
            stride = first.stride if first is not None else 1
            body = b.conv_pwl(b.se(b.conv_exp(x))) if hasattr(b, "conv_exp") \
                else b.conv_pwl(b.se(b.conv_dw(b.conv_pw(x))))
            keeps_shape = stride == 1 and x.shape[1] == body.shape[1]
            x = x + body if keeps_shape and i not in noskip_stages else body
    return model.classifier(model.pool(model.head(x)).flatten(1))


_X: dict[str, torch.Tensor] = {}


@pytest.mark.parametrize("name, blocks_without_skip", [
    ("efficientnet_edgetpu_m", 1), pytest.param("efficientnet_edgetpu_l", 1, marks=pytest.mark.slow),
    ("efficientnet_b0", 0)])
def test_edgetpu_first_stage_has_no_residual(name, blocks_without_skip):
    spec = get_spec(name).replace(num_classes=10)
    model = build(spec).eval()
    # M and L split their first row in two (the first block's hidden width, see specs.edgetpu):
    # both parts are the one official row, so both are noskip.
    noskip = {i for i, s in enumerate(spec.stages) if not s.skip}
    assert noskip == ({0, 1} if "edgetpu" in name else set())
    first_row = [b for i in sorted(noskip) for b in model.stages[i]]
    assert [b.has_skip for b in first_row] == [False] * len(first_row)
    # The row's blocks after its first keep the shape (24 -> 24 for M, 32 -> 32 for L, stride
    # 1): these are the ones that had a residual before.
    # (ceil(1 x 1.1) = ceil(1 x 1.4) = 2 blocks in the row.)
    assert max(sum(len(model.stages[i]) for i in noskip) - 1, 0) == blocks_without_skip
    torch.manual_seed(0)
    for m in model.modules():  # non-trivial BN statistics so a residual, kept or dropped, shows
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
    _X[spec.name] = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(_X[spec.name]), _hand_forward(model, noskip))
        # ... and the rule matters: with the residual (the previous behaviour) the logits differ.
        if noskip:
            assert not torch.allclose(model(_X[spec.name]), _hand_forward(model, set()))


def test_noskip_serialises_and_only_edgetpu_has_it():
    for name in list_models():
        spec = get_spec(name)
        if "edgetpu" not in name:
            assert all(s.skip for s in spec.stages), name
            assert '"skip"' not in spec.to_json(), name  # other specs' JSON unchanged
    el = get_spec("efficientnet_edgetpu_l")
    assert type(el).from_json(el.to_json()) == el
    assert type(el).from_yaml(el.to_yaml()).stages[0].skip is False
