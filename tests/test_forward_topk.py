"""Top-K of the layer's forward input (``Policy.act``) and SWAT's forward-operand study
(``methods.forward_topk``, the ``forward_topk`` recipe and its cost models).

Every expectation is computed without the op's masking: masks by a numpy sort
(``references.np_topk``), gradients by ``jax.vjp`` of plain ``lax`` ops on the
masked input, FLOP fractions by hand.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax import lax
from jax.test_util import check_grads
from references import fwd_bwd, np_topk, sgd_losses, tiny_config

from sparsejax import methods, plan, sparsify
from sparsejax.analysis import costs
from sparsejax.experiment import recipes
from sparsejax.experiment.config import ConfigError
from sparsejax.ops import (Aux, Policy, sparse_conv_general_dilated,
                           sparse_conv_general_dilated_with_stats, sparse_dot_general,
                           sparse_dot_general_with_stats)
from sparsejax.patterns import Unstructured
from sparsejax.rule import SlotInput
from sparsejax.sparsifiers import Cached, Fixed, RandomProjection, TopK

TOL = dict(rtol=2e-5, atol=2e-5)
DENSE_DN = (((1,), (0,)), ((), ()))
NHWC = ("NHWC", "HWIO", "NHWC")
CONV_KW = dict(window_strides=(2, 1), padding=((1, 0), (0, 2)), dimension_numbers=NHWC)


def rand(seed, *shapes):
    keys = jax.random.split(jax.random.key(seed), len(shapes))
    return [jax.random.normal(k, s, jnp.float32) for k, s in zip(keys, shapes)]


def dense(a, w):
    return lax.dot_general(a, w, DENSE_DN)


def conv(a, w):
    return lax.conv_general_dilated(a, w, **CONV_KW)


def sparse_op(kind, policy, aux=None):
    if kind == "dense":
        return lambda a, w: sparse_dot_general(a, w, DENSE_DN, policy=policy, aux=aux)
    return lambda a, w: sparse_conv_general_dilated(a, w, policy=policy, aux=aux, **CONV_KW)


def operands(kind, seed):
    """``(A, W, dY, dense op)`` of a Dense-like dot or a strided, padded conv."""
    if kind == "dense":
        a, w, ct = rand(seed, (6, 20), (20, 5), (6, 5))
        return a, w, ct, dense
    a, w = rand(seed, (2, 7, 6, 4), (3, 3, 4, 5))
    ct = jax.random.normal(jax.random.key(seed + 100), jax.eval_shape(conv, a, w).shape)
    return a, w, ct, conv




def masked_reference(op, a, w, ct, a_mask, *, w_fwd=None, a_saved=None):
    """Dense ops on the masked input: ``y = op(A ⊙ m, W_fwd)``, ``dA = m ⊙ ∂y/∂(A ⊙ m)``,
    ``dW = ∂op(A_saved, W)/∂W`` (``A_saved`` defaults to ``A ⊙ m``)."""
    w_fwd = w if w_fwd is None else w_fwd
    a_m = np.asarray(a) * a_mask
    a_saved = a_m if a_saved is None else a_saved
    y, vjp_a = jax.vjp(lambda a_: op(a_, w_fwd), jnp.asarray(a_m))
    da = np.asarray(vjp_a(ct)[0]) * a_mask
    dw = jax.vjp(lambda w_: op(jnp.asarray(a_saved), w_), w)[1](ct)[0]
    return y, da, dw


def assert_all_close(got, want, **tol):
    for g, r in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), **(tol or TOL))


# ------------------------------------------------------------------ the op


@pytest.mark.parametrize("ties", ["index", "all"])
@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_act_topk_multiplies_the_masked_input_and_masks_da(kind, ties):
    a, w, ct, op = operands(kind, 1)
    mask = np_topk(a, 0.7)
    got = fwd_bwd(sparse_op(kind, Policy(act=TopK(0.7, ties=ties))), a, w, ct)
    want = masked_reference(op, a, w, ct, mask)
    assert_all_close(got, want)
    da, dense_da = np.asarray(got[1]), np.asarray(jax.vjp(lambda a_: op(a_, w), a)[1](ct)[0])
    assert not np.any(da[~mask])  # the dropped inputs get no gradient ...
    np.testing.assert_allclose(da[mask], dense_da[mask], **TOL)  # ... the kept ones the dense one
    # The forward really changed: not the dense op.
    assert np.abs(np.asarray(got[0]) - np.asarray(op(a, w))).max() > 1e-3


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_act_gradient_is_the_true_gradient_for_a_fixed_mask(kind):
    """``Fixed`` puts a given mask in the act slot: ``op(A ⊙ m, W)`` is then a smooth
    (bilinear) function of A and W, so finite differences check both gradients."""
    a, w, _, op = operands(kind, 2)
    mask = jnp.asarray(np_topk(a, 0.6))
    f = sparse_op(kind, Policy(act=Fixed()), Aux(x_mask=mask))
    check_grads(f, (a, w), order=1, modes=["rev"], atol=1e-2, rtol=1e-2)
    np.testing.assert_allclose(f(a, w), op(a * mask, w), **TOL)
    # Same selection by TopK: the same function (forward and gradients).
    ct = jnp.ones_like(op(a, w))
    assert_all_close(fwd_bwd(sparse_op(kind, Policy(act=TopK(0.6))), a, w, ct),
                     fwd_bwd(f, a, w, ct))


def test_act_on_relu_input_with_more_zeros_than_sparsity_changes_nothing():
    a, w, ct = rand(3, (4, 8), (8, 3), (4, 3))
    a = a.at[:, :6].set(0.0)  # 75% zeros: SWAT's ties="all" at sparsity 0.5 keeps every non-zero
    got = fwd_bwd(sparse_op("dense", Policy(act=TopK(0.5, ties="all"))), a, w, ct)
    y, vjp = jax.vjp(dense, a, w)
    assert_all_close(got, (y,) + vjp(ct))


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_act_with_weight_and_act_saved_rules(kind):
    """dW sees act_saved's rule applied on top of the sparse input; the forward and dA
    use the sparse W; dA is masked by the forward input's mask."""
    a, w, ct, op = operands(kind, 4)
    x_mask = np_topk(a, 0.4)  # 60% of A in the forward
    a_forward = np.asarray(a) * x_mask
    a_saved = a_forward * np_topk(a_forward, 0.7)  # top 30% of that sparse A, for dW
    w_mask = np_topk(w, 0.5)
    policy = Policy(weight=TopK(0.5), act=TopK(0.4), act_saved=TopK(0.7))
    got = fwd_bwd(sparse_op(kind, policy), a, w, ct)
    want = masked_reference(op, a, w, ct, x_mask, w_fwd=w * w_mask, a_saved=a_saved)
    assert_all_close(got, want)
    # Not the same as dW on the forward's sparse A (act_saved did drop more).
    dw_forward_a = jax.vjp(lambda w_: op(jnp.asarray(a_forward), w_), w)[1](ct)[0]
    assert np.abs(np.asarray(got[2]) - np.asarray(dw_forward_a)).max() > 1e-3
    _, stats = (sparse_dot_general_with_stats(a, w, DENSE_DN, policy=policy) if kind == "dense"
                else sparse_conv_general_dilated_with_stats(a, w, policy=policy, **CONV_KW))
    assert float(stats.a_input_density) == 1.0  # A as given
    assert float(stats.a_density) == pytest.approx(np.count_nonzero(a_saved) / a.size)
    assert float(stats.w_density) == pytest.approx(w_mask.mean())
    np.testing.assert_allclose(stats.x_threshold, np.abs(np.asarray(a))[x_mask].min())


@pytest.mark.parametrize("mode", [dict(saved="packed"), dict(saved="remat")])
def test_act_mask_survives_the_memory_modes(mode):
    """saved="packed" keeps the forward input's mask as bits; "remat" rebuilds the saved
    activation: both give exactly the gradients of the plain mode."""
    a, w, ct, _ = operands("conv", 5)
    policy = lambda **kw: Policy(weight=TopK(0.6, ties="all"), act=TopK(0.5, ties="all"),
                                 act_saved=TopK(0.8, ties="all"), **kw)
    got = fwd_bwd(sparse_op("conv", policy(**mode)), a, w, ct)
    for g, r in zip(got, fwd_bwd(sparse_op("conv", policy()), a, w, ct)):
        np.testing.assert_array_equal(g, r)
    # Without act_saved too (the sparse A itself is saved for dW).
    plain = Policy(act=TopK(0.5), **mode)
    assert_all_close(fwd_bwd(sparse_op("conv", plain), a, w, ct),
                     masked_reference(conv, a, w, ct, np_topk(a, 0.5)))


def test_act_stats_report_the_input_and_what_dw_sees():
    a, w = rand(6, (16, 32), (32, 8))
    a = jax.nn.relu(a)  # about half zeros already
    _, st = sparse_dot_general_with_stats(a, w, DENSE_DN, policy=Policy(act=TopK(0.8)))
    assert float(st.a_input_density) == pytest.approx(np.count_nonzero(a) / a.size)
    assert float(st.a_density) == pytest.approx(np_topk(a, 0.8).mean())  # ceil(0.2 n) kept
    assert float(st.w_density) == 1.0
    assert np.isnan(float(st.w_threshold)) and np.isnan(float(st.a_threshold))
    np.testing.assert_allclose(st.x_threshold, np.abs(np.asarray(a))[np_topk(a, 0.8)].min())
    _, st = sparse_dot_general_with_stats(a, w, DENSE_DN, policy=Policy(weight=TopK(0.5)))
    assert np.isnan(float(st.x_threshold))


def test_act_cached_threshold_and_refresh():
    a, w = rand(7, (12, 16), (16, 4))
    step = jax.jit(lambda aux: sparse_dot_general_with_stats(a, w, DENSE_DN, aux=aux,
                                                              policy=Policy(act=Cached(0.75))))
    y, st = step(Aux(x_threshold=jnp.float32(0), x_refresh=True))
    np.testing.assert_allclose(y, dense(a * np_topk(a, 0.75), w), **TOL)
    exact = float(st.x_threshold)
    assert exact == pytest.approx(np.abs(np.asarray(a))[np_topk(a, 0.75)].min())
    y, st = step(Aux(x_threshold=jnp.float32(2 * exact), x_refresh=False))
    assert float(st.x_threshold) == pytest.approx(2 * exact)  # the cached value, as given
    np.testing.assert_allclose(y, dense(a * (np.abs(np.asarray(a)) >= 2 * exact), w), **TOL)


def test_traced_x_sparsity_is_honoured_without_recompiling():
    traces = []

    @jax.jit
    def step(a, w, aux):
        traces.append(1)
        f = lambda a_, w_: sparse_dot_general(a_, w_, DENSE_DN, aux=aux,
                                              policy=Policy(act=TopK(0.5)))
        y, vjp = jax.vjp(f, a, w)
        return (y,) + vjp(jnp.ones_like(y))

    a, w = rand(8, (8, 10), (10, 4))
    for s in (0.1, 0.5, 0.9):
        got = step(a, w, Aux(x_sparsity=jnp.float32(s)))
        assert_all_close(got, masked_reference(dense, a, w, jnp.ones((8, 4)), np_topk(a, s)))
    assert len(traces) == 1


def test_aux_is_one_slot_input_per_slot_and_keeps_the_flat_names():
    t, m, key = jnp.float32(0.5), jnp.ones((2, 3), bool), jax.random.key(1)
    typed = Aux(weight=SlotInput(threshold=t, refresh=True), act=SlotInput(mask=m),
                out=SlotInput(key=key), grad_weight=SlotInput(sparsity=0.25))
    flat = Aux(w_threshold=t, w_refresh=True, x_mask=m, key=key, d_sparsity=0.25)
    assert jax.tree_util.tree_structure(typed) == jax.tree_util.tree_structure(flat)
    for a, b in zip(jax.tree_util.tree_leaves(typed), jax.tree_util.tree_leaves(flat)):
        assert a is b
    assert flat.w_threshold is t and flat.key is key and flat.act.mask is m
    assert flat.act_saved == SlotInput() and flat.grad_out == SlotInput()
    replaced = flat._replace(a_threshold=t, weight=SlotInput())
    assert replaced.act_saved.threshold is t and replaced.weight == SlotInput()
    # A pytree: through jit and back, the typed slots are preserved.
    back = jax.jit(lambda aux: aux)(Aux(weight=SlotInput(threshold=t)))
    assert isinstance(back, Aux) and float(back.weight.threshold) == 0.5
    with pytest.raises(TypeError, match="positional arguments are the slots"):
        Aux(jnp.float32(0.5))
    with pytest.raises(AttributeError, match="no field 'q_mask'"):
        Aux(q_mask=m)
    with pytest.raises(TypeError, match="both weight= and w_threshold="):
        Aux(weight=SlotInput(), w_threshold=t)


ONES = (jnp.ones((2, 3)), jnp.ones((3, 2)))


@pytest.mark.parametrize("call, match", [
    (lambda: sparse_dot_general(*ONES, DENSE_DN, policy=Policy(), aux=Aux(x_sparsity=0.5)),
     r"x_sparsity.*Policy.act is None"),
    (lambda: sparse_dot_general(*ONES, DENSE_DN, policy=Policy(act_saved=TopK(0.5)),
                                aux=Aux(x_mask=jnp.ones((2, 3), bool))),
     r"x_mask.*Policy.act is None"),
    (lambda: sparse_dot_general(*ONES, DENSE_DN, policy=Policy(act=TopK(0.5)),
                                aux=Aux(x_threshold=1.0)), r"Policy.act.*does not read"),
    (lambda: sparse_dot_general(*ONES, DENSE_DN, policy=Policy(act=Cached(0.5))),
     r"Policy.act.*needs aux.*x_"),
    (lambda: sparse_dot_general(*ONES, DENSE_DN, policy=Policy(act=TopK(0.5)),
                                aux=Aux(x_sparsity=1.5)), r"\[0, 1\)"),
    (lambda: sparse_dot_general(*ONES, DENSE_DN, policy=Policy(act=Fixed()),
                                aux=Aux(x_mask=jnp.ones((3, 3), bool))), "Fixed mask.*shape"),
    (lambda: Policy(act=RandomProjection(0.5)), "Policy.out, not Policy.act"),
    (lambda: Policy(act="topk"), "Policy.act must be a sparsejax"),
])
def test_act_slot_errors(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


# -------------------------------------------------------------- the method


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Dense(16, name="fc1")(x))
        h = nn.relu(nn.Dense(12, name="fc2")(h))
        return nn.Dense(4, name="fc3")(h)


def _mlp_data():
    x, c = rand(9, (8, 10), (8, 4))
    return x, c


def _linen_grads(model, variables, x, c, mutable=("sparsity",)):
    def loss(p):
        y, _ = model.apply({**variables, "params": p}, x, mutable=list(mutable))
        return jnp.sum(y * c), y

    (_, y), g = jax.value_and_grad(loss, has_aux=True)(variables["params"])
    return y, g


def _reference_masks(params, x, sparsity):
    """The input masks of fc2 and fc3, by a numpy sort of the dense-forward activations
    (the input of fc3 is computed from fc2's masked input)."""
    p = jax.tree.map(np.asarray, params)
    h1 = np.maximum(np.asarray(x) @ p["fc1"]["kernel"] + p["fc1"]["bias"], 0)
    m2 = np_topk(h1, sparsity)
    h2 = np.maximum((h1 * m2) @ p["fc2"]["kernel"] + p["fc2"]["bias"], 0)
    m3 = np_topk(h2, sparsity)
    # No ties at the threshold: ReLU leaves more non-zeros than the kept count.
    assert np.count_nonzero(h1) > m2.sum() and np.count_nonzero(h2) > m3.sum()
    return m2, m3


def _reference_forward(params, x, m2, m3):
    h1 = nn.relu(x @ params["fc1"]["kernel"] + params["fc1"]["bias"])
    h2 = nn.relu((h1 * m2) @ params["fc2"]["kernel"] + params["fc2"]["bias"])
    return (h2 * m3) @ params["fc3"]["kernel"] + params["fc3"]["bias"]


def test_forward_topk_activations_on_an_mlp_matches_the_masked_input_reference():
    x, c = _mlp_data()
    method = methods.forward_topk(0.7)
    assert plan(MLP(), method, x).sparsities == {"fc2": 0.7, "fc3": 0.7}  # first layer dense
    model = sparsify(MLP(), method)
    v = model.init(jax.random.key(0), x)
    y, g = _linen_grads(model, v, x, c)
    m2, m3 = _reference_masks(v["params"], x, 0.7)
    # Hand reference: the masks held fixed, the ordinary gradient of everything else.
    ref_loss = lambda p: jnp.sum(_reference_forward(p, x, m2, m3) * c)
    np.testing.assert_allclose(y, _reference_forward(v["params"], x, m2, m3), **TOL)
    want = jax.grad(ref_loss)(v["params"])
    jax.tree.map(lambda got, ref: np.testing.assert_allclose(got, ref, **TOL), g, want)
    # Not silently dense: the unmodified model differs in its outputs and kernel gradients.
    y_dense, g_dense = _linen_grads(MLP(), {"params": v["params"]}, x, c, mutable=())
    assert np.abs(np.asarray(y) - np.asarray(y_dense)).max() > 1e-3
    for layer in ("fc1", "fc2", "fc3"):
        assert np.abs(np.asarray(g[layer]["kernel"] - g_dense[layer]["kernel"])).max() > 1e-3
    # Evaluation (read-only state): the same sparse forward, or dense with sparse_eval=False.
    np.testing.assert_allclose(model.apply(v, x), y, **TOL)
    dense_eval = sparsify(MLP(), methods.forward_topk(0.7, sparse_eval=False))
    np.testing.assert_allclose(dense_eval.apply(v, x), y_dense, **TOL)


def test_forward_topk_last_layer_dense_and_include_exclude():
    x, _ = _mlp_data()
    sparsities = lambda m: plan(MLP(), m, x).sparsities
    assert sparsities(methods.forward_topk(0.5, dense_last=True)) == {"fc2": 0.5}
    assert sparsities(methods.forward_topk(0.5, dense_first=False)) == {
        "fc1": 0.5, "fc2": 0.5, "fc3": 0.5}
    assert sparsities(methods.forward_topk(0.5, exclude="fc3")) == {"fc2": 0.5}
    assert sparsities(methods.forward_topk(0.5, include="fc3", operand="weights")) == {"fc3": 0.5}
    assert "input activations" in str(plan(MLP(), methods.forward_topk(0.5), x))


def test_forward_topk_weights_equals_unstructured_ste_on_the_same_layers():
    x, c = _mlp_data()
    ours = sparsify(MLP(), methods.forward_topk(0.7, operand="weights"))
    ste = sparsify(MLP(), methods.ste(Unstructured(), sparsity=0.7, exclude="^fc1$"))
    v = ours.init(jax.random.key(0), x)
    y, g = _linen_grads(ours, v, x, c)
    y_ste, g_ste = _linen_grads(ste, ste.init(jax.random.key(0), x), x, c)
    np.testing.assert_array_equal(y, y_ste)
    jax.tree.map(np.testing.assert_array_equal, g, g_ste)
    # And it is what it says: top-K W forward (hand reference), dW dense (straight-through).
    p = v["params"]
    masked = {k: dict(p[k]) for k in p}
    for layer in ("fc2", "fc3"):
        masked[layer]["kernel"] = p[layer]["kernel"] * np_topk(p[layer]["kernel"], 0.7)
    np.testing.assert_allclose(y, MLP().apply({"params": masked}, x), **TOL)
    h2 = nn.relu(nn.relu(x @ masked["fc1"]["kernel"] + masked["fc1"]["bias"])
                 @ masked["fc2"]["kernel"] + masked["fc2"]["bias"])
    np.testing.assert_allclose(g["fc3"]["kernel"], h2.T @ c, **TOL)  # dense over every position
    pruned = ~np_topk(p["fc3"]["kernel"], 0.7)
    assert np.count_nonzero(np.asarray(g["fc3"]["kernel"])[pruned]) > pruned.sum() // 2


def test_forward_topk_trains_under_jit_without_recompiling():
    x, c = _mlp_data()
    labels = jnp.argmax(c, axis=1)
    model = sparsify(MLP(), methods.forward_topk(0.5))
    v = model.init(jax.random.key(0), x)
    v, losses, traces = sgd_losses(model, v, x, labels, 40, ["sparsity"])
    assert traces == 1 and np.isfinite(losses).all()
    assert np.mean(losses[-5:]) < 0.7 * losses[0]


def test_forward_topk_nnx_matches_the_linen_reference():
    from flax import nnx

    class NNXMLP(nnx.Module):
        def __init__(self, rngs):
            self.fc1 = nnx.Linear(10, 16, rngs=rngs)
            self.fc2 = nnx.Linear(16, 12, rngs=rngs)
            self.fc3 = nnx.Linear(12, 4, rngs=rngs)

        def __call__(self, x):
            return self.fc3(nnx.relu(self.fc2(nnx.relu(self.fc1(x)))))

    x, c = _mlp_data()
    model = sparsify(NNXMLP(nnx.Rngs(0)), methods.forward_topk(0.7), x)
    params = {n: {"kernel": jnp.asarray(getattr(model, n).kernel.value),
                  "bias": jnp.asarray(getattr(model, n).bias.value)} for n in ("fc1", "fc2", "fc3")}
    m2, m3 = _reference_masks(params, x, 0.7)
    np.testing.assert_allclose(model(x), _reference_forward(params, x, m2, m3), **TOL)
    g = nnx.grad(lambda m: jnp.sum(m(x) * c))(model)
    want = jax.grad(lambda p: jnp.sum(_reference_forward(p, x, m2, m3) * c))(params)
    for n in ("fc1", "fc2", "fc3"):
        np.testing.assert_allclose(getattr(g, n).kernel.value, want[n]["kernel"], **TOL)


@pytest.mark.parametrize("build, exc, match", [
    (lambda: methods.forward_topk(1.0), ValueError, r"forward_topk\(sparsity=...\).*\[0, 1\)"),
    (lambda: methods.forward_topk(-0.1), ValueError, r"forward_topk\(sparsity=...\).*\[0, 1\)"),
    (lambda: methods.forward_topk(float("nan")), ValueError, r"\[0, 1\).*got nan"),
    (lambda: methods.forward_topk(0.5, operand="foo"), ValueError,
     r"operand.*'activations', 'weights'.*'foo'"),
    (lambda: methods.forward_topk(0.5, dense_first="yes"), TypeError, r"dense_first=...\) must be True"),
    (lambda: methods.forward_topk(0.5, dense_last=None), TypeError, r"dense_last=...\) must be True"),
    (lambda: methods.forward_topk(0.5, exclude=3), TypeError, r"exclude=...\) must be a regex"),
])
def test_forward_topk_invalid_arguments(build, exc, match):
    with pytest.raises(exc, match=match):
        build()


def test_forward_topk_is_a_hashable_value_exported_at_the_top():
    import sparsejax

    assert sparsejax.forward_topk is methods.forward_topk
    assert hash(methods.forward_topk(0.8)) == hash(methods.forward_topk(0.8))
    assert methods.forward_topk(0.8) != methods.forward_topk(0.8, operand="weights")
    jax.jit(lambda x, m: x, static_argnums=1)(1.0, methods.forward_topk(0.8))


# ------------------------------------------------------- recipe and costs


LAYERS = [costs.Layer("fc1", "dense", "fc1/kernel", (10, 16), 320, 16),
          costs.Layer("fc2", "dense", "fc2/kernel", (16, 12), 384, 12),
          costs.Layer("fc3", "dense", "fc3/kernel", (12, 4), 96, 4)]


def _phases(**method):
    config = tiny_config()
    config.method = ml_collections.ConfigDict({"name": "forward_topk", **method})
    return recipes.build_phases(config, 10, 5)


def test_recipe_activations_costs_keep_fraction_on_the_sparse_layers():
    [phase] = _phases(sparsity=0.7, operand="activations")
    assert (phase.name, phase.num_steps) == ("train", 10)
    assert phase.method == methods.forward_topk(0.7)
    assert phase.densities({}, LAYERS) == {}  # no weight rule: every weight dense
    fractions = phase.fractions(LAYERS, {})
    assert set(fractions) == {"fc2/kernel", "fc3/kernel"}  # the first layer stays dense
    for f in fractions.values():
        np.testing.assert_allclose(f, (0.3, 0.3, 0.3))
    ratio = costs.step_flops(LAYERS, fractions) / costs.step_flops(LAYERS)
    assert ratio == pytest.approx((3 * 320 + 0.9 * (384 + 96)) / (3 * (320 + 384 + 96)))


def test_recipe_weights_costs_like_ste():
    [phase] = _phases(sparsity=0.6, operand="weights", dense_last=True)
    assert phase.method == methods.forward_topk(0.6, operand="weights", dense_last=True)
    densities = phase.densities({}, LAYERS)
    assert densities == {"fc2/kernel": pytest.approx(0.4)}
    got = phase.fractions(LAYERS, densities)
    assert list(got) == ["fc2/kernel"]
    np.testing.assert_allclose(got["fc2/kernel"], (0.4, 0.4, 1.0))
    config = tiny_config()
    config.method = ml_collections.ConfigDict({"name": "ste", "pattern": "unstructured",
                                               "sparsity": 0.6})
    [ste] = recipes.build_phases(config, 10, 5)
    assert ste.fractions(LAYERS, {})["fc2/kernel"] == got["fc2/kernel"]


def test_recipe_fields_defaults_and_config_errors():
    assert recipes.method_fields("forward_topk") == [
        "name", "sparsity", "operand", "dense_first", "dense_last", "exclude"]
    [phase] = _phases()
    assert phase.method == methods.forward_topk(0.8)  # activations, first layer dense
    [phase] = _phases(exclude="fc3")
    assert set(phase.fractions(LAYERS, {})) == {"fc2/kernel"}
    with pytest.raises(ConfigError, match="did you mean 'method.operand'"):
        _phases(operands="weights")
    config = tiny_config()
    config.method = ml_collections.ConfigDict({"name": "forward_topk", "operand": "foo"})
    with pytest.raises(ConfigError, match="'activations', 'weights'"):
        recipes.check_method(config, 10, 5)
    config.method = ml_collections.ConfigDict({"name": "forward_topk", "sparsity": 1.0})
    with pytest.raises(ConfigError, match=r"\[0, 1\)"):
        recipes.check_method(config, 10, 5)
    config.method = ml_collections.ConfigDict({"name": "forward_topk", "exclude": "("})
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        recipes.check_method(config, 10, 5)


def test_removed_string_cost_models_name_their_replacement():
    with pytest.raises(AttributeError, match="costs.policy_fractions"):
        costs.layer_fractions  # pylint: disable=pointless-statement

