"""The experiment configuration: defaults, validation and loading of config files.

A run is described by one ``ml_collections.ConfigDict`` (see :func:`base_config`):
dataset, model, optimizer and learning-rate schedule, the sparsity *method* (its
``name`` picks a recipe of :mod:`sparsejax.experiment.recipes`, its other fields
are that recipe's arguments), and logging/checkpoint intervals. Config files in
``experiments/`` define ``get_config(arg="")`` (``arg`` is the text after the colon
of ``--config=experiments/swat.py:smoke``) and optionally ``sweep(arg="")``
returning a list of override dicts.

Example:
  >>> config = base_config()
  >>> config.method = ml_collections.ConfigDict({"name": "swat", "sparsity": 0.9})
  >>> validate(config)
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import types
from typing import Any, Mapping

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    """Returns the default configuration (a small MLP, dense, on offline digits).

    Fields:
      name: label of the run in results tables and plots.
      seed: seed of initialisation, data order, augmentation and dropout.
      dataset.name: one of :data:`sparsejax.data.DATASETS`.
      dataset.data_dir: TFDS data directory ("" = ``$TFDS_DATA_DIR`` or
        ``~/tensorflow_datasets``).
      dataset.download: let TFDS download a missing dataset (network).
      dataset.augment: training augmentation (the dataset's default crop/flip).
      dataset.image_size: side of streamed (ImageNet) images.
      model.name: one of :data:`sparsejax.zoo.MODELS`; ``model.kwargs`` are passed
        to its constructor (``num_classes`` is set from the dataset).
      batch_size / eval_batch_size: global batch sizes (divisible by the device count).
      num_epochs: length of the main training phase (recipes may add phases).
      num_steps: if > 0, overrides ``num_epochs`` (steps of the main phase).
      optimizer: ``name`` ("sgd" or "adamw"), ``learning_rate`` (peak),
        ``momentum``, ``nesterov``, ``weight_decay``, ``decay_1d`` (also decay
        biases and norm scales), ``label_smoothing``.
      schedule: ``name`` ("constant", "step", "cosine"), ``warmup_epochs``,
        ``boundaries`` (epochs of the main phase where the LR is multiplied by
        ``decay_factor``; scaled to the length of other phases).
      method: ``name`` (a recipe name) plus that recipe's arguments.
      log_every_steps / eval_every_steps / checkpoint_every_steps: intervals
        (0 = only at the end of each phase).
      distributed: call ``jax.distributed.initialize()`` (multi-host jobs).

    Returns:
      A mutable ``ConfigDict``; config files modify a copy and return it.

    Example:
      >>> config = base_config()
      >>> config.model.name, config.method.name
      ('mlp', 'dense')
    """
    c = ml_collections.ConfigDict()
    c.name = "dense"
    c.seed = 0
    c.dataset = ml_collections.ConfigDict({
        "name": "sklearn_digits", "data_dir": "", "download": False, "augment": True,
        "image_size": 224})
    c.model = ml_collections.ConfigDict({"name": "mlp", "kwargs": {"features": (128, 128)}})
    c.batch_size = 128
    c.eval_batch_size = 512
    c.num_epochs = 30.0
    c.num_steps = 0
    c.optimizer = ml_collections.ConfigDict({
        "name": "sgd", "learning_rate": 0.1, "momentum": 0.9, "nesterov": False,
        "weight_decay": 5e-4, "decay_1d": False, "label_smoothing": 0.0})
    c.schedule = ml_collections.ConfigDict({
        "name": "cosine", "warmup_epochs": 0.0, "boundaries": (), "decay_factor": 0.1})
    c.method = ml_collections.ConfigDict({"name": "dense"})
    c.log_every_steps = 50
    c.eval_every_steps = 0
    c.checkpoint_every_steps = 0
    c.distributed = False
    return c


OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("constant", "cosine", "step")


def _choice(value: str, valid: tuple[str, ...] | list[str], what: str) -> None:
    if value not in valid:
        raise ValueError(f"Unknown {what} {value!r}; valid names: {', '.join(sorted(valid))}.")


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks names and numbers of a config before anything expensive runs.

    Args:
      config: a run configuration (see :func:`base_config`).

    Raises:
      ValueError: an unknown dataset / model / optimizer / schedule / method name
        (the message lists the valid ones) or a non-positive size.

    Example:
      >>> validate(base_config())
    """
    from sparsejax import zoo
    from sparsejax.data import DATASETS
    from sparsejax.experiment import recipes

    _choice(config.dataset.name, DATASETS, "dataset")
    _choice(config.model.name.lower(), list(zoo.MODELS), "model")
    _choice(config.optimizer.name, OPTIMIZERS, "optimizer")
    _choice(config.schedule.name, SCHEDULES, "schedule")
    _choice(config.method.name, list(recipes.RECIPES), "method")
    for key in ("batch_size", "eval_batch_size"):
        if config[key] <= 0:
            raise ValueError(f"config.{key} must be positive, got {config[key]}.")
    if config.num_steps <= 0 and config.num_epochs <= 0:
        raise ValueError("Set config.num_epochs > 0 or config.num_steps > 0.")
    if config.optimizer.learning_rate <= 0:
        raise ValueError(f"config.optimizer.learning_rate must be positive, got "
                         f"{config.optimizer.learning_rate}.")


def to_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The config as plain JSON-compatible data (tuples become lists)."""
    return json.loads(config.to_json_best_effort(sort_keys=True))


def load_module(path: str) -> types.ModuleType:
    """Imports a config file by path (``experiments/swat.py``; a ``:arg`` suffix is ignored).

    Args:
      path: file path, optionally followed by ``:arg``.

    Returns:
      The imported module (with ``get_config`` and optionally ``sweep``).

    Raises:
      FileNotFoundError / PermissionError: the file is missing or unreadable.
      ValueError: the file defines no ``get_config``.
    """
    file = path.split(":", 1)[0]
    with open(file, encoding="utf-8"):  # A clear OSError for a missing/unreadable file.
        pass
    name = "_sparsejax_config_" + os.path.splitext(os.path.basename(file))[0]
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise ValueError(f"Cannot import config file {file!r} (expected a .py file).")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"Config file {file!r} defines no get_config(arg='') function.")
    return module


def load(path: str) -> ml_collections.ConfigDict:
    """Loads ``file.py:arg`` as ``get_config(arg)`` (``get_config()`` without a colon).

    Example:
      >>> config = load("experiments/swat.py:smoke")
    """
    module = load_module(path)
    arg = path.split(":", 1)[1] if ":" in path else None
    return module.get_config() if arg is None else module.get_config(arg)


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """Returns a copy of ``config`` with dotted-key overrides (``{"method.sparsity": 0.9}``).

    Args:
      config: base configuration (not modified).
      overrides: dotted key -> value. A key that does not exist is an error (a
        typo must not silently run the base config).

    Returns:
      The modified copy.

    Raises:
      KeyError: an unknown key; the message names it and the valid keys at that level.
    """
    config = ml_collections.ConfigDict(config.to_dict())
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = config
        for i, part in enumerate(parents):
            if part not in node:
                raise KeyError(_unknown(".".join(parents[:i + 1]), node))
            node = node[part]
        if leaf not in node:
            raise KeyError(_unknown(dotted, node))
        if isinstance(value, Mapping):
            node[leaf] = ml_collections.ConfigDict(dict(value))
        else:
            with node.ignore_type():
                node[leaf] = value
    return config


def _unknown(key: str, node: ml_collections.ConfigDict) -> str:
    return f"Unknown config key {key!r}; valid keys here: {', '.join(sorted(node.keys()))}."


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
    """Parses a config-file argument ``"smoke,model=vgg16,sparsity=0.9"``.

    Bare words set a boolean to True; ``key=value`` pairs are converted to the type
    of the default. Keys without a default are an error listing the valid ones.

    Args:
      arg: the text after the colon of ``--config=file.py:arg`` (``None`` or "").
      **defaults: the valid keys and their defaults.

    Returns:
      A ``ConfigDict`` of the parsed options.

    Example:
      >>> parse_arg("smoke,model=vgg16", smoke=False, model="resnet18").model
      'vgg16'
    """
    options = dict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, eq, value = item.partition("=")
        if key not in options:
            raise ValueError(f"Unknown config argument {key!r}; valid: "
                             f"{', '.join(sorted(options))}.")
        default = options[key]
        if not eq:
            if not isinstance(default, bool):
                raise ValueError(f"Config argument {key!r} needs a value ({key}=...).")
            options[key] = True
        elif isinstance(default, bool):
            options[key] = value.lower() in ("1", "true", "yes")
        else:
            options[key] = type(default)(value)
    return ml_collections.ConfigDict(options)


def cifar_config(model: str = "resnet18") -> ml_collections.ConfigDict:
    """SWAT's CIFAR-10 setup (SPECS §3): SGD 0.9, wd 5e-4, batch 128, 150 epochs,
    LR 0.1 → 0.01 at epoch 50 → 0.001 at 100, random crop (pad 4) + flip.

    Args:
      model: ``"resnet18"``, ``"vgg16"``, ``"wrn16_8"``, ``"densenet121"``.

    Returns:
      The base config for CIFAR-10 (the method is dense; recipes set it).
    """
    c = base_config()
    c.dataset.name = "cifar10"
    c.model = ml_collections.ConfigDict({"name": model, "kwargs": {}})
    c.batch_size = 128
    c.eval_batch_size = 500
    c.num_epochs = 150.0
    c.optimizer.learning_rate = 0.1
    c.optimizer.momentum = 0.9
    c.optimizer.weight_decay = 5e-4
    c.schedule = ml_collections.ConfigDict({
        "name": "step", "warmup_epochs": 0.0, "boundaries": (50, 100), "decay_factor": 0.1})
    c.log_every_steps = 100
    c.eval_every_steps = 391 * 5
    c.checkpoint_every_steps = 391 * 5
    return c


def imagenet_config() -> ml_collections.ConfigDict:
    """ImageNet ResNet-50 (SWAT's setup): SGD 0.9, wd 1e-4, batch 256, 90 epochs, LR 0.1
    → ×0.1 at epochs 30 and 60, random-resized crop + flip.

    Returns:
      The base config for ImageNet (needs the TFDS ``imagenet2012`` data prepared).
    """
    c = base_config()
    c.dataset.name = "imagenet2012"
    c.model = ml_collections.ConfigDict({"name": "resnet50", "kwargs": {}})
    c.batch_size = 256
    c.eval_batch_size = 500
    c.num_epochs = 90.0
    c.optimizer.learning_rate = 0.1
    c.optimizer.weight_decay = 1e-4
    c.schedule = ml_collections.ConfigDict({
        "name": "step", "warmup_epochs": 0.0, "boundaries": (30, 60), "decay_factor": 0.1})
    c.log_every_steps = 200
    c.eval_every_steps = 5004 * 5
    c.checkpoint_every_steps = 5004
    return c


SMOKE_MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "mlp": ("mlp", {"features": (32, 32)}),
    "lenet300100": ("mlp", {"features": (32, 16)}),
    "lenet5": ("lenet5", {"padding": "SAME"}),
    "refcnn": ("refcnn", {"width": 4}),
    "resnet18": ("resnet18", {"width": 4}),
    "resnet34": ("resnet34", {"width": 4}),
    "resnet50": ("resnet50", {"width": 4, "stem": "cifar"}),
    "vgg16": ("vgg16", {"width": 4}),
    "wrn16_8": ("wideresnet", {"depth": 10, "widen_factor": 1}),
    "densenet121": ("densenet121", {"growth_rate": 4}),
    "vit": ("vit", {"patch": 4, "dim": 16, "depth": 1, "heads": 2, "mlp_dim": 32}),
    "vit_tiny": ("vit", {"patch": 4, "dim": 16, "depth": 1, "heads": 2, "mlp_dim": 32}),
}
"""Model name -> the narrow stand-in (name, kwargs) that :func:`smoke` trains on 8x8 digits."""


def smoke(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Shrinks a config to run in seconds on a CPU, offline: the 8x8 digits dataset,
    a narrow model of the same family (:data:`SMOKE_MODELS`), 6 steps, small
    batches; the recipe and optimizer stay (so every phase and checkpoint path runs).

    Args:
      config: a full-scale config (modified in place and returned).

    Returns:
      ``config``.
    """
    name, kwargs = SMOKE_MODELS[config.model.name]
    config.dataset.name = "sklearn_digits"
    config.model = ml_collections.ConfigDict({"name": name, "kwargs": kwargs})
    config.batch_size = 32
    config.eval_batch_size = 64
    config.num_epochs = 0.0
    config.num_steps = 6
    config.log_every_steps = 2
    config.eval_every_steps = 0
    config.checkpoint_every_steps = 3
    if config.schedule.name == "step":
        config.schedule.boundaries = ()
    if "retrain_epochs" in config.method:
        config.method.retrain_epochs = 0.0
    return config
