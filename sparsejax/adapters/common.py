"""What the linen and NNX adapters share: running one layer under a method.

:func:`run_layer` is the single place where a :class:`~sparsejax.methods.Method`
meets the sparse ops: it asks the method for the layer's policy and dynamic
inputs, calls :func:`sparsejax.ops.sparse_dot_general_with_stats` or
:func:`sparsejax.ops.sparse_conv_general_dilated_with_stats` (or the plain
``lax`` op when the method leaves the call dense), and returns the new state
the adapter stores. :func:`sparse_einsum` routes ``jnp.einsum`` through the
same dot op with the activation as ``lhs``. :class:`SharedActivations` lets
the layers that read one activation tensor save one masked copy of it.
"""

from __future__ import annotations

import math
import weakref
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax import lax

from sparsejax import monitor, ops
from sparsejax.methods import LayerInfo, Method, State
from sparsejax.sparsifiers import Cached

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


class SharedActivations:
    """Trace-time record letting layers that read one activation share its saved copy.

    At a ResNet stage boundary a block's output feeds two sparse layers, the next
    block's first conv and its projection shortcut, and each saves the top-K of
    that one tensor for its dW. With exact thresholds (SWAT ``period=1``) both
    layers compute the same threshold from the same tensor and XLA merges the
    two saved copies. With cached thresholds (``period > 1``) each layer reads
    its threshold and refresh flag from its own state: the values are always
    equal (the same tensor, sparsity and step), but XLA cannot know it and keeps
    one masked, transposed copy per layer (13 MiB of a ResNet-18 step at batch
    32). :meth:`share` hands every later reader of a tensor the first reader's
    threshold and refresh flag, so the copies are one value again; each layer
    still stores the threshold it used, which is then the same in both states.

    Readers are matched by the identity of the value they receive, which is one
    tracer per tensor under ``jit`` (the only place where XLA sees the copies
    together); an eager ``jax.grad`` re-wraps the tensor for every layer, so there
    each layer reads its own (equal) threshold. One instance lives for one model
    call (linen) or one sparsified model (NNX); it holds weak references only,
    so no tracer outlives its trace through it.

    Example:
      >>> shared, x = SharedActivations(), jnp.ones((2, 3))
      >>> first = shared.share(x, Cached(0.8), ops.Aux(a_threshold=jnp.float32(1.)))
      >>> float(shared.share(x, Cached(0.8), ops.Aux(a_threshold=jnp.float32(2.))).a_threshold)
      1.0

    References:
      Raihan & Aamodt, NeurIPS 2020 (``topk_period`` in the official code).
    """

    def __init__(self):
        # Weak references only: (tensor, rule, its first reader's threshold and refresh flag).
        self._seen: list[tuple[weakref.ref, Cached, weakref.ref, Optional[weakref.ref]]] = []

    def __reduce__(self):
        # A copied or pickled model starts with an empty record (it only ever
        # describes the trace in progress).
        return SharedActivations, ()

    def share(self, lhs: Any, rule: Any, aux: Optional[ops.Aux]) -> Optional[ops.Aux]:
        """``aux`` with the cached activation threshold of the first reader of ``lhs``.

        Args:
          lhs: the layer's activation (array or tracer; compared by identity).
          rule: the policy's ``act_saved`` rule; only :class:`Cached` rules with
            a static sparsity (no per-layer ``a_sparsity``, which SWAT-M sets)
            are shared, and only with an equal rule.
          aux: the layer's dynamic inputs.

        Returns:
          ``aux``, its ``a_threshold`` / ``a_refresh`` replaced by those of the
          first layer that read ``lhs`` under the same rule, if any.
        """
        if (not isinstance(rule, Cached) or aux is None or aux.a_threshold is None
                or aux.a_sparsity is not None):
            return aux
        self._seen = [e for e in self._seen if e[0]() is not None]
        for tensor, seen_rule, threshold, refresh in self._seen:
            if (tensor() is lhs and seen_rule == rule
                    and (refresh is None) == (aux.a_refresh is None)):
                t, r = threshold(), refresh and refresh()
                if t is None or (refresh is not None and r is None):
                    return aux
                return aux._replace(a_threshold=t, a_refresh=r)
        try:
            self._seen.append((weakref.ref(lhs), rule, weakref.ref(aux.a_threshold),
                               None if aux.a_refresh is None else weakref.ref(aux.a_refresh)))
        except TypeError:  # a Python scalar: nothing to share
            pass
        return aux


def run_layer(method: Method, info: LayerInfo, sparsity: float, state: State,
              shared: Optional[State], training: bool, op: str, lhs: Any, rhs: Any,
              args: tuple, kwargs: dict, metrics: Optional[monitor.MonitorConfig] = None,
              activations: Optional[SharedActivations] = None) -> LayerResult:
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
      activations: the call's :class:`SharedActivations`, or ``None`` (every
        layer keeps its own saved copy).

    Returns:
      The output, the new state and shared state (unchanged unless training) and
      the monitor metrics (or ``None``).
    """
    kwargs = dict(kwargs)
    if kwargs.get("out_sharding", None) is None:
        kwargs.pop("out_sharding", None)
    policy, aux = method.policy_aux(info, sparsity, state, shared, training)
    if policy is not None and activations is not None:
        aux = activations.share(lhs, policy.act_saved, aux)
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
