"""Scaling strategies: each rule against hand-computed multipliers and the
papers' statements, and each strategy's measured FLOPs against the multiple it aims at."""

import math

import pytest

from effnet.profile import count_flops
from effnet.scaling import (
    STRATEGIES,
    architecture_key,
    compound_phi_range,
    compound_scale,
    get_strategy,
    phi_range,
)
from effnet.specs import EFFICIENTNET_B0

B0 = EFFICIENTNET_B0
B0_REPEATS = [1, 2, 2, 3, 3, 4, 1]  # EfficientNet Table 1, stages 2-8
SQRT2 = 1.4142135623730951


# (depth, width, resolution px, predicted FLOPs ratio) for B0 (224 px), worked out by hand:
@pytest.mark.parametrize("name, phi, expected", [
    # width: w = 2^(1/2) = 1.41421; FLOPs ~ w^2 = 2
    ("width", 1, (1.0, SQRT2, 224, 2.0)),
    # depth: d = 2^1 = 2
    ("depth", 1, (2.0, 1.0, 224, 2.0)),
    # resolution: r = 2^(1/2); 224 * 1.41421 = 316.78 -> 317 px
    ("resolution", 1, (1.0, 1.0, 317, 2.0)),
    # compound (EfficientNet eq. 3): 1.2, 1.1, 224 * 1.15 = 257.6 -> 258; 1.2 * 1.1^2 * 1.15^2 = 1.92027
    ("compound", 1, (1.2, 1.1, 258, 1.92027)),
    # v2 below the cap is compound
    ("v2", 1, (1.2, 1.1, 258, 1.92027)),
    # fast (alpha 0.8), s = 2: d = 2^0.1 = 1.071773, w = 2^0.4 = 1.319508, 224 * 2^0.05 = 231.89 -> 232
    ("fast", 1, (1.071773, 1.319508, 232, 2.0)),
    # fast at phi = 2, s = 4: d = 4^0.1 = 1.148698, w = 4^0.4 = 1.741101, 224 * 4^0.05 = 240.07 -> 240
    ("fast", 2, (1.148698, 1.741101, 240, 4.0)),
    # tiny, s = 1/2: the width alone takes the cut, w = 0.5^(1/2) = 0.707107
    ("tiny", -1, (1.0, 0.707107, 224, 0.5)),
    # tiny, s = 1/4: w = 0.5, exactly the floor
    ("tiny", -2, (1.0, 0.5, 224, 0.25)),
    # tiny, s = 1/8: w stays 0.5, s' = (1/8) / 0.25 = 1/2: d = 0.5^(1/2) = 0.707107,
    # r = 0.5^(1/4) = 0.840896, 224 * 0.840896 = 188.36 -> 188
    ("tiny", -3, (0.707107, 0.5, 188, 0.125)),
])
def test_multipliers_match_hand_computation(name, phi, expected):
    m = get_strategy(name).multipliers(phi, 224)
    d, w, r, pred = expected
    assert m.depth == pytest.approx(d, rel=1e-5) and m.width == pytest.approx(w, rel=1e-5)
    assert m.resolution == r and m.flops_ratio_predicted == pytest.approx(pred, rel=1e-5)


def test_the_table_and_unknown_names():
    assert set(STRATEGIES) == {"width", "depth", "resolution", "compound", "v2", "fast", "tiny"}
    for s in STRATEGIES.values():
        assert s.source and s.formula and s.fn.__doc__ and s.rule.__doc__
    with pytest.raises(ValueError, match="unknown scaling strategy 'nope'") as e:
        get_strategy("nope")
    for name in STRATEGIES:
        assert name in str(e.value)
    with pytest.raises(ValueError, match="has no coefficient.*alpha, beta, gamma"):
        get_strategy("compound").apply(B0, 1, delta=2)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_phi_zero_is_the_base_and_scaling_is_pure(name):
    before = B0.to_json()
    same = get_strategy(name).apply(B0, 0)
    assert architecture_key(same) == architecture_key(B0)
    assert B0.to_json() == before


# Measured FLOPs at the phi whose intended multiple is 2 (tiny: 1/2). Tolerance 10%: channels
# round to multiples of 8 (a few % per layer, doubled in FLOPs by w^2), the input to whole pixels,
# and the stem, head and each stage's first block do not grow with depth. Measured on B0:
# width 1.93, depth 2.03, resolution 2.03, compound 2.05, v2 1.98, fast 2.03.
@pytest.mark.parametrize("name", ["width", "depth", "resolution", "compound", "v2", "fast"])
def test_measured_flops_double_at_phi_one(name):
    ratio = count_flops(get_strategy(name).apply(B0, 1)) / count_flops(B0)
    assert ratio == pytest.approx(2.0, rel=0.10)


def test_tiny_halves_flops_at_phi_minus_one():
    # 15%: shrinking, narrow layers round *up* (w = 0.707: stem 32 -> 22.6 -> 24; 40 -> 28.3 -> 32;
    # 16 -> 11.3 -> 8 would lose 29%, so the 10% rule keeps 16): measured 0.57x on B0.
    ratio = count_flops(get_strategy("tiny").apply(B0, -1)) / count_flops(B0)
    assert ratio == pytest.approx(0.5, rel=0.15) and ratio < 1


def test_v2_caps_resolution_and_deepens_only_later_stages():
    # phi = 8 on B0: 224 * 1.15^8 = 685.2 px -> capped at 480 (EfficientNetV2 section 3.3).
    # Depth 1.2^8 = 4.29982 only from stage index 4 on (rounded to nearest):
    # 3 * 4.29982 = 12.9 -> 13, 4 * 4.29982 = 17.2 -> 17, 1 * 4.29982 = 4.3 -> 4.
    s = get_strategy("v2").apply(B0, 8)
    assert s.resolution == 480 and get_strategy("v2").multipliers(8, 224).resolution == 480
    assert [st.repeats for st in s.stages] == B0_REPEATS[:4] + [13, 17, 4]
    assert get_strategy("compound").apply(B0, 8).resolution == 685  # compound has no cap


def test_tiny_refuses_to_grow():
    with pytest.raises(ValueError, match=r"only shrinks \(phi <= 0\), got phi=0.5.*'compound'"):
        get_strategy("tiny").apply(B0, 0.5)
    with pytest.raises(ValueError, match="width_floor"):
        get_strategy("tiny").apply(B0, -1, width_floor=0)


@pytest.mark.parametrize("phi", [-0.5, -1, -2])
def test_tiny_keeps_resolution_and_depth_while_width_is_above_the_floor(phi):
    # s = 2^phi >= 1/4, so w = s^(1/2) >= 0.5: width alone shrinks.
    s = get_strategy("tiny").apply(B0, phi)
    assert s.resolution == 224 and [st.repeats for st in s.stages] == B0_REPEATS
    assert s.head_channels < B0.head_channels  # 1280 * 2^(phi/2) rounded


def test_tiny_below_the_floor_shrinks_resolution_and_depth():
    # phi = -4, s = 1/16, s' = 1/4: d = 0.5, r = 224 * 0.25^(1/4) = 158.4 -> 158; width stays 0.5:
    # head 1280 * 0.5 = 640. Repeats round(n * 0.5), ties up: 1, 1, 1, 2, 2, 2, 1.
    s = get_strategy("tiny").apply(B0, -4)
    assert s.resolution == 158 and s.head_channels == 640
    assert [st.repeats for st in s.stages] == [1, 1, 1, 2, 2, 2, 1]


def test_fast_puts_most_growth_in_width():
    fast = get_strategy("fast")
    m = fast.multipliers(1, 224)
    # Shares of log(FLOPs) = log d + 2 log w + 2 log r (Dollar et al. Table 4: e_d, e_w, e_r).
    shares = [math.log(m.depth), 2 * math.log(m.width), 2 * math.log(m.resolution / 224)]
    assert shares[0] / math.log(2) == pytest.approx(0.1)
    assert shares[1] / math.log(2) == pytest.approx(0.8)
    assert shares[2] / math.log(2) == pytest.approx(0.1, abs=0.01)  # 232 px is rounded from 231.89
    c = get_strategy("compound").multipliers(1, 224)
    assert m.width > c.width and m.depth < c.depth and m.resolution < c.resolution
    # The paper's endpoints: alpha = 1 is width scaling, alpha = 1/3 uniform (d = w^2 = r^2).
    assert fast.multipliers(1, 224, alpha=1.0) == get_strategy("width").multipliers(1, 224)
    u = fast.multipliers(3, 224, alpha=1 / 3)
    assert u.depth == pytest.approx(u.width**2) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="alpha"):
        fast.apply(B0, 1, alpha=1.5)
    # The spec: the last stage widens 320 * 1.3195 = 422.2 -> 424, while no stage gains a block
    # (n * 1.0718 rounds back to n for B0's n <= 4) and the input grows 8 px.
    s = fast.apply(B0, 1)
    assert s.stages[-1].channels == 424 and s.num_blocks == B0.num_blocks and s.resolution == 232


def test_phi_range_per_strategy():
    assert phi_range(B0, "compound") == compound_phi_range(B0)
    # tiny: never above 0; its input stays >= 32 px while 224 * 2^((phi + 2) / 4) >= 31.5, i.e.
    # phi >= 4 * log2(31.5 / 224) - 2 = -13.3203 (truncated inwards: -13.32).
    assert phi_range(B0, "tiny") == (-13.32, 0.0)
    # depth: 16 * 2^phi blocks <= 1000 while phi <= log2(62.5) = 5.966 (blocks round per stage).
    low, high = phi_range(B0, "depth")
    assert high == pytest.approx(5.96, abs=0.05)


def test_the_phi_range_ends_where_scaling_itself_fails_and_bad_coefficients_are_refused():
    # gamma = 1 never shrinks the input, so downwards the depth multiplier 1.2^phi is what runs
    # out: it rounds to 0.0 once below half the smallest float64 (5e-324 / 2), where
    # compound_scale refuses.
    low, _ = compound_phi_range(B0, gamma=1.0)
    assert low == pytest.approx((math.log(5e-324) - math.log(2)) / math.log(1.2), abs=0.02)
    compound_scale(B0, low, gamma=1.0)
    with pytest.raises(ValueError, match="must be positive"):
        compound_scale(B0, low - 0.05, gamma=1.0)
    for bad, message in [({"alpha": 0}, "alpha must be positive"), ({"gamma": -1}, "gamma must be positive"),
                         ({"depth_rounding": "floor"}, "mode must be")]:
        with pytest.raises(ValueError, match=message):
            compound_phi_range(B0, **bad)
    with pytest.raises(ValueError, match="alpha must be positive"):
        phi_range(B0, "v2", alpha=0)
