"""effnet: the EfficientNet family and compound model scaling for PyTorch."""

from effnet.model import EfficientNet, build
from effnet.registry import REGISTRY, create_model, get_spec, list_models
from effnet.scaling import compound_scale, round_filters, round_repeats, scale
from effnet.specs import ModelSpec, StageSpec

__version__ = "0.1.0"

__all__ = [
    "REGISTRY",
    "EfficientNet",
    "ModelSpec",
    "StageSpec",
    "__version__",
    "build",
    "compound_scale",
    "create_model",
    "get_spec",
    "list_models",
    "round_filters",
    "round_repeats",
    "scale",
]


def __getattr__(name: str):  # lazy: weights pull in safetensors/yaml only when asked for
    if name == "load_model":
        from effnet.weights import load_model

        return load_model
    raise AttributeError(f"module 'effnet' has no attribute {name!r}")
