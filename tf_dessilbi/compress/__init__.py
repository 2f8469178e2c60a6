"""Compress a trained model to a MACs or parameter budget.

`groups` (the removable channel groups and `shrink`'s cost counter),
`importance` (filter norms, BatchNorm γ, first-order Taylor), `budget` (the
fewest removals meeting a target, ``round_to``), `pruner` (`Pruner`: one-shot
or iterative prune → fine-tune) and `warm_start` (DessiLBI started from the
trained weights, forked when supp Γ meets the budget).
"""

from tf_dessilbi.compress.groups import ChannelGroup
from tf_dessilbi.compress.groups import CostModel
from tf_dessilbi.compress.importance import BatchNormScale
from tf_dessilbi.compress.importance import Importance
from tf_dessilbi.compress.importance import Magnitude
from tf_dessilbi.compress.importance import Taylor
from tf_dessilbi.compress.pruner import Pruner
from tf_dessilbi.compress.warm_start import BudgetFork
from tf_dessilbi.compress.warm_start import DessiLBIWarmStart

__all__ = ["BatchNormScale", "BudgetFork", "ChannelGroup", "CostModel", "DessiLBIWarmStart",
           "Importance", "Magnitude", "Pruner", "Taylor"]
