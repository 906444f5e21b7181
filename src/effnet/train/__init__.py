"""Training, fine-tuning, evaluation and prediction with the EfficientNet recipes.

A run is a straight pipeline (effnet.train.pipeline): config -> run folder -> data -> model ->
loop -> report, one module per step."""

from __future__ import annotations

import sys
import types
from typing import Any

from effnet.lazy import lazy_attributes

# Names load on first use (PEP 562): the command line builds its parser from TrainConfig
# (effnet.train.config), and importing this package for that must not load torch.
_LAZY: dict[str, str] = {name: module for module, names in (
    ("effnet.data.progressive", ("eval_resolution",)),
    ("effnet.train.config", ("RECIPES", "TrainConfig", "resolve_config")),
    ("effnet.train.distributed", ("Interrupted",)),
    ("effnet.train.evaluate", ("EvalResult", "Prediction", "evaluate", "predict")),
    ("effnet.train.model", ("ModelEMA", "RMSpropTF", "build_model", "lr_at", "param_groups", "scaled_lr")),
    ("effnet.train.pipeline", ("RunResult", "auto_threads", "train")),
    ("effnet.train.trial", ("run_trial",)),
) for name in names}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())


class _Package(types.ModuleType):
    """Keeps ``effnet.train.evaluate`` the function: importing the submodule of the same name binds
    the module on this package, which would shadow the function (an eager import re-bound it)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _LAZY.get(name) == value.__name__ and hasattr(value, name):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
