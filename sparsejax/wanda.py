"""Wanda: one-shot pruning of a trained model by weight magnitude × input norm.

Wanda (Sun, Liu, Bair & Kolter, ICLR 2024) scores every weight of a linear
layer by ``|W_ij| · ‖X_j‖₂``, where ``‖X_j‖₂`` is the L2 norm of the layer's
input feature ``j`` over all calibration tokens (batch × sequence / spatial
positions), and removes the lowest-scoring weights *within each output*
(unstructured: the same fraction of every output neuron's inputs; N:M: ``n``
of every ``m`` consecutive inputs). No retraining and no weight update.

In a Flax kernel the inputs are the *contraction* axes: ``(in, out)`` for
``nn.Dense`` (each output column is one comparison group), ``(in, heads,
head_dim)`` for an attention query (groups over ``in`` for every (head,
head_dim)), ``(heads, head_dim, out)`` for its output projection (groups over
``heads × head_dim`` flattened), the kernel labels an ``nn.Einsum`` shares with
its input and not with its output (:func:`sparsejax.contraction_axes`). Labels
an Einsum kernel shares with both its input and output (a batch of kernels)
get one norm per index and their own groups.

Pipeline (each step public, for notebooks):

1. :func:`wanda_norms` – calls the model on the calibration batches under
   ``nn.intercept_methods`` (no monkeypatching, one jitted program per batch
   shape) and returns ``{kernel path: ‖X‖₂}`` shaped to broadcast against the
   kernel (the input-feature dims at the contraction axes, 1 elsewhere).
2. :func:`wanda_scores` – ``|W| · ‖X‖₂`` for those kernels (a params-shaped tree).
3. :func:`wanda_masks` – per-output top-k (unstructured) through
   :func:`sparsejax.select.select_topk`, or ``NM(n, m)`` along the contraction
   axes through :func:`sparsejax.tree.compute_masks`.
4. :func:`wanda` – all of it, plus :func:`sparsejax.tree.apply_masks`.

Deviations from the official code (github.com/locuslab/wanda), all documented
where they apply: the statistic is the plain sum of squares over tokens (the
official code keeps ``Σ x² / nsamples``, a constant factor per layer that
changes no ranking); ties at the cut keep the lower input index (the official
stable ascending sort prunes it first); ``NM(n, m)`` keeps ``n`` per group (the
official ``prune_n`` counts pruned entries; identical for 2:4). By default the
calibration runs once through the dense model, as the official image-classifier
code (``image_classifiers/prune_utils.py``) does; ``sequential=True`` re-collects
the inputs after each block is pruned, as the official LLM code
(``lib/prune.py``, ``prune_wanda``) does.

References:
  Sun, Liu, Bair, Kolter, "A Simple and Effective Pruning Approach for Large
  Language Models", ICLR 2024 (arXiv:2306.11695).
"""

from __future__ import annotations

import dataclasses
import math
import string
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sparsejax import select
from sparsejax.adapters import common
from sparsejax.paths import PathRule, flatten, leaf_paths, logger, selected_paths
from sparsejax.patterns import NM
from sparsejax.tree import apply_masks, compute_masks
from sparsejax.validate import check_finite, check_sparsity

Array = jax.Array
ArrayLike = jax.typing.ArrayLike
SparsityOrPattern = Union[float, NM]

_SUPPORTED = (nn.Dense, nn.DenseGeneral, nn.Einsum)
_SUPPORTED_NAMES = "nn.Dense, nn.DenseGeneral, nn.Einsum"


@dataclasses.dataclass(frozen=True)
class _Layer:
    """A supported layer as Wanda sees it: its kernel path and einsum labels."""

    kernel: str                      # params path of the kernel, "block1/mlp_fc1/kernel"
    module: str                      # module path, "block1/mlp_fc1"
    kind: str                        # type name
    kernel_shape: tuple[int, ...]
    in_labels: str                   # one letter per input axis
    kernel_labels: str               # one letter per kernel axis
    contraction: tuple[int, ...]     # kernel axes contracted with the input

    def statistic(self, x: Array) -> Array:
        """Sum over tokens of ``x²``, shaped to broadcast against the kernel."""
        kept = "".join(c for c in self.kernel_labels if c in self.in_labels)
        sq = jnp.square(jnp.asarray(x).astype(jnp.float32))
        s = jnp.einsum(f"{self.in_labels}->{kept}", sq)
        shape = tuple(d if c in self.in_labels else 1
                      for c, d in zip(self.kernel_labels, self.kernel_shape))
        return s.reshape(shape)


def _labels(module: nn.Module, x: Any, kernel_shape: tuple[int, ...], args, kwargs,
            path: str) -> tuple[str, str, tuple[int, ...]]:
    """(input labels, kernel labels, contraction axes) of a supported layer's call."""
    letters = iter(string.ascii_letters)
    ndim = np.ndim(x)
    if isinstance(module, nn.Einsum):
        from sparsejax.adapters.linen import _einsum_str  # pylint: disable=import-outside-toplevel
        equation = _einsum_str(module, args, kwargs)
        contraction = common.einsum_contraction_axes(equation, kernel_shape)
        lhs, rhs = equation.split("->")[0].split(",")
        if "..." in lhs:
            fresh = "".join(c for c in string.ascii_letters if c not in equation)
            lhs = lhs.replace("...", fresh[:ndim - (len(lhs) - 3)])
        return lhs, rhs, contraction
    if isinstance(module, nn.DenseGeneral):
        axis = module.axis if isinstance(module.axis, (tuple, list)) else (module.axis,)
        batch = module.batch_dims if isinstance(module.batch_dims, (tuple, list)) else (
            module.batch_dims,)
        axis = sorted(a % ndim for a in axis)
        batch = sorted(b % ndim for b in batch)
        in_labels = [next(letters) for _ in range(ndim)]
        feats = "".join(next(letters) for _ in range(len(kernel_shape) - len(batch) - len(axis)))
        kernel = "".join(in_labels[a] for a in batch + axis) + feats
        contraction = tuple(range(len(batch), len(batch) + len(axis)))
        return "".join(in_labels), kernel, contraction
    # nn.Dense: (..., in) x (in, out).
    if ndim < 1:
        raise ValueError(f"layer {path!r} received a scalar input; Wanda needs inputs with a "
                         "feature axis.")
    in_labels = string.ascii_letters[:ndim]
    return in_labels, in_labels[-1] + "Z", (0,)


def _find_layers(model: nn.Module, variables: Mapping[str, Any], batch: tuple,
                 apply_kwargs: Mapping[str, Any]) -> tuple[list[_Layer], dict[str, str]]:
    """The supported layers (call order, each once) and every module called (path -> type)."""
    layers: dict[str, _Layer] = {}
    called: dict[str, str] = {}

    def record(next_fun, args, kwargs, ctx):
        mod = ctx.module
        if ctx.method_name == "__call__":
            path = "/".join(mod.scope.path)
            called.setdefault(path, type(mod).__name__)
            if isinstance(mod, _SUPPORTED) and path not in layers:
                x = args[0] if args else kwargs["inputs"]
                y = next_fun(*args, **kwargs)
                kernel = f"{path}/kernel" if path else "kernel"
                shape = tuple(mod.get_variable("params", "kernel").shape)
                in_labels, k_labels, contraction = _labels(mod, x, shape, args, kwargs, kernel)
                layers[path] = _Layer(kernel, path, type(mod).__name__, shape, in_labels,
                                      k_labels, contraction)
                return y
        return next_fun(*args, **kwargs)

    def run(variables, batch):
        with nn.intercept_methods(record):
            return model.apply(variables, *batch, **apply_kwargs)

    jax.eval_shape(run, variables, batch)
    return list(layers.values()), called


def _batches(calibration_batches: Iterable[Any]) -> list[tuple]:
    if calibration_batches is None:
        raise ValueError("calibration_batches is None; pass an iterable of model inputs "
                         "(e.g. a list of arrays of shape (batch, ...)).")
    if isinstance(calibration_batches, (np.ndarray, jax.Array)):
        raise TypeError("calibration_batches must be an iterable of batches, got a single "
                        f"array of shape {np.shape(calibration_batches)}; wrap it in a list "
                        "([x]) to use it as one batch.")
    out = [tuple(b) if isinstance(b, tuple) else (b,) for b in calibration_batches]
    if not out:
        raise ValueError("calibration_batches is empty; Wanda needs at least one batch of "
                         "model inputs to measure the input norms (the paper uses 128 "
                         "sequences).")
    return out


def _shapes(batch: tuple) -> Any:
    return tuple(np.shape(b) for b in batch) if len(batch) > 1 else np.shape(batch[0])


class _Calibration:
    """Runs the model on the calibration batches and sums each layer's ``x²`` statistic."""

    def __init__(self, model: nn.Module, params: Any, batches: list[tuple],
                 collections: Optional[Mapping[str, Any]],
                 apply_kwargs: Optional[Mapping[str, Any]]):
        if not isinstance(model, nn.Module):
            raise TypeError(f"wanda needs a flax.linen.Module, got {type(model).__name__}.")
        self.model = model
        self.collections = dict(collections or {})
        if "params" in self.collections:
            raise ValueError("collections holds 'params'; pass the params tree as params= and "
                             "only the other collections (e.g. {'batch_stats': ...}) here.")
        self.apply_kwargs = dict(apply_kwargs or {})
        self.batches = batches
        variables = {"params": params, **self.collections}
        try:
            self.layers, called = _find_layers(model, variables, batches[0], self.apply_kwargs)
        except Exception as error:  # pylint: disable=broad-except
            raise self._shape_error(0, error) from error
        if not self.layers:
            raise ValueError(f"the model has no layer Wanda can prune ({_SUPPORTED_NAMES}); it "
                             f"called {dict(list(called.items())[:8]) or 'no submodule'}. Wanda "
                             "scores the inputs of linear layers; a model of other layers (Conv, "
                             "Embed) has nothing to prune.")
        leaves = leaf_paths(params)
        for layer in self.layers:
            if layer.kernel not in leaves:
                raise ValueError(f"layer {layer.module!r} has no kernel {layer.kernel!r} in "
                                 "params; pass the model's 'params' collection (not the whole "
                                 "variables dict) as params.")

        def stats(params, collections, batch):
            sums: dict[str, Array] = {}
            by_path = {l.module: l for l in self.layers}

            def record(next_fun, args, kwargs, ctx):
                mod = ctx.module
                if ctx.method_name == "__call__" and isinstance(mod, _SUPPORTED):
                    layer = by_path.get("/".join(mod.scope.path))
                    if layer is not None:
                        s = layer.statistic(args[0] if args else kwargs["inputs"])
                        sums[layer.kernel] = sums[layer.kernel] + s if layer.kernel in sums \
                            else s
                return next_fun(*args, **kwargs)

            with nn.intercept_methods(record):
                model.apply({"params": params, **collections}, *batch, **self.apply_kwargs)
            return sums

        self._stats = jax.jit(stats)

    def _shape_error(self, index: int, error: Exception) -> ValueError:
        got = _shapes(self.batches[index])
        fits = (f" Batch 0 has shape {_shapes(self.batches[0])}, which the model accepts; "
                "every batch needs the same per-example shape." if index else "")
        return ValueError(f"calibration batch {index} (shape {got}) does not fit the model: "
                          f"{type(error).__name__}: {' '.join(str(error).split())[:600]}.{fits} "
                          "Pass batches of the inputs the model was trained on (the shape "
                          "its params were initialised with).")

    def sums(self, params: Any, only: Optional[set[str]] = None) -> dict[str, Array]:
        """``{kernel path: Σ_tokens x²}`` over every batch (NaN/inf raise, naming layer and batch)."""
        total: dict[str, Array] = {}
        for i, batch in enumerate(self.batches):
            try:
                s = self._stats(params, self.collections, batch)
            except Exception as error:  # pylint: disable=broad-except
                raise self._shape_error(i, error) from error
            s = jax.device_get(s)
            for kernel, value in s.items():
                if only is not None and kernel not in only:
                    continue
                if not np.isfinite(value).all():
                    raise ValueError(
                        f"calibration batch {i}: the input of layer {kernel!r} holds NaN or inf "
                        f"({int((~np.isfinite(value)).sum())} of {value.size} input features); "
                        "check the batch for NaN values and the weights before it for "
                        "divergence.")
                total[kernel] = total[kernel] + value if kernel in total else value
        return total


def wanda_norms(model: nn.Module, params: Any, calibration_batches: Iterable[Any], *,
                collections: Optional[Mapping[str, Any]] = None,
                apply_kwargs: Optional[Mapping[str, Any]] = None) -> dict[str, Array]:
    """Per-input-feature L2 norms ``‖X_j‖₂`` of every Dense / DenseGeneral / Einsum input.

    Calls ``model.apply({"params": params, **collections}, *batch, **apply_kwargs)``
    on every calibration batch under ``nn.intercept_methods`` and sums the
    squares of each supported layer's input over all tokens (every input axis
    that is not an input-feature axis of the kernel: batch, sequence, spatial).

    Args:
      model: an unbound linen module.
      params: its ``"params"`` collection.
      calibration_batches: an iterable of batches; a batch is the model's first
        positional input (an array) or a tuple of positional inputs.
      collections: other variable collections (e.g. ``{"batch_stats": ...}``).
      apply_kwargs: keyword arguments of every call (e.g. ``{"train": False}``).

    Returns:
      ``{kernel path: norms}``, ``norms`` float32 with the kernel's rank: the
      input-feature dims at the kernel's contraction (and shared batch) axes,
      1 at its output axes, so ``|kernel| * norms`` is the Wanda score.
      The official code's ``scaler_row`` equals ``norms² / nsamples``.

    Raises:
      ValueError: empty calibration set, a batch the model cannot take (names
        the batch index and its shape), a model without supported layers, NaN /
        inf in a layer's input (names the layer and the batch).

    Example:
      >>> norms = wanda_norms(model, params, [x[:32], x[32:]])
      >>> norms["Dense_0/kernel"].shape        # Dense (in, out) kernel
      (784, 1)

    References:
      Sun et al., "A Simple and Effective Pruning Approach for Large Language
      Models", ICLR 2024.
    """
    calibration = _Calibration(model, params, _batches(calibration_batches), collections,
                               apply_kwargs)
    return {k: jnp.sqrt(jnp.asarray(v)) for k, v in calibration.sums(params).items()}


def wanda_layers(model: nn.Module, params: Any, batch: Any, *,
                 collections: Optional[Mapping[str, Any]] = None,
                 apply_kwargs: Optional[Mapping[str, Any]] = None) -> dict[str, tuple[int, ...]]:
    """``{kernel path: contraction axes}`` of every layer Wanda can prune, in call order.

    The ``nn.Dense`` / ``nn.DenseGeneral`` / ``nn.Einsum`` layers ``model`` calls
    on ``batch`` (an abstract trace, no FLOPs); the last entry is the layer
    :func:`wanda` leaves dense by default (the head).

    Args:
      model: an unbound linen module.
      params: its ``"params"`` collection.
      batch: one model input (an array, or a tuple of positional inputs).
      collections: other variable collections.
      apply_kwargs: keyword arguments of the call.

    Returns:
      Kernel path -> the kernel axes contracted with the layer's input.

    Raises:
      ValueError: as :func:`wanda_norms` (a batch that does not fit, no supported layer).

    Example:
      >>> list(wanda_layers(zoo.vit.ViT(dim=32, depth=1, heads=4), params, x))[-1]
      'head/kernel'

    References:
      Sun et al., ICLR 2024 (the linear layers of the transformer blocks).
    """
    calibration = _Calibration(model, params, _batches([batch]), collections, apply_kwargs)
    return {l.kernel: l.contraction for l in calibration.layers}


def wanda_scores(params: Any, norms: Mapping[str, ArrayLike]) -> dict[str, Array]:
    """``|W| · ‖X‖₂`` for every kernel in ``norms``.

    Args:
      params: the ``"params"`` tree.
      norms: ``{kernel path: norms}`` from :func:`wanda_norms` (broadcastable to
        the kernel).

    Returns:
      ``{kernel path: score}``, float32 of the kernel's shape.

    Raises:
      ValueError: a path not in ``params``, a norm that does not broadcast, NaN
        weights (each naming the path).

    Example:
      >>> scores = wanda_scores(params, wanda_norms(model, params, batches))

    References:
      Sun et al., ICLR 2024 (Eq. 1).
    """
    leaves = leaf_paths(params)
    out = {}
    for path, norm in norms.items():
        if path not in leaves:
            raise ValueError(f"norms names {path!r}, which is not a leaf of params.")
        w = jnp.asarray(leaves[path])
        check_finite(w, path)
        norm = jnp.asarray(norm, jnp.float32)
        if norm.ndim != w.ndim or any(n not in (1, d) for n, d in zip(norm.shape, w.shape)):
            raise ValueError(f"the norms of {path!r} have shape {norm.shape}, which does not "
                             f"broadcast against the kernel {w.shape}; use wanda_norms.")
        out[path] = jnp.abs(w.astype(jnp.float32)) * norm
    return out


@jax.jit
def _per_output_keep(score: Array, k: Array) -> Array:
    """Top-``k`` of every column of a ``(K, R)`` score matrix (ties: lower row first)."""
    pick = lambda column: select.select_topk([column], k)[0]
    return jax.vmap(pick, in_axes=1, out_axes=1)(score)


def per_output_mask(score: ArrayLike, sparsity: float, axes: Sequence[int],
                    where: Optional[str] = None) -> Array:
    """Keeps the top ``ceil((1 - sparsity) · K)`` of every output, over the contraction axes.

    ``K`` is the product of the kernel's ``axes`` (flattened, in kernel order);
    every index of the other axes (each output neuron) keeps exactly that many
    entries of its own. The same mask as ``NM(k, K, axis=axes).mask(score)``
    (one group spanning the whole contraction), selected per output with
    :func:`sparsejax.select.select_topk` (vectorised over outputs) instead of
    ``NM``'s ``K`` pairwise comparisons, which cost ``O(K²)`` per output.

    Args:
      score: non-negative scores of the kernel's shape (e.g. Wanda's).
      sparsity: fraction removed per output, in ``[0, 1)``.
      axes: the kernel's contraction axes.
      where: path for error messages.

    Returns:
      A bool mask of ``score``'s shape (ties at the cut keep the lower flattened
      input index; NaN scores are never kept).

    Example:
      >>> per_output_mask(jnp.array([[1., 4.], [3., 2.]]), 0.5, (0,)).tolist()
      [[False, True], [True, False]]

    References:
      Sun et al., ICLR 2024 (comparison group: each output).
    """
    check_sparsity(sparsity, where)
    score = jnp.asarray(score)
    axes = tuple(a % score.ndim for a in axes)
    rest = [a for a in range(score.ndim) if a not in axes]
    perm = list(axes) + rest
    moved = jnp.transpose(score, perm)
    size = math.prod(score.shape[a] for a in axes)
    k = select.keep_count(sparsity, size)
    keep = _per_output_keep(moved.reshape(size, -1), jnp.asarray(k, jnp.int32))
    return jnp.transpose(keep.reshape(moved.shape), list(np.argsort(perm)))


def _check_target(sparsity_or_pattern: Any) -> None:
    if isinstance(sparsity_or_pattern, NM):
        return
    if isinstance(sparsity_or_pattern, (bool, np.bool_)) or not isinstance(
            sparsity_or_pattern, (int, float, np.integer, np.floating)):
        raise TypeError(f"sparsity_or_pattern must be a float sparsity in [0, 1) (unstructured, "
                        f"per output) or NM(n, m), got {sparsity_or_pattern!r}. Wanda compares "
                        "weights within each output, so channel / block patterns do not apply.")
    check_sparsity(float(sparsity_or_pattern), "sparsity_or_pattern")


def wanda_masks(params: Any, scores: Mapping[str, ArrayLike],
                sparsity_or_pattern: SparsityOrPattern,
                axes: Mapping[str, Sequence[int]], *, strict: bool = False) -> Any:
    """Masks from Wanda scores: per-output top-k, or N:M along the contraction axes.

    Args:
      params: the ``"params"`` tree (gives the masks' structure).
      scores: ``{kernel path: score}`` (:func:`wanda_scores`); only these
        kernels are pruned.
      sparsity_or_pattern: a float in ``[0, 1)`` (every output keeps
        ``ceil((1 - s) · K)`` of its ``K`` inputs, :func:`per_output_mask`) or
        ``NM(n, m)`` (``n`` of every ``m`` consecutive inputs along the
        flattened contraction axes, by score, through
        :func:`sparsejax.tree.compute_masks`).
      axes: ``{kernel path: contraction axes}`` (:func:`sparsejax.contraction_axes`).
      strict: N:M only: a kernel whose contraction size is not divisible by
        ``m`` raises (naming it); by default it is skipped (mask ``None``) with
        a warning on the ``"sparsejax"`` logger, as in ``compute_masks``.

    Returns:
      A mask tree with ``params``' structure (bool arrays, ``True`` = kept;
      ``None`` for leaves not pruned).

    Example:
      >>> masks = wanda_masks(params, scores, NM(2, 4), sparsejax.contraction_axes(model, x))

    References:
      Sun et al., ICLR 2024; Mishra et al., arXiv:2104.08378 (N:M).
    """
    _check_target(sparsity_or_pattern)
    leaves = leaf_paths(params)
    missing = [p for p in scores if p not in axes]
    if missing:
        raise ValueError(f"no contraction axes for {missing[0]!r}; pass "
                         "axes=sparsejax.contraction_axes(model, x).")
    scores = {p: jnp.asarray(s) for p, s in scores.items()}
    for p, s in scores.items():
        if p not in leaves or tuple(np.shape(leaves[p])) != tuple(s.shape):
            raise ValueError(f"the score of {p!r} has shape {tuple(s.shape)}; params has "
                             f"{np.shape(leaves.get(p)) if p in leaves else 'no such leaf'}.")
    if isinstance(sparsity_or_pattern, NM):
        # The score tree in params' structure; only the scored kernels are selected.
        pairs, treedef = flatten(params)
        score_tree = jax.tree_util.tree_unflatten(treedef, [scores.get(p, x) for p, x in pairs])
        chosen = set(scores)
        return compute_masks(score_tree, pattern=sparsity_or_pattern,
                             include=lambda path, _: path in chosen, strict=strict,
                             axes={p: tuple(axes[p]) for p in scores})
    s = float(sparsity_or_pattern)
    masks = {p: per_output_mask(x, s, axes[p], where=p) for p, x in scores.items()}
    pairs, treedef = flatten(params)
    return jax.tree_util.tree_unflatten(treedef, [masks.get(p) for p, _ in pairs])


def _groups(layers: Sequence[_Layer]) -> list[list[_Layer]]:
    """Layers grouped by block: the first module-path component below the layers' common
    prefix (``block3`` of ``block3/attention/query``), in call order."""
    parts = [l.module.split("/") for l in layers]
    common_len = 0
    while all(len(p) > common_len + 1 for p in parts) and len({p[common_len] for p in parts}) == 1:
        common_len += 1
    groups: dict[str, list[_Layer]] = {}
    for layer, p in zip(layers, parts):
        groups.setdefault(p[common_len] if len(p) > common_len else "", []).append(layer)
    return list(groups.values())


def wanda(model: nn.Module, params: Any, calibration_batches: Iterable[Any],
          sparsity_or_pattern: SparsityOrPattern, *,
          include: PathRule | None = None, exclude: PathRule | None = None,
          collections: Optional[Mapping[str, Any]] = None,
          apply_kwargs: Optional[Mapping[str, Any]] = None,
          sequential: bool = False, strict: bool = False) -> tuple[Any, Any]:
    """Wanda one-shot pruning of a trained linen model (no retraining, no weight update).

    Scores every weight of the selected ``nn.Dense`` / ``nn.DenseGeneral`` /
    ``nn.Einsum`` kernels by ``|W| · ‖X‖₂`` (:func:`wanda_norms`,
    :func:`wanda_scores`) and keeps, within each output, the top ``1 - s`` of its
    inputs (a float ``s``) or ``n`` of every ``m`` consecutive inputs
    (``NM(n, m)``, along the layer's contraction axes) (:func:`wanda_masks`).

    Which layers: the kernels of every supported layer the model calls,
    *except the last one called* (the classifier / LM head), as the paper prunes
    the linear layers inside the transformer blocks and neither the embeddings
    nor the head. Convs and embeddings are never pruned (their kernels are not
    linear-layer inputs Wanda measures; logged). ``include`` replaces the
    default (a path rule on kernel paths, :mod:`sparsejax.paths`; only kernels
    of supported layers are eligible, other matched leaves are logged and left
    alone), ``exclude`` removes kernels. The head is left dense only when neither
    is given: ``exclude=()`` prunes every supported layer, head included.

    Args:
      model: an unbound linen module.
      params: its trained ``"params"`` collection.
      calibration_batches: an iterable of model inputs (arrays, or tuples of
        positional inputs), e.g. 8 training batches.
      sparsity_or_pattern: a float in ``[0, 1)`` (unstructured per output) or
        ``NM(n, m)``.
      include: path rule of kernels to prune (default: every supported layer).
      exclude: path rule of kernels left dense (default: the last layer called).
      collections: other variable collections (e.g. ``{"batch_stats": ...}``).
      apply_kwargs: keyword arguments of every model call (e.g. ``{"train": False}``).
      sequential: ``False`` (default): one calibration pass through the dense
        model (the official image-classifier code). ``True``: prune block by
        block in call order (a block = the first module-path component below
        the layers' common prefix, e.g. ``block3``), re-collecting the inputs
        with the earlier blocks already pruned (the official LLM code); one
        calibration pass per block.
      strict: N:M only: raise (naming the kernel) instead of skipping, with a
        logged warning, a kernel whose contraction size is not divisible by ``m``.

    Returns:
      ``(pruned_params, masks)``: ``params`` with the pruned weights exactly 0,
      and the mask tree (``True`` = kept, ``None`` for untouched leaves) for
      :func:`sparsejax.pruning`-style retraining or :func:`sparsejax.summary`.

    Raises:
      ValueError: sparsity outside ``[0, 1)``, empty calibration set, a batch
        the model cannot take (names the batch and its shape), a model without
        supported layers, no kernel selected, NaN weights or NaN / inf inputs
        (naming the layer), a kernel N:M does not fit with ``strict=True``.
      TypeError: a pattern other than ``NM``.

    Example:
      >>> model = zoo.vit.ViT(num_classes=10, patch=4, dim=64, depth=2, heads=4, mlp_dim=128)
      >>> pruned, masks = wanda(model, params, [x[i:i + 64] for i in range(0, 512, 64)], 0.5)
      >>> pruned, masks = wanda(model, params, batches, NM(2, 4))

    References:
      Sun, Liu, Bair, Kolter, "A Simple and Effective Pruning Approach for Large
      Language Models", ICLR 2024; official code github.com/locuslab/wanda.
    """
    _check_target(sparsity_or_pattern)
    calibration = _Calibration(model, params, _batches(calibration_batches), collections,
                               apply_kwargs)
    layers = calibration.layers
    kernels = {l.kernel: l for l in layers}
    if exclude is None and include is None:
        exclude = (f"^{layers[-1].kernel}$",)
        logger.info("wanda: leaving the last layer called, %s, dense (the head); pass "
                    "exclude=() to prune it too", layers[-1].kernel)
    picked = selected_paths(params, include, exclude)
    for path in picked:
        if path not in kernels and include is not None:
            logger.warning("wanda: %s is not the kernel of a %s layer; left dense", path,
                           _SUPPORTED_NAMES)
    chosen = [l for l in layers if l.kernel in set(picked)]
    if not chosen:
        raise ValueError(f"no kernel selected for Wanda: the supported layers are "
                         f"{[l.kernel for l in layers][:8]}; include={include!r} / "
                         f"exclude={exclude!r} leave none. Loosen include / exclude.")
    leaves = leaf_paths(params)
    for layer in chosen:
        check_finite(leaves[layer.kernel], layer.kernel)
    axes = {l.kernel: l.contraction for l in chosen}
    groups = _groups(chosen) if sequential else [chosen]
    current, masks = params, {}
    for group in groups:
        names = {l.kernel for l in group}
        sums = calibration.sums(current, only=names)
        norms = {k: jnp.sqrt(jnp.asarray(sums[k])) for k in names if k in sums}
        never = names - set(norms)
        if never:
            raise ValueError(f"layers {sorted(never)} were not called on the calibration "
                             "batches; exclude them.")
        group_masks = wanda_masks(current, wanda_scores(current, norms), sparsity_or_pattern,
                                  axes, strict=strict)
        masks.update({p: m for p, m in leaf_paths(group_masks).items() if m is not None})
        current = apply_masks(current, group_masks)
        if sequential:
            logger.info("wanda: pruned block %s", sorted(names))
    pairs, treedef = flatten(params)
    mask_tree = jax.tree_util.tree_unflatten(treedef, [masks.get(p) for p, _ in pairs])
    return apply_masks(params, mask_tree), mask_tree
