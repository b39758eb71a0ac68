"""Sparsifier rules and the per-row selection added to select.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sparsejax as sj
from sparsejax import select
from sparsejax.ops import Aux, Policy, sparse_dot_general
from sparsejax.patterns import NM, Block, Channel, Unstructured
from sparsejax.rule import Rule
from sparsejax.sparsifiers import (Cached, Fixed, PatternRule, RandomProjection, RowTopK,
                                   SharedColumns, SlotInput, TopK, projection_dim,
                                   ternary_projection)

NONE = SlotInput()


@pytest.mark.parametrize("k", [1, 3, 7])
def test_kth_largest_key_along_matches_sort(k):
    x = jax.random.normal(jax.random.key(0), (4, 5, 7))
    keys = select.magnitude_keys(x)
    for axis in (0, 2):
        if k > x.shape[axis]:
            continue
        v = select.kth_largest_key_along(keys, k, axis)
        ref = -np.sort(-np.asarray(keys), axis=axis).take(k - 1, axis=axis)
        np.testing.assert_array_equal(v, ref)


def test_kth_largest_key_along_traced_k_and_ties():
    keys = select.magnitude_keys(jnp.array([[1., 2., 2., 3.], [5., 5., 5., 5.]]))
    f = jax.jit(lambda k: keys >= select.kth_largest_key_along(keys, k, -1)[:, None])
    assert f(2).sum(1).tolist() == [3, 4]  # ties at the k-th value are all kept
    assert f(1).sum(1).tolist() == [1, 4]


@pytest.mark.parametrize("shape,axis,k", [((2000, 32), 1, 6), ((6, 16, 9), 1, 4), ((8, 30), 0, 8),
                                           ((50, 32), 1, 1)])
def test_kth_largest_key_along_network_equals_bisection(shape, axis, k):
    # A static k on short rows takes the insertion network; a traced k the bisection.
    x = np.array(jax.random.normal(jax.random.key(k), shape))
    x.flat[:40:3] = 0.0  # zeros (ReLU gradients), ties and a NaN
    x.flat[41] = x.flat[42]
    x.flat[45] = np.nan
    keys = select.magnitude_keys(x)
    net = select.kth_largest_key_along(keys, k, axis)
    bisect = jax.jit(lambda kk: select.kth_largest_key_along(keys, kk, axis))(k)
    ref = -np.sort(-np.asarray(keys), axis=axis).take(k - 1, axis=axis)
    np.testing.assert_array_equal(net, ref)
    np.testing.assert_array_equal(bisect, ref)


def test_topk_exact_and_sampled_and_override():
    x = jax.random.normal(jax.random.key(1), (40, 50))
    m, t = TopK(0.9).keep(x, NONE, ())
    assert int(m.sum()) == 200
    assert float(t) == pytest.approx(float(jnp.sort(jnp.abs(x).ravel())[-200]))
    m2, _ = TopK(0.9).keep(x, SlotInput(sparsity=jnp.float32(0.5)), ())
    assert int(m2.sum()) == 1000
    m3, t3 = TopK(0.9, sample_size=500).keep(x, NONE, ())
    assert 100 < int(m3.sum()) < 300
    assert TopK(0.9).static_count(x.shape, NONE) == 200
    assert TopK(0.9, sample_size=500).static_count(x.shape, NONE) is None


def test_cached_threshold_and_refresh():
    x = jnp.arange(1., 11.)
    m, t = Cached().keep(x, SlotInput(threshold=7.5), ())
    assert int(m.sum()) == 3 and float(t) == 7.5
    m, t = Cached(0.8).keep(x, SlotInput(threshold=7.5, refresh=jnp.bool_(True)), ())
    assert int(m.sum()) == 2 and float(t) == 9.0
    with pytest.raises(ValueError, match="no sparsity"):
        Cached().keep(x, SlotInput(threshold=1., refresh=True), ())


def test_pattern_rule_nm_and_channel():
    w = jax.random.normal(jax.random.key(2), (3, 3, 8, 4))
    m, _ = PatternRule(NM(2, 4)).keep(w, NONE, ())
    # Reference: the 2 largest |w| of every 4 consecutive input channels (axis 2), by sort.
    groups = np.abs(np.asarray(w)).reshape(3, 3, 2, 4, 4)          # (h, w, group, 4, out)
    rank = np.argsort(np.argsort(-groups, axis=3, kind="stable"), axis=3, kind="stable")
    np.testing.assert_array_equal(np.asarray(m), (rank < 2).reshape(w.shape))
    assert PatternRule(NM(2, 4)).static_count(w.shape, NONE) == w.size // 2
    rule = PatternRule(Channel((-2,)), 0.5)
    m, _ = rule.keep(w, NONE, ())
    # Reference: the 4 of 8 input channels with the largest mean |w|, whole channels kept.
    score = np.abs(np.asarray(w)).mean(axis=(0, 1, 3))
    kept = np.zeros(8, bool)
    kept[np.argsort(-score, kind="stable")[:4]] = True
    np.testing.assert_array_equal(np.asarray(m), np.broadcast_to(kept[:, None], w.shape))
    assert rule.static_count(w.shape, NONE) == w.size // 2
    with pytest.raises(ValueError, match="fixes its own"):
        PatternRule(NM(2, 4), 0.5)
    with pytest.raises(ValueError, match="needs a sparsity"):
        PatternRule(Channel((-1,)))
    with pytest.raises(ValueError, match="does not fit"):
        PatternRule(NM(2, 4)).check((3, 5), (), "conv1/kernel")


def test_one_rule_family_patterns_fill_slots_and_the_cache_is_a_topk_option():
    w = jax.random.normal(jax.random.key(5), (8, 6))
    for rule in (NM(2, 4), Channel((-1,), sparsity=0.5), Block((2, 2), sparsity=0.5),
                 Unstructured(sparsity=0.5), TopK(0.5), TopK(cached=True), Fixed(), RowTopK(2)):
        assert isinstance(rule, Rule)
    # A pattern in a slot keeps what its tree-level mask keeps (independent reference:
    # the mask the pattern gives with the sparsity passed explicitly).
    a = jax.random.normal(jax.random.key(6), (3, 8))
    dn = (((1,), (0,)), ((), ()))
    for rule, plain in ((NM(2, 4), NM(2, 4)), (Channel((-2,), sparsity=0.5), Channel((-2,))),
                        (Block((2, 2), sparsity=0.5), Block((2, 2)))):
        got = sparse_dot_general(a, w, dn, policy=Policy(weight=rule))
        want = a @ (w * plain.mask(w, 0.5))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # The slot's aux sparsity overrides a pattern's own; N:M fixes it and reads no aux.
    got = sparse_dot_general(a, w, dn, policy=Policy(weight=Channel((-1,), sparsity=0.5)),
                             aux=Aux(w_sparsity=jnp.float32(0.75)))
    assert int(np.asarray(Channel((-1,)).mask(w, 0.75)).any(0).sum()) == 2   # ceil(0.25 * 6)
    np.testing.assert_allclose(got, a @ (w * Channel((-1,)).mask(w, 0.75)), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="does not read aux"):
        sparse_dot_general(a, w, dn, policy=Policy(weight=NM(2, 4)),
                           aux=Aux(w_sparsity=jnp.float32(0.5)))
    # The cache is an option of TopK: the same rule value as the old name.
    assert Cached(0.8, sample_size=64) == TopK(0.8, sample_size=64, cached=True)
    assert TopK(0.8, cached=True).requires == {"threshold"} and TopK(0.8).requires == set()
    assert PatternRule(Channel((-2,)), 0.5) == Channel((-2,), sparsity=0.5)
    assert repr(Channel((-2,), sparsity=0.5)) == "Channel(axes=(-2,), sparsity=0.5)"
    assert repr(NM(2, 4)) == "NM(n=2, m=4, axis=None)"
    with pytest.raises(ValueError, match="ties"):
        TopK(0.5, ties="all", cached=True)
    with pytest.raises(ValueError, match="fixes its own sparsity"):
        NM(2, 4, sparsity=0.5)
    with pytest.raises(ValueError, match=r"sparsity"):
        Channel((-1,), sparsity=1.0)
    # Tree level: the sparsity comes from the call, never from the pattern too.
    with pytest.raises(ValueError, match="slot-rule sparsity"):
        sj.prune({"w": w}, 0.5, pattern=Channel((-1,), sparsity=0.3))
    with pytest.raises(ValueError, match="slot-rule sparsity"):
        sj.pruning(0.5, pattern=Unstructured(sparsity=0.3))


def test_a_rule_written_outside_the_library_fills_a_slot():
    """The public Rule protocol: keep() is all a new rule needs (here: |x| above its mean)."""
    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class AboveMean(Rule):
        def keep(self, x, given, feature_axes, where=None):
            t = jnp.mean(jnp.abs(x))
            return jnp.abs(x) >= t, t

    a = jax.random.normal(jax.random.key(8), (5, 8))
    w = jax.random.normal(jax.random.key(9), (8, 6))
    dn = (((1,), (0,)), ((), ()))
    policy = Policy(weight=AboveMean(), act_saved=AboveMean())
    f = lambda a, w: jnp.sum(sparse_dot_general(a, w, dn, policy=policy) ** 2)  # noqa: E731
    da, dw = jax.grad(f, argnums=(0, 1))(a, w)
    wm = np.abs(np.asarray(w)) >= np.abs(np.asarray(w)).mean()
    am = np.abs(np.asarray(a)) >= np.abs(np.asarray(a)).mean()
    y = np.asarray(a) @ (np.asarray(w) * wm)
    # Independent reference (SPECS §3): dA = dY W_sᵀ, dW = A_sᵀ dY (straight-through).
    np.testing.assert_allclose(da, 2 * y @ (np.asarray(w) * wm).T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dw, (np.asarray(a) * am).T @ (2 * y), rtol=1e-5, atol=1e-5)
    assert AboveMean().density(8) is None   # the cost model is told only the data decides


def test_fixed_rows_columns():
    x = jnp.array([[1., -4., 2.], [3., 0., 5.]])
    assert Fixed().keep(x, SlotInput(mask=jnp.eye(2, 3)), ())[0].sum() == 2
    with pytest.raises(ValueError, match="shape"):
        Fixed().keep(x, SlotInput(mask=jnp.ones(3)), ())
    assert RowTopK(2).keep(x, NONE, (1,))[0].tolist() == [[False, True, True], [True, False, True]]
    assert RowTopK(1).keep(x, NONE, (0,))[0].tolist() == [[False, True, False], [True, False, True]]
    # column sums 4, 4, 7: the tie goes to the lower index
    assert SharedColumns(2).keep(x, NONE, (1,))[0].tolist() == [[True, False, True]] * 2
    with pytest.raises(ValueError, match="layer2.*exceeds the layer width 3"):
        RowTopK(4).check(x.shape, (1,), "layer2")
    with pytest.raises(ValueError, match="grad_out or out slot"):
        RowTopK(1).check(x.shape, (), "w")
    with pytest.raises(ValueError, match="positive int"):
        SharedColumns(0)


def test_random_projection_parts():
    assert projection_dim(1000, 0.5) == 332
    r = np.asarray(ternary_projection(jax.random.key(0), (200, 300)))
    np.testing.assert_allclose(np.unique(r), [-3**0.5, 0.0, 3**0.5], rtol=1e-6)
    assert abs((r == 0).mean() - 2 / 3) < 0.01 and abs(r.var() - 1) < 0.03
    scores = jnp.array([[1., -4., 2., 3.], [-1., -2., -3., 0.5]])
    keep, _ = RandomProjection(0.5).keep(scores, NONE, (1,))
    assert keep.tolist() == [[False, False, True, True], [False, False, False, True]]
    keep, _ = RandomProjection(0.5, relu=False).keep(scores, NONE, (1,))
    assert keep.tolist() == [[False, True, False, True], [False, True, True, False]]
    with pytest.raises(ValueError, match="epsilon"):
        RandomProjection(0.5, epsilon=1.5)


def test_rules_are_hashable_and_validate():
    assert len({TopK(0.5), TopK(0.5), RowTopK(3), RowTopK(3)}) == 2
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        TopK(-0.1)
    with pytest.raises(ValueError, match="sample_size"):
        TopK(0.5, sample_size=0)


def test_topk_threshold_is_smallest_kept_and_ties_all_keeps_ties():
    x = jnp.array([1.0, -4.0, 2.0, 2.0, 0.5, -2.0])
    m, t = TopK(0.5).keep(x, SlotInput(), ())
    assert int(m.sum()) == 3 and float(t) == float(jnp.min(jnp.where(m, jnp.abs(x), jnp.inf)))
    m_all, t_all = TopK(0.5, ties="all").keep(x, SlotInput(), ())
    assert m_all.tolist() == [False, True, True, True, False, True] and float(t_all) == 2.0
    assert TopK(0.5, ties="all").static_count(x.shape, SlotInput()) is None
    # packing: k value slots, the ties at the threshold on a separate plane
    assert TopK(0.5, ties="all").pack_slots(x.shape, SlotInput()) == (3, True)
    assert TopK(0.5).pack_slots(x.shape, SlotInput()) == (3, False)
    assert TopK(0.5, ties="all", sample_size=4).pack_slots(x.shape, SlotInput()) is None
    assert TopK(0.5, ties="all").pack_slots(x.shape, SlotInput(sparsity=0.3)) is None
    assert PatternRule(NM(2, 4)).pack_slots((4, 8), SlotInput()) == (16, False)
    with pytest.raises(ValueError, match="ties"):
        TopK(0.5, ties="random")
