"""CUDA paths: mixed-precision training steps, NCCL data parallelism, CUDA SyncBatchNorm.

Marked ``gpu``: selected by default and skipped without CUDA (tests/conftest.py), so a machine
with a GPU runs them with the plain test command. Each compares the GPU result with an
independent reference (the fp32 step, the single-process run, plain BatchNorm) rather than
with itself.
"""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

import effnet

pytestmark = pytest.mark.gpu

#: As tests/test_train_ddp.py: nothing random between the data and the loss, so that 1 and N
#: processes see the same global batch and must give the same losses.
EXACT = dict(
    data="digits", model="efficientnet_b0", width=0.5, depth=0.25, image_size=32, crop_pct=1.0,
    interpolation="bilinear", crop_scale=[1.0, 1.0], hflip=False, autoaugment=False, dropout=0.0,
    drop_path_rate=0.0, bn_momentum=0.1, optimizer="adamw", lr_per_256=0.016, weight_decay=0.01,
    schedule="cosine", warmup_epochs=0.5, ema_decay=0.99, sync_bn=True, log_steps=True,
    epochs=1, train_subset=128, device="cuda", amp="off",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_mixed_precision_step_tracks_the_fp32_step(dtype: torch.dtype):
    """One forward/backward under autocast: the loss within 2% and the gradients pointing the
    same way (cosine > 0.99) as the same step in fp32 on the same weights and batch."""
    torch.manual_seed(0)
    model = effnet.build(effnet.scale(effnet.get_spec("efficientnet_b0"), width=0.5, depth=0.5).replace(num_classes=10)).cuda().train()
    x = torch.randn(8, 3, 64, 64, device="cuda")
    y = torch.randint(0, 10, (8,), device="cuda")
    state = {k: v.clone() for k, v in model.state_dict().items()}

    def step(amp: bool) -> tuple[float, torch.Tensor]:
        model.load_state_dict(state)
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=dtype, enabled=amp):
            logits = model(x)
        if amp:
            assert logits.dtype == dtype
        loss = nn.functional.cross_entropy(logits.float(), y)
        scale = 1024.0 if dtype == torch.float16 else 1.0  # fp16 gradients need loss scaling
        (loss * scale).backward()
        grads = torch.cat([p.grad.flatten() / scale for p in model.parameters() if p.grad is not None])
        return loss.item(), grads

    ref_loss, ref_grad = step(False)
    loss, grad = step(True)
    assert torch.isfinite(grad).all()
    assert abs(loss - ref_loss) / ref_loss < 0.02
    assert nn.functional.cosine_similarity(grad.float(), ref_grad, dim=0) > 0.99


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_training_run_in_mixed_precision(tmp_path: Path, amp: str):
    """The digits job for two epochs on the GPU in bf16/fp16 learns (well above the 10% of
    chance) and leaves a checkpoint that loads on the CPU."""
    from effnet.train import resolve_config, train

    cfg = resolve_config("digits", device="cuda", amp=amp, epochs=2, out=str(tmp_path / amp))
    result = train(cfg)
    assert result.final_top1 > 50.0, result.metrics
    model = effnet.load_model(tmp_path / amp / "last.safetensors")
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL data parallelism needs two GPUs")
def test_nccl_two_processes_match_one(tmp_path: Path):
    recipe = tmp_path / "exact.yaml"
    recipe.write_text(yaml.safe_dump(EXACT))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = [sys.executable, "-m", "effnet", "train", "--recipe", str(recipe), "--batch-size", "16",
           "--out", str(tmp_path / "one")]
    two = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           "-m", "effnet", "train", "--recipe", str(recipe), "--batch-size", "8", "--out", str(tmp_path / "two")]
    for cmd in (one, two):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "(nccl)" in proc.stderr
    a, b = csv_rows(tmp_path / "one" / "steps.csv"), csv_rows(tmp_path / "two" / "steps.csv")
    assert len(a) == len(b) == 8
    # cuDNN's kernels are not bitwise the same for batch 16 and 2 x 8: a looser bound than on CPU.
    assert max(abs(float(r["loss"]) - float(s["loss"])) for r, s in zip(a[:5], b[:5])) < 1e-3


def test_cuda_sync_batchnorm_equals_batchnorm_in_a_one_rank_group():
    """With one rank, SyncBatchNorm's statistics are the batch's own: outputs, input gradients
    and running statistics equal plain BatchNorm's."""
    import torch.distributed as dist

    from effnet.train.distributed import convert_sync_batchnorm

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ["MASTER_PORT"] = str(free_port())
    dist.init_process_group("nccl", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        plain = effnet.create_model("efficientnetv2_b0", num_classes=3).cuda().train()
        synced = convert_sync_batchnorm(effnet.create_model("efficientnetv2_b0", num_classes=3), torch.device("cuda"))
        synced.load_state_dict(plain.state_dict())
        synced = synced.cuda().train()
        assert any(isinstance(m, nn.SyncBatchNorm) for m in synced.modules())
        x = torch.randn(4, 3, 64, 64, device="cuda")
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = plain(xa), synced(xb)
        ya.sum().backward()
        yb.sum().backward()
        torch.testing.assert_close(yb, ya, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-3, atol=1e-4)
        torch.testing.assert_close(synced.stem.bn.running_var, plain.stem.bn.running_var)
    finally:
        dist.destroy_process_group()
