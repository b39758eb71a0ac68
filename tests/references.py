"""Helpers shared by the tests: hand references computed without the library, tiny configs."""

from __future__ import annotations

import math

import numpy as np


def np_topk(x, sparsity):
    """Reference whole-tensor top-K mask by a full sort: the ceil((1 - s) * n) largest |x|
    (stable order breaks ties; random data has none)."""
    x = np.asarray(x)
    keep = math.ceil(round((1 - sparsity) * x.size, 9))
    mask = np.zeros(x.size, bool)
    mask[np.argsort(-np.abs(x).ravel(), kind="stable")[:keep]] = True
    return mask.reshape(x.shape)


def tiny_config():
    """A two-step run of a 16-unit MLP on the offline digits (the experiment-stack tests')."""
    import ml_collections

    from sparsejax.experiment import config as config_lib

    config = config_lib.smoke(config_lib.base_config())
    config.model = ml_collections.ConfigDict({"name": "mlp", "kwargs": {"features": (16,)}})
    config.num_steps = 2
    config.checkpoint_every_steps = 0
    return config


def fwd_bwd(f, a, w, ct):
    """Forward output and the (dA, dW) pulled back from ``ct``, under jit."""
    import jax

    @jax.jit
    def run(a_, w_, ct_):
        y, vjp = jax.vjp(f, a_, w_)
        return (y,) + vjp(ct_)

    return run(a, w, ct)


def sgd_losses(model, variables, x, labels, steps, mutable):
    """``steps`` jitted SGD-momentum steps of a linen model on one batch.

    Returns:
      ``(variables, losses, traces)``: the trained variables, the loss of every step
      and how many times the step was traced (1 = no recompilation).
    """
    import jax
    import optax

    tx = optax.sgd(0.05, momentum=0.9)
    opt = tx.init(variables["params"])
    traces = []

    @jax.jit
    def step(v, opt):
        traces.append(1)

        def loss(p):
            logits, upd = model.apply({**v, "params": p}, x, mutable=mutable)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), upd

        (l, upd), g = jax.value_and_grad(loss, has_aux=True)(v["params"])
        u, opt = tx.update(g, opt, v["params"])
        return {**v, **upd, "params": optax.apply_updates(v["params"], u)}, opt, l

    losses = []
    for _ in range(steps):
        variables, opt, l = step(variables, opt)
        losses.append(float(l))
    return variables, losses, len(traces)


# ---------------------------------------------------------------------------------------------
# Masked reference ops for the method-level gradient checks (test_adapters.py). Every mask is
# computed with numpy from the concrete values, so the reference shares no selection code with
# the library; the ops run eagerly only (a jit would hand numpy tracers).


def np_keep_count(sparsity, n):
    """``ceil((1 - s) * n)`` entries kept (rounded first: ``(1 - 0.7) * 10`` is 3)."""
    return math.ceil(round((1 - sparsity) * n, 9))


def np_topk_ties(x, sparsity):
    """SWAT's top-K as the paper states it: keep ``|x| >=`` the k-th largest magnitude of the
    whole tensor, k = ceil((1 - s) * n), so every entry tied at the threshold is kept."""
    a = np.abs(np.asarray(x, np.float32))
    k = np_keep_count(sparsity, a.size)
    if k == 0:
        return np.zeros(a.shape, bool)
    flat = a.ravel()
    return a >= np.partition(flat, flat.size - k)[flat.size - k]


def np_nm(w, n, m, axis):
    """N:M mask: in every group of ``m`` consecutive entries along ``axis`` keep the ``n``
    largest magnitudes (a stable sort: ties to the earlier entry)."""
    a = np.moveaxis(np.abs(np.asarray(w, np.float32)), axis, -1)
    groups = a.reshape(a.shape[:-1] + (a.shape[-1] // m, m))
    rank = np.argsort(np.argsort(-groups, axis=-1, kind="stable"), axis=-1, kind="stable")
    return np.moveaxis((rank < n).reshape(a.shape), -1, axis)


def np_kernel_slices(w, sparsity):
    """Structured SWAT on a conv kernel ``(h, w, in, out)``: the ``ceil((1 - s) * in * out)``
    (input channel, output filter) slices of the largest mean magnitude."""
    score = np.abs(np.asarray(w, np.float32)).mean((0, 1))
    return np.broadcast_to(np_topk(score, sparsity), np.shape(w))


def np_row_topk(x, k):
    """meProp: in every row (all axes but the last, the output features) keep the entries
    ``>=`` the row's k-th largest magnitude."""
    a = np.abs(np.asarray(x, np.float32))
    kth = np.sort(a, axis=-1)[..., -k]
    return a >= kth[..., None]


def np_relu_row_topk(y, sparsity):
    """DSG's neuron selection from exact pre-activations ``y`` (output features last): per
    row keep the ``ceil((1 - s) * F)`` largest ``max(y, 0)``, never a non-positive one."""
    r = np.maximum(np.asarray(y, np.float32), 0)
    kth = np.sort(r, axis=-1)[..., -np_keep_count(sparsity, r.shape[-1])]
    return (r >= kth[..., None]) & (r > 0)


def masked_op(base, *, weight=None, act_saved=None, out=None, grad_out=None, decay=0.0):
    """A drop-in for ``lax.dot_general`` / ``lax.conv_general_dilated`` (``base``) that follows
    one sparse-training rule set, written from the papers' equations (output features last):

    * forward ``Y = base(A, W_s) ⊙ out(Y)``, ``W_s = W ⊙ weight(W)`` (SWAT / STE weights; DSG
      neurons);
    * backward ``G = dY ⊙ out-mask ⊙ grad_out(dY)`` (DSG's mask reused; meProp's top-k per row),
      ``dA = ∂/∂A base(A, W_s)·G`` and the straight-through
      ``dW = ∂/∂W base(A ⊙ act_saved(A), W)·G + decay · (W − W_s)`` (SWAT's top-K saved
      activation; SR-STE's decay of the pruned weights).

    Each rule is a numpy function of the concrete tensor returning a bool mask (``None``: no
    mask), so the op runs eagerly only. The gradients are JAX's own vjps of the dense ``base``.
    """
    import jax
    import jax.numpy as jnp

    def where(mask, x):
        return jnp.where(np.asarray(mask), x, jnp.zeros((), x.dtype))

    def op(a, w, *args, **kwargs):
        f = lambda a_, w_: base(a_, w_, *args, **kwargs)

        def fwd(a_, w_):
            w_s = w_ if weight is None else where(weight(w_), w_)
            y = f(a_, w_s)
            omask = None if out is None else out(y)
            if omask is not None:
                y = where(omask, y)
            a_s = a_ if act_saved is None else where(act_saved(a_), a_)
            return y, (a_, a_s, w_, w_s, omask)

        def bwd(res, g):
            a_, a_s, w_, w_s, omask = res
            if omask is not None:
                g = where(omask, g)
            if grad_out is not None:
                g = where(grad_out(g), g)
            da = jax.vjp(lambda x: f(x, w_s), a_)[1](g)[0]
            dw = jax.vjp(lambda x: f(a_s, x), w_)[1](g)[0]
            return da, dw + decay * (w_ - w_s)

        run = jax.custom_vjp(lambda a_, w_: fwd(a_, w_)[0])
        run.defvjp(fwd, bwd)
        return run(a, w)

    return op


# --- masking optimizer wrappers (sparsejax.dst, sparsejax.alternating) ------------------

def wrapper_params():
    """Two small kernels (and a bias the wrappers leave alone)."""
    import jax
    import jax.numpy as jnp

    return {"a": {"kernel": jax.random.normal(jax.random.key(0), (16, 12))},
            "b": {"kernel": jax.random.normal(jax.random.key(1), (12, 8)), "bias": jnp.ones(8)}}


def random_grads(params, step):
    """Dense random gradients, a different draw per step."""
    import jax

    key = jax.random.fold_in(jax.random.key(42), step)
    return jax.tree.map(lambda x: jax.random.normal(jax.random.fold_in(key, x.size), x.shape),
                        params)


def run_steps(tx, steps, params, grads_fn=random_grads, start_masked=False):
    """``steps`` jitted updates of ``tx``; returns the (params, state) before every step and
    after the last one, the gradients of every step and the number of traces of the step
    (``start_masked``: apply the initial masks to ``params`` first)."""
    import jax
    import jax.numpy as jnp
    import optax

    from sparsejax.tree import apply_masks

    state = tx.init(params)
    if start_masked:
        params = apply_masks(params, state.masks)
    traces = []

    @jax.jit
    def step(params, state, t):
        traces.append(1)
        grads = grads_fn(params, t)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, grads

    history, all_grads = [(params, state)], []
    for t in range(steps):
        params, state, grads = step(params, state, jnp.int32(t))
        history.append((params, state))
        all_grads.append(grads)
    return history, all_grads, len(traces)
