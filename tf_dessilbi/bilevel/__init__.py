"""Bilevel optimization for tuning sparsity strengths (TensorFlow backend only).

min_x Φ(x) = f(x, y*(x)),  y*(x) = argmin_y g(x, y): x the hyperparameters
(log-strengths of penalties), y the model's weights.

* `BilevelProblem`: the two losses and their batch samplers.
* `hypergrad`: ∇_y g and the Neumann-series hypergradient by nested autodiff.
* Solvers with one API (``step()``, ``run(n)``, ``counter``): `MRBO` and
  `VRBO` (Yang, Ji & Liang, NeurIPS 2021) and the SGD-type baseline `StocBiO`.
* `OracleCounter`: gradient, Hessian- and Jacobian-vector product calls.
* Uses: per-layer Continuous Sparsification penalties for a global density
  target (`cs`, `BilevelTuner`) and per-layer weight decay (`weight_decay`).

Backends: TensorFlow only. The solvers use `tf.GradientTape` (nested, for
Hessian-vector products) and `tf.function` on TensorFlow tensors, so the
problem callables must compute with TensorFlow ops (`keras.ops` works when
Keras runs on TensorFlow). The Keras-model uses (`cs`, `weight_decay`,
`BilevelTuner`) call `model.stateless_call` under the tapes and raise a
`RuntimeError` on the JAX and PyTorch backends; importing this subpackage
needs TensorFlow installed whatever the backend.
"""

from tf_dessilbi.bilevel.hypergrad import hypergradient
from tf_dessilbi.bilevel.hypergrad import inner_grad
from tf_dessilbi.bilevel.mrbo import MRBO
from tf_dessilbi.bilevel.oracles import OracleCounter
from tf_dessilbi.bilevel.problem import BilevelProblem
from tf_dessilbi.bilevel.solvers import BilevelSolver
from tf_dessilbi.bilevel.solvers import StocBiO
from tf_dessilbi.bilevel.vrbo import VRBO

SOLVERS = {"mrbo": MRBO, "vrbo": VRBO, "stocbio": StocBiO}

__all__ = [
    "BilevelProblem",
    "BilevelSolver",
    "MRBO",
    "OracleCounter",
    "SOLVERS",
    "StocBiO",
    "VRBO",
    "hypergradient",
    "inner_grad",
]
