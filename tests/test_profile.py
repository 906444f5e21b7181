import json
import time

import pytest
import torch

import effnet
from effnet.cli import main
from effnet.profile import activation_memory, count_flops, count_params, latency, profile_model
from effnet.specs import ModelSpec, StageSpec

#: A network small enough to count by hand (in the test below).
TINY = ModelSpec(
    name="tiny",
    stages=(
        StageSpec(op="mbconv", repeats=1, kernel=3, stride=1, expand=2, channels=8, se=0.25),
        StageSpec(op="fused", repeats=1, kernel=3, stride=2, expand=4, channels=16),
    ),
    stem_channels=8, head_channels=32, resolution=32, num_classes=10,
)


def test_flops_and_params_of_a_tiny_spec_counted_by_hand():
    # Multiply-adds at 32 px (a k x k conv: out_h * out_w * out_ch * in_ch/groups * k * k):
    #   stem 3x3/2, 3 -> 8, 16x16 out:                     256 * 8 * 27   =  55,296
    #   MBConv e2: expand 1x1, 8 -> 16, 16x16:             256 * 16 * 8   =  32,768
    #     depthwise 3x3 on 16 channels:                    256 * 16 * 9   =  36,864
    #     SE on the pooled 1x1: 16 -> 2 -> 16 (0.25 of the
    #     block *input*, 8 channels; official code):       32 + 32        =      64
    #     project 1x1, 16 -> 8:                            256 * 8 * 16   =  32,768
    #   Fused e4, stride 2: 3x3 8 -> 32, 8x8 out:          64 * 32 * 72   = 147,456
    #     project 1x1, 32 -> 16:                           64 * 16 * 32   =  32,768
    #   head 1x1, 16 -> 32:                                64 * 32 * 16   =  32,768
    #   classifier 32 -> 10:                                                =     320
    assert count_flops(TINY) == (55_296 + 32_768 + 36_864 + 64 + 32_768 + 147_456 + 32_768
                                 + 32_768 + 320)
    # Parameters (convs have no bias before BatchNorm; BN has weight and bias):
    #   stem 216 + 16
    #   MBConv: expand 128 + 32, depthwise 144 + 32, SE (32 + 2) + (32 + 16), project 128 + 16
    #   fused 2304 + 64, project 512 + 32;  head 512 + 64;  classifier 320 + 10
    with torch.device("meta"):
        model = effnet.build(TINY)
    assert count_params(model) == 232 + 562 + 2_912 + 576 + 330
    assert count_flops(model.to_empty(device="cpu")) == count_flops(TINY)  # a module is counted as its spec


def test_flops_grow_with_resolution_squared():
    assert count_flops("efficientnet_b0", 448) / count_flops("efficientnet_b0", 224) == pytest.approx(4, rel=0.01)


def test_activation_memory_scales_with_batch_and_excludes_weights():
    model = effnet.create_model("efficientnet_b0")
    one = activation_memory(model, 64, batch=1)
    two = activation_memory(model, 64, batch=2)
    assert one > 0 and two == pytest.approx(2 * one, rel=0.05)
    params_bytes = sum(p.numel() * 4 for p in model.parameters())
    assert one < params_bytes  # at 64 px the activations are far smaller than the weights


def test_latency_and_profile():
    model = effnet.create_model("efficientnet_b0")
    before = torch.get_num_threads()
    assert latency(model, 64, runs=2, warmup=1, threads=1) > 0
    assert torch.get_num_threads() == before  # the measurement's thread count does not leak out
    p = profile_model("efficientnet_b0", 64, memory=True, timing=True, runs=2, threads=1)
    assert p.params == 5_288_548 and p.resolution == 64 and p.latency_ms > 0 and p.activation_bytes > 0
    assert p.threads == 1
    with pytest.raises(ValueError, match="resolution"):
        profile_model("efficientnet_b0", -1)


@pytest.mark.slow  # bounds a wall-clock time (the default suite has none); the refusal rule is in test_scaling
def test_scale_refuses_a_size_that_makes_no_sense_at_once(capsys):
    # A regression: `effnet scale --phi 60` built ~900,000 blocks to count them (> 5 minutes, no output).
    start = time.perf_counter()
    code = main(["scale", "--phi", "1", "60"])
    elapsed = time.perf_counter() - start
    err = capsys.readouterr().err
    assert code == 1 and elapsed < 10
    # B0 at phi 60: depth 1.2^60 = 56,348, width 1.1^60 = 304.5, 224 * 1.15^60 = 982,016 px,
    # predicted FLOPs (1.2 * 1.1^2 * 1.15^2)^60 = 1.920^60 = 1.0e17.
    for words in ("phi=60", "901,562 blocks", "389,736 channels", "982,016-px input",
                  "predicted FLOPs ratio 1e+17x", "Choose phi between -14.03 and 22.68"):
        assert words in err


# Multiply-adds of torchvision 0.28 / timm 1.0.31, counted on their own implementations (the
# parity record benchmarks/reference/2026-11-21_parity.json, also used by test_model.py).
PEER_COUNTS = {"efficientnet_b0": (5_288_548, 385_814_752), "efficientnetv2_b0": (7_139_704, 718_086_176),
               "efficientnet_l2": (480_309_308, 475_703_653_280)}


@pytest.mark.parametrize("name", ["efficientnet_b0", "efficientnetv2_b0", "tinynet_e", "mobilenet_v2"])
def test_meta_counts_equal_real_device_counts(name):
    p = profile_model(name, 96)  # counts only: meta device
    torch.manual_seed(0)
    real = effnet.create_model(name)  # real weights on the CPU, counted by running a real input
    assert p.params == count_params(real)
    assert p.flops == count_flops(real, 96)
    assert p.activation_bytes is None and p.latency_ms is None and p.threads is None
    if name in PEER_COUNTS:
        at_own = profile_model(name)
        assert (at_own.params, at_own.flops) == PEER_COUNTS[name]


@pytest.mark.slow  # every model; test_model counts each on the meta device, and L2 below shows no weight is built
def test_profile_counts_the_whole_registry_at_once_without_building_weights():
    from effnet.bench import peak_memory_bytes

    start = time.perf_counter()
    profiles = [profile_model(name) for name in effnet.list_models()]
    # Generous: on a shared 2-core machine the 35 models take ~10 s; building them for real
    # (the old behaviour) took most of a minute for B7 alone.
    assert time.perf_counter() - start < 60
    assert all(p.params > 0 and p.flops > 0 for p in profiles)
    # L2 has 480M parameters: 1.8 GiB as real float32 weights; counting must not allocate them.
    box = {}
    rise = peak_memory_bytes(lambda: box.setdefault("p", profile_model("efficientnet_l2")))
    assert rise < 200 * 2**20
    assert (box["p"].params, box["p"].flops) == PEER_COUNTS["efficientnet_l2"]


def test_profile_cli_counts_by_default_and_measures_on_request(capsys):
    assert main(["profile", "efficientnet_l2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["params"], out["flops"]) == PEER_COUNTS["efficientnet_l2"]
    assert out["latency_ms"] is None and out["activation_bytes"] is None
    assert main(["profile", "efficientnet_b0", "--resolution", "64", "--latency", "--memory", "--runs", "1",
                 "--threads", "1"]) == 0
    text = capsys.readouterr().out
    assert "5,288,548" in text and "CPU latency (batch 1, 1 threads)" in text and "activation memory" in text
    # the flags of the old default (measure everything) are still accepted
    assert main(["profile", "efficientnet_b0", "--no-latency", "--no-memory", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["params"] == 5_288_548
    assert main(["profile", "efficientnet_b0", "--latency", "--no-latency"]) == 1
    assert "--latency and --no-latency contradict" in capsys.readouterr().err


def _recount_params():
    """Every registered model; the big ones (>= 1G multiply-adds, seconds each) run with -m slow."""
    from effnet.profile.counts_table import COUNTS

    return [pytest.param(name, marks=[pytest.mark.slow] if COUNTS.get(name, (0, 0, 0))[2] >= 1e9 else [])
            for name in effnet.list_models()]


def test_stored_counts_cover_the_registry_and_agree_with_the_peers():
    from effnet.profile.counts import stored_counts
    from effnet.profile.counts_table import COUNTS

    assert sorted(COUNTS) == sorted(effnet.list_models()), "regenerate: python -m effnet.profile.counts"
    for name, (params, flops) in PEER_COUNTS.items():
        c = stored_counts(name)
        assert (c.params, c.flops) == (params, flops)
    assert stored_counts("no_such_model") is None


@pytest.mark.parametrize("name", _recount_params())
def test_stored_counts_equal_a_recount_on_the_meta_device(name):
    from effnet.profile.counts import stored_counts

    spec = effnet.get_spec(name)
    with torch.device("meta"):
        params = count_params(effnet.build(spec))
    stored = stored_counts(name)
    assert (stored.resolution, stored.params, stored.flops) == (spec.resolution, params, count_flops(spec)), \
        "the architecture changed: regenerate the table with python -m effnet.profile.counts"
