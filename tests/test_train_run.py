"""End to end on tiny configs: train -> run folder -> eval/predict; SIGKILL + resume; guards."""

from __future__ import annotations

import csv
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from effnet.train import evaluate, predict, resolve_config, train
from effnet.weights import load_model, read_weights, save_weights
from test_data import make_folder

TINY = dict(threads=1, epochs=2, train_subset=192, batch_size=32)


def rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "debug"
    # 640 images: 40 steps, enough to learn well above chance (192 images stay at 10%).
    result = train(resolve_config("debug", **{**TINY, "train_subset": 640}, out=str(out)))
    assert result.epochs == 2
    return out


def test_run_folder(digits_run):
    for name in ("config.yaml", "metrics.csv", "best.safetensors", "last.safetensors", "state.pt"):
        assert (digits_run / name).is_file(), name
    # train() returns data; the command line draws curves.png from it (test_train_cli).
    assert not (digits_run / "curves.png").exists()
    r = rows(digits_run)
    assert [int(x["epoch"]) for x in r] == [1, 2]
    for key in ("stage", "image_size", "lr", "train_loss", "val_loss", "val_top1", "img_per_s", "seconds"):
        assert r[0][key] != ""
    wf = read_weights(digits_run / "best.safetensors")
    assert wf.source == "effnet-train" and wf.class_names == [str(i) for i in range(10)]
    assert wf.preprocessing.resolution == 32
    model = load_model(digits_run / "last.safetensors")
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
    state = torch.load(digits_run / "state.pt", weights_only=True)
    assert state["epoch"] == 2 and state["batch_in_epoch"] == 0


@torch.no_grad()
def reference_logits(weights: Path, images: list) -> torch.Tensor:
    """The model's logits for PIL images put through the file's recorded preprocessing by hand,
    in one batch: the plain reference that the loader-based scoring and prediction must match
    (in eval mode every image's logits depend on that image alone)."""
    from effnet.data import to_rgb
    from effnet.preprocessing import EvalTransform, Normalize

    model = load_model(weights).eval()
    prep = model.preprocessing
    transform, normalize = EvalTransform(prep), Normalize(prep)
    return model(normalize(torch.stack([transform(to_rgb(img)) for img in images])))  # (N, classes)


def test_eval_and_predict_on_trained_and_classless_files(digits_run, tmp_path):
    from effnet.data import load_digits_split

    r = evaluate(digits_run / "best.safetensors", "digits")
    # Against a per-image count over the same val split.
    val = load_digits_split()[1]
    logits = reference_logits(digits_run / "best.safetensors", val.items)
    labels = torch.tensor(val.labels)
    top5 = logits.topk(5, dim=1).indices
    assert r.count == len(val) == 359
    assert r.top1 == pytest.approx(100 * (top5[:, 0] == labels).float().mean().item())
    assert r.top5 == pytest.approx(100 * (top5 == labels[:, None]).any(1).float().mean().item())
    assert r.per_class["3"] == pytest.approx(100 * (top5[labels == 3, 0] == 3).float().mean().item())
    assert r.top1 > 10 + 15  # two short epochs learn well above chance (10 classes; about 44% here)
    assert [sum(row) for row in r.confusion] == [labels.eq(c).sum().item() for c in range(10)]
    # A file without class names (as `effnet convert` writes) falls back to indices.
    wf = read_weights(digits_run / "best.safetensors")
    bare = save_weights(wf.state_dict, tmp_path / "bare.safetensors", spec=wf.spec, preprocessing=wf.preprocessing)
    img = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGBA", (20, 20), (10, 200, 30, 128)).save(img)
    preds = predict([img, tmp_path / "missing.jpg"], bare, topk=3)
    with Image.open(img) as f:
        probs = reference_logits(bare, [f.copy()]).softmax(dim=1)[0]
    p, i = probs.topk(3)
    assert [name for name, _ in preds[0].top] == [str(j) for j in i.tolist()]
    assert [q for _, q in preds[0].top] == pytest.approx(p.tolist(), abs=1e-6)
    assert preds[1].error and "missing.jpg" in preds[1].error


def test_folder_with_corrupt_and_rgba_trains_and_evaluates(tmp_path):
    data = make_folder(tmp_path / "imgs", {"red": 10, "blue": 10}, size=36, corrupt=True)
    result = train(resolve_config("debug", data=str(data), threads=1, epochs=1, out=str(tmp_path / "run"),
                                  val_fraction=0.3))
    r = evaluate(result.run_dir / "best.safetensors", data)
    assert r.count == 20  # the whole folder minus the corrupt file
    assert any("broken.jpg" in s for s in r.skipped)
    assert any("broken.jpg" in s for s in result.skipped)  # met by training or validation, whichever holds it


def test_refuses_one_class_and_nan(tmp_path):
    make_folder(tmp_path / "one", {"only": 4})
    with pytest.raises(ValueError, match="at least 2"):
        train(resolve_config("debug", data=str(tmp_path / "one"), out=str(tmp_path / "r1")))
    with pytest.raises(RuntimeError, match="diverged"):
        train(resolve_config("debug", **TINY, lr_per_256=float("inf"), warmup_epochs=0, out=str(tmp_path / "r2")))


def test_fine_tune_new_head_and_freeze(digits_run, tmp_path):
    data = make_folder(tmp_path / "imgs", {"a": 6, "b": 6, "c": 6}, size=36)
    result = train(resolve_config("debug", data=str(data), weights=str(digits_run / "best.safetensors"),
                                  freeze_backbone=True, threads=1, epochs=1, out=str(tmp_path / "ft")))
    ft = read_weights(result.run_dir / "last.safetensors")
    base = read_weights(digits_run / "best.safetensors")
    assert ft.spec.num_classes == 3 and ft.class_names == ["a", "b", "c"]
    assert torch.equal(ft.state_dict["stem.conv.weight"], base.state_dict["stem.conv.weight"])


def test_fine_tune_keeps_the_weights_normalisation_and_resume_needs_no_initial_file(digits_run, tmp_path):
    from effnet.preprocessing import Preprocessing

    base = read_weights(digits_run / "best.safetensors")
    keras_like = Preprocessing(resolution=32, scale=1 / 128, mean=(1.0, 1.0, 1.0), std=(1.0, 1.0, 1.0))
    init = save_weights(base.state_dict, tmp_path / "init.safetensors", spec=base.spec, preprocessing=keras_like)
    result = train(resolve_config("debug", weights=str(init), threads=1, epochs=1, train_subset=64,
                                  out=str(tmp_path / "ft")))
    pp = read_weights(result.run_dir / "last.safetensors").preprocessing
    assert (pp.scale, pp.mean, pp.std) == (1 / 128, (1.0, 1.0, 1.0), (1.0, 1.0, 1.0))
    # An explicit mean/std still wins over the file's.
    explicit = train(resolve_config("debug", weights=str(init), threads=1, epochs=1, train_subset=64,
                                    mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), out=str(tmp_path / "ex")))
    assert read_weights(explicit.run_dir / "last.safetensors").preprocessing.mean == (0.5, 0.5, 0.5)
    # Resuming rebuilds from the run's own state: the initial file may be gone.
    import yaml

    cfg_path = result.run_dir / "config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    state = torch.load(result.run_dir / "state.pt", weights_only=True)
    state["config"]["epochs"] = 2  # one more epoch
    torch.save(state, result.run_dir / "state.pt")
    init.unlink()
    resumed = train(resolve_config(), resume=str(result.run_dir))
    assert resumed.epochs == 2 and cfg["weights"] == str(init)
    pp = read_weights(resumed.run_dir / "last.safetensors").preprocessing
    assert pp.scale == 1 / 128


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume(tmp_path):
    """A run killed mid-epoch resumes from its last checkpoint and ends like an uninterrupted one."""
    cfg = dict(recipe="debug", epochs=4, threads=1, train_subset=320, batch_size=32)
    reference = train(resolve_config(**cfg, out=str(tmp_path / "ref")))
    run = tmp_path / "killed"
    args = [sys.executable, "-m", "effnet", "train", "--recipe", "debug", "--epochs", "4", "--threads", "1",
            "--batch-size", "32", "--subset", "320", "--out", str(run)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "metrics.csv").exists():
        time.sleep(0.05)
    time.sleep(0.3)  # into epoch 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    rows_before = [dict(r) for r in torch.load(run / "state.pt", weights_only=True)["metrics"]]
    done = [r["epoch"] for r in rows_before]
    assert 1 <= len(done) < 4, "the kill should land before the run finished"
    result = train(resolve_config(), resume=run)
    epochs = [int(r["epoch"]) for r in rows(run)]
    assert epochs == [1, 2, 3, 4]  # none repeated, none missing
    assert result.epochs == 4
    assert abs(result.final_top1 - reference.final_top1) <= 1.0
    # Epochs before the kill are the checkpoint's own rows, not recomputed.
    assert result.metrics[0] == rows_before[0]


def test_sigkill_after_mid_epoch_checkpoint_resumes_mid_epoch(tmp_path):
    run = tmp_path / "steps"
    args = [sys.executable, "-m", "effnet", "train", "--recipe", "debug", "--epochs", "2", "--threads", "1",
            "--batch-size", "32", "--subset", "256", "--save-every", "3", "--out", str(run)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "state.pt").exists():
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = torch.load(run / "state.pt", weights_only=True)
    assert state["step"] >= 3
    result = train(resolve_config(), resume=run)
    assert [int(r["epoch"]) for r in rows(run)] == [1, 2] and result.epochs == 2


def test_progressive_stages_logged(tmp_path):
    from effnet.data import ProgressiveSpec, Range

    prog = ProgressiveSpec(2, Range(32, 48), Range(0.0, 0.2), Range(1, 3), Range(0.0, 0.2))
    result = train(resolve_config("debug", threads=1, epochs=2, train_subset=128, progressive=prog,
                                  out=str(tmp_path / "prog")))
    r = rows(result.run_dir)
    assert [int(x["image_size"]) for x in r] == [32, 48]
    assert [float(x["dropout"]) for x in r] == [0.0, 0.2]
    assert [float(x["randaugment"]) for x in r] == [1.0, 3.0]
    assert [int(x["stage"]) for x in r] == [1, 2]
    assert read_weights(result.run_dir / "last.safetensors").preprocessing.resolution == 48


def test_eval_size_keeps_the_specs_train_eval_split():
    """V2 trains smaller than it tests (V2-S grows to 300 px, V2 Table 6, and is reported at 384);
    the default evaluation size keeps that ratio for any training size."""
    from effnet.registry import get_spec
    from effnet.train import eval_resolution

    v2s, b0 = get_spec("efficientnetv2_s"), get_spec("efficientnet_b0")
    assert (v2s.train_resolution, v2s.resolution) == (300, 384)
    assert eval_resolution(v2s, 300) == 384
    assert eval_resolution(v2s, 128) == 164  # the first progressive stage: 128 * 384 / 300
    assert eval_resolution(b0, 32) == 32  # one size for both: digits at 32 px is scored at 32
    assert eval_resolution(v2s, 300, eval_size=320) == 320  # cfg.eval_size wins


def test_a_v2_run_is_scored_and_saved_at_its_evaluation_size(tmp_path):
    """efficientnetv2_b0 trains at 192 and tests at 224: trained at 48 px it is scored at 56."""
    result = train(resolve_config("debug", model="efficientnetv2_b0", image_size=48, threads=1, epochs=1,
                                  train_subset=64, out=str(tmp_path / "v2")))
    assert read_weights(result.run_dir / "last.safetensors").preprocessing.resolution == 56
    assert int(rows(result.run_dir)[0]["image_size"]) == 48  # the training size is unchanged


@pytest.mark.slow
def test_default_digits_job_reaches_97_percent_in_5_minutes(tmp_path):
    """The README's main job: `effnet train` with no options."""
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", "effnet", "train", "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert time.time() - start < 300
    assert float(rows(tmp_path / "run")[-1]["val_top1"]) >= 97.0
