"""EfficientNet-Lite, EfficientNet-EdgeTPU and TinyNet (issue 11): data, not builders, and
equal to the reference implementation's parameter counts and MACs."""

from __future__ import annotations

import pytest
import torch

from effnet.model import build
from effnet.profile import count_flops
from effnet.registry import get_spec, list_models
from effnet.scaling.compound import from_family
from effnet.specs import EDGETPU_FAMILY, LITE_FAMILY, TINYNET_FAMILY, FamilyRow

# Independent numbers: timm 1.0.31 (the peers venv, /tmp/peers), parameters of
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
