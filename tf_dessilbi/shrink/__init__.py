"""Physical removal of filters and neurons: smaller, faster plain Keras models.

`shrink(model, source)` reads which units a sparse model has removed (any
`tf_dessilbi.masks` source), finds what is coupled to them (`tf_dessilbi.dependency`: the
channel dependency graph over the Keras graph, Torch-Pruning's DepGraph idea,
and the producer units that leave together), decides what goes
(`units`), folds constant outputs into biases (`fold`), cuts each layer
(`handlers`, attached to the layer table) and rebuilds the model
(`rebuild`), with a `ShrinkReport` of units, parameters and MACs.
"""

from tf_dessilbi.dependency import handlers  # attaches the cut handlers to the layer table
from tf_dessilbi.shrink.api import shrink
from tf_dessilbi.dependency.groups import UnitGroup
from tf_dessilbi.dependency.groups import unit_groups
from tf_dessilbi.shrink.report import ShrinkReport
from tf_dessilbi.shrink.report import ShrinkRow

__all__ = ["ShrinkReport", "ShrinkRow", "UnitGroup", "handlers", "shrink", "unit_groups"]
