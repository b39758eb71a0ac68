"""Tests for sparsejax.alternating: AC/DC's schedule, masks, exact zeros and optimizer resets."""

import math

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sparsejax.alternating import acdc, sparse_phase
from sparsejax.distributions import erk_sparsities
from sparsejax.select import keep_count
import references

PARAMS = references.wrapper_params()
KERNELS = ("a/kernel", "b/kernel")
SHAPES = {"a/kernel": (16, 12), "b/kernel": (12, 8)}
SCHEDULE = dict(warmup_steps=3, sparse_steps=5, dense_steps=4, finetune_step=30)


def leaf(tree, path):
    for key in path.split("/"):
        tree = tree[key]
    return np.asarray(tree)


def np_schedule(total, warmup_steps, sparse_steps, dense_steps=None, finetune_step=None):
    """Hand-built list of sparse (True) / dense (False) steps: warm-up, then phases
    appended one after another, then everything from finetune_step on sparse."""
    dense_steps = sparse_steps if dense_steps is None else dense_steps
    out = [False] * warmup_steps
    while len(out) < total:
        out += [True] * sparse_steps + [False] * dense_steps
    out = out[:total]
    if finetune_step is not None:
        out = out[:finetune_step] + [True] * max(total - finetune_step, 0)
    return out


def run(tx, steps, params=PARAMS):
    """``steps`` jitted updates from ``params`` (not masked first)."""
    return references.run_steps(tx, steps, params)


def np_topk_mask(w, k):
    """Numpy reference: the k largest |w| (ties to the lower flat index)."""
    flat = np.abs(w).ravel()
    order = np.argsort(-flat, kind="stable")
    mask = np.zeros(flat.size, bool)
    mask[order[:k]] = True
    return mask.reshape(w.shape)


@pytest.mark.parametrize("schedule", [
    SCHEDULE, dict(warmup_steps=0, sparse_steps=2, dense_steps=3, finetune_step=None),
    dict(warmup_steps=4, sparse_steps=3, dense_steps=None, finetune_step=7),
    dict(warmup_steps=1, sparse_steps=1, dense_steps=1, finetune_step=0)])
def test_schedule_matches_numpy_reference(schedule):
    expected = np_schedule(45, **schedule)
    got = np.asarray(sparse_phase(jnp.arange(45), **schedule))
    assert got.tolist() == expected
    assert [bool(sparse_phase(t, **schedule)) for t in range(45)] == expected


@pytest.mark.parametrize("distribution", ["uniform", "erk", "global"])
def test_sparse_phases_exact_zeros_counts_and_topk_masks(distribution):
    tx = acdc(optax.adamw(1e-2, weight_decay=0.1), 0.75, distribution=distribution, **SCHEDULE)
    history, _, traces = run(tx, 40)
    assert traces == 1
    expected = np_schedule(40, **SCHEDULE)
    per_layer = (erk_sparsities(SHAPES, 0.75) if distribution == "erk"
                 else {p: 0.75 for p in SHAPES})
    n_keep = {p: keep_count(per_layer[p], math.prod(s)) for p, s in SHAPES.items()}
    for t, sparse in enumerate(expected):
        (before, state_before), (after, state) = history[t], history[t + 1]
        masks = {p: leaf(state.masks, p) for p in KERNELS}
        if not sparse:
            assert all(m.all() for m in masks.values()), t
            continue
        for p in KERNELS:  # pruned weights exactly 0 after the step
            assert (leaf(after, p)[~masks[p]] == 0).all(), (t, p)
        if distribution == "global":
            total = keep_count(0.75, sum(math.prod(s) for s in SHAPES.values()))
            assert sum(int(m.sum()) for m in masks.values()) == total
        else:
            assert {p: int(m.sum()) for p, m in masks.items()} == n_keep, t
        starts = t == 0 or not expected[t - 1]
        if starts:  # fresh magnitude masks from the params before the step
            if distribution == "global":
                flat = np.concatenate([leaf(before, p).ravel() for p in KERNELS])
                ref = np_topk_mask(flat, total)
                ref = dict(zip(KERNELS, np.split(ref, [math.prod(SHAPES["a/kernel"])])))
                ref = {p: ref[p].reshape(SHAPES[p]) for p in KERNELS}
            else:
                ref = {p: np_topk_mask(leaf(before, p), n_keep[p]) for p in KERNELS}
            for p in KERNELS:
                np.testing.assert_array_equal(masks[p], ref[p])
        else:  # fixed within a phase
            for p in KERNELS:
                np.testing.assert_array_equal(masks[p], leaf(state_before.masks, p))
    assert (leaf(history[-1][0], "b/bias") != 1).all()  # untouched leaves train


def test_dense_phase_regrows_pruned_weights_from_zero():
    tx = acdc(optax.sgd(0.1), 0.75, reset_state="none", **SCHEDULE)
    history, grads, _ = run(tx, 13)
    sparse_end = history[8][0]  # after steps 3..7 (sparse)
    dense_first = history[9][0]  # after step 8, the first dense step
    for p in KERNELS:
        pruned = leaf(sparse_end, p) == 0
        assert pruned.sum() >= 0.75 * pruned.size - 1
        # Plain SGD: a pruned weight restarts at 0 - lr * g.
        np.testing.assert_allclose(leaf(dense_first, p)[pruned],
                                   -0.1 * leaf(grads[8], p)[pruned], rtol=1e-6)


@pytest.mark.parametrize("opt", ["sgd_momentum", "adam"])
@pytest.mark.parametrize("reset", ["none", "dense", "all"])
def test_optimizer_state_reset_at_phase_starts(opt, reset):
    inner = {"sgd_momentum": optax.sgd(0.1, momentum=0.9),
             "adam": optax.adam(1e-2, b1=0.9, b2=0.999)}[opt]
    tx = acdc(inner, 0.75, reset_state=reset, **SCHEDULE)
    history, grads, _ = run(tx, 14)
    expected = np_schedule(14, **SCHEDULE)

    def moments(state, p):
        if opt == "sgd_momentum":
            return [leaf(state.inner_state[0].trace, p)]
        return [leaf(state.inner_state[0].mu, p), leaf(state.inner_state[0].nu, p)]

    def fresh(g):  # the state after one step from zero with gradient g
        return [g] if opt == "sgd_momentum" else [0.1 * g, 0.001 * g * g]

    for t in range(1, 14):
        starts_dense = not expected[t] and expected[t - 1]
        starts_sparse = expected[t] and not expected[t - 1]
        was_reset = (reset == "dense" and starts_dense) or (
            reset == "all" and (starts_dense or starts_sparse))
        mask_after = {p: leaf(history[t + 1][1].masks, p) for p in KERNELS}
        for p in KERNELS:
            g = leaf(grads[t], p) * mask_after[p]
            for got, want in zip(moments(history[t + 1][1], p), fresh(g)):
                if was_reset:
                    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
                else:
                    assert not np.allclose(got, want, rtol=1e-3), (t, p)
        # Untouched leaves are never reset.
        bias = (history[t + 1][1].inner_state[0].trace if opt == "sgd_momentum"
                else history[t + 1][1].inner_state[0].mu)["b"]["bias"]
        assert not np.allclose(np.asarray(bias), fresh(leaf(grads[t], "b/bias"))[0], rtol=1e-3)


@pytest.mark.parametrize("kwargs,match", [
    (dict(sparse_steps=0, warmup_steps=2), r"acdc\(sparse_steps=...\) must be an integer >= 1"),
    (dict(sparse_steps=5, warmup_steps=2, dense_steps=0),
     r"acdc\(dense_steps=...\) must be an integer >= 1"),
    (dict(sparse_steps=5, warmup_steps=-1), r"acdc\(warmup_steps=...\) must be an integer >= 0"),
    (dict(sparse_steps=5, warmup_steps=1, finetune_step=-3),
     r"acdc\(finetune_step=...\) must be an integer >= 0"),
    (dict(sparse_steps=5.5, warmup_steps=1), r"acdc\(sparse_steps=...\) must be an integer"),
    (dict(sparse_steps=5, warmup_steps=1, reset_state="momentum"),
     r"acdc\(reset_state=...\) must be one of 'none', 'dense', 'all'"),
    (dict(sparse_steps=5, warmup_steps=1, distribution="random"),
     r"acdc\(distribution=...\) must be 'uniform'.*'erk'.*'global'"),
])
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        acdc(optax.sgd(0.1), 0.9, **kwargs)


@pytest.mark.parametrize("sparsity", [1.0, -0.1])
def test_bad_sparsity_raises(sparsity):
    with pytest.raises(ValueError, match=r"sparsity for 'acdc\(sparsity\)' must be in \[0, 1\)"):
        acdc(optax.sgd(0.1), sparsity, warmup_steps=1, sparse_steps=2)


def test_weights_changed_outside_the_optimizer_are_caught():
    tx = optax.chain(acdc(optax.sgd(0.1), 0.5, warmup_steps=0, sparse_steps=5), optax.scale(0.5))
    state = tx.init(PARAMS)
    params = PARAMS
    with pytest.raises(Exception, match="non-zero weights that its masks prune"):
        for t in range(3):
            updates, state = tx.update(references.random_grads(params, t), state, params)
            params = optax.apply_updates(params, updates)
