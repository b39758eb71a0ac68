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
