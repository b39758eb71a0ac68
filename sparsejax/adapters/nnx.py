"""Flax NNX adapter: train an unmodified NNX model with a sparse method.

:func:`sparsify` walks the module graph and, for every ``nnx.Linear``,
``nnx.LinearGeneral``, ``nnx.Conv`` and ``nnx.Einsum`` the method makes sparse,
replaces the layer's ``dot_general`` / ``conv_general_dilated`` / ``einsum_op``
attribute *in place* by a small :class:`SparseOp` module. The op module holds
the layer's method state as :class:`SparsityState` variables (so the state is
part of the model's graph: ``nnx.split``, ``nnx.jit``, checkpoints and
``nnx.Optimizer(model, tx, wrt=nnx.Param)`` all see it, and gradients taken
with respect to ``nnx.Param`` ignore it). A method with cross-layer state
(SWAT-M) shares one :class:`SharedState` module between all op modules; the
first sparse layer refreshes it once per training call.

Training vs evaluation follows NNX's convention: ``model.eval()`` sets the op
modules' ``deterministic`` attribute (evaluation: state read-only; SWAT uses
its top-K weights unless ``sparse_eval=False``) and ``model.train()`` clears it.

Layers stacked by ``nnx.vmap`` (to run under ``nnx.scan``) get their state
stacked the same way, so each stacked layer keeps its own thresholds and trains
as a separate module would; methods whose budgets depend on the number of
layers (SWAT-ERK, SWAT-M) raise for them.

Layer paths are the graph paths (``"conv1"``, ``"blocks/0/conv"``). Call order
(for ``dense_first`` / ``dense_last``) comes from an abstract call with the
example inputs given to :func:`sparsify`; without them the graph order is used
only when the method's plan does not depend on the order, otherwise
:func:`sparsify` raises and asks for example inputs.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Optional

import jax
import jax.numpy as jnp
from flax import nnx

from sparsejax.adapters import common
from sparsejax.methods import Dense, LayerInfo, Method
from sparsejax.analysis.monitor import MonitorConfig

logger = logging.getLogger("sparsejax")

_SUPPORTED_NAMES = "nnx.Linear, nnx.LinearGeneral, nnx.Conv, nnx.Einsum"


class SparsityState(nnx.Variable):
    """Method state of a sparse layer (thresholds, step counters, budgets)."""


class SparsityMetric(nnx.Variable):
    """Activation-monitor metrics of a sparse layer (see :mod:`sparsejax.analysis.monitor`)."""


def _field(layer: nnx.Module) -> Optional[str]:
    if isinstance(layer, nnx.Conv):
        return "conv_general_dilated"
    if isinstance(layer, nnx.Einsum):
        return "einsum_op"
    if isinstance(layer, (nnx.Linear, nnx.LinearGeneral)):
        return "dot_general"
    return None


def _unstacked_ndim(layer: nnx.Module) -> int:
    """The kernel rank the layer's own attributes imply (one more per ``nnx.vmap`` stack axis)."""
    if isinstance(layer, (nnx.Conv, nnx.Einsum)):
        return len(layer.kernel_shape)
    if isinstance(layer, nnx.LinearGeneral):
        return len(layer.batch_axis) + len(layer.in_features) + len(layer.out_features)
    return 2


def _stack_shape(layer: nnx.Module) -> tuple[int, ...]:
    """Leading kernel dims added by ``nnx.vmap`` (layers stacked for ``nnx.scan``), or ``()``."""
    return tuple(layer.kernel.shape[:layer.kernel.ndim - _unstacked_ndim(layer)])


def layer_info(path: str, layer: nnx.Module) -> LayerInfo:
    """The :class:`LayerInfo` of a supported layer (:func:`sparsejax.adapters.common.layer_info`
    on its layout; ``nnx.vmap`` stack dims removed)."""
    shape = tuple(layer.kernel.shape)[len(_stack_shape(layer)):]
    if isinstance(layer, nnx.Conv):
        return common.layer_info(path, "conv", shape)
    if isinstance(layer, nnx.Einsum):
        if layer.einsum_str is None:
            raise ValueError(f"nnx.Einsum {path!r} gets its einsum_str at call time; the sparse "
                             "adapter needs it at construction (Einsum(einsum_str=...)).")
        return common.layer_info(path, "einsum", shape, einsum_str=layer.einsum_str)
    if isinstance(layer, nnx.LinearGeneral):
        # kernel = batch_axis dims + in_features + out_features (nnx.LinearGeneral).
        return common.layer_info(path, "dense", shape, batch_dims=len(layer.batch_axis),
                                 contracting_dims=len(layer.in_features))
    return common.layer_info(path, "dense", shape)  # nnx.Linear (in, out)


class SharedState(nnx.Module):
    """Cross-layer method state shared by every :class:`SparseOp` (SWAT-M budgets)."""

    def __init__(self, method: Method, sparsities: dict[str, float], value: dict):
        self.method = method
        self.sizes = {p: 0 for p in sparsities}
        self.value = SparsityState(value)


class SparseOp(nnx.Module):
    """The sparse ``dot_general`` / ``conv_general_dilated`` / ``einsum_op`` of one layer.

    Attributes:
      method: the method (static).
      info: the layer (static).
      sparsity: the layer's static sparsity.
      deterministic: evaluation mode (set by ``model.eval()``).
      activations: the model's :class:`~sparsejax.adapters.common.SharedActivations`
        (one per sparsified model, shared by its op modules).
    """

    def __init__(self, method: Method, info: LayerInfo, sparsity: float, kernel: jax.Array,
                 op: str, shared: Optional[SharedState], first: bool,
                 monitor: Optional[MonitorConfig], activations: common.SharedActivations,
                 stack: tuple[int, ...] = ()):
        self.method = method
        self.activations = activations
        self.info = info
        self.sparsity = sparsity
        self.op = op
        self.first = first
        self.monitor = monitor
        self.deterministic = False
        self.shared = nnx.data(shared)
        init = lambda k: common.initial_state(method, info, sparsity, k)
        for _ in stack:  # one state per stacked layer, sliced with the kernel by nnx.scan
            init = jax.vmap(init)
        self.state = nnx.data({k: SparsityState(v) for k, v in init(kernel).fields().items()})
        if monitor is not None:
            self.metrics = nnx.data({k: SparsityMetric(jnp.zeros(stack, jnp.float32)) for k in
                                     ("act_zero_fraction", "act_tile_occupancy", "act_tile_density",
                                      "w_sparsity", "a_saved_sparsity", "out_sparsity")})

    def _run(self, op: str, lhs, rhs, args, kwargs):
        training = not self.deterministic
        shared = None
        if self.shared is not None:
            shared = self.shared.value.get_value()
            if training and self.first:
                shared = self.method.refresh_shared(shared, self.shared.sizes)
        state = common.restore_state(self.method, self.info.path,
                                     {k: v[...] for k, v in self.state.items()})
        res = common.run_layer(self.method, self.info, self.sparsity, state, shared, training, op,
                               lhs, rhs, args, kwargs, self.monitor, self.activations)
        if training:
            for k, v in res.state.fields().items():
                self.state[k][...] = v
            if self.shared is not None:
                self.shared.value.set_value(res.shared)
        if res.metrics is not None:
            for k, v in res.metrics.items():
                self.metrics[k][...] = v
        return res.y

    def __call__(self, *args, **kwargs):
        if self.op == "einsum":
            einsum_str, inputs, kernel = args
            dot = lambda a, w, *rest: self._run("dot", a, w, rest, {})
            if kwargs.get("out_sharding") is not None:
                raise NotImplementedError(f"{self.info.path}: sparse einsum does not take out_sharding.")
            return common.sparse_einsum(einsum_str, inputs, kernel,
                                        precision=kwargs.get("precision"),
                                        preferred_element_type=kwargs.get("preferred_element_type"),
                                        dot=dot, where=self.info.path)
        lhs, rhs, *rest = args
        return self._run(self.op, lhs, rhs, tuple(rest), kwargs)


def _layers(model: nnx.Module) -> tuple[dict[str, nnx.Module], dict[str, str], dict[str, str]]:
    """``(supported layers, path -> type of every module, path -> type of no-hook layers)``."""
    layers, found, no_hook = {}, {}, {}
    for path, node in nnx.iter_graph(model):
        if not isinstance(node, nnx.Module) or node is model or isinstance(node, SparseOp):
            continue
        name = "/".join(str(p) for p in path)
        found[name] = type(node).__name__
        if _field(node) is not None:
            if isinstance(getattr(node, _field(node)), SparseOp):
                raise ValueError(f"{name!r} is already sparsified; call sparsify once per model.")
            layers[name] = node
        elif isinstance(node, nnx.ConvTranspose):
            logger.warning("sparsify: %s (ConvTranspose) has no conv hook and stays dense", name)
            no_hook[name] = type(node).__name__
    return layers, found, no_hook


def _call_order(model: nnx.Module, layers: dict[str, nnx.Module], args, kwargs) -> list[str]:
    """Layer paths in the order an abstract call of ``model`` uses them."""
    order: list[str] = []
    saved = {}
    for path, layer in layers.items():
        field = _field(layer)
        saved[path] = getattr(layer, field)
        # nnx.LinearGeneral's dot_general defaults to None (meaning lax.dot_general).
        original = saved[path] if saved[path] is not None else jax.lax.dot_general

        def record(*a, _path=path, _orig=original, **kw):
            if _path not in order:
                order.append(_path)
            return _orig(*a, **kw)

        setattr(layer, field, record)
    try:
        nnx.eval_shape(lambda m: m(*args, **kwargs), model)
    finally:
        for path, layer in layers.items():
            setattr(layer, _field(layer), saved[path])
    return order + [p for p in layers if p not in order]


def layer_order(model: nnx.Module, method: Method, layers: dict[str, nnx.Module], args: tuple,
                kwargs: dict) -> list[str]:
    """The layers' call order: from an abstract call with the example inputs.

    Without example inputs the graph order (attribute paths, sorted) is used,
    but only when ``method``'s plan does not depend on the order
    (:func:`sparsejax.adapters.common.order_dependence`); otherwise the graph
    order could silently make the wrong layer dense (with attributes ``stem,
    body, classifier`` it puts ``body`` first), so this raises.

    Raises:
      ValueError: no example inputs and the plan depends on the order; the
        message names the layers concerned and says to pass example inputs.
    """
    if args or kwargs:
        return _call_order(model, layers, args, kwargs)
    order = list(layers)
    moving = common.order_dependence(method, [layer_info(p, layers[p]) for p in order])
    if moving:
        raise ValueError(
            f"sparsify: {method.name} chooses layers by their call order (first / last layer "
            f"dense), which decides {moving} here, and an NNX model's call order is only known "
            "from a call: pass example inputs, sparsify(model, method, x) or "
            "sparsejax.plan(model, method, x), e.g. x = jnp.zeros((1, *input_shape)) "
            f"(without them the attribute order {order} would be used, which is not the call "
            "order in general).")
    logger.info("sparsify: no example inputs; %s's plan does not depend on the call order, "
                "graph order %s used", method.name, order)
    return order


def sparsify(model: nnx.Module, method: Method, *example_args: Any,
             monitor: MonitorConfig | bool | None = None, **example_kwargs: Any) -> nnx.Module:
    """Makes an NNX model train with ``method`` by swapping its layers' ops in place.

    Args:
      model: a ``flax.nnx.Module``.
      method: a :mod:`sparsejax.methods` value.
      *example_args: example inputs; an abstract call (``nnx.eval_shape``)
        finds the layers' call order. Without them the graph order (sorted
        attribute paths) is used only if the method's plan does not depend on
        the order (``ste``, ``swat(dense_first=False)``...); ``swat``'s default
        ``dense_first``, ``meprop`` and ``dsg`` (dense last layer) raise, asking
        for example inputs (see :func:`layer_order`).
      monitor: ``True`` or a :class:`~sparsejax.analysis.monitor.MonitorConfig`: every
        sparse layer keeps the latest monitor metrics in :class:`SparsityMetric`
        variables (``nnx.state(model, SparsityMetric)``).
      **example_kwargs: keyword arguments of the example call.

    Returns:
      ``model`` itself, modified in place.

    Raises:
      ValueError: when the model has no supported layer (the message lists the
        layer types found), a layer already carries a custom op, or the method
        needs the call order and no example inputs were given.

    Example:
      >>> model = sparsify(CNN(rngs=nnx.Rngs(0)), swat(0.8), jnp.zeros((1, 28, 28, 1)))
      >>> optimizer = nnx.Optimizer(model, optax.sgd(0.1, 0.9), wrt=nnx.Param)
    """
    if not isinstance(method, Method):
        raise TypeError(f"sparsify(method) needs a sparsejax.methods.Method, got {method!r}.")
    config = MonitorConfig() if monitor is True else (monitor or None)
    layers, found, _ = _layers(model)
    if not layers:
        raise common.no_layers_error(found, _SUPPORTED_NAMES)
    if isinstance(method, Dense):
        return model
    order = layer_order(model, method, layers, example_args, example_kwargs)
    infos = [layer_info(p, layers[p]) for p in order]
    for p in order:
        field = _field(layers[p])
        current = getattr(layers[p], field)
        default = {"dot_general": jax.lax.dot_general,
                   "conv_general_dilated": jax.lax.conv_general_dilated,
                   "einsum_op": jnp.einsum}[field]
        if current is not default and current is not None:
            raise ValueError(f"layer {p!r} already sets a custom {field}; exclude it "
                             f"(exclude={p!r}) or drop the custom op.")
    plan = method.plan(infos)
    if not plan:
        logger.warning("%s makes no layer sparse (layers: %s)", method.name, order)
    shared_init = method.init_shared(plan)
    shared = None
    if shared_init is not None:
        shared = SharedState(method, plan, shared_init)
        shared.sizes = {p: math.prod(layers[p].kernel.shape) for p in plan}
    by_path = {i.path: i for i in infos}
    activations = common.SharedActivations()
    shapes = {p: by_path[p].kernel_shape for p in plan}
    for path in plan:
        stack = _stack_shape(layers[path])
        if stack and (shared_init is not None
                      or common.count_dependence(method, shapes, path)):
            raise ValueError(
                f"sparsify: {path!r} holds {math.prod(stack)} stacked layers (kernel "
                f"{tuple(layers[path].kernel.shape)}, built under nnx.vmap for nnx.scan), and "
                f"{method.name}'s budgets depend on how many layers share them (ERK, SWAT-M), "
                "which one stacked module cannot express. Use a uniform budget, exclude it "
                f"(exclude={path!r}), or build the layers as separate modules.")
    for n, (path, s) in enumerate(plan.items()):
        layer = layers[path]
        field = _field(layer)
        op = {"dot_general": "dot", "conv_general_dilated": "conv", "einsum_op": "einsum"}[field]
        setattr(layer, field, nnx.data(SparseOp(method, by_path[path], s, layer.kernel[...], op,
                                                shared, n == 0, config, activations,
                                                _stack_shape(layer))))
    return model
