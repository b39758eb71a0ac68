"""ASP with channel permutation (Pool & Yu 2021) in the experiment stack: the retrain
phase's ``prepare`` permutes the trained dense params before the 2:4 masks are built,
the network function is unchanged, and the summary reports the permutation and the
fraction of the weight magnitude the masks keep (``kept_magnitude``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from sparsejax import permutation, zoo
from sparsejax.adapters.weights import contraction_axes
from sparsejax.experiment import config as config_lib
from sparsejax.experiment import recipes, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# fc1 (64, 64), fc2 (64, 32), fc3 (32, 16), fc4 (16, 10) on 8x8 digits: fc1..fc3 are
# ASP-eligible (in % 16 == 0, out % 8 == 0); fc2 and fc3 have a producer to permute with.
MLP = {"name": "mlp", "kwargs": {"features": (64, 32, 16)}}
PRUNED = ("fc1", "fc2", "fc3")
INPUT = (8, 8, 1)


def _config(permute: bool, model: dict = MLP) -> ml_collections.ConfigDict:
    arg = "smoke,permute" if permute else "smoke"
    config = config_lib.load(os.path.join(ROOT, "experiments", "asp.py") + ":" + arg)
    config.model = ml_collections.ConfigDict(model)
    config.num_steps = 4
    config.checkpoint_every_steps = 2
    return config


def _run(config: ml_collections.ConfigDict, workdir: str) -> tuple[dict, list]:
    """Trains; returns the summary and the params of every evaluation (step, params)."""
    seen = []
    original = train.evaluate

    def spy(model, state, dataset):
        seen.append((int(state["step"]), jax.device_get(state["params"])))
        return original(model, state, dataset)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train, "evaluate", spy)
        summary = train.train_and_evaluate(config, workdir)
    return summary, seen


def _prepare(config: ml_collections.ConfigDict, model_spec: dict = MLP):
    """The retrain phase's ``prepare`` as train_and_evaluate builds it, and the model."""
    model = zoo.get_model(model_spec["name"], num_classes=10, **model_spec["kwargs"])
    axes = contraction_axes(model, jnp.zeros((1, *INPUT)), train=False)
    phases = recipes.build_phases(config, 4, 2, axes, model=model, input_shape=INPUT)
    return phases[1].prepare, model


def _two_of_four(w: np.ndarray) -> np.ndarray:
    """Numpy 2:4 magnitude mask of a Dense kernel (in, out): groups of 4 inputs per output."""
    groups = np.abs(w).T.reshape(w.shape[1], -1, 4)
    rank = np.argsort(np.argsort(-groups, axis=-1, kind="stable"), axis=-1, kind="stable")
    return (rank < 2).reshape(w.shape[1], -1).T


def _kept_fraction(params: dict) -> float:
    kept = sum(np.abs(params[k]["kernel"])[_two_of_four(params[k]["kernel"])].sum()
               for k in PRUNED)
    total = sum(np.abs(params[k]["kernel"]).sum() for k in PRUNED)
    return float(kept / total)


def _logits(model, params, collections=None):
    x = np.random.default_rng(1).standard_normal((32, *INPUT)).astype(np.float32)
    with jax.default_matmul_precision("highest"):
        return np.asarray(model.apply({"params": params, **(collections or {})}, x,
                                      train=False))


@pytest.fixture(scope="module")
def permuted_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("asp_permuted"))
    summary, seen = _run(_config(True), workdir)
    return summary, seen, workdir


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory):
    summary, seen = _run(_config(False), str(tmp_path_factory.mktemp("asp_plain")))
    return summary, seen


def test_permuted_asp_reports_the_permutation_and_keeps_more_magnitude(permuted_run, plain_run):
    summary, seen, workdir = permuted_run
    # Evaluations: the dense phase's end, right after pruning (step 0), the retrain's end.
    assert [step for step, _ in seen] == [4, 0, 4]
    dense, pruned = seen[0][1], seen[1][1]
    info = summary["phases"][1]["permutation"]
    assert summary["phases"][0]["permutation"] is None
    assert sorted(info) == ["fc2/kernel", "fc3/kernel"]  # fc1's inputs are pixels
    assert {k: v["producer"] for k, v in info.items()} == {"fc2/kernel": "fc1/kernel",
                                                          "fc3/kernel": "fc2/kernel"}
    for consumer, row in info.items():
        assert row["kept_base"] <= row["kept_perm"] <= row["kept_unstructured"] + 1e-9
        assert 0.0 <= row["efficacy"] <= 1.0 and row["converged"]
        w = dense[consumer.split("/")[0]]["kernel"]
        assert row["total"] == pytest.approx(float(np.abs(w.astype(np.float64)).sum()), rel=1e-9)
        assert row["kept_base"] == pytest.approx(
            float(np.abs(w.astype(np.float64))[_two_of_four(w)].sum()), rel=1e-9)
    assert any(row["kept_perm"] > row["kept_base"] for row in info.values())
    # Saved in the phase directory, identical to the summary.
    with open(os.path.join(workdir, "checkpoints", "phase1_retrain", train.PREPARE_FILE)) as f:
        assert json.load(f) == info

    # The same prepare on the dense params: the same permutation, the function unchanged.
    prepare, model = _prepare(_config(True))
    permuted, collections, again = prepare(dense, {})
    assert collections == {} and again == info
    np.testing.assert_allclose(_logits(model, permuted), _logits(model, dense),
                               rtol=1e-5, atol=1e-5)
    assert not np.array_equal(permuted["fc2"]["kernel"], dense["fc2"]["kernel"])
    # The masks were computed on the permuted params: exactly their 2:4 magnitude masks.
    for name in PRUNED:
        w = permuted[name]["kernel"]
        np.testing.assert_array_equal(pruned[name]["kernel"], np.where(_two_of_four(w), w, 0))
        np.testing.assert_array_equal(pruned[name]["bias"], permuted[name]["bias"])
    np.testing.assert_array_equal(pruned["fc4"]["kernel"], permuted["fc4"]["kernel"])
    # kept_magnitude: Σ|W ⊙ mask| / Σ|W| over the pruned kernels, top level and per phase.
    expected = _kept_fraction(permuted)
    assert summary["kept_magnitude"] == pytest.approx(expected, rel=1e-5)
    assert summary["phases"][1]["kept_magnitude"] == summary["kept_magnitude"]
    assert summary["phases"][0]["kept_magnitude"] is None
    # Dense training is the same with and without permute: the permutation keeps more.
    plain, _ = plain_run
    assert summary["kept_magnitude"] > plain["kept_magnitude"]
    gain = sum(r["kept_perm"] - r["kept_base"] for r in info.values())
    total = sum(np.abs(dense[k]["kernel"]).sum() for k in PRUNED)
    assert summary["kept_magnitude"] - plain["kept_magnitude"] == pytest.approx(
        gain / total, rel=1e-3)


def test_plain_asp_kept_magnitude_is_numpys_two_of_four_fraction(plain_run):
    summary, seen = plain_run
    dense = seen[0][1]
    assert summary["phases"][1]["permutation"] is None
    assert summary["kept_magnitude"] == pytest.approx(_kept_fraction(dense), rel=1e-5)
    assert summary["phases"][1]["kept_magnitude"] == summary["kept_magnitude"]
    assert 0.5 < summary["kept_magnitude"] < 1.0


def test_finished_run_returns_the_same_permutation(permuted_run):
    summary, _, workdir = permuted_run
    again = train.train_and_evaluate(_config(True), workdir)
    assert again["phases"][1]["permutation"] == summary["phases"][1]["permutation"]
    assert again["kept_magnitude"] == summary["kept_magnitude"]


def test_resumed_retrain_phase_does_not_permute_again_and_reports_the_same(tmp_path,
                                                                          monkeypatch):
    config = _config(True)
    first = train.train_and_evaluate(config, str(tmp_path))
    # Interrupted after the retrain phase's step-2 checkpoint: resume from it.
    os.remove(tmp_path / "summary.json")
    shutil.rmtree(tmp_path / "checkpoints" / "phase1_retrain" / "4")

    def refuse(*args, **kwargs):
        raise AssertionError("the resumed phase permuted again")

    monkeypatch.setattr(permutation, "permute_model", refuse)
    second = train.train_and_evaluate(config, str(tmp_path))
    assert second["phases"][1]["permutation"] == first["phases"][1]["permutation"]
    for key in ("kept_magnitude", "accuracy_after_pruning", "accuracy", "loss"):
        assert second[key] == first[key], key


def _randomized(variables, seed: int = 3):
    """Random per-channel leaves (biases, norm scales, offsets and statistics) around
    their initial values, so that forgetting to permute one would change the function."""
    rng = np.random.default_rng(seed)

    def perturb(path, x):
        x = np.asarray(x)
        if x.ndim != 1:
            return x
        noise = rng.standard_normal(x.shape).astype(np.float32)
        name = jax.tree_util.keystr(path)
        return x + (np.abs(noise) if "var" in name else 0.3 * noise)

    return {collection: jax.tree_util.tree_map_with_path(perturb, tree)
            for collection, tree in variables.items()}


def test_residual_network_is_refused_with_a_clear_error():
    spec = {"name": "resnet18", "kwargs": config_lib.SMOKE_MODELS["resnet18"][1]}
    prepare, model = _prepare(_config(True, spec), spec)
    variables = _randomized(jax.device_get(model.init(jax.random.key(0),
                                                      jnp.zeros((1, *INPUT)), train=False)))
    params = variables.pop("params")
    with pytest.raises(ValueError, match=r"permute=True supports only models .*use "
                                         r"permute=False") as error:
        prepare(params, variables)
    # Names the unsafe pair (a block's output feeds the next block and its residual add).
    assert "stage3_block2/conv2/kernel -> stage4_block1/conv1/kernel" in str(error.value)


def test_conv_chain_with_batchnorm_keeps_the_function():
    """VGG-16 (BatchNorm, max-pools, global pooling): the norms are permuted with their conv."""
    spec = {"name": "vgg16", "kwargs": config_lib.SMOKE_MODELS["vgg16"][1]}
    prepare, model = _prepare(_config(True, spec), spec)
    variables = _randomized(jax.device_get(model.init(jax.random.key(0),
                                                      jnp.zeros((1, *INPUT)), train=False)))
    params = variables.pop("params")
    permuted, collections, info = prepare(params, variables)
    assert info and all(r["kept_perm"] >= r["kept_base"] for r in info.values())
    assert set(collections) == set(variables)
    changed = [c for c in info if not np.array_equal(
        permuted[c.split("/")[0]]["kernel"], params[c.split("/")[0]]["kernel"])]
    assert changed  # some permutation is not the identity
    np.testing.assert_allclose(_logits(model, permuted, collections),
                               _logits(model, params, variables), rtol=1e-4, atol=1e-5)


def test_permute_must_be_a_bool():
    config = _config(False)
    config.method = ml_collections.ConfigDict({"name": "asp", "n": 2, "m": 4, "exclude": "",
                                               "permute": "yes"})
    with pytest.raises(config_lib.ConfigError, match="config.method.permute must be a bool"):
        config_lib.validate(config)


def test_permuted_asp_runs_on_a_two_device_mesh(tmp_path):
    code = textwrap.dedent(f"""
        import json, ml_collections, jax
        from sparsejax.experiment import config as config_lib, train
        assert jax.device_count() == 2
        c = config_lib.load({os.path.join(ROOT, "experiments", "asp.py")!r} + ":smoke,permute")
        c.model = ml_collections.ConfigDict({MLP!r})
        c.num_steps = 4
        c.checkpoint_every_steps = 2
        s = train.train_and_evaluate(c, {str(tmp_path)!r})
        print(json.dumps({{"devices": s["devices"], "kept": s["kept_magnitude"],
                          "info": s["phases"][1]["permutation"]}}))
    """)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=False, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["devices"] == 2 and 0.5 < result["kept"] < 1.0
    assert sorted(result["info"]) == ["fc2/kernel", "fc3/kernel"]
    assert all(r["kept_perm"] >= r["kept_base"] for r in result["info"].values())
