"""Flax linen adapter: train an unmodified linen model with a sparse method.

``Sparsified(model, method)`` is an ``nn.Module`` that shares its scope with
``model`` (``nn.share_scope``), so the ``params`` / ``batch_stats`` trees are
exactly the unwrapped model's. Its ``__call__(*args, **kwargs)`` calls the model
under ``nn.intercept_methods``; every ``nn.Dense``, ``nn.DenseGeneral``,
``nn.Conv`` and ``nn.Einsum`` call the method makes sparse runs with its
``dot_general`` / ``conv_general_dilated`` field set to the sparse op for the
duration of that call (``nn.Einsum``, which has no such field, is re-run with
``jnp.einsum(..., _dot_general=<sparse op>)``). ``nn.ConvTranspose`` and
``nn.ConvLocal`` have no hook and stay dense (logged).

State: each sparse layer keeps its method state in the ``"sparsity"``
collection at its module path (``{"sparsity": {"Block_0": {"Conv_1":
{"sparsity": ..., "step": ..., ...}}}}``); a method with cross-layer state
(SWAT-M) adds ``"_method_shared"`` at the root. Train with
``apply(variables, x, mutable=["batch_stats", "sparsity"])``: a call whose
``"sparsity"`` collection is not mutable is an *evaluation* call (the state is
read, nothing is refreshed; SWAT evaluates with its top-K weights unless
``sparse_eval=False``; a gradient taken through such a call still follows the
method's backward rules, see :mod:`sparsejax.methods`).

Init: the per-layer plan needs all layers at once (ERK budgets, first/last
layer dense). ``init`` therefore first traces the model abstractly
(``jax.eval_shape``, no FLOPs, no RNG consumed) to list the layers in call
order, computes the plan and then runs the real init creating the state of
the sparse layers only. Later calls read the plan back from the collection:
a layer is sparse iff it has state, and each layer's static sparsity is
recomputed from the sparse layers' kernel shapes (``method.sparsities``).

Metrics: with ``"sparsity_metrics"`` mutable, every sparse layer sows the
:mod:`sparsejax.analysis.monitor` metrics there (use
:func:`sparsejax.analysis.monitor.flatten_metrics`).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from sparsejax.adapters import common
from sparsejax.methods import Dense, LayerInfo, Method
from sparsejax.analysis.monitor import MonitorConfig

logger = logging.getLogger("sparsejax")

SHARED = "_method_shared"
_SUPPORTED = (nn.Dense, nn.DenseGeneral, nn.Conv, nn.Einsum)
_SUPPORTED_NAMES = "nn.Dense, nn.DenseGeneral, nn.Conv, nn.Einsum"
_NO_HOOK = (nn.ConvTranspose, nn.ConvLocal)


def _path(module: nn.Module, root: Any = None) -> Optional[str]:
    """``module``'s path below the scope ``root`` (``None``: its full path).

    Below ``root`` the path is read from the live parent chain rather than from
    ``scope.path``: that tuple is fixed when a scope is made and goes stale when
    ``nn.share_scope`` re-parents a submodule bound before it (the layers an
    ``nn.Sequential`` is given still say ``model/layers_0``). Lifted transforms
    (``nn.remat``, ``nn.scan``, ``nn.vmap``) run their body in a new scope tree
    whose chain ends before ``root``; their ``scope.path`` is right and is used
    with ``root``'s path removed. ``None`` when ``module`` is not below ``root``.
    """
    full = tuple(module.scope.path)
    if root is None:
        return "/".join(full)
    names, scope = [], module.scope
    while scope is not None and scope is not root:
        names.append(scope.name)
        scope = scope.parent
    if scope is root:
        return "/".join(reversed(names))
    base = tuple(root.path)
    return "/".join(full[len(base):]) if full[:len(base)] == base else None


def layer_info(module: nn.Module, path: str, kernel_shape: tuple[int, ...], args,
               kwargs) -> LayerInfo:
    """The :class:`LayerInfo` of a supported layer called with ``(args, kwargs)``
    (:func:`sparsejax.adapters.common.layer_info` on the module's layout)."""
    if isinstance(module, nn.Einsum):
        return common.layer_info(path, "einsum", kernel_shape,
                                 einsum_str=_einsum_str(module, args, kwargs))
    if isinstance(module, nn.Conv):
        return common.layer_info(path, "conv", kernel_shape)
    if isinstance(module, nn.DenseGeneral):
        # kernel = batch dims + contracted input dims + features (flax DenseGeneral).
        n_axis = len(module.axis) if isinstance(module.axis, (tuple, list)) else 1
        n_batch = len(module.batch_dims) if isinstance(module.batch_dims, (tuple, list)) else 1
        return common.layer_info(path, "dense", kernel_shape, batch_dims=n_batch,
                                 contracting_dims=n_axis)
    return common.layer_info(path, "dense", kernel_shape)  # nn.Dense (in, out)


def _einsum_str(module: nn.Einsum, args, kwargs) -> str:
    given = args[1] if len(args) > 1 else kwargs.get("einsum_str")
    return nn.module.merge_param("einsum_str", module.einsum_str, given).replace(" ", "")


def _check_free_hook(module: nn.Module, path: str) -> None:
    if isinstance(module, nn.Einsum):
        return
    field = "conv_general_dilated" if isinstance(module, nn.Conv) else "dot_general"
    if getattr(module, field) is not None or getattr(module, field + "_cls") is not None:
        raise ValueError(f"layer {path!r} already sets {field} / {field}_cls; the sparse adapter "
                         f"would override it. Exclude the layer (exclude={path!r}) or drop the "
                         "custom op.")


def _run_einsum(module: nn.Einsum, args, kwargs, dot, path: str) -> jax.Array:
    """nn.Einsum.__call__ with its contraction routed through ``dot``."""
    inputs = args[0]
    einsum_str = _einsum_str(module, args, kwargs)
    kernel = module.param("kernel", module.kernel_init, module.shape, module.param_dtype)
    bias = None
    if module.use_bias:
        bias_shape, broadcast_shape = module._get_bias_shape(einsum_str, inputs, kernel)  # pylint: disable=protected-access
        bias = module.param("bias", module.bias_init, bias_shape, module.param_dtype)
    inputs, kernel, bias = module.promote_dtype(inputs, kernel, bias, dtype=module.dtype)
    y = common.sparse_einsum(einsum_str, inputs, kernel, precision=module.precision,
                             preferred_element_type=module.preferred_element_type, dot=dot,
                             where=path)
    if bias is not None:
        y = y + jnp.reshape(bias, broadcast_shape)
    return y


def _layer_nodes(tree: Any, prefix: str = "") -> dict[str, dict]:
    """Module path -> state dict for every layer node of the ``sparsity`` collection."""
    out = {}
    for name, sub in tree.items():
        if name == SHARED or not isinstance(sub, dict):
            continue
        path = f"{prefix}/{name}" if prefix else name
        if "sparsity" in sub and not isinstance(sub["sparsity"], dict):
            out[path] = sub
        else:
            out.update(_layer_nodes(sub, path))
    return out


def _lookup(tree: Any, path: str) -> Any:
    for part in path.split("/"):
        tree = tree[part]
    return tree


def discover(model: nn.Module, args: tuple, kwargs: dict, rng_names: Any = ("params",)
             ) -> tuple[list[LayerInfo], dict[str, str], dict[str, str], dict[str, Any]]:
    """The layers ``model(*args, **kwargs)`` calls, from an abstract init (no FLOPs).

    Args:
      model: an unbound linen module.
      args: example positional inputs of ``model``.
      kwargs: example keyword inputs.
      rng_names: the RNG streams the model's init needs (``"params"``,
        ``"dropout"``...).

    Returns:
      ``(layers, found, no_hook, dtypes)``: the supported layers in call order
      (each path once), ``path -> type name`` of every module called (in the
      order the calls returned), ``path -> type name`` of the layers the adapter
      cannot make sparse (``nn.ConvTranspose``, ``nn.ConvLocal``: logged at
      WARNING), and ``path -> compute dtype`` (the layer's ``dtype``, ``None``
      when unset) of the supported layers.
    """
    layers: dict[str, LayerInfo] = {}
    found: dict[str, str] = {}
    no_hook: dict[str, str] = {}
    dtypes: dict[str, Any] = {}

    def record(next_fun, a, kw, ctx):
        mod = ctx.module
        y = next_fun(*a, **kw)
        if ctx.method_name != "__call__":
            return y
        path = _path(mod)
        found.setdefault(path, type(mod).__name__)
        if isinstance(mod, _NO_HOOK):
            if path not in no_hook:
                logger.warning("sparsify: %s (%s) has no dot_general/conv hook and stays dense",
                               path, type(mod).__name__)
            no_hook[path] = type(mod).__name__
        elif isinstance(mod, _SUPPORTED) and path not in layers:
            shape = tuple(mod.get_variable("params", "kernel").shape)
            layers[path] = layer_info(mod, path, shape, a, kw)
            dtypes[path] = getattr(mod, "dtype", None)
        return y

    model = model.clone(parent=None, _deep_clone=True)

    def abstract_init():
        rngs = {name: jax.random.key(0) for name in rng_names}
        with nn.intercept_methods(record):
            return model.init(rngs, *args, **kwargs)

    jax.eval_shape(abstract_init)
    return list(layers.values()), found, no_hook, dtypes


class Sparsified(nn.Module):
    """An unmodified linen model trained with a sparse method.

    Attributes:
      model: the linen model (unbound).
      method: a :mod:`sparsejax.methods` value.
      monitor: sampling settings of the activation monitor (used only when the
        ``"sparsity_metrics"`` collection is mutable).

    Example:
      >>> model = Sparsified(zoo.get_model("resnet18"), swat(0.8))
      >>> variables = model.init(key, x, train=True)
      >>> logits, updates = model.apply(variables, x, train=True,
      ...                               mutable=["batch_stats", "sparsity"])

    References:
      Raihan & Aamodt, NeurIPS 2020 (SWAT); see :mod:`sparsejax.methods`.
    """

    model: nn.Module
    method: Method
    monitor: MonitorConfig = MonitorConfig()

    def setup(self):
        nn.share_scope(self, self.model)

    @nn.compact
    def __call__(self, *args, **kwargs):
        if isinstance(self.method, Dense):
            return self.model(*args, **kwargs)
        initializing = self.is_initializing() and not self.has_variable(common.COLLECTION, SHARED)
        if initializing:
            layers, found = self._discover(args, kwargs)
            if not layers:
                raise common.no_layers_error(found, _SUPPORTED_NAMES)
            plan = self.method.plan(layers)
            if not plan:
                logger.warning("%s makes no layer sparse (layers: %s)", self.method.name,
                               [l.path for l in layers])
            infos = {l.path: l for l in layers}
            shapes = {p: infos[p].kernel_shape for p in plan}
        else:
            if not self.has_variable(common.COLLECTION, SHARED):
                raise ValueError(
                    f"the {self.method.name} model was called without its {common.COLLECTION!r} "
                    "collection; pass all variables returned by init (model.apply(variables, ...)), "
                    f"and make {common.COLLECTION!r} mutable when training.")
            nodes = _layer_nodes(self.variables[common.COLLECTION])
            params = self.variables.get("params", {})
            shapes = {p: tuple(_lookup(params, p)["kernel"].shape) for p in nodes}
        sparsities = self.method.sparsities(shapes)
        training = self.is_mutable_collection(common.COLLECTION)
        shared_init = self.method.init_shared(sparsities) or {}
        shared_var = self.variable(common.COLLECTION, SHARED,
                                   lambda: {"num_sparse_layers": jnp.int32(len(sparsities)),
                                            **shared_init})
        if training and shared_init and not initializing:
            sizes = {p: math.prod(s) for p, s in shapes.items()}
            value = dict(shared_var.value)
            # Every kernel is visible here, before the first layer runs (SWAT-M scores
            # the current step's update W_{t+1} - W_t with them).
            kernels = {p: _lookup(params, p)["kernel"] for p in shapes}
            refreshed = self.method.refresh_shared(
                {k: v for k, v in value.items() if k != "num_sparse_layers"}, sizes,
                kernels=kernels,
                states={p: common.restore_state(self.method, p, n) for p, n in nodes.items()})
            shared_var.value = {**value, **refreshed}
        interceptor = self._interceptor(sparsities, initializing,
                                        shared_var if shared_init else None, training)
        with nn.intercept_methods(interceptor):
            return self.model(*args, **kwargs)

    def _discover(self, args, kwargs) -> tuple[list[LayerInfo], dict[str, str]]:
        """Lists the supported layers in call order with an abstract init of the model."""
        layers, found, _, _ = discover(self.model, args, kwargs,
                                       list(self.scope.rngs) or ["params"])
        return layers, found

    def _interceptor(self, sparsities, initializing, shared_var, training):
        method = self.method
        metrics_on = self.is_mutable_collection(common.METRICS)
        config = self.monitor
        activations = common.SharedActivations()
        root = self.scope  # shared with the model: layer paths are relative to it

        def interceptor(next_fun, args, kwargs, ctx):
            mod = ctx.module
            if ctx.method_name != "__call__" or not isinstance(mod, _SUPPORTED):
                return next_fun(*args, **kwargs)
            path = _path(mod, root)
            if path not in sparsities:
                return next_fun(*args, **kwargs)
            _check_free_hook(mod, path)
            op = "conv" if isinstance(mod, nn.Conv) else "dot"

            def sparse_op(lhs, rhs, *op_args, **op_kwargs):
                shape = tuple(rhs.shape)
                info = layer_info(mod, path, shape, args, kwargs)
                if initializing:
                    values = common.initial_state(method, info, sparsities[path], rhs).fields()
                    vars_ = {k: mod.variable(common.COLLECTION, k, lambda v=v: v)
                             for k, v in values.items()}
                else:
                    vars_ = {k: mod.variable(common.COLLECTION, k)
                             for k in mod.variables.get(common.COLLECTION, {})}
                state = common.restore_state(method, path,
                                             {k: v.value for k, v in vars_.items()})
                shared = None
                if shared_var is not None:
                    shared = {k: v for k, v in shared_var.value.items() if k != "num_sparse_layers"}
                res = common.run_layer(method, info, sparsities[path], state, shared,
                                       training and not initializing, op, lhs, rhs, op_args,
                                       op_kwargs, config if metrics_on else None, activations)
                if training and not initializing:
                    for k, v in res.state.fields().items():
                        vars_[k].value = v
                    if shared_var is not None:
                        shared_var.value = {**shared_var.value, **res.shared}
                if res.metrics is not None:
                    for k, v in res.metrics.items():
                        mod.sow(common.METRICS, k, v, init_fn=lambda: jnp.zeros((), jnp.float32),
                                reduce_fn=lambda _, new: new)
                return res.y

            if isinstance(mod, nn.Einsum):
                return _run_einsum(mod, args, kwargs, sparse_op, path)
            field = "conv_general_dilated" if op == "conv" else "dot_general"
            # Flax intercepts module methods (nn.intercept_methods) but has no hook for the
            # op inside a stock layer's __call__, which reads its own (frozen) field: the
            # field is set for this one call (it was None: _check_free_hook) and restored,
            # so Flax's bias, dtype-promotion and precision logic stays Flax's own.
            object.__setattr__(mod, field, sparse_op)
            try:
                return next_fun(*args, **kwargs)
            finally:
                object.__setattr__(mod, field, None)

        return interceptor


def sparsify(model: nn.Module, method: Method,
             monitor: MonitorConfig = MonitorConfig()) -> Sparsified:
    """Wraps an unmodified linen model so that it trains with ``method``.

    Args:
      model: an unbound ``flax.linen.Module``.
      method: a :mod:`sparsejax.methods` value (``swat(0.8)``, ``ste(NM(2, 4))``...).
      monitor: activation-monitor sampling settings.

    Returns:
      A :class:`Sparsified` module with the same parameter tree as ``model``.

    Example:
      >>> model = sparsify(zoo.get_model("refcnn"), swat(0.8, period=20))
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"sparsify(model) needs a flax.linen.Module or flax.nnx.Module, got "
                        f"{type(model).__name__}.")
    if not isinstance(method, Method):
        raise TypeError(f"sparsify(method) needs a sparsejax.methods.Method (swat, ste, meprop, "
                        f"dsg, dense), got {method!r}. grad_drop is an optax transform: put it "
                        "in the optimizer chain instead.")
    return Sparsified(model, method, monitor)
