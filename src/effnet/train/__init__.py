"""Training, fine-tuning, evaluation and prediction with the EfficientNet recipes."""

from effnet.train.config import RECIPES, TrainConfig, resolve_config
from effnet.train.evaluate import EvalResult, Prediction, evaluate, predict
from effnet.train.loop import RunResult, train
from effnet.train.optim import ModelEMA, RMSpropTF, lr_at, param_groups, scaled_lr
from effnet.train.setup import build_model, eval_resolution
from effnet.train.stop import Interrupted
from effnet.train.trial import run_trial

__all__ = [
    "RECIPES", "EvalResult", "Interrupted", "ModelEMA", "Prediction", "RMSpropTF", "RunResult", "TrainConfig",
    "build_model", "eval_resolution", "evaluate", "lr_at", "param_groups", "predict", "resolve_config", "run_trial",
    "scaled_lr", "train",
]
