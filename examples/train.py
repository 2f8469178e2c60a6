r"""Train a sparse network from a config file (same as ``python -m tf_dessilbi.train``).

    python examples/train.py --config=fmnist_dessilbi --workdir=runs/fmnist_dessilbi
"""

from tf_dessilbi.training.main import run_main

if __name__ == "__main__":
    run_main()
