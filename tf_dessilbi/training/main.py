"""The training CLI: ``tf-dessilbi-train --config=<name or file> --workdir=<folder>``.

    tf-dessilbi-train --config=fmnist_dessilbi --workdir=runs/fmnist_dessilbi \\
        [--config.dessilbi.kappa=2 ...]

(``python -m tf_dessilbi.train`` is the same command.) ``--config`` is a
config packaged with tf_dessilbi, by name (``--config=fmnist_dessilbi``; the
names are listed below), or a config file by path (``--config=my_config.py``);
either way it is locked: only its existing fields can be overridden,
``--config.<field>=<value>``. ``--workdir`` is the output folder (resumed if
it holds the same run; see `tf_dessilbi.training.train`).

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
    from tf_dessilbi import configs
    from tf_dessilbi.training import config_lib

    def flat(d, prefix=""):
        for key, value in d.items():
            if hasattr(value, "items"):
                yield from flat(value, f"{prefix}{key}.")
            elif value is not None:  # not the deprecated names' placeholders
                yield f"{prefix}{key}={value!r}"

    return (
        f"The training config: a packaged one by name ({', '.join(configs.names())}) "
        "or a config file's path. Override its fields with "
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
    # --help / --helpshort list the key flags of the main module, which absl
    # names by sys.argv[0] (the console script or tf_dessilbi/train.py), not
    # this module that defines them.
    for name in ("config", "workdir"):
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[name])


def usage_text() -> str:
    """What ``--help`` prints above the flags: this module's docstring and the packaged configs."""
    from tf_dessilbi import configs

    return f"{__doc__}\nPackaged configs (--config=<name>):\n  " + "\n  ".join(configs.names()) + "\n"


def config_by_name(argv: list) -> list:
    """``argv`` with a config name in ``--config`` replaced by the packaged config's file.

    ml_collections' ``--config`` takes a file path (with an optional
    ``:<argument>`` suffix); a value that is an existing file, or that
    names a folder, is left as it is; any other value is a packaged
    config's name (``fmnist_dessilbi`` or ``fmnist_dessilbi.py``). An
    unknown name is a usage error listing the names.
    """
    from tf_dessilbi import configs

    def resolve(value: str) -> str:
        path, sep, rest = value.partition(":")
        if not path or os.path.exists(path) or "/" in path or os.sep in path:
            return value
        try:
            return configs.path(path) + sep + rest
        except ValueError as e:
            _usage_error(str(e))

    argv, i = list(argv), 1
    while i < len(argv) and argv[i] != "--":
        if argv[i].startswith("--config="):
            argv[i] = "--config=" + resolve(argv[i][len("--config="):])
        elif argv[i] == "--config" and i + 1 < len(argv):
            argv[i + 1] = resolve(argv[i + 1])
            i += 1
        i += 1
    return argv


def _usage_error(message: str) -> None:
    sys.stderr.write(f"tf_dessilbi.train: error: {message}\n")
    sys.exit(EXIT_USAGE)


def _translate_old_names(argv: list) -> list:
    """The previous release's ``--config.optimizer.kappa=...`` overrides under their new names."""
    from tf_dessilbi.training import dessilbi_config

    try:
        return dessilbi_config.translate_argv(argv)
    except dessilbi_config.checks.ConfigError as e:
        _usage_error(str(e))


def _parse_flags(argv):
    from absl import flags

    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        _usage_error(f"{e} (--helpfull lists the flags and the config fields)")
    except (ValueError, KeyError, AttributeError, TypeError, OSError) as e:  # config file errors
        _usage_error(f"{type(e).__name__}: {e}")


def probe_devices_quietly() -> None:
    """Initializes TensorFlow's devices, hiding the CUDA probing errors of a machine without GPUs.

    On a machine with an NVIDIA driver nothing is hidden (the messages may
    matter there); elsewhere the lines TensorFlow writes to stderr while it
    looks for CUDA are dropped and any other line is passed on
    (`tf_dessilbi._cli_start`, which did the same for ``import tensorflow``).
    """
    import tensorflow as tf

    from tf_dessilbi import _cli_start

    if _cli_start.has_nvidia_driver():
        tf.config.list_physical_devices()
        return
    _cli_start.run_filtered(tf.config.list_physical_devices)


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

    argv = config_by_name(sys.argv if argv is None else argv)
    argv = _translate_old_names(argv)
    # absl's --help prints the main module's docstring: the console script has none.
    sys.modules["__main__"].__doc__ = usage_text()
    probe_devices_quietly()
    define_flags()
    logging.set_verbosity(logging.INFO)
    app.run(main, argv=argv, flags_parser=_parse_flags)
