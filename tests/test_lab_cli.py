"""`effnet scale search | study | fit` as a user types them: JSON out, errors as one line."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("optuna")

from effnet.cli import main  # noqa: E402


@pytest.mark.slow  # ~7 s; the grid search and its resume are checked through the API by test_lab.py (default run)
def test_scale_search_json_and_resume(tmp_path, capsys):
    argv = ["scale", "search", "--base", "efficientnet_b0", "--base-width", "0.25", "--base-depth", "0.25",
            "--step", "0.2", "--tolerance", "0.2", "--epochs", "1", "--train-subset", "64", "--out",
            str(tmp_path), "--no-progress", "--json"]
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    # Hand enumeration, step 0.2, |a*b^2*g^2 - 2| <= 0.2, each >= 1: (1, 1, 1.4) 1.96, (1, 1.2, 1.2) 2.07,
    # (1, 1.4, 1) 1.96, (1.4, 1, 1.2) 2.02, (1.4, 1.2, 1) 2.02, (1.8, 1, 1) 1.8, (2.2, 1, 1) 2.2.
    points = {(r["alpha"], r["beta"], r["gamma"]) for r in first["rows"]}
    assert points <= {(1, 1, 1.4), (1, 1.2, 1.2), (1, 1.4, 1), (1.4, 1, 1.2), (1.4, 1.2, 1), (1.8, 1, 1),
                      (2.2, 1, 1)}
    assert first["candidates"] == len(first["rows"]) and first["command"].startswith("effnet scale --base ")
    assert {"json", "table", "png"} <= set(first["files"])
    assert main(argv) == 0  # resumed: the same rows, nothing new
    assert json.loads(capsys.readouterr().out)["rows"] == first["rows"]


def test_scale_fit_json(capsys):
    assert main(["scale", "fit", "--max-params", "8M", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["best"]["params"] <= 8e6 < r["next_larger"]["params"] and r["spec"]["resolution"] >= 224


@pytest.mark.parametrize("argv, words", [
    (["scale", "study", "--strategies", "nope"], "unknown scaling strategy 'nope'"),
    (["scale", "search", "--tolerance", "-1"], "tolerance"),
    (["scale", "search", "--storage", "sqlite:////no-such-dir/x/s.db"], "cannot open the study storage"),
    (["scale", "fit", "--max-flops", "lots"], "k/M/G/T"),
])
def test_bad_input_is_one_clear_line(argv, words, capsys, tmp_path):
    assert main([*argv, *(["--out", str(tmp_path)] if argv[1] != "fit" else [])]) == 1
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err
