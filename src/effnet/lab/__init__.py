"""The scaling lab: EfficientNet's method as tools that train (section 3.3).

- :func:`search`: step 1, find alpha, beta, gamma by training the grid of candidates.
- :func:`study`: scaling strategies compared at matched FLOPs on your data (Figure 3, Table 3).
- :func:`fit`: the largest scaled model within a FLOPs, parameter or latency budget.

These sit above the training code (``effnet.train``), which they call in-process; the pure
parts (strategies, the grid) are in :mod:`effnet.scaling`. Trials live in Optuna studies
(:mod:`effnet.lab.store`); workers take candidates from their queue (:mod:`effnet.lab.queue`), which
puts a dead worker's candidate back (:mod:`effnet.lab.liveness`). The architecture search shares all three.
"""

from effnet.lab.compare import solve_phi, study
from effnet.lab.fit import fit
from effnet.lab.grid import search

__all__ = ["fit", "search", "solve_phi", "study"]
