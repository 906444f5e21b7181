"""Runtime sessions (effnet.deploy.runtime): every runtime gives the eager model's outputs within
1e-4 (float32), the export is cached beside the weights under a key of their bytes, ``auto``
records its choice, and --runtime reaches predict/eval."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import effnet
from effnet.cli import main
from effnet.deploy.runtime import RUNTIMES, Session, available_runtimes, session
from effnet.specs import ModelSpec, StageSpec

pytest.importorskip("onnxruntime", reason="onnxruntime (test extra) is not installed")

#: Small enough to export and verify in a second or two, with SE, depthwise and fused blocks.
SMALL = ModelSpec(
    name="small",
    stages=(
        StageSpec(op="fused", repeats=1, kernel=3, stride=1, expand=1, channels=16),
        StageSpec(op="mbconv", repeats=2, kernel=5, stride=2, expand=4, channels=24, se=0.25),
        StageSpec(op="mbconv", repeats=1, kernel=3, stride=2, expand=6, channels=40, se=0.25),
    ),
    stem_channels=16, head_channels=64, resolution=64, num_classes=10,
)


def _runtimes() -> list[object]:
    """Every runtime; one that is not installed is skipped, saying so."""
    out = []
    for r in RUNTIMES:
        missing = r != "torch" and importlib.util.find_spec(r) is None
        out.append(pytest.param(r, marks=pytest.mark.skipif(
            missing, reason=f"{r} is not installed (pip install 'effnet[runtime]')")))
    return out


def _error(y: torch.Tensor, ref: torch.Tensor) -> float:
    """The export's measure: max |y - ref| / max(1, max |ref|)."""
    return (y - ref).abs().max().item() / max(1.0, ref.abs().max().item())


@pytest.fixture(scope="module")
def small_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A weight file whose logits reach well beyond +-1: BN statistics and affine parameters are
    randomised, so a wrong kernel or layout shows as a large difference."""
    from effnet.weights.format import save_weights

    torch.manual_seed(0)
    model = effnet.build(SMALL)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
        model.classifier.weight.mul_(20)  # logits of a few units, as a trained model's
    path = tmp_path_factory.mktemp("small") / "small.safetensors"
    save_weights(model.eval(), path)
    return path


@pytest.mark.parametrize("runtime", _runtimes())
def test_every_runtime_gives_the_eager_outputs(small_file: Path, runtime: str) -> None:
    from effnet.weights import load_model

    eager = load_model(small_file).eval()
    s = session(small_file, runtime, threads=1)
    assert isinstance(s, Session) and s.runtime == runtime and s.resolution == 64
    assert s.class_names == eager.class_names and s.spec == eager.spec
    gen = torch.Generator().manual_seed(1)
    # batch sizes change between calls (OpenVINO compiles one shape each); 9 runs in chunks
    # (Session.micro_batch: 4, 4, 1 on ONNX Runtime and OpenVINO fp32)
    for batch in (1, 3, 9, 1):
        x = torch.randn(batch, 3, 64, 64, generator=gen) * 2
        with torch.no_grad():
            ref = eager(x)
        y = s(x)
        assert y.shape == ref.shape and y.dtype == torch.float32
        assert ref.abs().max() > 1  # the check means something
        assert _error(y, ref) <= 1e-4
    with pytest.raises(ValueError, match="expected"):
        s(torch.zeros(1, 3, 32, 32))  # the export is fixed to its resolution


def test_a_large_batch_runs_in_chunks_and_comes_back_whole_in_order() -> None:
    calls = []

    def runner(x: torch.Tensor) -> torch.Tensor:
        calls.append(len(x))
        return x[:, 0, 0, :2] * 10  # (N, 2): each row from its own image

    s = Session("onnxruntime", runner, resolution=8, source=torch.nn.Identity(), micro_batch=2)
    x = torch.randn(5, 3, 8, 8)
    y = s(x)
    assert calls == [2, 2, 1] and torch.equal(y, x[:, 0, 0, :2] * 10)
    calls.clear()
    s(x[:2])
    assert calls == [2]  # a batch that fits is one call
    # "auto": the measured count for the runtime and precision (runners.MICRO_BATCH); None: whole
    s.micro_batch = "auto"
    assert s.micro_batch == 4
    s.precision = "int8"
    assert s.micro_batch is None  # ONNX Runtime's int8 ran fastest whole
    assert Session("openvino", runner, resolution=8, source=torch.nn.Identity()).micro_batch == 4
    assert Session("torch", runner, resolution=8, source=torch.nn.Identity()).micro_batch is None
    s.micro_batch = None
    calls.clear()
    s(x)
    assert calls == [5]
    for bad in (0, -1, True, 2.5, "fast"):
        with pytest.raises(ValueError, match="micro_batch"):
            s.micro_batch = bad
    with pytest.raises(ValueError, match="micro_batch"):
        session(torch.nn.Identity(), "torch", micro_batch=0)


def test_the_export_is_cached_beside_the_weights_under_their_hash(small_file: Path, tmp_path: Path) -> None:
    import shutil

    weights = tmp_path / "w.safetensors"
    shutil.copy(small_file, weights)
    first = session(weights, "onnxruntime", threads=1)
    assert first.onnx_path.parent == tmp_path and first.onnx_path.name.startswith("w.")
    assert first.max_error is not None  # checked against eager the first time
    checks = json.loads(first.onnx_path.with_name(first.onnx_path.name + ".checks.json").read_text())
    assert checks["onnxruntime"]["max_error"] <= 1e-4
    made = first.onnx_path.stat().st_mtime_ns
    again = session(weights, "onnxruntime", threads=1)
    assert again.onnx_path == first.onnx_path and again.onnx_path.stat().st_mtime_ns == made
    assert again.max_error is None  # recorded, not re-checked
    # Other weights (one byte of one tensor changed): another key, another export.
    from effnet.weights import load_model
    from effnet.weights.format import save_weights

    model = load_model(weights)
    with torch.no_grad():
        model.classifier.bias[0] += 1.0
    save_weights(model, weights)
    other = session(weights, "onnxruntime", threads=1)
    assert other.onnx_path != first.onnx_path and other.max_error is not None


def test_auto_takes_an_installed_runtime_and_records_the_choice(small_file: Path, tmp_path: Path) -> None:
    from effnet.deploy.runtime import last_choice

    s = session(small_file, "auto", threads=1, cache_dir=tmp_path)
    choice = last_choice()
    assert s.runtime == choice["choice"] in available_runtimes()
    assert set(choice["timings_ms"]) == set(available_runtimes()) and not choice["cached"]
    (record,) = tmp_path.glob("*.checks.json")
    assert json.loads(record.read_text())["auto@1threads"]["choice"] == s.runtime
    again = session(small_file, "auto", threads=1, cache_dir=tmp_path)
    assert again.runtime == s.runtime and last_choice()["cached"]


def test_optimize_with_a_runtime_returns_a_session(small_file: Path) -> None:
    from effnet.weights import load_model

    model = load_model(small_file).eval()
    x = torch.randn(2, 3, 64, 64)
    s = effnet.optimize(model, x[:1], runtime="onnxruntime")
    assert isinstance(s, Session) and s.runtime == "onnxruntime"
    with torch.no_grad():
        assert _error(s(x), model(x)) <= 1e-4
    with pytest.raises(ValueError, match="example_input"):
        effnet.optimize(model, runtime="onnxruntime")
    with pytest.raises(ValueError, match="runtime"):
        session(small_file, "tensorrt")


@pytest.mark.slow
def test_predict_and_eval_take_the_runtime(small_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    from PIL import Image

    image = tmp_path / "img.png"
    Image.fromarray((torch.rand(80, 96, 3) * 255).byte().numpy()).save(image)
    assert main(["predict", str(image), "--weights", str(small_file), "--runtime", "torch", "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)[0]
    assert plain["path"] == "plain"
    assert main(["predict", str(image), "--weights", str(small_file), "--runtime", "onnxruntime", "--json"]) == 0
    ort = json.loads(capsys.readouterr().out)[0]
    assert ort["path"] == "plain:onnxruntime"
    assert [c for c, _ in ort["top"]] == [c for c, _ in plain["top"]]
    assert ort["top"][0][1] == pytest.approx(plain["top"][0][1], abs=1e-5)
    assert main(["predict", str(image), "--weights", str(small_file), "--fast"]) == 0
    out = capsys.readouterr().out
    assert "inference: fast fp32 on" in out and "auto: fastest at batch 1 here" in out
    # eval on the bundled digits (10 classes, as the small model): the same scores on either runtime
    scores = {}
    for runtime in ("torch", "onnxruntime"):
        assert main(["eval", "--weights", str(small_file), "--data", "digits", "--runtime", runtime,
                     "--batch-size", "128", "--json"]) == 0
        scores[runtime] = json.loads(capsys.readouterr().out)
    assert scores["onnxruntime"]["path"] == "plain:onnxruntime" and scores["torch"]["path"] == "plain"
    assert scores["onnxruntime"]["confusion"] == scores["torch"]["confusion"]
    assert scores["onnxruntime"]["loss"] == pytest.approx(scores["torch"]["loss"], abs=1e-4)


def _signal_stack() -> tuple[int, int, int]:
    """The calling thread's alternate signal stack (sigaltstack(2)): address, size, flags."""
    import ctypes

    class StackT(ctypes.Structure):
        _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]

    st = StackT()
    assert ctypes.CDLL(None).sigaltstack(None, ctypes.byref(st)) == 0
    return st.ss_sp or 0, st.ss_size, st.ss_flags


@pytest.mark.skipif(not importlib.util.find_spec("openvino") or not sys.platform.startswith("linux"),
                    reason="OpenVINO on Linux")
def test_openvino_sessions_leave_the_threads_signal_stack_as_it_was(tmp_path: Path) -> None:
    """OpenVINO's CPU plugin swaps the thread's alternate signal stack per core; two cores freed
    oldest first left it on the first's unmapped stack, where the next signal with a Python
    handler wrote its frame (an in-process `effnet bench` after a DataLoader with workers, which
    leaves a SIGCHLD handler, crashed with SIGSEGV)."""
    import gc

    import openvino as ov
    from openvino import opset8 as ops

    from effnet.deploy.runners import openvino_runner

    x = ops.parameter([1, 4], np.float32)
    ov.save_model(ov.Model([ops.relu(x)], [x]), tmp_path / "relu.xml")  # a model file independent of effnet's export
    before = _signal_stack()
    first = openvino_runner(tmp_path / "relu.xml", 1)
    assert first(torch.tensor([[-1.0, 2.0, -3.0, 4.0]])).tolist() == [[0.0, 2.0, 0.0, 4.0]]
    second = openvino_runner(tmp_path / "relu.xml", 1)
    second(torch.zeros(1, 4))
    del first
    gc.collect()
    del second
    gc.collect()
    assert _signal_stack() == before
