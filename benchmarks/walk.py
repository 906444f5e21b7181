"""How many of effnet's files a call enters, traced with ``sys.setprofile``: the measure of
"a walk" in docs/architecture.md.

    python benchmarks/walk.py create_model            # create_model("efficientnet_b0", pretrained=True)
    python benchmarks/walk.py train                   # effnet train --epochs 1 --subset 64 (digits)
    python benchmarks/walk.py create_model --files    # + each file and the functions called in it

Two counts per walk: files whose code ran at all (module bodies included, i.e. every file
imported on the way) and files with a function called outside import time (the walk a reader
follows). ``create_model`` with ``pretrained=True`` needs the published file in effnet's cache
(``effnet.weights.cache_dir()``); without it the walk is ``pretrained=False``, which is said.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from types import FrameType
from typing import Any

SRC = Path(__file__).resolve().parent.parent / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))  # this checkout's effnet
PACKAGE = str(SRC / "effnet")


class Walk:
    """Records, per effnet file, whether its module body ran and which functions were called
    outside any module body (import time)."""

    def __init__(self) -> None:
        self.bodies: set[str] = set()
        self.calls: dict[str, set[str]] = {}

    def __call__(self, frame: FrameType, event: str, arg: Any) -> None:
        if event != "call" or not frame.f_code.co_filename.startswith(PACKAGE):
            return
        name = os.path.relpath(frame.f_code.co_filename, PACKAGE)
        if frame.f_code.co_name == "<module>":
            self.bodies.add(name)
            return
        outer = frame.f_back
        while outer is not None:  # a call made while some module is being imported is import time
            if outer.f_code.co_name == "<module>" and outer.f_code.co_filename != __file__:
                return
            outer = outer.f_back
        self.calls.setdefault(name, set()).add(frame.f_code.co_name)


def _b0_is_cached() -> bool:
    """Whether B0's published weights are in the cache, asked in a child process so that this
    one imports nothing of effnet's before the walk."""
    code = ("from effnet.registry import PRETRAINED; from effnet.weights.hub import cached_path; "
            "print(cached_path('efficientnet_b0', PRETRAINED['efficientnet_b0']).is_file())")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return out.stdout.strip() == "True"


def create_model_walk() -> tuple[Walk, str]:
    cached = _b0_is_cached()
    walk = Walk()
    sys.setprofile(walk)
    try:
        import effnet

        effnet.create_model("efficientnet_b0", pretrained=cached)
    finally:
        sys.setprofile(None)
    return walk, f'create_model("efficientnet_b0", pretrained={cached})'


def train_walk() -> tuple[Walk, str]:
    argv = ["train", "--epochs", "1", "--subset", "64"]
    walk = Walk()
    with tempfile.TemporaryDirectory() as tmp:
        sys.setprofile(walk)
        try:
            from effnet.cli import main

            main([*argv, "--out", str(Path(tmp) / "run")])
        except SystemExit:
            pass
        finally:
            sys.setprofile(None)
    return walk, "effnet " + " ".join(argv)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("walk", choices=["create_model", "train"])
    p.add_argument("--files", action="store_true", help="list each file and the functions called in it")
    args = p.parse_args()
    walk, what = create_model_walk() if args.walk == "create_model" else train_walk()
    print(f"{what}: {len(walk.bodies)} effnet files entered (module bodies included), "
          f"{len(walk.calls)} with calls outside import time")
    if args.files:
        for name in sorted(walk.bodies | set(walk.calls)):
            called = ", ".join(sorted(walk.calls.get(name, ())))
            print(f"  {name:28s} {called or '(import only)'}")


if __name__ == "__main__":
    main()
