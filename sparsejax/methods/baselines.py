"""Baselines: the dense method and weight-gradient drop (an optax transform)."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import optax

from sparsejax import paths, select
from sparsejax.methods.base import Array, Method
from sparsejax.validate import check_sparsity


@dataclasses.dataclass(frozen=True)
class Dense(Method):
    """The dense baseline, so experiment code can treat every run alike.

    :func:`sparsejax.adapters.sparsify` with it returns a model that runs
    exactly like the original and adds no state.

    Example:
      >>> model = sparsify(zoo.get_model("refcnn"), dense())
    """

    name: ClassVar[str] = "dense"

    def choose_layers(self, layers, chosen):
        return []

    def sparsities(self, shapes):
        return {}

    def policy_aux(self, info, sparsity, state, shared, training):
        return None, None


dense = Dense


# ---------------------------------------------------------------- grad drop


class GradDropState(NamedTuple):
    """State of :func:`grad_drop`: the step count."""

    count: Array


def grad_drop(sparsity: float, *, include: Any = None,
              exclude: Any = None) -> optax.GradientTransformation:
    """Weight-gradient drop: zero the smallest-magnitude fraction of each dW.

    Put it first in the optimizer chain (before momentum / the optimizer), e.g.
    ``optax.chain(grad_drop(0.99), optax.sgd(0.1, momentum=0.9))``; the model
    stays unmodified. Each selected leaf keeps exactly its
    ``ceil((1 − sparsity) · size)`` largest-magnitude gradient entries (one
    :func:`sparsejax.select.select_topk` per leaf). Leaves are selected like the
    pruning functions (default: floating kernels with ``ndim >= 2``; ``include`` /
    ``exclude`` regexes on ``"Dense_0/kernel"``-style paths); others pass through.

    Args:
      sparsity: fraction of each selected gradient zeroed, in ``[0, 1)``.
      include: optional path rule replacing the default selection.
      exclude: optional path rule of leaves left untouched.

    Returns:
      An ``optax.GradientTransformation``.

    Example:
      >>> tx = optax.chain(grad_drop(0.9), optax.sgd(0.1, momentum=0.9))

    References:
      Aji & Heafield, "Sparse Communication for Distributed Gradient Descent",
      EMNLP 2017.
    """
    check_sparsity(sparsity, "grad_drop(sparsity=...)")

    def init_fn(params):
        del params
        return GradDropState(count=jnp.zeros((), jnp.int32))

    def update_fn(updates, state, params=None):
        del params
        chosen = set(paths.selected_paths(updates, include, exclude))
        pairs, treedef = paths.flatten(updates)
        out = []
        for path, g in pairs:
            if path in chosen:
                [m] = select.select_topk([select.magnitude_keys(g)], select.keep_count(sparsity, g.size))
                g = jnp.where(m, g, jnp.zeros((), g.dtype))
            out.append(g)
        return jax.tree_util.tree_unflatten(treedef, out), GradDropState(count=state.count + 1)

    return optax.GradientTransformation(init_fn, update_fn)
