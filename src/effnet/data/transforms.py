"""Transforms: cheap, deterministic PIL work in the loader workers; random augmentation batched
on the training device with kornia.

Workers only decode, resize and crop to a fixed square (so samples batch together); the
random resized crop to the current (progressive) image size, flips, AutoAugment/RandAugment and
mixup/CutMix run afterwards on whole batches where the model runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image
from torch import nn

from effnet.preprocessing import resize_center_crop, to_uint8_tensor


@dataclass(frozen=True)
class LoadTransform:
    """Training decode: a fixed ``size`` square (shorter side resized, centre-cropped); the
    random crop to the stage's image size happens on the device."""

    size: int
    interpolation: str = "bilinear"

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return to_uint8_tensor(resize_center_crop(img, self.size, self.size, self.interpolation))


@dataclass(frozen=True)
class AugmentSettings:
    """The augmentation in force for one progressive stage."""

    image_size: int
    crop_scale: tuple[float, float] = (0.08, 1.0)
    hflip: bool = True
    autoaugment: bool = False
    randaugment_magnitude: float = 0.0  # 0 disables RandAugment
    randaugment_layers: int = 2
    mixup_alpha: float = 0.0  # 0 disables mixup
    cutmix_alpha: float = 0.0  # 0 disables CutMix


class TrainAugment(nn.Module):
    """Batched training augmentation with kornia, on the training device.

    ``forward(images uint8 (B, 3, S, S), labels (B,))`` returns float images in [0, 1] of the
    stage's size and a ``Targets`` for the loss (mixed when mixup/CutMix are on).
    """

    def __init__(self, s: AugmentSettings) -> None:
        super().__init__()
        import kornia.augmentation as K
        from kornia.augmentation.auto import AutoAugment, RandAugment

        self.settings = s
        # crop_scale (1, 1) turns the crop off (a plain resize): RandomResizedCrop would still
        # draw a random aspect ratio, and exact comparisons (e.g. 1 vs N processes) need none.
        crop = (K.Resize((s.image_size, s.image_size)) if tuple(s.crop_scale) == (1.0, 1.0)
                else K.RandomResizedCrop((s.image_size, s.image_size), scale=s.crop_scale))
        ops: list[nn.Module] = [crop]
        if s.hflip:
            ops.append(K.RandomHorizontalFlip())
        self.geometric = nn.Sequential(*ops)
        # AutoAugment (EfficientNet V1, ImageNet policy) or RandAugment (V2, magnitude grown by
        # progressive learning); kornia's magnitude scale is 0..30 like the paper's.
        self.policy: nn.Module | None = None
        if s.autoaugment:
            self.policy = AutoAugment("imagenet")
        elif s.randaugment_magnitude > 0:
            self.policy = RandAugment(n=s.randaugment_layers, m=int(round(s.randaugment_magnitude)))
        self.mixup = K.RandomMixUpV2(data_keys=["input", "class"]) if s.mixup_alpha > 0 else None
        self.cutmix = (K.RandomCutMixV2(beta=s.cutmix_alpha, data_keys=["input", "class"],
                                          use_correct_lambda=True)
                       if s.cutmix_alpha > 0 else None)

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, Targets]:
        x = self.geometric(images.float() / 255.0)  # (B, 3, size, size) in [0, 1]
        if self.policy is not None:
            x = self.policy(x).clamp_(0.0, 1.0)
        s = self.settings
        # One of mixup/CutMix per batch when both are on (as timm and the V2 code do).
        use_cutmix = self.cutmix is not None and (self.mixup is None or torch.rand(()) < 0.5)
        if use_cutmix:
            params = self.cutmix.forward_parameters(x.shape)  # type: ignore[union-attr]
            x, mixed = self.cutmix(x, labels, params=params)  # type: ignore[misc]
            mixed = mixed[0]  # (B, 3): label, partner label, area fraction of the *original* image
            # With use_correct_lambda kornia reports the share of the original image that is
            # kept; the partner's label is weighted by the pasted area, 1 minus that.
            return x, Targets(labels, mixed[:, 1].long(), 1.0 - mixed[:, 2].to(x))
        if self.mixup is not None:
            params = self.mixup.forward_parameters(x.shape)
            # mixup draws lambda ~ Beta(alpha, alpha) (Zhang et al. 2018); kornia's default is
            # uniform, so the Beta sample is passed in as the mixing parameter.
            beta = torch.distributions.Beta(s.mixup_alpha, s.mixup_alpha)
            params["mixup_lambdas"] = beta.sample((x.shape[0],)).to(x)
            x, mixed = self.mixup(x, labels, params=params)
            return x, Targets(labels, mixed[:, 1].long(), mixed[:, 2].to(x))
        return x, Targets(labels)


@dataclass
class Targets:
    """Labels for the loss: ``(1 - lam) * CE(labels) + lam * CE(partner)`` when mixed."""

    labels: torch.Tensor
    partner: torch.Tensor | None = None
    lam: torch.Tensor | None = None

    def loss(self, logits: torch.Tensor, label_smoothing: float) -> torch.Tensor:
        ce = nn.functional.cross_entropy
        if self.partner is None or self.lam is None:
            return ce(logits, self.labels, label_smoothing=label_smoothing)
        a = ce(logits, self.labels, label_smoothing=label_smoothing, reduction="none")
        b = ce(logits, self.partner, label_smoothing=label_smoothing, reduction="none")
        return ((1 - self.lam) * a + self.lam * b).mean()
