"""Pruning criteria (sparsejax.criteria) through compute_masks / prune / pruning / recipes,
each against an independent numpy reference."""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

import sparsejax as sj
from sparsejax import criteria, schedules
from sparsejax.distributions import erk_sparsities
from sparsejax.experiment import config as config_lib
from sparsejax.experiment import recipes
from sparsejax.experiment.config import ConfigError
from sparsejax.patterns import NM, Channel
from sparsejax.tree import compute_masks, prune

KERNELS = ["Conv_0/kernel", "Dense_0/kernel", "Dense_1/kernel"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _params(seed=0):
    rng = np.random.default_rng(seed)
    f = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)
    return {"Conv_0": {"kernel": f(3, 3, 4, 8), "bias": f(8)},
            "Dense_0": {"kernel": f(32, 16), "bias": f(16)},
            "Dense_1": {"kernel": f(16, 4), "bias": f(4)},
            "step": jnp.array(3, jnp.int32)}


def _grads(seed=1):
    g = _params(seed)
    g["step"] = jnp.array(0, jnp.int32)
    return g


def _np(tree, path):
    node = tree
    for k in path.split("/"):
        node = node[k]
    return np.asarray(node)


def _topk(scores, k):
    """Numpy reference: True at the k largest entries (continuous data, no ties)."""
    flat = scores.ravel()
    keep = np.zeros(flat.size, bool)
    keep[np.argsort(-flat, kind="stable")[:k]] = True
    return keep.reshape(scores.shape)


def _keep(s, size):
    return math.ceil(round((1 - s) * size, 9))


# --- the scores ------------------------------------------------------------------------


def test_magnitude_and_saliency_scores_equal_numpy():
    p, g = _params(), _grads()
    mag, sal = criteria.magnitude(p), criteria.saliency(p, g)
    for path in KERNELS + ["Dense_0/bias"]:
        np.testing.assert_array_equal(_np(mag, path), np.abs(_np(p, path)))
        np.testing.assert_allclose(_np(sal, path), np.abs(_np(p, path) * _np(g, path)),
                                   rtol=1e-6)
    assert mag["step"] is None and sal["step"] is None
    # The classes compute the same trees (one implementation each).
    assert jax.tree.all(jax.tree.map(jnp.array_equal, sj.Saliency()(p, grads=g), sal))


def test_random_scores_zero_for_pruned_weights_fresh_per_step():
    w = np.asarray(_params()["Dense_0"]["kernel"]).copy()
    w[:5] = 0.0
    p = {"w": jnp.asarray(w)}
    a = np.asarray(sj.Random(seed=3)(p)["w"])
    assert (a[:5] == 0).all() and ((a[5:] > 0) & (a[5:] <= 1)).all()
    np.testing.assert_array_equal(a, np.asarray(sj.Random(seed=3)(p)["w"]))  # deterministic
    assert not np.array_equal(a, np.asarray(sj.Random(seed=4)(p)["w"]))
    b = np.asarray(sj.Random(seed=3)(p, step=7)["w"])
    assert not np.array_equal(a, b) and (b[:5] == 0).all()


def test_snip_scores_equal_a_hand_computed_gradient_summed_over_two_batches():
    rng = np.random.default_rng(0)
    w, c = rng.normal(size=(3, 2)).astype(np.float32), rng.normal(size=2).astype(np.float32)
    batches = [{"x": rng.normal(size=(5, 3)).astype(np.float32),
                "y": rng.normal(size=(5, 2)).astype(np.float32)} for _ in range(2)]

    def loss_fn(params, batch):  # 0.5 * sum of squared errors of a linear layer
        out = batch["x"] @ params["w"] + params["b"]
        return 0.5 * jnp.sum((out - batch["y"]) ** 2)

    # By hand: dL/dW = X^T (XW + b - Y), dL/db = sum_rows (XW + b - Y), summed over batches.
    gw = sum(b["x"].T @ (b["x"] @ w + c - b["y"]) for b in batches)
    gb = sum((b["x"] @ w + c - b["y"]).sum(0) for b in batches)
    params = {"w": jnp.asarray(w), "b": jnp.asarray(c)}
    scores = sj.SNIP(loss_fn, batches)(params)
    np.testing.assert_allclose(np.asarray(scores["w"]), np.abs(gw * w), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(scores["b"]), np.abs(gb * c), rtol=1e-5)
    # prune() with SNIP keeps the top |g·w| (global over the selected kernels).
    _, masks = prune(params, 0.5, criterion=sj.SNIP(loss_fn, batches), distribution="global")
    np.testing.assert_array_equal(np.asarray(masks["w"]), _topk(np.abs(gw * w), 3))
    with pytest.raises(ValueError, match="scalar"):
        criteria.snip(params, lambda p, b: b["x"] @ p["w"], batches)
    with pytest.raises(ValueError, match="empty"):
        sj.SNIP(loss_fn, [])
    with pytest.raises(TypeError, match="list or tuple"):
        sj.SNIP(loss_fn, batches[0])


# --- selection with scores: every distribution and pattern -------------------------------


def test_saliency_masks_uniform_erk_global_match_numpy():
    p, g = _params(), _grads()
    sal = {k: np.abs(_np(p, k) * _np(g, k)) for k in KERNELS}
    scores = criteria.saliency(p, g)
    # Uniform: every layer keeps its own top ceil(0.3 * size).
    m = compute_masks(p, 0.7, scores=scores)
    for k in KERNELS:
        np.testing.assert_array_equal(_np(m, k), _topk(sal[k], _keep(0.7, sal[k].size)))
    assert m["Dense_0"]["bias"] is None and m["step"] is None
    # ERK: the per-layer sparsities of erk_sparsities, ranked by saliency.
    per = erk_sparsities({k: sal[k].shape for k in KERNELS}, 0.8)
    m = compute_masks(p, 0.8, scores=scores, distribution="erk")
    for k in KERNELS:
        np.testing.assert_array_equal(_np(m, k), _topk(sal[k], _keep(per[k], sal[k].size)))
    # Global saliency: one threshold over all kernels.
    allv = np.concatenate([sal[k].ravel() for k in KERNELS])
    total = _keep(0.8, allv.size)
    ref = _topk(allv, total)
    m = compute_masks(p, 0.8, scores=scores, distribution="global")
    got = np.concatenate([_np(m, k).ravel() for k in KERNELS])
    np.testing.assert_array_equal(got, ref)
    assert got.sum() == total
    # prune(criterion=Saliency(), grads=...) is the same selection, applied to the params.
    pruned, pm = prune(p, 0.8, criterion=sj.Saliency(), grads=g, distribution="global")
    for k in KERNELS:
        np.testing.assert_array_equal(_np(pm, k), _np(m, k))
        np.testing.assert_array_equal(_np(pruned, k), np.where(_np(m, k), _np(p, k), 0))


def test_nm_with_saliency_keeps_the_top_two_scores_of_every_group():
    p, g = _params(), _grads()
    m = compute_masks(p, None, pattern=NM(2, 4), scores=criteria.saliency(p, g))
    for k, axis in (("Dense_0/kernel", 0), ("Conv_0/kernel", 2)):
        s = np.moveaxis(np.abs(_np(p, k) * _np(g, k)), axis, -1)
        groups = s.reshape(-1, 4)
        mask = np.moveaxis(_np(m, k), axis, -1).reshape(-1, 4)
        assert (mask.sum(-1) == 2).all()
        top2 = np.argsort(-groups, axis=-1, kind="stable")[:, :2]
        ref = np.zeros_like(mask)
        np.put_along_axis(ref, top2, True, axis=-1)
        np.testing.assert_array_equal(mask, ref)


@pytest.mark.parametrize("kwargs", [dict(sparsity=0.7), dict(sparsity=0.6, distribution="erk"),
                                    dict(sparsity=0.6, distribution="global"),
                                    dict(sparsity=None, pattern=NM(2, 4)),
                                    dict(sparsity=0.5, pattern=Channel((-1,)))])
def test_magnitude_criterion_is_bit_identical_to_the_default(kwargs):
    p = _params()
    ref = compute_masks(p, **kwargs)
    got = compute_masks(p, scores=criteria.magnitude(p), **kwargs)
    assert jax.tree.all(jax.tree.map(np.array_equal, got, ref))
    a, b = prune(p, **kwargs), prune(p, criterion=sj.Magnitude(), **kwargs)
    assert jax.tree.all(jax.tree.map(np.array_equal, a, b))


# --- pruning() -----------------------------------------------------------------------------


def test_pruning_with_saliency_under_jit_matches_numpy_at_each_refresh():
    p, gs = _params(), [_grads(s) for s in range(10, 14)]
    sched = schedules.iterative([(0, 0.5), (2, 0.75)])
    tx = optax.chain(optax.sgd(0.01), sj.pruning(sched, update_every=None,
                                                 criterion=sj.Saliency()))
    state = tx.init(p)
    assert all(bool(_np(sj.get_masks(state), k).all()) for k in KERNELS)  # no grads at init
    step = jax.jit(lambda g, s, q: tx.update(g, s, q, grads=g))
    masks_by_step = []
    for t, g in enumerate(gs):
        before = p
        updates, state = step(g, state, p)
        p = optax.apply_updates(p, updates)
        m = sj.get_masks(state)
        masks_by_step.append(m)
        if t in (0, 2):  # refreshes: |w·g| at the params the update received
            s = 0.5 if t == 0 else 0.75
            for k in KERNELS:
                sal = np.abs(_np(before, k) * _np(g, k))
                np.testing.assert_array_equal(_np(m, k), _topk(sal, _keep(s, sal.size)))
        for k in KERNELS:  # pruned weights exactly 0 after every step
            assert (_np(p, k)[~_np(m, k)] == 0).all()
    for k in KERNELS:  # nested: a weight pruned at step 0 stays pruned at step 2
        assert not (_np(masks_by_step[2], k) & ~_np(masks_by_step[0], k)).any()
    assert step._cache_size() == 1  # one compilation for every step


def test_pruning_with_saliency_at_step_zero_is_snip_on_the_first_batch():
    """What the magnitude recipe's criterion=snip relies on."""
    rng = np.random.default_rng(5)
    p = {"w": jnp.asarray(rng.normal(size=(8, 4)), jnp.float32)}
    batch = {"x": jnp.asarray(rng.normal(size=(6, 8)), jnp.float32)}
    loss_fn = lambda q, b: jnp.mean(jnp.tanh(b["x"] @ q["w"]) ** 2)
    tx = optax.chain(optax.sgd(0.1), sj.pruning(0.75, update_every=None,
                                                criterion=sj.Saliency()))
    g = jax.grad(loss_fn)(p, batch)
    _, state = jax.jit(lambda g, s, q: tx.update(g, s, q, grads=g))(g, tx.init(p), p)
    ref = compute_masks(p, 0.75, scores=criteria.snip(p, loss_fn, [batch]))
    np.testing.assert_array_equal(np.asarray(sj.get_masks(state)["w"]), np.asarray(ref["w"]))
    # SNIP itself in pruning: masks from init, the same ones.
    tx = optax.chain(optax.sgd(0.1), sj.pruning(0.75, update_every=None,
                                                criterion=sj.SNIP(loss_fn, [batch])))
    np.testing.assert_array_equal(np.asarray(sj.get_masks(jax.jit(tx.init)(p))["w"]),
                                  np.asarray(ref["w"]))


def test_pruning_with_random_is_exact_fresh_per_refresh_and_nested():
    small = lambda: {"Dense_0": {"kernel": _params()["Dense_0"]["kernel"]}}
    p, grads = small(), {"Dense_0": {"kernel": _grads()["Dense_0"]["kernel"]}}
    tx = optax.chain(optax.sgd(0.0), sj.pruning(schedules.iterative([(0, 0.5), (1, 0.75)]),
                                                update_every=None, criterion=sj.Random(2)))
    state = jax.jit(tx.init)(p)
    m0 = sj.get_masks(state)
    step = jax.jit(tx.update)
    updates, state = step(grads, state, p)
    p = optax.apply_updates(p, updates)
    updates, state = step(grads, state, p)
    m1 = sj.get_masks(state)
    for k in ["Dense_0/kernel"]:
        size = _np(p, k).size
        assert _np(m0, k).sum() == _keep(0.5, size) and _np(m1, k).sum() == _keep(0.75, size)
        assert not (_np(m1, k) & ~_np(m0, k)).any()
    # Seed 2 at init = the functional form with key(2) folded with step 0.
    ref = compute_masks(small(), 0.5, scores=sj.Random(2)(small(), step=0))
    assert jax.tree.all(jax.tree.map(np.array_equal, m0, ref))


def test_pruning_without_grads_says_how_to_pass_them():
    p = _params()
    tx = optax.chain(optax.sgd(0.1), sj.pruning(0.5, criterion=sj.Saliency()))
    state = tx.init(p)
    with pytest.raises(ValueError, match=r"tx.update\(grads, opt_state, params, grads=grads\)"):
        jax.jit(tx.update)(_grads(), state, p)
    bad = _grads()
    bad["Dense_1"]["kernel"] = jnp.ones((4, 16))
    with pytest.raises(ValueError, match="grads at 'Dense_1/kernel' has shape"):
        jax.jit(lambda g, s, q: tx.update(g, s, q, grads=bad))(_grads(), state, p)


def test_bad_criterion_combinations_are_refused():
    p = _params()
    loss = lambda q, b: jnp.sum(q["Dense_1"]["kernel"])
    with pytest.raises(ValueError, match="prunes once, at init"):
        sj.pruning(0.5, update_every=1, criterion=sj.SNIP(loss, [None]))
    with pytest.raises(ValueError, match="prunes once, at init"):
        sj.pruning(schedules.polynomial(0.5, 0, 10), update_every=None,
                   criterion=sj.SNIP(loss, [None]))
    with pytest.raises(ValueError, match="q= .*Magnitude"):
        sj.pruning(None, q=1.0, criterion=sj.Saliency())
    with pytest.raises(ValueError, match="q= .*Magnitude"):
        prune(p, q=1.0, criterion=sj.Random())
    with pytest.raises(ValueError, match="q= .*criterion"):
        compute_masks(p, q=1.0, scores=criteria.magnitude(p))
    with pytest.raises(TypeError, match="criterion=.... must be a sparsejax.criteria"):
        sj.pruning(0.5, criterion="saliency")
    with pytest.raises(ValueError, match="needs the loss gradient.*grads="):
        prune(p, 0.5, criterion=sj.Saliency())
    with pytest.raises(ValueError, match="only read by criteria that need gradients"):
        prune(p, 0.5, grads=_grads())


def test_bad_scores_name_the_path():
    p = _params()
    s = criteria.magnitude(p)
    with pytest.raises(ValueError, match="scores do not match params.*'Dense_1/bias'"):
        compute_masks(p, 0.5, scores={k: v for k, v in s.items() if k != "Dense_1"})
    wrong = jax.tree.map(lambda x: x, s, is_leaf=lambda x: x is None)
    wrong["Dense_0"]["kernel"] = jnp.ones((16, 32))
    with pytest.raises(ValueError, match="scores at 'Dense_0/kernel' has shape"):
        compute_masks(p, 0.5, scores=wrong)
    wrong["Dense_0"]["kernel"] = -s["Dense_0"]["kernel"]
    with pytest.raises(ValueError, match="'Dense_0/kernel' hold .* negative.*absolute value"):
        compute_masks(p, 0.5, scores=wrong)
    wrong["Dense_0"]["kernel"] = s["Dense_0"]["kernel"].at[0, 0].set(jnp.nan)
    with pytest.raises(ValueError, match="'Dense_0/kernel' hold 1 non-finite"):
        compute_masks(p, 0.5, scores=wrong)
    wrong["Dense_0"]["kernel"] = None
    with pytest.raises(ValueError, match="None at 'Dense_0/kernel'.*exclude='Dense_0/kernel'"):
        compute_masks(p, 0.5, scores=wrong)
    # Excluded, the leaf needs no score.
    m = compute_masks(p, 0.5, scores=wrong, exclude="Dense_0")
    assert m["Dense_0"]["kernel"] is None


# --- recipes and configs ---------------------------------------------------------------------


def _method(**fields):
    config = ml_collections.ConfigDict({"method": {"name": "magnitude", **fields}})
    return recipes.build_phases(config, 20, 5)


def test_recipes_build_criterion_phases_and_refuse_bad_names():
    snip = _method(sparsity=0.8, criterion="snip")
    assert [ph.name for ph in snip] == ["snip"] and snip[0].lr_scale == 1.0
    assert [ph.name for ph in _method(criterion="saliency")] == ["dense", "retrain1"]
    with pytest.raises(ConfigError, match="criterion='taylor'.*valid: magnitude, random, "
                                          "saliency, snip"):
        _method(criterion="taylor")
    with pytest.raises(ConfigError, match="method.q must be 0 with criterion='random'"):
        _method(q=1.0, criterion="random")
    with pytest.raises(ConfigError, match="iterations must be 1 with criterion='snip'"):
        _method(iterations=2, criterion="snip")
    gradual = ml_collections.ConfigDict({"method": {"name": "gradual", "criterion": "snip"}})
    with pytest.raises(ConfigError, match="use the magnitude recipe"):
        recipes.build_phases(gradual, 20, 5)


def test_experiment_configs_take_a_criterion_and_keep_their_defaults():
    han = os.path.join(ROOT, "experiments", "han.py")
    assert config_lib.load(han).method.criterion == "magnitude"
    overridden = config_lib.apply_overrides(config_lib.load(han), {"method.criterion": "random"})
    assert overridden.method.criterion == "random"  # --config.method.criterion=random
    c = config_lib.load(han + ":criterion=snip,distribution=global")
    assert (c.method.criterion, c.method.distribution) == ("snip", "global")
    assert c.name.endswith("_snip")
    gradual = os.path.join(ROOT, "experiments", "gradual.py")
    assert config_lib.load(gradual + ":criterion=saliency").method.criterion == "saliency"
    assert config_lib.load(gradual).method.criterion == "magnitude"


def test_han_smoke_with_saliency_trains_to_the_target_sparsity(tmp_path):
    import tensorflow_datasets as tfds
    from sparsejax.experiment import train

    config = config_lib.load(os.path.join(ROOT, "experiments", "han.py")
                             + ":criterion=saliency,sparsity=0.75,smoke")
    config.model = ml_collections.ConfigDict({"name": "mlp", "kwargs": {"features": (32, 16)}})
    config.num_steps = 3
    config.checkpoint_every_steps = 3
    with tfds.testing.mock_data(num_examples=64):
        summary = train.train_and_evaluate(config, str(tmp_path))
    assert summary["weight_sparsity"] == pytest.approx(0.75, abs=0.01)
    assert np.isfinite(summary["loss"])
    # Saliency makes its masks at the retraining phase's first update: no evaluation
    # "right after pruning" of the still-dense weights is reported.
    assert summary.get("accuracy_after_pruning") is None
