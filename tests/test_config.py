"""Config and workdir edge cases: the whole config is validated before anything is
written, unknown keys from config files are refused with the nearest valid key, and
malformed files / unusable workdirs end in one clear message naming the path."""

from __future__ import annotations

import json
import os

import jax.numpy as jnp
import ml_collections
import pytest
from references import tiny_config

from sparsejax.experiment import checkpoint as ckpt_lib
from sparsejax.experiment import config as config_lib
from sparsejax.experiment import sweep, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = os.path.join(ROOT, "experiments")
ConfigError = config_lib.ConfigError


def _write(path, body: str) -> str:
    path.write_text("import ml_collections\n"
                    "from sparsejax.experiment import config as config_lib\n\n" + body)
    return str(path)


@pytest.mark.parametrize("name", sorted(f for f in os.listdir(EXPERIMENTS) if f.endswith(".py")))
@pytest.mark.parametrize("arg", [None, "smoke"])
def test_every_experiment_config_and_sweep_member_is_valid(name, arg):
    path = os.path.join(EXPERIMENTS, name) + (f":{arg}" if arg else "")
    config = config_lib.load(path)
    config_lib.validate(config, source=path)
    module = config_lib.load_module(path)
    if hasattr(module, "sweep"):
        assert len(sweep.validate_members(config, module.sweep())) == len(module.sweep())


@pytest.mark.parametrize("assignment, key, nearest", [
    ("c.num_epoch = 3", "'num_epoch'", "'num_epochs'"),
    ("c.optimizer.lr = 0.1", "'optimizer.lr'", "'optimizer.learning_rate'"),
    ("c.learning_rate = 0.1", "'learning_rate'", "'optimizer.learning_rate'"),
    ("c.dataset.nmae = 'mnist'", "'dataset.nmae'", "'dataset.name'"),
    ("c.method = ml_collections.ConfigDict({'name': 'swat', 'sparsty': 0.5})",
     "method.sparsty", "'method.sparsity'"),
])
def test_unknown_keys_in_a_config_file_name_the_nearest_valid_key(tmp_path, assignment, key,
                                                                 nearest):
    file = _write(tmp_path / "typo.py", "def get_config(arg=''):\n"
                  "    c = config_lib.base_config()\n    c.unlock()\n"
                  f"    {assignment}\n    return c\n")
    config = config_lib.load(file)
    with pytest.raises(ConfigError) as info:
        config_lib.validate(config, source=file)
    message = str(info.value)
    assert key in message and f"did you mean {nearest}?" in message, message
    assert "\n" not in message


@pytest.mark.parametrize("change, match", [
    # Method arguments (checked by building the recipe's phases, no data).
    (lambda c: c.method.update({"name": "swat", "sparsity": 1.5}),
     r"config.method for recipe 'swat': sparsity .* must be in \[0, 1\).*1.5"),
    (lambda c: c.method.update({"name": "magnitude", "distribution": "gloabl"}),
     "config.method.distribution must be one of uniform, erk, global, got 'gloabl'"),
    (lambda c: c.method.update({"name": "gradual", "begin": 0.7, "end": 0.6}),
     "config.method.begin/end must be .* 0 <= begin < end <= 1"),
    (lambda c: c.method.update({"name": "magnitude", "exclude": "fc(1"}),
     "config.method.exclude='fc\\(1' is not a valid regular expression"),
    (lambda c: c.method.update({"name": "meprop", "k": -2.0}),
     "config.method for recipe 'meprop'"),
    (lambda c: c.method.update({"name": "swat", "sparsty": 0.5}),
     "method.sparsty'? \\(did you mean 'method.sparsity'\\?\\)"),
    (lambda c: c.method.update({"name": "swot"}), "Unknown method 'swot'.*Did you mean 'swat'"),
    # Model kwargs (the model is constructed, not initialised).
    (lambda c: setattr(c, "model", ml_collections.ConfigDict(
        {"name": "resnet18", "kwargs": {"widht": 4}})),
     "config.model.kwargs has no argument 'widht' .* \\(did you mean 'width'\\?\\)"),
    (lambda c: c.model.kwargs.update({"num_classes": 10}),
     "config.model.kwargs.num_classes is set from the dataset"),
    # Types and ranges.
    (lambda c: c.model.update({"name": 3}), "config.model.name must be a string, got 3"),
    (lambda c: c.update({"log_every_steps": -1}), "config.log_every_steps must be >= 0"),
    (lambda c: c.dataset.update({"name": "cifar11"}), "Did you mean 'cifar10'"),
])
def test_bad_values_are_one_line_config_errors(change, match):
    config = config_lib.base_config()
    with config.ignore_type():
        change(config)
    with pytest.raises(ConfigError, match=match) as info:
        config_lib.validate(config)
    assert "\n" not in str(info.value)


def test_bad_method_value_writes_nothing_and_the_corrected_run_then_starts(tmp_path):
    workdir = str(tmp_path / "run")
    config = tiny_config()
    config.method = ml_collections.ConfigDict({"name": "swat", "sparsity": 1.5})
    with pytest.raises(ConfigError, match="sparsity"):
        train.train_and_evaluate(config, workdir)
    assert not os.path.exists(workdir)  # Not even the directory.
    config.method.sparsity = 0.5
    summary = train.train_and_evaluate(config, workdir)  # Not refused as "a different config".
    assert summary["steps"] == 2
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["method"]["sparsity"] == 0.5


def test_a_bad_sweep_member_stops_the_sweep_before_any_member_runs(tmp_path):
    members = [{"name": "dense", "method": {"name": "dense"}},
               {"name": "bad", "method": {"name": "swat", "sparsity": 1.5}}]
    with pytest.raises(ConfigError, match=r"sweep member 1 \(bad\).*sparsity"):
        sweep.run_sweep(tiny_config(), members, str(tmp_path / "sweep"))
    assert not os.path.exists(tmp_path / "sweep")


def test_config_file_missing_fields_is_refused_naming_them(tmp_path):
    file = _write(tmp_path / "partial.py", "def get_config(arg=''):\n"
                  "    c = config_lib.base_config()\n    del c['optimizer']['momentum']\n"
                  "    del c['seed']\n    return c\n")
    with pytest.raises(ConfigError, match=r"partial.py.*lacks field\(s\) "
                       r"config.optimizer.momentum, config.seed; build it on .*base_config"):
        config_lib.validate(config_lib.load(file), source=file)


@pytest.mark.parametrize("body, match", [
    ("def get_config(arg='')\n    return 1\n", "has a syntax error at line 4: expected ':'"),
    ("import no_such_module_xyz\n", "failed to import: ModuleNotFoundError.*no_such_module_xyz"),
    ("def get_config(arg=''):\n    return {'name': 'x'}\n",
     "returned dict, not an ml_collections.ConfigDict"),
    ("def get_config(arg=''):\n    return None\n", "returned NoneType"),
    ("def get_config(arg=''):\n    raise RuntimeError('boom')\n",
     r"get_config\(\) of config file .* failed: RuntimeError: boom \(line 5\)"),
    ("def get_konfig(arg=''):\n    pass\n", "defines no get_config"),
])
def test_malformed_config_files_are_one_line_errors_naming_the_file(tmp_path, body, match):
    file = _write(tmp_path / "bad.py", body)
    with pytest.raises(ConfigError, match=match) as info:
        config_lib.load(file)
    assert file in str(info.value) and "\n" not in str(info.value)


def test_missing_config_file_and_directory_are_named(tmp_path):
    with pytest.raises(ConfigError, match="missing.py' does not exist; check the --config path"):
        config_lib.load(str(tmp_path / "missing.py"))
    with pytest.raises(ConfigError, match="is a directory; pass a .py file"):
        config_lib.load(str(tmp_path))


def test_workdir_that_is_a_file_or_under_a_file_is_refused(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(ValueError, match=f"Workdir '{afile}' is a file.*another --workdir"):
        ckpt_lib.prepare_workdir(str(afile), {"a": 1})
    with pytest.raises(ValueError, match=f"'{afile}' is a file, not a directory"):
        ckpt_lib.prepare_workdir(str(afile / "sub" / "run"), {"a": 1})


def test_corrupted_config_json_is_named_and_overwrite_recovers(tmp_path):
    (tmp_path / "config.json").write_text('{"name": "dense", ')
    with pytest.raises(ValueError, match=r"config.json is corrupted \(line 1: .*\); delete it, "
                       "pass --overwrite"):
        ckpt_lib.prepare_workdir(str(tmp_path), {"name": "dense"})
    (tmp_path / "config.json").write_text('[1, 2]')
    with pytest.raises(ValueError, match="config.json does not hold a config"):
        ckpt_lib.prepare_workdir(str(tmp_path), {"name": "dense"})
    assert ckpt_lib.prepare_workdir(str(tmp_path), {"name": "dense"}, overwrite=True) == "new"
    assert ckpt_lib.prepare_workdir(str(tmp_path), {"name": "dense"}) == "same"


def test_unwritable_workdir_is_named(tmp_path, monkeypatch):
    def refuse(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(os, "makedirs", refuse)
    with pytest.raises(ValueError, match="Cannot create workdir .*new.*Permission denied.*"
                       "--workdir you may write to"):
        ckpt_lib.prepare_workdir(str(tmp_path / "new"), {"a": 1})
    monkeypatch.undo()
    monkeypatch.setattr(ckpt_lib, "write_json", lambda path, data: refuse(path))
    with pytest.raises(ValueError, match="Cannot write .*config.json: Permission denied"):
        ckpt_lib.prepare_workdir(str(tmp_path), {"a": 1})


def test_corrupted_metrics_and_summary_files_are_named(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": \n')
    with pytest.raises(ValueError, match="metrics.jsonl line 2 is not valid JSON.*--overwrite"):
        ckpt_lib.read_jsonl(str(path))
    (tmp_path / "summary.json").write_text("")
    with pytest.raises(ValueError, match="summary.json is corrupted"):
        ckpt_lib.read_json(str(tmp_path / "summary.json"))


def test_override_of_an_unknown_key_suggests_the_nearest():
    with pytest.raises(KeyError, match="Unknown config key 'optimizer.lr' "
                       r"\(did you mean 'optimizer.learning_rate'\?\)"):
        config_lib.apply_overrides(config_lib.base_config(), {"optimizer.lr": 0.1})


def test_nearest_key():
    assert config_lib.nearest("num_epoch", ["num_epochs", "num_steps"]) == "num_epochs"
    assert config_lib.nearest("lr", ["learning_rate", "momentum"]) == "learning_rate"
    assert config_lib.nearest("zzz", ["learning_rate", "momentum"]) is None


# ------------------------------------------------- magnitude pruning's per-layer targets
def test_magnitude_layers_prune_each_layer_to_its_own_target_per_round():
    from sparsejax.experiment import recipes
    from sparsejax.transform import get_masks

    config = config_lib.base_config()
    config.method = ml_collections.ConfigDict({
        "name": "magnitude", "layers": "fc3=0.5,.*=0.875", "iterations": 2})
    phases = recipes.build_phases(config, 10, 2)
    params = {"fc1": {"kernel": jnp.arange(1.0, 65.0).reshape(8, 8)},
              "fc3": {"kernel": jnp.arange(1.0, 9.0).reshape(4, 2)}}
    kept = []
    for phase in phases[1:]:
        masks = get_masks(phase.pruning.init(params))
        kept.append((int(masks["fc1"]["kernel"].sum()), int(masks["fc3"]["kernel"].sum())))
    # Round i of n keeps (1 - s) ** (i / n): fc1 0.125 -> 0.354 (23 of 64) then 8;
    # fc3 0.5 -> 0.707 (6 of 8) then 4.
    assert kept == [(23, 6), (8, 4)]


@pytest.mark.parametrize("layers, match", [
    ("fc1=1.2", r"sparsities in \[0, 1\)"),
    ("fc1", "'regex=sparsity' pairs"),
    ("fc(=0.5", "valid regexes"),
])
def test_magnitude_layers_bad_input_is_one_config_error(layers, match):
    from sparsejax.experiment import recipes

    config = config_lib.base_config()
    config.method = ml_collections.ConfigDict({"name": "magnitude", "layers": layers})
    with pytest.raises(config_lib.ConfigError, match=match):
        recipes.build_phases(config, 10, 2)


def test_magnitude_layers_refuse_q_and_other_distributions():
    from sparsejax.experiment import recipes

    config = config_lib.base_config()
    config.method = ml_collections.ConfigDict({"name": "magnitude", "layers": ".*=0.5",
                                               "distribution": "global"})
    with pytest.raises(config_lib.ConfigError, match="q=0 and distribution='uniform'"):
        recipes.build_phases(config, 10, 2)
