"""What a sparsified model computes with: contraction axes and effective weights.

* :func:`contraction_axes` – ``{kernel path: contraction axes}`` of every
  supported layer of a Flax model, derived from the layers themselves (Dense,
  DenseGeneral, Einsum, Conv and their NNX counterparts), so that tree-level
  N:M pruning (:func:`sparsejax.prune`, :func:`sparsejax.pruning`, ASP) groups
  along the same flattened contraction dimension as the model-aware route.
* :func:`effective_params` – the parameters the sparse forward actually
  multiplies with (SWAT's top-K weights, STE's N:M kernels, pruning masks), as
  a pytree the *plain* (un-sparsified) model runs: for export
  (:func:`sparsejax.analysis.compression.export_compressed`), inspection, or serving
  with a dense runtime.

References:
  Mishra et al., "Accelerating Sparse Deep Neural Networks", arXiv:2104.08378
  (2:4 along the contraction dimension; NVIDIA apex ASP); Raihan & Aamodt,
  "Sparse Weight Activation Training", NeurIPS 2020.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp

from sparsejax import ops, paths
from sparsejax.adapters import common
from sparsejax.methods import LayerInfo, Method

Array = jax.Array


# ------------------------------------------------------------------- linen
def _linen_layers(model: Any, args: tuple, kwargs: dict) -> dict[str, tuple[LayerInfo, Any]]:
    """Module path -> (LayerInfo, compute dtype) of every supported linen layer called
    (the linen adapter's own discovery)."""
    from sparsejax.adapters import linen  # pylint: disable=import-outside-toplevel

    infos, _, _, dtypes = linen.discover(model, args, kwargs, ("params", "dropout"))
    return {info.path: (info, dtypes[info.path]) for info in infos}


def _need_inputs(fn: str, args: tuple, kwargs: dict) -> None:
    if not args and not kwargs:
        raise TypeError(f"{fn}(linen_model, ...) needs example inputs (the arguments of the "
                        f"model's __call__, e.g. {fn}(model, variables, x) or "
                        f"{fn}(model, x)): linen layers are only known once called.")


# --------------------------------------------------------------------- NNX
def _nnx_layers(model: Any) -> dict[str, Any]:
    from flax import nnx  # pylint: disable=import-outside-toplevel
    from sparsejax.adapters import nnx as nnx_adapter  # pylint: disable=import-outside-toplevel
    out = {}
    for path, node in nnx.iter_graph(model):
        if isinstance(node, nnx.Module) and not isinstance(node, nnx_adapter.SparseOp) \
                and nnx_adapter._field(node) is not None:  # pylint: disable=protected-access
            out["/".join(str(p) for p in path)] = node
    return out


def _is_linen(model: Any) -> bool:
    import flax.linen as nn  # pylint: disable=import-outside-toplevel
    return isinstance(model, nn.Module)


def _is_nnx(model: Any) -> bool:
    from flax import nnx  # pylint: disable=import-outside-toplevel
    return isinstance(model, nnx.Module)


def contraction_axes(model: Any, *example_args: Any,
                     **example_kwargs: Any) -> dict[str, tuple[int, ...]]:
    """``{kernel path: contraction axes}`` of every supported layer of a Flax model.

    The axes are those the layer contracts with its input, read from the layer
    (not guessed from the kernel's rank): ``(0,)`` for Dense ``(in, out)`` and
    for a DenseGeneral query ``(in, heads, head_dim)``, ``(0, 1)`` for an
    attention output projection ``(heads, head_dim, out)``, the input-channel
    axis of a Conv ``(h, w, in, out)``, the kernel labels that appear in the
    input and not in the output of an Einsum. Pass the map as ``axes=`` to
    :func:`sparsejax.prune`, :func:`sparsejax.tree.compute_masks` or
    :func:`sparsejax.pruning` so N:M groups run along the flattened
    contraction dimension, as the sparse tensor cores group them.

    Args:
      model: a linen module (unbound; a :class:`~sparsejax.adapters.linen.Sparsified`
        wrapper is looked through) or an NNX module.
      *example_args: linen: the model's call arguments (an abstract
        ``jax.eval_shape`` init intercepts each layer's call: no FLOPs, no RNG
        state consumed). NNX: not needed (the layers' attributes say it).
      **example_kwargs: linen: keyword arguments of the call (e.g. ``train=False``).

    Returns:
      Parameter leaf path (as in the ``params`` collection / ``nnx.Param``
      state, e.g. ``"block1/attention/query/kernel"``) -> non-negative axes of
      that leaf (for NNX layers stacked by ``nnx.vmap`` the stack axes are
      counted).

    Example:
      >>> axes = contraction_axes(zoo.vit.ViT(dim=64, depth=1, heads=4), x)
      >>> axes["block1/attention/query/kernel"], axes["block1/attention/out/kernel"]
      ((0,), (0, 1))
      >>> pruned, masks = prune(params, pattern=NM(2, 4), axes=axes)

    References:
      Mishra et al., arXiv:2104.08378 (N:M along the contraction dimension);
      NVIDIA apex ASP.
    """
    if _is_linen(model):
        from sparsejax.adapters.linen import Sparsified  # pylint: disable=import-outside-toplevel
        if isinstance(model, Sparsified):
            model = model.model
        _need_inputs("contraction_axes", example_args, example_kwargs)
        return {f"{p}/kernel" if p else "kernel": info.contraction_axes
                for p, (info, _) in _linen_layers(model, example_args, example_kwargs).items()}
    if _is_nnx(model):
        from sparsejax.adapters import nnx as nnx_adapter  # pylint: disable=import-outside-toplevel
        out = {}
        for path, layer in _nnx_layers(model).items():
            stack = len(nnx_adapter._stack_shape(layer))  # pylint: disable=protected-access
            info = nnx_adapter.layer_info(path, layer)
            out[f"{path}/kernel"] = tuple(stack + a for a in info.contraction_axes)
        return out
    raise TypeError(f"contraction_axes(model) needs a flax.linen.Module or flax.nnx.Module, got "
                    f"{type(model).__name__}.")


# --------------------------------------------------------- effective params
def _masked(params: Any, masks: Any) -> Any:
    if masks is None:
        return params
    from sparsejax.transform import PruningState, get_masks  # pylint: disable=import-outside-toplevel
    from sparsejax.tree import apply_masks  # pylint: disable=import-outside-toplevel
    is_state = lambda x: isinstance(x, PruningState)
    if any(is_state(x) for x in jax.tree.leaves(masks, is_leaf=is_state)):
        masks = get_masks(masks)
    return apply_masks(params, masks)


def _replace_leaves(tree: Any, new: dict[str, Array]) -> Any:
    pairs, treedef = paths.flatten(tree)
    return jax.tree_util.tree_unflatten(treedef, [new.get(p, x) for p, x in pairs])


def _layer_weight(method: Method, info: LayerInfo, sparsity: float, stored: dict,
                  shared: Optional[dict], kernel: Array, dtype: Any, training: bool) -> Array:
    state = common.restore_state(method, info.path, stored)
    policy, aux = method.policy_aux(info, sparsity, state, shared, training)
    if policy is None or policy.weight is None:
        return kernel
    # The layer hands the op its kernel in the compute dtype: select on that, keep
    # the parameter's dtype (a kept entry that is 0 there is 0 either way).
    compute = kernel if dtype is None else jnp.asarray(kernel, dtype)
    w_s = ops.forward_weight(compute, policy, aux, where=info.path)
    return jnp.where(w_s != 0, kernel, jnp.zeros((), kernel.dtype))


def _linen_effective(model: Any, variables: Any, args: tuple, kwargs: dict,
                     training: bool) -> Any:
    from sparsejax.adapters import linen  # pylint: disable=import-outside-toplevel
    from sparsejax.methods import Dense  # pylint: disable=import-outside-toplevel
    variables = dict(variables)
    drop = (common.COLLECTION, common.METRICS)
    plain = {k: v for k, v in variables.items() if k not in drop}
    if not isinstance(model, linen.Sparsified) or isinstance(model.method, Dense):
        return plain
    if common.COLLECTION not in variables:
        raise ValueError(f"effective_params: the variables have no {common.COLLECTION!r} "
                         f"collection; pass all variables {model.method.name} init returned.")
    _need_inputs("effective_params", args, kwargs)
    layers = _linen_layers(model.model, args, kwargs)
    state_tree = variables[common.COLLECTION]
    nodes = linen._layer_nodes(state_tree)  # pylint: disable=protected-access
    params = plain.get("params", {})
    kernels = {p: linen._lookup(params, p)["kernel"] for p in nodes}  # pylint: disable=protected-access
    sparsities = model.method.sparsities({p: tuple(k.shape) for p, k in kernels.items()})
    shared = None
    if linen.SHARED in state_tree:
        shared = {k: v for k, v in state_tree[linen.SHARED].items() if k != "num_sparse_layers"}
        shared = shared or None
    new = {}
    for path, state in nodes.items():
        if path not in layers:
            raise ValueError(f"effective_params: sparse layer {path!r} was not called with the "
                             "example inputs given; pass the inputs (and keyword arguments such "
                             "as train=...) the model is applied with.")
        info, dtype = layers[path]
        new[f"{path}/kernel"] = _layer_weight(model.method, info, sparsities[path], dict(state),
                                              shared, jnp.asarray(kernels[path]), dtype,
                                              training)
    plain["params"] = _replace_leaves(params, new)
    return plain


def _nnx_effective(model: Any, training: bool) -> Any:
    from flax import nnx  # pylint: disable=import-outside-toplevel
    from sparsejax.adapters import nnx as nnx_adapter  # pylint: disable=import-outside-toplevel
    state = nnx.state(model, nnx.Param)
    pure = nnx.to_pure_dict(state)
    for path, layer in _nnx_layers(model).items():
        op = getattr(layer, nnx_adapter._field(layer))  # pylint: disable=protected-access
        if not isinstance(op, nnx_adapter.SparseOp):
            continue
        kernel = jnp.asarray(layer.kernel[...])
        layer_state = {k: v[...] for k, v in op.state.items()}
        shared = None if op.shared is None else op.shared.value.get_value()
        dtype = getattr(layer, "dtype", None)

        def weight(k, st, _op=op, _dtype=dtype, _shared=shared):
            return _layer_weight(_op.method, _op.info, _op.sparsity, st, _shared, k, _dtype,
                                 training)

        for _ in nnx_adapter._stack_shape(layer):  # pylint: disable=protected-access
            weight = jax.vmap(weight)
        node = pure
        *parents, _ = (path + "/kernel").split("/")
        for part in parents:
            node = node[int(part) if part.isdigit() and int(part) in node else part]
        node["kernel"] = weight(kernel, layer_state)
    nnx.replace_by_pure_dict(state, pure)
    return state


def effective_params(model: Any, variables: Any = None, *example_args: Any,
                     masks: Any = None, training: bool = False, **example_kwargs: Any) -> Any:
    """The parameters the sparse forward multiplies with, for the plain model.

    For every sparse layer the kernel is replaced by the ``W_s`` its forward
    uses: SWAT's top-K weights (cached thresholds included), STE's N:M (or
    other pattern) kernel; ``masks`` (a :func:`sparsejax.tree.compute_masks`
    tree or an optimizer state holding :func:`sparsejax.pruning`'s masks) are
    applied too. Methods that leave the forward weights alone (meProp, DSG,
    ``dense``) return the parameters unchanged (DSG's forward masks *outputs*;
    the plain model does not reproduce that). Running the un-sparsified model
    on the result reproduces the sparsified model's forward (evaluation mode
    by default), so it can be exported
    (:func:`sparsejax.analysis.compression.export_compressed`) or served by a dense
    runtime.

    Args:
      model: a linen :class:`~sparsejax.adapters.linen.Sparsified` model (or a
        plain linen model: only ``masks`` apply), or an NNX model sparsified in
        place by :func:`sparsejax.sparsify`.
      variables: linen: everything ``init`` returned (``params``, the
        ``"sparsity"`` collection, ``batch_stats``...). NNX: ``None`` (the
        model holds its state).
      *example_args: linen: the call's inputs (the layers' contraction axes and
        compute dtypes are read from an abstract call). NNX: not needed.
      masks: optional pruning masks (or an optimizer state containing them)
        applied to the ``params`` first.
      training: ``False`` (default): the weights an evaluation call uses (state
        read-only; with ``sparse_eval=False`` that is the dense kernel). ``True``:
        the weights the next training call's forward uses (SWAT with
        ``period > 1`` may refresh its thresholds there).
      **example_kwargs: linen: keyword arguments of the call (``train=False``).

    Returns:
      Linen: the variables dict without the ``"sparsity"`` / ``"sparsity_metrics"``
      collections, ``params`` holding the effective kernels:
      ``plain_model.apply(result, x)`` equals ``sparse_model.apply(variables, x)``.
      NNX: an ``nnx.State`` of the model's ``nnx.Param`` variables:
      ``nnx.update(plain_model, result)`` then ``plain_model(x)`` equals the
      sparse model's evaluation call.

    Example:
      >>> sparse = sparsify(mlp, swat(0.8))
      >>> variables = sparse.init(key, x)
      >>> eff = effective_params(sparse, variables, x)
      >>> y = mlp.apply(eff, x)                     # == sparse.apply(variables, x)
      >>> export_compressed(eff["params"], "/tmp/model.npz")

    References:
      Raihan & Aamodt, NeurIPS 2020 (SWAT); Zhou et al., ICLR 2021 (STE N:M);
      Mishra et al., arXiv:2104.08378 (2:4 along the contraction dimension).
    """
    if not isinstance(training, bool):
        raise TypeError(f"effective_params(training=...) must be True or False, got {training!r}.")
    if _is_linen(model):
        if variables is None:
            raise TypeError("effective_params(linen_model, variables, *inputs) needs the "
                            "variables init returned.")
        out = _linen_effective(model, variables, example_args, example_kwargs, training)
        if masks is not None:
            out["params"] = _masked(out["params"], masks)
        return out
    if _is_nnx(model):
        if variables is not None or example_args or example_kwargs:
            raise TypeError("effective_params(nnx_model) takes no variables or inputs: the NNX "
                            "model holds its state; call effective_params(model).")
        state = _nnx_effective(model, training)
        if masks is not None:
            from flax import nnx  # pylint: disable=import-outside-toplevel
            pure = _masked(nnx.to_pure_dict(state), masks)
            nnx.replace_by_pure_dict(state, pure)
        return state
    raise TypeError(f"effective_params(model) needs a flax.linen.Module or flax.nnx.Module, got "
                    f"{type(model).__name__}.")


__all__ = ["contraction_axes", "effective_params"]
