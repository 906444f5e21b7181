import json

import pytest

from effnet.specs import EFFICIENTNET_B0, EFFICIENTNETV2_S, ModelSpec, StageSpec


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
    d = json.loads(EFFICIENTNET_B0.to_json())
    d["bogus"] = 1
    with pytest.raises(ValueError, match="bogus"):
        ModelSpec.from_dict(d)


def test_missing_spec_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="spec file not found"):
        ModelSpec.load(tmp_path / "nope.yaml")
