"""Sparse ops: every policy slot against hand-written dense references."""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.test_util import check_grads
from references import fwd_bwd, np_topk

from sparsejax.ops import (Aux, Policy, sparse_conv_general_dilated,
                           sparse_conv_general_dilated_with_stats, sparse_dot_general,
                           sparse_dot_general_with_stats)
from sparsejax.patterns import NM, Channel
from sparsejax.sparsifiers import (Cached, Fixed, PatternRule, RandomProjection, RowTopK,
                                   SharedColumns, TopK)

TOL = dict(rtol=2e-5, atol=2e-5)
NHWC = ("NHWC", "HWIO", "NHWC")


def rand(seed, *shapes):
    keys = jax.random.split(jax.random.key(seed), len(shapes))
    return [jax.random.normal(k, s, jnp.float32) for k, s in zip(keys, shapes)]


def conv(a, w, **kw):
    kw = {"window_strides": (1, 1), "padding": "SAME", "dimension_numbers": NHWC, **kw}
    return lax.conv_general_dilated(a, w, **kw)


def sconv(policy, aux=None, **kw):
    kw = {"window_strides": (1, 1), "padding": "SAME", "dimension_numbers": NHWC, **kw}
    return lambda a, w: sparse_conv_general_dilated(a, w, policy=policy, aux=aux, **kw)


DENSE_DN = (((1,), (0,)), ((), ()))


def dense(a, w):
    return lax.dot_general(a, w, DENSE_DN)


def sdense(policy, aux=None):
    return lambda a, w: sparse_dot_general(a, w, DENSE_DN, policy=policy, aux=aux)




def ref_fwd_bwd(op, a, w, ct, *, w_fwd=None, a_saved=None, g_mask=None, y_mask=None):
    """Dense reference: y = op(A, W_fwd)·y_mask; dA uses W_fwd, dW uses A_saved."""
    w_fwd = w if w_fwd is None else w_fwd
    a_saved = a if a_saved is None else a_saved
    y = op(a, w_fwd)
    g = ct
    if y_mask is not None:
        y, g = y * y_mask, g * y_mask
    if g_mask is not None:
        g = g * g_mask
    da = jax.vjp(lambda a_: op(a_, w_fwd), a)[1](g)[0]
    dw = jax.vjp(lambda w_: op(a_saved, w_), w)[1](g)[0]
    return y, da, dw


def assert_all_close(got, want, **tol):
    for g, r in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), **(tol or TOL))


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_no_rules_is_dense_op_with_true_gradient(kind):
    if kind == "dense":
        a, w = rand(0, (5, 6), (6, 4))
        f, ref = sdense(Policy()), dense
    else:
        a, w = rand(0, (2, 5, 5, 3), (3, 3, 3, 4))
        f, ref = sconv(Policy(), window_strides=(2, 2)), functools.partial(conv, window_strides=(2, 2))
    np.testing.assert_allclose(f(a, w), ref(a, w), **TOL)
    check_grads(f, (a, w), order=1, modes=["rev"], atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("kw", [
    dict(),
    dict(window_strides=(2, 2), padding=((1, 0), (0, 2))),
    dict(feature_group_count=2, rhs_dilation=(2, 1)),
])
def test_swat_conv_matches_masked_reference(kw):
    a, w, ct = rand(1, (2, 7, 7, 4), (3, 3, 4 // kw.get("feature_group_count", 1), 6), (1,))
    a = jax.nn.relu(a)
    y_shape = jax.eval_shape(lambda: conv(a, w, **kw)).shape
    ct = jax.random.normal(jax.random.key(9), y_shape)
    f = sconv(Policy(weight=TopK(0.7), act_saved=TopK(0.6)), **kw)
    got = fwd_bwd(f, a, w, ct)
    want = ref_fwd_bwd(functools.partial(conv, **kw), a, w, ct,
                       w_fwd=w * np_topk(w, 0.7), a_saved=a * np_topk(a, 0.6))
    assert_all_close(got, want)
    assert np.count_nonzero(np.asarray(got[2])) > np.count_nonzero(np_topk(w, 0.7))  # dense dW


def test_swat_relu_input_drops_nothing_more():
    a, w, ct = rand(2, (4, 8), (8, 3), (4, 3))
    a = a.at[:, :6].set(0.0)  # 75% zeros, sparsity 0.5 keeps every non-zero
    got = fwd_bwd(sdense(Policy(act_saved=TopK(0.5))), a, w, ct)
    assert_all_close(got, ref_fwd_bwd(dense, a, w, ct))


def test_dot_general_batch_dims_einsum_style():
    # (B, T, H, D) x (H, D, F) -> (H, B, T, F): batch over heads.
    a, w = rand(3, (2, 3, 4, 5), (4, 5, 6))
    dn = (((3,), (1,)), ((2,), (0,)))
    op = lambda a_, w_: lax.dot_general(a_, w_, dn)
    ct = jax.random.normal(jax.random.key(4), op(a, w).shape)
    pol = Policy(weight=TopK(0.5), act_saved=TopK(0.5), grad_out=RowTopK(2))
    got = fwd_bwd(lambda a_, w_: sparse_dot_general(a_, w_, dn, policy=pol), a, w, ct)
    g_rows = np.abs(np.asarray(ct))
    g_mask = g_rows >= np.sort(g_rows, axis=-1)[..., -2:-1]
    want = ref_fwd_bwd(op, a, w, ct, w_fwd=w * np_topk(w, 0.5), a_saved=a * np_topk(a, 0.5),
                       g_mask=g_mask)
    assert_all_close(got, want)


def test_meprop_row_topk_and_dense_bias_grad():
    import flax.linen as nn
    a, ct = rand(5, (6, 7), (6, 5))
    layer = nn.Dense(5, dot_general=functools.partial(sparse_dot_general,
                                                      policy=Policy(grad_out=RowTopK(2))))
    params = layer.init(jax.random.key(0), a)
    y, vjp = jax.vjp(lambda p, x: layer.apply(p, x), params, a)
    dp, da = vjp(ct)
    w = params["params"]["kernel"]
    g = np.abs(np.asarray(ct))
    g_mask = g >= np.sort(g, axis=1)[:, -2:-1]
    assert (g_mask.sum(1) == 2).all()
    _, da_ref, dw_ref = ref_fwd_bwd(dense, a, w, ct, g_mask=g_mask)
    assert_all_close((da, dp["params"]["kernel"]), (da_ref, dw_ref))
    np.testing.assert_allclose(dp["params"]["bias"], ct.sum(0), **TOL)  # dense bias gradient


@pytest.mark.parametrize("compact", [True, False])
def test_meprop_shared_columns(compact):
    a, w, ct = rand(6, (6, 7), (7, 9), (6, 9))
    got = fwd_bwd(sdense(Policy(grad_out=SharedColumns(3), compact=compact)), a, w, ct)
    cols = np.argsort(-np.abs(np.asarray(ct)).sum(0))[:3]
    g_mask = np.zeros(9, bool)
    g_mask[cols] = True
    assert_all_close(got, ref_fwd_bwd(dense, a, w, ct, g_mask=g_mask[None, :]))


def test_shared_columns_conv_compacted():
    a, w = rand(7, (2, 5, 5, 3), (3, 3, 3, 8))
    ct = jax.random.normal(jax.random.key(1), (2, 5, 5, 8))
    got = fwd_bwd(sconv(Policy(grad_out=SharedColumns(3))), a, w, ct)
    cols = np.argsort(-np.abs(np.asarray(ct)).sum((0, 1, 2)))[:3]
    g_mask = np.zeros(8, bool)
    g_mask[cols] = True
    assert_all_close(got, ref_fwd_bwd(conv, a, w, ct, g_mask=g_mask))


def test_dsg_exact_scores_mask_forward_and_reuse_on_dy():
    a, w, ct = rand(8, (6, 4), (4, 10), (6, 10))  # JL dim > 4: exact pre-activation scores
    y, stats = sparse_dot_general_with_stats(a, w, DENSE_DN, policy=Policy(out=RandomProjection(0.6)))
    y_full = np.asarray(dense(a, w))
    rel = np.maximum(y_full, 0)
    kth = np.sort(rel, axis=1)[:, -4:-3]  # keep_count(0.6, 10) = 4 per row
    y_mask = (rel >= kth) & (rel > 0)
    np.testing.assert_allclose(y, y_full * y_mask, **TOL)
    assert float(stats.out_density) == pytest.approx(y_mask.mean())
    got = fwd_bwd(sdense(Policy(out=RandomProjection(0.6))), a, w, ct)
    assert_all_close(got, ref_fwd_bwd(dense, a, w, ct, y_mask=y_mask))


def test_dsg_random_projection_estimate_conv():
    a, w = rand(9, (2, 6, 6, 64), (3, 3, 64, 32))  # contraction 576 > JL dim
    a = jax.nn.relu(a)
    w = w * jnp.linspace(0.1, 3.0, 32)  # output neurons of very different scales
    pol = Policy(out=RandomProjection(0.75, relu=False))
    f = sconv(pol, Aux(key=jax.random.key(3)))
    ct = jax.random.normal(jax.random.key(2), (2, 6, 6, 32))
    y, da, dw = fwd_bwd(f, a, w, ct)
    y_mask = np.asarray(y) != 0
    assert (y_mask.sum(-1) == 8).all()  # keep_count(0.75, 32) per position
    y_full = np.abs(np.asarray(conv(a, w)))
    assert y_full[y_mask].mean() > 2 * y_full[~y_mask].mean()  # the estimate finds large outputs
    assert_all_close((y, da, dw), ref_fwd_bwd(conv, a, w, ct, y_mask=y_mask), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="PRNG key"):
        sconv(pol)(a, w)


def test_ste_nm_and_sr_ste_decay():
    a, w, ct = rand(10, (5, 8), (8, 4), (5, 4))
    nm = np.asarray(NM(2, 4).mask(w))
    y, da, dw = fwd_bwd(sdense(Policy(weight=PatternRule(NM(2, 4)))), a, w, ct)
    assert_all_close((y, da, dw), ref_fwd_bwd(dense, a, w, ct, w_fwd=w * nm))
    got = fwd_bwd(sdense(Policy(weight=PatternRule(NM(2, 4)), weight_decay_pruned=0.3)), a, w, ct)
    np.testing.assert_allclose(got[2], dw + 0.3 * (1 - nm) * w, **TOL)


def test_fixed_mask_pruning_is_true_gradient():
    a, w = rand(11, (5, 6), (6, 4))
    mask = jax.random.bernoulli(jax.random.key(5), 0.4, w.shape)
    f = sdense(Policy(weight=Fixed(), straight_through=False), Aux(w_mask=mask))
    check_grads(f, (a, w), order=1, modes=["rev"], atol=1e-2, rtol=1e-2)
    ct = jnp.ones((5, 4))
    y, da, dw = fwd_bwd(f, a, w, ct)
    _, _, dw_ref = ref_fwd_bwd(dense, a, w, ct)
    np.testing.assert_allclose(dw, dw_ref * mask, **TOL)
    y_st, _, dw_st = fwd_bwd(sdense(Policy(weight=Fixed()), Aux(w_mask=mask)), a, w, ct)
    np.testing.assert_allclose(dw_st, dw_ref, **TOL)  # straight-through: dense dW


@pytest.mark.parametrize("axes", [(-2,), (-1,)])
@pytest.mark.parametrize("straight_through", [True, False])
@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_channel_compaction_equals_masked_dense(axes, straight_through, kind):
    if kind == "dense":
        a, w = rand(12, (6, 8), (8, 10))
        make, op = (lambda p: sdense(p)), dense
    else:
        a, w = rand(12, (2, 6, 6, 8), (3, 3, 8, 10))
        make, op = (lambda p: sconv(p, window_strides=(2, 1))), functools.partial(
            conv, window_strides=(2, 1))
    ct = jax.random.normal(jax.random.key(7), op(a, w).shape)
    rule = Channel(axes, sparsity=0.6)
    kw = dict(weight=rule, act_saved=TopK(0.5), straight_through=straight_through)
    got = fwd_bwd(make(Policy(**kw)), a, w, ct)
    masked = fwd_bwd(make(Policy(compact=False, **kw)), a, w, ct)
    assert_all_close(got, masked)
    wm = np.asarray(Channel(axes).mask(w, 0.6))
    want = ref_fwd_bwd(op, a, w, ct, w_fwd=w * wm, a_saved=a * np_topk(a, 0.5))
    if not straight_through:
        want = want[:2] + (want[2] * wm,)
    assert_all_close(got, want)


def test_stats_and_cached_threshold_refresh():
    a, w = rand(13, (16, 32), (32, 8))
    pol = Policy(weight=TopK(0.75), act_saved=TopK(0.5))
    _, st = sparse_dot_general_with_stats(a, w, DENSE_DN, policy=pol)
    assert float(st.w_density) == pytest.approx(0.25)
    assert float(st.a_density) == pytest.approx(0.5)
    assert float(st.a_input_density) == 1.0
    np.testing.assert_allclose(st.w_threshold, np.abs(np.asarray(w))[np_topk(w, 0.75)].min())

    cached = Policy(weight=TopK(0.75, cached=True), act_saved=TopK(0.5, cached=True))
    step = jax.jit(lambda a, w, aux: sparse_dot_general_with_stats(a, w, DENSE_DN, policy=cached,
                                                                   aux=aux))
    aux = Aux(w_threshold=jnp.float32(0), w_refresh=True, a_threshold=jnp.float32(0), a_refresh=True)
    y, st2 = step(a, w, aux)
    np.testing.assert_allclose(y, dense(a, w * np_topk(w, 0.75)), **TOL)
    np.testing.assert_allclose(st2.w_threshold, st.w_threshold)
    # Between refreshes the cached value is used as is (here a larger one).
    aux = aux._replace(w_threshold=st2.w_threshold * 2, w_refresh=False)
    _, st3 = step(a, w, aux)
    assert float(st3.w_threshold) == pytest.approx(2 * float(st2.w_threshold))
    assert float(st3.w_density) < 0.25


def test_no_recompilation_across_aux_values_and_traced_sparsity():
    traces = []

    @jax.jit
    def step(a, w, aux):
        traces.append(1)
        f = lambda a_, w_: sparse_dot_general(a_, w_, DENSE_DN, aux=aux,
                                              policy=Policy(weight=TopK(0.5), act_saved=TopK(0.5)))
        y, vjp = jax.vjp(f, a, w)
        return vjp(jnp.ones_like(y))

    a, w = rand(14, (8, 10), (10, 4))
    for s in (0.1, 0.5, 0.9):
        _, dw = step(a, w, Aux(w_sparsity=jnp.float32(s), a_sparsity=jnp.float32(s)))
        a_mask = np_topk(a, s)
        np.testing.assert_allclose(dw, (a * a_mask).T @ jnp.ones((8, 4)), **TOL)
    assert len(traces) == 1


def test_jit_vmap_grad_compose():
    a, w = rand(15, (3, 5, 6), (6, 4))
    pol = Policy(weight=TopK(0.5), act_saved=TopK(0.5))
    loss = lambda w_, a_: jnp.sum(jnp.tanh(sdense(pol)(a_, w_)))
    per_ex = jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0)))(w, a)
    loop = np.stack([jax.grad(loss)(w, a[i]) for i in range(3)])
    np.testing.assert_allclose(per_ex, loop, **TOL)


def test_flax_linen_and_nnx_layers():
    import flax.linen as nn
    from flax import nnx
    pol = Policy(weight=TopK(0.5), act_saved=TopK(0.5))
    x = rand(16, (2, 6, 6, 3))[0]
    dense_l = nn.Dense(4, dot_general=functools.partial(sparse_dot_general, policy=pol))
    conv_l = nn.Conv(4, (3, 3), conv_general_dilated=functools.partial(sparse_conv_general_dilated,
                                                                       policy=pol))
    x_s = x * np_topk(x, 0.5)  # the activation SWAT saves for dW
    for layer in (dense_l, conv_l):
        p = layer.init(jax.random.key(0), x)
        k = p["params"]["kernel"]
        y = layer.apply(p, x)
        op = (lambda a, w: a @ w) if layer is dense_l else conv
        np.testing.assert_allclose(y - p["params"]["bias"], op(x, k * np_topk(k, 0.5)), **TOL)
        # dW from the sparse saved activation (straight-through: every entry of W gets it),
        # the bias gradient from the dense dY.
        grads = jax.grad(lambda p_: jnp.sum(layer.apply(p_, x)))(p)["params"]
        want = jax.grad(lambda w: jnp.sum(op(x_s, w)))(k)
        np.testing.assert_allclose(grads["kernel"], want, **TOL)
        assert not np.allclose(want, jax.grad(lambda w: jnp.sum(op(x, w)))(k), atol=1e-3)
        np.testing.assert_allclose(grads["bias"], np.full(4, y[..., 0].size, np.float32))
    lin = nnx.Linear(3, 4, dot_general=functools.partial(sparse_dot_general, policy=pol),
                     rngs=nnx.Rngs(0))
    cv = nnx.Conv(3, 4, (3, 3), conv_general_dilated=functools.partial(
        sparse_conv_general_dilated, policy=pol), rngs=nnx.Rngs(0))
    for m in (lin, cv):
        k = m.kernel[...]
        op = (lambda a, w: a @ w) if m is lin else conv
        y = m(x)
        np.testing.assert_allclose(y, op(x, k * np_topk(k, 0.5)) + m.bias[...], **TOL)
        # As the linen layers: dW from the sparse saved activation x_s at every entry of W
        # (straight-through), the bias gradient the dense sum of dY.
        grads = nnx.grad(lambda m_: jnp.sum(m_(x)))(m)
        want = jax.grad(lambda w: jnp.sum(op(x_s, w)))(k)
        np.testing.assert_allclose(grads["kernel"][...], want, **TOL)
        assert not np.allclose(want, jax.grad(lambda w: jnp.sum(op(x, w)))(k), atol=1e-3)
        np.testing.assert_allclose(grads["bias"][...], np.full(4, y[..., 0].size, np.float32))


@pytest.mark.parametrize("ties", ["index", "all"])
@pytest.mark.parametrize("straight_through", [True, False])
def test_packed_saved_activation_gives_same_gradients(ties, straight_through):
    a, w = rand(17, (4, 8, 8, 16), (3, 3, 16, 16))
    # Coarse values: many ties at the threshold (SWAT's ties="all" keeps them all,
    # beyond the k value slots) and exact zeros.
    a = jnp.round(jnp.maximum(a, -0.5) * 2) / 2
    ct = jax.random.normal(jax.random.key(0), (4, 8, 8, 16))
    pol = lambda pack: Policy(weight=TopK(0.8, ties=ties), act_saved=TopK(0.8, ties=ties),
                              straight_through=straight_through,
                              saved="packed" if pack else "masked")
    got = fwd_bwd(sconv(pol(True)), a, w, ct)
    for g, r in zip(got, fwd_bwd(sconv(pol(False)), a, w, ct)):
        np.testing.assert_array_equal(g, r)
    if ties == "all":  # more entries kept than the top-K count: the tie plane was needed
        assert int(jnp.sum(jnp.abs(a) >= np.sort(np.abs(a).ravel())[-math.ceil(0.2 * a.size)])) \
            > math.ceil(0.2 * a.size)


@pytest.mark.parametrize("straight_through", [True, False])
def test_rematerialised_saved_activation_gives_same_gradients(straight_through):
    a, w = rand(19, (4, 8, 8, 16), (3, 3, 16, 16))
    ct = jax.random.normal(jax.random.key(1), (4, 8, 8, 16))
    pol = lambda remat: Policy(weight=TopK(0.8, ties="all"), act_saved=TopK(0.8, ties="all"),
                               straight_through=straight_through,
                               saved="remat" if remat else "masked")
    got = fwd_bwd(sconv(pol(True)), a, w, ct)
    for g, r in zip(got, fwd_bwd(sconv(pol(False)), a, w, ct)):
        np.testing.assert_array_equal(g, r)


def test_conv_stats_report_what_the_forward_pass_selected():
    a, w = rand(29, (4, 8, 8, 16), (3, 3, 16, 32))
    a = jax.nn.relu(a)  # about half zeros: the input density the monitor reports
    y, st = sparse_conv_general_dilated_with_stats(
        a, w, (1, 1), "SAME", dimension_numbers=NHWC,
        policy=Policy(weight=TopK(0.75), act_saved=TopK(0.9)))
    kw, ka = math.ceil(0.25 * w.size), math.ceil(0.1 * a.size)
    assert float(st.w_density) == pytest.approx(kw / w.size)
    assert float(st.a_density) == pytest.approx(ka / a.size)
    assert float(st.a_input_density) == pytest.approx(float(jnp.mean(a != 0)))
    assert float(st.out_density) == 1.0
    assert int(jnp.sum(jnp.abs(w) >= st.w_threshold)) == kw  # the smallest kept |W|
    assert int(jnp.sum(jnp.abs(a) >= st.a_threshold)) == ka
    w_s = jnp.where(jnp.abs(w) >= st.w_threshold, w, 0.0)
    np.testing.assert_allclose(y, conv(a, w_s), rtol=1e-5, atol=1e-5)


def _grad_temp_bytes(net, x):
    """XLA's temporary bytes for the parameter gradient of ``sum(net(x))``."""
    v = net.init(jax.random.key(1), x)
    loss = lambda p: jnp.sum(net.apply({**v, "params": p}, x, mutable=["batch_stats"])[0])
    return jax.jit(jax.grad(loss)).lower(v["params"]).compile().memory_analysis() \
        .temp_size_in_bytes


class _BNNet(nn.Module):
    """Conv -> BatchNorm -> ReLU, three times, every conv sparse under ``policy``."""

    policy: Policy

    @nn.compact
    def __call__(self, x):
        conv = functools.partial(sparse_conv_general_dilated, policy=self.policy)
        for _ in range(3):
            x = nn.Conv(32, (3, 3), conv_general_dilated=conv)(x)
            x = nn.relu(nn.BatchNorm(use_running_average=False)(x))
        return jnp.sum(x)


@pytest.mark.skipif(jax.default_backend() != "cpu",
                    reason="measures XLA:CPU's schedule (it builds the dW copy in the forward pass)")
def test_rematerialised_saved_activation_is_not_kept_from_the_forward_pass():
    # BatchNorm keeps its input for its own backward, so XLA recomputes the
    # masked activation from it in the backward pass instead of storing it.
    x = jax.random.normal(jax.random.key(0), (16, 32, 32, 8))

    def temp_bytes(remat):
        return _grad_temp_bytes(_BNNet(Policy(weight=TopK(0.8, ties="all"),
                                              act_saved=TopK(0.8, ties="all"),
                                              saved="remat" if remat else "masked")), x)

    saved = 16 * 32 * 32 * 32 * 4  # one float32 activation of a sparse layer
    assert temp_bytes(True) <= temp_bytes(False) - saved


@pytest.mark.parametrize("call, match", [
    (lambda: sparse_dot_general(jnp.ones((2, 3), jnp.int32), jnp.ones((3, 2), jnp.int32),
                                DENSE_DN, policy=Policy(weight=TopK(0.5))), "integers"),
    (lambda: sparse_dot_general(jnp.ones((2, 3)), jnp.ones((3, 2)), DENSE_DN, where="fc1",
                                policy=Policy(grad_out=RowTopK(5))), "fc1.*k=5 exceeds"),
    (lambda: Policy(weight=TopK(1.0)), r"\[0, 1\)"),
    (lambda: Policy(weight=RandomProjection(0.5)), "Policy.out"),
    (lambda: Policy(weight="topk"), "must be a sparsejax"),
    (lambda: Policy(weight_decay_pruned=0.1), "set Policy.weight"),
    (lambda: Policy(act_saved=TopK(0.5), saved="bits"), "Policy.saved must be one of"),
    (lambda: Policy(act_saved=TopK(0.5), pack_saved=True), "Policy\\(saved='packed'\\)"),
    (lambda: sparse_dot_general(jnp.ones((2, 3)), jnp.ones((3, 2)), DENSE_DN, where="fc1",
                                policy=Policy(act_saved=Cached(0.5), saved="packed"),
                                aux=Aux(a_threshold=1.0)), "fc1: Policy.saved='packed' needs"),
    (lambda: sparse_dot_general(jnp.ones((2, 3)), jnp.ones((3, 2)), DENSE_DN,
                                policy=Policy(act_saved=TopK(0.5), saved="packed"),
                                aux=Aux(a_sparsity=0.5)), "use saved='remat'"),
    (lambda: sparse_dot_general(jnp.ones((2, 3)), jnp.ones((3, 2)), DENSE_DN,
                                policy=Policy(weight=TopK(0.5)),
                                aux=Aux(w_threshold=1.0)), "does not read"),
    (lambda: sparse_dot_general(jnp.ones((2, 3)), jnp.ones((3, 2)), DENSE_DN,
                                policy=Policy(weight=Cached())), "needs aux"),
    (lambda: sparse_dot_general(jnp.ones((2, 3)), jnp.ones((3, 2)), DENSE_DN,
                                policy=Policy(), aux=Aux(a_sparsity=0.5)), "Policy.act_saved is None"),
    (lambda: sparse_dot_general(jnp.ones((2, 3)), jnp.ones((3, 2)), DENSE_DN,
                                policy=Policy(weight=TopK(0.5)),
                                aux=Aux(w_sparsity=1.5)), r"\[0, 1\)"),
    (lambda: sparse_dot_general(jnp.ones((2, 3)), jnp.ones((3, 2)), DENSE_DN, policy=Policy(),
                                out_sharding="x"), "out_sharding"),
])
def test_errors(call, match):
    with pytest.raises((ValueError, TypeError, NotImplementedError), match=match):
        call()


def test_grad_weight_rule_keeps_the_top_k_of_each_output_channel_of_dw():
    a, w = rand(41, (2, 6, 6, 3), (3, 3, 3, 4))
    pol = Policy(grad_weight=RowTopK(5))
    loss = lambda w_: jnp.sum(jnp.sin(sparse_conv_general_dilated(
        a, w_, (1, 1), "SAME", dimension_numbers=NHWC, policy=pol)))
    g = np.asarray(jax.grad(loss)(w))
    dense = np.asarray(jax.grad(lambda w_: jnp.sum(jnp.sin(conv(a, w_))))(w))
    flat = dense.reshape(-1, 4)  # rows: (kh, kw, in); one column per output channel
    keep = np.zeros(flat.shape, bool)
    np.put_along_axis(keep, np.argsort(-np.abs(flat), axis=0, kind="stable")[:5], True, axis=0)
    np.testing.assert_allclose(g, np.where(keep, flat, 0.0).reshape(dense.shape), rtol=1e-5,
                               atol=1e-6)
    # dA and the forward are the dense op's.
    da = jax.grad(lambda a_: jnp.sum(jnp.sin(sparse_conv_general_dilated(
        a_, w, (1, 1), "SAME", dimension_numbers=NHWC, policy=pol))))(a)
    np.testing.assert_allclose(da, jax.grad(lambda a_: jnp.sum(jnp.sin(conv(a_, w))))(a),
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="k=40 exceeds"):
        sparse_conv_general_dilated(a, w, (1, 1), "SAME", dimension_numbers=NHWC,
                                    policy=Policy(grad_weight=RowTopK(40)), where="conv")
    with pytest.raises(ValueError, match="Policy.grad_weight is None"):
        sparse_conv_general_dilated(a, w, (1, 1), "SAME", dimension_numbers=NHWC,
                                    policy=Policy(), aux=Aux(d_sparsity=0.5))
