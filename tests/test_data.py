"""Image folders, the digits split, unreadable files and the kornia augmentation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from effnet.data import (
    UNREADABLE,
    AugmentSettings,
    DecodedDataset,
    EpochSampler,
    LoadTransform,
    Targets,
    TrainAugment,
    load_digits_split,
    load_eval_split,
    load_splits,
    to_rgb,
)
from effnet.preprocessing import EvalTransform, Preprocessing


def make_folder(root: Path, classes: dict[str, int], size: int = 40, corrupt: bool = False) -> Path:
    """``root/<class>/*.png|jpg|webp`` with a mix of modes; optionally one corrupt JPEG."""
    modes = ["RGB", "L", "P", "RGBA"]
    exts = [".png", ".jpg", ".webp", ".png"]
    for c, (name, n) in enumerate(classes.items()):
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            mode, ext = modes[i % 4], exts[i % 4]
            if mode == "RGBA" or ext == ".jpg":
                mode = "RGBA" if ext == ".png" else "RGB"
            color = (60 + 150 * c, 40 * (i % 5), 200 - 150 * c)
            img = Image.new("RGB", (size + i, size), color)
            img = img.convert(mode) if mode != "RGBA" else img.convert("RGBA")
            img.save(d / f"{i}{ext}")
    if corrupt:
        bad = root / next(iter(classes)) / "broken.jpg"
        bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    return root


def test_to_rgb_modes():
    for mode in ("L", "P", "RGBA", "LA", "CMYK", "RGB"):
        assert to_rgb(Image.new(mode, (4, 4))).mode == "RGB"
    rgba = Image.new("RGBA", (2, 2), (0, 0, 0, 0))  # fully transparent -> white background
    assert to_rgb(rgba).getpixel((0, 0)) == (255, 255, 255)


def test_digits_split_is_fixed_and_stratified():
    train, val = load_digits_split()
    train2, val2 = load_digits_split()
    assert len(train) + len(val) == 1797 and len(val) == pytest.approx(1797 * 0.2, abs=10)
    assert train.labels == train2.labels and val.labels == val2.labels
    assert sorted(set(val.labels)) == list(range(10))
    assert train.items[0].size == (8, 8)


def test_folder_split_and_corrupt_file(tmp_path):
    root = make_folder(tmp_path / "imgs", {"cat": 8, "dog": 8}, corrupt=True)
    train, val = load_splits(root, val_fraction=0.25, seed=1)
    assert train.class_names == ["cat", "dog"] and len(train) + len(val) == 17
    ds = DecodedDataset(train, LoadTransform(32), 32)
    labels = [ds[i][1] for i in range(len(ds))]
    bad = [i for i, y in enumerate(labels) if y == UNREADABLE]
    broken_in_train = any(str(p).endswith("broken.jpg") for p in train.items)
    assert len(bad) == (1 if broken_in_train else 0)
    img, _, _ = ds[next(i for i, y in enumerate(labels) if y != UNREADABLE)]
    assert img.shape == (3, 32, 32) and img.dtype == torch.uint8


def test_train_val_folders_and_eval_split(tmp_path):
    make_folder(tmp_path / "d" / "train", {"a": 3, "b": 3})
    make_folder(tmp_path / "d" / "val", {"a": 2, "b": 2})
    train, val = load_splits(tmp_path / "d")
    assert (len(train), len(val)) == (6, 4)
    assert len(load_eval_split(tmp_path / "d")) == 4


def test_refuses_bad_datasets(tmp_path):
    make_folder(tmp_path / "one", {"only": 4})
    with pytest.raises(ValueError, match="at least 2"):
        load_splits(tmp_path / "one")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "b").mkdir(parents=True)
    with pytest.raises(ValueError, match="empty"):
        load_splits(tmp_path / "empty")
    with pytest.raises(NotADirectoryError):
        load_splits(tmp_path / "missing")


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path):
    """A 16-bit PNG (PIL mode I;16 or I) holds 0-65535: 8 bits are value * 255 / 65535 (PIL's
    own convert("RGB") clipped everything above 255 to white, binarising the image)."""
    import numpy as np

    from effnet.data.datasets import decode

    ramp = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)  # 0, 1, 128, 255 in 8 bits
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    for item in (tmp_path / "g16.png", Image.fromarray(ramp), Image.fromarray(ramp.astype(np.int32), mode="I")):
        rgb = np.asarray(decode(item))
        assert rgb.shape == (1, 4, 3) and rgb[0, :, 0].tolist() == [0, 1, 128, 255]
    # An "I" image whose values are already 0-255 is kept as it is.
    small = Image.fromarray(np.array([[0, 100, 255]], dtype=np.int32), mode="I")
    assert np.asarray(to_rgb(small))[0, :, 1].tolist() == [0, 100, 255]


@pytest.mark.parametrize("held_out", ["val", "valid", "validation", "test"])
def test_train_beside_a_held_out_folder_are_the_splits(tmp_path, held_out, caplog):
    """DIR/train + DIR/test was read as two classes, "train" and "test"."""
    make_folder(tmp_path / "d" / "train", {"a": 3, "b": 3})
    make_folder(tmp_path / "d" / held_out, {"a": 2, "b": 2})
    with caplog.at_level("INFO"):
        train, val = load_splits(tmp_path / "d")
    assert train.class_names == ["a", "b"] and (len(train), len(val)) == (6, 4)
    assert str(tmp_path / "d" / held_out) in caplog.text  # the log line says which folders are used
    assert len(load_eval_split(tmp_path / "d")) == 4


def test_train_folder_alone_is_split(tmp_path):
    """DIR/train alone was "1 class folder (['train'])"."""
    make_folder(tmp_path / "d" / "train", {"a": 5, "b": 5})
    train, val = load_splits(tmp_path / "d", val_fraction=0.2)
    assert train.class_names == ["a", "b"] and (len(train), len(val)) == (8, 2)
    with pytest.raises(ValueError, match="no val/valid/validation/test folder"):
        load_eval_split(tmp_path / "d")


def test_empty_and_unreadable_class_folders_are_named(tmp_path, monkeypatch):
    make_folder(tmp_path / "d", {"a": 3, "b": 3})
    (tmp_path / "d" / "ghost").mkdir()
    with pytest.raises(ValueError, match=r"no images under .*: ghost"):
        load_splits(tmp_path / "d")
    (tmp_path / "d" / "ghost").rmdir()
    # An unreadable class folder (tests run as root here, where chmod cannot make one).
    import os

    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p).endswith("/b") else real_access(p, mode))
    with pytest.raises(ValueError, match=r"cannot read class folder\(s\) .*/b"):
        load_splits(tmp_path / "d")


def test_eval_transform_resize_and_crop():
    img = Image.new("RGB", (64, 48))
    t = EvalTransform(Preprocessing(resolution=32, crop_pct=0.875, interpolation="bilinear"))
    assert t(img).shape == (3, 32, 32)


def test_sampler_order_depends_only_on_seed_and_epoch():
    s = EpochSampler(10, seed=3)
    s.set_epoch(2)
    full = list(s)
    s.set_epoch(2, start=4)
    assert list(s) == full[4:] and len(s) == 6
    s.set_epoch(3)
    assert list(s) != full


def _plain(size: int, **augment) -> TrainAugment:
    """Augmentation with the crop and flip off (a plain resize), so that only ``augment`` acts."""
    return TrainAugment(AugmentSettings(size, crop_scale=(1.0, 1.0), hflip=False, **augment))


@pytest.mark.parametrize("augment", [dict(autoaugment=True), dict(randaugment_magnitude=10)])
def test_policy_augmentation_changes_the_images(augment):
    """AutoAugment / RandAugment must alter the pixels: compared with the un-augmented view of the
    same batch (a plain resize to the same size, checked to be the identity), most images differ."""
    torch.manual_seed(0)
    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    y = torch.arange(8)
    plain, _ = _plain(32)(x, y)
    assert torch.equal(plain, x.float() / 255)  # the reference view is the input itself
    torch.manual_seed(0)
    out, targets = _plain(32, **augment)(x, y)
    assert out.shape == (8, 3, 32, 32) and out.min() >= 0.0 and out.max() <= 1.0
    changed = (out - plain).abs().flatten(1).amax(1) > 1.5 / 255  # more than rounding
    # AutoAugment applies each sub-policy op with a probability, so an image may pass unchanged;
    # RandAugment applies n=2 ops to every image. Either way most of the batch must change.
    assert changed.sum() >= 6, changed
    assert targets.partner is None and torch.equal(targets.labels, y)


def test_mixup_lambda_is_beta_and_images_mix_pixelwise():
    """mixup (Zhang et al. 2018): lambda ~ Beta(alpha, alpha) and x' = (1 - lam) x + lam x[partner].
    Beta(0.2, 0.2) has mean 1/2 and variance ab / ((a + b)^2 (a + b + 1)) = 0.04 / (0.16 * 1.4)
    = 0.1786 (hand computation; kornia's default uniform lambda would give 1/12 = 0.083)."""
    torch.manual_seed(0)
    n = 20000  # sample mean/variance standard errors ~0.003 and ~0.001
    x = torch.randint(0, 256, (n, 3, 4, 4), dtype=torch.uint8)
    labels = torch.arange(n)  # the partner's label is its index
    out, targets = _plain(4, mixup_alpha=0.2)(x, labels)
    lam = targets.lam
    assert lam.mean().item() == pytest.approx(0.5, abs=0.015)
    assert lam.var().item() == pytest.approx(0.1786, abs=0.006)
    assert torch.equal(targets.labels, labels) and not torch.equal(targets.partner, labels)
    xf, w = x.float() / 255, lam.view(-1, 1, 1, 1)
    torch.testing.assert_close(out, (1 - w) * xf + w * xf[targets.partner])
    # The loss weighs the partner's label by lam: logits certain of the partner class (margin m)
    # cost CE(own) = m on the own label and 0 on the partner's, so the loss is mean((1 - lam) m).
    m = 50.0
    logits = torch.zeros(2, 3)
    logits[0, 1] = logits[1, 2] = m
    mixed = Targets(torch.tensor([0, 1]), torch.tensor([1, 2]), torch.tensor([0.25, 0.75]))
    assert mixed.loss(logits, 0.0).item() == pytest.approx((0.75 * m + 0.25 * m) / 2, rel=1e-5)


def test_cutmix_weights_the_partner_by_its_pasted_area():
    """Each image is one constant grey level, so every pixel says which image it came from."""
    torch.manual_seed(0)
    aug = TrainAugment(AugmentSettings(32, crop_scale=(1.0, 1.0), hflip=False, cutmix_alpha=1.0))
    labels = torch.arange(8)
    images = (labels.view(8, 1, 1, 1) * 30).expand(8, 3, 40, 40).to(torch.uint8)
    x, targets = aug(images, labels)
    for i in range(8):
        partner_area = 1 - ((x[i, 0] * 255).round() == labels[i] * 30).float().mean().item()
        assert targets.lam[i].item() == pytest.approx(partner_area, abs=0.02)
