"""The pipeline's evaluation: scoring a model on a labelled split (loss, top-1, top-5 and the
confusion matrix).

Used by training (validation after each epoch: ``effnet.train.loop.evaluate_epoch``) and by
:func:`effnet.train.evaluation.evaluate`; kept apart from ``evaluate`` so that training does not
load the inference paths (``effnet.deploy``) that ``effnet eval`` and ``effnet predict`` use.
"""

from __future__ import annotations

import torch
from torch import nn

from effnet.data import UNREADABLE, SkipLog, Split

__all__ = ["default_device", "score"]


def default_device(device: str = "auto") -> torch.device:
    """``auto``: the GPU when there is one, else the CPU; any other name as torch spells it."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@torch.no_grad()
def score(
    model: nn.Module, loader: torch.utils.data.DataLoader, normalize: nn.Module, device: torch.device,
    num_classes: int, split: Split | None = None, skips: SkipLog | None = None, channels_last: bool = False,
    autocast_dtype: torch.dtype | None = None, sharded: bool = False,
) -> tuple[float, float, float, torch.Tensor]:
    """``(loss, top1 %, top5 %, confusion (C, C))`` of ``model`` over ``loader``.

    ``sharded``: the loader holds this rank's share of the split (in a torch.distributed job);
    the plain sums are all-reduced over the ranks before they are divided, so every image
    counts once and every rank returns the same scores.
    """
    was_training = model.training
    model.eval()
    loss_sum, top1, top5, n = 0.0, 0, 0, 0
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    unreadable = SkipLog()  # this split's, for the error below; merged into ``skips``
    for images, labels, index in loader:
        bad = labels == UNREADABLE
        if bad.any():
            if split is not None:
                unreadable.add(split, index[bad].tolist())
            images, labels = images[~bad], labels[~bad]
            if len(labels) == 0:
                continue
        x = normalize(images.to(device, non_blocking=True))
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = labels.to(device)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            logits = model(x)
        logits = logits.float()
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").item()
        k = min(5, logits.shape[1])
        topk = logits.topk(k, dim=1).indices  # (B, k)
        top1 += (topk[:, 0] == y).sum().item()
        top5 += (topk == y[:, None]).any(dim=1).sum().item()
        n += len(y)
        confusion.index_put_((y.cpu(), topk[:, 0].cpu()), torch.ones(len(y), dtype=torch.long), accumulate=True)
    model.train(was_training)
    if skips is not None:
        skips.update(unreadable)
    if sharded:
        totals = torch.tensor([loss_sum, top1, top5, n], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(totals)
        loss_sum, top1, top5, n = totals[0].item(), totals[1].item(), totals[2].item(), int(totals[3].item())
        confusion = confusion.to(device)
        torch.distributed.all_reduce(confusion)
        confusion = confusion.cpu()
    if n == 0:
        if unreadable.skipped:
            raise ValueError(f"evaluation: no readable image in the split: {unreadable.summary()}")
        raise ValueError("evaluation: the split holds no images")
    return loss_sum / n, 100.0 * top1 / n, 100.0 * top5 / n, confusion
