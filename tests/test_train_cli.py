"""`effnet train`'s options, derived from TrainConfig: every field reachable, typed parsing, the
established spellings, only given options overriding the recipe, clear errors."""

from __future__ import annotations

import argparse
import dataclasses
from types import SimpleNamespace

import pytest

import effnet.train
from effnet.cli import build_parser, main
from effnet.commands.train import config_overrides, resolve_args
from effnet.data.progressive import V2_PRESETS, Range
from effnet.train.config import RECIPES, TrainConfig, resolve_config


def _train_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["train"]


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["train", *argv])


def config_of(args: argparse.Namespace) -> TrainConfig:
    return resolve_args(args).cfg


def test_every_config_field_has_an_option_with_help():
    options = {a.dest: a for a in _train_parser()._actions}
    for f in dataclasses.fields(TrainConfig):
        assert f.name in options, f"TrainConfig.{f.name} has no effnet train option"
        assert f"--{f.name.replace('_', '-')}" in options[f.name].option_strings
        assert f.metadata.get("help"), f"TrainConfig.{f.name} has no help text"


def test_options_parse_into_typed_config_values():
    cfg = config_of(parse(
        "--recipe", "paper_v2", "--model", "efficientnetv2_m", "--data", "imgs", "--epochs", "3",
        "--lr", "0.1", "--subset", "64", "--save-every", "7", "--dist-timeout", "5",  # established spellings
        "--weight-decay", "0", "--no-ema", "--no-channels-last", "--compile", "--overwrite",
        "--mean", "0.5", "0.5", "0.5", "--crop-scale", "0.5", "1", "--amp", "bf16", "--ema-buffers", "copy",
        "--eval-size", "480", "--extra", "note=first try", "--extra", "trial=3",
    ))
    expected = dict(
        recipe="paper_v2", model="efficientnetv2_m", data="imgs", epochs=3, lr_per_256=0.1, train_subset=64,
        save_every_steps=7, dist_timeout_minutes=5.0, weight_decay=0.0, ema=False, channels_last=False,
        compile=True, overwrite=True, mean=(0.5, 0.5, 0.5), crop_scale=(0.5, 1.0), amp="bf16",
        ema_buffers="copy", eval_size=480, extra={"note": "first try", "trial": 3},
        progressive=V2_PRESETS["efficientnetv2_m"],  # the recipe's preset follows --model
        randaugment_magnitude=15.0,  # not given: the recipe's value
    )
    assert {k: getattr(cfg, k) for k in expected} == expected
    assert type(cfg.epochs) is int and type(cfg.lr_per_256) is float
    # The derived spellings work as well as the aliases, and --x / --no-x both exist for bools.
    assert config_overrides(parse("--lr-per-256", "0.2", "--train-subset", "8", "--ema")) == dict(
        lr_per_256=0.2, train_subset=8, ema=True)


def test_only_given_options_override_the_recipe():
    assert config_overrides(parse()) == {}
    assert config_of(parse()) == resolve_config()  # digits by default
    cfg = config_of(parse("--recipe", "digits", "--hflip"))
    assert cfg.hflip and cfg.epochs == RECIPES["digits"]["epochs"] and cfg.width == 0.5


def test_progressive_options():
    assert config_of(parse("--recipe", "digits")).progressive is None
    recipe = RECIPES["digits_progressive"]["progressive"]
    cfg = config_of(parse("--recipe", "digits_progressive", "--sizes", "32", "48"))
    assert cfg.progressive == dataclasses.replace(recipe, image_size=Range(32, 48))
    cfg = config_of(parse("--progressive", "efficientnetv2_m", "--stages", "2"))
    assert cfg.progressive == dataclasses.replace(V2_PRESETS["efficientnetv2_m"], stages=2) and not cfg.autoaugment
    assert config_of(parse("--recipe", "paper_v2", "--progressive", "off")).progressive is None


@pytest.mark.parametrize("argv, message", [
    (["--amp", "fp8"], "argument --amp: invalid choice: 'fp8'"),
    (["--epochs", "two"], "argument --epochs: invalid int value: 'two'"),
    (["--crop-scale", "0.5"], "argument --crop-scale: expected 2 arguments"),
    (["--extra", "novalue"], "argument --extra: expected KEY=VALUE"),
    (["--learning-rate", "0.1"], "unrecognized arguments: --learning-rate"),
])
def test_malformed_options_are_refused_by_the_parser(capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        main(["train", *argv])
    assert e.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "0"], "--epochs 0: expected at least 1 epoch(s)"),
    (["--recipe", "paper_v2", "--model", "efficientnet_b0"], "there is none for 'efficientnet_b0'"),
    (["--progressive", "huge"], "progressive: expected 'model', 'on', 'off'"),
    (["--stages", "3"], "--stages/--sizes need progressive learning: add --progressive on"),
    (["--recipe", "paper_v3"], "unknown recipe 'paper_v3'"),
    (["--resume", "runs/x", "--seed", "3"], "--seed would be ignored"),  # only --lr and --epochs may change
])
def test_invalid_values_are_clear_errors(capsys, monkeypatch, argv, message):
    monkeypatch.setattr(effnet.train, "train", lambda *a, **k: pytest.fail("train must not start"))
    assert main(["train", *argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith("effnet train: error: ") and message in err


def test_cli_calls_train_with_the_config_or_the_run_to_resume(capsys, monkeypatch, tmp_path):
    calls = []

    def fake_train(cfg, resume=None, on_checkpoint=None, **kwargs):
        calls.append((cfg, resume))
        on_checkpoint(tmp_path, [{"epoch": 1, "train_loss": 2.0, "val_loss": 1.5, "val_top1": 40.0},
                                 {"epoch": 2, "train_loss": 1.0, "val_loss": 1.2, "val_top1": 60.0}])
        return SimpleNamespace(is_main=True, epochs=cfg.epochs, final_top1=90.0, best_top1=91.0,
                               run_dir=tmp_path, skipped=[])

    monkeypatch.setattr(effnet.train, "train", fake_train)
    assert main(["train", "--recipe", "debug", "--epochs", "1", "--out", str(tmp_path)]) == 0
    assert calls[-1] == (resolve_config("debug", epochs=1, out=str(tmp_path)), None)
    assert "final top-1 90.00%" in capsys.readouterr().out
    # The command line draws the curves after each checkpoint (train() itself returns data).
    assert (tmp_path / "curves.png").read_bytes().startswith(b"\x89PNG")
    assert main(["train", "--resume", str(tmp_path)]) == 0
    assert calls[-1][1] == str(tmp_path)


def test_a_stopped_run_says_so_once(capsys, monkeypatch):
    """The loop logs the stop message with its resume command; the command line adds nothing
    (it used to print the same message again) and exits with the shell's 128 + signal."""
    import logging
    import signal

    from effnet.train import Interrupted

    def stopped(cfg, resume=None, **kwargs):
        logging.getLogger("effnet.train.loop").warning("training stopped by SIGINT; Resume with: X")
        raise Interrupted("training stopped by SIGINT; Resume with: X", signal.SIGINT, None)

    monkeypatch.setattr(effnet.train, "train", stopped)
    assert main(["train", "--recipe", "debug"]) == 130
    captured = capsys.readouterr()  # the CLI's log handler writes to stderr
    assert (captured.out + captured.err).count("Resume with: X") == 1


@pytest.mark.slow
def test_eval_and_predict_name_the_inference_path_once(capsys, caplog, tmp_path):
    import logging

    from effnet.model import build
    from effnet.registry import get_spec
    from effnet.scaling import scale
    from effnet.weights import save_weights

    spec = scale(get_spec("efficientnet_b0"), width=0.25, depth=0.25).replace(num_classes=10)
    weights = save_weights(build(spec), tmp_path / "w.safetensors", class_names=[str(i) for i in range(10)])
    with caplog.at_level(logging.INFO, logger="effnet"):
        assert main(["eval", "--weights", str(weights), "--data", "digits", "--workers", "0"]) == 0
    shown = capsys.readouterr().out + caplog.text
    assert shown.count("inference") == 1 and shown.count("preprocessing: ") == 1


def test_training_code_imports_no_plotting():
    """train returns data and the command line plots: no module under effnet/train imports
    effnet.viz, not even inside a function."""
    import ast
    from pathlib import Path

    root = Path(effnet.train.__file__).parent
    found = []
    for path in sorted(root.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [f"{node.module}.{a.name}" for a in node.names] if isinstance(node, ast.ImportFrom) else [])
            found += [f"{path.name}: {n}" for n in names if n == "effnet.viz" or n.startswith("effnet.viz.")]
    assert not found, found
