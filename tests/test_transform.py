"""Tests for sparsejax.transform.pruning: masks in the optimizer state, exact zeros."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.training import train_state
from references import np_topk

from sparsejax import schedules
from sparsejax.patterns import NM
from sparsejax.select import keep_count
from sparsejax.transform import PruningState, get_masks, pruning
from sparsejax.tree import apply_masks, compute_masks, prune


class MLP(nn.Module):

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(32)(x))
        x = nn.relu(nn.Dense(32)(x))
        return nn.Dense(4)(x)


MODEL = MLP()
X = jax.random.normal(jax.random.key(1), (64, 16))
Y = jax.random.randint(jax.random.key(2), (64,), 0, 4)
PARAMS = MODEL.init(jax.random.key(0), X)["params"]
KERNELS = ("Dense_0", "Dense_1", "Dense_2")


def np_nm(w, n=2, m=4):
    """Reference N:M mask of an ``(in, out)`` kernel: the n largest |w| of every m inputs."""
    groups = np.abs(np.asarray(w)).reshape(w.shape[0] // m, m, w.shape[1])
    rank = np.argsort(np.argsort(-groups, axis=1, kind="stable"), axis=1, kind="stable")
    return (rank < n).reshape(w.shape)


def loss_fn(params):
    logits = MODEL.apply({"params": params}, X)
    return optax.softmax_cross_entropy_with_integer_labels(logits, Y).mean()


def make_step(tx):

    @jax.jit
    def step(params, opt_state):
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


def train(tx, steps, params=PARAMS, record=False):
    """Runs ``steps`` jitted steps; returns params, state, losses and per-step masks."""
    step = make_step(tx)
    opt_state = tx.init(params)
    history, losses = [], []
    for _ in range(steps):
        params, opt_state, loss = step(params, opt_state)
        losses.append(float(loss))
        if record:
            history.append(jax.tree.map(np.asarray, get_masks(opt_state)))
    return params, opt_state, losses, history


def assert_pruned_exactly(params, masks, sparsity=None):
    for name in KERNELS:
        w, m = np.asarray(params[name]["kernel"]), np.asarray(masks[name]["kernel"])
        assert m.dtype == bool and m.shape == w.shape
        assert np.all(w[~m] == 0.0), f"{name}: pruned weights are not exactly 0"
        assert np.count_nonzero(w[m]) == m.sum(), f"{name}: a kept weight is 0"
        if sparsity is not None:
            assert m.sum() == keep_count(sparsity, m.size), name
        assert masks[name]["bias"] is None


@pytest.mark.parametrize("inner", [
    optax.adamw(1e-2, weight_decay=1e-2),
    optax.sgd(5e-2, momentum=0.9),
], ids=["adamw", "sgd_momentum"])
def test_unstructured_training_keeps_pruned_weights_zero(inner):
    tx = optax.chain(inner, pruning(0.8))
    params, state, losses, _ = train(tx, 200)
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    masks = get_masks(state)
    assert_pruned_exactly(params, masks, 0.8)
    # Refreshed every step from the post-update params: the masks are the top-20%.
    for name in KERNELS:
        np.testing.assert_array_equal(masks[name]["kernel"], np_topk(params[name]["kernel"], 0.8))
    assert int(state[-1].count) == 200 and int(state[-1].mask_step) == 199


def test_nm_training_keeps_two_of_four():
    tx = optax.chain(optax.sgd(5e-2, momentum=0.9), pruning(None, pattern=NM(2, 4)))
    params, state, losses, _ = train(tx, 100)
    assert np.isfinite(losses).all()
    masks = get_masks(state)
    assert_pruned_exactly(params, masks, 0.5)
    for name in KERNELS:
        m = np.asarray(masks[name]["kernel"])  # (in, out): groups of 4 along the input axis
        groups = m.reshape(m.shape[0] // 4, 4, m.shape[1]).sum(axis=1)
        np.testing.assert_array_equal(groups, 2)
        w = np.asarray(params[name]["kernel"])
        nonzero = (w != 0).reshape(w.shape[0] // 4, 4, w.shape[1]).sum(axis=1)
        np.testing.assert_array_equal(nonzero, 2)


def test_newly_pruned_weights_are_zero_after_the_same_step():
    grads = jax.grad(loss_fn)(PARAMS)
    tx = optax.chain(optax.sgd(0.5), pruning(0.6))
    state = tx.init(PARAMS)
    updates, state = tx.update(grads, state, PARAMS)
    new = optax.apply_updates(PARAMS, updates)
    candidate = optax.apply_updates(PARAMS, jax.tree.map(lambda g: -0.5 * g, grads))
    masks = get_masks(state)
    for name in KERNELS:
        np.testing.assert_array_equal(masks[name]["kernel"],
                                      np_topk(candidate[name]["kernel"], 0.6))
        np.testing.assert_array_equal(new[name]["bias"], candidate[name]["bias"])
    assert_pruned_exactly(new, masks, 0.6)


def test_gradual_schedule_reaches_target_and_refreshes_only_at_update_steps():
    sched = schedules.polynomial(0.9, 10, 50, frequency=10)
    tx = optax.chain(optax.adam(1e-2),
                     pruning(sched, update_every=10, begin_step=10, end_step=51))
    params, state, _, history = train(tx, 80, record=True)
    assert_pruned_exactly(params, get_masks(state), 0.9)
    for t in range(1, 80):  # history[t] holds the masks after the update at count t
        same = all(np.array_equal(history[t][n]["kernel"], history[t - 1][n]["kernel"])
                   for n in KERNELS)
        if t not in (10, 20, 30, 40, 50):
            assert same, f"masks changed at step {t}, not an update step"
    for t in (10, 20, 30, 40, 50):
        kept = history[t]["Dense_0"]["kernel"].sum()
        assert kept == keep_count(float(sched(t)), 16 * 32), t
    assert all(history[t]["Dense_0"]["kernel"].all() for t in range(10))
    assert int(state[-1].mask_step) == 50


def test_update_every_none_fixes_masks_after_first_prune():
    tx = optax.chain(optax.adam(3e-2), pruning(0.7, update_every=None, begin_step=5))
    assert get_masks(tx.init(PARAMS))["Dense_0"]["kernel"].all()
    params, state, _, history = train(tx, 60, record=True)
    for t in range(5):
        assert all(history[t][n]["kernel"].all() for n in KERNELS)
    for t in range(6, 60):
        for n in KERNELS:
            np.testing.assert_array_equal(history[t][n]["kernel"], history[5][n]["kernel"])
    assert_pruned_exactly(params, get_masks(state), 0.7)
    assert int(state[-1].mask_step) == 5


def test_update_every_none_with_iterative_schedule_reprunes_at_listed_steps():
    sched = schedules.iterative([(0, 0.5), (15, 0.75), (30, 0.9)])
    tx = optax.chain(optax.sgd(5e-2, momentum=0.9), pruning(sched, update_every=None))
    init_masks = get_masks(tx.init(PARAMS))
    want0 = {n: np_topk(PARAMS[n]["kernel"], 0.5) for n in KERNELS}  # the given weights
    for n in KERNELS:
        np.testing.assert_array_equal(init_masks[n]["kernel"], want0[n])
    params, state, _, history = train(tx, 40, record=True)
    for n in KERNELS:
        np.testing.assert_array_equal(history[0][n]["kernel"], want0[n])
    for t in range(1, 40):
        changed = any(not np.array_equal(history[t][n]["kernel"], history[t - 1][n]["kernel"])
                      for n in KERNELS)
        assert changed == (t in (15, 30)), t
    assert_pruned_exactly(params, get_masks(state), 0.9)


def test_asp_one_shot_nm_on_trained_weights():
    trained, _, _, _ = train(optax.adam(1e-2), 20)
    tx = optax.chain(optax.sgd(1e-2, momentum=0.9), pruning(None, pattern=NM(2, 4),
                                                            update_every=None))
    state = tx.init(trained)
    params, state, _, _ = train(tx, 30, params=trained)
    for n in KERNELS:
        np.testing.assert_array_equal(get_masks(state)[n]["kernel"], np_nm(trained[n]["kernel"]))
    assert_pruned_exactly(params, get_masks(state), 0.5)


def test_begin_step_leaves_params_dense_before_it():
    tx = optax.chain(optax.sgd(1e-2), pruning(0.8, begin_step=3, update_every=2))
    state = tx.init(PARAMS)
    assert int(state[-1].mask_step) == -1
    params, state, _, history = train(tx, 3, record=True)
    for n in KERNELS:
        assert np.all(np.asarray(params[n]["kernel"]) != 0)
        assert history[-1][n]["kernel"].all()


def test_jitted_update_compiles_once():
    traces = []

    def counted(tx):
        def update(updates, state, params):
            traces.append(1)
            return tx.update(updates, state, params)
        return jax.jit(update)

    sched = schedules.polynomial(0.8, 0, 20, frequency=2)
    for transform in (pruning(sched, update_every=2), pruning(0.5, update_every=None)):
        traces.clear()
        tx = optax.chain(optax.sgd(1e-2), transform)
        update, state, params = counted(tx), tx.init(PARAMS), PARAMS
        grads = jax.grad(loss_fn)(PARAMS)
        for _ in range(8):
            updates, state = update(grads, state, params)
            params = optax.apply_updates(params, updates)
        assert len(traces) == 1


def test_train_state_integration():
    tx = optax.chain(optax.sgd(5e-2, momentum=0.9), pruning(0.75, exclude="Dense_2"))
    ts = train_state.TrainState.create(apply_fn=MODEL.apply, params=PARAMS, tx=tx)

    @jax.jit
    def step(ts):
        grads = jax.grad(loss_fn)(ts.params)
        return ts.apply_gradients(grads=grads)

    for _ in range(10):
        ts = step(ts)
    masks = get_masks(ts.opt_state)
    assert masks["Dense_2"]["kernel"] is None
    for n in ("Dense_0", "Dense_1"):
        m, w = np.asarray(masks[n]["kernel"]), np.asarray(ts.params[n]["kernel"])
        assert m.sum() == keep_count(0.75, m.size)
        assert np.all(w[~m] == 0) and np.all(w[m] != 0)
    assert np.all(np.asarray(ts.params["Dense_2"]["kernel"]) != 0)


class NNXModel(nnx.Module):

    def __init__(self, rngs):
        self.l1 = nnx.Linear(16, 32, rngs=rngs)
        self.l2 = nnx.Linear(32, 4, rngs=rngs)

    def __call__(self, x):
        return self.l2(nnx.relu(self.l1(x)))


def test_nnx_optimizer_integration():
    model = NNXModel(nnx.Rngs(0))
    tx = optax.chain(optax.adamw(1e-2, weight_decay=1e-2), pruning(0.8, exclude="l2/kernel$"))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer):
        def loss(model):
            return optax.softmax_cross_entropy_with_integer_labels(model(X), Y).mean()
        value, grads = nnx.value_and_grad(loss)(model)
        optimizer.update(model, grads)
        return value

    for _ in range(10):
        step(model, optimizer)
    masks = get_masks(optimizer.opt_state)
    assert masks["l2"]["kernel"] is None and masks["l1"]["bias"] is None
    m, w = np.asarray(masks["l1"]["kernel"]), np.asarray(model.l1.kernel[...])
    assert isinstance(masks["l1"]["kernel"], jax.Array)
    assert m.sum() == keep_count(0.8, m.size)
    assert np.all(w[~m] == 0) and np.all(w[m] != 0)
    assert np.all(np.asarray(model.l2.kernel[...]) != 0)


def test_get_masks_finds_nested_states():
    params = {"w": jnp.arange(1.0, 17.0).reshape(4, 4)}
    want = np_topk(params["w"], 0.5)
    nested = {
        "chain": optax.chain(optax.sgd(0.1), pruning(0.5)),
        "inject": optax.inject_hyperparams(
            lambda learning_rate: optax.chain(optax.sgd(learning_rate), pruning(0.5)))(0.1),
        "multisteps": optax.MultiSteps(optax.chain(optax.adam(0.1), pruning(0.5)), 2),
        "masked": optax.masked(optax.chain(optax.sgd(0.1), pruning(0.5)), {"w": True}),
        "chain_of_chain": optax.chain(optax.clip(1.0),
                                      optax.chain(optax.sgd(0.1), pruning(0.5))),
    }
    for name, tx in nested.items():
        state = tx.init(params)
        np.testing.assert_array_equal(get_masks(state)["w"], want, err_msg=name)
        updates, state = jax.jit(tx.update)({"w": jnp.ones((4, 4))}, state, params)
        assert get_masks(state)["w"].sum() == 8, name
    assert get_masks(optax.sgd(0.1).init(params)) is None
    two = optax.chain(pruning(0.5), pruning(0.25)).init(params)
    with pytest.raises(ValueError, match="2 pruning states"):
        get_masks(two)


def test_update_without_params_raises():
    tx = optax.chain(optax.sgd(0.1), pruning(0.5))
    state = tx.init(PARAMS)
    with pytest.raises(ValueError, match="needs the params"):
        tx.update(jax.tree.map(jnp.zeros_like, PARAMS), state)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(sparsity_or_schedule=1.0), ValueError, r"\[0, 1\)"),
    (dict(sparsity_or_schedule=None), ValueError, "needs a sparsity"),
    (dict(sparsity_or_schedule=0.5, update_every=0), ValueError, "update_every"),
    (dict(sparsity_or_schedule=0.5, begin_step=-1), ValueError, "begin_step"),
    (dict(sparsity_or_schedule=0.5, begin_step=10, end_step=10), ValueError, "end_step"),
    (dict(sparsity_or_schedule=0.5, pattern="nm"), TypeError, "Pattern"),
    (dict(sparsity_or_schedule=schedules.constant(0.5), pattern=NM(2, 4)), ValueError,
     "sparsity_or_schedule=None"),
])
def test_argument_errors(kwargs, error, match):
    s = kwargs.pop("sparsity_or_schedule")
    with pytest.raises(error, match=match):
        pruning(s, **kwargs)


def test_invalid_schedule_value_raises_at_construction():
    with pytest.raises(ValueError, match="returns 1.5 at step 0"):
        pruning(lambda step: 1.5 + 0 * jnp.asarray(step, jnp.float32))


def test_state_is_a_pruning_state_namedtuple():
    state = pruning(0.5).init(PARAMS)
    assert isinstance(state, PruningState) and state._fields == ("count", "masks", "mask_step")
    assert state.count.dtype == jnp.int32


def test_han_q_rule_prunes_once_from_the_given_weights():
    tx = optax.chain(optax.sgd(1e-2, momentum=0.9), pruning(None, q=0.5, update_every=None))
    params, state, _, _ = train(tx, 5)
    masks = get_masks(state)
    for n in KERNELS:  # Han's rule on the given weights: |W| > q * std(W), per layer.
        w = np.asarray(PARAMS[n]["kernel"], np.float64)
        np.testing.assert_array_equal(masks[n]["kernel"], np.abs(w) > 0.5 * w.std())
    assert_pruned_exactly(params, masks)


# ------------------------------------------- guards: chain order, traced sparsity
def _run(tx, steps, jit=True):
    state = tx.init(PARAMS)
    params = PARAMS

    def step(params, state):
        grads = jax.grad(loss_fn)(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    step = jax.jit(step) if jit else step
    for _ in range(steps):
        params, state = step(params, state)
        jax.block_until_ready(params)
    return params, state


@pytest.mark.parametrize("jit", [True, False], ids=["jit", "eager"])
def test_pruning_first_in_the_chain_raises(jit):
    # Before: optax.chain(pruning(0.8), sgd) silently trained to sparsity ~0.001.
    tx = optax.chain(pruning(0.8), optax.sgd(0.1))
    with pytest.raises(Exception, match="Put pruning last in the chain") as info:
        _run(tx, 3, jit=jit)
    assert "at step 1" in str(info.value) and "Dense_0/kernel" in str(info.value)
    if not jit:
        assert info.type is ValueError


@pytest.mark.parametrize("later", [optax.add_decayed_weights(1e-2), optax.scale(0.5)],
                         ids=["weight_decay", "scale"])
def test_a_transform_after_pruning_raises(later):
    tx = optax.chain(optax.sgd(0.1, momentum=0.9), pruning(0.8), later)
    with pytest.raises(Exception, match="Put pruning last in the chain"):
        _run(tx, 3)


def test_pruning_last_keeps_pruned_weights_exactly_zero_over_many_steps():
    tx = optax.chain(optax.add_decayed_weights(1e-3), optax.adam(1e-2),
                     pruning(schedules.polynomial(0.8, 0, 40, frequency=5), update_every=5,
                             end_step=41))
    params, state = _run(tx, 60)
    masks = get_masks(state)
    for name in KERNELS:
        w, m = params[name]["kernel"], masks[name]["kernel"]
        assert float(jnp.max(jnp.abs(jnp.where(m, 0.0, w)))) == 0.0
        assert abs(float(1 - m.mean()) - 0.8) < 0.01


def test_check_false_skips_the_chain_check():
    _run(optax.chain(pruning(0.8, check=False), optax.sgd(0.1)), 3)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_traced_out_of_range_schedule_value_raises_under_jit(bad):
    # Before: a value beyond the checked range was used silently (1.5 pruned every
    # weight, NaN gave garbage masks). Construction checks the first 2**20 steps;
    # a value after them is caught by the traced guard at the refresh.
    far = 1 << 21
    sched = lambda t: jnp.where(jnp.asarray(t) >= far, jnp.float32(bad), jnp.float32(0.5))
    tx = optax.chain(optax.sgd(0.1), pruning(sched, update_every=1))
    state = tx.init(PARAMS)
    state = (state[0], state[1]._replace(count=jnp.int32(far), mask_step=jnp.int32(far - 1)))
    params = jax.tree.map(lambda m, p: p if m is None else jnp.where(m, p, 0.0),
                          state[1].masks, PARAMS, is_leaf=lambda x: x is None)  # as after a step
    step = jax.jit(lambda g, s, p: tx.update(g, s, p))
    with pytest.raises(Exception, match=f"returns {bad!r} at step {far}"):
        jax.block_until_ready(step(jax.tree.map(jnp.zeros_like, params), state, params))


@pytest.mark.parametrize("bad,kept", [(-0.1, 1.0), (1.5, None), (float("nan"), 1.0)])
def test_traced_out_of_range_sparsity_is_clamped_for_the_masks(bad, kept):
    far = 1 << 21
    sched = lambda t: jnp.where(jnp.asarray(t) >= far, jnp.float32(bad), jnp.float32(0.5))
    tx = pruning(sched, update_every=1, check=False)
    state = tx.init(PARAMS)._replace(count=jnp.int32(far), mask_step=jnp.int32(far - 1))
    _, state = jax.jit(lambda g, s, p: tx.update(g, s, p))(
        jax.tree.map(jnp.zeros_like, PARAMS), state, PARAMS)
    for name in KERNELS:
        m = state.masks[name]["kernel"]
        want = kept if kept is not None else 1 / m.size  # >= 1: keeps the minimum, one entry
        assert float(m.mean()) == pytest.approx(want)


def test_user_schedule_checked_over_its_range_at_construction():
    # Before: only step 0 was checked; a ramp reaching 1 at step 400 was accepted.
    with pytest.raises(ValueError, match="returns 1.0 at step 400"):
        pruning(lambda t: jnp.asarray(t, jnp.float32) / 400.0, end_step=1000)
    with pytest.raises(ValueError, match="returns nan at step 7"):
        pruning(lambda t: jnp.where(jnp.asarray(t) == 7, jnp.nan, 0.5))
    pruning(lambda t: jnp.asarray(t, jnp.float32) / 400.0, end_step=400)  # never reaches 1


# ------------------------------------------------------- per-layer target sparsities
def test_per_layer_targets_keep_exact_counts_per_layer_first_match_wins():
    k1, k2 = jax.random.split(jax.random.key(3))
    params = {"fc1": {"kernel": jax.random.normal(k1, (30, 20)), "bias": jnp.ones(20)},
              "fc3": {"kernel": jax.random.normal(k2, (20, 10))}}
    pruned, masks = prune(params, {"fc3": 0.74, ".*": 0.92})
    for path, s in (("fc1", 0.92), ("fc3", 0.74)):
        w = np.asarray(params[path]["kernel"])
        keep = int(np.ceil(round((1 - s) * w.size, 9)))
        expected = np_topk(w, s)
        np.testing.assert_array_equal(np.asarray(masks[path]["kernel"]), expected)
        assert np.count_nonzero(np.asarray(pruned[path]["kernel"])) == keep
    assert masks["fc1"]["bias"] is None


def test_per_layer_targets_in_pruning_stay_exactly_zero_over_many_steps():
    k1, k2 = jax.random.split(jax.random.key(4))
    params = {"fc1": {"kernel": jax.random.normal(k1, (16, 8))},
              "fc2": {"kernel": jax.random.normal(k2, (8, 4))}}
    tx = optax.chain(optax.sgd(0.1, momentum=0.9), pruning({"fc1": 0.75, "fc2": 0.5},
                                                           update_every=None))
    state = tx.init(params)
    masks = get_masks(state)
    assert int(masks["fc1"]["kernel"].sum()) == 32 and int(masks["fc2"]["kernel"].sum()) == 16
    params = apply_masks(params, masks)
    step = jax.jit(lambda p, s: tx.update(jax.tree.map(jnp.ones_like, p), s, p))
    for _ in range(20):
        updates, state = step(params, state)
        params = optax.apply_updates(params, updates)
    for path in ("fc1", "fc2"):
        assert not np.any(np.asarray(params[path]["kernel"])[~np.asarray(masks[path]["kernel"])])


@pytest.mark.parametrize("kwargs, match", [
    ({"sparsity": {"fc1": 1.0}}, r"sparsity\['fc1'\].*must be in \[0, 1\)"),
    ({"sparsity": {"fc1": 0.5}}, "no sparsity regex matches 'fc2/kernel'"),
    ({"sparsity": {}}, "mapping is empty"),
    ({"sparsity": {".*": 0.5}, "distribution": "global"}, "neither q="),
])
def test_per_layer_targets_bad_input(kwargs, match):
    params = {"fc1": {"kernel": jnp.ones((4, 4))}, "fc2": {"kernel": jnp.ones((4, 2))}}
    with pytest.raises(ValueError, match=match):
        compute_masks(params, **kwargs)
