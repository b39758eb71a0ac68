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

import contextlib
import dataclasses
import logging
import math
import warnings
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from sparsejax import ops
from sparsejax.backend_hints import SharedActivations
from sparsejax.analysis import monitor
from sparsejax.methods import LayerInfo, LayerState, Method

Array = jax.Array

# Name of the variable collection (linen) holding the per-layer method state.
COLLECTION = "sparsity"
# Name of the collection the activation-sparsity monitor sows into.
METRICS = "sparsity_metrics"


class LayerResult(NamedTuple):
    """Output of :func:`run_layer`."""

    y: Array
    state: LayerState
    shared: Optional[dict[str, Any]]
    metrics: Optional[dict[str, Array]]


def _checked(method: Method, info: LayerInfo, state: Any, hook: str) -> LayerState:
    """``state`` if it is a ``method.state_type`` pytree; else an error naming the layer and fix."""
    cls = method.state_type
    if type(state) is not cls:
        given = type(state).__name__
        fix = (f"return a {cls.__name__}" if isinstance(state, Mapping) or not isinstance(
            state, LayerState) else f"set the class attribute state_type = {given}")
        raise TypeError(
            f"{type(method).__name__}.{hook} for layer {info.path!r} returned {given}; the "
            f"method's state_type is {cls.__name__}: {fix} (method state is a typed "
            "sparsejax.methods.LayerState; a method with more state subclasses it with "
            "@layer_state and names it in state_type).")
    if jax.tree_util.all_leaves([state]):
        raise TypeError(f"{type(method).__name__}'s state type {cls.__name__} (layer "
                        f"{info.path!r}) is not a JAX pytree: decorate it with "
                        "@sparsejax.methods.layer_state.")
    return state


def initial_state(method: Method, info: LayerInfo, sparsity: float, kernel: Any) -> LayerState:
    """``method.init_state(...)``, checked to be a ``method.state_type`` pytree.

    Raises:
      TypeError: the state is of another type (a dict, as before states were
        typed) or not registered as a pytree; the message names the layer and the fix.
    """
    return _checked(method, info, method.init_state(info, sparsity, kernel), "init_state")


def restore_state(method: Method, path: str, stored: Mapping[str, Any]) -> LayerState:
    """The typed state of layer ``path`` from the fields an adapter stored (one variable each).

    Raises:
      ValueError: the stored fields are not ``method.state_type``'s (variables
        made by another method or configuration); the message names the layer.
    """
    cls = method.state_type
    names = {f.name for f in dataclasses.fields(cls)}
    if "sparsity" not in stored or not stored.keys() <= names:
        raise ValueError(
            f"layer {path!r}: the stored {COLLECTION!r} state has fields {sorted(stored)}, which "
            f"{type(method).__name__}'s {cls.__name__} ({sorted(names)}) cannot hold: the "
            "variables come from another method or configuration; init the model with this "
            "method.")
    return cls(**stored)


def run_layer(method: Method, info: LayerInfo, sparsity: float, state: LayerState,
              shared: Optional[dict[str, Any]], training: bool, op: str, lhs: Any, rhs: Any,
              args: tuple, kwargs: dict, metrics: Optional[monitor.MonitorConfig] = None,
              activations: Optional[SharedActivations] = None) -> LayerResult:
    """Runs one ``dot_general`` / ``conv_general_dilated`` call of a sparse layer.

    Args:
      method: the method.
      info: the layer.
      sparsity: the layer's static sparsity (``method.sparsities(...)[path]``).
      state: the layer's state (a ``method.state_type``).
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
    if policy is not None and activations is not None and policy.act is None:
        # With a forward ``act`` rule, act_saved reads this layer's own masked A,
        # not ``lhs``: nothing to share.
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
            before = state.fields().keys()
            state, shared = method.update(info, state, shared, stats, rhs)
            if _checked(method, info, state, "update").fields().keys() != before:
                raise ValueError(
                    f"{type(method).__name__}.update for layer {info.path!r} changed which state "
                    f"fields are set ({sorted(before)} -> {sorted(state.fields())}); the adapters "
                    "store the fields init_state set: set every field there (a zero), even one "
                    "update fills in later.")
    out = None
    if metrics is not None:
        out = monitor.layer_metrics(lhs, stats, metrics)
    return LayerResult(y, state, shared, out)


def layer_info(path: str, kind: str, kernel_shape: tuple[int, ...], *, batch_dims: int = 0,
               contracting_dims: int = 1, einsum_str: Optional[str] = None) -> LayerInfo:
    """The :class:`~sparsejax.methods.LayerInfo` of a layer, from its kernel's layout.

    One rule for both adapters (linen and NNX describe the same layers with
    different attribute names): a ``"dense"`` kernel is ``batch dims +
    contracted input dims + output features`` (Dense / Linear ``(in, out)``,
    DenseGeneral / LinearGeneral), a ``"conv"`` kernel ``(*spatial, in / groups,
    out)`` (contracted along the input channels per position), an ``"einsum"``
    kernel is labelled by the second operand of ``einsum_str``.

    Args:
      path: the layer's module path.
      kind: ``"dense"``, ``"conv"`` or ``"einsum"``.
      kernel_shape: the kernel's shape (without ``nnx.vmap`` stack dims).
      batch_dims: ``"dense"``: number of leading batch dims of the kernel.
      contracting_dims: ``"dense"``: number of contracted input dims after them.
      einsum_str: ``"einsum"``: the layer's equation.

    Returns:
      The layer's info: output features (the product of the kernel's output
      dims) and contraction axes (non-negative, kernel order).

    Example:
      >>> layer_info("attn/out", "dense", (4, 16, 64), contracting_dims=2).contraction_axes
      (0, 1)
    """
    shape = tuple(int(n) for n in kernel_shape)
    if kind == "einsum":
        return LayerInfo(path, kind, shape, einsum_out_features(einsum_str, shape),
                         einsum_contraction_axes(einsum_str, shape))
    if kind == "conv":
        return LayerInfo(path, kind, shape, shape[-1], (len(shape) - 2,))
    first_out = batch_dims + contracting_dims
    return LayerInfo(path, kind, shape, math.prod(shape[first_out:]),
                     tuple(range(batch_dims, first_out)))


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


def einsum_contraction_axes(einsum_str: str, kernel_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Kernel axes an einsum contracts with its input: labels in both operands, not in the output.

    Args:
      einsum_str: a two-operand explicit equation, the kernel second.
      kernel_shape: the kernel's shape (checked against the kernel's labels).

    Returns:
      The contraction axes of the kernel, in kernel order (N:M groups run
      along them, flattened).

    Example:
      >>> einsum_contraction_axes("btd,dhk->bthk", (8, 2, 4))
      (0,)
      >>> einsum_contraction_axes("bthk,hkd->btd", (2, 4, 8))
      (0, 1)

    References:
      Mishra et al., arXiv:2104.08378 (2:4 along the contraction dimension).
    """
    inputs, out = einsum_str.replace(" ", "").split("->")
    lhs, rhs = inputs.split(",")
    if "." in rhs:
        raise ValueError(f"einsum {einsum_str!r}: an ellipsis in the kernel operand is not "
                         "supported by the sparse adapters; write the kernel dims explicitly.")
    if len(rhs) != len(kernel_shape):
        raise ValueError(f"einsum {einsum_str!r}: the kernel operand {rhs!r} names "
                         f"{len(rhs)} dims, the kernel has shape {tuple(kernel_shape)}.")
    return tuple(i for i, c in enumerate(rhs) if c in lhs and c not in out)


def _einsum_labels(einsum_str: str, lhs_ndim: int, rhs_ndim: int,
                   where: str) -> tuple[str, str, str]:
    """``(lhs, rhs, out)`` labels of a two-operand explicit einsum, ellipses expanded."""
    spec = einsum_str.replace(" ", "")
    if "->" not in spec or spec.count(",") != 1:
        raise ValueError(f"{where}: the sparse adapter needs a two-operand explicit einsum "
                         f"('inputs,kernel->output'), got {einsum_str!r}.")
    inputs, out = spec.split("->")
    lhs, rhs = inputs.split(",")
    if "." in rhs:
        raise ValueError(f"{where}: einsum {einsum_str!r}: an ellipsis in the kernel operand is "
                         "not supported by the sparse adapters; write the kernel dims explicitly.")
    if "..." in lhs:
        free = [c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ" if c not in spec]
        ell = "".join(free[:lhs_ndim - (len(lhs) - 3)])
        lhs, out = lhs.replace("...", ell), out.replace("...", ell)
    if len(lhs) != lhs_ndim or len(rhs) != rhs_ndim or "." in lhs + out:
        raise ValueError(f"{where}: einsum {einsum_str!r} does not match the operand ranks "
                         f"({lhs_ndim}, {rhs_ndim}).")
    for name, labels in (("input", lhs), ("kernel", rhs), ("output", out)):
        if len(set(labels)) != len(labels):
            raise ValueError(f"{where}: einsum {einsum_str!r} repeats a label in the {name} "
                             "(a diagonal), which the sparse adapter does not run; exclude the "
                             "layer.")
    if any(c not in lhs + rhs for c in out):
        raise ValueError(f"{where}: einsum {einsum_str!r}: an output label is in no operand.")
    if any(c not in lhs and c not in out for c in rhs):
        raise ValueError(f"{where}: einsum {einsum_str!r} sums a kernel dim on its own (it is "
                         "neither contracted nor kept); the sparse adapter needs every kernel dim "
                         "contracted or kept. Exclude the layer.")
    return lhs, rhs, out


def sparse_einsum(einsum_str: str, inputs: Array, kernel: Array, *, precision: Any,
                  preferred_element_type: Any, dot: Callable[..., Array], where: str) -> Array:
    """``jnp.einsum(einsum_str, inputs, kernel)`` as one ``dot(lhs=activation, rhs=kernel)``.

    The equation is turned into ``dot_general`` dimension numbers directly
    (labels in both operands and not in the output contract, labels in both and
    in the output are batch dims; input-only labels absent from the output are
    summed first), so ``dot`` always gets the activation as ``lhs`` and the
    kernel, unreshaped, as ``rhs``, and it runs in the caller's trace (not
    inside ``jnp.einsum``'s internal ``jit``, where the adapters could not
    update the layer's state).

    Args:
      einsum_str: a two-operand explicit equation, the kernel second (an
        ellipsis is allowed in the input and output).
      inputs: the activation.
      kernel: the kernel.
      precision: as ``jnp.einsum``.
      preferred_element_type: as ``jnp.einsum``.
      dot: a ``dot_general``-compatible function of ``(lhs, rhs, dims, precision,
        preferred_element_type)``.
      where: layer path for error messages.

    Returns:
      The einsum's result.

    Example:
      >>> sparse_einsum("bi,io->bo", jnp.ones((2, 3)), jnp.ones((3, 4)), precision=None,
      ...               preferred_element_type=None, dot=jax.lax.dot_general, where="e").shape
      (2, 4)
    """
    inputs, kernel = jnp.asarray(inputs), jnp.asarray(kernel)
    lhs, rhs, out = _einsum_labels(einsum_str, inputs.ndim, kernel.ndim, where)
    summed = tuple(i for i, c in enumerate(lhs) if c not in rhs and c not in out)
    if summed:
        inputs = jnp.sum(inputs, axis=summed)
        lhs = "".join(c for c in lhs if c in rhs or c in out)
    contract = [c for c in lhs if c in rhs and c not in out]
    batch = [c for c in lhs if c in rhs and c in out]
    dims = ((tuple(lhs.index(c) for c in contract), tuple(rhs.index(c) for c in contract)),
            (tuple(lhs.index(c) for c in batch), tuple(rhs.index(c) for c in batch)))
    y = dot(inputs, kernel, dims, precision, preferred_element_type)
    order = batch + [c for c in lhs if c not in rhs] + [c for c in rhs if c not in lhs]
    perm = tuple(order.index(c) for c in out)
    return y if perm == tuple(range(len(perm))) else jnp.transpose(y, perm)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silences the ``"sparsejax"`` logger and warnings (for trial plans)."""
    log = logging.getLogger("sparsejax")
    drop = lambda record: False
    log.addFilter(drop)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        log.removeFilter(drop)


def order_dependence(method: Method, layers: Sequence[LayerInfo]) -> list[str]:
    """The layers whose sparse / dense choice changes with their call order.

    ``method``'s plan is computed for ``layers`` as given, reversed and rotated
    by one; a method whose rule uses the order (``swat``'s ``dense_first`` /
    ``dense_last``, ``meprop``'s and ``dsg``'s dense last layer) gives different
    plans whenever the order matters on *this* model. Nothing is logged.

    Args:
      method: the method.
      layers: the layers, in any order.

    Returns:
      The paths whose sparsity differs between the orders (empty: the plan does
      not depend on the order).

    Example:
      >>> order_dependence(swat(0.8), [LayerInfo("a", "dense", (4, 4), 4),
      ...                              LayerInfo("b", "dense", (4, 4), 4)])
      ['a', 'b']
    """
    layers = list(layers)
    if len(layers) < 2:
        return []
    with _quiet():
        plans = [method.plan(order) for order in (layers, layers[::-1], layers[1:] + layers[:1])]
    return [l.path for l in layers if len({p.get(l.path) for p in plans}) > 1]


def count_dependence(method: Method, shapes: dict[str, tuple[int, ...]], path: str) -> bool:
    """Whether ``path``'s sparsity changes when one more layer of its shape joins the model.

    Budgets spread over the layers (ERK, a global threshold, SWAT-M's momentum
    shares) depend on how many layers share them; a per-layer budget does not.
    One module holding several stacked layers (NNX's ``nnx.vmap`` for ``nnx.scan``)
    takes one sparsity for all of them, which only the latter can express. Asked
    like :func:`order_dependence`: the method's sparsities are computed with a twin
    of the layer added (``<path>~twin``) and compared.

    Args:
      method: the method.
      shapes: every planned layer's kernel shape, by path.
      path: the layer in question (a key of ``shapes``).

    Returns:
      True when the twin changes ``path``'s sparsity.

    Example:
      >>> shapes = {"a": (32, 32), "b": (64, 64)}
      >>> count_dependence(swat(0.8, distribution="erk"), shapes, "a")
      True
      >>> count_dependence(swat(0.8, distribution="uniform", dense_first=False), shapes, "a")
      False
    """
    with _quiet():
        alone = method.sparsities(dict(shapes))[path]
        twinned = method.sparsities({**shapes, f"{path}~twin": shapes[path]})[path]
    return alone != twinned


def no_layers_error(found: dict[str, str], supported: str) -> ValueError:
    """The error for a model in which no supported layer was called."""
    kinds = sorted(set(found.values()))
    return ValueError(
        f"sparsify found no supported linear layer ({supported}) in the model; it called "
        f"{', '.join(kinds) if kinds else 'no submodules'}. Build the model from stock Flax "
        "layers, or call sparsejax.ops.sparse_dot_general / sparse_conv_general_dilated "
        "directly in custom layers.")
