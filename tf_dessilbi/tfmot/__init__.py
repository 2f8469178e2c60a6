"""Bridge to the TensorFlow Model Optimization Toolkit (TF-MOT, tf_keras).

TF-MOT only accepts tf_keras (Keras 2) models. This module carries a sparse
Keras 3 model over, with its weights and masks, and gives TF-MOT what it
needs to keep the sparsity while fine-tuning or quantizing:

* `to_tf_keras(model, optimizer=None)`: the stripped model (see
  `tf_dessilbi.strip`) rebuilt as an equivalent tf_keras model;
* `sparse_masks(model, optimizer=None)`: ``{layer name: bool mask}`` from
  the support of Γ (DessiLBI) and from `SparseGate` hard masks;
* `to_pruned(tf_keras_model, masks)`: the masked layers wrapped in TF-MOT's
  pruning wrappers with the masks fixed (`FixedMask` never changes them), so
  fine-tuning with ``UpdatePruningStep`` keeps pruned weights at zero,
  ``tfmot.sparsity.keras.strip_pruning`` strips the wrappers, and
  prune-preserving QAT
  (``tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme``)
  applies to the result;
* `TFMOTMasks`: a TF-MOT-pruned tf_keras model's masks as a
  `tf_dessilbi.masks.MaskSource` (back to Keras 3: `shrink`, reports);
* `DessiLBI`: the optimizer for ``tf_keras`` ``model.compile``, sharing
  everything but framework glue with the Keras 3 `tf_dessilbi.DessiLBI`.

Modules: `convert` (Keras 3 → tf_keras), `pruned` (masks and fixed-mask
pruning), `optimizer` (the tf_keras DessiLBI), `_lazy` (the import guard).

tf_keras and TF-MOT are imported on first use, never at package import.
Importing TF-MOT sets ``TF_USE_LEGACY_KERAS=1`` in the process environment
(which would switch ``tf.keras`` and child processes to Keras 2); this module
restores the variable to its previous value right after the import, so Keras 3
keeps working as before in the same process.

Example:

```python
from tf_dessilbi import tfmot as bridge
import tensorflow_model_optimization as tfmot

tfk_model = bridge.to_tf_keras(model, optimizer)
pruned = bridge.to_pruned(tfk_model, bridge.sparse_masks(model, optimizer))
pruned.compile(...)
pruned.fit(x, y, callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
stripped = tfmot.sparsity.keras.strip_pruning(pruned)
```
"""

from tf_dessilbi.tfmot.convert import CARRIED_LAYERS
from tf_dessilbi.tfmot.convert import to_tf_keras
from tf_dessilbi.tfmot.pruned import TFMOTMasks
from tf_dessilbi.tfmot.pruned import sparse_masks
from tf_dessilbi.tfmot.pruned import to_pruned


def __getattr__(name):
    # `tf_dessilbi.tfmot.DessiLBI` / `.FixedMask` subclass tf_keras / TF-MOT
    # classes, so they are created on first access.
    if name == "DessiLBI":
        from tf_dessilbi.tfmot.optimizer import dessilbi_class

        return dessilbi_class()
    if name == "FixedMask":
        from tf_dessilbi.tfmot.pruned import fixed_mask_class

        return fixed_mask_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CARRIED_LAYERS",
    "TFMOTMasks",
    "sparse_masks",
    "to_pruned",
    "to_tf_keras",
]
