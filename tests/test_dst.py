"""Tests for sparsejax.dst: static random, SET, RigL and SNFS as optax optimizer wrappers."""

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sparsejax
from sparsejax import dst, zoo
from sparsejax.alternating import acdc
from sparsejax.distributions import erk_sparsities
from sparsejax.paths import flatten
from sparsejax.select import keep_count
from sparsejax.tree import apply_masks
import references

PARAMS = references.wrapper_params()
KERNELS = ("a/kernel", "b/kernel")
SHAPES = {"a/kernel": (16, 12), "b/kernel": (12, 8)}


def leaf(tree, path):
    for key in path.split("/"):
        tree = tree[key]
    return tree


random_grads = references.random_grads


def run(tx, steps, params=PARAMS, grads_fn=random_grads, start_masked=True):
    """``steps`` jitted updates, from the initial masks applied to ``params`` by default."""
    return references.run_steps(tx, steps, params, grads_fn, start_masked)


def counts(masks):
    return {p: int(np.asarray(leaf(masks, p)).sum()) for p in KERNELS}


def planned(sparsity, distribution):
    per_layer = (erk_sparsities(SHAPES, sparsity) if distribution == "erk"
                 else {p: sparsity for p in SHAPES})
    return {p: keep_count(per_layer[p], math.prod(SHAPES[p])) for p in SHAPES}


# ----------------------------------------------------------------------------- active counts


@pytest.mark.parametrize("method,distribution", [("set", "uniform"), ("rigl", "erk"),
                                                 ("rigl", "uniform")])
def test_active_count_per_layer_invariant(method, distribution):
    if method == "set":
        tx = dst.sparse_evolutionary(optax.sgd(0.1, momentum=0.9), 0.7, drop_fraction=0.4,
                                     update_every=2, distribution=distribution)
    else:
        tx = dst.rigl(optax.sgd(0.1, momentum=0.9), 0.7, drop_fraction=0.4, update_every=2,
                      end_step=100, distribution=distribution)
    history, _, _ = run(tx, 9)
    want = planned(0.7, distribution)
    assert counts(history[0][1].masks) == want
    changes = 0
    for (_, before), (_, after) in zip(history, history[1:]):
        assert counts(after.masks) == want
        changes += sum(int(np.sum(leaf(before.masks, p) != leaf(after.masks, p)))
                       for p in KERNELS)
    assert changes > 0  # the masks did move (4 updates)


def test_snfs_total_invariant_and_momentum_redistribution():
    """SNFS keeps the total, and moves weights towards the layer with the larger momentum
    (the larger layer here: an even split of the regrowth would move weights the other way)."""
    def grads_fn(params, step):
        g = random_grads(params, step)
        return {**g, "a": {"kernel": 100.0 * g["a"]["kernel"]}}

    tx = dst.snfs(optax.sgd(0.01, momentum=0.9), 0.7, end_step=100, drop_fraction=0.5,
                  update_every=2)
    history, _, _ = run(tx, 9, grads_fn=grads_fn)
    want = planned(0.7, "uniform")
    total = sum(want.values())
    assert counts(history[0][1].masks) == want
    for _, state in history[1:]:
        assert sum(counts(state.masks).values()) == total
    final = counts(history[-1][1].masks)
    assert final["a/kernel"] > want["a/kernel"] and final["b/kernel"] < want["b/kernel"]


def test_regrowth_counts_split_exactly():
    free = jnp.array([10, 50, 5, 0], jnp.int32)
    scores = jnp.array([1.0, 1.0, 8.0, 3.0])
    # 8/13 and 3/13 of 30 exceed the room of layers 2 and 3: capped at 5 and 0; the 25 left
    # split 1:1 would give layer 0 12.5 > 10: capped, layer 1 takes the other 15.
    got = np.asarray(dst._regrowth_counts(free, scores, jnp.int32(30)))
    np.testing.assert_array_equal(got, [10, 15, 5, 0])
    got = np.asarray(dst._regrowth_counts(free, jnp.array([1.0, 3.0, 0.0, 1.0]), jnp.int32(20)))
    np.testing.assert_array_equal(got, [5, 15, 0, 0])
    got = np.asarray(dst._regrowth_counts(free, jnp.zeros(4), jnp.int32(0)))
    assert got.sum() == 0


# ----------------------------------------------------------------------------- regrowth


class AccState(NamedTuple):
    acc: Any  # params-shaped
    scale: jax.Array  # scalar


def accumulate():
    """A custom transform whose state is non-zero everywhere (so a reset is visible) and whose
    updates are non-zero at inactive positions too (so a grown weight must be zeroed)."""

    def init(params):
        return AccState(jax.tree.map(jnp.ones_like, params), jnp.ones(()))

    def update(updates, state, params=None):
        acc = jax.tree.map(lambda a, g: 0.5 * a + jnp.abs(g) + 1.0, state.acc, updates)
        return (jax.tree.map(lambda g, a: g + 1e-3 * a, updates, acc),
                AccState(acc, state.scale + 1.0))

    return optax.GradientTransformation(init, update)


OPTIMIZERS = {
    "sgd_momentum": lambda: optax.sgd(0.1, momentum=0.9),
    "adam": lambda: optax.adam(1e-2),
    "chain_custom": lambda: optax.chain(accumulate(), optax.sgd(0.1, momentum=0.9)),
}


def state_leaves(inner_state, path):
    """Every leaf of the wrapped state whose path ends with the parameter's path."""
    pairs = jax.tree_util.tree_flatten_with_path(inner_state)[0]
    return {jax.tree_util.keystr(kp, simple=True, separator="/"): np.asarray(x)
            for kp, x in pairs
            if jax.tree_util.keystr(kp, simple=True, separator="/").endswith("/" + path)}


@pytest.mark.parametrize("method,opt", [("rigl", "sgd_momentum"), ("rigl", "adam"),
                                        ("rigl", "chain_custom"), ("set", "adam"),
                                        ("snfs", "chain_custom")])
def test_regrown_weights_and_state_start_at_zero(method, opt):
    inner = OPTIMIZERS[opt]()
    kw = dict(update_every=3, drop_fraction=0.5)
    tx = {"set": lambda: dst.sparse_evolutionary(inner, 0.6, **kw),
          "rigl": lambda: dst.rigl(inner, 0.6, end_step=50, distribution="uniform", **kw),
          "snfs": lambda: dst.snfs(inner, 0.6, end_step=50, **kw)}[method]()
    history, _, _ = run(tx, 4)
    (_, before), (params, after) = history[3], history[4]  # the update at count 3
    for path in KERNELS:
        old, new = np.asarray(leaf(before.masks, path)), np.asarray(leaf(after.masks, path))
        grown, dropped = new & ~old, old & ~new
        assert grown.sum() > 0 and dropped.sum() > 0
        w = np.asarray(leaf(params, path))
        assert (w[grown] == 0).all() and (w[~new] == 0).all()
        assert (w[old & new] != 0).mean() > 0.9  # surviving weights trained
        states = state_leaves(after.inner_state, path)
        assert states  # trace / mu, nu / acc ...
        for name, s in states.items():
            assert (s[grown] == 0).all(), name
            assert (s[dropped] == 0).all(), name
            previous = state_leaves(before.inner_state, path)[name]
            assert (previous[old & new] != 0).any(), name  # a non-trivial state to reset
    scalars = [x for x in jax.tree.leaves(after.inner_state) if np.ndim(x) == 0]
    assert all(np.asarray(x) != 0 for x in scalars if np.asarray(x).dtype != bool)


def np_rigl(mask, candidate, grad, fraction):
    """Reference RigL update of one layer by full sorts: drop the k smallest |w| among the
    active, grow the k largest |g| among the inactive after the drop."""
    mask, w, g = (np.asarray(x).ravel() for x in (mask, candidate, grad))
    active = np.flatnonzero(mask)
    k = int(np.floor(np.float32(fraction) * np.float32(active.size)))
    dropped = active[np.argsort(np.abs(w[active]), kind="stable")[:k]]
    kept = mask.copy()
    kept[dropped] = False
    inactive = np.flatnonzero(~kept)
    grown = inactive[np.argsort(-np.abs(g[inactive]), kind="stable")[:k]]
    new = kept.copy()
    new[grown] = True
    return new.reshape(np.shape(candidate)), k


def test_rigl_regrows_top_gradient_inactive_positions():
    lr, end = 0.05, 10
    tx = dst.rigl(optax.sgd(lr), 0.6, drop_fraction=0.3, update_every=2, end_step=end,
                  distribution="uniform")
    history, grads, _ = run(tx, 6)
    for t, fraction in ((2, 0.3 * (1 + math.cos(math.pi * 0.2)) / 2),
                        (4, 0.3 * (1 + math.cos(math.pi * 0.4)) / 2)):
        (params, before), (_, after) = history[t], history[t + 1]
        for path in KERNELS:
            mask, g = np.asarray(leaf(before.masks, path)), np.asarray(leaf(grads[t], path))
            candidate = np.asarray(leaf(params, path)) - lr * np.where(mask, g, 0)
            want, k = np_rigl(mask, candidate, g, fraction)
            assert k >= 5
            np.testing.assert_array_equal(np.asarray(leaf(after.masks, path)), want)


def test_set_drops_smallest_active_fraction():
    lr = 0.05
    tx = dst.sparse_evolutionary(optax.sgd(lr), 0.6, drop_fraction=0.3, update_every=2)
    history, grads, _ = run(tx, 3)
    (params, before), (_, after) = history[2], history[3]
    for path in KERNELS:
        mask, g = np.asarray(leaf(before.masks, path)), np.asarray(leaf(grads[2], path))
        w = (np.asarray(leaf(params, path)) - lr * np.where(mask, g, 0)).ravel()
        active = np.flatnonzero(mask.ravel())
        k = int(np.floor(np.float32(0.3) * np.float32(active.size)))
        want_kept = np.zeros(mask.size, bool)
        want_kept[active[np.argsort(np.abs(w[active]), kind="stable")[k:]]] = True
        new = np.asarray(leaf(after.masks, path)).ravel()
        np.testing.assert_array_equal(new & mask.ravel(), want_kept)
        grown = new & ~mask.ravel()
        assert grown.sum() == k  # random among the positions inactive before the update


def test_cosine_drop_fraction_schedule():
    got = [float(dst._cosine_fraction(t, 0.3, 100)) for t in (0, 25, 50, 75, 100, 150)]
    want = [0.3, 0.3 * (1 + math.sqrt(0.5)) / 2, 0.15, 0.3 * (1 - math.sqrt(0.5)) / 2, 0.0, 0.0]
    np.testing.assert_allclose(got, want, atol=1e-7)


@pytest.mark.parametrize("method", ["set", "rigl"])
def test_mask_updates_every_delta_t_until_end_step(method):
    if method == "set":  # a constant drop fraction: only end_step stops it
        tx = dst.sparse_evolutionary(optax.sgd(0.05), 0.6, update_every=2, end_step=5)
        want = [False, False, True, False, True, False, False, False, False]
    else:  # the cosine reaches 0 at end_step
        tx = dst.rigl(optax.sgd(0.05), 0.6, update_every=2, end_step=6)
        want = [False, False, True, False, True, False, False, False, False]
    history, _, _ = run(tx, 9)
    moved = [any(bool(np.any(leaf(a.masks, p) != leaf(b.masks, p))) for p in KERNELS)
             for (_, a), (_, b) in zip(history, history[1:])]
    assert moved == want


# ----------------------------------------------------------------------------- static / zeros


def test_static_random_fixed_mask_with_planned_density():
    tx = dst.static_random(optax.adam(1e-2), 0.8, distribution="erk", seed=3)
    history, _, _ = run(tx, 5, start_masked=False)
    first = history[0][1].masks
    assert counts(first) == planned(0.8, "erk")
    assert leaf(first, "b/bias") is None
    for params, state in history[1:]:
        for p in KERNELS:
            np.testing.assert_array_equal(leaf(state.masks, p), leaf(first, p))
            assert (np.asarray(leaf(params, p))[~np.asarray(leaf(first, p))] == 0).all()
    other = dst.static_random(optax.adam(1e-2), 0.8, distribution="erk", seed=4).init(PARAMS)
    assert any((np.asarray(leaf(other.masks, p)) != np.asarray(leaf(first, p))).any()
               for p in KERNELS)


@pytest.mark.parametrize("method", ["static", "set", "rigl", "snfs"])
def test_masked_weights_exactly_zero_after_many_steps(method):
    inner = optax.adamw(1e-2, weight_decay=0.1)
    tx = {"static": lambda: dst.static_random(inner, 0.75),
          "set": lambda: dst.sparse_evolutionary(inner, 0.75, update_every=5),
          "rigl": lambda: dst.rigl(inner, 0.75, update_every=5, end_step=40),
          "snfs": lambda: dst.snfs(inner, 0.75, update_every=5, end_step=40)}[method]()
    history, _, _ = run(tx, 40, start_masked=False)
    total = sum(planned(0.75, "erk" if method == "rigl" else "uniform").values())
    for params, state in history[1:]:
        nonzero = 0
        for p in KERNELS:
            w, m = np.asarray(leaf(params, p)), np.asarray(leaf(state.masks, p))
            assert (w[~m] == 0).all()
            nonzero += int((w != 0).sum())
        assert nonzero <= total
    assert (np.asarray(history[-1][0]["b"]["bias"]) != 1).all()  # untouched leaves train


# ----------------------------------------------------------------------------- training


@pytest.mark.parametrize("method", ["static", "set", "rigl", "snfs", "acdc"])
def test_trains_the_reference_cnn_in_one_trace(method):
    model = zoo.get_model("refcnn", width=8, num_classes=3)  # the benchmarks' CNN, narrow
    y = jax.random.randint(jax.random.key(6), (32,), 0, 3)
    # Learnable labels: the class's channel is brighter.
    x = jax.random.normal(jax.random.key(5), (32, 8, 8, 3)) + jax.nn.one_hot(y, 3)[:, None, None]
    params = model.init(jax.random.key(7), x)["params"]
    inner = optax.adam(1e-2)  # scale-free steps: 70%-sparse deep ReLU stacks start tiny
    tx = {"static": lambda: dst.static_random(inner, 0.7),
          "set": lambda: dst.sparse_evolutionary(inner, 0.7, update_every=10),
          "rigl": lambda: dst.rigl(inner, 0.7, update_every=10, end_step=40),
          "snfs": lambda: dst.snfs(inner, 0.7, update_every=10, end_step=40),
          "acdc": lambda: acdc(inner, 0.7, warmup_steps=5, sparse_steps=10,
                               finetune_step=35)}[method]()
    state = tx.init(params)
    params = apply_masks(params, state.masks)
    traces = []

    @jax.jit
    def step(params, state):
        traces.append(1)

        def loss_fn(p):
            logits = model.apply({"params": p}, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    losses = []
    for _ in range(50):
        params, state, loss = step(params, state)
        losses.append(float(loss))
    assert len(traces) == 1 and step._cache_size() == 1  # no retrace, no recompilation
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    for path, m in flatten(state.masks)[0]:
        if m is not None:
            assert (np.asarray(leaf(params, path))[~np.asarray(m)] == 0).all()


# ----------------------------------------------------------------------------- state mapping


class BareState(NamedTuple):
    extra: jax.Array


def bare(shape):
    """A transform whose state holds one array of a kernel's shape outside a params tree."""
    return optax.GradientTransformation(lambda params: BareState(jnp.zeros(shape)),
                                        lambda u, s, params=None: (u, s))


def test_ambiguous_state_leaf_is_refused_naming_its_path():
    tx = dst.rigl(optax.chain(bare((16, 12)), optax.sgd(0.1)), 0.5, end_step=10)
    with pytest.raises(ValueError, match=r"state leaf '0/extra' has the shape \(16, 12\)"):
        tx.init(PARAMS)
    tx = dst.rigl(optax.chain(bare((16, 12)), optax.sgd(0.1)), 0.5, end_step=10,
                  keep_state="extra")
    tx.init(PARAMS)  # kept on purpose
    dst.rigl(optax.chain(bare((5,)), optax.sgd(0.1)), 0.5, end_step=10).init(PARAMS)


def test_factored_state_leaf_is_refused_unless_kept():
    big = {"w": jnp.ones((256, 256))}
    tx = dst.snfs(optax.adafactor(1e-2), 0.5, end_step=10)
    with pytest.raises(ValueError, match=r"'0/v_row/w' \(256,\) belongs to the pruned parameter"):
        tx.init(big)
    tx = dst.snfs(optax.adafactor(1e-2), 0.5, end_step=10, keep_state=["v_row", "v_col"])
    state = tx.init(big)
    updates, _ = jax.jit(tx.update)({"w": jnp.ones((256, 256))}, state, big)
    assert int((optax.apply_updates(big, updates)["w"] != 0).sum()) == 256 * 128


def test_wrapped_state_reset_in_multisteps_and_injected_hyperparams():
    inner = optax.MultiSteps(optax.inject_hyperparams(optax.adam)(learning_rate=1e-2), 1)
    tx = dst.rigl(inner, 0.6, update_every=2, end_step=20, distribution="uniform")
    history, _, _ = run(tx, 3)
    (_, before), (_, after) = history[2], history[3]
    m_old, m_new = (np.asarray(leaf(s.masks, "a/kernel")) for s in (before, after))
    changed = m_old != m_new
    assert changed.any()
    states = state_leaves(after.inner_state, "a/kernel")
    inner = "inner_opt_state/inner_state/0"
    assert {f"{inner}/mu/a/kernel", f"{inner}/nu/a/kernel", "acc_grads/a/kernel"} <= set(states)
    for name, s in states.items():
        assert (s[changed] == 0).all(), name


# ----------------------------------------------------------------------------- checks


def test_rigl_without_gradients_at_inactive_positions_raises():
    def masked_grads(params, step):  # what a model that multiplies params by masks would give
        return jax.tree.map(lambda g, p: jnp.where(p != 0, g, 0.0), random_grads(params, step),
                            params)

    tx = dst.rigl(optax.sgd(0.1), 0.5, update_every=2, end_step=10)
    with pytest.raises(Exception, match="gradients are exactly 0 at every inactive position"):
        run(tx, 3, grads_fn=masked_grads)


def test_transform_after_the_wrapper_is_caught():
    tx = optax.chain(dst.sparse_evolutionary(optax.sgd(0.1), 0.5), optax.scale(0.5))
    with pytest.raises(Exception, match="non-zero weights that its masks prune"):
        run(tx, 3, start_masked=False)  # DSTState is inside the chain: masks via [0]


def test_update_without_params_raises():
    tx = dst.static_random(optax.sgd(0.1), 0.5)
    state = tx.init(PARAMS)
    with pytest.raises(ValueError, match="needs the params"):
        tx.update(PARAMS, state)


@pytest.mark.parametrize("build,match", [
    (lambda: dst.rigl(optax.sgd(0.1), 0.9, end_step=10, drop_fraction=1.0),
     r"rigl\(drop_fraction=...\) must be a number in \[0, 1\)"),
    (lambda: dst.sparse_evolutionary(optax.sgd(0.1), 0.9, drop_fraction=-0.1),
     r"sparse_evolutionary\(drop_fraction=...\) must be a number in \[0, 1\)"),
    (lambda: dst.rigl(optax.sgd(0.1), 0.9, end_step=10, update_every=0),
     r"rigl\(update_every=...\) must be an integer >= 1"),
    (lambda: dst.snfs(optax.sgd(0.1), 0.9, end_step=10, update_every=-5),
     r"snfs\(update_every=...\) must be an integer >= 1"),
    (lambda: dst.rigl(optax.sgd(0.1), 0.9, end_step=0),
     r"rigl\(end_step=...\) must be an integer >= 1"),
    (lambda: dst.sparse_evolutionary(optax.sgd(0.1), 0.9, end_step=-1),
     r"sparse_evolutionary\(end_step=...\) must be an integer >= 1"),
    (lambda: dst.rigl(optax.sgd(0.1), 1.0, end_step=10),
     r"sparsity for 'rigl\(sparsity\)' must be in \[0, 1\)"),
    (lambda: dst.static_random(optax.sgd(0.1), -0.2),
     r"sparsity for 'static_random\(sparsity\)' must be in \[0, 1\)"),
    (lambda: dst.static_random(optax.sgd(0.1), "0.5"),
     r"static_random\(sparsity=...\) must be a number"),
    (lambda: dst.rigl(0.9, 0.9, end_step=10),
     r"rigl\(optimizer=...\) must be the optax optimizer it wraps.*raw gradients"),
    (lambda: dst.snfs(optax.sgd(0.1), 0.9, end_step=10, distribution="global"),
     r"snfs\(distribution=...\) must be 'uniform'.*or 'erk'"),
    (lambda: dst.snfs(optax.sgd(0.1), 0.9, end_step=10, momentum=1.0),
     r"snfs\(momentum=...\) must be a number in \[0, 1\)"),
    (lambda: dst.static_random(optax.sgd(0.1), 0.5, seed=1.5),
     r"static_random\(seed=...\) must be an integer"),
])
def test_bad_inputs_raise(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_get_masks_finds_the_dst_masks():
    params = {"w": jnp.ones((8, 8)), "b": jnp.ones((8,))}
    state = dst.rigl(optax.sgd(0.1), 0.75, end_step=100).init(params)
    masks = sparsejax.get_masks(state)
    assert masks["b"] is None and int(masks["w"].sum()) == 16


# ----------------------------------------------------------------------------- experiment stack


def test_dst_state_masks_survive_a_checkpoint(tmp_path):
    from sparsejax.experiment.checkpoint import Checkpointer

    tx = dst.rigl(optax.sgd(0.1, momentum=0.9), 0.6, update_every=2, end_step=20)
    history, _, _ = run(tx, 5)
    params, state = history[-1]
    assert any((counts(state.masks)[p] > 0) for p in KERNELS)
    changed = {p: (leaf(state.masks, p) != leaf(history[0][1].masks, p)).any() for p in KERNELS}
    assert any(changed.values())  # the masks moved: restoring the init ones would fail below
    checkpointer = Checkpointer(str(tmp_path))
    checkpointer.save(5, {"params": params, "opt_state": state})
    checkpointer.close()
    template = {"params": PARAMS, "opt_state": tx.init(PARAMS)}
    restored = Checkpointer(str(tmp_path)).restore(template)
    for p in KERNELS:
        np.testing.assert_array_equal(leaf(restored["opt_state"].masks, p), leaf(state.masks, p))
        np.testing.assert_array_equal(leaf(restored["opt_state"].inner_state[0].trace, p),
                                      leaf(state.inner_state[0].trace, p))
    assert int(restored["opt_state"].count) == 5
    assert restored["opt_state"].masks["b"]["bias"] is None


def _recipe_phase(name, main_steps=1000, run_seed=0, **kwargs):
    import ml_collections

    from sparsejax.experiment import recipes

    config = ml_collections.ConfigDict({"seed": run_seed, "method": {"name": name, **kwargs}})
    [phase] = recipes.build_phases(config, main_steps, 100)
    return phase


@pytest.mark.parametrize("name", ["static", "set", "rigl", "snfs"])
def test_recipe_masks_follow_the_runs_seed(name):
    """Every seed of a sweep draws its own random masks (the recipe's seed is an offset)."""
    def masks(run_seed, offset=0):
        tx = _recipe_phase(name, run_seed=run_seed, seed=offset).optimizer_wrapper(
            optax.sgd(0.1))
        return np.concatenate([np.asarray(leaf(tx.init(PARAMS).masks, p)).ravel()
                               for p in KERNELS])

    assert (masks(0) == masks(0)).all()
    assert (masks(1) != masks(0)).any()
    assert (masks(1) == masks(0, offset=1)).all()


@pytest.mark.parametrize("name,kwargs", [
    ("static", {"sparsity": 0.75}), ("set", {"update_every": 3}), ("rigl", {"end": 0.5}),
    ("snfs", {"momentum": 0.8}),
    ("acdc", {"warmup": 0.0, "sparse_phase": 0.5, "dense_phase": 0.125, "finetune": 1.0})])
def test_recipes_wrap_the_optimizer_and_keep_exact_zeros(name, kwargs):
    phase = _recipe_phase(name, main_steps=8, **kwargs)
    assert phase.pruning is None and phase.num_steps == 8
    tx = phase.optimizer_wrapper(optax.sgd(0.1, momentum=0.9))
    history, _, traces = run(tx, 6, start_masked=False)
    assert traces == 1
    params, state = history[-1]
    if name == "acdc":  # steps 0-3 sparse, 4 dense, 5 sparse (uniform 0.9): keep_count each
        assert counts(state.masks) == {p: keep_count(0.9, math.prod(s)) for p, s in SHAPES.items()}
    else:
        assert sum(counts(state.masks).values()) == sum(
            planned(kwargs.get("sparsity", 0.9), "erk").values())
    for p in KERNELS:
        assert (leaf(params, p)[~np.asarray(leaf(state.masks, p))] == 0).all()


def test_recipe_arguments_are_checked_at_config_time():
    from sparsejax.experiment.config import ConfigError

    with pytest.raises(ValueError, match=r"rigl\(drop_fraction=...\) must be a number in \[0, 1\)"):
        _recipe_phase("rigl", drop_fraction=1.0)
    with pytest.raises(ValueError, match=r"set\(update_every|sparse_evolutionary\(update_every"):
        _recipe_phase("set", update_every=0)
    with pytest.raises(ConfigError, match=r"config.method.end must be a fraction"):
        _recipe_phase("snfs", end=0.0)
    with pytest.raises(ValueError, match=r"acdc\(reset_state=...\)"):
        _recipe_phase("acdc", reset_state="sometimes")
    with pytest.raises(ConfigError, match=r"config.method.warmup must be a fraction"):
        _recipe_phase("acdc", warmup=1.5)


def test_acdc_recipe_reports_its_mean_sparse_fraction():
    phase = _recipe_phase("acdc", main_steps=100, warmup=0.1, sparse_phase=0.2,
                          dense_phase=0.1, finetune=0.8)
    # By hand: 0-9 dense (warm-up), 10-29 sparse, 30-39 dense, 40-59 sparse, 60-69 dense,
    # 70-89 sparse, 80-99 sparse (fine-tuning) -> 20 + 20 + 30 = 70 sparse steps of 100
    assert phase.mean_sparsity_ratio == pytest.approx(0.7)


@pytest.mark.parametrize("method,extra,sparsity", [
    ("rigl", {}, 0.9), ("acdc", {"finetune": 0.5}, 0.9)])
def test_recipe_trains_end_to_end_and_reports_its_sparsity(tmp_path, method, extra, sparsity):
    import importlib.util
    import json
    import os

    import ml_collections
    import tensorflow_datasets as tfds

    from sparsejax.experiment import train

    path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "experiments", "dst.py")
    spec = importlib.util.spec_from_file_location("dst_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(f"method={method},sparsity={sparsity},smoke")
    config.model = ml_collections.ConfigDict({"name": "mlp", "kwargs": {"features": (32, 16)}})
    config.num_steps = 4
    config.checkpoint_every_steps = 2
    config.method.update(extra)
    with tfds.testing.mock_data(num_examples=64):
        summary = train.train_and_evaluate(config, str(tmp_path))
    assert summary["steps"] == 4 and summary["phases"][0]["method"] == method
    assert summary["weight_sparsity"] == pytest.approx(sparsity, abs=0.02)
    assert summary["train_flops_ratio"] < 1.0 and summary["step_flops_ratio"] < 1.0
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert all(np.isfinite(r["loss"]) for r in records)
