"""DessiLBI (Fu et al., ICML 2020): the optimizer and its pieces.

* `proximal` — the proximal maps of λΩ (soft-threshold, group soft-threshold);
* `slbi` — one split-LBI step as pure tensor maths (shared by both optimizers);
* `structures` — which weights are coupled to Γ, and how (filter/neuron/elementwise);
* `optimizer` — `DessiLBI`, the Keras 3 optimizer;
* `joint_groups` — units coupled jointly across layers (``unit_groups``);
* `w_star` — W* = W on supp(Γ) (`apply_w_star`);
* `fork` — `Fork`: when the fine-tune of W* starts and the support it keeps;
* `finetune` — `WStarFinetune`: from the fork on, W* trained on its support;
* `train_step` — a custom TensorFlow train step (`make_train_step`).
"""

from tf_dessilbi.dessilbi.finetune import WStarFinetune
from tf_dessilbi.dessilbi.fork import Fork
from tf_dessilbi.dessilbi.joint_groups import joint_unit_groups
from tf_dessilbi.dessilbi.optimizer import DessiLBI
from tf_dessilbi.dessilbi.structures import structures_for
from tf_dessilbi.dessilbi.w_star import WStar
from tf_dessilbi.dessilbi.w_star import apply_w_star

__all__ = ["DessiLBI", "Fork", "WStar", "WStarFinetune", "apply_w_star", "joint_unit_groups",
           "structures_for"]
