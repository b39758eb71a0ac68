"""Backend hints (sparsejax.ordering): they change no value, and the switch turns them off."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparsejax import ordering
from sparsejax.ops import Policy, sparse_conv_general_dilated
from sparsejax.sparsifiers import Channel, PatternRule, TopK

NHWC = ("NHWC", "HWIO", "NHWC")


@pytest.fixture(autouse=True)
def _restore():
    yield
    ordering.set_enabled(None)


def _grads(policy):
    k1, k2 = jax.random.split(jax.random.key(0))
    a = jax.nn.relu(jax.random.normal(k1, (2, 8, 8, 8)))
    w = jax.random.normal(k2, (3, 3, 8, 8))

    def loss(a_, w_):
        return jnp.sum(jnp.sin(sparse_conv_general_dilated(a_, w_, (1, 1), "SAME",
                                                           dimension_numbers=NHWC,
                                                           policy=policy)))

    return jax.jit(jax.grad(loss, argnums=(0, 1)))(a, w)


@pytest.mark.parametrize("policy", [
    Policy(weight=TopK(0.8, ties="all"), act_saved=TopK(0.8, ties="all"), saved="packed"),
    Policy(weight=TopK(0.8), act_saved=TopK(0.8), saved="remat"),
    Policy(weight=PatternRule(Channel((2,)), 0.5), straight_through=False),
])
def test_hints_change_no_value(policy):
    ordering.set_enabled(True)
    on = _grads(policy)
    ordering.set_enabled(False)
    off = _grads(policy)
    for x, y in zip(on, off):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_off_leaves_no_dependence_in_the_program():
    x = jnp.arange(4.0)
    ordering.set_enabled(True)  # (fresh lambdas: JAX caches traces by function)
    assert jax.make_jaxpr(lambda v: ordering.live(v))(x).jaxpr.eqns  # reads x
    ordering.set_enabled(False)
    jaxpr = jax.make_jaxpr(lambda v: ordering.live(v))(x)
    assert not jaxpr.jaxpr.eqns  # a constant True: nothing for the compiler to order
    assert float(ordering.depends_on([x], jnp.float32)) == 0.0
    assert not jax.make_jaxpr(lambda v: ordering.zeros_after(v, jnp.float32))(x).jaxpr.eqns


def test_on_the_scatter_zeros_are_not_a_foldable_constant():
    """A where() between two zeros folds to a constant fill scheduled at the start of the
    step; zeros_after selects between 0 and 1, so the fill waits for its operand."""
    ordering.set_enabled(True)
    x = jnp.arange(4.0)
    text = str(jax.make_jaxpr(lambda v: ordering.zeros_after(v, jnp.float32))(x))
    assert "1.0" in text and "select_n" in text
    assert float(ordering.zeros_after(x, jnp.float32)) == 0.0


def test_environment_switch(monkeypatch):
    monkeypatch.setenv(ordering.ENV, "off")
    assert not ordering.enabled()
    monkeypatch.setenv(ordering.ENV, "on")
    assert ordering.enabled()
    monkeypatch.setenv(ordering.ENV, "auto")
    assert ordering.enabled() == (jax.default_backend() == "cpu")
    monkeypatch.setenv(ordering.ENV, "sometimes")
    with pytest.raises(ValueError, match="SPARSEJAX_BACKEND_HINTS='sometimes'; use on, off"):
        ordering.enabled()
    with pytest.raises(TypeError, match="True, False or None"):
        ordering.set_enabled("off")
