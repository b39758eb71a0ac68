"""What the linen and NNX adapters share: running one layer under a method.

:func:`run_layer` is the single place where a :class:`~sparsejax.methods.Method`
meets the sparse ops: it asks the method for the layer's policy and dynamic
inputs, calls :func:`sparsejax.ops.sparse_dot_general_with_stats` or
:func:`sparsejax.ops.sparse_conv_general_dilated_with_stats` (or the plain
``lax`` op when the method leaves the call dense), and returns the new state
the adapter stores. :func:`sparse_einsum` routes ``jnp.einsum`` through the
same dot op with the activation as ``lhs``.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax import lax

from sparsejax import monitor, ops
from sparsejax.methods import LayerInfo, Method, State

Array = jax.Array

# Name of the variable collection (linen) holding the per-layer method state.
COLLECTION = "sparsity"
# Name of the collection the activation-sparsity monitor sows into.
METRICS = "sparsity_metrics"


class LayerResult(NamedTuple):
    """Output of :func:`run_layer`."""

    y: Array
    state: State
    shared: Optional[State]
    metrics: Optional[dict[str, Array]]


def run_layer(method: Method, info: LayerInfo, sparsity: float, state: State,
              shared: Optional[State], training: bool, op: str, lhs: Any, rhs: Any,
              args: tuple, kwargs: dict, metrics: Optional[monitor.MonitorConfig] = None
              ) -> LayerResult:
    """Runs one ``dot_general`` / ``conv_general_dilated`` call of a sparse layer.

    Args:
      method: the method.
      info: the layer.
      sparsity: the layer's static sparsity (``method.sparsities(...)[path]``).
      state: the layer's state (arrays).
      shared: the method's cross-layer state, or ``None``.
      training: whether the state advances (training) or is read-only (eval).
      op: ``"dot"`` or ``"conv"``.
      lhs: the activation.
      rhs: the kernel.
      args: the op's remaining positional arguments (as Flax passes them).
      kwargs: the op's keyword arguments; ``out_sharding=None`` is dropped.
      metrics: monitor settings, or ``None`` for no metrics.

    Returns:
      The output, the new state and shared state (unchanged unless training) and
      the monitor metrics (or ``None``).
    """
    kwargs = dict(kwargs)
    if kwargs.get("out_sharding", None) is None:
        kwargs.pop("out_sharding", None)
    policy, aux = method.policy_aux(info, sparsity, state, shared, training)
    if policy is None:
        dense = lax.dot_general if op == "dot" else lax.conv_general_dilated
        y = dense(lhs, rhs, *args, **kwargs)
        stats = None
    else:
        fn = (ops.sparse_dot_general_with_stats if op == "dot"
              else ops.sparse_conv_general_dilated_with_stats)
        y, stats = fn(lhs, rhs, *args, policy=policy, aux=aux, where=info.path, **kwargs)
        if training:
            state, shared = method.update(info, state, shared, stats, rhs)
    out = None
    if metrics is not None:
        out = monitor.layer_metrics(lhs, stats, metrics)
    return LayerResult(y, state, shared, out)


def einsum_out_features(einsum_str: str, kernel_shape: tuple[int, ...]) -> int:
    """Product of the kernel dims that appear in the einsum's output.

    Example:
      >>> einsum_out_features("bi,io->bo", (3, 4))
      4
    """
    inputs, out = einsum_str.replace(" ", "").split("->")
    rhs = inputs.split(",")[1]
    if "." in rhs:
        raise ValueError(f"einsum {einsum_str!r}: an ellipsis in the kernel operand is not "
                         "supported by the sparse adapters; write the kernel dims explicitly.")
    return math.prod(n for c, n in zip(rhs, kernel_shape) if c in out)


def sparse_einsum(einsum_str: str, inputs: Array, kernel: Array, *, precision: Any,
                  preferred_element_type: Any, dot: Callable[..., Array], where: str) -> Array:
    """``jnp.einsum(einsum_str, inputs, kernel)`` with its contraction run by ``dot``.

    ``jnp.einsum`` may pass the operands to ``dot_general`` in either order; the
    call is normalised so that ``dot(lhs=activation, rhs=kernel, ...)`` always
    holds (and the output transposed back), identified by the kernel's shape.

    Args:
      einsum_str: a two-operand explicit equation, the kernel second.
      inputs: the activation.
      kernel: the kernel.
      precision: as ``jnp.einsum``.
      preferred_element_type: as ``jnp.einsum``.
      dot: a ``dot_general``-compatible function of ``(lhs, rhs, dims, precision,
        preferred_element_type)``.
      where: layer path for error messages.

    Returns:
      The einsum's result.
    """
    kshape = tuple(kernel.shape)
    if tuple(inputs.shape) == kshape:
        raise ValueError(f"{where}: the einsum input and kernel have the same shape {kshape}, "
                         "so the sparse adapter cannot tell them apart inside jnp.einsum; "
                         "exclude the layer.")

    def dg(a, b, dims, precision=None, preferred_element_type=None, **kw):
        if kw.get("out_sharding") is not None:
            raise NotImplementedError(f"{where}: sparse einsum does not take out_sharding.")
        if tuple(b.shape) == kshape:
            return dot(a, b, dims, precision, preferred_element_type)
        if tuple(a.shape) != kshape:
            raise ValueError(f"{where}: jnp.einsum reshaped the kernel before contracting "
                             f"(equation {einsum_str!r}); the sparse adapter needs every kernel "
                             "dim contracted or kept. Exclude the layer.")
        (ac, bc), (ab, bb) = dims
        y = dot(b, a, ((bc, ac), (bb, ab)), precision, preferred_element_type)
        nb = len(ab)
        n_b_free = b.ndim - len(bc) - nb
        n_a_free = a.ndim - len(ac) - nb
        perm = (tuple(range(nb)) + tuple(range(nb + n_b_free, nb + n_b_free + n_a_free))
                + tuple(range(nb, nb + n_b_free)))
        return jnp.transpose(y, perm)

    return jnp.einsum(einsum_str, inputs, kernel, precision=precision,
                      preferred_element_type=preferred_element_type, _dot_general=dg)


def no_layers_error(found: dict[str, str], supported: str) -> ValueError:
    """The error for a model in which no supported layer was called."""
    kinds = sorted(set(found.values()))
    return ValueError(
        f"sparsify found no supported linear layer ({supported}) in the model; it called "
        f"{', '.join(kinds) if kinds else 'no submodules'}. Build the model from stock Flax "
        "layers, or call sparsejax.ops.sparse_dot_general / sparse_conv_general_dilated "
        "directly in custom layers.")
