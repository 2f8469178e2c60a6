"""The benchmark's "user's model": the protocol's ResNet-20 trained dense with SGD, saved once.

    python -m bench.compress_dense [--epochs 10] [--seed 0] [--limit N]

Trains `bench.parity.build("resnet20", seed)` (ResNet-20 on 28×28×1) with
`bench.protocol.train` for ``epochs`` epochs and saves it as
``<WORK_DIR>/compress/resnet20_dense_e<epochs>_s<seed>.keras`` with its
result next to it (``.json``). `bench.compress` starts every contender from
that file; a file already there is kept (delete it to retrain).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import bench

bench.quiet_tf()

from bench import protocol  # noqa: E402

_log = bench.logger("compress-dense")


def dense_path(epochs: int = protocol.EPOCHS, seed: int = 0, limit: int = 0) -> str:
    """Where the trained dense model of (``epochs``, ``seed``, ``limit``) is saved."""
    tag = f"_limit{limit}" if limit else ""
    return os.path.join(bench.WORK_DIR, "compress", f"resnet20_dense_e{epochs}_s{seed}{tag}.keras")


def train_dense(epochs: int = protocol.EPOCHS, seed: int = 0, limit: int = 0) -> str:
    """Trains and saves the dense ResNet-20 (or returns the file already there)."""
    path = dense_path(epochs, seed, limit)
    if os.path.exists(path):
        return path
    from bench import parity

    data = protocol.load_data(seed, epochs, train_limit=limit or None, test_limit=limit or None)
    model = parity.build("resnet20", seed)
    _log(f"training ResNet-20 dense, E = {epochs}, seed {seed}")
    result = protocol.train(model, data, epochs)
    _log(f"dense accuracy {result['accuracy']:.4f} ({result['wall_s']:.0f} s)")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path[: -len(".keras")] + ".tmp.keras"
    model.save(tmp)
    os.replace(tmp, path)
    with open(path[: -len(".keras")] + ".json", "w") as f:
        json.dump(dict(result, seed=seed, model="resnet20"), f, indent=1, sort_keys=True)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=protocol.EPOCHS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=0, help="first N examples only (smoke runs)")
    args = parser.parse_args(argv)
    print(train_dense(args.epochs, args.seed, args.limit))
    return 0


if __name__ == "__main__":
    sys.exit(main())
