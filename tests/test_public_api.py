"""Every public name stays importable; no module imports tf_keras at package import."""

import subprocess
import sys

import tf_dessilbi


def test_every_name_of_all_is_importable():
    assert len(tf_dessilbi.__all__) == len(set(tf_dessilbi.__all__))
    for name in tf_dessilbi.__all__:
        assert getattr(tf_dessilbi, name) is not None, name


def test_the_names_of_release_0_1_are_still_there():
    released = {
        "DessiLBI", "SparsityReport", "SparsityRow", "TicketSearch", "TicketSearchResult", "WStar",
        "__version__", "apply_w_star", "callbacks", "export_saved_model", "gate_masks", "gate_model",
        "gated_layers", "group_soft_threshold", "layers", "make_train_step", "register_gated_layer",
        "reset_gates", "set_beta", "set_ticket_mode", "soft_threshold", "sparsity_report", "strip",
        "structures_for", "tfmot",
    }
    assert released <= set(tf_dessilbi.__all__)
    from tf_dessilbi.gates.callbacks import GateTemperature  # noqa: F401
    from tf_dessilbi.layers import SparseGate  # noqa: F401
    from tf_dessilbi.tfmot import sparse_masks, to_pruned, to_tf_keras  # noqa: F401


def test_package_import_does_not_load_tf_keras_or_tfmot():
    code = (
        "import sys, tf_dessilbi; "
        "bad = [m for m in ('tf_keras', 'tensorflow_model_optimization') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
