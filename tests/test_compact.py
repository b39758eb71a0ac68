"""Compact storage and structured gather/scatter."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparsejax import compact
from sparsejax.ops import Policy, sparse_conv_general_dilated
from sparsejax.patterns import topk_mask
from sparsejax.sparsifiers import TopK


@pytest.mark.parametrize("shape", [(1000,), (3, 7, 5), (2, 4, 4, 9)])
def test_pack_unpack_roundtrip(shape):
    x = jax.random.normal(jax.random.key(0), shape)
    m = topk_mask(x, 0.8)
    k = int(m.sum())
    p = compact.pack(x, m, k)
    assert p.values.shape == (k,) and p.bits.shape == (math.ceil(x.size / 8),)
    np.testing.assert_array_equal(compact.unpack(p), jnp.where(m, x, 0))
    assert p.nbytes == compact.packed_nbytes(shape, k, jnp.float32)
    # Room for more values than kept: padding is never read back.
    np.testing.assert_array_equal(compact.unpack(compact.pack(x, m, k + 5)), jnp.where(m, x, 0))


def test_pack_under_jit_and_bf16():
    x = jax.random.normal(jax.random.key(1), (64, 33)).astype(jnp.bfloat16)
    m = topk_mask(x, 0.5)
    p = jax.jit(lambda x, m: compact.pack(x, m, 1056))(x, m)
    assert p.values.dtype == jnp.bfloat16
    np.testing.assert_array_equal(jax.jit(compact.unpack)(p), jnp.where(m, x, 0))


def test_take_put_inverse():
    x = jnp.arange(24.).reshape(2, 3, 4)
    idx = jnp.array([0, 3])
    small = compact.take(x, idx, 2)
    assert small.shape == (2, 3, 2)
    back = compact.put(small, idx, 2, x.shape)
    np.testing.assert_array_equal(back[..., [0, 3]], x[..., [0, 3]])
    assert float(back[..., [1, 2]].sum()) == 0


def test_packed_residual_reduces_saved_memory():
    """SWAT 80% with packing: the activation residual is 23% of the dense one."""
    a = jax.random.normal(jax.random.key(3), (8, 16, 16, 32))
    w = jax.random.normal(jax.random.key(4), (3, 3, 32, 32))
    dn = ("NHWC", "HWIO", "NHWC")
    f = lambda pol: lambda a_, w_: sparse_conv_general_dilated(a_, w_, (1, 1), "SAME",
                                                               dimension_numbers=dn, policy=pol)
    leaves = lambda pol: jax.tree_util.tree_leaves(jax.vjp(f(pol), a, w)[1])
    packed = leaves(Policy(weight=TopK(0.8), act_saved=TopK(0.8), pack_saved=True))
    dense = leaves(Policy(weight=TopK(0.8), act_saved=TopK(0.8)))
    act = lambda ls: sum(l.nbytes for l in ls if l.size != w.size)
    assert act(packed) / act(dense) == pytest.approx(
        compact.packed_nbytes(a.shape, math.ceil(0.2 * a.size), a.dtype) / a.nbytes)
    assert act(packed) < 0.24 * act(dense)
