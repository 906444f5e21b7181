"""The training buffers' pool (effnet.layers.buffers): the numbers are those of fresh buffers,
the buffers are reused from step to step, and nothing a user or autograd still holds is ever
handed out again."""

from __future__ import annotations

import copy
import mmap
import pickle
import sys

import pytest
import torch
from torch import nn

import effnet
from effnet.layers import ConvBnAct
from effnet.layers.buffers import _UNHELD, BufferPool, _holders

PAGE = mmap.PAGESIZE


def small_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    spec = effnet.scale(effnet.get_spec("efficientnet_b0"), width=0.5, depth=0.5)
    return effnet.build(spec.replace(num_classes=10, drop_path_rate=0.0, dropout=0.0)).train()


def without_pool(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, ConvBnAct):
            m.buffer_pool = None
    return model


def batches(n: int, size: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(size, 3, 64, 64, generator=gen), torch.randint(0, 10, (size,), generator=gen))
            for _ in range(n)]


def train(model: nn.Module, data: list[tuple[torch.Tensor, torch.Tensor]]) -> list[float]:
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for x, y in data:
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


@pytest.fixture(params=[True, False], ids=["pages-given-back", "pages-kept"])
def give_back(request, monkeypatch):
    # The pool gives pages back only where they are huge (the CLI's default); both ways are tested.
    monkeypatch.setattr(BufferPool, "gives_back_pages", request.param)
    return request.param


def test_training_with_the_pool_equals_training_with_fresh_buffers_bitwise(give_back):
    data = batches(4)
    pooled, fresh = small_model(), without_pool(small_model())
    assert train(pooled, data) == train(fresh, data)
    for (name, a), b in zip(pooled.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), name  # weights and BN running statistics


def test_the_buffers_of_one_step_are_those_of_the_next(give_back):
    model = small_model()
    data = batches(3)
    train(model, data[:1])
    first = {t.data_ptr() for bucket in model.buffer_pool._buckets.values() for t in bucket}
    assert len(first) == len(model.buffer_pool) > 0
    train(model, data[1:])
    now = {t.data_ptr() for bucket in model.buffer_pool._buckets.values() for t in bucket}
    assert now == first  # no buffer made after the first step


def test_a_gradient_a_hook_keeps_is_never_written_over(give_back):
    # The input gradient of a conv-BN-act's BN comes from the pool (a BN output whose layer is
    # done); a tensor hook that keeps it must find it unchanged after later steps.
    model = small_model()
    kept: list[tuple[torch.Tensor, torch.Tensor]] = []

    def keep_grad(module, inp, out):
        out.register_hook(lambda g: kept.append((g, g.clone())))

    for m in model.modules():
        if isinstance(m, ConvBnAct):
            m.conv.register_forward_hook(keep_grad)
    data = batches(3)
    train(model, data[:1])
    first = list(kept)
    assert len(first) > 10
    train(model, data[1:])
    assert all(torch.equal(g, copy_) for g, copy_ in first)


def test_saved_tensors_a_pack_hook_keeps_are_never_written_over(give_back):
    model = small_model()
    kept: list[tuple[torch.Tensor, torch.Tensor]] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        kept.append((t, t.detach().clone()))
        return t

    data = batches(3)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        train(model, data[:1])
    # Parameters and BN running statistics are saved too, and updated in place: left out.
    params = {p.data_ptr() for p in (*model.parameters(), *model.buffers())}
    first = [(t, copy_) for t, copy_ in kept if t.data_ptr() not in params]
    assert len(first) > 10
    train(model, data[1:])
    assert all(torch.equal(t, copy_) for t, copy_ in first)


def test_two_forwards_before_one_backward_give_the_gradients_of_fresh_buffers(give_back):
    (x1, y1), (x2, y2) = batches(2)
    grads = []
    for model in (small_model(), without_pool(small_model())):
        loss = nn.functional.cross_entropy(model(x1), y1) + nn.functional.cross_entropy(model(x2), y2)
        loss.backward()
        grads.append([p.grad for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*grads))


def pages_given_back(pool: BufferPool, kept: tuple, idle_only: bool = False) -> int:
    """Check that the whole pages inside every buffer of the pool (``idle_only``: every buffer
    nothing else holds), but those of shape ``kept``, read as zeros (given back), and those of
    ``kept`` do not; return their bytes."""
    total = 0
    for key, bucket in pool._buckets.items():
        for i in range(len(bucket)):
            if idle_only and _holders(bucket[i]) != _UNHELD:  # (before a local name holds it too)
                continue
            t = bucket[i]
            if key == kept:
                assert t.abs().sum() > 0
                continue
            start = -(-t.data_ptr() // PAGE) * PAGE
            end = (t.data_ptr() + t.nbytes) // PAGE * PAGE
            inside = t.view(-1)[(start - t.data_ptr()) // 4:(end - t.data_ptr()) // 4]
            assert inside.numel() > 0 and not inside.any(), key
            total += end - start
    return total


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pages are given back on Linux only")
@pytest.mark.parametrize("checkpointing", [False, True], ids=["default", "checkpointed-blocks"])
def test_the_backward_gives_back_the_pages_of_every_shape_but_the_first_layers(monkeypatch, checkpointing):
    # When the backward reaches the stem (its output's gradient is ready), every later layer is
    # done: the buffers of every shape but the stem's (the backward's last, the next forward's
    # first) are given back, their whole pages read as zeros; the stem's keep their numbers.
    # With checkpointed blocks (--memory-saving) each block's forward runs again inside the
    # backward and asks for its buffers again: the layers keep their places in the order. The
    # next step's numbers are checked by the bitwise test above.
    monkeypatch.setattr(BufferPool, "gives_back_pages", True)
    model = small_model()
    model.set_grad_checkpointing(checkpointing)
    x, y = batches(1)[0]
    stem_key = (tuple(model.stem.conv(x).shape), model.stem.conv(x).stride(), x.dtype)
    at_stem: list[int] = []

    def on_stem_output(module: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
        out.register_hook(lambda g: at_stem.append(pages_given_back(model.buffer_pool, stem_key)))

    model.stem.register_forward_hook(on_stem_output)
    train(model, [(x, y)])
    assert stem_key in model.buffer_pool._buckets and len(model.buffer_pool._buckets) > 3
    assert at_stem[0] == pages_given_back(model.buffer_pool, stem_key) == model.buffer_pool.pages_given_back > 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pages are given back on Linux only")
@pytest.mark.parametrize("between", ["second-forward", "no-grad-forward"])
def test_a_backward_after_another_forward_still_gives_back(monkeypatch, between):
    # Two forwards before one backward (two views, summed losses), or a training-mode forward
    # without grad between a forward and its backward (a pseudo-label pass): each graph's backward
    # still gives back every idle buffer but the stem's shape when it reaches the stem.
    monkeypatch.setattr(BufferPool, "gives_back_pages", True)
    model = small_model()
    (x1, y1), (x2, y2) = batches(2)
    stem_key = (tuple(model.stem.conv(x1).shape), model.stem.conv(x1).stride(), x1.dtype)
    at_stem: list[int] = []

    def on_stem_output(module: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
        if out.requires_grad:
            out.register_hook(lambda g: at_stem.append(pages_given_back(model.buffer_pool, stem_key, idle_only=True)))

    model.stem.register_forward_hook(on_stem_output)
    for _ in range(2):
        loss = nn.functional.cross_entropy(model(x1), y1)
        if between == "second-forward":
            loss = loss + nn.functional.cross_entropy(model(x2), y2)
        else:
            with torch.no_grad():
                model(x2)
        loss.backward()
        model.zero_grad()
    assert len(at_stem) == (4 if between == "second-forward" else 2) and all(n > 0 for n in at_stem)


def test_shapes_a_step_no_longer_uses_are_dropped_and_eval_empties_the_pool():
    model = small_model()
    train(model, batches(1, size=4))
    big = model.buffer_pool.nbytes
    train(model, batches(2, size=2))  # a smaller last batch: the batch-4 buffers go at the step after
    assert 0 < model.buffer_pool.nbytes == pytest.approx(big / 2, rel=0.01)
    model.eval()
    assert model.buffer_pool.nbytes == 0 and len(model.buffer_pool) == 0


def test_a_copy_of_the_model_gets_an_empty_pool_of_its_own():
    model = small_model()
    train(model, batches(1))
    for other in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert other.buffer_pool is not model.buffer_pool and len(other.buffer_pool) == 0
        assert all(m.buffer_pool is other.buffer_pool for m in other.modules() if isinstance(m, ConvBnAct))


def test_the_pool_hands_out_only_buffers_nothing_else_holds():
    pool = BufferPool()
    like = torch.empty(2, 3)
    a = pool.empty_like(like)
    assert pool.empty_like(like) is not a  # `a` is held here
    view = a.view(6)
    del a
    b = pool.empty_like(like)
    assert b.data_ptr() != view.data_ptr()  # a view keeps its storage in use
    del b, view
    c = pool.empty_like(like)
    assert len(pool) == 2 and any(c is t for bucket in pool._buckets.values() for t in bucket)
    assert pool.empty_like(like, keep=False) is not c and len(pool) == 2


def test_without_the_private_torch_queries_training_falls_back_to_the_plain_gradients():
    # The pool's reference counts (torch._C._storage_Use_Count) and the saved-tensor hooks' query
    # (torch._C._autograd._top_saved_tensors_default_hooks) are private: a PyTorch without them must
    # still train, the pool never reusing a buffer and no activation recomputed. Removed before
    # effnet is imported, in a fresh interpreter; the gradients are compared with the plain ops'.
    import subprocess

    code = """
import torch
del torch._C._storage_Use_Count
del torch._C._autograd._top_saved_tensors_default_hooks
import effnet
from effnet.layers import activations, buffers
from effnet.layers.activations import memory_efficient
assert buffers._UNHELD is None and activations._other_hooks_active()

def grads(lean):
    torch.manual_seed(0)
    model = effnet.create_model("tinynet_e", num_classes=5).double().train()  # float64: no rounding noise
    x, y = torch.randn(4, 3, 64, 64, dtype=torch.float64), torch.tensor([0, 1, 2, 3])
    with memory_efficient(lean):
        for _ in range(2):  # the second step would reuse the first one's buffers
            model.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
    return [p.grad for p in model.parameters()]

for a, b in zip(grads(True), grads(False)):
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
