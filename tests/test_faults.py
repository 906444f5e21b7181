"""Fault injection through the real command line: one case per class of fault a new user met
(files destroyed, hangs, silently wrong results, tracebacks, raw library messages, files left
behind). Each runs ``python -m effnet ...`` as a subprocess and checks the exit code, that the
error is one line without a traceback, and that every file the user had is byte-identical
afterwards. The error boundary itself (Ctrl-C, full disk, unknown errors, --debug) is checked
in-process below."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import effnet
from effnet.preprocessing import Preprocessing
from effnet.weights import save_weights

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def user(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user's folder: a tiny model's weights (32 px, 3 classes) and what they are often
    confused with, a photo, a 16-bit PNG and a two-class image folder."""
    root = tmp_path_factory.mktemp("user")
    spec = effnet.scale(effnet.get_spec("efficientnet_b0"), width=0.25, depth=0.25).replace(
        num_classes=3, resolution=32, name="tiny")
    torch.manual_seed(0)
    model = effnet.build(spec).eval()
    save_weights(model, root / "w.safetensors", preprocessing=Preprocessing(resolution=32),
                 class_names=["a", "b", "c"])
    torch.save(model.state_dict(), root / "plain.pt")  # a torch checkpoint, not an effnet file
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["classifier.weight"].fill_(float("nan"))  # a diverged run's weights
    save_weights(state, root / "nan.safetensors", spec=spec, preprocessing=Preprocessing(resolution=32))
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(root / "photo.png")
    (root / "bad.yaml").write_text("name: [unclosed\n  stages: {")
    (root / "wrongtype.yaml").write_text("epochs: ten\n")
    for c in ("x", "y"):
        (root / "imgs" / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (36, 36, 3), dtype=np.uint8)).save(root / "imgs" / c / f"{i}.png")
    return root


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` (hidden ones too) and its SHA-256, but the run folders the
    train cases name (a refused run may leave its folder's lock file; what else is there is
    checked separately)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.relative_to(root).parts[0].startswith("run_")}


def effnet_cli(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "effnet", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def one_line_error(proc: subprocess.CompletedProcess[str], command: str) -> str:
    """The error line, after checking it is the only ``error:`` line and no traceback came."""
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith(f"effnet {command}: error: ")]
    assert len(errors) == 1, proc.stderr[-2000:]
    return errors[0]


#: (class, command line, words the one error line must hold). Paths are relative to the user's folder.
CASES = [
    # files destroyed: writing onto the input, or over an existing file without --overwrite
    ("files destroyed", ["convert", "w.safetensors", "w.safetensors", "--source", "timm", "--model",
                         "efficientnet_b0"], ["also an input", "w.safetensors"]),
    ("files destroyed", ["export", "w.safetensors", "w.safetensors", "--format", "onnx"], ["also an input"]),
    ("files destroyed", ["export", "w.safetensors", "photo.png", "--format", "onnx"],
     ["already exists", "--overwrite"]),
    # hangs: a search retried trials that could not succeed, training each first; refused up front
    ("hangs", ["search", "--space", "b0", "--trials", "1", "--data", "/nonexistent", "--out", "run_search"],
     ["/nonexistent", "no such folder"]),
    ("hangs", ["search", "--space", "b0", "--trials", "1", "--reward", "v1", "--target-flops", "0", "--out",
               "run_search"], ["--target-flops", "got 0"]),
    # hangs: a size that cannot fit ran for minutes before the kernel killed it; now refused at once
    ("hangs", ["predict", "photo.png", "--weights", "w.safetensors", "--resolution", "100000"],
     ["100000 px", "GiB", "available"]),
    ("hangs", ["train", "--image-size", "100000", "--out", "run_huge"], ["100000 px", "GiB", "available"]),
    # silently wrong: accepted values that changed the result without a word
    ("silently wrong", ["predict", "photo.png", "--weights", "w.safetensors", "--topk", "0"], ["--topk 0"]),
    ("silently wrong", ["predict", "photo.png", "--weights", "nan.safetensors"], ["NaN", "diverged"]),
    ("silently wrong", ["train", "--image-size", "0", "--out", "run_zero"], ["--image-size 0"]),
    ("silently wrong", ["eval", "--weights", "w.safetensors", "--data", "imgs"], ["['x', 'y']", "['a', 'b', 'c']"]),
    ("silently wrong", ["scale", "study", "--flops", "1e9", "--out", "run_study"], ["ratios to the base", "1e+09"]),
    ("files destroyed", ["bench", "--libs", "effnet", "--quick", "--no-train", "--out", "w.safetensors"],
     ["w.safetensors already exists", "--overwrite"]),
    ("silently wrong", ["bench", "--resolution", "0"], ["--resolution 0"]),
    ("silently wrong", ["scale", "search", "--train-subset", "0", "--out", "run_s"], ["--train-subset 0"]),
    ("tracebacks", ["scale", "study", "--out", "photo.png/sub"], ["photo.png is a file"]),
    ("tracebacks", ["search", "--space", "b0", "--trials", "1", "--out", "photo.png"], ["photo.png: is a file"]),
    ("raw messages", ["scale", "search", "--out", "/proc/effnet_out"], ["cannot be created"]),
    ("files destroyed", ["scale", "fit", "--base", "bad.yaml", "--max-flops", "1G", "--save", "bad.yaml"],
     ["also an input"]),
    ("files destroyed", ["scale", "fit", "--max-params", "6M", "--save", "photo.png"],
     ["photo.png already exists", "another --save path"]),
    # tracebacks: a malformed YAML file, an output under a file
    ("tracebacks", ["profile", "--spec", "bad.yaml"], ["bad.yaml"]),
    ("tracebacks", ["export", "w.safetensors", "photo.png/model.onnx"], ["photo.png", "not a folder"]),
    ("tracebacks", ["scale", "fit", "--max-params", "6M", "--save", "imgs"], ["imgs is a folder"]),
    ("tracebacks", ["search", "--space", "b0", "--trials", "1", "--recipe", "bad.yaml", "--out", "run_search"],
     ["recipe file bad.yaml", "not a readable YAML file"]),
    ("tracebacks", ["scale", "study", "--recipe", "wrongtype.yaml", "--out", "run_study"],
     ["recipe file wrongtype.yaml", "epochs: 'ten' should be a number"]),
    ("tracebacks", ["scale", "fit", "--max-params", "6M", "--save", "photo.png/spec.yaml"],
     ["photo.png is a file"]),
    # raw library messages
    ("raw messages", ["predict", "photo.png", "--weights", "plain.pt"], ["PyTorch", "effnet convert"]),
    ("raw messages", ["profile", "efficientnet_b0", "--batch", "0", "--memory"], ["--batch 0"]),
    ("raw messages", ["eval", "--weights", "w.safetensors", "--data", "imgs", "--batch-size", "0"],
     ["--batch-size 0"]),
    # files left behind: a run that fails before its first checkpoint leaves no half-run
    ("files left behind", ["train", "--data", "missing_data", "--subset", "8", "--out", "run_failed"],
     ["missing_data"]),
]


@pytest.mark.parametrize("kind, argv, words", CASES, ids=[f"{c[0]}: {' '.join(c[1][:2])}" for c in CASES])
def test_a_fault_gets_one_line_and_the_users_files_are_untouched(user, kind, argv, words):
    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    before = snapshot(user)
    proc = effnet_cli(user, *argv)
    line = one_line_error(proc, " ".join(argv[:2]) if argv[0] == "scale" else argv[0])
    for word in words:
        assert word in line, line
    after = snapshot(user)
    # Nothing the user had changed; a refused or failed command wrote nothing either (no outputs,
    # no temporary files, no run folder to be told to --resume).
    assert after == before, sorted(set(after.items()) ^ set(before.items()))
    left = [p.name for p in user.rglob("*") if p.is_file() and p.relative_to(user).parts[0].startswith("run_")]
    assert set(left) <= {"run.lock"}, left
    assert not [p for p in user.rglob("*") if p.name.endswith(".tmp")]


def test_cuda_on_a_cpu_only_torch_is_one_line(user):
    if torch.version.cuda is not None:
        pytest.skip("this torch has CUDA support")
    line = one_line_error(effnet_cli(user, "predict", "photo.png", "--weights", "w.safetensors", "--device", "cuda"),
                          "predict")
    assert "CPU-only" in line and "--device cpu" in line


@pytest.mark.slow
def test_resume_removes_temporary_files_a_killed_checkpoint_left(user, tmp_path):
    """kill -9 while a checkpoint was written left .state.pt.*.tmp that --resume never removed."""
    from effnet.train import resolve_config, train

    run = tmp_path / "run"
    train(resolve_config("debug", threads=1, epochs=1, train_subset=64, batch_size=32, out=str(run)))
    stale = run / ".state.pt.k1ll3d.tmp"
    stale.write_bytes(b"half a state")
    proc = effnet_cli(tmp_path, "train", "--resume", str(run), "--epochs", "2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not stale.exists() and (run / "best.safetensors").is_file()


# --- the error boundary (in-process) ---------------------------------------------------------------
def boundary(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], error: BaseException,
             *flags: str) -> tuple[int, str]:
    """``effnet list`` made to raise ``error``: the exit code and stderr."""
    from effnet import cli
    from effnet.commands import profile

    def fail(args: object) -> int:
        raise error

    monkeypatch.setattr(profile, "cmd_list", fail)
    code = cli.main([*flags, "list"])
    return code, capsys.readouterr().err


def test_ctrl_c_is_exit_130_and_one_line(monkeypatch, capsys):
    code, err = boundary(monkeypatch, capsys, KeyboardInterrupt())
    assert code == 130 and err.strip() == "effnet list: interrupted"
    # torch's own INFO loggers stay quiet (its FakeTensor cache statistics followed the line at exit).
    import logging

    assert logging.getLogger("torch._subclasses.fake_tensor").getEffectiveLevel() == logging.WARNING


def test_os_errors_are_plain_words_with_the_path(monkeypatch, capsys):
    cases = [(errno.ENOSPC, "out/model.onnx", "no space left on the device while writing out/model.onnx"),
             (errno.EACCES, "/root/x", "permission denied: /root/x"),
             (errno.EISDIR, "runs", "runs is a folder; expected a file")]
    for number, path, words in cases:
        code, err = boundary(monkeypatch, capsys, OSError(number, os.strerror(number), path))
        assert code == 1 and err.strip() == f"effnet list: error: {words}" or words in err, err


def test_a_foreign_error_is_one_line_pointing_to_debug(monkeypatch, capsys):
    code, err = boundary(monkeypatch, capsys, ZeroDivisionError("division by zero"))
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "ZeroDivisionError: division by zero" in err and "--debug" in err
    code, err = boundary(monkeypatch, capsys, ZeroDivisionError("division by zero"), "--debug")
    assert code == 1 and "Traceback" in err and err.strip().endswith("(run with --debug for the traceback)")
    monkeypatch.setenv("EFFNET_DEBUG", "1")
    code, err = boundary(monkeypatch, capsys, ZeroDivisionError("division by zero"))
    assert "Traceback" in err


def test_a_full_disk_while_a_library_writes_is_named_as_one(tmp_path, monkeypatch):
    """torch and safetensors report a full disk in their own words ("file write failed"); the
    export was blamed instead. atomic_write names the path and the cause."""
    from effnet import files

    monkeypatch.setattr(files, "disk_full", lambda folder, margin=0: True)

    def write(tmp: str) -> None:
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")

    with pytest.raises(OSError) as e:
        files.atomic_write(tmp_path / "state.pt", write)
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path / "state.pt")
    assert list(tmp_path.iterdir()) == []  # the temporary file went too


def test_check_output_refuses_an_input_through_a_link(tmp_path):
    from effnet.files import check_output

    src = tmp_path / "w.safetensors"
    src.write_bytes(b"weights")
    (tmp_path / "link.safetensors").symlink_to(src)
    with pytest.raises(ValueError, match="also an input"):
        check_output(tmp_path / "link.safetensors", inputs=[src], overwrite=True)
    with pytest.raises(FileExistsError, match="--overwrite"):
        check_output(src, inputs=[])
    assert check_output(src, overwrite=True) == src


# --- raw messages from the library (in-process) ----------------------------------------------------
@pytest.mark.parametrize("make, words", [
    (lambda: torch.zeros(1, 3, 32, 32, dtype=torch.uint8), "float input"),
    (lambda: torch.zeros(1, 3, 32, 32, dtype=torch.float64), "x.to(torch.float32)"),
    (lambda: torch.zeros(1, 3, 32, 32, dtype=torch.float16), "x.to(torch.float32)"),
    (lambda: torch.zeros(1, 32, 32, 3), "permute(0, 3, 1, 2)"),
    (lambda: [[0.0] * 32] * 32, "torch.Tensor"),
    (lambda: np.zeros((1, 3, 32, 32), dtype=np.float32), "torch.as_tensor"),
    (lambda: torch.full((1, 3, 32, 32), float("nan")), "NaN"),
], ids=["uint8", "float64", "half", "NHWC", "list", "numpy", "NaN"])
def test_a_wrong_input_is_named_with_what_the_model_expects(make, words):
    """These met Python's or torch's own errors deep inside a conv ("in_channels=64" for NHWC),
    and NaN went through to NaN logits."""
    spec = effnet.scale(effnet.get_spec("efficientnet_b0"), width=0.25, depth=0.25).replace(num_classes=3)
    model = effnet.build(spec).eval()
    with pytest.raises((TypeError, ValueError)) as e:
        model(make())
    assert words in str(e.value)
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 3)  # float32 NCHW is fine


def test_weight_files_that_are_not_effnet_files_are_named(user, tmp_path):
    from effnet.weights import load_model, read_weights
    from effnet.weights.torch_maps import read_torch_state_dict

    with pytest.raises(ValueError, match=r"PyTorch zip checkpoint \(torch.save\).*effnet convert"):
        read_weights(user / "plain.pt")
    blob = bytearray((user / "w.safetensors").read_bytes())
    blob[9] = ord("#")  # the JSON header's first key loses its opening quote
    (tmp_path / "broken.safetensors").write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="safetensors header is damaged"):
        read_weights(tmp_path / "broken.safetensors")
    # A safetensors file named .pth is read as what it is, not handed to torch.load.
    (tmp_path / "st.pth").write_bytes((user / "w.safetensors").read_bytes())
    assert set(read_torch_state_dict(tmp_path / "st.pth")) == set(read_weights(user / "w.safetensors").state_dict)
    # A run folder means its best.safetensors; a folder without one is named.
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("epochs: 1\n")
    with pytest.raises(FileNotFoundError, match="without best.safetensors.*not finished an epoch"):
        read_weights(run)
    (run / "best.safetensors").write_bytes((user / "w.safetensors").read_bytes())
    assert load_model(run).class_names == ["a", "b", "c"]
    with pytest.raises(ValueError, match="NaN or inf"):
        load_model(user / "nan.safetensors")


# --- run folders ----------------------------------------------------------------------------------
def test_overwrite_removes_the_earlier_runs_split(tmp_path):
    """split.json (the run's train/val file lists, what `effnet eval RUN_DIR` scores on) was not
    among the files --overwrite clears: the new run's folder kept the old run's split whenever the
    new one failed before writing its own, and eval then scored the wrong images."""
    from effnet.train.rundir import SPLIT_FILE, claim

    run = tmp_path / "run"
    run.mkdir()
    for name in ("config.yaml", "metrics.csv", "best.safetensors", SPLIT_FILE):
        (run / name).write_text("earlier run")
    (run / "notes.txt").write_text("the user's own file")
    lock = claim(run, resume=False, overwrite=True)
    lock.release()
    assert sorted(p.name for p in run.iterdir() if p.name != "run.lock") == ["notes.txt"]


def test_scale_fit_prints_its_result_before_a_failing_save(tmp_path, monkeypatch, capsys):
    """`scale fit --save` wrote the spec before printing and lost the computed result when the
    write failed; now the result comes first and the failure is one line."""
    from effnet import cli
    from effnet.specs import ModelSpec

    def full_disk(self: ModelSpec, path: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(ModelSpec, "save", full_disk)
    code = cli.main(["scale", "fit", "--max-params", "6M", "--step", "0.5", "--save", str(tmp_path / "s.yaml")])
    out, err = capsys.readouterr()
    assert code == 1 and "largest that fits: phi=0.5" in out
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"effnet scale fit: error: no space left on the device while writing {tmp_path / 's.yaml'}")


def test_an_optimised_model_refuses_another_size_than_its_fixed_padding():
    """effnet.optimize() fixes TF 'same' padding for the example's size and traces it; called at
    225 px after 224 px it gave other probabilities without a word. Now: refused with what to
    do; a network with symmetric padding answers any size through its eager module."""
    torch.manual_seed(0)
    tiny = effnet.scale(effnet.get_spec("efficientnet_b0"), width=0.25, depth=0.25).replace(num_classes=5)
    x, other = torch.randn(1, 3, 64, 64), torch.randn(2, 3, 65, 65)
    same = effnet.build(tiny.replace(padding="same")).eval()
    fast = effnet.optimize(same, x)
    torch.testing.assert_close(fast(x), same(x), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"traced for 64x64 inputs.*got 65x65.*effnet.optimize again"):
        fast(other)
    symmetric = effnet.build(tiny).eval()
    fast = effnet.optimize(symmetric, x)
    with torch.no_grad():
        torch.testing.assert_close(fast(other), symmetric(other), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_ctrl_c_in_a_search_is_exit_130_and_one_line(user, tmp_path):
    """Ctrl-C while a search trains: one line and exit 130 (a traceback before), the study kept."""
    import signal

    proc = subprocess.Popen([sys.executable, "-m", "effnet", "search", "--space", "b0", "--trials", "2", "--epochs",
                             "1", "--train-subset", "64", "--out", str(tmp_path / "s")], cwd=user, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.stdout is not None
    proc.stdout.readline()  # the space's summary: the command is inside its error boundary
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == "effnet search: interrupted"
    assert not list(tmp_path.rglob("*.tmp"))


def test_an_existing_output_says_what_to_do(monkeypatch, capsys, tmp_path):
    """'afile already exists' named no way out, and a path under a file was reported as existing."""
    (tmp_path / "afile").write_text("x")
    code, err = boundary(monkeypatch, capsys, FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST),
                                                              str(tmp_path / "afile")))
    assert code == 1 and "already exists: choose another path" in err
    under = tmp_path / "afile" / "x.json"
    code, err = boundary(monkeypatch, capsys, FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(under)))
    assert err.strip() == f"effnet list: error: cannot write {under}: {tmp_path / 'afile'} is a file, not a folder"


def test_a_budget_beyond_the_largest_size_says_it_was_not_reached():
    """`scale fit --max-flops 1e30` named the phi cap as the budget's limit while its own table
    showed the next size fitting too. Every candidate up to the cap fits, so the answer is the
    cap and the result must say the budget was not what stopped the search."""
    from effnet.lab import fit

    r = fit("efficientnet_b0", max_flops=1e30, phi_limit=1.0, step=0.25)
    assert all(c.fits for c in r.tried)
    assert r.best is not None and r.best.phi == 1.0
    assert r.capped and "not reached" in r.capped
    bounded = fit("efficientnet_b0", max_flops="0.5G", step=0.25)
    assert bounded.capped is None and bounded.next_larger is not None and not bounded.next_larger.fits


def test_an_optimised_model_refuses_nan_input_like_the_model():
    """optimize()'s traced path skipped the model's NaN check: NaN in gave NaN out with no error."""
    model = effnet.create_model("efficientnet_b0", num_classes=3).eval()
    fast = effnet.optimize(model, torch.randn(1, 3, 64, 64))
    x = torch.randn(1, 3, 64, 64)
    assert torch.isfinite(fast(x)).all()
    x[0, 0, 0, 0] = float("nan")
    for net in (model, fast):
        with pytest.raises(ValueError, match="NaN/inf"):
            net(x)
