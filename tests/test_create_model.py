"""One ``create_model``: the registry resolves a name and its overrides once; weights are optional."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
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


def test_a_cache_hit_loads_no_converter(tmp_path: Path):
    """``create_model(name, pretrained=True)`` with the converted file in the cache reads it and
    nothing else: the download step and the converters' key maps stay unloaded (a fresh
    interpreter, since other tests load them). The source's URL is never contacted."""
    spec = get_spec("tinynet_e")
    torch.manual_seed(0)
    saved = build(spec)
    (tmp_path / "cache").mkdir()
    save_weights(saved, tmp_path / "cache" / "tinynet_e.timm.safetensors")
    code = """
import sys
import effnet
from effnet.registry import PRETRAINED, Checksum, PretrainedSource
PRETRAINED["tinynet_e"] = PretrainedSource("http://127.0.0.1:9/tinynet_e-0123abcd.pth", "timm", "tinynet_e",
                                           Checksum("sha256", "0123abcd", prefix=True))
model = effnet.create_model("tinynet_e", pretrained=True)
print(float(model.stem.conv.weight.sum()))
print(sorted(m for m in sys.modules if m.startswith("effnet.weights.")))
"""
    env = {**os.environ, "EFFNET_CACHE": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    weight_sum, loaded = out.stdout.splitlines()
    assert float(weight_sum) == pytest.approx(float(saved.stem.conv.weight.detach().sum()))  # the cached file's tensors
    assert loaded == "['effnet.weights.format', 'effnet.weights.hub']"


def test_the_entry_holds_the_spec_and_the_published_source():
    """torchvision publishes B0 (its file name carries the first 8 hex digits of the SHA-256);
    nobody publishes effnet ImageNet weights for the ResNet-18 baseline."""
    from effnet.registry import resolve

    b0 = resolve("efficientnet_b0", 10, dropout=0.3)
    assert b0.spec == get_spec("efficientnet_b0").replace(num_classes=10, dropout=0.3)
    assert b0.pretrained is not None and b0.pretrained.source == "torchvision"
    assert b0.pretrained.url == "https://download.pytorch.org/models/efficientnet_b0_rwightman-7f5810bc.pth"
    assert b0.pretrained.checksum.hexdigest == "7f5810bc" and b0.pretrained.checksum.prefix
    assert resolve("resnet18").pretrained is None
    with pytest.raises(ValueError, match="no published weights known for 'resnet18'"):
        effnet.create_model("resnet18", pretrained=True)
