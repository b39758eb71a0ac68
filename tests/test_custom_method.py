"""A method defined outside the library, registered from a config file, runs through
the experiment stack (launch.py, sweeps, reports) like a built-in one, its training
FLOPs derived from its policy."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from sparsejax import zoo
from sparsejax.analysis import costs
from sparsejax.experiment import config as config_lib
from sparsejax.experiment import recipes, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIG = '''
import dataclasses

import ml_collections

from sparsejax import methods
from sparsejax.experiment import config as config_lib
from sparsejax.experiment import recipes
from sparsejax.ops import Policy
from sparsejax.sparsifiers import TopK


@dataclasses.dataclass(frozen=True)
class ActOnlySWAT(methods.Method):
    """SWAT's sparse saved activations, dense weights."""

    sparsity: float = 0.8
    name = "act_only_swat"

    def sparsities(self, shapes):
        return {p: self.sparsity for p in shapes}

    def policy_aux(self, info, sparsity, state, shared, training):
        return Policy(act_saved=TopK(sparsity)), None


def act_only_swat(sparsity: float = 0.8):
    return ActOnlySWAT(sparsity=sparsity)


recipes.register("act_only_swat", act_only_swat)


def get_config(arg=""):
    c = config_lib.base_config()
    c.name = "act_only"
    c.model = ml_collections.ConfigDict({"name": "mlp", "kwargs": {"features": (32, 16)}})
    c.method = ml_collections.ConfigDict({"name": "act_only_swat", "sparsity": 0.8})
    return config_lib.smoke(c)
'''


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "my_method.py"
    path.write_text(CONFIG)
    yield str(path)
    recipes.RECIPES.pop("act_only_swat", None)


def test_registered_method_trains_and_costs_what_its_policy_says(config_file, tmp_path):
    config = config_lib.load(config_file)
    assert recipes.method_fields("act_only_swat") == ["name", "sparsity"]
    summary = train.train_and_evaluate(config, str(tmp_path / "run"))
    assert summary["method"] == "act_only_swat" and summary["steps"] == 6
    layers = costs.linear_layers(zoo.get_model("mlp", num_classes=10, features=(32, 16)),
                                 (8, 8, 1))
    flops = [l.forward_flops for l in layers]
    # Every layer: dense forward and dA, dW from the 20% kept activations.
    expected = sum(f * (1 + 1 + 0.2) for f in flops) / sum(3 * f for f in flops)
    assert summary["step_flops_ratio"] == pytest.approx(expected)
    assert summary["weight_sparsity"] == 0.0  # the weights stay dense


def test_registered_method_runs_from_launch_py(config_file, tmp_path):
    workdir = str(tmp_path / "x")
    result = subprocess.run(
        [sys.executable, "launch.py", f"--config={config_file}", "--config.method.sparsity=0.5",
         f"--workdir={workdir}", "--jax_cache_dir="],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(os.path.join(workdir, "summary.json")) as f:
        summary = json.load(f)
    assert (summary["method"], summary["method_args"]) == ("act_only_swat", {"sparsity": 0.5})
    bad = subprocess.run(
        [sys.executable, "launch.py", f"--config={config_file}", "--config.method.sparsty=0.5",
         f"--workdir={tmp_path}/y", "--jax_cache_dir="],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "did you mean" in bad.stderr.lower()


def test_register_refuses_built_in_names_and_non_callables():
    with pytest.raises(ValueError, match="'swat' is a built-in recipe"):
        recipes.register("swat", lambda sparsity=0.8: None)
    with pytest.raises(ValueError, match="needs a callable"):
        recipes.register("mine", 3)
