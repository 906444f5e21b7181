"""One training trial as a library function: a spec and a budget in, metrics out.

The scaling search, the scaling study and the architecture search each train
many candidates briefly and compare them; they call :func:`run_trial` in-process and read its
:class:`~effnet.train.pipeline.RunResult` (no subprocess, no parsing of printed text). The study that
drives them owns the bookkeeping of trials; a trial keeps no files unless given a folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from effnet.specs.base import ModelSpec
from effnet.train.config import TrainConfig, resolve
from effnet.train.loop import EpochReport
from effnet.train.pipeline import RunResult, execute


def run_trial(
    spec: ModelSpec | str, *, data: str | None = None, epochs: int = 1, image_size: int | None = None,
    config: TrainConfig | str | None = None, out: str | Path | None = None, on_epoch: EpochReport | None = None,
    progress: bool = False, **overrides: Any,
) -> RunResult:
    """Train ``spec`` for ``epochs`` on ``data``; its metrics (``final_top1``, ``final_loss``,
    ``best_top1``, ``epochs``, ``seconds``, ``img_per_s``, ``params``, per-epoch ``metrics``).

    - ``spec``: the architecture, as a :class:`ModelSpec` (a scaled or searched candidate,
      trained as given: its head is sized for the data's classes, nothing else changes) or a
      registered name.
    - ``data``: ``digits``, or an image folder (default: the config's, i.e. ``digits``).
    - ``image_size``: the training size; ``None``: the spec's own (``train_resolution``, else
      ``resolution``), so that a resolution-scaled candidate trains at its size. It is
      evaluated at the spec's train/eval ratio (:func:`~effnet.data.progressive.eval_resolution`).
    - ``config``: the recipe a trial trains with, a :class:`TrainConfig` or a recipe name/YAML
      (default: ``digits`` for the digits data, else ``paper_v1``); its model, width and depth
      give way to ``spec``, and ``overrides`` (any other TrainConfig field: ``batch_size``,
      ``train_subset``, ``seed``, ``threads``, ``warmup_epochs``...) apply on top.
    - ``out``: a run folder (checkpoints and metrics; ``train(cfg, resume=out)`` continues it);
      ``None``: nothing is written.
    - ``on_epoch``: called with each epoch's metrics row; raising from it (``optuna.TrialPruned``)
      stops the trial there.

    SIGINT/SIGTERM raise :class:`~effnet.train.distributed.Interrupted` (a ``KeyboardInterrupt``) at
    the next optimiser step.
    """
    base = config if isinstance(config, TrainConfig) else resolve(config, data=data).cfg
    # The candidate replaces the recipe's model (``None`` values here are meant: the spec's own
    # size, no initial weights, no spec file), and ``overrides`` go on top.
    trial = {"epochs": epochs, "image_size": image_size, "width": 1.0, "depth": 1.0, "weights": None, "spec": None,
             "model": spec.name if isinstance(spec, ModelSpec) else spec, "out": None if out is None else str(out),
             **({"data": data} if data is not None else {}), **overrides}
    cfg = resolve(base=base, **trial).cfg
    return execute(cfg, spec=spec if isinstance(spec, ModelSpec) else None, keep_files=out is not None,
                   progress=progress, on_epoch=on_epoch)
