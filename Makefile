# Two entry points (see README): `make train` and `make test`.
# Both create ./.venv, install the package, and fetch real Fashion-MNIST from
# Debian's `dataset-fashion-mnist` if it is not installed yet.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
WORKDIR ?= runs/fmnist_dessilbi
PYTEST_ARGS ?=

.PHONY: setup setup-test setup-docs data train tensorboard test test-sweep test-applications bench docs clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV) || { $(SUDO) apt-get update && $(SUDO) apt-get install -y python3-venv && $(PYTHON) -m venv $(VENV); }

$(VENV)/.installed: setup.py | $(VENV)/bin/python
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[plot]"
	touch $@

# onnx: every export format's tests run (LiteRT needs only TensorFlow); hub: keras-hub layers.
$(VENV)/.installed-test: $(VENV)/.installed setup.py
	$(PY) -m pip install -e ".[test,backends,onnx,hub]"
	touch $@

$(VENV)/.installed-docs: $(VENV)/.installed
	$(PY) -m pip install -e ".[docs]"
	touch $@

$(FMNIST):
	$(SUDO) apt-get update
	$(SUDO) apt-get install -y dataset-fashion-mnist

setup: $(VENV)/.installed
setup-test: $(VENV)/.installed-test
setup-docs: $(VENV)/.installed-docs
data: $(FMNIST)

# The main job: a short DessiLBI run on real Fashion-MNIST. Prints progress and
# the sparsity table; writes the SavedModel and path.png under $(WORKDIR).
train: $(VENV)/.installed $(FMNIST)
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m tf_dessilbi.train --config=fmnist_dessilbi --workdir=$(WORKDIR)

# TensorBoard on the run `make train` writes (open http://localhost:6006).
tensorboard: $(VENV)/.installed
	$(VENV)/bin/tensorboard --logdir $(WORKDIR)/tensorboard

# The suite, slow end-to-end tests included (CI's first step); the sweeps are `make test-sweep`.
# worksteal: an idle worker takes half of the other's queue, so the few minute-long
# end-to-end tests do not leave one core waiting (≈ 40 s less than --dist loadfile here).
test: $(VENV)/.installed-test $(FMNIST)
	$(PY) -m pytest -n 2 --dist worksteal -q -rs --durations=15 $(PYTEST_ARGS)

# The sweeps (pytest -m sweep), CI's second step: every packaged config through the CLI, shrink on every
# keras.applications architecture, the optimizer tests under JAX and PyTorch, the longest end-to-end runs.
# loadgroup: the keras.applications tests run one at a time on one worker (the largest peaks at ~14 GB).
test-sweep: $(VENV)/.installed-test $(FMNIST)
	$(PY) -m pytest -n 2 --dist loadgroup -q -rs --durations=15 -m sweep $(PYTEST_ARGS)

# The keras.applications part of the sweep alone.
test-applications: $(VENV)/.installed-test
	$(PY) -m pytest -q -rs -m sweep tests/test_shrink_applications.py

bench: $(VENV)/.installed-test $(FMNIST)
	$(PY) -m bench.run

# The documentation site (docs/, mkdocs.yml) into site/; a broken link or API reference fails it.
docs: $(VENV)/.installed-docs
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

clean:
	rm -rf $(VENV) runs site *.egg-info
