"""effnet: the EfficientNet family and compound model scaling for PyTorch."""

from __future__ import annotations

from typing import TYPE_CHECKING

from effnet.lazy import lazy_attributes

__version__ = "0.1.0"

# The front door is lazy (PEP 562): every public name is looked up in this table and its module is
# imported on first use. It cannot simply import its names: the console script (``effnet.cli:main``)
# makes Python import this package before any command runs, so an eager ``from effnet.model import
# ...`` here would load torch (over a second) for ``effnet --help`` too. Only an entry point outside
# the package (a second top-level module) would avoid that; one table is the smaller cost. It also
# keeps ``import effnet.data`` (or ``effnet.model``) from pulling in the upper layers (weights,
# deploy), which tests/test_layers.py checks.
_LAZY: dict[str, str] = {
    "ConvNet": "effnet.model",
    "EfficientNet": "effnet.model",  # the same class as ConvNet, by the name users look for
    "build": "effnet.model",
    "REGISTRY": "effnet.registry",
    "get_spec": "effnet.registry",
    "list_models": "effnet.registry",
    "compound_scale": "effnet.scaling",
    "round_filters": "effnet.scaling",
    "round_repeats": "effnet.scaling",
    "scale": "effnet.scaling",
    "ModelSpec": "effnet.specs",
    "StageSpec": "effnet.specs",
    "create_model": "effnet.weights",
    "load_model": "effnet.weights",
    "optimize": "effnet.deploy.runtime",  # the fast inference path (torch, ONNX Runtime, OpenVINO)
    "export": "effnet.deploy.export",  # verified ONNX / TorchScript / torch.export
    "Session": "effnet.deploy.runtime",  # a runtime session (torch, ONNX Runtime, OpenVINO)
}

__all__ = [
    "REGISTRY", "ConvNet", "EfficientNet", "ModelSpec", "Session", "StageSpec", "__version__", "build", "compound_scale",
    "create_model", "export", "get_spec", "list_models", "load_model", "optimize", "round_filters",
    "round_repeats", "scale",
]

if TYPE_CHECKING:  # static checkers see the real names; nothing is imported at run time
    from effnet.deploy.export import export
    from effnet.deploy.runtime import Session, optimize
    from effnet.model import ConvNet, EfficientNet, build
    from effnet.registry import REGISTRY, get_spec, list_models
    from effnet.scaling import compound_scale, round_filters, round_repeats, scale
    from effnet.specs import ModelSpec, StageSpec
    from effnet.weights import create_model, load_model


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())
