"""One ``create_model``: the registry resolves a name and its overrides once; weights are optional."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import effnet
from effnet.model import build
from effnet.registry import get_spec
from effnet.weights import save_weights

PACKAGE = Path(effnet.__file__).resolve().parent


def test_create_model_is_defined_once_in_the_package():
    defs = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
            for node in ast.walk(ast.parse(p.read_text()))
            if isinstance(node, ast.FunctionDef) and node.name == "create_model"]
    assert defs == ["weights/__init__.py"]


@pytest.mark.parametrize("field", ["width", "depth"])
def test_recorded_scaling_is_refused_with_and_without_weights(field: str, tmp_path: Path):
    path = tmp_path / "b0.safetensors"
    save_weights(build(get_spec("efficientnet_b0")), path)
    for kwargs in ({}, {"weights": path}):
        with pytest.raises(ValueError, match=f"{field} cannot be overridden"):
            effnet.create_model("efficientnet_b0", **{field: 2.0}, **kwargs)


def test_weights_load_with_a_new_head_and_overrides(tmp_path: Path):
    """The file's tensors arrive (compared with the model that wrote them), the head is new, and a
    runtime override (dropout) reaches the spec."""
    torch.manual_seed(0)
    source = build(get_spec("efficientnet_b0"))
    path = tmp_path / "b0.safetensors"
    save_weights(source, path)
    model = effnet.create_model("efficientnet_b0", num_classes=7, weights=path, dropout=0.5)
    assert model.spec.num_classes == 7 and model.spec.dropout == 0.5
    assert torch.equal(model.stem.conv.weight, source.stem.conv.weight)
    assert model.classifier.out_features == 7
