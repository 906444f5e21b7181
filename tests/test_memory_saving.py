"""The lean training path: memory-saving BN+activation and SE-gate ops (effnet.layers.activations)
and activation checkpointing (EfficientNet.set_grad_checkpointing), checked against the plain
model: the same loss, gradients and BatchNorm statistics, fewer bytes saved for backward (by hand
counts), and untouched evaluation, scripting and export."""

from __future__ import annotations

import copy
import gc
import io
import logging
import weakref

import pytest
import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from effnet import create_model
from effnet.layers import ConvBnAct, MBConv, SqueezeExcite, activations
from effnet.layers.activations import (
    memory_efficient,
    memory_efficient_enabled,
    observing_saved_tensors,
    recompute_activations,
    set_memory_efficient,
)
from effnet.model import build
from effnet.profile.measure import saved_activation_bytes
from effnet.registry import get_spec
from effnet.scaling import scale
from effnet.train import run_trial

F32 = 4  # bytes


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one thread is as fast, and on a busy machine far faster (no spin-waiting
    for a pre-empted sibling thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def saved_bytes(module: nn.Module, *inputs: torch.Tensor, recompute: bool = False) -> int:
    """Bytes of the distinct tensors autograd saves for backward in one forward of ``module``,
    parameters and buffers (running statistics) excluded, deduplicated by storage. Counted by a
    saved-tensor hook of this test's own (effnet's recomputation then stands aside, as for any
    hook of a user's), or, ``recompute=True``, by ``observing_saved_tensors`` around ``recompute_activations``:
    what is saved with the recomputation on."""
    skip = {t.untyped_storage().data_ptr() for t in (*module.parameters(), *module.buffers())}
    seen: dict[int, int] = {}

    def observe(t: torch.Tensor) -> None:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in skip:
            seen[ptr] = t.untyped_storage().nbytes()

    def pack(t: torch.Tensor) -> torch.Tensor:
        observe(t)
        return t

    if recompute:
        with observing_saved_tensors(observe), recompute_activations() as on:
            assert on
            out = module(*inputs)  # alive until counted: no saved storage is freed and reused
    else:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = module(*inputs)
    total = sum(seen.values())
    del out
    return total


def _models() -> dict[str, nn.Module]:
    """B0 (SiLU + SE), a small V2-S (Fused-MBConv), Lite0 (ReLU6, no SE), ResNet-18 (ReLU),
    all with stochastic depth on."""
    torch.manual_seed(0)
    v2s_small = scale(get_spec("efficientnetv2_s"), width=0.25, depth=0.25)
    return {
        "b0": create_model("efficientnet_b0", drop_path_rate=0.3, num_classes=10),
        "v2s_small": build(v2s_small.replace(drop_path_rate=0.3, num_classes=10)),
        "lite0": create_model("efficientnet_lite0", drop_path_rate=0.3, num_classes=10),
        "resnet18": create_model("resnet18", drop_path_rate=0.3, num_classes=10),
    }


MODELS = _models()


def _step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, lean: bool, checkpointing: bool):
    """One training forward/backward of a copy; its loss, gradients and buffers."""
    model = copy.deepcopy(model).train()
    model.set_grad_checkpointing(checkpointing)
    with memory_efficient(lean):
        torch.manual_seed(1)  # the same dropout and drop-path draws in every variant
        loss = F.cross_entropy(model(x), y)
        loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    return loss.detach(), grads, dict(model.named_buffers())


@pytest.mark.parametrize(("name", "channels_last"), [(name, False) for name in MODELS] + [("b0", True)])
def test_gradients_and_bn_statistics_equal_the_plain_model(name, channels_last):
    # float64: the lean ops regroup sums (matmuls for conv, blocks of the depthwise weight
    # gradient), and float32 rounding, amplified by BatchNorm over 4 values at the 1x1 maps of a
    # 32 px input, would swamp the comparison; in float64 it stays ~1e-12.
    model = copy.deepcopy(MODELS[name]).double()
    torch.manual_seed(2)
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)  # (B, C, H, W): the smallest input, to keep the test fast
    y = torch.randint(0, 10, (4,))
    if channels_last:
        model = copy.deepcopy(model).to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    loss0, grads0, bufs0 = _step(model, x, y, lean=False, checkpointing=False)
    assert all(g is not None for g in grads0.values())
    for lean, checkpointing in [(True, False), (False, True), (True, True)]:
        loss, grads, bufs = _step(model, x, y, lean=lean, checkpointing=checkpointing)
        torch.testing.assert_close(loss, loss0, rtol=1e-12, atol=0)
        # Relative to the tensor's largest gradient, or to 1e-3 of the model's largest where that
        # is smaller: BN biases followed (through linear ops) by another BN have a gradient that
        # is 0 in exact arithmetic, i.e. rounding noise, which any regrouped sum changes entirely.
        top = max(g.abs().max() for g in grads0.values())
        for k, g0 in grads0.items():
            err = (grads[k] - g0).abs().max() / torch.maximum(g0.abs().max(), 1e-3 * top)
            assert err < 1e-9, (name, lean, checkpointing, k, err.item())
        # Running mean/var updated once (not again by the recomputation), batches counted once.
        for k, b0 in bufs0.items():
            torch.testing.assert_close(bufs[k], b0, rtol=1e-12, atol=1e-12, msg=f"{name} {k}")
    # One step did move the statistics, so the comparison above means something.
    fresh = dict(model.named_buffers())
    assert any(not torch.equal(fresh[k], v) for k, v in bufs0.items() if k.endswith("running_mean"))


@pytest.mark.parametrize("act", [nn.SiLU(), nn.Hardswish(), nn.GELU(), nn.GELU(approximate="tanh")],
                         ids=["silu", "hardswish", "gelu", "gelu_tanh"])
@pytest.mark.parametrize("input_grad", [True, False], ids=["input_grad", "frozen_input"])
@pytest.mark.parametrize("saved", ["output", "output_over_input", "input"])
def test_batch_norm_act_gradients_equal_the_modules(act, input_grad, saved):
    # Every activation the fused op accepts (the zoo's models use SiLU only), with and without an
    # input gradient (a frozen conv below), against nn.BatchNorm2d + the activation module run by
    # autograd, in float64. The fused backward writes its three results over one buffer, so the
    # input gradient must still match element for element, in both memory layouts. Each way the
    # op can run: saving the BN output (the activation written to a new tensor, or over the input
    # as ConvBnAct asks), or, where one channel's scale is too small against its shift to recover
    # the normalised input from the output, saving the input.
    from effnet.layers.activations import batch_norm_act

    for fmt in (torch.contiguous_format, torch.channels_last):
        torch.manual_seed(3)
        bn = nn.BatchNorm2d(6).double().train()
        nn.init.uniform_(bn.weight, 0.5, 1.5)
        nn.init.normal_(bn.bias)
        if saved == "input":
            with torch.no_grad():
                bn.weight[2], bn.bias[2] = 0.01, 1.0  # 100x: beyond the 64x the output path takes
        x0 = (torch.randn(3, 6, 5, 7, dtype=torch.float64) * 2 + 1).contiguous(memory_format=fmt)
        g = torch.randn(3, 6, 5, 7, dtype=torch.float64).contiguous(memory_format=fmt)
        results = []
        for fused in (False, True):
            layer = copy.deepcopy(bn)
            x = x0.clone().requires_grad_(input_grad)
            if fused:
                h = x * 1.0  # a tensor of the layer's own, as a conv output is
                out = batch_norm_act(h, layer, act, scratch=saved == "output_over_input")
                # Written over its input exactly when asked to and the output is what is saved.
                assert (out.data_ptr() == h.data_ptr()) == (saved == "output_over_input")
            else:
                out = act(layer(x))
            assert out is not None
            out.backward(g)
            results.append((x.grad, layer.weight.grad, layer.bias.grad, layer.running_mean, layer.running_var))
        for got, want in zip(results[1], results[0]):
            if want is None:
                assert got is None
            else:
                torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
        assert (results[1][0] is not None) == input_grad


def test_bn_act_float32_gradients_stay_as_close_to_float64_as_the_plain_ops():
    # The lean op runs BN's backward on its saved output, recovering the normalised input as
    # (z - b) / w: float32 rounding of z is then divided by w. With trained-like BN parameters
    # (|b / w| up to ~30, under the 64x where it falls back to saving the input), its gradients'
    # error against a float64 computation of the plain ops is of the plain float32 ops' order.
    from effnet.layers.activations import batch_norm_act

    torch.manual_seed(4)
    bn = nn.BatchNorm2d(32).train()
    with torch.no_grad():
        bn.weight.uniform_(0.2, 3.0)
        bn.bias.normal_(0.0, 2.0)
    assert (bn.bias.abs() / bn.weight.abs()).max() < 64
    x64 = torch.randn(8, 32, 14, 14, dtype=torch.float64) * 3 + 1
    g64 = torch.randn_like(x64)

    def grads(dtype: torch.dtype, lean: bool) -> list[torch.Tensor]:
        layer = copy.deepcopy(bn).to(dtype)
        x = x64.to(dtype).clone().requires_grad_()
        h = x * 1.0
        out = batch_norm_act(h, layer, nn.SiLU()) if lean else F.silu(layer(h))
        out.backward(g64.to(dtype))
        return [t.double() for t in (x.grad, layer.weight.grad, layer.bias.grad)]

    truth, plain, lean = grads(torch.float64, False), grads(torch.float32, False), grads(torch.float32, True)
    for name, t, p32, l32 in zip(("input", "weight", "bias"), truth, plain, lean):
        top = t.abs().max()
        err_plain, err_lean = ((p32 - t).abs().max() / top).item(), ((l32 - t).abs().max() / top).item()
        # measured: input 2.7e-7 (plain 2.7e-7), weight 2.9e-7 (2.1e-7), bias 1.1e-7 (1.1e-7)
        assert err_lean < 1e-6 and err_lean < 4 * err_plain + 1e-7, (name, err_lean, err_plain)


class _KeepingConv(nn.Conv2d):
    """A user's conv that keeps its last output (as a cache or a feature tap would)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.last = super().forward(x)
        return self.last


@pytest.mark.parametrize("watcher", ["hook_on_conv", "global_hook", "user_conv"])
def test_whoever_keeps_the_conv_output_sees_the_conv_output(watcher):
    # ConvBnAct lets the lean op write the activation over the conv output, which nothing else
    # reads; a hook on the conv or on every module, or a conv of the user's own, may keep it, and
    # must then see the conv's output, not the activation's.
    torch.manual_seed(5)
    layer = ConvBnAct(8, 16, 3, act="silu").train()
    kept: list[torch.Tensor] = []
    handle = None
    if watcher == "hook_on_conv":
        handle = layer.conv.register_forward_hook(lambda module, args, out: kept.append(out))
    elif watcher == "global_hook":
        handle = nn.modules.module.register_module_forward_hook(
            lambda module, args, out: kept.append(out) if module is layer.conv else None)
    else:
        user = _KeepingConv(8, 16, 3, padding=1, bias=False)
        user.load_state_dict(layer.conv.state_dict())
        layer.conv = user
    x = torch.randn(2, 8, 9, 9)
    try:
        y = layer(x)
    finally:
        if handle is not None:
            handle.remove()
    out = kept[0] if kept else layer.conv.last
    torch.testing.assert_close(out, F.conv2d(x, layer.conv.weight, padding=1))
    torch.testing.assert_close(y, F.silu(copy.deepcopy(layer.bn)(out)))  # batch statistics again


def test_a_hook_on_a_depthwise_conv_runs_in_training():
    # The 5x5 depthwise conv trains through effnet.layers.depthwise, which does not call the
    # conv module; with a hook on it, the module runs, so the hook sees its input and output.
    torch.manual_seed(6)
    layer = ConvBnAct(8, 8, 5, groups=8, act="silu").train()
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    layer.conv.register_forward_hook(lambda module, args, out: seen.append((args[0], out)))
    x = torch.randn(2, 8, 9, 9)
    layer(x).sum().backward()
    assert len(seen) == 1 and seen[0][0] is x
    torch.testing.assert_close(seen[0][1], F.conv2d(x, layer.conv.weight, padding=2, groups=8))


def test_bn_silu_saves_one_tensor_fewer_by_hand_count():
    # conv 1x1 8 -> 16 on (2, 8, 5, 5). Plain: the conv input (2*8*25 floats), the conv output
    # for BN (2*16*25), a copy of the BN output for the in-place SiLU (2*16*25), and the batch
    # mean and 1/std (16 each). Lean: the conv input, the BN output (SiLU's backward needs it,
    # BN's runs on it) and 1/std: one (2, 16, 5, 5) and the mean fewer.
    layer = ConvBnAct(8, 16, 1, act="silu").train()
    x = torch.randn(2, 8, 5, 5)
    with memory_efficient(False):
        plain = saved_bytes(layer, x)
    with memory_efficient(True):
        lean = saved_bytes(layer, x)
    assert plain == (2 * 8 * 25 + 2 * 2 * 16 * 25 + 2 * 16) * F32
    assert lean == (2 * 8 * 25 + 2 * 16 * 25 + 16) * F32
    # A scale too small against its shift to recover the normalised input from the BN output:
    # the conv output and both statistics are saved instead (the same count of full tensors).
    with torch.no_grad():
        layer.bn.weight[3] = 1e-3
        layer.bn.bias[3] = 1.0
    with memory_efficient(True):
        assert saved_bytes(layer, x) == (2 * 8 * 25 + 2 * 16 * 25 + 2 * 16) * F32


def test_mbconv_saves_the_bn_copies_and_the_se_product_no_more():
    # MBConv 8 -> 8, expand 6 (48 channels), 3x3 stride 1 on (2, 8, 5, 5): the plain block keeps
    # three (2, 48, 5, 5) tensors that the lean one recomputes: the BN output copies of the
    # expand and depthwise convs' SiLUs, and the SE product x * gate that the projection conv
    # saves; and those two BNs' batch means (48 each), which the lean backward does not need.
    # Everything else (the small SE tensors included) is the same.
    block = MBConv(8, 8, kernel=3, stride=1, expand=6, se=0.25).train()
    x = torch.randn(2, 8, 5, 5)
    with memory_efficient(False):
        plain = saved_bytes(block, x)
    with memory_efficient(True):
        lean = saved_bytes(block, x)
    assert plain - lean == (3 * 2 * 48 * 5 * 5 + 2 * 48) * F32


def test_recomputing_drops_the_activations_that_the_next_ops_save():
    # The same MBConv (48 channels on (2, 8, 5, 5)): under recompute_activations the expand
    # SiLU's output (which the depthwise conv saves) and the depthwise SiLU's output (which the
    # SE-gated projection saves) are kept as the BN outputs they come from, already saved by
    # their BN + SiLU: two (2, 48, 5, 5) tensors fewer, nothing else changed.
    block = MBConv(8, 8, kernel=3, stride=1, expand=6, se=0.25).train()
    x = torch.randn(2, 8, 5, 5)
    assert saved_bytes(block, x) - saved_bytes(block, x, recompute=True) == 2 * 2 * 48 * 5 * 5 * F32


def test_b0_recomputes_one_expanded_activation_per_conv_and_the_stem_output():
    # Per MBConv of B0: the depthwise conv's input (the expansion's SiLU output; in the first
    # block, expand 1, the stem's) and the depthwise conv's SiLU output, by hand from the shapes.
    model = copy.deepcopy(MODELS["b0"]).train()
    x = torch.randn(2, 3, 64, 64)
    shapes: list[torch.Size] = []
    hooks = [m.conv_dw.register_forward_hook(lambda mod, inp, out: shapes.extend([inp[0].shape, out.shape]))
             for m in model.modules() if isinstance(m, MBConv)]
    recomputing = saved_bytes(model, x, recompute=True)
    for h in hooks:
        h.remove()
    kept = saved_bytes(model, x)  # under a hook of the test's own: nothing recomputed
    assert len(shapes) == 2 * 16  # B0's 16 blocks
    assert kept - recomputing == sum(s.numel() for s in shapes) * F32


@pytest.mark.parametrize("outer", ["counting_hook", "save_on_cpu", "checkpoint_whole_model", "checkpoint_blocks"])
def test_other_saved_tensor_hooks_decide_and_the_gradients_stay_exact(outer):
    # Where a user's saved-tensor hooks are active (a profiler, offloading, torch.utils.checkpoint
    # around the model or around each block, as FSDP's activation checkpointing does), they decide
    # what is kept: the recomputation stands aside inside them and notes nothing there (a
    # reference to a BN output would keep what a checkpoint frees). Gradients: the plain ops'.
    model = copy.deepcopy(MODELS["b0"]).train().double()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    y = torch.randint(0, 10, (2,))
    calls = {"pack": 0, "unpack": 0}

    def pack(t: torch.Tensor) -> tuple[str, torch.Tensor]:
        calls["pack"] += 1
        return ("outer", t)

    def unpack(p: tuple[str, torch.Tensor]) -> torch.Tensor:
        assert p[0] == "outer"
        calls["unpack"] += 1
        return p[1]

    class Checkpointed(nn.Module):
        def __init__(self, block: nn.Module) -> None:
            super().__init__()
            self.block = block

        def forward(self, inp: torch.Tensor) -> torch.Tensor:
            return torch.utils.checkpoint.checkpoint(self.block, inp, use_reentrant=False)

    noted: list[int] = []

    def grads(lean: bool) -> list[torch.Tensor]:
        m = copy.deepcopy(model)
        if lean and outer == "checkpoint_blocks":
            for stage in m.stages:
                for i in range(len(stage)):
                    stage[i] = Checkpointed(stage[i])
            m.head.register_forward_hook(lambda *_: noted.append(len(activations._RECORDER.table or {})))
        torch.manual_seed(1)  # the same dropout and drop-path draws
        with memory_efficient(lean):
            if not lean or outer == "checkpoint_blocks":
                F.cross_entropy(m(x), y).backward()
            elif outer == "counting_hook":
                with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
                    F.cross_entropy(m(x), y).backward()
            elif outer == "save_on_cpu":
                with torch.autograd.graph.save_on_cpu():
                    F.cross_entropy(m(x), y).backward()
            else:
                F.cross_entropy(torch.utils.checkpoint.checkpoint(m, x, use_reentrant=False), y).backward()
        return [p.grad for p in m.parameters()]

    plain = grads(False)
    top = max(g.abs().max() for g in plain)
    for g, g0 in zip(grads(True), plain):
        assert ((g - g0).abs().max() / torch.maximum(g0.abs().max(), 1e-3 * top)) < 1e-9
    if outer == "counting_hook":
        assert calls["pack"] > 100 and calls["unpack"] == calls["pack"]
    if outer == "checkpoint_blocks":
        # Outside the blocks only the stem's and the head's outputs are noted.
        assert noted == [2]


def test_profile_counts_what_training_keeps():
    # effnet.profile's count of saved activations follows the model: the recomputed activations
    # are not counted in a default training forward, and with the model's own checkpointing (where
    # training recomputes nothing of this kind) it counts what a plain hook sees.
    model = copy.deepcopy(MODELS["b0"]).train()
    x = torch.randn(2, 3, 64, 64)
    params = [*model.parameters(), *model.buffers()]  # as saved_bytes counts (BN's running statistics)
    assert saved_activation_bytes(lambda: model(x), params) == saved_bytes(model, x, recompute=True)
    assert saved_bytes(model, x, recompute=True) < saved_bytes(model, x)
    model.set_grad_checkpointing(True)
    assert saved_activation_bytes(lambda: model(x), params) == saved_bytes(model, x)


def test_a_forward_never_backwarded_leaves_no_graph_behind():
    # A skipped non-finite loss, an exception after the forward: with the hooks of the training
    # forward active, the graph must still be freed (a saved tensor that is its own op's output
    # would otherwise form a reference cycle with its graph).
    model = copy.deepcopy(MODELS["b0"]).train()
    x = torch.randn(2, 3, 64, 64)
    refs: list[weakref.ref] = []
    model.stages[3][0].register_forward_hook(lambda mod, inp, out: refs.append(weakref.ref(out)))
    for _ in range(3):
        loss = F.cross_entropy(model(x), torch.tensor([1, 2]))
        del loss
    gc.collect()
    assert len(refs) == 3 and all(r() is None for r in refs)


def test_an_in_place_edit_of_a_saved_tensor_is_still_refused():
    # Autograd checks a saved tensor's version only when no hook packs it; effnet's hooks check it
    # themselves, so an in-place edit after saving still fails loudly instead of a wrong gradient.
    model = copy.deepcopy(MODELS["b0"]).train()

    def edit_input(mod: nn.Module, inp: tuple[torch.Tensor], out: torch.Tensor) -> None:
        inp[0].mul_(0.5)  # the block's input, which its expansion conv saved

    model.stages[4][1].register_forward_hook(edit_input)
    with pytest.raises(RuntimeError, match="in-place"):
        model(torch.randn(2, 3, 64, 64)).sum().backward()


def test_relu_models_are_already_lean_and_checkpointing_cuts_the_rest():
    x = torch.randn(2, 3, 64, 64)
    for name in ("b0", "lite0", "resnet18"):
        model = copy.deepcopy(MODELS[name]).train()
        with memory_efficient(False):
            plain = saved_bytes(model, x)
        with memory_efficient(True):
            lean = saved_bytes(model, x)
            model.set_grad_checkpointing(True)
            checkpointed = saved_bytes(model, x)
        if name == "b0":
            assert lean < 0.7 * plain  # measured 0.62 at 128 px
            assert checkpointed < 0.35 * lean  # measured 0.12 at 128 px: the blocks' inputs, stem, head
        else:
            # In-place ReLU/ReLU6 after BN save their output, which the next conv keeps anyway:
            # nothing to recompute, and the lean path leaves them alone.
            assert lean == plain
            # The stem (and ResNet's max pool) at 32x32 is a large share at this input size.
            assert checkpointed < 0.75 * lean


def test_evaluation_output_is_unchanged():
    x = torch.randn(2, 3, 64, 64)
    for name, model in MODELS.items():
        model = copy.deepcopy(model).eval()
        with memory_efficient(False), torch.no_grad():
            ref = model(x)
        model.set_grad_checkpointing(True)
        with memory_efficient(True):
            out = model(x)  # grad enabled, eval mode: the plain ops
            with torch.no_grad():
                out_ng = model(x)
        assert torch.equal(out, ref) and torch.equal(out_ng, ref), name


def test_training_forward_without_grad_uses_the_plain_ops():
    model = copy.deepcopy(MODELS["b0"]).train()
    model.set_grad_checkpointing(True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.manual_seed(0)
        out = model(x)
    assert out.grad_fn is None


@pytest.mark.parametrize("name", ["b0", "v2s_small"])
def test_scripting_and_onnx_export_still_work(name):
    model = copy.deepcopy(MODELS[name]).eval()
    model.set_grad_checkpointing(True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        scripted = torch.jit.script(model)
        torch.testing.assert_close(scripted(x), ref, rtol=1e-5, atol=1e-5)
    buf = io.BytesIO()
    torch.onnx.export(model, (x,), buf, dynamo=False, input_names=["x"], output_names=["logits"])
    import onnxruntime as ort

    session = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    out = session.run(None, {"x": x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(out), ref, rtol=1e-4, atol=1e-4)


def test_tracing_a_training_model_records_no_python_functions():
    # A custom autograd function would appear as prim::PythonOp and break the traced graph.
    model = copy.deepcopy(MODELS["b0"]).train()
    model.set_grad_checkpointing(True)
    traced = torch.jit.trace(model, torch.randn(2, 3, 64, 64), check_trace=False)
    assert "PythonOp" not in str(traced.inlined_graph)


def test_torch_compile_traces_the_plain_ops():
    # fullgraph: any graph break (an opaque Python function) would raise.
    layer = ConvBnAct(8, 16, 3, act="silu").train()
    ref_layer = copy.deepcopy(layer)
    compiled = torch.compile(layer, backend="eager", fullgraph=True)
    x = torch.randn(2, 8, 9, 9)
    out = compiled(x)
    with memory_efficient(False):
        ref = ref_layer(x)
    torch.testing.assert_close(out, ref)
    out.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(layer.conv.weight.grad, ref_layer.conv.weight.grad)


def test_switches():
    assert memory_efficient_enabled()  # on by default
    with memory_efficient(False):
        assert not memory_efficient_enabled()
    assert memory_efficient_enabled()
    with pytest.raises(ValueError, match="expected True or False"):
        set_memory_efficient("yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="expected True or False"):
        MODELS["b0"].set_grad_checkpointing(1)  # type: ignore[arg-type]
    se = SqueezeExcite(8, 2)
    x = torch.randn(2, 8, 3, 3)
    torch.testing.assert_close(se(x), x * torch.sigmoid(se.expand(F.silu(se.reduce(x.mean((2, 3), keepdim=True))))))


def test_training_with_memory_saving_matches_the_plain_run(caplog):
    # The digits recipe on a tiny B0, one epoch; checkpointing recomputes the same numbers, so
    # the run's metrics equal those of the run without it.
    candidate = scale(get_spec("efficientnet_b0"), width=0.5, depth=0.25).replace(resolution=32)
    budget = dict(epochs=1, train_subset=96, batch_size=32, threads=1, seed=3)
    plain = run_trial(candidate, **budget)
    with caplog.at_level(logging.INFO, logger="effnet.train"):
        saving = run_trial(candidate, memory_saving=True, **budget)
    assert "activation checkpointing" in caplog.text
    assert saving.epochs == 1
    assert saving.final_loss == pytest.approx(plain.final_loss, rel=1e-5)
    assert saving.final_top1 == plain.final_top1


@pytest.mark.slow
def test_compiled_checkpointed_training_matches_the_plain_model():
    # Under torch.compile checkpointing goes through the compiler's own recomputation (no custom
    # context); the BN statistics must still be updated once and the gradients be the plain ones.
    torch.manual_seed(0)
    spec = scale(get_spec("efficientnet_b0"), width=0.25, depth=0.1).replace(num_classes=10, drop_path_rate=0.0, dropout=0.0)
    model = build(spec).train()
    ref = copy.deepcopy(model)
    model.set_grad_checkpointing(True)
    x = torch.randn(4, 3, 32, 32)
    y = torch.randint(0, 10, (4,))
    F.cross_entropy(torch.compile(model, backend="aot_eager")(x), y).backward()
    with memory_efficient(False):
        F.cross_entropy(ref(x), y).backward()
    for (k, p), p0 in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, p0.grad, rtol=1e-7, atol=1e-8, msg=k)
    for (k, b), b0 in zip(model.named_buffers(), ref.buffers()):
        torch.testing.assert_close(b, b0, rtol=1e-7, atol=1e-8, msg=k)


def test_bf16_autocast_gradients_equal_the_plain_model():
    # Mixed precision: the fused ops must see and return the dtypes the plain ops do (bf16
    # activations, float32 BN statistics and weights).
    model = MODELS["b0"]
    torch.manual_seed(2)
    x = torch.randn(4, 3, 32, 32)
    y = torch.randint(0, 10, (4,))
    results = []
    for lean in (False, True):
        m = copy.deepcopy(model).train()
        with memory_efficient(lean), torch.autocast("cpu", dtype=torch.bfloat16):
            torch.manual_seed(1)
            logits = m(x)
        F.cross_entropy(logits.float(), y).backward()
        results.append((logits.float(), {n: p.grad for n, p in m.named_parameters()}))
    (out0, g0), (out1, g1) = results
    torch.testing.assert_close(out1, out0, rtol=0, atol=0)
    for k in g0:
        torch.testing.assert_close(g1[k], g0[k], rtol=1e-3, atol=1e-6, msg=k)


def test_whole_model_compiles_in_one_graph_for_training():
    # fullgraph: the model's training forward (input checks, the buffer pool's step, the
    # recomputation's switch) must hold no graph break; the compiled step runs the plain ops.
    torch.manual_seed(0)
    spec = scale(get_spec("efficientnet_b0"), width=0.25, depth=0.1).replace(num_classes=10, drop_path_rate=0.0, dropout=0.0)
    model = build(spec).train()
    ref = copy.deepcopy(model)
    x = torch.randn(2, 3, 32, 32)
    torch.compile(model, backend="eager", fullgraph=True)(x).sum().backward()
    with memory_efficient(False):
        ref(x).sum().backward()
    for (k, p), p0 in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, p0.grad, rtol=1e-4, atol=1e-6, msg=k)


def test_checkpointed_model_backwards_twice_with_retain_graph():
    # The block's recomputation context is entered once per backward: a second backward over a
    # retained graph must work (it raised on a generator context manager) and accumulate the same
    # gradients again, with the BN running statistics updated once, as the plain model's.
    torch.manual_seed(0)
    spec = scale(get_spec("efficientnet_b0"), width=0.25, depth=0.1).replace(num_classes=10, drop_path_rate=0.0, dropout=0.0)
    model = build(spec).double().train()  # float64: the comparison sees the gradients, not rounding
    ref = copy.deepcopy(model)
    model.set_grad_checkpointing(True)
    x, y = torch.randn(2, 3, 32, 32, dtype=torch.float64), torch.randint(0, 10, (2,))
    loss = F.cross_entropy(model(x), y)
    loss.backward(retain_graph=True)
    loss.backward()
    with memory_efficient(False):
        ref_loss = F.cross_entropy(ref(x), y)
        ref_loss.backward(retain_graph=True)
        ref_loss.backward()
    for (k, p), p0 in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, p0.grad, rtol=1e-7, atol=1e-8, msg=k)
    for (k, b), b0 in zip(model.named_buffers(), ref.buffers()):
        torch.testing.assert_close(b, b0, rtol=1e-7, atol=1e-8, msg=k)
