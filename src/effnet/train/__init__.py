"""Training, fine-tuning, evaluation and prediction with the EfficientNet recipes.

A run is a straight pipeline (effnet.train.pipeline): config -> run folder -> data -> model ->
loop -> report, one module per step."""

from __future__ import annotations

from effnet.lazy import lazy_attributes

# Names load on first use (PEP 562): the command line builds its parser from TrainConfig
# (effnet.train.config), and importing this package for that must not load torch.
_LAZY: dict[str, str] = {name: module for module, names in (
    ("effnet.data.progressive", ("eval_resolution",)),
    ("effnet.train.config", ("RECIPES", "TrainConfig", "resolve_config")),
    ("effnet.train.distributed", ("Interrupted",)),
    ("effnet.train.evaluation", ("EvalResult", "Prediction", "evaluate", "predict")),
    ("effnet.train.model", ("ModelEMA", "RMSpropTF", "build_model", "lr_at", "param_groups", "scaled_lr")),
    ("effnet.train.pipeline", ("RunResult", "auto_threads", "train")),
    ("effnet.train.trial", ("run_trial",)),
) for name in names}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())

