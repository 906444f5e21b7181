"""The command line answers at once: building the parser, every ``--help`` and `effnet list` /
`effnet table` must not import torch (its import alone takes over a second). Checked in a fresh
interpreter by what lands in ``sys.modules``, never by a clock."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# Heavy libraries none of these paths needs; numpy comes with torch, so it is a second witness.
HEAVY = ("torch", "numpy", "optuna", "onnxruntime", "openvino")


def loaded_after(code: str) -> list[str]:
    """Run ``code`` in a fresh interpreter; the heavy modules it left in ``sys.modules``."""
    probe = f"""
import contextlib, io, json, sys
{code}
print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_the_front_door_imports_nothing_heavy():
    assert loaded_after("import effnet; effnet.__version__") == []


def test_building_the_parser_imports_no_torch():
    assert loaded_after("import effnet.cli; effnet.cli.build_parser()") == []


def commands() -> list[list[str]]:
    """Every command and sub-action the parser offers, read from argparse itself."""
    import argparse

    from effnet.cli import build_parser

    def walk(parser: argparse.ArgumentParser, prefix: list[str]) -> list[list[str]]:
        out = []
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    out.append(prefix + [name])
                    out += walk(sub, prefix + [name])
        return out

    return walk(build_parser(), [])


def test_every_command_is_checked():
    names = {" ".join(c) for c in commands()}
    assert {"list", "table", "predict", "eval", "bench", "train", "scale grid"} <= names


def test_every_help_imports_no_torch():
    """``effnet --help`` and ``effnet COMMAND [ACTION] --help`` for every command at once."""
    argvs = [["--help"]] + [c + ["--help"] for c in commands()]
    code = f"""
from effnet.cli import main
for argv in {argvs!r}:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
        main(argv)
"""
    assert loaded_after(code) == []


@pytest.mark.parametrize("argv", [["list"], ["list", "efficientnetv2*"], ["table"], ["table", "--json"]])
def test_list_and_table_read_stored_counts(argv: list[str]):
    code = f"""
from effnet.cli import main
buf = io.StringIO()
with contextlib.redirect_stdout(buf):
    rc = main({argv!r})
assert rc == 0, rc
assert "efficientnet" in buf.getvalue()
"""
    assert loaded_after(code) == []


def test_lazy_package_names_the_functions():
    """effnet.train.evaluate and .predict, effnet.bench.run are the functions, also after their
    modules are imported (a module named like its function would replace it on the package), and
    importing the packages loads neither those modules nor torch."""
    code = """
import sys
import effnet.bench, effnet.train
assert "torch" not in sys.modules and "effnet.train.evaluation" not in sys.modules
import effnet.train.evaluation
from effnet.train import evaluate, predict
assert evaluate is effnet.train.evaluation.evaluate and predict is effnet.train.evaluation.predict
effnet.bench.make_config  # imports the bench's runner module
assert effnet.bench.run is effnet.bench.runner.run, effnet.bench.run
"""
    subprocess.run([sys.executable, "-c", code], check=True)
