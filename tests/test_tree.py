"""Tests for sparsejax.paths, sparsejax.distributions and sparsejax.tree."""

import logging
import math
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparsejax.distributions import erk_sparsities, global_masks, han_masks
from sparsejax.paths import leaf_paths, path_str, selected_paths
from sparsejax.patterns import NM, Block, Channel
from sparsejax.tree import apply_masks, compute_masks, prune

_is_none = lambda x: x is None


def _params(seed=0):
    rng = np.random.default_rng(seed)
    f = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)
    return {
        "Conv_0": {"kernel": f(3, 3, 3, 8), "bias": f(8)},
        "BatchNorm_0": {"scale": f(8), "bias": f(8)},
        "Dense_0": {"kernel": f(72, 16), "bias": f(16)},
        "Dense_1": {"kernel": f(16, 4), "bias": f(4)},
        "step": jnp.array(3, jnp.int32),
        "temperature": jnp.array(1.5, jnp.float32),
    }


def _counts(masks):
    return {p: int(np.sum(m)) for p, m in leaf_paths(masks).items() if m is not None}


def _ceil(frac_kept, size):
    return math.ceil(round(frac_kept * size, 9))


KERNELS = ["Conv_0/kernel", "Dense_0/kernel", "Dense_1/kernel"]

# Traced sparsity, static configuration: compiled once per (params shapes, config).
_jmasks = jax.jit(compute_masks,
                  static_argnames=("pattern", "distribution", "include", "exclude", "strict"))


# --- paths and selection ----------------------------------------------------------------


def test_paths_of_a_flax_model():

    class Net(nn.Module):

        @nn.compact
        def __call__(self, x):
            x = nn.Conv(4, (3, 3))(x)
            x = nn.BatchNorm(use_running_average=True)(x)
            return nn.Dense(2)(x.reshape(x.shape[0], -1))

    variables = Net().init(jax.random.key(0), jnp.ones((1, 4, 4, 1)))
    params = variables["params"]
    assert set(leaf_paths(params)) == {"Conv_0/kernel", "Conv_0/bias", "BatchNorm_0/scale",
                                       "BatchNorm_0/bias", "Dense_0/kernel", "Dense_0/bias"}
    assert selected_paths(params) == ["Conv_0/kernel", "Dense_0/kernel"]
    [(kp, _)] = jax.tree_util.tree_flatten_with_path({"a": [None, {"b": 1}]})[0]
    assert path_str(kp) == "a/1/b"


def test_default_selection_prunes_kernels_only():
    params = _params()
    masks = _jmasks(params, 0.5)
    assert jax.tree.structure(masks, is_leaf=_is_none) == jax.tree.structure(params)
    assert sorted(_counts(masks)) == sorted(KERNELS)
    for path, m in leaf_paths(masks).items():
        if m is not None:
            assert m.dtype == jnp.bool_ and m.shape == leaf_paths(params)[path].shape


def test_include_exclude_semantics(caplog):
    params = _params()
    with caplog.at_level(logging.INFO, logger="sparsejax"):
        assert selected_paths(params, exclude="Dense_1") == ["Conv_0/kernel", "Dense_0/kernel"]
    assert "selected Conv_0/kernel" in caplog.text
    assert "excluded Dense_1/kernel (exclude regex 'Dense_1')" in caplog.text
    # include replaces the default rule and may add non-default leaves (biases).
    assert selected_paths(params, include="Dense_0") == ["Dense_0/bias", "Dense_0/kernel"]
    # sequences: any regex matches; exclude wins over include.
    assert selected_paths(params, include=["kernel", "BatchNorm_0/scale"],
                          exclude=[r"^Conv"]) == ["BatchNorm_0/scale", "Dense_0/kernel",
                                                  "Dense_1/kernel"]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="sparsejax"):
        selected_paths(params, exclude=["Dense", "Dense_1"])
    assert "(exclude regex 'Dense')" in caplog.text  # first matching regex is reported
    assert "regex 'Dense_1'" not in caplog.text
    # callables see (path, leaf)
    big = lambda path, leaf: getattr(leaf, "size", 0) >= 200
    assert selected_paths(params, include=big) == ["Conv_0/kernel", "Dense_0/kernel"]
    assert selected_paths(params, exclude=big) == ["Dense_1/kernel"]
    masks = _jmasks(params, 0.5, include="Dense_0")
    assert _counts(masks) == {"Dense_0/kernel": 576, "Dense_0/bias": 8}


def test_unmatched_regex_warns_and_bad_rules_raise():
    params = _params()
    with pytest.warns(UserWarning, match="exclude regex 'Dens_1' matches no parameter path"):
        assert len(selected_paths(params, exclude="Dens_1")) == 3
    with pytest.warns(UserWarning, match="include regex 'nope'"):
        selected_paths(params, include=["kernel", "nope"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        selected_paths(params, include=["kernel"], exclude="Dense_1")
    with pytest.raises(TypeError, match="'step'.*int32"):
        compute_masks(params, 0.5, include="step")
    with pytest.raises(ValueError, match="does not compile"):
        selected_paths(params, include="Dense_(")
    with pytest.raises(TypeError, match="regex string"):
        selected_paths(params, include=[3])


# --- distributions ----------------------------------------------------------------------

ERK_SHAPES = {"conv1": (3, 3, 3, 16), "conv2": (3, 3, 16, 32), "fc": (512, 10),
              "tiny": (2, 2)}


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.8, 0.95, 0.99])
def test_erk_meets_budget_and_caps_density(sparsity):
    sp = erk_sparsities(ERK_SHAPES, sparsity)
    sizes = {k: math.prod(s) for k, s in ERK_SHAPES.items()}
    total = sum(sizes.values())
    kept = {k: _ceil(1 - sp[k], sizes[k]) for k in sp}
    assert all(0.0 <= s < 1.0 for s in sp.values())  # density in (0, 1]
    assert 0 <= sum(kept.values()) - (1 - sparsity) * total < len(sizes)
    # ERK ordering: density grows with sum(dims)/prod(dims).
    raw = {k: sum(s) / math.prod(s) for k, s in ERK_SHAPES.items()}
    dens = sorted(ERK_SHAPES, key=lambda k: raw[k])
    assert all(sp[a] >= sp[b] for a, b in zip(dens, dens[1:]))


def test_erk_makes_overflowing_layers_dense():
    shapes = {"small": (2, 2), "big": (100, 100)}
    sp = erk_sparsities(shapes, 0.5)
    # Unconstrained eps = 5002 / 204 would give 'small' density 24.5: it is made dense
    # and 'big' takes the rest of the budget.
    assert sp["small"] == 0.0
    assert math.isclose(1 - sp["big"], (5002 - 4) / 10000, rel_tol=1e-12)
    _, masks = prune({"small": jnp.ones((2, 2)), "big": jnp.ones((100, 100))}, 0.5,
                     distribution="erk")
    assert _counts(masks) == {"small": 4, "big": 4998}


def test_erk_under_jit_equals_host_without_retracing():
    traces = []

    def f(s):
        traces.append(None)
        return erk_sparsities(ERK_SHAPES, s)

    jf = jax.jit(f)
    for s in (0.5, 0.9, 0.97):
        host, traced = f(s), jf(s)
        for k in host:
            assert math.isclose(float(traced[k]), host[k], abs_tol=2e-6), (s, k)
    assert len(traces) == 4  # 3 host calls + 1 trace

    params = _params()
    sizes = {k: leaf_paths(params)[k].size for k in KERNELS}
    for s in (0.5, 0.9):
        got = _counts(_jmasks(params, s, distribution="erk"))
        host = erk_sparsities({k: leaf_paths(params)[k].shape for k in KERNELS}, s)
        for k in KERNELS:  # traced keep counts use a 1e-4 sparsity grid
            assert abs(got[k] - _ceil(1 - host[k], sizes[k])) <= 1e-4 * sizes[k] + 1
    _, host_masks = prune(params, 0.9, distribution="erk")
    assert 0 <= sum(_counts(host_masks).values()) - 0.1 * sum(sizes.values()) < len(sizes)


def _global_reference(arrays, sparsity):
    flat = np.concatenate([np.abs(a).ravel() for a in arrays])
    k = _ceil(1 - sparsity, flat.size)
    keep = np.zeros(flat.size, bool)
    keep[np.argsort(-flat, kind="stable")[:k]] = True
    out, start = [], 0
    for a in arrays:
        out.append(keep[start:start + a.size].reshape(a.shape))
        start += a.size
    return out


@pytest.mark.parametrize("sparsity", [0.3, 0.9])
def test_global_threshold_matches_numpy(sparsity):
    params = _params()
    params["Dense_1"]["kernel"] = params["Dense_1"]["kernel"].at[0].set(0.5)  # ties
    _, masks = prune(params, sparsity, distribution="global")
    kernels = [np.asarray(leaf_paths(params)[k]) for k in KERNELS]
    for k, want in zip(KERNELS, _global_reference(kernels, sparsity)):
        np.testing.assert_array_equal(leaf_paths(masks)[k], want)
    total = sum(a.size for a in kernels)
    assert sum(_counts(masks).values()) == _ceil(1 - sparsity, total)
    traced = leaf_paths(_jmasks(params, sparsity, distribution="global"))
    for k, want in zip(KERNELS, _global_reference(kernels, sparsity)):
        np.testing.assert_array_equal(traced[k], want)


@pytest.mark.parametrize("pattern", [Channel((-1,)), Block((2, 4))])
def test_global_structured_keeps_top_units(pattern):
    params = {"a": _params()["Dense_0"]["kernel"], "b": _params(1)["Dense_1"]["kernel"] * 3}
    masks = jax.jit(global_masks, static_argnums=2)(params, 0.6, pattern)
    scores, kept, weights = [], [], []
    for p, x in params.items():
        keys, w = pattern.unit_scores(x)
        unit_id = np.asarray(pattern.expand(jnp.arange(keys.size).reshape(keys.shape), x.shape))
        m = np.asarray(masks[p])
        unit_kept = np.array([m[unit_id == i].all() for i in range(keys.size)])
        unit_any = np.array([m[unit_id == i].any() for i in range(keys.size)])
        np.testing.assert_array_equal(unit_kept, unit_any)  # whole units only
        scores.append(np.asarray(keys).ravel())
        kept.append(unit_kept)
        weights.append(np.full(keys.size, w))
    scores, kept, weights = map(np.concatenate, (scores, kept, weights))
    k = _ceil(0.4, weights.sum())
    assert k <= weights[kept].sum() < k + weights.max()  # the last unit may overshoot
    assert scores[kept].min() >= scores[~kept].max()
    with pytest.raises(ValueError, match="no global threshold"):
        global_masks(params, 0.6, NM(2, 4))


def test_han_rule_matches_numpy():
    params = _params()
    _, masks = prune(params, q=0.7)
    for k in KERNELS:
        w = np.asarray(leaf_paths(params)[k])
        np.testing.assert_array_equal(leaf_paths(masks)[k], np.abs(w) > 0.7 * np.std(w))
    _, masks = prune(params, q={"^Conv": 0.2, "Dense_1": 1.5, ".*": 1.0})
    for k, q in zip(KERNELS, (0.2, 1.0, 1.5)):
        w = np.asarray(leaf_paths(params)[k])
        np.testing.assert_array_equal(leaf_paths(masks)[k], np.abs(w) > q * np.std(w))
    w = np.asarray(params["Dense_0"]["kernel"])
    np.testing.assert_array_equal(_jmasks(params, q=0.7)["Dense_0"]["kernel"],
                                  np.abs(w) > 0.7 * np.std(w))
    with pytest.raises(ValueError, match="no q regex matches 'Dense_0/kernel'"):
        compute_masks(params, q={"Conv": 0.5, "Dense_1": 0.5})
    with pytest.raises(ValueError, match="q for 'Conv_0/kernel' must be >= 0"):
        compute_masks(params, q=-1.0)
    assert han_masks({"w": jnp.array([[-2., 0.1, 0., 2.]])}, 1.0)["w"].tolist() == [
        [True, False, False, True]]


# --- compute_masks / prune / apply_masks ------------------------------------------------


def test_uniform_counts_and_no_retrace():
    params = _params()
    want = lambda s: {k: _ceil(1 - s, leaf_paths(params)[k].size) for k in KERNELS}
    assert _counts(prune(params, 0.9)[1]) == want(0.9)
    traces = []

    def f(p, s):
        traces.append(None)
        return compute_masks(p, s)

    jf = jax.jit(f)
    for s in (0.0, 0.25, 0.5, 0.9):
        assert _counts(jf(params, s)) == want(s)
    assert len(traces) == 1


def test_nm_skips_ineligible_layers_or_raises_when_strict(caplog):
    params = _params()
    with caplog.at_level(logging.WARNING, logger="sparsejax"):
        masks = compute_masks(params, pattern=NM(2, 4))
    assert "skipped Conv_0/kernel (3, 3, 3, 8)" in caplog.text
    assert "not divisible by m=4" in caplog.text
    assert _counts(masks) == {"Dense_0/kernel": 576, "Dense_1/kernel": 32}
    assert compute_masks(params, 0.5, pattern=NM(2, 4))["Dense_0"]["kernel"] is not None
    with pytest.raises(ValueError, match="cannot prune 'Conv_0/kernel'.*strict=False"):
        compute_masks(params, pattern=NM(2, 4), strict=True)
    assert _counts(compute_masks(params, pattern=NM(2, 4), exclude="Conv", strict=True)) == {
        "Dense_0/kernel": 576, "Dense_1/kernel": 32}


def test_argument_errors():
    params = _params()
    with pytest.raises(ValueError, match="unknown distribution 'erdos'.*'uniform', 'erk', "
                       "'global'"):
        compute_masks(params, 0.5, distribution="erdos")
    with pytest.raises(ValueError, match="exactly one of sparsity"):
        compute_masks(params, 0.5, q=1.0)
    with pytest.raises(ValueError, match="needs a target"):
        compute_masks(params)
    with pytest.raises(ValueError, match="fixed per-group sparsity"):
        compute_masks(params, pattern=NM(2, 4), distribution="global")
    with pytest.raises(ValueError, match="fixed per-group sparsity"):
        compute_masks(params, pattern=NM(2, 4), distribution="erk")
    with pytest.raises(ValueError, match="implies sparsity 0.5"):
        compute_masks(params, 0.7, pattern=NM(2, 4))
    with pytest.raises(ValueError, match="q="):
        compute_masks(params, q=1.0, pattern=Channel((-1,)))
    with pytest.raises(TypeError, match="Pattern"):
        compute_masks(params, 0.5, pattern="2:4")
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match=r"sparsity for 'Conv_0/kernel' must be in \[0, 1\)"):
            prune(params, bad)
        with pytest.raises(ValueError, match=r"distribution='erk'.*\[0, 1\)"):
            prune(params, bad, distribution="erk")


def test_nan_weights_error_names_the_path():
    params = _params()
    params["Dense_0"]["kernel"] = params["Dense_0"]["kernel"].at[1, 2].set(jnp.nan)
    with pytest.raises(ValueError, match="NaN weights for 'Dense_0/kernel'"):
        prune(params, 0.5)
    # Inside jit NaNs are never kept instead.
    m = _jmasks(params, 0.5)["Dense_0"]["kernel"]
    assert not bool(m[1, 2])


def test_prune_and_apply_masks():
    params = _params()
    params["Dense_1"]["kernel"] = params["Dense_1"]["kernel"].astype(jnp.bfloat16)
    pruned, masks = prune(params, 0.75)
    for k in KERNELS:
        w, p, m = (leaf_paths(t)[k] for t in (params, pruned, masks))
        assert p.dtype == w.dtype
        np.testing.assert_array_equal(np.asarray(p, np.float32),
                                      np.where(m, np.asarray(w, np.float32), 0))
        assert int(jnp.count_nonzero(p)) == _ceil(0.25, w.size)
    for k in ("Conv_0/bias", "BatchNorm_0/scale", "step", "temperature"):
        assert leaf_paths(pruned)[k] is leaf_paths(params)[k]


def test_apply_masks_rejects_mismatches():
    params = _params()
    masks = _jmasks(params, 0.5)
    bad = dict(masks, Dense_1={"kernel": masks["Dense_1"]["kernel"]})
    with pytest.raises(ValueError, match="params has 'Dense_1/bias', masks has "
                       "'Dense_1/kernel'"):
        apply_masks(params, bad)
    bad = dict(masks, extra=None)
    with pytest.raises(ValueError, match="masks do not match params"):
        apply_masks(params, bad)
    bad = dict(masks, Dense_1={"bias": None, "kernel": jnp.ones((4, 16), bool)})
    with pytest.raises(ValueError, match="'Dense_1/kernel' has shape"):
        apply_masks(params, bad)
    with pytest.raises(TypeError, match="'BatchNorm_0/bias' has dtype float32"):
        apply_masks(params, jax.tree.map(lambda x: x, params))
