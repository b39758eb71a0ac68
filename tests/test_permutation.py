"""Tests for sparsejax.permutation (N:M channel permutations, Pool & Yu 2021)."""

import itertools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparsejax.patterns import nm_mask
from sparsejax.permutation import (PermutationResult, permute_channels, permute_for_nm,
                                   search_permutation)


def _nm_kept(w, n, m, axis=-2):
    return math.fsum(np.abs(np.asarray(w, np.float64))[np.asarray(nm_mask(w, n, m, axis))])


def _brute_force_best(w, n, m):
    """Best N:M kept over all partitions of the rows of ``w`` into groups of m."""
    c = w.shape[0]

    def partitions(items):
        if not items:
            yield []
            return
        head, rest = items[0], items[1:]
        for others in itertools.combinations(rest, m - 1):
            left = [x for x in rest if x not in others]
            for tail in partitions(left):
                yield [(head,) + others] + tail

    a = np.abs(w.astype(np.float64))
    kept = lambda rows: np.sort(rows.reshape(c // m, m, -1), axis=1)[:, m - n:].sum()
    return max(kept(a[np.concatenate(part)]) for part in partitions(list(range(c))))


def _clustered(rng, c=16, r=8):
    """Large rows 0..c/2-1, small rows after: identity groups are all-large or all-small."""
    big = rng.uniform(5.0, 10.0, (c // 2, r)) * rng.choice([-1.0, 1.0], (c // 2, r))
    small = rng.uniform(0.0, 1.0, (c // 2, r)) * rng.choice([-1.0, 1.0], (c // 2, r))
    return np.concatenate([big, small]).astype(np.float32)


class MLP(nn.Module):

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(32)(x))
        return nn.Dense(8)(x)


class ConvBN(nn.Module):

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(16, (3, 3))(x)
        x = nn.BatchNorm(use_running_average=True)(x)
        x = nn.relu(x)
        return nn.Conv(8, (3, 3))(x)


def test_dense_relu_dense_function_unchanged():
    model = MLP()
    x = jax.random.normal(jax.random.key(0), (5, 12))
    params = model.init(jax.random.key(1), x)["params"]
    new, found = permute_for_nm(params, [("Dense_0/kernel", "Dense_1/kernel")], perturbations=5)
    res = found["Dense_1/kernel"]
    assert not np.array_equal(res.perm, np.arange(32))
    np.testing.assert_allclose(model.apply({"params": new}, x), model.apply({"params": params}, x),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(new["Dense_0"]["bias"], params["Dense_0"]["bias"][res.perm])
    np.testing.assert_array_equal(new["Dense_1"]["bias"], params["Dense_1"]["bias"])
    assert res.kept_perm > res.kept_base
    assert _nm_kept(new["Dense_1"]["kernel"], 2, 4) == pytest.approx(res.kept_perm, rel=1e-12)


def _bn_variables(model, x):
    variables = model.init(jax.random.key(1), x)
    keys = iter(jax.random.split(jax.random.key(2), 4))
    bn = lambda lo: jax.random.uniform(next(keys), (16,), minval=lo, maxval=2.0)
    params = dict(variables["params"], BatchNorm_0={"scale": bn(-2.0), "bias": bn(-2.0)})
    stats = {"BatchNorm_0": {"mean": bn(-2.0), "var": bn(0.5)}}
    return {"params": params, "batch_stats": stats}


_BN_EXTRAS = ("params/BatchNorm_0/scale", "params/BatchNorm_0/bias",
              "batch_stats/BatchNorm_0/mean", "batch_stats/BatchNorm_0/var")


def test_conv_bn_relu_conv_function_unchanged():
    model = ConvBN()
    x = jax.random.normal(jax.random.key(0), (2, 6, 6, 3))
    variables = _bn_variables(model, x)
    new, found = permute_for_nm(
        variables, [("params/Conv_0/kernel", "params/Conv_1/kernel", _BN_EXTRAS)], perturbations=5)
    res = found["params/Conv_1/kernel"]
    assert not np.array_equal(res.perm, np.arange(16))
    assert res.kept_perm >= res.kept_base
    np.testing.assert_allclose(model.apply(new, x), model.apply(variables, x), rtol=1e-5, atol=1e-5)
    # The BatchNorm leaves matter: leaving them unpermuted changes the function.
    partial = permute_channels(variables, producer="params/Conv_0/kernel",
                               consumer="params/Conv_1/kernel", perm=res.perm)
    assert not np.allclose(model.apply(partial, x), model.apply(variables, x), atol=1e-3)


def test_clustered_weights_reach_unstructured_bound():
    w = _clustered(np.random.default_rng(0))
    res = search_permutation(w, n=2, m=4)
    assert res.kept_perm > res.kept_base
    assert res.kept_perm == res.kept_unstructured
    assert res.efficacy == 1.0
    assert res.converged
    # Every group of 4 holds exactly two of the large rows.
    assert np.array_equal(np.sum(res.perm.reshape(4, 4) < 8, axis=1), [2, 2, 2, 2])
    assert _nm_kept(w[res.perm], 2, 4) == res.kept_perm


@pytest.mark.parametrize("n,m", [(1, 2), (1, 4), (2, 4), (3, 4)])
def test_two_stripes_match_brute_force(n, m):
    w = np.random.default_rng(n * 10 + m).standard_normal((2 * m, 5)).astype(np.float32)
    res = search_permutation(w, n=n, m=m)
    assert res.kept_perm == pytest.approx(_brute_force_best(w, n, m), rel=1e-6)
    assert res.kept_base <= res.kept_perm <= res.kept_unstructured


def test_three_stripes_bounded_by_brute_force():
    rng = np.random.default_rng(3)
    for _ in range(3):
        w = rng.standard_normal((12, 6)).astype(np.float32)
        res = search_permutation(w, n=2, m=4, perturbations=20)
        best = _brute_force_best(w, 2, 4)
        assert res.kept_base <= res.kept_perm <= best * (1 + 1e-9)
        assert 0.0 <= res.efficacy <= 1.0


@pytest.mark.parametrize("shape,axis", [((64, 24), -2), ((64, 24), 0), ((3, 3, 32, 8), -2),
                                        ((8, 48), -1)])
def test_random_never_below_identity_and_efficacy_in_range(shape, axis):
    w = np.random.default_rng(7).standard_normal(shape).astype(np.float32)
    res = search_permutation(w, axis=axis, perturbations=10)
    c = shape[axis]
    assert sorted(res.perm.tolist()) == list(range(c))
    assert res.kept_base <= res.kept_perm <= res.kept_unstructured
    assert 0.0 <= res.efficacy <= 1.0
    assert res.kept_base == pytest.approx(_nm_kept(w, 2, 4, axis), rel=1e-12)
    assert res.kept_perm == pytest.approx(_nm_kept(np.take(w, res.perm, axis), 2, 4, axis),
                                          rel=1e-12)
    assert res.total == pytest.approx(float(np.abs(w.astype(np.float64)).sum()), rel=1e-12)


def test_efficacy_zero_over_zero_and_identity():
    res = search_permutation(np.ones((16, 4), np.float32))
    np.testing.assert_array_equal(res.perm, np.arange(16))
    assert res.kept_base == res.kept_perm == res.kept_unstructured == 32.0
    assert res.efficacy == 1.0
    zero = search_permutation(np.zeros((8, 4), np.float32))
    assert zero.efficacy == 1.0 and zero.total == 0.0
    dense = search_permutation(np.random.default_rng(0).standard_normal((8, 4)), n=4, m=4)
    np.testing.assert_array_equal(dense.perm, np.arange(8))
    assert dense.kept_perm == dense.total == dense.kept_unstructured
    handmade = PermutationResult(perm=np.arange(4), kept_base=1.0, kept_perm=2.0,
                                 kept_unstructured=5.0, total=6.0, regroupings=1, converged=True)
    assert handmade.efficacy == 0.25


def test_deterministic_given_seed():
    w = np.random.default_rng(11).standard_normal((96, 16)).astype(np.float32)
    a = search_permutation(w, seed=3, perturbations=15)
    b = search_permutation(jnp.asarray(w), seed=3, perturbations=15)
    np.testing.assert_array_equal(a.perm, b.perm)
    assert (a.kept_perm, a.regroupings) == (b.kept_perm, b.regroupings)


def test_max_iters_bounds_the_search():
    w = _clustered(np.random.default_rng(1), c=32)
    res = search_permutation(w, max_iters=1)
    assert res.regroupings == 1 and not res.converged
    assert res.kept_base < res.kept_perm < res.kept_unstructured
    pure = search_permutation(w, perturbations=0)
    assert pure.converged and pure.efficacy == 1.0


def test_permute_channels_moves_every_listed_leaf():
    rng = np.random.default_rng(0)
    params = {"a": {"kernel": rng.standard_normal((3, 8)), "bias": rng.standard_normal(8)},
              "bn": {"scale": rng.standard_normal(8), "bias": rng.standard_normal(8)},
              "b": {"kernel": rng.standard_normal((8, 2)), "bias": rng.standard_normal(2)}}
    perm = rng.permutation(8)
    out = permute_channels(params, producer="a/kernel", consumer="b/kernel", perm=perm,
                           producer_extras=["bn/scale", "bn/bias"])
    np.testing.assert_array_equal(out["a"]["kernel"], params["a"]["kernel"][:, perm])
    np.testing.assert_array_equal(out["a"]["bias"], params["a"]["bias"][perm])
    np.testing.assert_array_equal(out["bn"]["scale"], params["bn"]["scale"][perm])
    np.testing.assert_array_equal(out["bn"]["bias"], params["bn"]["bias"][perm])
    np.testing.assert_array_equal(out["b"]["kernel"], params["b"]["kernel"][perm])
    np.testing.assert_array_equal(out["b"]["bias"], params["b"]["bias"])
    assert jax.tree_util.tree_structure(out) == jax.tree_util.tree_structure(params)


def _two_layer():
    return {"Dense_0": {"kernel": jnp.ones((4, 8)), "bias": jnp.ones(8)},
            "Dense_1": {"kernel": jnp.ones((8, 4))}, "Dense_2": {"kernel": jnp.ones((6, 4))}}


def test_permute_channels_errors():
    p = _two_layer()
    with pytest.raises(KeyError, match=r"Dense_1/kernel"):
        permute_channels(p, producer="Dense_0/kernel", consumer="Dense_1/kernal", perm=np.arange(8))
    with pytest.raises(ValueError, match=r"'Dense_2/kernel' has 6 channels.*length 8.*"
                       r"'Dense_0/kernel' shape \(4, 8\)"):
        permute_channels(p, producer="Dense_0/kernel", consumer="Dense_2/kernel", perm=np.arange(8))
    with pytest.raises(ValueError, match=r"not a permutation of range\(8\).*repeated \[1\]"):
        permute_channels(p, producer="Dense_0/kernel", consumer="Dense_1/kernel",
                         perm=[0, 1, 1, 3, 4, 5, 6, 7])
    with pytest.raises(ValueError, match="out of range \\[8\\]"):
        permute_channels(p, producer="Dense_0/kernel", consumer="Dense_1/kernel",
                         perm=[8, 1, 2, 3, 4, 5, 6, 7])
    with pytest.raises(ValueError, match="integer"):
        permute_channels(p, producer="Dense_0/kernel", consumer="Dense_1/kernel",
                         perm=np.arange(8.0))
    with pytest.raises(ValueError, match="listed twice"):
        permute_channels(p, producer="Dense_0/kernel", consumer="Dense_1/kernel",
                         perm=np.arange(8), producer_extras=["Dense_1/kernel"])
    with pytest.raises(ValueError, match="appears in two pairs"):
        permute_for_nm(p, [("Dense_0/kernel", "Dense_1/kernel")] * 2, perturbations=0)
    with pytest.raises(ValueError, match="each pair"):
        permute_for_nm(p, ["Dense_1/kernel"])


def test_search_errors():
    with pytest.raises(ValueError, match="divisible by 4.*'L/kernel'"):
        search_permutation(np.ones((6, 4), np.float32), where="L/kernel")
    with pytest.raises(ValueError, match="m <= 4"):
        search_permutation(np.ones((16, 4), np.float32), n=2, m=8)
    with pytest.raises(ValueError, match="NaN"):
        search_permutation(np.full((8, 4), np.nan, np.float32))
    with pytest.raises(TypeError, match="floating"):
        search_permutation(np.ones((8, 4), np.int32))
    with pytest.raises(TypeError, match="outside jit"):
        jax.jit(lambda w: search_permutation(w).kept_perm)(jnp.ones((8, 4)))
    with pytest.raises(ValueError, match="perturbations"):
        search_permutation(np.ones((8, 4), np.float32), perturbations=-1)
