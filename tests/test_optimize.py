"""The fast inference path (effnet.deploy.optimize): static TF padding, BatchNorm folding and
``optimize`` give the unoptimised eval-mode model's outputs, on a copy, across the family."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import effnet
from effnet.deploy.optimize import fold_batchnorm, optimize, static_padding
from effnet.layers import Conv2dSame, SqueezeExcite

#: One of each kind: V1 with PyTorch and TF padding, V2 (Fused-MBConv), Lite (ReLU6, no SE),
#: EdgeTPU, the ResNet and MobileNetV2 baselines.
REPRESENTATIVE = [
    ("efficientnet_b0", {}, 64),
    ("efficientnet_b0", {"padding": "same"}, 72),
    ("efficientnetv2_b0", {}, 64),  # Fused-MBConv and MBConv, at a fraction of V2-S's cost
    ("efficientnet_lite0", {"padding": "same"}, 64),
    ("efficientnet_edgetpu_s", {}, 64),
    ("resnet18", {}, 64),
    ("mobilenet_v2", {}, 64),
]


def randomise_batchnorm(model: nn.Module, seed: int = 0, size: int = 64) -> nn.Module:
    """Non-trivial BatchNorm terms, so folding has real work to do: random affine weights, and
    running statistics estimated from random batches (purely random statistics make a deep
    network's activations explode, so the comparison would test float overflow, not folding)."""
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for m in bns:
            m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches below
        was_training = model.training
        model.train()
        for _ in range(2):
            model(torch.randn(4, 3, size, size, generator=g))
        model.train(was_training)
    for m in bns:
        m.momentum = 0.01
    assert all(not torch.allclose(m.running_var, torch.ones_like(m.running_var)) for m in bns)
    return model


def assert_close(out: torch.Tensor, ref: torch.Tensor, tol: float = 1e-4) -> None:
    """Within ``tol`` of the reference's scale: channels-last kernels sum in another order, so
    the float rounding grows with the magnitude of the values."""
    scale = max(1.0, ref.abs().max().item())
    err = (out - ref).abs().max().item()
    assert out.shape == ref.shape and err <= tol * scale, f"max error {err:.3g} > {tol} x {scale:.3g}"


@pytest.mark.parametrize(("name", "overrides", "size"), REPRESENTATIVE,
                         ids=[f"{n}-{o.get('padding', 'symmetric')}" for n, o, _ in REPRESENTATIVE])
def test_optimize_matches_the_eval_model(name: str, overrides: dict, size: int) -> None:
    torch.manual_seed(0)
    model = randomise_batchnorm(effnet.create_model(name, num_classes=10, **overrides)).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        ref = model(x)
        fast = optimize(model, x)
        out = fast(x)
        no_example = optimize(model)(x)
    assert_close(out, ref)
    assert_close(no_example, ref)
    # The copy is inference-only: no BatchNorm, no dynamic padding (given a size), no grads.
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    assert not any(type(m) is Conv2dSame for m in fast.modules())
    assert not fast.training and not any(p.requires_grad for p in fast.parameters())
    assert fast.num_features == model.num_features and fast.classifier.out_features == 10
    with torch.no_grad():
        assert_close(fast.forward_head(fast.forward_features(x), pre_logits=True),
                     model.forward_head(model.forward_features(x), pre_logits=True))


def test_optimize_does_not_touch_its_input() -> None:
    model = randomise_batchnorm(effnet.create_model("efficientnet_b0", num_classes=5, padding="same")).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modules = [type(m) for m in model.modules()]
    optimize(model, torch.randn(1, 3, 64, 64))
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert [type(m) for m in model.modules()] == modules
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("size", [31, 32, 33, 35, 64, 97])
@pytest.mark.parametrize(("kernel", "stride", "dilation"), [(3, 2, 1), (5, 2, 1), (3, 1, 2), (4, 2, 1), (1, 2, 1)])
def test_static_padding_is_exact_for_one_conv(size: int, kernel: int, stride: int, dilation: int) -> None:
    torch.manual_seed(0)
    same = Conv2dSame(3, 4, kernel, stride, dilation=dilation)
    x = torch.randn(1, 3, size, size + 2)  # non-square: rows and columns padded separately
    fixed = static_padding(nn.Sequential(same), (size, size + 2))
    assert not any(type(m) is Conv2dSame for m in fixed.modules())
    with torch.no_grad():
        out = fixed(x)
        torch.testing.assert_close(out, same(x), atol=0, rtol=0)
    # TF "SAME" by definition: output = ceil(input / stride) (tf.nn.conv2d documentation).
    assert out.shape[-2:] == (-(-size // stride), -(-(size + 2) // stride))


def test_static_padding_amounts_by_hand() -> None:
    # 3x3 stride 2 on 32 px: (16 - 1) * 2 + 3 - 32 = 1 pixel, all of it at the bottom/right (TF);
    # on 33 px: (17 - 1) * 2 + 3 - 33 = 2, one each side, so it becomes the conv's own padding.
    even = static_padding(nn.Sequential(Conv2dSame(3, 3, 3, 2)), 32)[0]
    odd = static_padding(nn.Sequential(Conv2dSame(3, 3, 3, 2)), 33)[0]
    assert isinstance(even.pad, nn.ZeroPad2d) and even.pad.padding == (0, 1, 0, 1) and even.conv.padding == (0, 0)
    assert type(odd) is nn.Conv2d and odd.padding == (1, 1)


@pytest.mark.parametrize("size", [65, 96, 99])
def test_static_padding_whole_model_at_odd_sizes(size: int) -> None:
    torch.manual_seed(0)
    model = effnet.create_model("efficientnet_b0", num_classes=3, padding="same").eval()
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(static_padding(model, size)(x), model(x), atol=0, rtol=0)


def test_fold_batchnorm_matches_hand_formula() -> None:
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 4, 3, padding=1, bias=True), nn.BatchNorm2d(4, eps=1e-3)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(4))
        bn.running_var.copy_(torch.rand(4) + 0.5)
        bn.weight.copy_(torch.rand(4) + 0.5)
        bn.bias.copy_(torch.randn(4))
    folded = fold_batchnorm(nn.Sequential(conv, bn))
    assert isinstance(folded[1], nn.Identity)
    # y = gamma * (W x + b - mean) / sqrt(var + eps) + beta, written out
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        by_hand = F.conv2d(x, conv.weight, conv.bias, padding=1)
        by_hand = (by_hand - bn.running_mean[:, None, None]) * scale[:, None, None] + bn.bias[:, None, None]
        torch.testing.assert_close(folded(x), by_hand, atol=1e-5, rtol=1e-5)


def test_fold_batchnorm_on_the_whole_model_with_random_statistics() -> None:
    torch.manual_seed(0)
    model = randomise_batchnorm(effnet.create_model("efficientnet_b0", num_classes=10)).train()
    folded = fold_batchnorm(model)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert_close(folded(x), model.eval()(x))
    assert not folded.training
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert all(m.bias is not None for m in folded.modules() if isinstance(m, nn.Conv2d))


def test_linear_squeeze_excite_matches() -> None:
    torch.manual_seed(0)
    model = effnet.create_model("efficientnet_b0", num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    fast = optimize(model, x, linear_se=True)
    assert not any(type(m) is SqueezeExcite for m in fast.modules())
    with torch.no_grad():
        assert_close(fast(x), model(x))


def test_optimize_is_the_package_front_door() -> None:
    """effnet.optimize is the runtime-aware front door; runtime="torch" (the default) is this
    module's optimize, every option passed through."""
    from effnet.deploy import runtime
    from effnet.deploy.optimize import TracedInference

    assert effnet.optimize is runtime.optimize
    model = effnet.create_model("efficientnet_b0", num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    assert isinstance(effnet.optimize(model, x), TracedInference)
    assert not isinstance(effnet.optimize(model, x, trace=False), TracedInference)
    with torch.no_grad():
        assert_close(effnet.optimize(model, x)(x), optimize(model, x)(x))
    with pytest.raises(ValueError, match="runtime='torch' only"):
        effnet.optimize(model, x, runtime="onnxruntime", trace=False)


def test_clear_errors() -> None:
    model = effnet.create_model("efficientnet_b0", num_classes=2)
    with pytest.raises(ValueError, match="expected an nn.Module"):
        optimize("efficientnet_b0")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"example_input must be an \(N, C, H, W\)"):
        optimize(model, torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match="only used with int8"):
        optimize(model, calibration=[torch.randn(1, 3, 64, 64)])
    with pytest.raises(ValueError, match="int8 and compile"):
        optimize(model, torch.randn(1, 3, 64, 64), int8=True, compile=True)
    with pytest.raises(ValueError, match="image_size"):
        static_padding(model, (64,))  # type: ignore[arg-type]


def test_traced_path_runs_other_batch_sizes_and_can_be_turned_off() -> None:
    """The trace made from a batch-1 example serves batch 3 with the eager model's outputs;
    ``trace=False`` returns the eager copy (what torch.export needs); bad combinations are refused."""
    from effnet.deploy.optimize import TracedInference

    torch.manual_seed(0)
    model = randomise_batchnorm(effnet.create_model("efficientnet_b0", num_classes=7, padding="same")).eval()
    fast = optimize(model, torch.randn(1, 3, 65, 65))
    eager = optimize(model, torch.randn(1, 3, 65, 65), trace=False)
    assert isinstance(fast, TracedInference) and not isinstance(eager, TracedInference)
    x = torch.randn(3, 3, 65, 65)
    with torch.no_grad():
        ref = model(x)
        assert_close(fast(x), ref)
        assert_close(eager(x), ref)
    assert fast.spec == model.spec and fast.num_features == model.num_features
    # a batch above micro_batch goes through the trace in chunks, comes back whole and in order
    calls = []
    fast.traced.register_forward_hook(lambda mod, args, out: calls.append(len(args[0])))
    x = torch.randn(9, 3, 65, 65)
    with torch.no_grad():
        assert_close(fast(x), model(x))
        assert calls == [4, 4, 1]
        fast.micro_batch = None
        calls.clear()
        fast(x)
        assert calls == [9]
    with pytest.raises(ValueError, match="trace=True needs an example_input"):
        optimize(model, trace=True)
