"""Training, fine-tuning, evaluation and prediction with the EfficientNet recipes."""

from effnet.train.config import RECIPES, TrainConfig, resolve_config
from effnet.train.evaluate import EvalResult, Prediction, evaluate, predict
from effnet.train.loop import RunResult, build_model, train
from effnet.train.optim import ModelEMA, RMSpropTF, lr_at, param_groups, scaled_lr

__all__ = [
    "RECIPES", "EvalResult", "ModelEMA", "Prediction", "RMSpropTF", "RunResult", "TrainConfig", "build_model",
    "evaluate", "lr_at", "param_groups", "predict", "resolve_config", "scaled_lr", "train",
]
