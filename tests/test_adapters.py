"""Tests of the linen and NNX adapters against dense references with explicit masks."""

import copy
import dataclasses
import logging
import math
import pickle

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax import lax
from references import (masked_op, np_kernel_slices, np_nm, np_relu_row_topk, np_row_topk,
                        np_topk_ties, sgd_losses)

from sparsejax import methods
from sparsejax.adapters import sparsify
from sparsejax.adapters.planning import plan
from sparsejax.adapters.nnx import SparsityState
from sparsejax.analysis import monitor
from sparsejax.ops import Policy
from sparsejax.sparsifiers import TopK
from sparsejax.patterns import NM, nm_mask, topk_mask

MUT = ["batch_stats", "sparsity"]


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Dense(8)(x))
        return nn.Dense(4)(h)


def _setup(in_features=6, batch=5, seed=0):
    kx, kc = jax.random.split(jax.random.key(seed + 1))
    x = jax.random.normal(kx, (batch, in_features))
    c = jax.random.normal(kc, (batch, 4))
    return x, c


def _grads(method, x, c):
    model = sparsify(MLP(), method)
    v = model.init(jax.random.key(0), x)

    def loss(p):
        y, _ = model.apply({**v, "params": p}, x, mutable=MUT)
        return jnp.sum(y * c), y

    (_, y), g = jax.value_and_grad(loss, has_aux=True)(v["params"])
    return v["params"], y, g


def _unpack(p):
    return (p["Dense_0"]["kernel"], p["Dense_0"]["bias"], p["Dense_1"]["kernel"],
            p["Dense_1"]["bias"])


def _check(g, y, ref_y, dw1, db1, dw2, db2):
    np.testing.assert_allclose(y, ref_y, rtol=1e-5, atol=1e-5)
    for got, want in ((g["Dense_0"]["kernel"], dw1), (g["Dense_0"]["bias"], db1),
                      (g["Dense_1"]["kernel"], dw2), (g["Dense_1"]["bias"], db2)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_params_tree_is_the_unwrapped_models():
    x, _ = _setup()
    v = sparsify(MLP(), methods.swat(0.5)).init(jax.random.key(0), x)
    ref = MLP().init(jax.random.key(0), x)
    jax.tree.map(np.testing.assert_array_equal, v["params"], ref["params"])
    assert set(v["sparsity"]) == {"Dense_1", "_method_shared"}  # first layer dense


def test_swat_matches_masked_reference():
    s = 0.5
    x, c = _setup()
    p, y, g = _grads(methods.swat(s, dense_first=False), x, c)
    w1, b1, w2, b2 = _unpack(p)
    w1s, w2s = w1 * topk_mask(w1, s), w2 * topk_mask(w2, s)
    z1 = x @ w1s + b1
    h = jax.nn.relu(z1)
    dy = c
    dw2 = (h * topk_mask(h, s)).T @ dy          # dW from top-K activations
    dz1 = (dy @ w2s.T) * (z1 > 0)               # dA from top-K weights
    dw1 = (x * topk_mask(x, s)).T @ dz1
    _check(g, y, h @ w2s + b2, dw1, dz1.sum(0), dw2, dy.sum(0))


def test_ste_sr_ste_matches_masked_reference():
    decay = 0.1
    x, c = _setup(in_features=8)
    p, y, g = _grads(methods.ste(NM(2, 4), decay=decay), x, c)
    w1, b1, w2, b2 = _unpack(p)
    m1, m2 = nm_mask(w1, 2, 4), nm_mask(w2, 2, 4)
    z1 = x @ (w1 * m1) + b1
    h = jax.nn.relu(z1)
    dz1 = (c @ (w2 * m2).T) * (z1 > 0)
    dw1 = x.T @ dz1 + decay * (~m1) * w1        # dense gradient + SR-STE decay
    dw2 = h.T @ c + decay * (~m2) * w2
    _check(g, y, h @ (w2 * m2) + b2, dw1, dz1.sum(0), dw2, c.sum(0))


def _row_topk(x, k):
    kth = jnp.sort(jnp.abs(x), axis=-1)[:, -k][:, None]
    return jnp.abs(x) >= kth


def test_meprop_matches_reference_and_keeps_output_layer_dense():
    k = 3
    x, c = _setup()
    p, y, g = _grads(methods.meprop(k), x, c)
    w1, b1, w2, b2 = _unpack(p)
    z1 = x @ w1 + b1
    h = jax.nn.relu(z1)
    dz1 = (c @ w2.T) * (z1 > 0)
    dw1 = x.T @ (dz1 * _row_topk(dz1, k))       # per-row top-k of dY; bias grad dense
    _check(g, y, h @ w2 + b2, dw1, dz1.sum(0), h.T @ c, c.sum(0))


def test_dsg_matches_reference_with_exact_scores():
    s = 0.5
    x, c = _setup()
    p, y, g = _grads(methods.dsg(s), x, c)
    w1, b1, w2, b2 = _unpack(p)
    # 6 input features: the JL dimension exceeds them, so the exact product scores.
    u = x @ w1
    r = jnp.maximum(u, 0)
    mask = (r >= jnp.sort(r, axis=-1)[:, -4][:, None]) & (r > 0)
    z1 = jnp.where(mask, u, 0) + b1
    h = jax.nn.relu(z1)
    dz1 = (c @ w2.T) * (z1 > 0)
    dw1 = x.T @ (dz1 * mask)                    # the forward mask reused on dY
    _check(g, y, h @ w2 + b2, dw1, dz1.sum(0), h.T @ c, c.sum(0))


def test_eval_uses_topk_weights_or_dense():
    x, _ = _setup()
    for sparse_eval in (True, False):
        model = sparsify(MLP(), methods.swat(0.5, dense_first=False, sparse_eval=sparse_eval))
        v = model.init(jax.random.key(0), x)
        w1, b1, w2, b2 = _unpack(v["params"])
        if sparse_eval:
            w1, w2 = w1 * topk_mask(w1, 0.5), w2 * topk_mask(w2, 0.5)
        np.testing.assert_allclose(model.apply(v, x), jax.nn.relu(x @ w1 + b1) @ w2 + b2,
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", [methods.swat(0.5, dense_first=False), methods.meprop(2)])
def test_gradient_through_read_only_call_follows_the_method(method):
    # A gradient taken without "sparsity" mutable (an evaluation-mode call) still
    # uses the method's backward rules; only the state does not advance.
    x, c = _setup()
    model = sparsify(MLP(), method)
    v = model.init(jax.random.key(0), x)
    grad = lambda f: jax.grad(lambda p: jnp.sum(f(p) * c))(v["params"])
    g_train = grad(lambda p: model.apply({**v, "params": p}, x, mutable=MUT)[0])
    g_eval = grad(lambda p: model.apply({**v, "params": p}, x))
    g_dense = jax.grad(lambda p: jnp.sum(MLP().apply({"params": p}, x) * c))(v["params"])
    for path in ("Dense_0", "Dense_1"):
        np.testing.assert_allclose(g_eval[path]["kernel"], g_train[path]["kernel"], rtol=1e-6)
    assert not np.allclose(g_eval["Dense_0"]["kernel"], g_dense["Dense_0"]["kernel"])


def _sgd_loop(model, v, x, c, steps, lr=0.05):
    traces = []

    @jax.jit
    def step(v):
        traces.append(1)

        def loss(p):
            y, upd = model.apply({**v, "params": p}, x, mutable=MUT)
            return jnp.sum(y * c), upd

        (l, upd), g = jax.value_and_grad(loss, has_aux=True)(v["params"])
        params = jax.tree.map(lambda a, b: a - lr * b, v["params"], g)
        return {**v, **upd, "params": params}, l

    history = []
    for _ in range(steps):
        v, _ = step(v)
        history.append(v)
    return history, traces


def test_period_reuses_cached_thresholds_between_refreshes():
    # Dense layers cache only with cache="all" (the official code, the default
    # cache="conv", re-selects them exactly every step: test_swat_official.py).
    x, c = _setup()
    model = sparsify(MLP(), methods.swat(0.5, period=3, dense_first=False, cache="all"))
    v = model.init(jax.random.key(0), x)
    history, traces = _sgd_loop(model, v, x, c, 7)
    assert len(traces) == 1  # no recompilation across steps
    thr = [float(h["sparsity"]["Dense_1"]["w_threshold"]) for h in history]
    athr = [float(h["sparsity"]["Dense_1"]["a_threshold"]) for h in history]
    steps = [int(h["sparsity"]["Dense_1"]["step"]) for h in history]
    assert steps == list(range(1, 8))
    # refreshes at steps 0, 3, 6 (the state after step t holds the threshold used at t)
    assert thr[0] == thr[1] == thr[2] and thr[3] == thr[4] == thr[5]
    assert thr[3] != thr[2] and thr[6] != thr[5]
    assert athr[0] == athr[1] == athr[2] and athr[3] != athr[2]
    # the refreshed value is the exact top-K threshold of the weights at that step
    w_at_3 = history[2]["params"]["Dense_1"]["kernel"]
    np.testing.assert_allclose(thr[3], jnp.sort(jnp.abs(w_at_3).ravel())[-16], rtol=1e-6)


class Fork(nn.Module):
    """One activation read by two sparse layers (a ResNet stage boundary: conv1 and shortcut)."""

    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Dense(8)(x))
        return nn.Dense(4, name="a")(h) + nn.Dense(4, name="b")(h)


class NNXFork(nnx.Module):
    def __init__(self, rngs):
        self.inner = nnx.Linear(6, 8, rngs=rngs)
        self.a = nnx.Linear(8, 4, rngs=rngs)
        self.b = nnx.Linear(8, 4, rngs=rngs)

    def __call__(self, x):
        h = nnx.relu(self.inner(x))
        return self.a(h) + self.b(h)


def _fork_cached_state(a_threshold_a, a_threshold_b):
    # Both readers of h between refreshes (step 1 of period 3), holding different caches.
    return {"a": {"step": jnp.int32(1), "a_threshold": jnp.float32(a_threshold_a)},
            "b": {"step": jnp.int32(1), "a_threshold": jnp.float32(a_threshold_b)}}


def _fork_reference(x, c, w0, b0, threshold):
    h = jax.nn.relu(x @ (w0 * topk_mask(w0, 0.5)) + b0)
    return (h * (jnp.abs(h) >= threshold)).T @ c


@pytest.mark.parametrize("api", ["linen", "nnx"])
def test_layers_reading_one_activation_share_its_cached_threshold(api):
    # Under jit the second reader of h uses the first reader's cached threshold
    # (and stores it), so the two saved copies of h are one value for XLA.
    x, c = _setup()
    method = methods.swat(0.5, period=3, dense_first=False, cache="all")
    if api == "linen":
        model = sparsify(Fork(), method)
        v = model.init(jax.random.key(0), x)
        for name, vals in _fork_cached_state(0.4, 123.0).items():
            v["sparsity"][name].update(vals)

        def loss(p):
            y, upd = model.apply({**v, "params": p}, x, mutable=MUT)
            return jnp.sum(y * c), upd["sparsity"]

        g, state = jax.jit(jax.grad(loss, has_aux=True))(v["params"])
        dw = {n: g[n]["kernel"] for n in ("a", "b")}
        new = {n: state[n]["a_threshold"] for n in ("a", "b")}
        w0, b0 = v["params"]["Dense_0"]["kernel"], v["params"]["Dense_0"]["bias"]
    else:
        model = sparsify(NNXFork(nnx.Rngs(0)), method, x)
        for name, vals in _fork_cached_state(0.4, 123.0).items():
            for k, val in vals.items():
                getattr(model, name).dot_general.state[k][...] = val
        g = nnx.jit(nnx.grad(lambda m: jnp.sum(m(x) * c)))(model)
        dw = {n: g[n]["kernel"][...] for n in ("a", "b")}
        new = {n: getattr(model, n).dot_general.state["a_threshold"][...] for n in ("a", "b")}
        w0, b0 = model.inner.kernel[...], model.inner.bias[...]
    assert float(new["a"]) == float(new["b"]) == pytest.approx(0.4)
    want = _fork_reference(x, c, w0, b0, 0.4)
    for n in ("a", "b"):
        np.testing.assert_allclose(dw[n], want, rtol=1e-5, atol=1e-5)


def test_shared_activation_record_keeps_no_tracer_alive():
    # The NNX model's record outlives every trace; it must not hold a trace's tracers.
    x, c = _setup()
    model = sparsify(NNXFork(nnx.Rngs(0)),
                     methods.swat(0.5, period=3, dense_first=False, cache="all"), x)
    step = nnx.jit(nnx.grad(lambda m: jnp.sum(m(x) * c)))
    with jax.checking_leaks():
        step(model)
    assert int(model.a.dot_general.state["step"][...]) == 1


def test_sparsified_nnx_model_pickles_and_copies_after_a_step():
    x, c = _setup()
    model = sparsify(NNXFork(nnx.Rngs(0)),
                     methods.swat(0.5, period=3, dense_first=False, cache="all"), x)
    nnx.jit(nnx.grad(lambda m: jnp.sum(m(x) * c)))(model)
    model.eval()  # read-only state: the calls below change nothing
    want = model(x)
    for other in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        ops_ = (other.a.dot_general, other.b.dot_general)
        assert ops_[0].activations is ops_[1].activations  # one record per model
        assert ops_[0].activations is not model.a.dot_general.activations
        assert int(ops_[0].state["step"][...]) == 1
        np.testing.assert_array_equal(other(x), want)


def test_layers_reading_different_activations_keep_their_own_thresholds():
    x, c = _setup()
    model = sparsify(MLP(), methods.swat(0.5, period=3, dense_first=False, cache="all"))
    v = model.init(jax.random.key(0), x)
    for name, t in (("Dense_0", 0.2), ("Dense_1", 0.7)):
        v["sparsity"][name].update(step=jnp.int32(1), a_threshold=jnp.float32(t))
    _, upd = model.apply(v, x, mutable=MUT)
    assert float(upd["sparsity"]["Dense_0"]["a_threshold"]) == pytest.approx(0.2)
    assert float(upd["sparsity"]["Dense_1"]["a_threshold"]) == pytest.approx(0.7)


class ConvFork(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Conv(16, (3, 3))(x))
        return jnp.sum(nn.Conv(16, (3, 3), name="a")(h) * nn.Conv(16, (3, 3), name="b")(h))


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="measures XLA:CPU's buffer assignment")
def test_cached_thresholds_keep_one_saved_copy_of_a_shared_activation():
    # period=1 computes both readers' thresholds from the same tensor, so XLA
    # merges their saved copies; period=3 must do as well (it held one more
    # 1 MiB masked copy of h before the readers shared their cached threshold).
    x = jax.random.normal(jax.random.key(0), (16, 32, 32, 8))

    def temp_bytes(period):
        model = sparsify(ConvFork(), methods.swat(0.8, period=period, dense_first=False))
        v = model.init(jax.random.key(1), x)
        loss = lambda p, v: model.apply({**v, "params": p}, x, mutable=MUT)[0]
        return jax.jit(jax.grad(loss)).lower(v["params"], v).compile().memory_analysis() \
            .temp_size_in_bytes

    assert temp_bytes(3) <= temp_bytes(1)


def test_momentum_budgets_update_and_keep_global_budget():
    # redistribution="proportional" keeps the total exact; the official default rounds
    # every layer's share up (test_swat_official.py checks it by hand).
    x, c = _setup()
    model = sparsify(MLP(), methods.swat(0.6, distribution="momentum", dense_first=False,
                                         redistribution="proportional"))
    v = model.init(jax.random.key(0), x)
    history, traces = _sgd_loop(model, v, x, c, 4)
    assert len(traces) == 1
    shared = history[-1]["sparsity"]["_method_shared"]
    s = {p: float(v) for p, v in shared["sparsity"].items()}
    sizes = {"Dense_0": 6 * 8, "Dense_1": 8 * 4}
    assert s["Dense_0"] != pytest.approx(0.6)  # budgets moved with the momentum scores
    kept = sum((1 - s[p]) * sizes[p] for p in sizes)
    assert kept == pytest.approx(0.4 * sum(sizes.values()), rel=1e-4)
    assert all(1 - v <= methods.MOMENTUM_DENSITY_CAP + 1e-6 for v in s.values())
    np.testing.assert_array_equal(history[-1]["sparsity"]["Dense_0"]["prev_kernel"],
                                  history[-2]["params"]["Dense_0"]["kernel"])


def test_monitor_metrics_from_inside_jit():
    x, _ = _setup()
    # 5 x 8 activations in tiles of 8: every tile is sampled, so the estimate is exact.
    model = sparsify(MLP(), methods.swat(0.5, dense_first=False),
                     monitor=monitor.MonitorConfig(tile=8))
    v = model.init(jax.random.key(0), x)
    _, upd = jax.jit(lambda v: model.apply(v, x, mutable=MUT + ["sparsity_metrics"]))(v)
    flat = monitor.flatten_metrics(upd["sparsity_metrics"])
    w1 = v["params"]["Dense_0"]["kernel"]
    h = jax.nn.relu(x @ (w1 * topk_mask(w1, 0.5)) + v["params"]["Dense_0"]["bias"])
    assert flat["Dense_1/act_zero_fraction"] == pytest.approx(float(jnp.mean(h == 0)))
    assert flat["Dense_1/w_sparsity"] == pytest.approx(0.5)
    assert flat["Dense_0/act_zero_fraction"] == 0.0


def test_tile_stats_counts_tiles():
    x = jnp.concatenate([jnp.zeros(96), jnp.ones(16), jnp.zeros(16)])
    s = monitor.tile_stats(x, tile=32)
    assert float(s["act_zero_fraction"]) == 0.875
    assert float(s["act_tile_occupancy"]) == 0.25
    assert float(s["act_tile_density"]) == 0.5



def test_tile_stats_samples_every_part_of_the_channels():
    # 32x16x16x64 activation whose channels 32-63 are all zero: 16384 tiles of
    # 32, 256 sampled. A stride of 64 tiles would read channels 0-31 only (and
    # report no zeros); the prime stride reads both halves.
    x = np.ones((32, 16, 16, 64), np.float32)
    x[..., 32:] = 0
    s = monitor.tile_stats(jnp.asarray(x), tile=32, samples=256)
    assert abs(float(s["act_zero_fraction"]) - 0.5) < 0.05
    assert abs(float(s["act_tile_occupancy"]) - 0.5) < 0.05

class Block(nn.Module):
    """A ResNet basic block built from stock layers (conv-BN-ReLU, residual)."""

    @nn.compact
    def __call__(self, x, train=True):
        bn = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9)
        x = nn.relu(bn()(nn.Conv(8, (3, 3), use_bias=False)(x)))
        y = nn.relu(bn()(nn.Conv(8, (3, 3), use_bias=False)(x)))
        y = bn()(nn.Conv(8, (3, 3), use_bias=False)(y))
        x = nn.relu(x + y).mean((1, 2))
        return nn.Dense(4)(x)


METHODS = [methods.swat(0.8), methods.swat(0.8, period=5), methods.swat(0.8, distribution="erk"),
           methods.swat(0.8, distribution="momentum"), methods.swat(0.5, structured=True),
           methods.swat(0.8, saved="packed"), methods.swat(0.8, saved="remat"),
           methods.ste(NM(2, 4)), methods.meprop(2), methods.dsg(0.5)]
IDS = ["swat", "swat_p5", "swat_erk", "swat_m", "swat_struct", "swat_packed", "swat_remat", "ste",
       "meprop", "dsg"]


def _data():
    x = jax.random.normal(jax.random.key(3), (16, 6, 6, 3))
    y = jnp.arange(16) % 4
    return x, y


def _assert_not_silently_dense(method, sparse_plan, sparse, dense):
    """The first step's kernel gradients of every layer the plan makes sparse differ from the
    unmodified model's (and the logits too when the method sparsifies the forward pass), so a
    model left dense by mistake fails; a model whose plan makes nothing sparse fails too."""
    (sparse_logits, sparse_grads), (dense_logits, dense_grads) = sparse, dense
    assert sparse_plan.sparsities, f"{method.name} made no layer sparse"
    for path in sparse_plan.sparsities:
        g, d = np.asarray(sparse_grads[path]), np.asarray(dense_grads[path])
        assert g.shape == d.shape
        assert np.abs(g - d).max() > 1e-3 * np.abs(d).max(), f"{method.name}: {path} is dense"
    if isinstance(method, (methods.SWAT, methods.STE, methods.DSG)):
        assert np.abs(np.asarray(sparse_logits) - np.asarray(dense_logits)).max() > 1e-4


def _expected_sparse_layers(method, kernels):
    """The layers each method makes sparse by its paper / official configs, from the kernel
    shapes in call order (checked against the plan, which the references then follow)."""
    paths = list(kernels)
    if isinstance(method, methods.SWAT):  # SWAT-U: first layer dense; ERK / M: every layer
        return paths[1:] if method.distribution == "uniform" else paths
    if isinstance(method, methods.STE):  # N:M groups along the input channels
        return [p for p in paths if kernels[p][-2] % method.pattern.m == 0]
    assert isinstance(method, (methods.MeProp, methods.DSG)), method
    return paths[:-1]  # the classifier stays dense


def _jl_dim(n_points, eps):
    """DSG's Johnson-Lindenstrauss projection dimension (Liu et al. 2019, Dasgupta & Gupta)."""
    return math.ceil(4 * math.log(n_points) / (eps ** 2 / 2 - eps ** 3 / 3))


def _reference_ops(method, sparse_plan, kernels):
    """Layer path -> a hand-written masked op (tests/references.py) following the method's
    paper, for every layer the method makes sparse (``kernels``: path -> kernel shape, in call
    order)."""
    expected = _expected_sparse_layers(method, kernels)
    assert list(sparse_plan.sparsities) == expected, \
        f"{method.name} plans {list(sparse_plan.sparsities)} sparse; its paper: {expected}"
    ops = {}
    for path, planned in sparse_plan.sparsities.items():
        conv = len(kernels[path]) == 4
        base = lax.conv_general_dilated if conv else lax.dot_general
        if isinstance(method, methods.SWAT):
            # W_s = W ⊙ topk(|W|) forward and for dA; dW from A ⊙ topk(|A|) at the same
            # sparsity (|x| >= the k-th largest: SWAT keeps ties). ERK budgets come from the
            # plan; SWAT-M trains its first step at the uniform starting budget.
            s = planned if method.distribution == "erk" else method.sparsity
            assert planned == pytest.approx(s)
            if method.structured is not False and conv:
                assert method.structured in (True, "slice"), method.structured
                weight = lambda w, s=s: np_kernel_slices(w, s)
            else:
                weight = lambda w, s=s: np_topk_ties(w, s)
            ops[path] = masked_op(base, weight=weight, act_saved=lambda a, s=s: np_topk_ties(a, s))
        elif isinstance(method, methods.STE):
            # N:M weights forward and for dA, dW dense (straight-through) + SR-STE's decay.
            assert isinstance(method.pattern, NM) and method.pattern.axis is None
            n, m = method.pattern.n, method.pattern.m
            ops[path] = masked_op(base, weight=lambda w: np_nm(w, n, m, axis=-2),
                                  decay=method.decay)
        elif isinstance(method, methods.MeProp):
            # Dense forward; every row of dY keeps its top-k magnitudes for dA and dW (the
            # bias gradient, outside the op, stays dense as in the official code).
            assert isinstance(method.k, int) and not method.unified
            ops[path] = masked_op(base, grad_out=lambda g: np_row_topk(g, method.k))
        else:
            # DSG: per row keep the top (1 - s) output neurons scored as after a ReLU; dY
            # masked alike. Its random projection is skipped: with these shapes the JL
            # dimension exceeds the contraction size (DSG computes the exact scores there),
            # so the exact pre-activations score the neurons and nothing is random.
            assert isinstance(method, methods.DSG)
            rows, width = math.prod(_data()[0].shape[:-1]), kernels[path][-1]  # SAME convs
            assert _jl_dim(rows + width, method.epsilon) >= math.prod(kernels[path][:-1])
            ops[path] = masked_op(base, out=lambda y: np_relu_row_topk(y, method.sparsity))
    return ops


def _close(want):
    """The reference tolerance, relative to the reference's largest entry (the library matches
    it bit for bit on CPU; a dense gradient misses it by more than 1000x)."""
    return dict(rtol=1e-4, atol=1e-4 * float(np.abs(np.asarray(want)).max()))


def _assert_matches_reference(method, sparse_plan, got, want, dense):
    """The first step's logits and every parameter gradient equal the hand reference's; the
    unmodified model's kernel gradients of the sparse layers fail the same tolerance."""
    (logits, grads), (ref_logits, ref_grads), (_, dense_grads) = got, want, dense
    np.testing.assert_allclose(logits, ref_logits, **_close(ref_logits))
    assert grads.keys() == ref_grads.keys()
    for name, ref in ref_grads.items():
        np.testing.assert_allclose(grads[name], ref, **_close(ref),
                                   err_msg=f"{method.name}: {name}")
    for path in sparse_plan.sparsities:
        ref = ref_grads[f"{path}/kernel"]
        assert not np.allclose(dense_grads[f"{path}/kernel"], ref, **_close(ref)), \
            f"{method.name}: the dense {path} gradient passes the reference tolerance"


def _kernels(grads):
    return {k.rsplit("/", 1)[0]: v for k, v in grads.items() if k.endswith("/kernel")}


def _flat(tree):
    return {"/".join(k.key for k in path): v for path, v in
            jax.tree_util.tree_flatten_with_path(tree)[0]}


def _linen_reference(ops):
    """``Block().apply`` whose layers in ``ops`` run the reference op instead of lax's."""

    def interceptor(next_fun, args, kwargs, ctx):
        mod = ctx.module
        path = "/".join(mod.scope.path) if mod.scope is not None else ""
        if ctx.method_name != "__call__" or path not in ops:
            return next_fun(*args, **kwargs)
        field = "conv_general_dilated" if isinstance(mod, nn.Conv) else "dot_general"
        layer = mod.clone(parent=None, **{field: ops[path]})
        return layer.apply({"params": mod.variables["params"]}, *args, **kwargs)

    def apply(*args, **kwargs):
        with nn.intercept_methods(interceptor):
            return Block().apply(*args, **kwargs)

    return apply


@pytest.mark.parametrize("method", METHODS, ids=IDS)
def test_linen_block_trains(method):
    x, labels = _data()
    model = sparsify(Block(), method)
    v = model.init(jax.random.key(0), x)

    def first_step(apply, variables):
        def loss(p):
            logits, _ = apply({**variables, "params": p}, x, mutable=["batch_stats", "sparsity"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), logits

        (_, logits), g = jax.value_and_grad(loss, has_aux=True)(variables["params"])
        return logits, _flat(g)

    dense_vars = {"params": v["params"], "batch_stats": v["batch_stats"]}
    sparse_plan = plan(Block(), method, x)
    got, dense = first_step(model.apply, v), first_step(Block().apply, dense_vars)
    _assert_not_silently_dense(method, sparse_plan, (got[0], _kernels(got[1])),
                               (dense[0], _kernels(dense[1])))
    kernels = {p: got[1][f"{p}/kernel"].shape for p in ("Conv_0", "Conv_1", "Conv_2", "Dense_0")}
    want = first_step(_linen_reference(_reference_ops(method, sparse_plan, kernels)), dense_vars)
    _assert_matches_reference(method, sparse_plan, got, want, dense)
    v, losses, traces = sgd_losses(model, v, x, labels, 50, MUT)
    assert traces == 1
    assert np.isfinite(losses).all()
    assert np.mean(losses[-5:]) < 0.7 * losses[0]
    logits = model.apply(v, x, train=False)  # evaluation call: state read-only
    assert logits.shape == (16, 4)


class CNN(nnx.Module):
    def __init__(self, rngs):
        self.conv1 = nnx.Conv(3, 8, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(8, rngs=rngs)
        self.conv2 = nnx.Conv(8, 8, (3, 3), rngs=rngs)
        self.fc = nnx.Linear(8, 4, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.bn(self.conv1(x)))
        x = nnx.relu(self.conv2(x))
        return self.fc(x.mean((1, 2)))


@pytest.mark.parametrize("method", METHODS, ids=IDS)
def test_nnx_cnn_trains(method):
    x, labels = _data()
    model = sparsify(CNN(nnx.Rngs(0)), method, x)

    def first_step(m):
        m = nnx.clone(m)  # the step's BatchNorm / method state updates stay out of `model`

        def loss(m_):
            logits = m_(x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), logits

        (_, logits), g = nnx.value_and_grad(loss, has_aux=True)(m)
        return logits, {"/".join(map(str, p)): v[...] for p, v in nnx.to_flat_state(g)}

    sparse_plan = plan(CNN(nnx.Rngs(0)), method, x)
    got, dense = first_step(model), first_step(CNN(nnx.Rngs(0)))
    _assert_not_silently_dense(method, sparse_plan, (got[0], _kernels(got[1])),
                               (dense[0], _kernels(dense[1])))
    # The reference: the unmodified CNN (the same weights) with hand-written masked ops.
    reference = CNN(nnx.Rngs(0))
    kernels = {p: got[1][f"{p}/kernel"].shape for p in ("conv1", "conv2", "fc")}
    for path, op in _reference_ops(method, sparse_plan, kernels).items():
        layer = getattr(reference, path)
        setattr(layer, "conv_general_dilated" if isinstance(layer, nnx.Conv) else "dot_general", op)
    _assert_matches_reference(method, sparse_plan, got, first_step(reference), dense)
    opt = nnx.Optimizer(model, optax.sgd(0.05, momentum=0.9), wrt=nnx.Param)
    traces = []

    @nnx.jit
    def step(model, opt):
        traces.append(1)

        def loss(m):
            return optax.softmax_cross_entropy_with_integer_labels(m(x), labels).mean()

        l, g = nnx.value_and_grad(loss)(model)
        opt.update(model, g)
        return l

    losses = [float(step(model, opt)) for _ in range(50)]
    assert len(traces) == 1
    assert np.mean(losses[-5:]) < 0.7 * losses[0]
    model.eval()
    assert model(x).shape == (16, 4)


def test_nnx_matches_linen_swat_reference():
    s = 0.5
    x, c = _setup()
    model = nnx.Sequential(nnx.Linear(6, 8, rngs=nnx.Rngs(0)), nnx.relu,
                           nnx.Linear(8, 4, rngs=nnx.Rngs(1)))
    sparsify(model, methods.swat(s, dense_first=False), x)
    g = nnx.grad(lambda m: jnp.sum(m(x) * c))(model)
    l0, l1 = model.layers[0], model.layers[2]
    w1, b1, w2 = l0.kernel[...], l0.bias[...], l1.kernel[...]
    w2s = w2 * topk_mask(w2, s)
    z1 = x @ (w1 * topk_mask(w1, s)) + b1
    h = jax.nn.relu(z1)
    dz1 = (c @ w2s.T) * (z1 > 0)
    np.testing.assert_allclose(g["layers"][0]["kernel"][...], (x * topk_mask(x, s)).T @ dz1,
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(g["layers"][2]["kernel"][...], (h * topk_mask(h, s)).T @ c,
                               rtol=1e-5, atol=1e-5)
    assert "conv_general_dilated" not in str(jax.tree.map(jnp.shape, nnx.state(model,
                                                                               SparsityState)))


def test_nnx_call_order_sets_first_layer_dense():
    class Net(nnx.Module):
        def __init__(self, rngs):
            self.z_first = nnx.Linear(6, 8, rngs=rngs)  # called first, sorted last
            self.a_second = nnx.Linear(8, 4, rngs=rngs)

        def __call__(self, x):
            return self.a_second(nnx.relu(self.z_first(x)))

    x, _ = _setup()
    net = sparsify(Net(nnx.Rngs(0)), methods.swat(0.5), x)
    assert net.z_first.dot_general is jax.lax.dot_general
    assert net.a_second.dot_general.info.path == "a_second"


@pytest.mark.parametrize("api", ["linen", "nnx"])
def test_conv_transpose_stays_dense_and_is_logged(api, caplog):
    x = jnp.ones((2, 4, 4, 3))
    with caplog.at_level(logging.INFO, logger="sparsejax"):
        if api == "linen":
            net = nn.Sequential([nn.Conv(4, (3, 3)), nn.ConvTranspose(4, (3, 3)), nn.Conv(4, (3, 3))])
            v = sparsify(net, methods.swat(0.5, dense_first=False)).init(jax.random.key(0), x)
            assert set(v["sparsity"]) == {"_method_shared", "layers_0", "layers_2"}
        else:
            rngs = nnx.Rngs(0)
            net = nnx.Sequential(nnx.Conv(3, 4, (3, 3), rngs=rngs),
                                 nnx.ConvTranspose(4, 4, (3, 3), rngs=rngs),
                                 nnx.Conv(4, 4, (3, 3), rngs=rngs))
            sparsify(net, methods.swat(0.5, dense_first=False), x)
            assert [type(getattr(layer, "conv_general_dilated", None)).__name__
                    for layer in net.layers] == ["SparseOp", "NoneType", "SparseOp"]
    assert "ConvTranspose) has no" in caplog.text
    assert "layers/1 (ConvTranspose)" in caplog.text or "layers_1 (ConvTranspose)" in caplog.text


class _Nested(nn.Module):
    """A linen model that sparsifies a submodel inside its own compact call."""

    method: methods.Method

    @nn.compact
    def __call__(self, x):
        return sparsify(MLP(), self.method)(x)


@pytest.mark.parametrize("wrap", ["sequential", "nested"])
def test_linen_layers_are_found_below_shared_or_nested_scopes(wrap):
    # nn.Sequential's layers are bound before share_scope re-parents them (their
    # scope.path still says "model/layers_0"), and a nested Sparsified sits below
    # its parent's scope: both used to leave every layer silently dense.
    x, c = _setup()
    method = methods.swat(0.5, dense_first=False)
    if wrap == "sequential":
        model, names = sparsify(nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(4)]), method), \
            ("layers_0", "layers_2")
        scope = lambda tree: tree
    else:
        model, names = _Nested(method), ("Dense_0", "Dense_1")
        scope = lambda tree: tree["MLP_0"]
    v = model.init(jax.random.key(0), x)
    assert set(scope(v["sparsity"])) == {"_method_shared", *names}
    y, upd = model.apply(v, x, mutable=MUT)
    p = scope(v["params"])
    (w1, b1), (w2, b2) = ((p[n]["kernel"], p[n]["bias"]) for n in names)
    h = jax.nn.relu(x @ (w1 * topk_mask(w1, 0.5)) + b1)
    np.testing.assert_allclose(y, h @ (w2 * topk_mask(w2, 0.5)) + b2, rtol=1e-5, atol=1e-5)
    assert float(scope(upd["sparsity"])[names[1]]["sparsity"]) == 0.5


class _Lifted(nn.Module):
    """Layers inside lifted transforms: nn.remat and nn.scan (stacked state)."""

    @nn.compact
    def __call__(self, x):
        x = nn.remat(nn.Dense)(6)(x)

        class Step(nn.Module):
            @nn.compact
            def __call__(self, c, _):
                return nn.relu(nn.Dense(6)(c)), None

        scan = nn.scan(Step, variable_axes={"params": 0, "sparsity": 0},
                       split_rngs={"params": True}, length=3)
        x, _ = scan(name="steps")(x, None)
        return nn.Dense(4)(x)


class _NestedLifted(nn.Module):
    @nn.compact
    def __call__(self, x):
        return sparsify(_Lifted(), methods.swat(0.5, dense_first=False))(x)


@pytest.mark.parametrize("nested", [False, True])
def test_linen_layers_inside_lifted_transforms_are_sparsified(nested):
    x, _ = _setup()
    model = _NestedLifted() if nested else sparsify(_Lifted(), methods.swat(0.5, dense_first=False))
    v = model.init(jax.random.key(0), x)
    state = v["sparsity"]["_Lifted_0"] if nested else v["sparsity"]
    assert set(state) == {"_method_shared", "CheckpointDense_0", "steps", "Dense_0"}
    assert state["steps"]["Dense_0"]["sparsity"].shape == (3,)  # one per scanned step
    _, upd = model.apply(v, x, mutable=MUT)
    assert jax.tree.map(jnp.shape, upd["sparsity"]) == jax.tree.map(jnp.shape, v["sparsity"])


class _Stacked(nnx.Module):
    """Three Linear layers stacked by nnx.vmap and run by nnx.scan, then a head."""

    def __init__(self, rngs):
        @nnx.split_rngs(splits=3)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make(rngs):
            return nnx.Linear(6, 6, rngs=rngs)

        self.layers = make(rngs)
        self.head = nnx.Linear(6, 4, rngs=rngs)

    def __call__(self, x):
        @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
        def body(x, layer):
            return nnx.relu(layer(x))

        return self.head(body(x, self.layers))


class _Unstacked(nnx.Module):
    """_Stacked's layers as three separate modules with the same weights."""

    def __init__(self, stacked):
        rngs = nnx.Rngs(0)
        self.layers = nnx.List([nnx.Linear(6, 6, rngs=rngs) for _ in range(3)])
        for i, layer in enumerate(self.layers):
            layer.kernel[...] = stacked.layers.kernel[...][i]
            layer.bias[...] = stacked.layers.bias[...][i]
        self.head = nnx.Linear(6, 4, rngs=rngs)
        self.head.kernel[...], self.head.bias[...] = stacked.head.kernel[...], stacked.head.bias[...]

    def __call__(self, x):
        for layer in self.layers:
            x = nnx.relu(layer(x))
        return self.head(x)


def test_nnx_stacked_layers_train_like_separate_layers():
    # Layers stacked by nnx.vmap and run by nnx.scan keep one state per layer
    # (stacked the same way), so they train exactly like separate modules.
    x, c = _setup()
    method = methods.swat(0.5, period=2, dense_first=False, cache="all")
    stacked = _Stacked(nnx.Rngs(0))
    separate = sparsify(_Unstacked(stacked), method, x)
    stacked = sparsify(stacked, method, x)

    def train(model):
        opt = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
        step = nnx.jit(lambda m, o: o.update(m, nnx.grad(lambda m: jnp.sum(m(x) * c))(m)))
        for _ in range(3):
            step(model, opt)

    train(stacked)
    train(separate)
    state = stacked.layers.dot_general.state
    assert state["step"][...].tolist() == [3, 3, 3]
    for i, layer in enumerate(separate.layers):
        np.testing.assert_allclose(stacked.layers.kernel[...][i], layer.kernel[...], rtol=1e-5,
                                   atol=1e-6)
        for k in ("w_threshold", "a_threshold"):
            np.testing.assert_allclose(state[k][...][i], layer.dot_general.state[k][...],
                                       rtol=1e-5)
    np.testing.assert_allclose(stacked.head.kernel[...], separate.head.kernel[...], rtol=1e-5,
                               atol=1e-6)


def test_nnx_stacked_layers_with_shared_budgets_raise_naming_the_layer():
    x, _ = _setup()
    for method in (methods.swat(0.5, distribution="erk", dense_first=False),
                   methods.swat(0.5, distribution="momentum", dense_first=False)):
        with pytest.raises(ValueError, match=r"'layers' holds 3 stacked layers .*exclude='layers'"):
            sparsify(_Stacked(nnx.Rngs(0)), method, x)
    model = sparsify(_Stacked(nnx.Rngs(0)),
                     methods.swat(0.5, distribution="erk", dense_first=False, exclude="^layers$"), x)
    assert type(model.head.dot_general).__name__ == "SparseOp"
    assert model.layers.dot_general is jax.lax.dot_general


def test_einsum_layers_are_sparsified():
    class E(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Einsum((6, 4), "bi,io->bo")(x)

    x, c = _setup()
    model = sparsify(E(), methods.swat(0.5, dense_first=False))
    v = model.init(jax.random.key(0), x)
    k = v["params"]["Einsum_0"]["kernel"]
    g = jax.grad(lambda p: jnp.sum(model.apply({**v, "params": p}, x, mutable=MUT)[0] * c))(
        v["params"])
    np.testing.assert_allclose(g["Einsum_0"]["kernel"], (x * topk_mask(x, 0.5)).T @ c,
                               rtol=1e-5, atol=1e-5)
    y = model.apply(v, x)
    np.testing.assert_allclose(y, x @ (k * topk_mask(k, 0.5)) + v["params"]["Einsum_0"]["bias"],
                               rtol=1e-5, atol=1e-5)


def test_no_supported_layers_lists_types():
    class NoLinear(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.LayerNorm()(x)

    with pytest.raises(ValueError, match="LayerNorm"):
        sparsify(NoLinear(), methods.swat(0.5)).init(jax.random.key(0), jnp.ones((2, 3)))

    class NoLinearNNX(nnx.Module):
        def __init__(self):
            self.norm = nnx.LayerNorm(3, rngs=nnx.Rngs(0))

    with pytest.raises(ValueError, match="LayerNorm"):
        sparsify(NoLinearNNX(), methods.swat(0.5))


def test_errors_name_the_layer():
    x, _ = _setup()
    with pytest.raises(ValueError, match="'Dense_0'"):
        sparsify(MLP(), methods.meprop(9)).init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="sparsity"):
        methods.swat(1.5)
    model = sparsify(MLP(), methods.swat(0.5))
    v = model.init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="'sparsity' collection"):
        model.apply({"params": v["params"]}, x)
    with pytest.raises(TypeError, match="optax transform"):
        sparsify(MLP(), methods.grad_drop(0.5))


def test_dense_method_is_a_no_op():
    x, _ = _setup()
    model = sparsify(MLP(), methods.dense())
    v = model.init(jax.random.key(0), x)
    assert set(v) == {"params"}
    np.testing.assert_array_equal(model.apply(v, x), MLP().apply(v, x))


def test_swat_sampled_activation_threshold_reports_realised_sparsity():
    x = jax.random.normal(jax.random.key(3), (64, 64))

    class Wide(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(16)(nn.Dense(64)(x))

    model = sparsify(Wide(), methods.swat(0.8, dense_first=False, sample_size=512))
    v = model.init(jax.random.key(0), x)
    _, upd = jax.jit(lambda v: model.apply(v, x, mutable=MUT + ["sparsity_metrics"]))(v)
    flat = monitor.flatten_metrics(upd["sparsity_metrics"])
    # The sampled threshold is approximate: the realised saved-activation sparsity is
    # reported and lies near the target, the weights stay exact.
    assert flat["Dense_0/a_saved_sparsity"] == pytest.approx(0.8, abs=0.05)
    assert flat["Dense_0/a_saved_sparsity"] != pytest.approx(0.8, abs=1e-6)
    assert flat["Dense_0/w_sparsity"] == pytest.approx(0.8, abs=1e-3)
    with pytest.raises(ValueError, match="sample_size"):
        methods.swat(0.8, sample_size=0)


def test_custom_init_state_that_is_not_the_methods_typed_state_is_refused_naming_the_layer():
    """A state the adapters could not store or rebuild would leave layers silently dense."""
    @dataclasses.dataclass(frozen=True)
    class Forgetful(methods.SWAT):
        def init_state(self, info, sparsity, kernel):
            return {"step": jnp.zeros((), jnp.int32)}  # a dict, as before states were typed

    class Unregistered(methods.LayerState):  # no @layer_state: not a pytree
        pass

    @dataclasses.dataclass(frozen=True)
    class Undeclared(methods.SWAT):  # a typed state, but state_type still names SWATState
        def init_state(self, info, sparsity, kernel):
            return methods.LayerState(sparsity=jnp.float32(sparsity))

    @dataclasses.dataclass(frozen=True)
    class NotAPytree(methods.SWAT):
        state_type = Unregistered

        def init_state(self, info, sparsity, kernel):
            return Unregistered(sparsity=jnp.float32(sparsity))

    class Net(nnx.Module):
        def __init__(self):
            self.fc = nnx.Linear(6, 4, rngs=nnx.Rngs(0))

        def __call__(self, x):
            return self.fc(x)

    x = jnp.ones((2, 6))
    for cls, match in [
            (Forgetful, r"Forgetful.init_state for layer '{}' returned dict; the method's "
                        r"state_type is SWATState: return a SWATState"),
            (Undeclared, r"Undeclared.init_state for layer '{}' returned LayerState; the "
                         r"method's state_type is SWATState: set the class attribute state_type = "
                         r"LayerState"),
            (NotAPytree, r"NotAPytree's state type Unregistered \(layer '{}'\) is not a JAX "
                         r"pytree: decorate it with @sparsejax.methods.layer_state")]:
        method = cls(sparsity=0.5, dense_first=False)
        with pytest.raises(TypeError, match=match.format("Dense_0")):
            sparsify(MLP(), method).init(jax.random.key(0), x)
        with pytest.raises(TypeError, match=match.format("fc")):
            sparsify(Net(), method, x)


@methods.layer_state
class _CountState(methods.LayerState):
    calls: jax.Array = None


@dataclasses.dataclass(frozen=True)
class _Counting(methods.Method):
    """A method written outside the library with its own typed state: counts training calls."""

    sparsity: float = 0.5
    name = "counting"
    state_type = _CountState

    def sparsities(self, shapes):
        return {p: self.sparsity for p in shapes}

    def init_state(self, info, sparsity, kernel):
        return _CountState(**super().init_state(info, sparsity, kernel).fields(),
                           calls=jnp.zeros((), jnp.int32))

    def policy_aux(self, info, sparsity, state, shared, training):
        return Policy(weight=TopK(sparsity)), None

    def update(self, info, state, shared, stats, kernel):
        return state.replace(calls=state.calls + 1), shared


def test_typed_method_state_is_stored_one_variable_per_field_and_advances():
    x = jnp.ones((2, 6))
    model = sparsify(MLP(), _Counting())
    v = model.init(jax.random.key(0), x)
    assert set(v["sparsity"]["Dense_0"]) == {"sparsity", "calls"}
    step = jax.jit(lambda v: model.apply(v, x, mutable=["sparsity"])[1])
    for _ in range(3):
        v = {**v, **step(v)}
    assert int(v["sparsity"]["Dense_0"]["calls"]) == 3
    assert float(v["sparsity"]["Dense_0"]["sparsity"]) == 0.5
    # Read-only calls leave the state as it is.
    model.apply(v, x)
    # SWAT's state: fields a layer does not use are not stored.
    swat_v = sparsify(MLP(), methods.swat(0.5, period=3, cache="all", dense_first=False)).init(
        jax.random.key(0), x)
    assert set(swat_v["sparsity"]["Dense_0"]) == {"sparsity", "step", "w_threshold",
                                                   "a_threshold"}
    # An update may not set a field init_state left unset (there is no variable for it).
    @dataclasses.dataclass(frozen=True)
    class Late(_Counting):
        def init_state(self, info, sparsity, kernel):
            return _CountState(sparsity=jnp.float32(sparsity))

        def update(self, info, state, shared, stats, kernel):
            return state.replace(calls=jnp.int32(1)), shared

    late = sparsify(MLP(), Late())
    with pytest.raises(ValueError, match=r"Late.update for layer 'Dense_0' changed which state "
                                         r"fields are set \(\['sparsity'\] -> \['calls', "
                                         r"'sparsity'\]\).*set every field there"):
        late.apply(late.init(jax.random.key(0), x), x, mutable=["sparsity"])
    # Variables of another method cannot be read back as this method's state.
    with pytest.raises(ValueError, match=r"layer 'Dense_0': the stored 'sparsity' state has "
                                         r"fields \['a_threshold', 'sparsity', 'step', "
                                         r"'w_threshold'\], which _Counting's _CountState"):
        model.apply(swat_v, x)

    class Net(nnx.Module):
        def __init__(self):
            self.fc = nnx.Linear(6, 4, rngs=nnx.Rngs(0))

        def __call__(self, x):
            return self.fc(x)

    net = sparsify(Net(), _Counting(), x)
    nnx.jit(lambda m: m(x))(net)
    nnx.jit(lambda m: m(x))(net)
    assert int(net.fc.dot_general.state["calls"][...]) == 2
    net.eval()
    net(x)
    assert int(net.fc.dot_general.state["calls"][...]) == 2


def test_method_state_names_its_typed_replacement_for_dict_access():
    info = methods.LayerInfo("conv", "conv", (3, 3, 4, 8), 8, (2,))
    state = methods.swat(0.8, period=2).init_state(info, 0.8, jnp.ones(info.kernel_shape))
    assert isinstance(state, methods.SWATState) and int(state.step) == 0
    with pytest.raises(TypeError, match=r"read state.step instead of state\['step'\], and build "
                                        r"a new one with state.replace\(step=...\)"):
        state["step"]
    with pytest.raises(TypeError, match=r"subclassing LayerState with @layer_state"):
        {**state}
    assert state.replace(step=jnp.int32(4)).step == 4 and state.prev_kernel is None
    assert set(state.fields()) == {"sparsity", "step", "w_threshold", "a_threshold"}
    leaves = jax.tree.leaves(jax.jit(lambda s: s.replace(step=s.step + 1))(state))
    assert len(leaves) == 4
    with pytest.raises(TypeError, match="decorates a subclass of LayerState"):
        methods.layer_state(dict)
