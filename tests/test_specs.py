import json
import re

import pytest

from effnet import specs
from effnet.registry import get_spec, list_models
from effnet.specs import (
    EFFICIENTNET_B0,
    EFFICIENTNETV2_S,
    V1_FAMILY,
    V2_FAMILY,
    FamilyRow,
    ModelSpec,
    StageSpec,
)


def test_b0_is_paper_table_1():
    rows = [(s.op, s.repeats, s.kernel, s.stride, s.expand, s.channels, s.se) for s in EFFICIENTNET_B0.stages]
    assert rows == [
        ("mbconv", 1, 3, 1, 1, 16, 0.25), ("mbconv", 2, 3, 2, 6, 24, 0.25), ("mbconv", 2, 5, 2, 6, 40, 0.25),
        ("mbconv", 3, 3, 2, 6, 80, 0.25), ("mbconv", 3, 5, 1, 6, 112, 0.25), ("mbconv", 4, 5, 2, 6, 192, 0.25),
        ("mbconv", 1, 3, 1, 6, 320, 0.25),
    ]
    assert (EFFICIENTNET_B0.stem_channels, EFFICIENTNET_B0.head_channels, EFFICIENTNET_B0.resolution) == (32, 1280, 224)


def test_v2_s_uses_fused_early_and_no_se_there():
    ops = [(s.op, s.se) for s in EFFICIENTNETV2_S.stages]
    assert ops[:3] == [("fused", 0.0)] * 3
    assert all(op == "mbconv" and se == 0.25 for op, se in ops[3:])
    assert EFFICIENTNETV2_S.round_limit == 0.0


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_spec_round_trips(tmp_path, fmt):
    path = EFFICIENTNETV2_S.save(tmp_path / f"s.{fmt}")
    assert ModelSpec.load(path) == EFFICIENTNETV2_S
    text = EFFICIENTNET_B0.to_json() if fmt == "json" else EFFICIENTNET_B0.to_yaml()
    back = ModelSpec.from_json(text) if fmt == "json" else ModelSpec.from_yaml(text)
    assert back == EFFICIENTNET_B0


def test_specs_are_frozen():
    with pytest.raises(AttributeError):
        EFFICIENTNET_B0.resolution = 300  # type: ignore[misc]


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(op="conv"), "op"), (dict(kernel=4), "odd"), (dict(stride=3), "stride"),
        (dict(repeats=0), "repeats"), (dict(se=1.5), "se"), (dict(expand=0.5), "expand"),
        (dict(op="basic", expand=6, se=0.0), "expand"), (dict(op="dsconv", se=0.25), "se"),
        (dict(skip="no"), "skip"), (dict(op="basic", expand=1, se=0.0, skip=False), "skip"),
        (dict(op="bottleneck", expand=4, se=0.0, skip=False), "skip"),
    ],
)
def test_stage_validation(bad, match):
    good = dict(op="mbconv", repeats=1, kernel=3, stride=1, expand=1, channels=16, se=0.25)
    with pytest.raises(ValueError, match=match):
        StageSpec(**{**good, **bad})


def test_model_spec_validation_and_unknown_fields():
    with pytest.raises(ValueError, match="resolution"):
        EFFICIENTNET_B0.replace(resolution=0)
    with pytest.raises(ValueError, match="padding"):
        EFFICIENTNET_B0.replace(padding="valid")
    with pytest.raises(ValueError, match="unknown spec field"):
        EFFICIENTNET_B0.replace(colour="blue")
    with pytest.raises(ValueError, match="stem_kernel"):
        EFFICIENTNET_B0.replace(stem_kernel=0)
    with pytest.raises(ValueError, match="head_channels"):
        EFFICIENTNET_B0.replace(head_channels=-8)
    assert EFFICIENTNET_B0.replace(head_channels=0).num_features == 320  # no head conv: last stage
    d = json.loads(EFFICIENTNET_B0.to_json())
    d["bogus"] = 1
    with pytest.raises(ValueError, match="bogus"):
        ModelSpec.from_dict(d)


def test_missing_spec_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="spec file not found"):
        ModelSpec.load(tmp_path / "nope.yaml")


# --- one source of truth: exported constants, registry and the official tables agree ------------

def test_every_exported_spec_is_the_registered_one():
    # A regression: effnet.specs.EFFICIENTNETV2_M had dropout 0.2 while get_spec("efficientnetv2_m") had 0.3.
    exported = {name: getattr(specs, name) for name in specs.__all__}
    exported_specs = {name: obj for name, obj in exported.items() if isinstance(obj, ModelSpec)}
    assert len(exported_specs) >= 6
    for const, spec in exported_specs.items():
        assert spec == get_spec(spec.name), const


# Official numbers, typed from the sources (not from effnet):
# V1 (resolution, dropout): tensorflow/tpu efficientnet_builder.py ``efficientnet_params``
# (= google/automl effnetv2_configs.py ``efficientnetv1_params``; EfficientNet Table 2).
OFFICIAL_V1 = {
    "efficientnet_b0": (224, 0.2), "efficientnet_b1": (240, 0.2), "efficientnet_b2": (260, 0.3),
    "efficientnet_b3": (300, 0.3), "efficientnet_b4": (380, 0.4), "efficientnet_b5": (456, 0.4),
    "efficientnet_b6": (528, 0.5), "efficientnet_b7": (600, 0.5), "efficientnet_b8": (672, 0.5),
    "efficientnet_l2": (800, 0.5),
}
# V2 (train_size, eval_size, dropout): google/automl effnetv2_configs.py ``efficientnetv2_params``.
OFFICIAL_V2 = {
    "efficientnetv2_s": (300, 384, 0.2), "efficientnetv2_m": (384, 480, 0.3),
    "efficientnetv2_l": (384, 480, 0.4), "efficientnetv2_xl": (384, 512, 0.4),
    "efficientnetv2_b0": (192, 224, 0.2), "efficientnetv2_b1": (192, 240, 0.2),
    "efficientnetv2_b2": (208, 260, 0.3), "efficientnetv2_b3": (240, 300, 0.3),
}


@pytest.mark.parametrize("name", sorted(OFFICIAL_V1))
def test_v1_resolution_and_dropout_are_official(name):
    spec = get_spec(name)
    assert (spec.resolution, spec.dropout) == OFFICIAL_V1[name]
    assert spec.train_resolution is None  # V1 trains and evaluates at one size


@pytest.mark.parametrize("name", sorted(OFFICIAL_V2))
def test_v2_resolutions_and_dropout_are_official(name):
    spec = get_spec(name)
    assert (spec.train_resolution, spec.resolution, spec.dropout) == OFFICIAL_V2[name]


@pytest.mark.parametrize("name", sorted(OFFICIAL_V1) + sorted(OFFICIAL_V2))
def test_batchnorm_momentum_is_the_official_one_in_pytorch_convention(name):
    """TF's BatchNormalization momentum is the weight of the old running statistic, PyTorch's
    the weight of the new one: TF m is PyTorch 1 - m. Official values: V1 (tensorflow/tpu
    efficientnet_builder.py) batch_norm_momentum=0.99; V2 (google/automl efficientnetv2/hparams.py
    base_config.model) bn_momentum=0.9, overridden by no V2 config. V2 trained with 0.01."""
    tf_momentum = 0.9 if name in OFFICIAL_V2 else 0.99
    assert get_spec(name).bn_momentum == pytest.approx(1 - tf_momentum)


#: The baselines (ResNet / MobileNet, effnet.specs.baselines), named as torchvision names them.
BASELINE_NAMES = {"resnet18", "resnet50", "mobilenet_v1", "mobilenet_v2"}


#: The rest of the family (tests/test_family.py checks them against timm).
REST_OF_FAMILY = ({f"efficientnet_lite{i}" for i in range(5)} | {f"efficientnet_edgetpu_{v}" for v in "sml"}
                  | {f"tinynet_{v}" for v in "abcde"})


def test_registry_has_exactly_the_official_names():
    assert set(list_models()) == set(OFFICIAL_V1) | set(OFFICIAL_V2) | BASELINE_NAMES | REST_OF_FAMILY


def test_family_rows_only_derive_members():
    # A member that is a table of its own is registered as its spec; a row scales a base, so a
    # row with width = depth = 1 would be a second home for the base's facts.
    for name, entry in {**V1_FAMILY, **V2_FAMILY}.items():
        if isinstance(entry, FamilyRow):
            assert (entry.width, entry.depth) != (1.0, 1.0), name
        else:
            assert entry.name == name


# google/automl effnetv2_configs.py block strings, verbatim: r repeats, k kernel, s stride,
# e expansion, i input and o output channels, c1 Fused-MBConv, se ratio.
OFFICIAL_V2_BLOCKS = {
    "efficientnetv2_s": ["r2_k3_s1_e1_i24_o24_c1", "r4_k3_s2_e4_i24_o48_c1", "r4_k3_s2_e4_i48_o64_c1",
                         "r6_k3_s2_e4_i64_o128_se0.25", "r9_k3_s1_e6_i128_o160_se0.25",
                         "r15_k3_s2_e6_i160_o256_se0.25"],
    "efficientnetv2_m": ["r3_k3_s1_e1_i24_o24_c1", "r5_k3_s2_e4_i24_o48_c1", "r5_k3_s2_e4_i48_o80_c1",
                         "r7_k3_s2_e4_i80_o160_se0.25", "r14_k3_s1_e6_i160_o176_se0.25",
                         "r18_k3_s2_e6_i176_o304_se0.25", "r5_k3_s1_e6_i304_o512_se0.25"],
    "efficientnetv2_l": ["r4_k3_s1_e1_i32_o32_c1", "r7_k3_s2_e4_i32_o64_c1", "r7_k3_s2_e4_i64_o96_c1",
                         "r10_k3_s2_e4_i96_o192_se0.25", "r19_k3_s1_e6_i192_o224_se0.25",
                         "r25_k3_s2_e6_i224_o384_se0.25", "r7_k3_s1_e6_i384_o640_se0.25"],
    "efficientnetv2_xl": ["r4_k3_s1_e1_i32_o32_c1", "r8_k3_s2_e4_i32_o64_c1", "r8_k3_s2_e4_i64_o96_c1",
                          "r16_k3_s2_e4_i96_o192_se0.25", "r24_k3_s1_e6_i192_o256_se0.25",
                          "r32_k3_s2_e6_i256_o512_se0.25", "r8_k3_s1_e6_i512_o640_se0.25"],
    "efficientnetv2_b0": ["r1_k3_s1_e1_i32_o16_c1", "r2_k3_s2_e4_i16_o32_c1", "r2_k3_s2_e4_i32_o48_c1",
                          "r3_k3_s2_e4_i48_o96_se0.25", "r5_k3_s1_e6_i96_o112_se0.25",
                          "r8_k3_s2_e6_i112_o192_se0.25"],
}


@pytest.mark.parametrize("name", sorted(OFFICIAL_V2_BLOCKS))
def test_v2_tables_are_the_official_block_strings(name):
    spec = get_spec(name)
    in_ch = spec.stem_channels
    for stage, text in zip(spec.stages, OFFICIAL_V2_BLOCKS[name], strict=True):
        f = dict(re.match(r"([a-z]+)([\d.]+)", part).groups() for part in text.split("_"))
        assert (stage.repeats, stage.kernel, stage.stride, stage.expand) == (
            int(f["r"]), int(f["k"]), int(f["s"]), int(f["e"]))
        assert (in_ch, stage.channels) == (int(f["i"]), int(f["o"]))
        assert stage.op == ("fused" if f.get("c") == "1" else "mbconv")
        assert stage.se == float(f.get("se", 0.0))
        in_ch = stage.channels


def test_malformed_spec_file_names_the_file_and_line(tmp_path):
    """A YAML syntax error is reported as the file, line and column, in one line (the parser's
    own text says "<unicode string>" and spans several lines)."""
    from effnet.specs.base import ModelSpec

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nstages: [1, 2\n")  # the list is never closed: the parser fails at line 3
    with pytest.raises(ValueError) as info:
        ModelSpec.load(bad)
    message = str(info.value)
    assert str(bad) in message and "line 3, column 1" in message
    assert "<unicode string>" not in message and "\n" not in message
