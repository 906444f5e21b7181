"""`effnet plot` (effnet.viz.figures): the published curves against the papers' numbers, the
readers against the files effnet's own commands write, and the figure's contents."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from PIL import Image

import effnet
from effnet.cli import main
from effnet.commands.viz import read_points, read_run
from effnet.preprocessing import Preprocessing
from effnet.viz.figures import paper_points, plot_results, read_json_points
from effnet.weights import save_weights

#: EfficientNet Table 2 (docs/paper.md section 3): top-1, params (M), FLOPs (B).
TABLE_2 = {"B0": (77.1, 5.3, 0.39), "B1": (79.1, 7.8, 0.70), "B2": (80.1, 9.2, 1.0), "B3": (81.6, 12, 1.8),
           "B4": (82.9, 19, 4.2), "B5": (83.6, 30, 9.9), "B6": (84.0, 43, 19), "B7": (84.3, 66, 37)}
#: EfficientNetV2 official README (docs/paper.md section 7).
V2 = {"V2-B0": (78.7, 7.1, 0.72), "V2-B1": (79.8, 8.1, 1.2), "V2-B2": (80.5, 10.1, 1.7), "V2-B3": (82.1, 14.4, 3.0),
      "V2-S": (83.9, 21.5, 8.4), "V2-M": (85.2, 54.1, 24.7), "V2-L": (85.7, 119.5, 56.3)}


def test_published_curves_are_the_papers_numbers() -> None:
    pts = paper_points()
    curves: dict[str, dict[str, tuple[float, float, float]]] = {}
    for p in pts:
        assert p.on_imagenet and p.line
        curves.setdefault(p.series, {})[p.name] = (p.top1, p.params / 1e6, p.flops / 1e9)
    assert sorted(curves) == ["EfficientNet B0-B7 (published)", "EfficientNetV2 (published)"]
    for got, want in ((curves["EfficientNet B0-B7 (published)"], TABLE_2), (curves["EfficientNetV2 (published)"], V2)):
        assert sorted(got) == sorted(want)
        for name, row in want.items():
            assert got[name] == pytest.approx(row), name


def _run_folder(root: Path, top1s: list[float]) -> Path:
    """A run folder as `effnet train` leaves it: metrics.csv, config.yaml, best.safetensors
    (EfficientNet-B0 with 1000 classes at 224 px, whose size the papers give)."""
    from effnet.train.rundir import METRIC_FIELDS

    run = root / "b0_run"
    run.mkdir()
    with open(run / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=METRIC_FIELDS)
        w.writeheader()
        for i, t in enumerate(top1s, 1):
            w.writerow({k: 0 for k in METRIC_FIELDS} | {"epoch": i, "val_top1": t})
    (run / "config.yaml").write_text("data: /data/imagenette\nmodel: efficientnet_b0\n")
    save_weights(effnet.create_model("efficientnet_b0"), run / "best.safetensors",
                 preprocessing=Preprocessing(resolution=224))
    return run


def test_run_folder_point_uses_best_epoch_and_measured_cost(tmp_path: Path) -> None:
    run = _run_folder(tmp_path, [41.0, 77.5, 76.0])
    p = read_run(run)
    assert p.name == "b0_run" and p.top1 == 77.5 and p.dataset == "imagenette"
    assert p.params == 5_288_548  # the exact count of the PyTorch ports (docs/paper.md section 3)
    assert p.flops / 1e9 == pytest.approx(0.39, abs=0.005)  # Table 2: 0.39B multiply-adds


def _search_report() -> dict:
    from effnet.lab.grid import GridReport, GridTrial

    rows = [GridTrial("a1_b1.1_g1.15", 1.0, 1.1, 1.15, "complete", 95.5, 150_000_000, 2.0, 1.9, 1_300_000, 36, 3, 9.0, 60.0),
            GridTrial("a1.2_b1_g1.2", 1.2, 1.0, 1.2, "pruned", 40.0, 160_000_000, 2.1, 2.0, 1_200_000, 38, 1, 3.0, 60.0)]
    return GridReport("s", "sqlite:///x", "efficientnet_b0", 1.0, rows, rows[0], 2, 3, 4, 1).to_dict()


def _study_report() -> dict:
    from effnet.lab.compare import StudyReport, StudyRow

    rows = [StudyRow("baseline", 1, 0, 1, 1, 224, 245_000_000, 1.0, 3_760_000, 32, 92.2, 20),
            StudyRow("width", 2, 1.07, 1, 1.45, 224, 486_000_000, 1.98, 6_950_000, 32, 90.25, 27),
            StudyRow("depth", 2, 0.8, 1.75, 1, 224, 501_000_000, 2.04, 7_160_000, 32, 57.9, 25)]
    return StudyReport("st", "sqlite:///x", "efficientnet_b0", rows, 3).to_dict()


def test_results_files_of_the_lab_and_search(tmp_path: Path) -> None:
    from effnet.search.run import SearchReport, TrialRow

    (tmp_path / "search.json").write_text(json.dumps(_search_report()))
    pts = read_json_points(tmp_path / "search.json", "digits")
    # The pruned point's top-1 is a partial epoch count's: left out.
    assert [(p.name, p.top1, p.flops, p.params, p.dataset) for p in pts] == [
        ("a1 b1.1 g1.15", 95.5, 150_000_000, 1_300_000, "digits")]

    study = tmp_path / "study"
    study.mkdir()
    (study / "results.json").write_text(json.dumps(_study_report()))
    pts = read_points([study])
    lines = {}
    for p in pts:
        lines.setdefault(p.series, set()).add((p.name, p.top1))
    # Every strategy's line starts at the shared baseline (EfficientNet Figure 8 layout).
    assert lines == {"study: width": {("baseline", 92.2), ("width x2", 90.25)},
                     "study: depth": {("baseline", 92.2), ("depth x2", 57.9)}}

    rows = [TrialRow(0, "complete", 9.5, 126.0, 7_140_000, 718_000_000, 9.5, 9.5, 2, 10.0, "F3e1x1", {}, True),
            TrialRow(1, "pruned", 5.0, 120.0, 7_000_000, 700_000_000, 5.0, 5.0, 1, 5.0, "F3e1x2", {})]
    arch = SearchReport("a", "sqlite:///x", "v2-b0", 10, "v2", 2, 126.0, 7_140_000, 718_000_000, rows, rows[0]).to_dict()
    (tmp_path / "arch.json").write_text(json.dumps(arch))
    assert [(p.name, p.series) for p in read_json_points(tmp_path / "arch.json")] == [("trial 0", "search (v2-b0)")]


def test_plain_json_schema_and_its_errors(tmp_path: Path) -> None:
    good = [{"name": "mine", "top1": 76.0, "gflops": 0.4, "params_m": 5.0, "dataset": "ImageNet"},
            {"name": "other", "top1": 90, "flops": 2_000_000}]
    f = tmp_path / "points.json"
    f.write_text(json.dumps({"points": good}))
    a, b = read_json_points(f)
    assert (a.flops, a.params, a.on_imagenet) == (pytest.approx(4e8), pytest.approx(5e6), True)
    assert (b.flops, b.params, b.series, b.on_imagenet) == (2e6, None, "points", False)

    def error(data: object, raw: str | None = None) -> str:
        f.write_text(raw if raw is not None else json.dumps(data))
        with pytest.raises(ValueError) as e:
            read_json_points(f)
        return str(e.value)

    assert "looks like GFLOPs" in error([{"name": "x", "top1": 70, "flops": 0.39}])
    assert "missing top1" in error([{"name": "x", "flops": 1e9}])
    assert "needs flops" in error([{"name": "x", "top1": 70}])
    assert "0..100" in error([{"name": "x", "top1": 0.7e3, "flops": 1e9}])
    assert "not valid JSON" in error(None, raw="[{'name': 1}")
    assert "points.json" in error(None, raw="{")
    assert "neither a scale search" in error({"rows": [{"top1": 1}]})
    with pytest.raises(FileNotFoundError, match="nope.json"):
        read_json_points(tmp_path / "nope.json")


def test_figure_has_the_published_and_user_panels(tmp_path: Path) -> None:
    run = _run_folder(tmp_path, [60.0, 71.25])
    pts = read_points([run])
    files = plot_results(tmp_path / "fig", pts, title="test")
    assert [f.name for f in files] == ["fig.png", "fig.svg"]
    with Image.open(files[0]) as png:
        assert png.size[0] > 1000 and png.size[1] > 900  # two rows of two panels
    svg = files[1].read_text()
    # Every published point and the run are labelled, the data sets sit on separate panels.
    for label in [*TABLE_2, *V2, "b0_run"]:
        assert f">{label}<" in svg, label
    assert "ImageNet: top-1 against FLOPs" in svg and "your runs on imagenette: top-1 against parameters" in svg
    assert "GFLOPs (log scale)" in svg
    # A study's baseline starts every strategy's line but is labelled once per panel.
    study = tmp_path / "study.json"
    study.write_text(json.dumps(_study_report()))
    svg = plot_results(tmp_path / "study", read_json_points(study), paper=False, formats=("svg",))[0].read_text()
    assert svg.count(">baseline<") == 2 and svg.count(">width x2<") == 2
    # Only your points: one row.
    only = plot_results(tmp_path / "mine", pts, paper=False, formats=("png",))
    with Image.open(only[0]) as png:
        assert png.size[1] < 700


def test_plot_cli_and_its_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _run_folder(tmp_path, [70.0])
    pts = tmp_path / "pts.json"
    pts.write_text(json.dumps([{"name": "friend", "top1": 80.0, "gflops": 1.0, "dataset": "imagenet"}]))
    assert main(["plot", str(run), str(pts), "--out", str(tmp_path / "p"), "--format", "png"]) == 0
    out = capsys.readouterr().out
    assert "b0_run: top-1 70.00%" in out and (tmp_path / "p.png").is_file()
    assert main(["plot", str(tmp_path / "missing_run"), "--out", str(tmp_path / "q")]) == 1
    assert "missing_run: no such run folder or file" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["plot", str(tmp_path / "empty"), "--out", str(tmp_path / "q")]) == 1
    assert "neither a run folder" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("not json")
    assert main(["plot", str(bad), "--out", str(tmp_path / "q")]) == 1
    assert "bad.json: not valid JSON" in capsys.readouterr().err
    (run / "best.safetensors").unlink()
    assert main(["plot", str(run), "--out", str(tmp_path / "q")]) == 1
    assert "no best.safetensors" in capsys.readouterr().err


@pytest.mark.slow
def test_a_real_digits_run_is_plotted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """End to end: `effnet train` one epoch on digits, then `effnet plot` its folder."""
    run = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--out", str(run), "--threads", "1"]) == 0
    with open(run / "metrics.csv") as f:
        top1 = float(next(csv.DictReader(f))["val_top1"])
    assert main(["plot", str(run), "--out", str(tmp_path / "fig")]) == 0
    out = capsys.readouterr().out
    assert f"run: top-1 {top1:.2f}%" in out and "[digits]" in out
    assert "0.66M params" in out  # the digits recipe: B0 at half width and depth, 10 classes (README)


def test_confusion_counts_contrast_with_their_cells(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from effnet.viz import plots

    # Relative luminance by hand (sRGB linearised, BT.709 weights): Blues' darkest cell
    # (8, 48, 107) is 0.032, its lightest (247, 251, 255) 0.95; the split is at 0.18.
    assert plots.text_colour((8 / 255, 48 / 255, 107 / 255, 1.0)) == "white"
    assert plots.text_colour((247 / 255, 251 / 255, 255 / 255, 1.0)) == "black"
    assert plots.text_colour((0.5, 0.5, 0.5, 1.0)) == "black"  # linear 0.214 >= 0.18
    assert plots.text_colour((0.4, 0.4, 0.4, 1.0)) == "white"  # linear 0.133 < 0.18

    seen: dict[str, str] = {}
    save = plots._save

    def record(fig, path, dpi, fmt="png"):  # noqa: ANN001, ANN202
        seen.update({t.get_text(): t.get_color() for t in fig.axes[0].texts})
        return save(fig, path, dpi, fmt)

    monkeypatch.setattr(plots, "_save", record)
    plots.plot_confusion(torch.tensor([[40, 1], [2, 37]]), ["a", "b"], tmp_path / "cm.png")
    assert seen == {"40": "white", "37": "white", "1": "black", "2": "black"}
