"""Masks for whole parameter trees: compute, apply, one-shot prune.

Entries are ranked by magnitude, or by a score tree of a criterion
(:mod:`sparsejax.criteria`: random, saliency, SNIP; ``compute_masks(...,
scores=...)``, ``prune(..., criterion=...)``) with the same selection.

:func:`compute_masks` is the tree-level entry point every pruning method uses
(the optax ``pruning`` transform calls it inside ``jit`` with a scheduled
sparsity): it selects layers (:mod:`sparsejax.paths`), spreads the target over
them (:mod:`sparsejax.distributions`) and asks the pattern for each mask, so
all selection goes through :func:`sparsejax.select.select_topk`.

A mask tree has the params' structure with a bool array (the leaf's shape) for
every pruned leaf and ``None`` for untouched leaves (biases, norms, skipped
layers).

N:M on a bare parameter tree: the groups run along each kernel's contraction
(input) axes, which a params tree does not record. Pass them per path
(``axes={"block1/attention/query/kernel": (0,), ...}``, built from the model
by :func:`sparsejax.contraction_axes`); otherwise the rank decides
(:func:`sparsejax.patterns.default_contraction_axes`: rank 2 ``(in, out)`` ->
axis 0, rank 4 Conv ``(h, w, in, out)`` -> axis 2) and a selected kernel of
any other rank is refused with an error naming its path, since e.g. ``(in,
heads, head_dim)`` and ``(heads, head_dim, out)`` contract different axes.
"""

from __future__ import annotations

import difflib
import warnings
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from sparsejax.criteria import Criterion, Magnitude, check_criterion, check_like, check_score
from sparsejax.distributions import (DISTRIBUTIONS, erk_sparsities, global_masks, han_masks,
                                     layer_values)
from sparsejax.paths import PathRule, flatten, leaf_paths, logger, selected_paths
from sparsejax.patterns import Pattern, Unstructured
from sparsejax.validate import check_finite, check_sparsity, is_concrete

Array = jax.Array
ArrayLike = jax.typing.ArrayLike


def _check_arguments(sparsity, pattern, distribution, q) -> None:
    if not isinstance(pattern, Pattern):
        raise TypeError(f"pattern must be a sparsejax Pattern (Unstructured(), NM(2, 4), "
                        f"Channel(axes), Block(shape)), got {pattern!r}.")
    pattern.check_tree_use("sparsity=")
    if not isinstance(distribution, str) or distribution not in DISTRIBUTIONS:
        raise ValueError(f"unknown distribution {distribution!r}; valid: {list(DISTRIBUTIONS)} "
                         "(or pass q=... for Han's q·std rule).")
    fixed = pattern.fixed_sparsity
    if isinstance(sparsity, Mapping):
        if q is not None or distribution != "uniform" or fixed is not None:
            raise ValueError("per-layer sparsities (a mapping path-regex -> sparsity) set each "
                             "layer's target themselves; they take neither q=, a pattern with a "
                             f"fixed sparsity ({pattern!r}) nor distribution={distribution!r}.")
        if not sparsity:
            raise ValueError("the per-layer sparsity mapping is empty; give at least one "
                             "path-regex -> sparsity (e.g. {'.*': 0.9}).")
        for regex, value in sparsity.items():
            check_sparsity(value, f"sparsity[{regex!r}]")
        return
    if q is not None:
        if sparsity is not None:
            raise ValueError("pass exactly one of sparsity= (a target) and q= (Han's q·std "
                             f"threshold), got sparsity={sparsity!r} and q={q!r}.")
        if type(pattern) is not Unstructured or distribution != "uniform":
            raise ValueError(f"q= (Han's |W| > q·std(W) rule) is per entry and per layer; it "
                             f"takes neither pattern={pattern!r} nor distribution={distribution!r}. "
                             "Use sparsity= for structured patterns.")
        return
    if fixed is not None:
        if distribution != "uniform":
            raise ValueError(f"{pattern!r} has a fixed per-group sparsity {fixed:g}; it takes "
                             f"distribution='uniform' only, got {distribution!r}.")
        if sparsity is not None and not (is_concrete(sparsity)
                                         and abs(float(sparsity) - fixed) < 1e-9):
            raise ValueError(f"{pattern!r} implies sparsity {fixed:g}; pass sparsity=None "
                             f"(got {sparsity!r}).")
        return
    if sparsity is None:
        raise ValueError(f"{pattern!r} needs a target: pass sparsity= in [0, 1) or q= for "
                         "Han's q·std rule.")
    if distribution == "global" and not pattern.supports_global:
        raise ValueError(f"{pattern!r} has no global threshold; use distribution='uniform' "
                         "or 'erk'.")
    if distribution != "uniform":
        check_sparsity(sparsity, f"sparsity (distribution={distribution!r})")


AxesMap = Mapping[str, Any]


def _check_axes(axes: AxesMap | None, leaves: Mapping[str, Any]) -> dict[str, Any]:
    """Validates a ``{leaf path: contraction axes}`` map against the params' paths."""
    if axes is None:
        return {}
    if not isinstance(axes, Mapping):
        raise TypeError(f"axes must be a mapping {{parameter path: contraction axes}} (e.g. "
                        f"sparsejax.contraction_axes(model, x)), got {type(axes).__name__}.")
    unknown = [p for p in axes if p not in leaves]
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(leaves), n=3, cutoff=0.5)
        raise ValueError(f"axes names {unknown[0]!r}, which is not a leaf of the params"
                         f"{'; close matches: ' + str(close) if close else ''}. Paths are "
                         "relative to the tree given (the 'params' collection, not the whole "
                         "variables dict).")
    return dict(axes)


def _eligible(params, include, exclude, pattern, strict,
              axes: AxesMap | None = None) -> tuple[dict[str, Array], dict[str, Pattern]]:
    leaves = leaf_paths(params)
    mapped = axes is not None
    axes = _check_axes(axes, leaves)
    out, patterns, ambiguous = {}, {}, []
    for path in selected_paths(params, include, exclude):
        leaf = leaves[path]
        shape = tuple(jnp.shape(leaf))
        if mapped and pattern.uses_contraction_axes and path not in axes:
            # The model's map lists every supported layer's kernel: this leaf is none
            # (a bias, a class token, a position embedding), so it has no contraction axes.
            logger.warning("skipped %s %s: %s groups along contraction axes and the axes map has "
                           "none for it (not a kernel of a supported layer)", path, shape, pattern)
            continue
        pat = pattern.along(axes[path]) if path in axes else pattern
        why = pat.ambiguous(shape, path)
        if why is not None:
            ambiguous.append((path, why))
            continue
        reason = pat.ineligible(shape)
        if reason is not None:
            if strict:
                raise ValueError(f"{pat!r} cannot prune {path!r}: {reason}. Exclude the layer "
                                 f"(exclude={path!r}), pick a pattern that fits its shape, or pass "
                                 "strict=False to skip it with a logged reason.")
            logger.warning("skipped %s %s: %s doesn't fit (%s)", path, shape, pat, reason)
            continue
        check_finite(leaf, path)
        out[path] = jnp.asarray(leaf)
        patterns[path] = pat
    if ambiguous:
        # Refused, not skipped: pruning (or silently keeping) a kernel along a guessed
        # axis is the wrong answer this rule exists to prevent.
        names = [p for p, _ in ambiguous]
        raise ValueError(f"cannot prune {names[:6]}{' ...' if len(names) > 6 else ''} "
                         f"({len(names)} leaves): {ambiguous[0][1]} Or exclude them "
                         f"(exclude={names[0]!r}).")
    return out, patterns


def compute_masks(params: Any, sparsity: ArrayLike | None = None, *,
                  pattern: Pattern = Unstructured(), distribution: str = "uniform",
                  include: PathRule | None = None, exclude: PathRule | None = None,
                  strict: bool = False,
                  q: ArrayLike | Mapping[str, ArrayLike] | None = None,
                  axes: AxesMap | None = None, scores: Any = None) -> Any:
    """Magnitude masks (or masks ranking ``scores``) for every selected leaf of ``params``.

    Works eagerly and under ``jit``: ``sparsity`` (and a scalar ``q``) may be
    traced (no recompilation per value); ``pattern``, ``distribution``,
    ``include``, ``exclude`` and ``strict`` are static Python values. Outside
    ``jit`` NaN weights in a selected leaf raise an error naming it; inside
    ``jit`` NaN entries are simply never kept.

    Args:
      params: parameter pytree (e.g. Flax ``variables["params"]``).
      sparsity: target fraction removed in ``[0, 1)``; or per-layer targets, a
        mapping path-regex -> sparsity where the first regex that
        ``re.search``-es a path gives that layer's target (every pruned layer must
        match one; ``distribution="uniform"`` only; e.g. Han et al.'s
        LeNet-300-100 ``{"fc1": 0.92, "fc2": 0.91, "fc3": 0.74}``); ``None`` for
        N:M patterns (their sparsity is ``1 - n/m``) or with ``q``.
      pattern: which entries may be removed together (``Unstructured()``,
        ``NM(2, 4)``, ``Channel(axes)``, ``Block(shape)``).
      distribution: ``"uniform"`` (every layer at ``sparsity``), ``"erk"``
        (Erdős–Rényi-Kernel, :func:`sparsejax.distributions.erk_sparsities`) or
        ``"global"`` (one threshold across layers; not for N:M).
      include: path rule replacing the default targets (floating leaves with
        ``ndim >= 2``); see :mod:`sparsejax.paths` for the semantics.
      exclude: path rule removing leaves from the selection.
      strict: if ``True`` a selected leaf the pattern does not fit (e.g. an N:M
        axis not divisible by m) raises ``ValueError``; by default it is skipped
        (mask ``None``) with a warning on the ``"sparsejax"`` logger.
      q: Han's rule instead of a target: keep ``|W| > q · std(W)`` per layer; a
        scalar or a mapping path-regex -> q (first match wins). Unstructured
        pattern and ``distribution="uniform"`` only.
      axes: ``{leaf path: contraction axes}`` for N:M (``NM(n, m)`` without an
        explicit ``axis``): the groups run along those kernel axes, flattened.
        Build it from the model with :func:`sparsejax.contraction_axes`; given a
        map, N:M prunes only the selected leaves it lists (biases, embeddings and
        other leaves without contraction axes are skipped with a warning).
        Without a map every selected leaf follows the bare-kernel rule
        (:func:`sparsejax.patterns.default_contraction_axes`): rank 2 ``(in,
        out)`` -> axis 0, rank 4 Conv ``(h, w, in, out)`` -> axis 2; a selected
        leaf of any other rank (e.g. an attention kernel ``(in, heads,
        head_dim)`` or ``(heads, head_dim, out)``) is ambiguous and raises
        ``ValueError`` naming the path, even with ``strict=False``.
      scores: rank by these instead of ``|params|``: a tree with ``params``'
        structure holding a non-negative floating array of the leaf's shape for
        every selected leaf (other leaves may be ``None``), e.g. from
        :mod:`sparsejax.criteria` (``saliency(params, grads)``) or Wanda's
        ``|W| · ‖X‖``. The selection is the one applied to ``|params|``
        (every distribution; N:M ranks within each group; Channel / Block by
        mean score), the masks apply to ``params``. Not with ``q`` (Han's rule
        thresholds the weights themselves). Outside ``jit`` a mismatched tree,
        a missing or misshaped score, a negative or non-finite score raise an
        error naming the path; inside ``jit`` NaN scores are never kept.

    Returns:
      A tree with ``params``' structure: a bool array of the leaf's shape for
      every pruned leaf (``True`` = kept), ``None`` for untouched leaves.

    Example:
      >>> params = {"Dense_0": {"kernel": jnp.arange(8.).reshape(4, 2), "bias": jnp.ones(2)}}
      >>> masks = compute_masks(params, 0.75)
      >>> masks["Dense_0"]["bias"] is None, int(masks["Dense_0"]["kernel"].sum())
      (True, 2)
      >>> grads = {"Dense_0": {"kernel": jnp.ones((4, 2)), "bias": jnp.ones(2)}}
      >>> from sparsejax.criteria import saliency
      >>> masks = compute_masks(params, 0.75, scores=saliency(params, grads))
      >>> int(masks["Dense_0"]["kernel"].sum())
      2

    References:
      Han et al., NeurIPS 2015 (magnitude pruning, q·std rule); Evci et al.,
      "Rigging the Lottery", ICML 2020 (ERK); Mishra et al. 2021 (N:M).
    """
    _check_arguments(sparsity, pattern, distribution, q)
    if scores is not None and q is not None:
        raise ValueError(_Q_WITH_SCORES)
    leaves, patterns = _eligible(params, include, exclude, pattern, strict, axes)
    if scores is not None:
        leaves = _score_leaves(scores, params, leaves)
    return _as_tree(params, _layer_masks(leaves, sparsity, pattern, distribution, q, patterns))


_Q_WITH_SCORES = ("q= (Han's |W| > q·std(W) rule) thresholds the weights themselves and takes "
                  "no other criterion or scores; use sparsity= (a target) with the criterion, "
                  "or the Magnitude() criterion with q.")


def _score_leaves(scores: Any, params: Any, leaves: Mapping[str, Array]) -> dict[str, Array]:
    """The selected leaves' scores, validated against ``params`` (paths, shapes, values)."""
    fix = ("Build the scores from these params (e.g. sparsejax.criteria.saliency(params, grads)) "
           "with the same tree structure.")
    check_like(scores, params, "scores", fix)
    by_path = dict(flatten(scores)[0])
    out = {}
    for path, leaf in leaves.items():
        score = by_path[path]
        if score is None:
            raise ValueError(f"scores has None at {path!r}, which is selected for pruning; give it "
                             f"a score or leave it out of the selection (exclude={path!r}).")
        if tuple(jnp.shape(score)) != tuple(jnp.shape(leaf)):  # a non-floating param leaf
            raise ValueError(f"scores at {path!r} has shape {tuple(jnp.shape(score))}, the "
                             f"parameter {tuple(jnp.shape(leaf))}. {fix}")
        check_score(score, path)
        out[path] = jnp.asarray(score)
    return out


def _layer_masks(leaves: Mapping[str, Array], sparsity, pattern, distribution,
                 q, patterns: Mapping[str, Pattern] | None = None) -> dict[str, Array]:
    if not leaves:
        warnings.warn("compute_masks selected no leaf to prune (see the 'sparsejax' logger "
                      "at INFO level for why); every mask is None.", stacklevel=3)
    if q is not None:
        return han_masks(leaves, q)
    if isinstance(sparsity, Mapping):
        per_layer = layer_values(leaves, sparsity, "sparsity")
        patterns = patterns or {}
        return {p: patterns.get(p, pattern).mask(x, per_layer[p], where=p)
                for p, x in leaves.items()}
    if pattern.fixed_sparsity is not None or distribution == "uniform":
        patterns = patterns or {}
        return {p: patterns.get(p, pattern).mask(x, sparsity, where=p) for p, x in leaves.items()}
    if distribution == "erk":
        per_layer = erk_sparsities({p: x.shape for p, x in leaves.items()}, sparsity)
        return {p: pattern.mask(x, per_layer[p], where=p) for p, x in leaves.items()}
    return global_masks(leaves, sparsity, pattern)


def _as_tree(params: Any, masks: Mapping[str, Array]) -> Any:
    pairs, treedef = flatten(params)
    return jax.tree_util.tree_unflatten(treedef, [masks.get(p) for p, _ in pairs])


def _same_paths(params_pairs, mask_pairs) -> None:
    for i in range(max(len(params_pairs), len(mask_pairs))):
        pp = params_pairs[i][0] if i < len(params_pairs) else None
        mp = mask_pairs[i][0] if i < len(mask_pairs) else None
        if pp != mp:
            raise ValueError(f"masks do not match params: first difference at leaf {i}, params "
                             f"has {pp!r}, masks has {mp!r}. Compute the masks from these params "
                             "(compute_masks) or rebuild them with the same tree structure.")


def apply_masks(params: Any, masks: Any) -> Any:
    """Zeros the entries of ``params`` where ``masks`` is ``False``.

    Args:
      params: parameter pytree.
      masks: a mask tree with ``params``' structure (see :func:`compute_masks`):
        bool arrays of the leaf's shape, ``None`` for untouched leaves.

    Returns:
      ``params`` with masked entries set to 0 (dtype kept); untouched leaves are
      returned as they are.

    Raises:
      ValueError: the trees differ (the message names the first differing
        path) or a mask's shape differs from its leaf's.
      TypeError: a mask leaf is not boolean.

    Example:
      >>> apply_masks({"w": jnp.array([1., 2.])}, {"w": jnp.array([False, True])})
      {'w': Array([0., 2.], dtype=float32)}
    """
    ppairs, treedef = flatten(params)
    mpairs, _ = flatten(masks)
    _same_paths(ppairs, mpairs)
    out = []
    for (path, x), (_, m) in zip(ppairs, mpairs):
        if m is None:
            out.append(x)
            continue
        if x is None:
            raise ValueError(f"masks has an array at {path!r} where params has None.")
        if jnp.result_type(m) != jnp.bool_:
            raise TypeError(f"mask at {path!r} has dtype {jnp.result_type(m)}; masks are bool "
                            "(True = kept). Did you pass params as masks?")
        if jnp.shape(m) != jnp.shape(x):
            raise ValueError(f"mask at {path!r} has shape {jnp.shape(m)}, the parameter "
                             f"{jnp.shape(x)}; recompute the masks for these params.")
        x = jnp.asarray(x)
        out.append(jnp.where(m, x, jnp.zeros((), x.dtype)))
    return jax.tree_util.tree_unflatten(treedef, out)


def prune(params: Any, sparsity: ArrayLike | None = None, *,
          pattern: Pattern = Unstructured(), distribution: str = "uniform",
          include: PathRule | None = None, exclude: PathRule | None = None,
          strict: bool = False,
          q: ArrayLike | Mapping[str, ArrayLike] | None = None,
          axes: AxesMap | None = None, criterion: Criterion = Magnitude(),
          grads: Any = None) -> tuple[Any, Any]:
    """One-shot pruning of a parameter tree (outside ``jit``), by magnitude or a criterion.

    Validates everything on the host first (sparsity in ``[0, 1)``, finite
    weights, known distribution, pattern fit with ``strict``), each error naming
    the parameter path, then computes the masks in one compiled program (same
    result as :func:`compute_masks` with a Python-float sparsity) and applies
    them. Retrain with the
    masks fixed (e.g. the optax ``pruning`` transform) to recover accuracy.

    Args:
      params: trained parameter pytree (concrete arrays).
      sparsity, pattern, distribution, include, exclude, strict, q, axes: as in
        :func:`compute_masks` (``axes``: the contraction axes per path for N:M,
        e.g. ``sparsejax.contraction_axes(model, x)``; rank-3 kernels need it).
      criterion: what ranks the entries (:mod:`sparsejax.criteria`):
        ``Magnitude()`` (default), ``Random(seed)``, ``Saliency()`` (needs
        ``grads``) or ``SNIP(loss_fn, batches)`` (prune at initialisation; the
        paper prunes globally: ``distribution="global"``), scored on
        ``params``. Only ``Magnitude()`` takes ``q``.
      grads: the loss gradient at ``params``, for criteria that need it
        (``Saliency()``); the same tree structure as ``params``.

    Returns:
      ``(pruned_params, masks)``.

    Raises:
      ValueError: as :func:`compute_masks`; ``q`` with a criterion other than
        ``Magnitude()``; a criterion that needs ``grads`` without them.

    Example:
      >>> pruned, masks = prune(params, 0.9, exclude="Dense_2")  # doctest: +SKIP
      >>> pruned, masks = prune(params, 0.9, criterion=sj.criteria.SNIP(loss_fn, [batch]),
      ...                       distribution="global")  # doctest: +SKIP

    References:
      Han et al., "Learning both Weights and Connections for Efficient Neural
      Networks", NeurIPS 2015; NVIDIA ASP for one-shot 2:4; Lee et al., "SNIP",
      ICLR 2019; Molchanov et al., ICLR 2017 (saliency).
    """
    for path, leaf in leaf_paths(params).items():
        if not is_concrete(leaf):
            raise TypeError(f"prune() runs on concrete params, {path!r} is traced; inside jit "
                            "use compute_masks + apply_masks.")
    check_criterion(criterion, "prune")
    _check_arguments(sparsity, pattern, distribution, q)
    magnitude = type(criterion) is Magnitude
    if not magnitude and q is not None:
        raise ValueError(f"prune(criterion={criterion!r}, q=...): " + _Q_WITH_SCORES)
    if grads is not None and "grads" not in criterion.needs:
        raise ValueError(f"prune(grads=...) is only read by criteria that need gradients "
                         f"(Saliency()); {criterion!r} does not. Drop grads= or pass "
                         "criterion=Saliency().")
    leaves, patterns = _eligible(params, include, exclude, pattern, strict, axes)
    if not magnitude:
        # One compiled program for the scores too (SNIP's gradients, the products).
        scores = jax.jit(lambda p, g: criterion.scores(p, grads=g))(params, grads)
        leaves = _score_leaves(scores, params, leaves)
    # One compiled program with the host sparsity as a constant (exact keep counts)
    # instead of op-by-op dispatch of every layer's selection loops.
    layer_masks = jax.jit(lambda lv: _layer_masks(lv, sparsity, pattern, distribution, q,
                                                  patterns))
    masks = _as_tree(params, layer_masks(leaves))
    return apply_masks(params, masks), masks
