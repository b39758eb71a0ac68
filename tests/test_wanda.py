"""Wanda one-shot pruning (sparsejax.wanda) against numpy references, and its bad input."""

from __future__ import annotations

import logging
import math

import importlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sparsejax as sj
from sparsejax.patterns import NM, Channel
from sparsejax.zoo.vit import ViT

# The module (``sparsejax.wanda`` the attribute is the function ``sj.wanda``).
W = importlib.import_module("sparsejax.wanda")


class MLP(nn.Module):
    hidden: int = 8
    out: int = 4

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(self.hidden, name="fc1")(x))
        return nn.Dense(self.out, name="fc2")(x)


def _mlp(seed=0, n_in=12, batch=10):
    model = MLP()
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, n_in)).astype(np.float32) * np.linspace(0.1, 3.0, n_in,
                                                                            dtype=np.float32)
    params = jax.device_get(model.init(jax.random.key(seed), x)["params"])
    return model, params, x


def _np_forward_inputs(params, x):
    """The inputs of fc1 and fc2, computed by hand."""
    h = np.maximum(x @ params["fc1"]["kernel"] + params["fc1"]["bias"], 0.0)
    return {"fc1/kernel": x, "fc2/kernel": h}


def _np_per_column_keep(score, keep):
    """Reference: each column keeps its ``keep`` largest scores (ties: lower row first)."""
    mask = np.zeros(score.shape, bool)
    for j in range(score.shape[1]):
        order = np.argsort(-score[:, j], kind="stable")
        mask[order[:keep], j] = True
    return mask


def _np_nm_keep(score, n, m):
    """Reference: every group of m consecutive rows of a column keeps its n largest."""
    mask = np.zeros(score.shape, bool)
    for j in range(score.shape[1]):
        for g in range(0, score.shape[0], m):
            order = np.argsort(-score[g:g + m, j], kind="stable")
            mask[g + order[:n], j] = True
    return mask


def _batches(x, size=4):
    return [x[i:i + size] for i in range(0, len(x), size)]


def test_norms_are_l2_norms_of_each_input_feature_over_all_batches():
    model, params, x = _mlp()
    norms = W.wanda_norms(model, params, _batches(x))  # 3 batches of 4, 4, 2
    inputs = _np_forward_inputs(params, x)
    assert set(norms) == {"fc1/kernel", "fc2/kernel"}
    for path, a in inputs.items():
        np.testing.assert_allclose(np.asarray(norms[path])[:, 0], np.sqrt((a ** 2).sum(0)),
                                   rtol=1e-5)
        assert norms[path].shape == (a.shape[1], 1)


@pytest.mark.parametrize("sparsity", [0.5, 0.75, 0.3])
def test_unstructured_mask_equals_numpy_reference_per_output_column(sparsity):
    model, params, x = _mlp()
    pruned, masks = W.wanda(model, params, _batches(x), sparsity, exclude=())
    for path, a in _np_forward_inputs(params, x).items():
        layer = path.split("/")[0]
        kernel = params[layer]["kernel"]
        score = np.abs(kernel) * np.sqrt((a ** 2).sum(0))[:, None]
        keep = math.ceil((1 - sparsity) * kernel.shape[0])
        want = _np_per_column_keep(score, keep)
        got = np.asarray(masks[layer]["kernel"])
        np.testing.assert_array_equal(got, want)
        assert (got.sum(0) == keep).all()  # Exact count in every output column.
        np.testing.assert_array_equal(np.asarray(pruned[layer]["kernel"]),
                                      np.where(want, kernel, 0.0))
        assert masks[layer]["bias"] is None
        np.testing.assert_array_equal(pruned[layer]["bias"], params[layer]["bias"])


def test_head_is_left_dense_by_default():
    model, params, x = _mlp()
    pruned, masks = sj.wanda(model, params, [x], 0.5)  # The top-level export.
    assert masks["fc2"]["kernel"] is None
    np.testing.assert_array_equal(pruned["fc2"]["kernel"], params["fc2"]["kernel"])
    assert int(np.asarray(masks["fc1"]["kernel"]).sum()) == 6 * 8


def test_two_of_four_keeps_two_per_group_along_the_input_axis_and_matches_numpy():
    model, params, x = _mlp()
    pruned, masks = W.wanda(model, params, _batches(x), NM(2, 4), exclude=())
    for path, a in _np_forward_inputs(params, x).items():
        layer = path.split("/")[0]
        kernel = params[layer]["kernel"]
        score = np.abs(kernel) * np.sqrt((a ** 2).sum(0))[:, None]
        got = np.asarray(masks[layer]["kernel"])
        np.testing.assert_array_equal(got, _np_nm_keep(score, 2, 4))
        groups = got.reshape(kernel.shape[0] // 4, 4, kernel.shape[1]).sum(1)
        assert (groups == 2).all()
        assert (np.asarray(pruned[layer]["kernel"])[~got] == 0).all()


def test_input_norms_reverse_the_magnitude_ranking():
    """Feature 0 has tiny weights but a huge input, feature 1 the opposite."""
    model = nn.Dense(2, use_bias=False)
    kernel = np.array([[0.1, -0.2], [1.0, 0.9]], np.float32)
    params = {"kernel": kernel}
    x = np.array([[100.0, 0.01], [-50.0, 0.02]], np.float32)
    _, masks = W.wanda(model, params, [x], 0.5, exclude=())
    np.testing.assert_array_equal(masks["kernel"], [[True, True], [False, False]])
    _, magnitude = sj.prune(params, 0.5)
    np.testing.assert_array_equal(magnitude["kernel"], [[False, False], [True, True]])


def test_sequential_recollects_inputs_after_pruning_earlier_blocks():
    model, params, x = _mlp()
    _, masks = W.wanda(model, params, [x], 0.5, exclude=(), sequential=True)
    fc1 = np.where(masks["fc1"]["kernel"], params["fc1"]["kernel"], 0.0)
    # Reference: fc2's input comes from the already pruned fc1.
    h = np.maximum(x @ fc1 + params["fc1"]["bias"], 0.0)
    score = np.abs(params["fc2"]["kernel"]) * np.sqrt((h ** 2).sum(0))[:, None]
    np.testing.assert_array_equal(masks["fc2"]["kernel"], _np_per_column_keep(score, 4))
    _, one_pass = W.wanda(model, params, [x], 0.5, exclude=())
    np.testing.assert_array_equal(masks["fc1"]["kernel"], one_pass["fc1"]["kernel"])


class Attention(nn.Module):
    """DenseGeneral query (in, heads, head_dim), an Einsum and an output projection."""

    @nn.compact
    def __call__(self, x):
        q = nn.DenseGeneral((2, 4), name="query")(x)                     # (b, t, 2, 4)
        v = nn.Einsum((2, 4, 4), "bthd,hde->bthe", name="mix")(q)        # (b, t, 2, 4)
        return nn.DenseGeneral(8, axis=(-2, -1), name="out")(v)           # (b, t, 8)


def test_densegeneral_and_einsum_kernels_use_their_contraction_axes():
    model = Attention()
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 5, 8)).astype(np.float32)
    params = jax.device_get(model.init(jax.random.key(0), x)["params"])
    norms = W.wanda_norms(model, params, [x[:2], x[2:]])
    q = np.einsum("btd,dhk->bthk", x, params["query"]["kernel"]) + params["query"]["bias"]
    v = np.einsum("bthd,hde->bthe", q, params["mix"]["kernel"]) + params["mix"]["bias"]
    want = {"query/kernel": np.sqrt((x ** 2).sum((0, 1)))[:, None, None],        # (in, 1, 1)
            "mix/kernel": np.sqrt((q ** 2).sum((0, 1)))[:, :, None],             # (h, d, 1)
            "out/kernel": np.sqrt((v ** 2).sum((0, 1)))[:, :, None]}             # (h, e, 1)
    for path, ref in want.items():
        np.testing.assert_allclose(np.asarray(norms[path]), ref, rtol=1e-4)
    _, masks = W.wanda(model, params, [x], 0.5, exclude=())
    # query (8, 2, 4): every (head, head_dim) output keeps 4 of its 8 inputs.
    assert (np.asarray(masks["query"]["kernel"]).sum(0) == 4).all()
    # mix (2, 4, 4), "bthd,hde": contracts d only; h is shared -> each (h, e) keeps 2 of 4.
    mix = np.asarray(masks["mix"]["kernel"])
    assert (mix.sum(1) == 2).all()
    score = np.abs(params["mix"]["kernel"]) * want["mix/kernel"]
    for h in range(2):
        np.testing.assert_array_equal(mix[h], _np_per_column_keep(score[h], 2))
    # out (2, 4, 8): the flattened heads × head_dim input keeps 4 of 8 per output.
    out = np.asarray(masks["out"]["kernel"])
    assert (out.reshape(8, 8).sum(0) == 4).all()
    score = (np.abs(params["out"]["kernel"]) * want["out/kernel"]).reshape(8, 8)
    np.testing.assert_array_equal(out.reshape(8, 8), _np_per_column_keep(score, 4))
    _, nm = W.wanda(model, params, [x], NM(2, 4), exclude=())
    np.testing.assert_array_equal(np.asarray(nm["out"]["kernel"]).reshape(8, 8),
                                  _np_nm_keep(score, 2, 4))


def test_zoo_vit_prunes_every_block_kernel_and_nothing_else():
    model = ViT(num_classes=10, patch=4, dim=16, depth=1, heads=2, mlp_dim=32)
    x = np.random.default_rng(0).standard_normal((4, 8, 8, 1)).astype(np.float32)
    params = jax.device_get(model.init(jax.random.key(0), x)["params"])
    assert list(W.wanda_layers(model, params, x))[-1] == "head/kernel"
    for target, per_group in ((0.5, None), (NM(2, 4), 2)):
        pruned, masks = W.wanda(model, params, [x], target)
        flat = {p: m for p, m in sj.leaf_paths(masks).items() if m is not None}
        want = {f"block{b}/{l}/kernel" for b in (1,) for l in (
            "attention/query", "attention/key", "attention/value", "attention/out",
            "mlp_fc1", "mlp_fc2")}
        assert set(flat) == want
        axes = sj.contraction_axes(model, x)
        for path, m in flat.items():
            m = np.asarray(m)
            a = axes[path]
            k = math.prod(m.shape[i] for i in a)
            cols = np.moveaxis(m, a, tuple(range(len(a)))).reshape(k, -1)
            if per_group is None:
                assert (cols.sum(0) == k // 2).all(), path
            else:
                assert (cols.reshape(k // 4, 4, -1).sum(1) == 2).all(), path
            assert (np.asarray(sj.leaf_paths(pruned)[path])[~m] == 0).all()
        np.testing.assert_array_equal(pruned["head"]["kernel"], params["head"]["kernel"])
        np.testing.assert_array_equal(pruned["embedding"]["kernel"],
                                      params["embedding"]["kernel"])


def test_per_output_mask_equals_nm_with_one_group_per_output_including_ties():
    score = jnp.asarray(np.random.default_rng(2).integers(0, 3, (6, 2, 5)).astype(np.float32))
    got = W.per_output_mask(score, 0.5, (0, 1))
    want = NM(6, 12, axis=(0, 1)).mask(score)
    np.testing.assert_array_equal(got, want)


# ----------------------------------------------------------------------- bad input
def test_batch_of_the_wrong_shape_names_the_batch_and_shape():
    model, params, x = _mlp()
    with pytest.raises(ValueError, match=r"calibration batch 1 \(shape \(4, 7\)\).*Batch 0 has "
                                         r"shape \(4, 12\)"):
        W.wanda(model, params, [x[:4], x[:4, :7]], 0.5)
    with pytest.raises(ValueError, match=r"calibration batch 0 \(shape \(4, 7\)\).*fc1"):
        W.wanda(model, params, [x[:4, :7]], 0.5)


def test_model_without_supported_layers_is_refused():
    model = nn.Conv(4, (3, 3))
    x = np.ones((1, 6, 6, 2), np.float32)
    params = jax.device_get(model.init(jax.random.key(0), x)["params"])
    with pytest.raises(ValueError, match="no layer Wanda can prune.*Conv"):
        W.wanda(model, params, [x], 0.5)


@pytest.mark.parametrize("bad", [1.0, -0.1, float("nan")])
def test_sparsity_outside_unit_interval_is_refused(bad):
    model, params, x = _mlp()
    with pytest.raises(ValueError, match="sparsity_or_pattern"):
        W.wanda(model, params, [x], bad)


def test_pattern_other_than_nm_is_refused():
    model, params, x = _mlp()
    with pytest.raises(TypeError, match="NM"):
        W.wanda(model, params, [x], Channel((-1,)))


def test_nm_on_a_non_divisible_contraction_raises_with_strict_and_skips_otherwise(caplog):
    model, params, x = _mlp(n_in=10)  # fc1 contracts 10 inputs: not divisible by 4.
    with pytest.raises(ValueError, match="fc1/kernel"):
        W.wanda(model, params, [x], NM(2, 4), exclude=(), strict=True)
    with caplog.at_level(logging.WARNING, logger="sparsejax"):
        _, masks = W.wanda(model, params, [x], NM(2, 4), exclude=())
    assert masks["fc1"]["kernel"] is None
    assert (np.asarray(masks["fc2"]["kernel"]).reshape(2, 4, 4).sum(1) == 2).all()
    assert any("fc1/kernel" in r.getMessage() for r in caplog.records)


def test_nan_weights_are_refused_naming_the_layer():
    model, params, x = _mlp()
    params = jax.tree.map(np.array, params)
    params["fc1"]["kernel"][0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN weights.*fc1/kernel"):
        W.wanda(model, params, [x], 0.5)


def test_nan_calibration_input_names_the_layer_and_batch():
    model, params, x = _mlp()
    bad = x.copy()
    bad[1, 3] = np.nan
    with pytest.raises(ValueError, match="calibration batch 1: the input of layer 'fc1/kernel'"):
        W.wanda(model, params, [x, bad], 0.5)


def test_empty_calibration_set_is_refused():
    model, params, _ = _mlp()
    with pytest.raises(ValueError, match="calibration_batches is empty"):
        W.wanda(model, params, [], 0.5)
    with pytest.raises(ValueError, match="calibration_batches is empty"):
        W.wanda_norms(model, params, iter(()))


def test_selection_that_leaves_no_kernel_is_refused():
    model, params, x = _mlp()
    with pytest.raises(ValueError, match="no kernel selected"):
        W.wanda(model, params, [x], 0.5, exclude="fc")


# ----------------------------------------------------------------------- recipe
def test_recipe_smoke_prunes_the_trained_vit_once_without_retraining(tmp_path):
    import json
    import os

    import tensorflow_datasets as tfds

    from sparsejax.experiment import config as config_lib, train

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    config = config_lib.load(os.path.join(root, "experiments", "wanda.py") + ":pattern=2:4,smoke")
    config.num_steps = 3
    with tfds.testing.mock_data(num_examples=64):
        summary = train.train_and_evaluate(config, str(tmp_path))
    assert [p["name"] for p in summary["phases"]] == ["dense", "pruned"]
    assert summary["phases"][1]["steps"] == 0
    info = summary["phases"][1]["permutation"]  # The phase's prepare info.
    assert info["criterion"] == "wanda" and info["pruned_layers"] == 6
    assert info["pruned_sparsity"] == pytest.approx(0.5)
    density = {r["path"]: r["density"] for r in summary["layers"]}
    assert density["head/kernel"] == 1.0 and density["block1/mlp_fc1/kernel"] == 0.5
    records = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
    assert any(r["type"] == "eval" and r["phase"] == "dense" for r in records)
