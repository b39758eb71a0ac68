"""Tests for sparsejax.patterns: N:M, channel, block masks and pattern values."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from sparsejax.patterns import (NM, Block, Channel, Unstructured, block_mask, channel_mask,
                                nm_mask, topk_mask)
from sparsejax.select import keep_count

PROPS = settings(max_examples=30, deadline=None)

_nm = jax.jit(nm_mask, static_argnums=(1, 2, 3))


def _nm_reference(x: np.ndarray, n: int, m: int, axis: int) -> np.ndarray:
    """Per group of m along axis: the n largest |x|, ties to the lower index."""
    moved = np.moveaxis(np.abs(x), axis, -1)
    g = moved.reshape(moved.shape[:-1] + (moved.shape[-1] // m, m))
    order = np.argsort(-g, axis=-1, kind="stable")
    keep = np.zeros(g.shape, bool)
    np.put_along_axis(keep, order[..., :n], True, axis=-1)
    return np.moveaxis(keep.reshape(moved.shape), -1, axis)


@st.composite
def nm_cases(draw):
    n, m = draw(st.sampled_from([(1, 2), (2, 4), (1, 4), (3, 4), (2, 8)]))
    layout = draw(st.sampled_from(["dense", "conv"]))
    groups = draw(st.integers(1, 2))
    shape = (m * groups, 3) if layout == "dense" else (2, 1, m * groups, 2)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.integers(-4, 5, size=shape).astype(np.float32)  # many ties
    if draw(st.booleans()):
        x = rng.normal(size=shape).astype(np.float32)
    return x, n, m


@PROPS
@given(case=nm_cases())
def test_nm_exactly_n_per_group_and_reference(case):
    x, n, m = case
    mask = np.asarray(_nm(jnp.asarray(x), n, m, -2))
    groups = np.moveaxis(mask, -2, -1).reshape(-1, m)
    assert (groups.sum(-1) == n).all()
    np.testing.assert_array_equal(mask, _nm_reference(x, n, m, -2))


@PROPS
@given(case=nm_cases())
def test_nm_idempotent(case):
    x, n, m = case
    x = np.where(x == 0, 0.5, x)  # kept entries must stay nonzero
    mask = _nm(jnp.asarray(x), n, m, -2)
    again = _nm(jnp.where(mask, jnp.asarray(x), 0.0), n, m, -2)
    np.testing.assert_array_equal(again, mask)


def test_nm_groups_run_along_contraction_axis():
    # Dense (in, out): groups along in = axis 0 (i.e. -2), separately per column.
    x = jnp.array([[1., 8.], [4., 7.], [3., 6.], [2., 5.]])
    assert nm_mask(x, 2, 4).tolist() == [[False, True], [True, True], [True, False],
                                         [False, False]]
    # Conv (h, w, in, out): groups along in, separately for each (h, w, out).
    rng = np.random.default_rng(0)
    k = rng.normal(size=(3, 3, 8, 4)).astype(np.float32)
    mask = np.asarray(nm_mask(jnp.asarray(k), 2, 4))
    assert (mask.reshape(3, 3, 2, 4, 4).sum(axis=3) == 2).all()
    np.testing.assert_array_equal(mask, _nm_reference(k, 2, 4, 2))
    # An explicit other axis is honoured.
    np.testing.assert_array_equal(nm_mask(jnp.asarray(k), 1, 2, axis=-1),
                                  _nm_reference(k, 1, 2, 3))


def test_nm_nan_never_kept():
    x = jnp.array([[np.nan], [1.], [2.], [3.]])
    assert nm_mask(x, 2, 4).ravel().tolist() == [False, False, True, True]


def test_nm_errors():
    with pytest.raises(ValueError, match="0 < n <= m"):
        NM(3, 2)
    with pytest.raises(ValueError, match="m > 0"):
        NM(1, 0)
    with pytest.raises(TypeError, match="integers"):
        NM(2.0, 4)
    with pytest.raises(ValueError, match="out of range.*'Dense_0/kernel'"):
        nm_mask(jnp.ones((4, 4)), 2, 4, axis=2, where="Dense_0/kernel")
    with pytest.raises(ValueError, match="divisible by 4.*'Conv_0/kernel'"):
        nm_mask(jnp.ones((3, 3, 3, 8)), 2, 4, where="Conv_0/kernel")
    assert "not divisible" in NM(2, 4).ineligible((3, 3, 3, 8))
    assert "no axis" in NM(2, 4).ineligible((8,))
    assert NM(2, 4).ineligible((3, 3, 8, 16)) is None


def test_pattern_values_are_hashable_static_args():
    assert hash(NM(2, 4)) == hash(NM(2, 4)) and NM(2, 4) != NM(1, 4)
    assert Channel(-1) == Channel((-1,)) and Block([2, 2]) == Block((2, 2))
    assert NM(2, 4).fixed_sparsity == 0.5 and Unstructured().fixed_sparsity is None

    @functools.partial(jax.jit, static_argnums=1)
    def f(x, pattern):
        return pattern.mask(x, 0.5)

    x = jnp.arange(8.0).reshape(4, 2)
    assert int(f(x, Unstructured()).sum()) == 4
    assert int(f(x, NM(1, 2)).sum()) == 4


@pytest.mark.parametrize("axes,shape", [((-1,), (3, 3, 4, 8)), ((-2,), (3, 3, 4, 8)),
                                        ((-2, -1), (3, 3, 4, 8)), ((-1,), (6, 10))])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.8])
def test_channel_mask_keeps_whole_top_channels(axes, shape, sparsity):
    rng = np.random.default_rng(1)
    x = rng.normal(size=shape).astype(np.float32)
    mask = np.asarray(channel_mask(jnp.asarray(x), sparsity, axes))
    ax = tuple(a % len(shape) for a in axes)
    other = tuple(i for i in range(len(shape)) if i not in ax)
    unit = mask.all(axis=other)
    np.testing.assert_array_equal(unit, mask.any(axis=other))  # whole channels only
    units = int(np.prod([shape[a] for a in ax]))
    assert unit.sum() == -(-round((1 - sparsity) * 10) * units // 10)
    score = np.abs(x).mean(axis=other).ravel()
    kept = unit.ravel()
    assert score[kept].min() >= score[~kept].max(initial=-1.0)


def test_block_mask_keeps_whole_top_blocks():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, 4, 6)).astype(np.float32)
    mask = np.asarray(block_mask(jnp.asarray(x), 0.5, (2, 2)))
    blocks = mask.reshape(3, 2, 2, 3, 2).transpose(0, 1, 3, 2, 4).reshape(3, 2, 3, 4)
    assert (blocks.all(-1) == blocks.any(-1)).all()
    assert blocks[..., 0].sum() == 9  # ceil(0.5 * 18 blocks)
    score = np.abs(x).reshape(3, 2, 2, 3, 2).transpose(0, 1, 3, 2, 4).reshape(3, 2, 3, 4)
    score = score.mean(-1)
    assert score[blocks[..., 0]].min() >= score[~blocks[..., 0]].max()
    with pytest.raises(ValueError, match="does not fit layer.*not divisible"):
        Block((4, 4)).mask(jnp.ones((4, 6)), 0.5, where="layer")
    with pytest.raises(ValueError, match="positive integer"):
        Block((0, 2))


def test_global_units_roundtrip():
    x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 4, 6)), jnp.float32)
    for pattern, weight in [(Unstructured(), 1), (Channel((-1,)), 8), (Block((2, 3)), 6)]:
        keys, w = pattern.unit_scores(x)
        assert w == weight and keys.size * w == x.size
        full = pattern.expand(jnp.ones(keys.shape, bool), x.shape)
        assert full.shape == x.shape and bool(full.all())


def test_sparsity_errors_name_the_path():
    with pytest.raises(ValueError, match=r"'Dense_0/kernel'.*\[0, 1\)"):
        Unstructured().mask(jnp.ones((2, 2)), 1.0, where="Dense_0/kernel")
    with pytest.raises(ValueError, match="'Dense_0/kernel'"):
        Channel((-1,)).mask(jnp.ones((2, 2)), -0.1, where="Dense_0/kernel")


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_traced_out_of_range_sparsity_is_clamped(bad):
    # Documented in topk_mask: traced values cannot raise inside jit; NaN / < 0 remove
    # nothing, >= 1 keeps the minimum (one entry here), never an all-False mask.
    # Before: 1.5 gave an all-False mask and NaN an arbitrary one.
    x = jnp.arange(1.0, 101.0)
    s = jnp.float32(bad)
    keep = jax.jit(topk_mask)(x, s)
    want = 1 if bad >= 1 else 100
    assert int(keep.sum()) == want
    if bad >= 1:
        assert bool(keep[-1])  # the largest magnitude
    assert int(jax.jit(channel_mask)(jnp.ones((3, 10)), s).sum()) == (3 if bad >= 1 else 30)
    assert int(jax.jit(block_mask, static_argnums=2)(jnp.ones((4, 8)), s, (2, 2)).sum()) == \
        (4 if bad >= 1 else 32)
    assert int(keep_count(s, 100)) == want


def test_concrete_out_of_range_sparsity_still_raises():
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"\[0, 1\)"):
            topk_mask(jnp.ones(4), bad)
