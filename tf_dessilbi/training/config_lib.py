"""The training config: its schema (`base_config`), validation and loading.

Every config file in ``tf_dessilbi/configs/`` starts from `base_config()` and sets a few
fields, so every field exists (and can be overridden on the command line,
``--config.dessilbi.kappa=2``). `validate` checks a config before anything
is built: unknown fields, unknown component names and out-of-range values
raise a `ValueError` naming the field, the value and what is allowed.
"""

from __future__ import annotations

import importlib.util
import os

import ml_collections

from tf_dessilbi.training import dessilbi_config
from tf_dessilbi.training.config_checks import ConfigError  # noqa: F401  (re-exported)
from tf_dessilbi.training.config_checks import choice as _choice
from tf_dessilbi.training.config_checks import fail as _fail
from tf_dessilbi.training.config_checks import number as _number

OPTIMIZERS = ("sgd", "dessilbi")
SCHEDULES = ("constant", "cosine", "piecewise", "step")
STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
STRUCTURES = dessilbi_config.STRUCTURES
LAMBDA_SCALINGS = dessilbi_config.LAMBDA_SCALINGS
GRANULARITIES = ("weight", "filter", "neuron")
REWINDS = ("init", "epoch")


def base_config() -> ml_collections.ConfigDict:
    """Every field a training config has, with its default."""
    c = ml_collections.ConfigDict()
    # The sparsity method (tf_dessilbi.training.methods.METHODS); "" picks it
    # from optimizer.name / gates.enabled / gates.rounds, as older configs did.
    c.method = ""
    c.resume = True  # False: delete the workdir's previous run and start over
    c.seed = 0
    c.num_epochs = 3
    c.steps_per_epoch = 0  # 0: one pass over the training set
    c.eval_steps = 0  # 0: the whole eval set
    c.batch_size = 128  # global batch
    c.eval_batch_size = 0  # 0: batch_size
    c.strategy = "default"
    c.tpu_address = ""
    c.mixed_precision = "float32"
    c.jit_compile = False
    c.verbose = 1  # Keras progress bar; 2: one line per epoch; 0: silent

    # Data (tf_dessilbi.training.input_pipeline).
    c.data = ml_collections.ConfigDict()
    c.data.name = "fashion_mnist"  # "synthetic", "fashion_mnist" or a TFDS name
    c.data.source = "auto"  # auto | local (Debian files) | tfds
    c.data.data_dir = ""  # TFDS data_dir ("" for TFDS' default)
    c.data.train_split = "train"
    c.data.eval_split = "test"
    c.data.augment = "none"  # none | cifar | imagenet
    c.data.image_size = 0  # output size of the imagenet crops
    c.data.mean = ()  # per-channel, after scaling to [0, 1]; () for none
    c.data.std = ()
    c.data.cache = True
    c.data.shuffle_buffer = 60_000
    c.data.train_limit = 0  # 0: all examples
    c.data.eval_limit = 0
    c.data.synthetic_train = 512
    c.data.synthetic_eval = 256
    c.data.synthetic_shape = (28, 28, 1)
    c.data.synthetic_classes = 10

    # Model (tf_dessilbi.models.MODELS).
    c.model = ml_collections.ConfigDict()
    c.model.name = "fmnist_cnn_s"
    c.model.weight_decay = 0.0  # L2 on kernels, for models that take it

    # Optimizer.
    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "dessilbi"  # sgd | dessilbi
    c.optimizer.learning_rate = 0.1
    c.optimizer.momentum = 0.9
    c.optimizer.nesterov = False
    c.optimizer.weight_decay = 0.0  # Keras' decoupled weight decay
    c.optimizer.clipnorm = 0.0  # 0: no clipping
    # The previous release's flat DessiLBI fields (optimizer.kappa, optimizer.finetune_units, ...):
    # unset placeholders that validate() moves to config.dessilbi / config.fork with a
    # deprecation warning, and the three deprecated fields (dessilbi_config.DEPRECATED).
    dessilbi_config.add_legacy_fields(c.optimizer)

    # DessiLBI (optimizer.name="dessilbi"): κ, ν, λ, the structure (tf_dessilbi.DessiLBI).
    c.dessilbi = dessilbi_config.dessilbi_section()
    # DessiLBI's fork into the fine-tune of W* on supp Γ (tf_dessilbi.Fork, WStarFinetune); off.
    c.fork = dessilbi_config.fork_section()

    # Learning-rate schedule, in epochs.
    c.schedule = ml_collections.ConfigDict()
    c.schedule.name = "constant"  # constant | cosine | piecewise | step
    c.schedule.boundaries = ()  # piecewise: epochs where lr ×= decay_factor
    c.schedule.step_epochs = 0  # step: lr ×= decay_factor every step_epochs
    c.schedule.decay_factor = 0.1
    c.schedule.warmup_epochs = 0.0
    c.schedule.final_fraction = 0.0  # cosine: final lr / initial lr

    # Continuous Sparsification gates (tf_dessilbi.gate_model).
    c.gates = ml_collections.ConfigDict()
    c.gates.enabled = False
    c.gates.granularity = "weight"  # weight | filter | neuron
    c.gates.gate_init = 0.0  # s₀
    c.gates.penalty = 1e-8  # λ per gate
    c.gates.final_beta = 200.0
    c.gates.per_step = True  # anneal β every step (per-epoch jumps were measured to diverge)
    c.gates.rounds = 1  # >1: ticket search with rewinding (TicketSearch)
    c.gates.rewind_epoch = 2

    # Early tickets: retrain the support of Γ found at these epochs.
    c.early_tickets = ml_collections.ConfigDict()
    c.early_tickets.epochs = ()  # e.g. (1, 2); () disables
    c.early_tickets.retrain_epochs = 0  # 0: num_epochs
    c.early_tickets.rewind = "init"  # init | epoch
    c.early_tickets.rewind_epoch = 0  # with rewind="epoch"

    # Hyperparameters of the method named by `method` (free-form: each method
    # defines its own fields in its config file).
    c.sparse = ml_collections.ConfigDict()
    # Bilevel tuning of per-layer CS penalties (method "cs_bilevel").
    from tf_dessilbi.bilevel.cs import config_section as _bilevel_section

    c.bilevel = _bilevel_section()

    # Outputs in the workdir.
    c.outputs = ml_collections.ConfigDict()
    c.outputs.tensorboard = True
    c.outputs.histograms = True
    c.outputs.path = True  # path.npz + path.png
    c.outputs.backup = True  # BackupAndRestore under workdir/backup
    c.outputs.export = True  # stripped SavedModel under workdir/export/<version>
    c.outputs.export_version = 1
    c.outputs.allow_dead_export = False  # export even if a layer keeps no weight
    # Physically remove filters/neurons outside the support before export
    # ("auto": when the run removed whole units; "always"; "never").
    c.outputs.shrink = "auto"
    # Files under workdir/export, each checked in a fresh process on the eval split (any of
    # "saved_model", "litert", "onnx"); quantize: "" (none), "float16", "dynamic_int8" or "int8",
    # a quantized file beside each float one of a format that offers it (tf_dessilbi.export_model).
    c.outputs.formats = ("saved_model",)
    c.outputs.quantize = ""
    c.outputs.summary_every_steps = 50  # TensorBoard train scalars every N steps
    c.outputs.path_points = 80  # regularization-path records per run (about)
    return c


def load_config(path: str) -> ml_collections.ConfigDict:
    """Runs ``get_config()`` of a config file (for variants of a config).

    Example: ``base = config_lib.load_config(os.path.join(os.path.dirname(
    __file__), "fmnist_dessilbi.py"))`` inside ``tf_dessilbi/configs/<variant>.py``.
    """
    name = "_tf_dessilbi_config_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None:
        raise FileNotFoundError(f"No config file at {path!r}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def _check_export_formats(config):
    """``outputs.formats``: a non-empty tuple of distinct export formats; ``outputs.quantize``: one a format offers."""
    from tf_dessilbi.export import convert

    formats = config.outputs.formats
    if (not isinstance(formats, (tuple, list)) or not formats or len(set(formats)) != len(formats)
            or any(f not in convert.FORMATS for f in formats)):
        _fail("outputs.formats", formats, f"a non-empty tuple of distinct names from {convert.FORMATS}")
    quantize = config.outputs.quantize
    offered = sorted({q for f in formats for q in convert.FORMAT_QUANTIZE[f] if q})
    if quantize and quantize not in offered:
        _fail("outputs.quantize", quantize, f"'' (none) or, for formats {tuple(formats)}, one of {tuple(offered)}")


def _check_keys(config, schema, prefix=""):
    for key in config.keys():
        field = f"{prefix}{key}"
        if key not in schema:
            raise ConfigError(
                f"Unknown config field config.{field}; known fields of "
                f"config{'.' + prefix[:-1] if prefix else ''}: {sorted(schema.keys())}."
            )
        if isinstance(schema[key], ml_collections.ConfigDict):
            if not isinstance(config[key], ml_collections.ConfigDict):
                _fail(field, config[key], "a section (ConfigDict)")
            if field != "sparse":  # free-form: the method's own fields
                _check_keys(config[key], schema[key], field + ".")


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks a training config; raises `ValueError` naming the bad field.

    First the previous release's flat names (``optimizer.kappa``, ``optimizer.finetune_units``,
    ...) set in ``config`` are moved to ``config.dessilbi`` / ``config.fork``, in place, with a
    deprecation warning (`dessilbi_config.upgrade`).

    Raises:
        ValueError: unknown field, unknown name, out-of-range value, or an old and a new name
            set to different values.
    """
    from tf_dessilbi import models as models_lib
    from tf_dessilbi.training import methods

    _check_keys(config, base_config())
    dessilbi_config.upgrade(config)
    if config.method:
        _choice(config, "method", tuple(sorted(methods.METHODS)))
    _choice(config, "resume", (True, False))
    from tf_dessilbi.training import method_fields

    method_fields.check_sections(config)
    _choice(config, "outputs.allow_dead_export", (True, False))
    _choice(config, "outputs.shrink", ("auto", "always", "never"))
    _check_export_formats(config)
    _choice(config, "model.name", tuple(sorted(models_lib.MODELS)))
    _choice(config, "optimizer.name", OPTIMIZERS)
    _choice(config, "schedule.name", SCHEDULES)
    _choice(config, "strategy", STRATEGIES)
    _choice(config, "mixed_precision", PRECISIONS)
    _choice(config, "gates.granularity", GRANULARITIES)
    _choice(config, "early_tickets.rewind", REWINDS)
    _choice(config, "data.augment", ("none", "cifar", "imagenet"))
    _choice(config, "data.source", ("auto", "local", "tfds"))
    _choice(config, "verbose", (0, 1, 2))
    for field in ("num_epochs", "batch_size"):
        _number(config, field, 1, integer=True)
    for field in (
        "steps_per_epoch", "eval_steps", "eval_batch_size", "seed",
        "data.train_limit", "data.eval_limit", "data.image_size",
        "data.shuffle_buffer", "schedule.step_epochs",
        "early_tickets.retrain_epochs", "early_tickets.rewind_epoch",
        "gates.rewind_epoch", "outputs.export_version",
    ):
        _number(config, field, 0, integer=True)
    for field in ("outputs.summary_every_steps", "outputs.path_points"):
        _number(config, field, 0, integer=True)
    _number(config, "gates.rounds", 1, integer=True)
    _number(config, "optimizer.learning_rate", 0, low_open=True)
    _number(config, "optimizer.momentum", 0, 1)
    _number(config, "optimizer.weight_decay", 0)
    _number(config, "optimizer.clipnorm", 0)
    _number(config, "model.weight_decay", 0)
    _number(config, "schedule.decay_factor", 0, low_open=True)
    _number(config, "schedule.warmup_epochs", 0)
    _number(config, "schedule.final_fraction", 0)
    _number(config, "gates.penalty", 0)
    _number(config, "gates.final_beta", 1)
    if config.optimizer.nesterov and config.optimizer.momentum == 0:
        _fail("optimizer.nesterov", True, "only with optimizer.momentum > 0")
    if config.schedule.name == "step" and config.schedule.step_epochs < 1:
        _fail("schedule.step_epochs", config.schedule.step_epochs,
              ">= 1 with schedule.name='step'")
    bounds = tuple(config.schedule.boundaries)
    if any(not isinstance(b, int) or b < 1 for b in bounds) or list(bounds) != sorted(bounds):
        _fail("schedule.boundaries", bounds, "increasing positive integer epochs")
    if config.schedule.name == "piecewise" and not bounds:
        _fail("schedule.boundaries", bounds, "at least one epoch with schedule.name='piecewise'")
    if config.schedule.warmup_epochs >= config.num_epochs:
        _fail("schedule.warmup_epochs", config.schedule.warmup_epochs,
              f"< num_epochs={config.num_epochs}")
    dessilbi_config.check(config)
    tickets = tuple(config.early_tickets.epochs)
    if tickets:
        if config.optimizer.name != "dessilbi":
            _fail("early_tickets.epochs", tickets,
                  "() unless optimizer.name='dessilbi' (the support of Γ is the ticket)")
        if any(not isinstance(e, int) or not 1 <= e <= config.num_epochs for e in tickets):
            _fail("early_tickets.epochs", tickets,
                  f"integer epochs in [1, num_epochs={config.num_epochs}]")
        if (config.early_tickets.rewind == "epoch"
                and config.early_tickets.rewind_epoch > min(tickets)):
            _fail("early_tickets.rewind_epoch", config.early_tickets.rewind_epoch,
                  f"<= the first ticket epoch {min(tickets)}")
    if tickets and config.strategy == "multi_worker":
        _fail("early_tickets.epochs", tickets, "() with strategy='multi_worker'")
    if config.gates.enabled:
        if config.optimizer.name == "dessilbi":
            _fail("optimizer.name", "dessilbi",
                  "'sgd' with gates.enabled=True (gates and DessiLBI are two methods)")
        if config.gates.rounds > 1 and config.strategy == "multi_worker":
            _fail("gates.rounds", config.gates.rounds, "1 with strategy='multi_worker'")
        if config.gates.rounds > 1 and config.gates.rewind_epoch >= config.num_epochs:
            _fail("gates.rewind_epoch", config.gates.rewind_epoch,
                  f"< num_epochs={config.num_epochs} (epochs per round)")
    if config.data.name == "synthetic":
        shape = tuple(config.data.synthetic_shape)
        if len(shape) != 3 or any(not isinstance(d, int) or d < 1 for d in shape):
            _fail("data.synthetic_shape", shape, "(H, W, C) positive integers")
        _number(config, "data.synthetic_train", 1, integer=True)
        _number(config, "data.synthetic_eval", 1, integer=True)
        _number(config, "data.synthetic_classes", 2, integer=True)
    from tf_dessilbi.training import input_pipeline

    for field in ("train_split", "eval_split"):
        try:
            input_pipeline.check_split(config.data[field], field)
        except ValueError as err:
            raise ConfigError(str(err)) from None
    if config.data.augment == "imagenet" and config.data.image_size < 1:
        _fail("data.image_size", config.data.image_size, ">= 1 with data.augment='imagenet'")
    if len(config.data.mean) != len(config.data.std):
        _fail("data.std", tuple(config.data.std),
              f"as many values as data.mean={tuple(config.data.mean)}")
    if any(s <= 0 for s in config.data.std):
        _fail("data.std", tuple(config.data.std), "positive values")
