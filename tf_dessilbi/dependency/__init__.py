"""Which units are coupled: the channel dependency graph of a Keras graph model.

* `graph` — the channel dependency graph over Keras' nodes (Torch-Pruning's
  DepGraph idea): which channels a layer's cut forces elsewhere;
* `groups` — the producer units that leave together (`unit_groups`) and the
  one rounding rule of ``round_to`` (`round_up_units`).

Below both the optimizer family (`tf_dessilbi.dessilbi`'s joint groups and
rounded supports) and physical removal (`tf_dessilbi.shrink`), which both
read it.
"""

from tf_dessilbi.dependency.groups import UnitGroup
from tf_dessilbi.dependency.groups import round_up_units
from tf_dessilbi.dependency.groups import unit_groups

__all__ = ["UnitGroup", "round_up_units", "unit_groups"]
