"""Shared fixtures: restore random state; skip `gpu` tests without CUDA; run registry-wide
tests on representatives by default (the whole registry under ``slow``); worker processes on
one study (the lab and search tests)."""

from __future__ import annotations

import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

#: Tests parametrised over the whole registry run, by default, on one model per kind of block and
#: scaling rule: V1 MBConv with SE (B0), V2 Fused-MBConv (V2-B0), Lite (ReLU6, no SE), EdgeTPU
#: (edge residual), TinyNet (its own rounding), the ResNet and MobileNet baselines. The rest of the
#: registry adds no code path, only minutes; it runs under ``-m slow``.
REPRESENTATIVES = {"efficientnet_b0", "efficientnetv2_b0", "efficientnet_lite0", "efficientnet_edgetpu_s",
                   "tinynet_e", "resnet18", "mobilenet_v2"}
#: test id (file::function) -> the parameter holding the model name.
REGISTRY_WIDE = {
    "test_export.py::test_every_registered_model_exports_to_onnx_and_torchscript": "name",
}


@pytest.hookimpl(tryfirst=True)  # before `-m 'not slow'` deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        param = REGISTRY_WIDE.get(f"{item.path.name}::{getattr(item, 'originalname', item.name)}")
        callspec = getattr(item, "callspec", None)
        if param and callspec and callspec.params.get(param) not in REPRESENTATIVES:
            item.add_marker(pytest.mark.slow)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _restore_random_state():
    """Each test may seed freely; the global RNG state is put back afterwards."""
    torch_state = torch.get_rng_state()
    np_state = np.random.get_state()
    py_state = random.getstate()
    yield
    torch.set_rng_state(torch_state)
    np.random.set_state(np_state)
    random.setstate(py_state)


@pytest.fixture
def study_workers(tmp_path: Path) -> Callable[[str], tuple[Callable[[int, float], subprocess.Popen], str, Path]]:
    """``make(job_source)`` writes a worker script and returns ``(start, storage, log)``:
    ``start(n, seconds)`` launches ``python job.py STORAGE N SECONDS LOG`` against one SQLite
    study; the script appends "PID start|end KEY" lines to ``log``."""

    def make(job_source: str) -> tuple[Callable[[int, float], subprocess.Popen], str, Path]:
        script = tmp_path / "job.py"
        script.write_text(job_source)
        storage = f"sqlite:///{tmp_path / 'study.db'}"
        log = tmp_path / "log.txt"
        log.touch()

        def start(n: int, seconds: float) -> subprocess.Popen:
            return subprocess.Popen([sys.executable, str(script), storage, str(n), str(seconds), str(log)],
                                    stderr=subprocess.PIPE, text=True)

        return start, storage, log

    return make
