"""Architecture search: EfficientNetV2's training-aware search and EfficientNet-B0's
FLOPs-aware (MnasNet) search, as tools that train on the user's data and device.

- :mod:`effnet.search.space`: stage-wise search spaces as data (built in: ``v2-s``, ``v2-b0``,
  ``b0``; or a YAML file); a candidate is a plain ModelSpec.
- :mod:`effnet.search.reward`: the rewards as pure functions (V2's A * S^w * P^v, MnasNet's
  soft and hard ACC * (cost/T)^w) and the Pareto front.
- :func:`run`: the search, in an Optuna study shared with the scaling lab's machinery
  (:mod:`effnet.lab.store`): resumable, several workers, a killed worker's trial trained again.

Optuna is imported only when a search runs.
"""

from effnet.search.reward import mnas_hard, mnas_reward, mnas_soft, pareto_front, v2_reward
from effnet.search.run import SearchReport, run
from effnet.search.space import SearchSpace, SpaceError, StageChoices, load_space

__all__ = ["SearchReport", "SearchSpace", "SpaceError", "StageChoices", "load_space", "mnas_hard", "mnas_reward",
           "mnas_soft", "pareto_front", "run", "v2_reward"]
