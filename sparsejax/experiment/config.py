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

import difflib
import importlib.util
import json
import os
import sys
import traceback
import types
from typing import Any, Iterable, Mapping

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

FREE_FORM = ("model.kwargs", "method")
"""Sections whose keys are not fixed by :func:`base_config`: ``model.kwargs`` is
checked against the model's constructor and ``method`` against its recipe's arguments."""


class ConfigError(ValueError):
    """A mistake in a config or config file; the one-line message names the key or
    file and says how to fix it (``launch.py`` prints it without a traceback)."""


def nearest(key: str, candidates: Iterable[str]) -> str | None:
    """The valid key a misspelt ``key`` most likely meant, or ``None``.

    Tries, in order: a close spelling (:func:`difflib.get_close_matches`), an
    abbreviation by initials (``lr`` -> ``learning_rate``) and a prefix
    (``num_epoch`` -> ``num_epochs``).

    Example:
      >>> nearest("lr", ["learning_rate", "momentum"])
      'learning_rate'
    """
    candidates = sorted(set(candidates))
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    if close:
        return close[0]
    initials = [c for c in candidates
                if "_" in c and "".join(w[:1] for w in c.split("_") if w) == key]
    if len(initials) == 1:
        return initials[0]
    prefixed = [c for c in candidates if len(key) >= 3 and (c.startswith(key) or key.startswith(c))]
    return prefixed[0] if len(prefixed) == 1 else None


def _did_you_mean(key: str, candidates: Iterable[str], prefix: str = "") -> str:
    match = nearest(key, candidates)
    return f" (did you mean {prefix + match!r}?)" if match else ""


def _choice(value: str, valid: tuple[str, ...] | list[str], what: str) -> None:
    if value not in valid:
        match = nearest(str(value), valid)
        hint = f" Did you mean {match!r}?" if match else ""
        raise ConfigError(f"Unknown {what} {value!r}; valid names: "
                          f"{', '.join(sorted(valid))}.{hint}")


def _leaf_type_error(key: str, default: Any, value: Any) -> str | None:
    """Why ``value`` cannot stand where :func:`base_config` has ``default`` (or ``None``)."""
    if isinstance(default, bool):
        ok, want = isinstance(value, bool), "True or False"
    elif isinstance(default, int):
        ok, want = isinstance(value, int) and not isinstance(value, bool), "an int"
    elif isinstance(default, float):
        ok, want = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
    elif isinstance(default, str):
        ok, want = isinstance(value, str), "a string"
    elif isinstance(default, (tuple, list)):
        ok, want = isinstance(value, (tuple, list)), "a tuple"
    else:
        return None
    if ok:
        return None
    return f"config.{key} must be {want}, got {value!r} ({type(value).__name__})"


def check_keys(config: Any, source: str | None = None) -> None:
    """Checks a config's structure against :func:`base_config`: no unknown, missing or
    mistyped fields; ``method``'s fields against its recipe's arguments
    (``model.kwargs`` and the values are checked by :func:`validate`).

    A config file must build on :func:`base_config` (or :func:`cifar_config` /
    :func:`imagenet_config`), so a field it lacks is refused rather than silently
    filled in.

    Args:
      config: the config to check.
      source: the config file it came from, named in the message.

    Raises:
      ConfigError: one line naming the key(s), the nearest valid key and the fix.

    Example:
      >>> c = base_config(); c.unlock(); c.num_epoch = 3
      >>> check_keys(c)
      Traceback (most recent call last):
      ConfigError: Unknown config key 'num_epoch' (did you mean 'num_epochs'?) ...
    """
    where = f"Config file {source!r}: " if source else ""
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(
            f"{where}the config is a {type(config).__name__}, not an ml_collections.ConfigDict; "
            "make get_config() return sparsejax.experiment.config.base_config() with your "
            "changes.")
    schema = base_config().to_dict()
    all_keys = list(_dotted_keys(schema))
    unknown: list[str] = []
    missing: list[str] = []
    wrong: list[str] = []

    def walk(node: Any, spec: Mapping[str, Any], prefix: str) -> None:
        for key in sorted(node.keys()):
            dotted = prefix + key
            value = node[key]
            if key not in spec:
                match = nearest(key, spec)
                match = prefix + match if match else _nearest_anywhere(key, all_keys)
                hint = f" (did you mean {match!r}?)" if match else ""
                section = f"config.{prefix[:-1]}" if prefix else "config"
                unknown.append(f"{dotted!r}{hint}; valid keys of {section}: "
                               f"{', '.join(sorted(spec))}")
            elif isinstance(spec[key], Mapping):
                if not isinstance(value, (Mapping, ml_collections.ConfigDict)):
                    wrong.append(f"config.{dotted} must be a ConfigDict (a section), got "
                                 f"{value!r} ({type(value).__name__})")
                elif dotted not in FREE_FORM:
                    walk(value, spec[key], dotted + ".")
            else:
                error = _leaf_type_error(dotted, spec[key], value)
                if error:
                    wrong.append(error)
        for key in sorted(set(spec) - set(node.keys())):
            missing.append(prefix + key)

    walk(config, schema, "")
    if unknown:
        raise ConfigError(f"{where}unknown config key {unknown[0]}." + (
            f" Also unknown: {', '.join(u.split(' ', 1)[0] for u in unknown[1:])}."
            if len(unknown) > 1 else ""))
    if missing:
        raise ConfigError(
            f"{where}the config lacks field(s) {', '.join('config.' + m for m in missing[:8])}"
            f"{f' and {len(missing) - 8} more' if len(missing) > 8 else ''}; "
            "build it on sparsejax.experiment.config.base_config() (c = base_config(); then "
            "change fields) or set them.")
    if wrong:
        raise ConfigError(f"{where}{wrong[0]}.")
    if not isinstance(config.method.get("name"), str):
        raise ConfigError(f"{where}config.method needs a 'name' (a recipe, e.g. "
                          "{'name': 'swat', 'sparsity': 0.9}).")
    from sparsejax.experiment import recipes

    if config.method.name in recipes.RECIPES:
        valid = recipes.method_fields(config.method.name)
        for key in sorted(config.method.keys()):
            if key not in valid:
                raise ConfigError(
                    f"{where}unknown config key 'method.{key}'"
                    f"{_did_you_mean(key, valid, 'method.')} of method "
                    f"{config.method.name!r}; valid config.method fields: {', '.join(valid)}.")


def _dotted_keys(tree: Mapping[str, Any], prefix: str = "") -> Iterable[str]:
    for key, value in tree.items():
        yield prefix + key
        if isinstance(value, Mapping) and prefix + key not in FREE_FORM:
            yield from _dotted_keys(value, prefix + key + ".")


def _nearest_anywhere(key: str, dotted: list[str]) -> str | None:
    """A dotted key elsewhere in the config whose last part matches ``key``."""
    by_leaf = {}
    for d in dotted:
        by_leaf.setdefault(d.rsplit(".", 1)[-1], d)
    match = nearest(key, by_leaf)
    return by_leaf[match] if match else None


def validate(config: ml_collections.ConfigDict, source: str | None = None) -> None:
    """Checks the whole config before anything is written or loaded.

    Checks the keys and types (:func:`check_keys`), the dataset / model /
    optimizer / schedule / method names, sizes and intervals, the model's
    ``kwargs`` against its constructor (the model is built, not initialised) and
    the method's arguments by building the recipe's phases (no data is loaded;
    the step counts are estimated when the run is given in epochs).

    Args:
      config: a run configuration (see :func:`base_config`).
      source: the config file, named in messages about keys.

    Raises:
      ConfigError: (a ``ValueError``) one line naming the key, what is wrong and
        the fix (unknown names list the valid ones).

    Example:
      >>> validate(base_config())
    """
    from sparsejax import zoo
    from sparsejax.data import DATASETS
    from sparsejax.experiment import recipes

    check_keys(config, source)
    _choice(config.dataset.name, DATASETS, "dataset")
    _choice(config.model.name.lower(), list(zoo.MODELS), "model")
    _choice(config.optimizer.name, OPTIMIZERS, "optimizer")
    _choice(config.schedule.name, SCHEDULES, "schedule")
    _choice(config.method.name, list(recipes.RECIPES), "method")
    for key in ("batch_size", "eval_batch_size"):
        if config[key] <= 0:
            raise ConfigError(f"config.{key} must be positive, got {config[key]}.")
    for key in ("num_steps", "num_epochs", "log_every_steps", "eval_every_steps",
                "checkpoint_every_steps", "dataset.image_size"):
        section, _, leaf = key.rpartition(".")
        value = (config[section] if section else config)[leaf]
        if value < 0:
            raise ConfigError(f"config.{key} must be >= 0, got {value}.")
    if config.num_steps <= 0 and config.num_epochs <= 0:
        raise ConfigError("Set config.num_epochs > 0 or config.num_steps > 0.")
    if config.optimizer.learning_rate <= 0:
        raise ConfigError(f"config.optimizer.learning_rate must be positive, got "
                          f"{config.optimizer.learning_rate}.")
    _check_model(config)
    steps_per_epoch = 100  # A stand-in: the real value needs the data.
    main_steps = config.num_steps or max(1, round(config.num_epochs * steps_per_epoch))
    recipes.check_method(config, main_steps, steps_per_epoch)


def _check_model(config: ml_collections.ConfigDict) -> None:
    """Builds (without initialising) the model with ``config.model.kwargs``."""
    import inspect

    from sparsejax import zoo

    name = config.model.name.lower()
    kwargs = dict(config.model.kwargs.to_dict() if hasattr(config.model.kwargs, "to_dict")
                  else config.model.kwargs)
    if "num_classes" in kwargs:
        raise ConfigError("config.model.kwargs.num_classes is set from the dataset; remove it.")
    constructor = zoo.MODELS[name]
    parameters = inspect.signature(constructor).parameters
    if not any(p.kind == p.VAR_KEYWORD for p in parameters.values()):
        valid = [p for p in parameters if p not in ("parent", "name", "num_classes")]
        for key in sorted(kwargs):
            if key not in valid:
                raise ConfigError(
                    f"config.model.kwargs has no argument {key!r} for model "
                    f"{config.model.name!r}{_did_you_mean(key, valid)}; valid: "
                    f"{', '.join(valid)}.")
    try:
        zoo.get_model(name, num_classes=10, **kwargs)  # Any class count: nothing is run.
    except (TypeError, ValueError) as error:
        raise ConfigError(f"config.model.kwargs {kwargs} do not fit model "
                          f"{config.model.name!r}: {error}") from None


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
      ConfigError: the file is missing, unreadable, not Python, has a syntax error,
        fails to import or defines no ``get_config`` (one line naming the file, the
        line and the fix).
    """
    file = path.split(":", 1)[0]
    try:
        with open(file, encoding="utf-8"):
            pass
    except FileNotFoundError:
        raise ConfigError(f"Config file {file!r} does not exist; check the --config path "
                          "(e.g. --config=experiments/swat.py:smoke).") from None
    except IsADirectoryError:
        raise ConfigError(f"Config file {file!r} is a directory; pass a .py file "
                          "(e.g. --config=experiments/swat.py).") from None
    except OSError as error:
        raise ConfigError(f"Config file {file!r} cannot be read ({error.strerror}); fix its "
                          "permissions or copy it somewhere readable.") from None
    name = "_sparsejax_config_" + os.path.splitext(os.path.basename(file))[0]
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise ConfigError(f"Cannot import config file {file!r}: expected a .py file "
                          "defining get_config(arg='').")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as error:
        del sys.modules[name]
        raise ConfigError(f"Config file {file!r} has a syntax error at line {error.lineno}: "
                          f"{error.msg}; fix the file.") from None
    except Exception as error:  # pylint: disable=broad-except
        del sys.modules[name]
        raise ConfigError(f"Config file {file!r} failed to import: {describe_error(error, file)}; "
                          "fix the file.") from None
    if not callable(getattr(module, "get_config", None)):
        raise ConfigError(f"Config file {file!r} defines no get_config(arg='') function; "
                          "add one returning a ConfigDict (see experiments/default.py).")
    return module


def describe_error(error: BaseException, file: str) -> str:
    """An exception raised by a config file's code as one line.

    Args:
      error: the exception.
      file: the config file.

    Returns:
      ``"Type: message (line N)"``, N being the last line of ``file`` in the traceback.
    """
    line = None
    for frame in traceback.extract_tb(error.__traceback__):
        if os.path.abspath(frame.filename) == os.path.abspath(file):
            line = frame.lineno
    text = " ".join(str(error).split()).rstrip(".")
    where = f" (line {line})" if line else ""
    return f"{type(error).__name__}{': ' + text if text else ''}{where}"


def load(path: str) -> ml_collections.ConfigDict:
    """Loads ``file.py:arg`` as ``get_config(arg)`` (``get_config()`` without a colon).

    Args:
      path: ``file.py`` or ``file.py:arg``.

    Returns:
      The config ``get_config`` returns (not yet validated; see :func:`validate`).

    Raises:
      ConfigError: the file cannot be imported (see :func:`load_module`),
        ``get_config`` raised, or it returned something other than a ``ConfigDict``.

    Example:
      >>> config = load("experiments/swat.py:smoke")
    """
    module = load_module(path)
    file = path.split(":", 1)[0]
    arg = path.split(":", 1)[1] if ":" in path else None
    call = "get_config()" if arg is None else f"get_config({arg!r})"
    try:
        config = module.get_config() if arg is None else module.get_config(arg)
    except ConfigError:
        raise
    except Exception as error:  # pylint: disable=broad-except
        raise ConfigError(f"{call} of config file {file!r} failed: {describe_error(error, file)}; "
                          "fix the file or the text after the colon of --config.") from None
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(
            f"{call} of config file {file!r} returned {type(config).__name__}, not an "
            "ml_collections.ConfigDict; return sparsejax.experiment.config.base_config() with "
            "your changes.")
    return config


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
    parent = key.rpartition(".")[0]
    hint = _did_you_mean(key.rpartition(".")[2], node.keys(), f"{parent}." if parent else "")
    return (f"Unknown config key {key!r}{hint}; valid keys here: "
            f"{', '.join(sorted(node.keys()))}.")


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
