r"""tf_dessilbi/configs/fmnist_rigl.py with uniform layer densities (every layer at 90 %).

    python -m tf_dessilbi.train --config=fmnist_rigl_uniform --workdir=runs/fmnist_rigl_uniform

Accuracy under the shared protocol: docs/research/reports/SPARSE_COMPARE.md (not measured with
this command).
"""

import os

from tf_dessilbi.training import config_lib


def get_config():
    config = config_lib.load_config(os.path.join(os.path.dirname(__file__), "fmnist_rigl.py"))
    config.sparse.distribution = "uniform"
    return config
