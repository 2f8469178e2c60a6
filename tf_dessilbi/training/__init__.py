"""The training CLI and its parts: configs, data, methods, callbacks, outputs.

`train_and_evaluate(config, workdir)` runs one config (``python -m
tf_dessilbi.train`` is its command line); the sparsity method is picked by
name from `METHODS` (``config.method``).
"""

from tf_dessilbi.training.methods import METHODS
from tf_dessilbi.training.methods import Method
from tf_dessilbi.training.train import train_and_evaluate

__all__ = ["METHODS", "Method", "train_and_evaluate"]
