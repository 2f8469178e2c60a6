"""tf_dessilbi: deep networks sparse by construction, for Keras 3 / TensorFlow."""

import pathlib
import re

from setuptools import find_packages, setup

HERE = pathlib.Path(__file__).parent
VERSION = re.search(
    r'^__version__ = "([^"]+)"',
    (HERE / "tf_dessilbi" / "__init__.py").read_text(),
    re.M,
).group(1)

setup(
    name="tf_dessilbi",
    version=VERSION,
    description=(
        "DessiLBI and Continuous Sparsification for Keras 3: train sparse "
        "networks, export them to plain Keras, SavedModel, LiteRT, ONNX and TF-MOT."
    ),
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["tf_dessilbi", "tf_dessilbi.*"]),
    install_requires=[
        "tensorflow>=2.16,<2.22",
        "keras>=3.3,<4",
        # TF-MOT bridge only (tf_dessilbi.tfmot); tf-keras must match TF's minor.
        "tf-keras>=2.16,<2.22",
        "tensorflow-model-optimization>=0.8,<0.9",
        "tensorflow-datasets>=4.9,<5",
        # TFDS imports it when it builds a dataset but does not declare it.
        "importlib_resources>=5",
        # TensorFlow no longer depends on it; reading the CLI's summaries needs it.
        "tensorboard>=2.16,<2.22",
        "absl-py>=1.4,<3",
        "ml-collections>=0.1.1,<2",
        "numpy>=1.26,<3",
    ],
    extras_require={
        "plot": ["matplotlib>=3.7,<4"],
        # keras-hub's transformer layers, for the shrink tests on transformer encoders.
        "hub": ["keras-hub>=0.32,<0.33"],
        "test": [
            "pytest>=7.4,<10",
            "pytest-xdist>=3.3,<4",
            "matplotlib>=3.7,<4",
        ],
        # The documentation site: `make docs` (mkdocs build --strict).
        "docs": [
            "mkdocs>=1.6,<2",
            "mkdocs-material>=9.5,<10",
            "mkdocstrings[python]>=1.0,<2",
            "mkdocstrings-python>=2.0,<3",
        ],
        # export_model(format="onnx"): Keras' ONNX exporter runs tf2onnx (Keras 3.15 patches
        # it for NumPy 2), and the export's check runs the file in onnxruntime. Measured with
        # TF 2.21 / NumPy 2.4: tf2onnx 1.17.0, onnx 1.23.2, onnxruntime 1.32.0.
        "onnx": [
            "tf2onnx>=1.16.1,<1.18",
            "onnx>=1.16,<1.24",
            "onnxruntime>=1.18,<1.33",
        ],
        # Other Keras backends (CPU builds) for the backend-portability tests.
        # torch < 2.14 resolves to the 2.13 CPU wheel that the project's
        # machines carry; newer resolutions pull several GB of CUDA packages.
        "backends": [
            "jax[cpu]>=0.4.30,<1",
            "torch>=2.4,<2.14",
        ],
        # bench/compress.py's peer: Torch-Pruning on a PyTorch port of the same model
        # (torch pinned as in "backends": the CPU wheel, not a CUDA build).
        "bench": [
            "torch>=2.4,<2.14",
            "torch-pruning>=1.6,<1.7",
        ],
    },
    entry_points={
        "console_scripts": ["tf-dessilbi-train=tf_dessilbi.training.main:run_main"],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
