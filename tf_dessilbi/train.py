"""``python -m tf_dessilbi.train``: the training CLI (see `tf_dessilbi.training.main`)."""

from tf_dessilbi.training.main import run_main

if __name__ == "__main__":
    run_main()
