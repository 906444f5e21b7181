"""Keras EfficientNet weights: converted files reproduce Keras's own outputs on raw pixels,
with Keras's in-model Rescaling/Normalization folded into the recorded preprocessing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from effnet.bench.peers import use_keras_torch_backend
from effnet.weights import convert, load_model, read_weights

pytest.importorskip("h5py", reason="Keras conversion needs h5py")
use_keras_torch_backend()  # before keras is first imported
keras = pytest.importorskip("keras", reason="keras not installed")

# Keras's torch backend warns on every set_weights call (numpy 2 copy keyword); not ours.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _randomise(model: object, rng: np.random.Generator) -> None:
    """Non-trivial BatchNorm statistics and input normalisation, so a wrong mapping fails."""
    for layer in model.layers:  # type: ignore[attr-defined]
        if isinstance(layer, keras.layers.BatchNormalization):
            shape = layer.weights[0].shape
            layer.set_weights([rng.uniform(0.5, 1.5, shape), rng.normal(0, 0.1, shape),
                               rng.normal(0, 0.1, shape), rng.uniform(0.5, 1.5, shape)])
        elif isinstance(layer, keras.layers.Normalization) and layer.weights:
            layer.set_weights([np.array([0.4, 0.5, 0.6]), np.array([0.05, 0.06, 0.07]), np.array(0)])


@pytest.mark.parametrize("name", ["EfficientNetB0", "EfficientNetV2B0"])
def test_keras_outputs_match(name: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    # Keras's own initialisers draw the convolution weights: seeded, so that the logits (and the
    # float32 rounding between the two implementations) are the same on every run.
    keras.utils.set_random_seed(0)
    # Small input and 10 classes keep this fast; logits, not softmax, to compare closely.
    kmodel = getattr(keras.applications, name)(
        weights=None, input_shape=(64, 64, 3), classes=10, classifier_activation=None
    )
    _randomise(kmodel, rng)
    src = tmp_path / f"{name}.weights.h5"
    kmodel.save_weights(str(src))
    out = convert(src, tmp_path / "w.safetensors", "keras", name)

    pixels = rng.uniform(0, 255, (2, 64, 64, 3)).astype("float32")  # (N, H, W, C) raw RGB
    expected = np.asarray(kmodel(pixels, training=False).detach().cpu())
    model = load_model(out, include_preprocessing=True)
    with torch.no_grad():
        got = model(torch.from_numpy(pixels).permute(0, 3, 1, 2)).numpy()  # NHWC -> NCHW
    assert np.abs(got - expected).max() < 1e-4

    wf = read_weights(out)
    assert wf.spec.padding == "same" and wf.spec.bn_eps == 1e-3 and wf.spec.num_classes == 10
    if name == "EfficientNetB0":  # V1 reads its Normalization layer from the file
        assert wf.preprocessing.mean == pytest.approx((0.4, 0.5, 0.6))
        assert wf.preprocessing.std == pytest.approx(tuple(np.sqrt([0.05, 0.06, 0.07])))


def test_keras_wrong_model_is_refused(tmp_path: Path) -> None:
    kmodel = keras.applications.EfficientNetV2B0(weights=None, input_shape=(64, 64, 3), classes=10)
    src = tmp_path / "v2b0.weights.h5"
    kmodel.save_weights(str(src))
    with pytest.raises(ValueError, match="does not fit efficientnetv2_b1"):
        convert(src, tmp_path / "w.safetensors", "keras", "EfficientNetV2B1")
    (tmp_path / "cut.h5").write_bytes(src.read_bytes()[:1000])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        convert(tmp_path / "cut.h5", tmp_path / "w.safetensors", "keras", "EfficientNetV2B0")
