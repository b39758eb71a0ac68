"""End-to-end tests of the experiment stack: every recipe's smoke mode on mocked data,
the full-scale configs, the cost model and bad input."""

from __future__ import annotations

import json
import os
import socket

import jax
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from sparsejax import zoo
from sparsejax.experiment import config as config_lib
from sparsejax.analysis import costs
from sparsejax.ops import Policy
from sparsejax.sparsifiers import TopK
from sparsejax.experiment import recipes, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = os.path.join(ROOT, "experiments")
TINY_CNN = {"name": "refcnn", "kwargs": {"width": 4}}


def _smoke(arg: str, model: dict | None = None) -> ml_collections.ConfigDict:
    path, _, options = arg.partition(":")
    config = config_lib.load(os.path.join(EXPERIMENTS, path) + ":" + options)
    if model is not None:  # Tiny stand-ins keep the compile time of the suite low.
        config.model = ml_collections.ConfigDict(model)
    config.num_steps = 4
    config.checkpoint_every_steps = 2
    return config


TINY_MLP = {"name": "mlp", "kwargs": {"features": (32, 16)}}

# (config arg, model override, expected achieved weight sparsity or None). The CIFAR
# recipes' smoke models (narrow ResNet-18/VGG-16) take ~1 min each to compile on a
# loaded 2-core CPU, so most cases swap in an MLP; one conv case covers the conv path.
SMOKES = [
    ("default.py:smoke", None, 0.0),
    ("han.py:iterations=2,sparsity=0.75,smoke", None, 0.75),
    # fc1 (64, 32), fc2 (32, 16) are 2:4; the head (out % 8 != 0) stays dense.
    ("gradual.py:sparsity=0.5,smoke", TINY_MLP, None),
    ("ste.py:srste,smoke", TINY_MLP, None),
    ("swat.py:sparsity=0.8,distribution=erk,period=2,smoke", TINY_MLP, None),
    ("swat.py:structured=filter,smoke", TINY_CNN, None),
    ("swat.py:distribution=momentum,smoke", TINY_MLP, None),
    ("swat.py:saved=remat,smoke", TINY_MLP, None),
    ("meprop.py:unified,smoke", None, 0.0),
    ("dsg.py:smoke", TINY_MLP, 0.0),
    ("grad_drop.py:smoke", TINY_MLP, 0.0),
]


@pytest.mark.parametrize("arg, model, expected_sparsity", SMOKES)
def test_every_recipe_smoke_runs_end_to_end_on_mock_data(tmp_path, arg, model,
                                                          expected_sparsity):
    config = _smoke(arg, model)
    with tfds.testing.mock_data(num_examples=64):
        summary = train.train_and_evaluate(config, str(tmp_path))
    phases = recipes.build_phases(config, 4, 2)
    assert summary["steps"] == sum(p.num_steps for p in phases)
    assert 0.0 <= summary["accuracy"] <= 1.0 and np.isfinite(summary["loss"])
    for name in ("config.json", "metrics.jsonl", "summary.json"):
        assert (tmp_path / name).exists()
    with open(tmp_path / "config.json") as f:
        assert json.load(f) == config_lib.to_dict(config)
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    evals = [r for r in records if r["type"] == "eval"]
    assert [r["phase"] for r in evals if r["phase_step"] > 0] == [p.name for p in phases]
    # Phases after the first that start by pruning are evaluated right after it.
    starts = [r["phase"] for r in evals if r["phase_step"] == 0]
    assert starts == [p.name for p in phases[1:] if p.pruning is not None]
    assert all(np.isfinite(r["loss"]) for r in records)
    if expected_sparsity is not None:
        assert summary["weight_sparsity"] == pytest.approx(expected_sparsity, abs=0.01)
    if config.method.name in ("swat", "ste", "asp", "gradual", "magnitude"):
        assert summary["weight_sparsity"] > 0.1
    if config.method.name in ("meprop", "dsg", "swat", "ste"):
        assert summary["step_flop_reduction"] > 0.0
    assert summary["train_flops_ratio"] == pytest.approx(1.0 - summary["train_flop_reduction"])


def test_asp_prunes_eligible_kernels_two_of_four_with_the_same_schedule(tmp_path):
    config = _smoke("asp.py:smoke", TINY_MLP)
    with tfds.testing.mock_data(num_examples=64):
        summary = train.train_and_evaluate(config, str(tmp_path))
    density = {row["path"]: row["density"] for row in summary["layers"]}
    assert density == {"fc1/kernel": 0.5, "fc2/kernel": 0.5, "fc3/kernel": 1.0}
    assert [p["name"] for p in summary["phases"]] == ["dense", "retrain"]
    assert summary["phases"][1]["steps"] == summary["phases"][0]["steps"]  # Same schedule.
    # Training costs dense + half-dense retraining on the pruned layers.
    assert summary["train_flop_reduction"] < 0


def test_accuracy_right_after_pruning_is_measured_on_the_pruned_untrained_weights(
        tmp_path, monkeypatch):
    """ASP: the retrain phase is evaluated before its first step, on exactly 2:4 weights."""
    config = _smoke("asp.py:smoke", TINY_MLP)
    seen = []
    original = train.evaluate

    def spy(model, state, dataset):
        out = original(model, state, dataset)
        seen.append((int(state["step"]), jax.device_get(state["params"]), out))
        return out

    monkeypatch.setattr(train, "evaluate", spy)
    with tfds.testing.mock_data(num_examples=64):
        summary = train.train_and_evaluate(config, str(tmp_path))
    # Calls: the dense phase's end, the retrain phase's start (step 0), its end.
    assert [step for step, _, _ in seen] == [4, 0, 4]
    _, params, after = seen[1]
    groups = np.asarray(params["fc1"]["kernel"]).T.reshape(-1, 4)
    assert ((groups != 0).sum(-1) == 2).all()      # pruned, not yet retrained
    assert summary["accuracy_after_pruning"] == after["accuracy"]
    assert summary["phases"][1]["accuracy_after_pruning"] == after["accuracy"]
    assert summary["phases"][0]["accuracy_after_pruning"] is None
    # The pruned weights are the dense phase's weights with the smallest 2 of 4 zeroed.
    dense = np.abs(np.asarray(seen[0][1]["fc1"]["kernel"])).T.reshape(-1, 4)
    kept = np.abs(np.asarray(params["fc1"]["kernel"])).T.reshape(-1, 4)
    np.testing.assert_array_equal(np.sort(kept, -1)[:, 2:], np.sort(dense, -1)[:, 2:])


@pytest.mark.parametrize("name", sorted(f for f in os.listdir(EXPERIMENTS) if f.endswith(".py")))
def test_full_scale_configs_are_valid_and_build_their_phases(name):
    module = config_lib.load_module(os.path.join(EXPERIMENTS, name))
    config = module.get_config()
    config_lib.validate(config)
    phases = recipes.build_phases(config, 1000, 10)
    # A 0-step phase only evaluates what its prepare did (wanda: one-shot pruning).
    assert phases and all(p.num_steps > 0 or p.prepare is not None for p in phases)
    if hasattr(module, "sweep"):
        for member in module.sweep():
            recipes.build_phases(config_lib.apply_overrides(config, member), 1000, 10)


def test_cifar_configs_use_the_papers_hyper_parameters():
    config = config_lib.load(os.path.join(EXPERIMENTS, "swat.py") + ":model=vgg16")
    assert (config.dataset.name, config.model.name, config.batch_size) == ("cifar10", "vgg16", 128)
    assert config.num_epochs == 150 and tuple(config.schedule.boundaries) == (50, 100)
    assert (config.optimizer.learning_rate, config.optimizer.momentum,
            config.optimizer.weight_decay) == (0.1, 0.9, 5e-4)
    lr = train.make_schedule(config, 150 * 391, 150 * 391, 391)
    assert [float(lr(s)) for s in (0, 50 * 391, 100 * 391)] == pytest.approx([0.1, 0.01, 0.001])
    imagenet = config_lib.load(os.path.join(EXPERIMENTS, "swat.py") + ":model=resnet50")
    assert (imagenet.dataset.name, imagenet.num_epochs) == ("imagenet2012", 90)


def test_flop_model_reproduces_swat_vgg16_reduction():
    # SPECS §3: VGG-16 at 90/90 with a dense first conv -> ~89.5% fewer training FLOPs
    # (SWAT's CIFAR VGG-16: 13 conv + 512->4096->4096->10).
    layers = costs.linear_layers(zoo.get_model("vgg16", classifier="official"), (32, 32, 3))
    assert len(layers) == 16
    swat90 = Policy(weight=TopK(0.9, ties="all"), act_saved=TopK(0.9, ties="all"))
    fractions = {l.kernel: costs.policy_fractions(swat90, l) for l in layers[1:]}
    ratio = costs.step_flops(layers, fractions) / costs.step_flops(layers)
    assert 1 - ratio == pytest.approx(0.895, abs=0.002)
    # A wrongly sparse first conv gives 0.900: the bound tells the two apart.
    all_sparse = costs.step_flops(layers, {l.kernel: costs.policy_fractions(swat90, l)
                                           for l in layers})
    assert 1 - all_sparse / costs.step_flops(layers) > 0.895 + 0.002
    # The same through the recipe: swat(0.9) keeps the first conv dense (SWAT-U).
    config = config_lib.base_config()
    config.method = ml_collections.ConfigDict({"name": "swat", "sparsity": 0.9})
    [phase] = recipes.build_phases(config, 10, 1)
    assert costs.step_flops(layers, phase.fractions(layers, {})) == pytest.approx(
        costs.step_flops(layers, fractions))
    assert layers[0].forward_flops == 2 * 32 * 32 * 3 * 3 * 3 * 64


def test_mlp_layer_flops_and_meprop_cost():
    layers = costs.linear_layers(zoo.MLP(features=(4,)), (8, 8, 1))
    assert [l.forward_flops for l in layers] == [2 * 64 * 4, 2 * 4 * 10]
    config = config_lib.base_config()
    config.method = ml_collections.ConfigDict({"name": "meprop", "k": 1})
    [phase] = recipes.build_phases(config, 10, 1)
    cost = costs.step_flops(layers, phase.fractions(layers, {}))
    assert cost == 512 * (1 + 2 * 0.25) + 80 * 3  # k = 1 of fc1's 4 columns; fc2 dense


# (recipe arguments, per-layer (f, a, w) on the 3-layer LAYER_COSTS model): the table of
# sparsejax.analysis.costs (SPECS §3), written out by hand, for every built-in recipe.
LAYER_COSTS = [costs.Layer("fc1", "dense", "fc1/kernel", (64, 32), 2 * 64 * 32, 32),
               costs.Layer("fc2", "dense", "fc2/kernel", (32, 16), 2 * 32 * 16, 16),
               costs.Layer("fc3", "dense", "fc3/kernel", (16, 8), 2 * 16 * 8, 8)]
COST_TABLE = [
    ({"name": "dense"}, {}),
    ({"name": "grad_drop", "sparsity": 0.9}, {}),
    ({"name": "swat", "sparsity": 0.8},  # SWAT-U: first layer dense
     {"fc2/kernel": (0.2, 0.2, 0.2), "fc3/kernel": (0.2, 0.2, 0.2)}),
    ({"name": "ste", "pattern": "2:4"}, {k: (0.5, 0.5, 1.0) for k in
                                         ("fc1/kernel", "fc2/kernel", "fc3/kernel")}),
    ({"name": "meprop", "k": 0.25},  # classifier dense; k/n of each hidden layer's columns
     {"fc1/kernel": (1.0, 0.25, 0.25), "fc2/kernel": (1.0, 0.25, 0.25)}),
    ({"name": "dsg", "sparsity": 0.75},
     {"fc1/kernel": (0.25, 0.25, 0.25), "fc2/kernel": (0.25, 0.25, 0.25)}),
    ({"name": "forward_topk", "sparsity": 0.5, "operand": "activations"},
     {"fc2/kernel": (0.5, 0.5, 0.5), "fc3/kernel": (0.5, 0.5, 0.5)}),
]


@pytest.mark.parametrize("method, expected", COST_TABLE)
def test_every_recipes_cost_follows_from_its_policy(method, expected):
    config = config_lib.base_config()
    config.method = ml_collections.ConfigDict(method)
    [phase] = recipes.build_phases(config, 10, 1)
    got = phase.fractions(LAYER_COSTS, {})
    assert set(got) == set(expected)
    for kernel, fractions in expected.items():
        np.testing.assert_allclose(got[kernel], fractions, rtol=1e-6)


def test_policy_fractions_refuses_what_is_not_a_policy():
    with pytest.raises(TypeError, match="layer 'fc1'.*method.layer_policy"):
        costs.policy_fractions("swat", LAYER_COSTS[0])


def test_pruned_phases_cost_the_counted_weight_density():
    config = config_lib.base_config()
    config.method = ml_collections.ConfigDict({"name": "magnitude", "sparsity": 0.75})
    dense, retrain = recipes.build_phases(config, 10, 1)
    assert dense.fractions(LAYER_COSTS, {}) == {}
    densities = {"fc1/kernel": 0.25, "fc2/kernel": 0.5}
    got = retrain.fractions(LAYER_COSTS, densities)
    assert got == {"fc1/kernel": (0.25, 0.25, 0.25), "fc2/kernel": (0.5, 0.5, 0.5),
                   "fc3/kernel": (1.0, 1.0, 1.0)}


@pytest.mark.parametrize("section, key, value, match", [
    ("dataset", "name", "cifar11", "Unknown dataset 'cifar11'; valid names: cifar10"),
    ("model", "name", "resnet19", "Unknown model 'resnet19'; valid names: .*resnet18"),
    ("method", "name", "swot", "Unknown method 'swot'; valid names: .*swat"),
    ("optimizer", "name", "lamb", "Unknown optimizer 'lamb'; valid names: adamw, sgd"),
])
def test_unknown_names_list_the_valid_ones(tmp_path, section, key, value, match):
    config = config_lib.base_config()
    config[section][key] = value
    with pytest.raises(ValueError, match=match):
        train.train_and_evaluate(config, str(tmp_path))
    assert not (tmp_path / "config.json").exists()  # Nothing written for a bad config.


def test_swat_saved_mode_must_be_known():
    config = _smoke("swat.py:smoke")
    config.method.saved = "zipped"
    with pytest.raises(ValueError, match="saved='zipped'; valid: auto, masked, packed, remat"):
        recipes.build_phases(config, 4, 2)


def test_unknown_method_argument_lists_the_valid_fields():
    config = config_lib.base_config()
    config.method = ml_collections.ConfigDict({"name": "swat", "sparsity": 0.8, "sparsty": 1})
    with pytest.raises(ValueError, match="no argument.*sparsty.*valid config.method fields"):
        recipes.build_phases(config, 10, 1)


def test_batch_size_not_divisible_by_devices_is_refused():
    config = config_lib.base_config()
    config.batch_size = 100
    with pytest.raises(ValueError, match="batch_size=100 is not divisible by the 8 devices"):
        train.check_batch_sizes(config, 8)
    train.check_batch_sizes(config, jax.device_count())


def test_offline_default_dataset_builds_without_network(tmp_path, monkeypatch):
    from sparsejax import data

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    train_ds = data.load("sklearn_digits", split="train", batch_size=64, data_dir=tmp_path)
    test_ds = data.load("sklearn_digits", split="test", batch_size=64, data_dir=tmp_path)
    assert (train_ds.num_examples, test_ds.num_examples) == (1500, 297)
    assert train_ds.get_batch(0)["image"].shape == (64, 8, 8, 1)
