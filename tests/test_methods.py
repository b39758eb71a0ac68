"""Tests of sparsejax.methods: constructors, plans, SWAT-M budgets, grad_drop."""

import dataclasses
import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sparsejax import methods
from sparsejax.distributions import erk_sparsities
from sparsejax.methods import LayerInfo
from sparsejax.patterns import NM, Unstructured

LAYERS = [LayerInfo("Conv_0", "conv", (3, 3, 3, 16), 16),
          LayerInfo("Block_0/Conv_0", "conv", (3, 3, 16, 32), 32),
          LayerInfo("Block_0/Conv_1", "conv", (3, 3, 32, 32), 32),
          LayerInfo("head", "dense", (32, 10), 10)]


def test_methods_are_hashable_values():
    assert hash(methods.swat(0.8, period=20)) == hash(methods.swat(0.8, period=20))
    assert methods.swat(0.8) != methods.swat(0.9)
    jax.jit(lambda x, m: x, static_argnums=1)(1.0, methods.ste(NM(2, 4)))


def test_swat_uniform_plan_first_dense_last_sparse():
    plan = methods.swat(0.8).plan(LAYERS)
    assert list(plan) == ["Block_0/Conv_0", "Block_0/Conv_1", "head"]
    assert set(plan.values()) == {0.8}
    plan = methods.swat(0.8, dense_first=False, dense_last=True).plan(LAYERS)
    assert list(plan) == ["Conv_0", "Block_0/Conv_0", "Block_0/Conv_1"]


def test_structured_swat_logs_the_dense_layers_it_keeps_unstructured(caplog):
    with caplog.at_level(logging.INFO, logger="sparsejax"):
        plan = methods.swat(0.5, structured="channel").plan(LAYERS)
    assert "head" in plan
    assert "head is a dense layer: unstructured top-K weights" in caplog.text
    assert "Block_0/Conv_0 is a" not in caplog.text


def test_swat_include_exclude_by_module_path():
    plan = methods.swat(0.5, dense_first=False, exclude=r"^Block_0/Conv_1$").plan(LAYERS)
    assert "Block_0/Conv_1" not in plan and "head" in plan
    plan = methods.swat(0.5, dense_first=False, include="Block_0").plan(LAYERS)
    assert list(plan) == ["Block_0/Conv_0", "Block_0/Conv_1"]


def test_swat_erk_budgets_match_erk_and_global_budget():
    # dense_first=True (explicit; the default now follows the official ERK configs,
    # see test_swat_official.py): the first conv is dense and outside the budget.
    plan = methods.swat(0.9, distribution="erk", dense_first=True).plan(LAYERS)
    shapes = {l.path: l.kernel_shape for l in LAYERS[1:]}
    assert plan == erk_sparsities(shapes, 0.9)
    sizes = {l.path: l.size for l in LAYERS[1:]}
    kept = sum((1 - plan[p]) * sizes[p] for p in plan)
    np.testing.assert_allclose(kept, 0.1 * sum(sizes.values()), rtol=1e-9)
    assert plan["head"] < plan["Block_0/Conv_1"]  # the small layer is denser


def test_momentum_budgets_respect_cap_and_global_budget():
    # The earlier rule, kept as an explicit option (the official default is tested in
    # test_swat_official.py): capped layers held at 99%, the rest re-shared by score.
    sizes = {"a": 100, "b": 1000, "c": 10000}
    scores = {"a": 50.0, "b": 1.0, "c": 1.0}  # "a" would get far more than its size
    s = methods.momentum_budgets(sizes, scores, 0.9, redistribution="proportional")
    dens = {p: 1 - float(v) for p, v in s.items()}
    assert dens["a"] == pytest.approx(methods.MOMENTUM_DENSITY_CAP, abs=1e-6)
    kept = sum(dens[p] * sizes[p] for p in sizes)
    assert kept == pytest.approx(0.1 * sum(sizes.values()), rel=1e-5)
    # residual shared in proportion to the scores: b and c get equal mean-score density
    np.testing.assert_allclose(dens["b"] * sizes["b"] / (dens["c"] * sizes["c"]), 1.0, rtol=1e-5)
    # all-zero scores -> uniform
    u = methods.momentum_budgets(sizes, {p: 0.0 for p in sizes}, 0.8,
                                 redistribution="proportional")
    np.testing.assert_allclose([float(v) for v in u.values()], 0.8, rtol=1e-5)
    jax.jit(lambda sc: methods.momentum_budgets(sizes, sc, 0.9,
                                                redistribution="proportional"))(scores)


def test_meprop_k_too_large_names_layer():
    with pytest.raises(ValueError, match="'Conv_0' has output features \(16\)"):
        methods.meprop(20).plan(LAYERS)
    plan = methods.meprop(0.25).plan(LAYERS)
    assert "head" not in plan and plan["Block_0/Conv_0"] == pytest.approx(0.75)
    assert methods.meprop(0.2).kept(32) == 7


def test_ste_skips_layers_that_do_not_fit():
    plan = methods.ste(NM(2, 4)).plan(LAYERS)
    assert "Conv_0" not in plan  # 3 input channels
    assert plan["head"] == 0.5
    plan = methods.ste(Unstructured(), sparsity=0.8).plan(LAYERS)
    assert len(plan) == 4


@pytest.mark.parametrize("build, exc, match", [
    (lambda: methods.swat(1.0), ValueError, "sparsity"),
    (lambda: methods.swat(0.5, distribution="global"), ValueError, "distribution"),
    (lambda: methods.swat(0.5, period=0), ValueError, "period"),
    (lambda: methods.swat(0.5, structured="rows"), ValueError, "structured"),
    (lambda: methods.swat(0.5, bogus=1), TypeError, "bogus"),
    (lambda: methods.swat(0.5, pack_saved=True), TypeError, "swat\\(saved='packed'\\)"),
    (lambda: methods.swat(0.5, remat_saved=True), TypeError, "swat\\(saved='remat'\\)"),
    (lambda: methods.swat(0.5, saved="packed", period=20), ValueError, "saved='remat'"),
    (lambda: methods.swat(0.5, saved="packed", sample_size=1024), ValueError, "sample_size=1024"),
    (lambda: methods.swat(0.5, saved="packed", distribution="momentum"), ValueError,
     "distribution='momentum'"),
    (lambda: methods.swat(0.5, saved="bits"), ValueError, "swat\\(saved=...\\) must be one of"),
    (lambda: methods.ste(Unstructured()), ValueError, "sparsity"),
    (lambda: methods.ste(NM(2, 4), sparsity=0.5), ValueError, "fixes"),
    (lambda: methods.ste(decay=-1.0), ValueError, "decay"),
    (lambda: methods.meprop(0), ValueError, ">= 1"),
    (lambda: methods.meprop(1.5), ValueError, "fraction"),
    (lambda: methods.dsg(0.5, epsilon=2.0), ValueError, "epsilon"),
    (lambda: methods.grad_drop(1.2), ValueError, "sparsity"),
])
def test_invalid_arguments(build, exc, match):
    with pytest.raises(exc, match=match):
        build()


@dataclasses.dataclass(frozen=True)
class _Mine(methods.Method):
    sparsity: float = methods.option(check=methods.check_sparsity)
    period: int = methods.option(1, methods.integer(1, "steps between refreshes"))
    mode: str = methods.option("a", methods.one_of(("a", "b")))
    flag: bool = methods.option(False, methods.boolean)

    name = "mine"
    renamed = {"every": "mine(period=...)"}

    def sparsities(self, shapes):
        return {p: self.sparsity for p in shapes}

    def policy_aux(self, info, sparsity, state, shared, training):
        return None, None


@pytest.mark.parametrize("build, exc, match", [
    (lambda: _Mine(1.0), ValueError, r"mine\(sparsity=...\).*\[0, 1\)"),
    (lambda: _Mine(0.5, period=0), ValueError,
     r"mine\(period=...\) must be an int >= 1 \(steps between refreshes\), got 0"),
    (lambda: _Mine(0.5, period=True), ValueError, r"mine\(period=...\)"),
    (lambda: _Mine(0.5, mode="c"), ValueError, r"mine\(mode=...\) must be one of 'a', 'b'"),
    (lambda: _Mine(0.5, flag=1), TypeError, r"mine\(flag=...\) must be True or False"),
    (lambda: _Mine(0.5, every=2), TypeError, r"mine\(every=...\) became mine\(period=...\)"),
    (lambda: _Mine(0.5, include=3), TypeError, r"mine\(include=...\) must be a regex"),
])
def test_a_methods_own_fields_are_validated_by_their_option(build, exc, match):
    with pytest.raises(exc, match=match):
        build()


def test_option_checks_normalise_and_keep_valid_values():
    m = _Mine(0.5, period=3, mode="b", flag=True, exclude=["head", "fc"])
    assert (m.sparsity, m.period, m.mode, m.flag, m.exclude) == (0.5, 3, "b", True, ("head", "fc"))
    assert methods.swat(0.8).dense_first is None and methods.swat(0.8).first_dense is True
    assert hash(m) == hash(_Mine(0.5, period=3, mode="b", flag=True, exclude=("head", "fc")))


def test_grad_drop_keeps_exact_topk_of_each_kernel():
    g = {"Dense_0": {"kernel": jax.random.normal(jax.random.key(0), (10, 10)),
                     "bias": jnp.ones(10)}}
    tx = methods.grad_drop(0.9)
    out, state = jax.jit(tx.update)(g, tx.init(g))
    k = out["Dense_0"]["kernel"]
    assert int(jnp.sum(k != 0)) == 10
    kept = jnp.abs(g["Dense_0"]["kernel"])[k != 0]
    assert float(kept.min()) >= float(jnp.sort(jnp.abs(g["Dense_0"]["kernel"]).ravel())[-10])
    np.testing.assert_array_equal(out["Dense_0"]["bias"], 1.0)
    assert int(state.count) == 1
    optax.chain(tx, optax.sgd(0.1)).init(g)


def test_swat_straight_through_false_gives_pruned_filters_zero_gradient():
    from sparsejax.ops import sparse_conv_general_dilated
    method = methods.swat(0.5, structured="filter", straight_through=False)
    info = LAYERS[1]
    w = jax.random.normal(jax.random.key(0), info.kernel_shape)
    a = jax.nn.relu(jax.random.normal(jax.random.key(1), (2, 6, 6, 16)))
    policy, aux = method.policy_aux(info, 0.5, method.init_state(info, 0.5, w), None, True)
    assert not policy.straight_through
    loss = lambda w_: sparse_conv_general_dilated(
        a, w_, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), policy=policy,
        aux=aux).sum()
    dw = jax.grad(loss)(w)
    live = np.asarray(jnp.any(dw != 0, axis=(0, 1, 2)))
    assert live.sum() == 16
    # Kept filters are the 16 of largest mean |W|; their gradient is the dense one.
    kept = np.argsort(-np.asarray(jnp.abs(w).mean(axis=(0, 1, 2))))[:16]
    assert set(np.flatnonzero(live)) == set(kept.tolist())
    paper = methods.swat(0.5, structured="filter")
    assert paper.policy_aux(info, 0.5, paper.init_state(info, 0.5, w), None, True)[0].straight_through
    with pytest.raises(TypeError):
        methods.swat(0.5, straight_through=1)


def test_unified_meprop_conv_bn_model_matches_hand_reference():
    """Unified meProp through the linen adapter on conv -> BN -> ReLU -> conv -> BN ->
    pool -> Dense equals a hand-written reference: each conv's dY keeps the k output
    channels of largest sum |dY| over batch x positions (columns = channels), dA and
    dW use that masked dY unscaled, BatchNorm's and the head's gradients are the
    ordinary ones. (Unified meProp on a BN ResNet diverges at lr 0.1 from the
    method, not the op: see the meprop docstring.)"""
    import flax.linen as nn
    from jax import lax

    from sparsejax.adapters import sparsify

    def ref_conv(k):
        def conv(lhs, rhs, *args, **kw):
            op = lambda a, w: lax.conv_general_dilated(a, w, *args, **kw)

            @jax.custom_vjp
            def f(a, w):
                return op(a, w)

            def bwd(res, g):
                score = jnp.abs(g).sum((0, 1, 2))
                keep = jnp.zeros(g.shape[-1], bool).at[jnp.argsort(-score)[:k]].set(True)
                return jax.vjp(op, *res)[1](jnp.where(keep, g, 0.0))

            f.defvjp(lambda a, w: (op(a, w), (a, w)), bwd)
            return f(lhs, rhs)
        return conv

    class Net(nn.Module):
        conv: object = None

        @nn.compact
        def __call__(self, x):
            kw = {} if self.conv is None else {"conv_general_dilated": self.conv}
            bn = lambda: nn.BatchNorm(use_running_average=False)
            h = nn.relu(bn()(nn.Conv(10, (3, 3), use_bias=False, **kw)(x)))
            h = nn.relu(bn()(nn.Conv(10, (3, 3), use_bias=False, **kw)(h)))
            return nn.Dense(3)(h.mean((1, 2)))

    x = jax.random.normal(jax.random.key(0), (4, 6, 6, 3))
    y = jnp.array([0, 1, 2, 1])
    model = sparsify(Net(), methods.meprop(0.2, unified=True))  # k = ceil(0.2 * 10) = 2
    v = model.init(jax.random.key(1), x)

    def grads(m, variables):
        def loss(p):
            logits, _ = m.apply({**variables, "params": p}, x,
                                mutable=["batch_stats", "sparsity"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return jax.grad(loss)(variables["params"])

    got = grads(model, v)
    want = grads(Net(conv=ref_conv(2)), {"params": v["params"], "batch_stats": v["batch_stats"]})
    dense = grads(Net(), {"params": v["params"], "batch_stats": v["batch_stats"]})
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), got, want)
    live = np.asarray(jnp.any(got["Conv_1"]["kernel"] != 0, axis=(0, 1, 2)))
    assert live.sum() == 2  # only the 2 kept filters of the last conv get a gradient
    assert not np.allclose(got["Conv_0"]["kernel"], dense["Conv_0"]["kernel"])
