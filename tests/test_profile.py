import pytest
import torch

import effnet
from effnet.profile import activation_memory, count_flops, latency, profile_model


def test_flops_of_a_module_equal_flops_of_its_spec():
    model = effnet.create_model("efficientnet_b0")
    assert count_flops(model, 64) == count_flops("efficientnet_b0", 64)


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
    assert latency(model, 64, runs=2, warmup=1) > 0
    p = profile_model("efficientnet_b0", 64, runs=2)
    assert p.params == 5_288_548 and p.resolution == 64 and p.latency_ms > 0 and p.activation_bytes > 0
    with pytest.raises(ValueError, match="resolution"):
        profile_model("efficientnet_b0", -1)
    assert torch.get_num_threads() >= 1
