"""Compact storage and structured gather/scatter (sparsejax.ops.compaction)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparsejax import native
from sparsejax.ops import Policy, compaction, sparse_conv_general_dilated
from sparsejax.patterns import topk_mask
from sparsejax.sparsifiers import TopK


@pytest.mark.parametrize("shape", [(1000,), (3, 7, 5), (2, 4, 4, 9)])
def test_pack_unpack_roundtrip(shape):
    x = jax.random.normal(jax.random.key(0), shape)
    m = topk_mask(x, 0.8)
    k = int(m.sum())
    p = compaction.pack(x, m, k)
    assert p.values.shape == (k,) and p.bits.shape == (math.ceil(x.size / 32),)
    np.testing.assert_array_equal(compaction.unpack(p), jnp.where(m, x, 0))
    assert p.nbytes == compaction.packed_nbytes(shape, k, jnp.float32)
    # Room for more values than kept: padding is never read back.
    np.testing.assert_array_equal(compaction.unpack(compaction.pack(x, m, k + 5)),
                                  jnp.where(m, x, 0))


def test_pack_under_jit_and_bf16():
    x = jax.random.normal(jax.random.key(1), (64, 33)).astype(jnp.bfloat16)
    m = topk_mask(x, 0.5)
    p = jax.jit(lambda x, m: compaction.pack(x, m, 1056))(x, m)
    assert p.values.dtype == jnp.bfloat16
    np.testing.assert_array_equal(jax.jit(compaction.unpack)(p), jnp.where(m, x, 0))


def test_take_put_inverse():
    x = jnp.arange(24.).reshape(2, 3, 4)
    idx = jnp.array([0, 3])
    small = compaction.take(x, idx, 2)
    assert small.shape == (2, 3, 2)
    back = compaction.put(small, idx, 2, x.shape)
    np.testing.assert_array_equal(back[..., [0, 3]], x[..., [0, 3]])
    assert float(back[..., [1, 2]].sum()) == 0


def test_pack_ties_roundtrip():
    """Entries at ``±tie`` go to the tie plane: only the ones strictly above take slots."""
    x = jnp.round(jax.random.normal(jax.random.key(5), (37, 11)) * 2) / 2
    x = x.at[0, 0].set(jnp.nan).at[0, 1].set(-0.0)
    tie = jnp.float32(1.0)
    m = jnp.abs(x) >= tie
    above = int(jnp.sum(jnp.abs(x) > tie))
    assert int(m.sum()) > above + 10
    p = compaction.pack(x, m, above, tie=tie)
    assert p.values.shape == (above,) and p.ties.shape == p.bits.shape == (math.ceil(x.size / 32),)
    np.testing.assert_array_equal(compaction.unpack(p), jnp.where(m, x, 0))
    assert p.nbytes == compaction.packed_nbytes(x.shape, above, x.dtype, ties=True)
    # A zero threshold (more than the sparsity already zero): zeros take no slot.
    relu = jnp.maximum(x, 0)
    p0 = compaction.pack(relu, relu >= 0, int(jnp.sum(relu > 0)), tie=jnp.float32(0))
    np.testing.assert_array_equal(compaction.unpack(p0), jnp.where(relu >= 0, relu, 0))


@pytest.mark.parametrize("size", [1, 31, 32, 33, 1000])
def test_pack_bits_roundtrip(size):
    m = jax.random.bernoulli(jax.random.key(size), 0.3, (size,))
    words = compaction.pack_bits(m)
    assert words.dtype == jnp.uint32 and words.shape == (math.ceil(size / 32),)
    np.testing.assert_array_equal(compaction.unpack_bits(words, (size,)), m)


def test_packed_residual_reduces_saved_memory():
    """SWAT 80% with packing: the activation residual is 23% of the dense one.

    The kernel is saved as itself (the op's input: no copy) plus its mask bits
    instead of a dense masked copy.
    """
    a = jax.random.normal(jax.random.key(3), (8, 16, 16, 32))
    w = jax.random.normal(jax.random.key(4), (3, 3, 32, 32))
    dn = ("NHWC", "HWIO", "NHWC")
    f = lambda pol: lambda a_, w_: sparse_conv_general_dilated(a_, w_, (1, 1), "SAME",
                                                               dimension_numbers=dn, policy=pol)
    leaves = lambda pol: jax.tree_util.tree_leaves(jax.vjp(f(pol), a, w)[1])
    k = math.ceil(0.2 * a.size)
    wbits = math.ceil(w.size / 32)
    act = lambda ls: sum(l.nbytes for l in ls if l.size not in (w.size, wbits))
    for ties in ("index", "all"):
        packed = leaves(Policy(weight=TopK(0.8), act_saved=TopK(0.8, ties=ties), saved="packed"))
        dense = leaves(Policy(weight=TopK(0.8), act_saved=TopK(0.8, ties=ties), saved="masked"))
        assert [l.size for l in packed if l.size in (w.size, wbits)] == [w.size, wbits]
        tie_bytes = 4 if ties == "all" else 0  # the threshold scalar
        assert act(packed) == (compaction.packed_nbytes(a.shape, k, a.dtype, ties == "all")
                               + tie_bytes)
        assert act(packed) < (0.27 if ties == "all" else 0.24) * act(dense)


@pytest.mark.parametrize("shape", [(7, 33), (4, 8, 8, 16), (2, 64, 65)])
def test_threshold_pack_kernel_matches_the_xla_formulation(shape):
    # Coarse values: exact zeros, ties at the threshold of both signs.
    x = jnp.round(jax.random.normal(jax.random.key(5), shape) * 2) / 2
    k = math.ceil(0.2 * x.size)
    tie = jnp.sort(jnp.abs(x).ravel())[-k]
    want = jnp.where(jnp.abs(x) >= tie, x, 0.0)
    above = int(jnp.sum(jnp.abs(x) > tie))
    with native.use(True):
        p = jax.jit(lambda x: compaction.pack_threshold(x, tie, k))(x)
        rebuilt = jax.jit(compaction.unpack)(p)
        batched = jax.jit(jax.vmap(
            lambda r: compaction.unpack(compaction.pack_threshold(r, tie, k))))(x[None])
    with native.use(False):
        q = jax.jit(lambda x: compaction.pack_threshold(x, tie, k))(x)
        rebuilt_xla = jax.jit(compaction.unpack)(q)
    np.testing.assert_array_equal(p.bits, q.bits)
    np.testing.assert_array_equal(p.ties, q.ties)
    np.testing.assert_array_equal(p.values[:above], q.values[:above])
    assert int(jnp.sum(p.ties != 0)) > 0  # the tie plane was exercised
    for got in (rebuilt, rebuilt_xla, batched[0]):
        np.testing.assert_array_equal(got, want)


@pytest.mark.skipif(not native.available(), reason="no C++ compiler: no CPU kernel")
def test_threshold_pack_is_a_custom_call_on_cpu_only_outside_export():
    x = jax.random.normal(jax.random.key(6), (8, 16, 16, 32))
    f = jax.jit(lambda x: compaction.unpack(compaction.pack_threshold(x, 1.0, x.size // 2)))
    with native.use(True):
        assert "sparsejax_pack_threshold" in f.lower(x).as_text()
        exported = jax.export.export(f, platforms=["cpu", "cuda"])(x)
        assert "sparsejax_pack_threshold" not in exported.mlir_module()
        np.testing.assert_array_equal(jax.export.deserialize(exported.serialize()).call(x), f(x))
