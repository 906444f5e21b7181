"""effnet: the EfficientNet family and compound model scaling for PyTorch."""

from effnet.model import EfficientNet, build
from effnet.registry import REGISTRY, get_spec, list_models
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
    "export",
    "get_spec",
    "list_models",
    "load_model",
    "optimize",
    "round_filters",
    "round_repeats",
    "scale",
]



def __getattr__(name: str):  # noqa: ANN202 (PEP 562)
    # Loaded on first use, so that ``import effnet.data`` (or ``effnet.model``) does not pull in
    # the weights package: lower layers must import without the upper ones (see tests/test_layers.py).
    if name in ("create_model", "load_model"):
        from effnet import weights

        return getattr(weights, name)
    if name == "optimize":  # effnet.optimize(model, ...): the fast inference path (effnet.deploy)
        from effnet.deploy.optimize import optimize

        return optimize
    if name == "export":  # effnet.export(...): verified ONNX / TorchScript / torch.export
        from effnet.deploy.export import export

        return export
    raise AttributeError(f"module 'effnet' has no attribute {name!r}")
