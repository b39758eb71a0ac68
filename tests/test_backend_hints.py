"""Backend hints (sparsejax.backend_hints): they change no value, and the switch turns them off."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparsejax import backend_hints
from sparsejax.ops import Aux, Policy, sparse_conv_general_dilated
from sparsejax.rule import SlotInput
from sparsejax.sparsifiers import Channel, PatternRule, TopK

NHWC = ("NHWC", "HWIO", "NHWC")


@pytest.fixture(autouse=True)
def _restore():
    yield
    backend_hints.set_enabled(None)


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
    backend_hints.set_enabled(True)
    on = _grads(policy)
    backend_hints.set_enabled(False)
    off = _grads(policy)
    for x, y in zip(on, off):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_off_leaves_no_dependence_in_the_program():
    x = jnp.arange(4.0)
    backend_hints.set_enabled(True)  # (fresh lambdas: JAX caches traces by function)
    assert jax.make_jaxpr(lambda v: backend_hints.live(v))(x).jaxpr.eqns  # reads x
    backend_hints.set_enabled(False)
    jaxpr = jax.make_jaxpr(lambda v: backend_hints.live(v))(x)
    assert not jaxpr.jaxpr.eqns  # a constant True: nothing for the compiler to order
    assert float(backend_hints.depends_on([x], jnp.float32)) == 0.0
    assert not jax.make_jaxpr(lambda v: backend_hints.zeros_after(v, jnp.float32))(x).jaxpr.eqns


def test_on_the_scatter_zeros_are_not_a_foldable_constant():
    """A where() between two zeros folds to a constant fill scheduled at the start of the
    step; zeros_after selects between 0 and 1, so the fill waits for its operand."""
    backend_hints.set_enabled(True)
    x = jnp.arange(4.0)
    text = str(jax.make_jaxpr(lambda v: backend_hints.zeros_after(v, jnp.float32))(x))
    assert "1.0" in text and "select_n" in text
    assert float(backend_hints.zeros_after(x, jnp.float32)) == 0.0


def test_environment_switch(monkeypatch):
    monkeypatch.setenv(backend_hints.ENV, "off")
    assert not backend_hints.enabled() and not backend_hints.sharing_enabled()
    monkeypatch.setenv(backend_hints.ENV, "on")
    assert backend_hints.enabled() and backend_hints.sharing_enabled()
    monkeypatch.setenv(backend_hints.ENV, "auto")
    assert backend_hints.enabled() == (jax.default_backend() == "cpu")
    assert backend_hints.sharing_enabled()  # XLA's merging of equal values: every backend
    monkeypatch.setenv(backend_hints.ENV, "sometimes")
    with pytest.raises(ValueError, match="SPARSEJAX_BACKEND_HINTS='sometimes'; use on, off"):
        backend_hints.enabled()
    with pytest.raises(TypeError, match="True, False or None"):
        backend_hints.set_enabled("off")


def test_shared_threshold_is_a_hint_the_switch_turns_off():
    # Two readers of one tensor with cached thresholds: shared, the second takes the
    # first's threshold and flag; switched off, each keeps its own (as the adapters'
    # fork test shows end to end, sharing only merges what is equal in training).
    x = jnp.ones((2, 3))
    rule = TopK(0.8, cached=True)
    aux = lambda t: Aux(act_saved=SlotInput(threshold=jnp.float32(t), refresh=jnp.bool_(False)))
    for on, want in ((True, 1.0), (False, 2.0)):
        backend_hints.set_enabled(on)
        shared, first = backend_hints.SharedActivations(), aux(1.0)  # (held weakly: keep it)
        shared.share(x, rule, first)
        assert float(shared.share(x, rule, aux(2.0)).act_saved.threshold) == want
    backend_hints.set_enabled(None)
    shared, first = backend_hints.SharedActivations(), aux(1.0)
    shared.share(x, rule, first)
    # Another tensor, or another rule, is not shared.
    assert float(shared.share(jnp.ones((2, 3)), rule, aux(2.0)).act_saved.threshold) == 2.0
    assert float(shared.share(x, TopK(0.5, cached=True), aux(3.0)).act_saved.threshold) == 3.0


def test_old_module_path_still_imports():
    import sparsejax
    import sparsejax.ordering as old  # the module's name before it held the sharing hint
    assert old is backend_hints and sparsejax.ordering is backend_hints
