"""Quickstart: DessiLBI and Continuous Sparsification on real Fashion-MNIST.

Train → report → W* → strip → SavedModel → TF-MOT, then a gated model with a
β-annealed search and a ticket. This is the code of docs/getting-started.md.

    python examples/quickstart.py                 # full data, 3 + 3 epochs
    python examples/quickstart.py --quick         # a small slice, for smoke tests
"""

import argparse
import os
import tempfile

import keras

import tf_dessilbi
from tf_dessilbi.training.data import fashion_mnist_datasets
from tf_dessilbi.models import fmnist_cnn_s


def main(quick: bool, out_dir: str) -> None:
    limit = dict(train_limit=2048, test_limit=512) if quick else {}
    epochs = 1 if quick else 3
    train, test = fashion_mnist_datasets(batch_size=128, **limit)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    # 1. DessiLBI: Γ per conv filter (group lasso) and per dense weight.
    model = fmnist_cnn_s()
    opt = tf_dessilbi.DessiLBI(learning_rate=0.05, mu=20.0)
    model.compile(optimizer=opt, loss=loss, metrics=["accuracy"])
    model.fit(train, epochs=epochs, verbose=2)
    print(tf_dessilbi.sparsity_report(model, opt))
    with tf_dessilbi.apply_w_star(model, opt):  # W* = W on supp(Γ)
        print("W* test accuracy: %.4f" % model.evaluate(test, verbose=0)[1])

    # 2. Export: a plain Keras model with W*, a versioned SavedModel, TF-MOT.
    sparse = tf_dessilbi.strip(model, opt)
    # --quick is a 16-step smoke run: supp Γ may still be empty there, which the export
    # refuses (its outputs would not depend on the input) unless told otherwise.
    path = tf_dessilbi.export_saved_model(sparse, os.path.join(out_dir, "fmnist"), allow_dead=quick)
    print("SavedModel:", path)
    masks = tf_dessilbi.tfmot.sparse_masks(model, opt)
    pruned = tf_dessilbi.tfmot.to_pruned(tf_dessilbi.tfmot.to_tf_keras(model, opt), masks)
    print("TF-MOT wrappers:", [l.name for l in pruned.layers if "prune" in l.name])

    # 3. Continuous Sparsification: gates σ(β·s), β annealed 1 → 200 per step.
    gated = tf_dessilbi.gate_model(fmnist_cnn_s(), penalty=1e-8)
    gated.compile(
        optimizer=keras.optimizers.SGD(0.02, momentum=0.9, nesterov=True),
        loss=loss, metrics=["accuracy"],
    )
    gated.fit(train, epochs=epochs, verbose=2, callbacks=[
        tf_dessilbi.callbacks.GateTemperature(final_beta=200.0, epochs=epochs)])
    tf_dessilbi.set_ticket_mode(gated)  # hard masks 1[s > 0]/σ(s₀)
    print(tf_dessilbi.sparsity_report(gated))
    print("gated (hard mask) test accuracy: %.4f" % gated.evaluate(test, verbose=0)[1])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small data slice, 1 epoch")
    parser.add_argument("--out", default=None, help="output folder (default: a temp dir)")
    args = parser.parse_args()
    main(args.quick, args.out or tempfile.mkdtemp(prefix="tf_dessilbi_quickstart_"))
