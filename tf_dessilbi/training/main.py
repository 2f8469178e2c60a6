"""The training CLI: ``python -m tf_dessilbi.train --config=... --workdir=...``.

    python -m tf_dessilbi.train --config=configs/fmnist_dessilbi.py \\
        --workdir=runs/fmnist_dessilbi [--config.optimizer.kappa=2 ...]

``--config`` is a config file (locked: only its existing fields can be
overridden, ``--config.<field>=<value>``; ``--helpfull`` lists them all) and
``--workdir`` the output folder (see `tf_dessilbi.training.train`).

Exit status: 0 done; 1 the run failed (diverged: non-finite loss; damaged
backups); 2 a bad flag, config value or workdir (one line on stderr, nothing
trained); 3 trained, but the export was refused (a dead layer).
"""

from __future__ import annotations

import os
import sys
from typing import Optional

from absl import logging

EXIT_FAILED, EXIT_USAGE, EXIT_EXPORT_REFUSED = 1, 2, 3


def _fields_help() -> str:
    from tf_dessilbi.training import config_lib

    def flat(d, prefix=""):
        for key, value in d.items():
            if hasattr(value, "items"):
                yield from flat(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}={value!r}"

    return (
        "Training config file (configs/*.py). Override its fields with "
        "--config.<field>=<value>; the fields and their defaults: "
        + ", ".join(flat(config_lib.base_config()))
    )


def define_flags() -> None:
    """``--config`` (a config file, locked) and ``--workdir``."""
    from absl import flags
    from ml_collections import config_flags

    if "config" not in flags.FLAGS:
        config_flags.DEFINE_config_file("config", None, _fields_help(), lock_config=True)
        flags.DEFINE_string("workdir", None, "Output folder (resumed if it holds the same run).")
        flags.mark_flags_as_required(["config", "workdir"])


def _usage_error(message: str) -> None:
    sys.stderr.write(f"tf_dessilbi.train: error: {message}\n")
    sys.exit(EXIT_USAGE)


def _parse_flags(argv):
    from absl import flags

    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        _usage_error(f"{e} (--helpfull lists the flags and the config fields)")
    except (ValueError, KeyError, AttributeError, TypeError, OSError) as e:  # config file errors
        _usage_error(f"{type(e).__name__}: {e}")


_PROBE_NOISE = ("cuInit", "cuda_platform", "cuda drivers", "cudart_stub",
                "absl::InitializeLog", "cuda_executor", "cuda_dnn")


def _has_nvidia_driver() -> bool:
    return os.path.exists("/proc/driver/nvidia") or os.path.exists("/dev/nvidiactl")


def probe_devices_quietly() -> None:
    """Initializes TensorFlow's devices, hiding the CUDA probing errors of a machine without GPUs.

    On a machine with an NVIDIA driver nothing is hidden (the messages may
    matter there); elsewhere the lines TensorFlow writes to stderr while it
    looks for CUDA are dropped and any other line is passed on.
    """
    import tempfile

    import tensorflow as tf

    if _has_nvidia_driver():
        tf.config.list_physical_devices()
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            tf.config.list_physical_devices()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        for line in captured.read().decode(errors="replace").splitlines():
            if not any(noise in line for noise in _PROBE_NOISE):
                sys.stderr.write(line + "\n")


def print_summary(summary: dict) -> None:
    """The CLI's closing lines: metrics, the sparsity table, output paths."""
    label = "soft gates" if summary.get("gates") else "dense W"
    print(f"\naccuracy ({label}): {summary['eval']['accuracy']:.4f}")
    if "eval_w_star" in summary:
        print(f"accuracy (W* = W on supp Γ): {summary['eval_w_star']['accuracy']:.4f}")
    if "eval_ticket" in summary:
        print(f"accuracy (hard gate mask): {summary['eval_ticket']['accuracy']:.4f}")
    for epoch, result in summary.get("early_tickets", {}).items():
        if result["empty_layers"]:
            print(f"early ticket (support at epoch {epoch}): DEAD, empty in {', '.join(result['empty_layers'])}")
        else:
            print(f"early ticket (support at epoch {epoch}), retrained: {result['accuracy']:.4f}")
    if summary.get("sparsity_table"):
        print("\n" + summary["sparsity_table"])
    if summary.get("exports_table"):
        print("\nexports (each checked in a fresh process on the eval split):\n" + summary["exports_table"])
    if "export_dir" in summary:
        print(f"\nSavedModel: {summary['export_dir']}")
    if "export_refused" in summary:
        print(f"\nSavedModel NOT exported: {summary['export_refused']}")
    if "path_png" in summary:
        print(f"regularization path: {summary['path_png']}")
    print(f"TensorBoard: tensorboard --logdir {os.path.join(summary['workdir'], 'tensorboard')}")
    print(f"summary: {os.path.join(summary['workdir'], 'summary.json')}")


def run(config, workdir: str) -> int:
    """Trains `config` in `workdir` as the CLI does; returns the exit status.

    Errors the user can fix print one line on stderr (no traceback).
    """
    from tf_dessilbi.training import backup
    from tf_dessilbi.training import config_lib
    from tf_dessilbi.training import workdir as workdir_lib
    from tf_dessilbi.training.callbacks import NonFiniteError
    from tf_dessilbi.training.train import train_and_evaluate

    try:
        summary = train_and_evaluate(config, workdir)
    except (config_lib.ConfigError, workdir_lib.WorkdirError) as e:
        sys.stderr.write(f"tf_dessilbi.train: error: {e}\n")
        return EXIT_USAGE
    except (NonFiniteError, backup.BackupError) as e:
        logging.error("%s", e)
        sys.stderr.write(f"tf_dessilbi.train: failed: {e}\n")
        return EXIT_FAILED
    if summary["chief"]:
        print_summary(summary)
    return EXIT_EXPORT_REFUSED if "export_refused" in summary else 0


def main(argv) -> None:
    from absl import flags

    if len(argv) > 1:
        _usage_error(f"unexpected arguments {argv[1:]} (flags are --config, --workdir, --config.*)")
    status = run(flags.FLAGS.config, flags.FLAGS.workdir)
    if status:
        sys.exit(status)


def run_main(argv: Optional[list] = None) -> None:
    """Console entry point (``tf-dessilbi-train``, ``python -m tf_dessilbi.train``)."""
    from absl import app

    probe_devices_quietly()
    define_flags()
    logging.set_verbosity(logging.INFO)
    app.run(main, argv=argv, flags_parser=_parse_flags)
