"""Pruning criteria: which entries matter, as score trees ranked by the mask machinery.

A criterion turns params (plus what it declares it needs) into a *score tree*
with the params' structure: a non-negative float32 array of the leaf's shape for
every floating leaf, ``None`` for other leaves. Selection stays the magnitude
machinery applied to the scores (``|score| = score``): every distribution
(uniform, ERK, global), per-layer targets and every pattern (unstructured, N:M
within each group, channels and blocks by their mean score) work unchanged.

==============  ============================  ======================================
criterion       score                         needs
==============  ============================  ======================================
``Magnitude()`` ``|w|`` (the default)         nothing
``Random(s)``   uniform in ``(0, 1]``, 0 for  nothing (``pruning`` folds its step in:
                weights already exactly 0     a fresh draw per mask refresh)
``Saliency()``  ``|w · g|``                   ``grads``: the raw loss gradient at ``w``
``SNIP(f, bs)`` ``|w · Σ_b ∂f(w, b)/∂w|``     nothing (computes its gradients from
                                              ``loss_fn`` and ``batches``)
==============  ============================  ======================================

Use them with :func:`sparsejax.prune` (``criterion=``), with
:func:`sparsejax.compute_masks` (``scores=`` a score tree, e.g. from the
functional forms :func:`magnitude`, :func:`random`, :func:`saliency`,
:func:`snip`, or any other score such as Wanda's) and with
:func:`sparsejax.pruning` (``criterion=``; see its docstring for when each one
may refresh masks). Han's ``q · std(W)`` rule is defined on weights only and is
refused with any criterion but :class:`Magnitude`.

References:
  Han et al., NeurIPS 2015 (magnitude); Molchanov et al., "Pruning
  Convolutional Neural Networks for Resource Efficient Inference", ICLR 2017
  (first-order Taylor saliency ``|w · g|``); Lee et al., "SNIP: Single-shot
  Network Pruning based on Connection Sensitivity", ICLR 2019; Lange et al.,
  jaxpruner (arXiv:2304.14082): random, saliency and global saliency pruning.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sparsejax.paths import flatten
from sparsejax.validate import is_concrete

Array = jax.Array
ArrayLike = jax.typing.ArrayLike


def _is_float(leaf: Any) -> bool:
    return leaf is not None and hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.floating)


def _map_floating(fn: Callable[..., Any], params: Any, *others: Any) -> Any:
    """``fn(leaf, *other_leaves)`` for every floating leaf of ``params``; ``None`` elsewhere."""
    pairs, treedef = flatten(params)
    other_pairs = [flatten(o)[0] for o in others]
    out = []
    for i, (_, leaf) in enumerate(pairs):
        out.append(fn(leaf, *(o[i][1] for o in other_pairs)) if _is_float(leaf) else None)
    return jax.tree_util.tree_unflatten(treedef, out)


def check_like(tree: Any, params: Any, what: str, fix: str) -> None:
    """Raises ``ValueError`` unless ``tree`` has ``params``' leaf paths and, for every
    floating leaf of ``params`` where ``tree`` has an array, its shape.

    Args:
      tree: the tree to check (gradients, scores).
      params: the parameter tree.
      what: the tree's name in messages (``"grads"``, ``"scores"``).
      fix: how to build a matching tree (appended to the message).
    """
    ppairs, tpairs = flatten(params)[0], flatten(tree)[0]
    for i in range(max(len(ppairs), len(tpairs))):
        pp = ppairs[i][0] if i < len(ppairs) else None
        tp = tpairs[i][0] if i < len(tpairs) else None
        if pp != tp:
            raise ValueError(f"{what} do not match params: first difference at leaf {i}, params "
                             f"has {pp!r}, {what} has {tp!r}. {fix}")
    for (path, p), (_, t) in zip(ppairs, tpairs):
        if _is_float(p) and t is not None and tuple(jnp.shape(t)) != tuple(jnp.shape(p)):
            raise ValueError(f"{what} at {path!r} has shape {tuple(jnp.shape(t))}, the parameter "
                             f"{tuple(jnp.shape(p))}. {fix}")


def check_score(score: ArrayLike, path: str) -> None:
    """Refuses a concrete score leaf that is not floating, negative or non-finite.

    Traced scores (inside ``jit``) cannot be inspected: a NaN score is then never
    kept (like a NaN weight) and a negative one ranks by its absolute value.

    Args:
      score: the score array of one leaf.
      path: the leaf's path, for the message.
    """
    dtype = jnp.result_type(score)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"scores at {path!r} have dtype {dtype}; scores are floating arrays "
                        "(cast with .astype(jnp.float32)).")
    if not is_concrete(score):
        return
    a = np.asarray(score, np.float32)
    if not np.isfinite(a).all():
        raise ValueError(f"scores at {path!r} hold {int((~np.isfinite(a)).sum())} non-finite "
                         f"value(s) of {a.size} (NaN or inf); a score ranks entries and must be "
                         "finite. Check the gradients / calibration data that produced it.")
    if (a < 0).any():
        raise ValueError(f"scores at {path!r} hold {int((a < 0).sum())} negative value(s) (min "
                         f"{float(a.min()):g}); scores must be >= 0 (higher = kept). Take the "
                         "absolute value of a signed importance.")


# --- the functional forms: one implementation per criterion -----------------------------


def magnitude(params: Any) -> Any:
    """Magnitude scores ``|w|`` (float32) for every floating leaf.

    Args:
      params: parameter pytree.

    Returns:
      The score tree (``None`` for non-floating leaves).

    Example:
      >>> magnitude({"w": jnp.array([-2., 1.])})["w"].tolist()
      [2.0, 1.0]

    References:
      Han et al., "Learning both Weights and Connections for Efficient Neural
      Networks", NeurIPS 2015.
    """
    return _map_floating(lambda w: jnp.abs(jnp.asarray(w, jnp.float32)), params)


def random(params: Any, key: jax.Array) -> Any:
    """Random scores: uniform in ``(0, 1]`` per entry, ``0`` where the weight is exactly 0.

    Zero weights (already pruned) score lowest, so pruning again with random
    scores keeps the earlier pruning (nested masks, as jaxpruner's random
    pruning does with its masks).

    Args:
      params: parameter pytree.
      key: a ``jax.random`` key; leaf ``i`` (in flatten order) draws from
        ``fold_in(key, i)``.

    Returns:
      The score tree (``None`` for non-floating leaves).

    Example:
      >>> s = random({"w": jnp.array([0., 3.])}, jax.random.key(0))["w"]
      >>> float(s[0]), bool(0 < s[1] <= 1)
      (0.0, True)

    References:
      Lange et al., jaxpruner, arXiv:2304.14082 (random pruning baseline);
      Liu et al., "The Unreasonable Effectiveness of Random Pruning", ICLR 2022.
    """
    pairs, treedef = flatten(params)
    out = []
    for i, (_, w) in enumerate(pairs):
        if not _is_float(w):
            out.append(None)
            continue
        u = 1.0 - jax.random.uniform(jax.random.fold_in(key, i), jnp.shape(w), jnp.float32)
        out.append(jnp.where(jnp.asarray(w) != 0, u, 0.0))
    return jax.tree_util.tree_unflatten(treedef, out)


def saliency(params: Any, grads: Any) -> Any:
    """Saliency scores ``|w · g|`` (first-order Taylor estimate of the loss change
    when an entry is removed), computed in float32.

    Args:
      params: parameter pytree.
      grads: the loss gradient at ``params`` (same structure; ``None`` leaves
        allowed where ``params`` has non-floating leaves).

    Returns:
      The score tree (``None`` for non-floating leaves).

    Raises:
      ValueError: ``grads`` does not match ``params`` (the message names the
        first differing path or shape).

    Example:
      >>> saliency({"w": jnp.array([2., -1.])}, {"w": jnp.array([0.5, 3.])})["w"].tolist()
      [1.0, 3.0]

    References:
      Molchanov et al., "Pruning Convolutional Neural Networks for Resource
      Efficient Inference", ICLR 2017; Lange et al., jaxpruner (saliency).
    """
    check_like(grads, params, "grads", "Pass the gradient of the loss with respect to these "
               "params (jax.grad(loss)(params)).")

    def score(w, g):
        if g is None:
            raise ValueError("grads has None where params has a floating leaf; pass the full "
                             "gradient tree (jax.grad of the loss with respect to params).")
        return jnp.abs(jnp.asarray(w, jnp.float32) * jnp.asarray(g, jnp.float32))

    return _map_floating(score, params, grads)


def snip(params: Any, loss_fn: Callable[[Any, Any], ArrayLike], batches: Sequence[Any]) -> Any:
    """SNIP connection sensitivity ``|w · Σ_b ∂loss_fn(w, b)/∂w|`` at ``params``.

    Lee et al. define the sensitivity of connection ``j`` as
    ``|∂L(c ⊙ w)/∂c_j|`` at ``c = 1``, which is ``|g_j · w_j|``, and divide it
    by the sum over all connections; that normalisation is one positive
    constant, so it does not change the ranking and is left out. With several
    batches the gradients are summed before the product (the gradient of the
    summed loss).

    Args:
      params: parameter pytree, normally at initialisation.
      loss_fn: ``loss_fn(params, batch) -> scalar loss``.
      batches: a non-empty list or tuple of batches (each any pytree
        ``loss_fn`` takes); one batch: ``[batch]``.

    Returns:
      The score tree (``None`` for non-floating leaves).

    Raises:
      TypeError: ``loss_fn`` is not callable or ``batches`` is not a list/tuple.
      ValueError: ``batches`` is empty or the loss is not a scalar.

    Example:
      >>> loss = lambda p, b: jnp.sum((b["x"] @ p["w"] - b["y"]) ** 2)
      >>> b = {"x": jnp.ones((1, 2)), "y": jnp.zeros((1, 1))}
      >>> snip({"w": jnp.array([[1.], [2.]])}, loss, [b])["w"].ravel().tolist()
      [6.0, 12.0]

    References:
      Lee, Ajanthan & Torr, "SNIP: Single-shot Network Pruning based on
      Connection Sensitivity", ICLR 2019, Eq. 6.
    """
    _check_snip_inputs(loss_fn, batches)

    def loss_of(p, batch):
        value = loss_fn(p, batch)
        if jnp.ndim(value) != 0:
            raise ValueError(f"SNIP's loss_fn must return a scalar loss, got shape "
                             f"{jnp.shape(value)}; reduce it (e.g. jnp.mean).")
        return value

    total = None
    for batch in batches:
        g = jax.grad(loss_of)(params, batch)
        total = g if total is None else jax.tree.map(lambda a, b: a + b, total, g)
    return saliency(params, total)


def _check_snip_inputs(loss_fn: Any, batches: Any) -> None:
    if not callable(loss_fn):
        raise TypeError(f"SNIP(loss_fn=...) must be a callable loss_fn(params, batch) -> scalar, "
                        f"got {loss_fn!r}.")
    if not isinstance(batches, (list, tuple)):
        raise TypeError(f"SNIP(batches=...) must be a list or tuple of batches (one batch: "
                        f"[batch]), got {type(batches).__name__}.")
    if not batches:
        raise ValueError("SNIP(batches=...) is empty; give at least one batch of training data.")


# --- criteria as values -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Criterion:
    """Base class: a small value turning params (+ what it ``needs``) into a score tree.

    Attributes:
      needs: the inputs :meth:`scores` requires besides the params; ``"grads"``
        (the raw loss gradient at the params) is the only one. A criterion
        with ``needs == ()`` can score any params tree by itself.
      fixed_at_init: the criterion can only score the params ``pruning`` is
        initialised with (SNIP: its gradients come from its own batches, not
        from training), so its masks cannot be refreshed later.
    """

    needs: ClassVar[tuple[str, ...]] = ()
    fixed_at_init: ClassVar[bool] = False

    @property
    def name(self) -> str:
        """Short name used in messages (``"saliency"``)."""
        return type(self).__name__.lower()

    def scores(self, params: Any, *, grads: Any = None, step: ArrayLike | None = None) -> Any:
        """The score tree of ``params`` (non-negative float32 arrays, ``None`` for
        non-floating leaves).

        Args:
          params: parameter pytree.
          grads: the raw loss gradient at ``params`` (criteria that need it).
          step: the training step of a mask refresh (``pruning`` passes it; a
            random criterion folds it into its key); ``None`` outside training.
        """
        raise NotImplementedError

    def __call__(self, params: Any, *, grads: Any = None, step: ArrayLike | None = None) -> Any:
        """Same as :meth:`scores`."""
        return self.scores(params, grads=grads, step=step)

    def _require_grads(self, grads: Any) -> None:
        if grads is None:
            raise ValueError(f"{self!r} scores |w · g| and needs the loss gradient at the params: "
                             f"pass grads=... (prune(params, s, criterion={self!r}, grads=grads), "
                             "or sparsejax.criteria.saliency(params, grads)).")


@dataclasses.dataclass(frozen=True)
class Magnitude(Criterion):
    """``|w|``: the default criterion (Han et al.); the only one Han's ``q`` rule takes.

    Example:
      >>> Magnitude()({"w": jnp.array([-3., 1.])})["w"].tolist()
      [3.0, 1.0]
    """

    def scores(self, params, *, grads=None, step=None):
        del grads, step
        return magnitude(params)


@dataclasses.dataclass(frozen=True)
class Random(Criterion):
    """Uniform random scores (weights exactly 0 score 0): random pruning, the lower
    baseline. A fresh draw per ``step`` (``pruning`` passes its step at each
    refresh); pruned weights stay pruned since they are 0.

    Attributes:
      seed: the integer seed; the key of step ``t`` is
        ``fold_in(jax.random.key(seed), t)`` (``jax.random.key(seed)`` when
        ``step`` is ``None``).

    Example:
      >>> masks = compute_masks(params, 0.9, scores=Random(seed=1)(params))  # doctest: +SKIP

    References:
      Liu et al., "The Unreasonable Effectiveness of Random Pruning", ICLR 2022;
      Lange et al., jaxpruner (RandomPruning).
    """

    seed: int = 0

    def __post_init__(self):
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)):
            raise TypeError(f"Random(seed=...) must be an int, got {self.seed!r}.")

    def scores(self, params, *, grads=None, step=None):
        del grads
        key = jax.random.key(self.seed)
        if step is not None:
            key = jax.random.fold_in(key, step)
        return random(params, key)


@dataclasses.dataclass(frozen=True)
class Saliency(Criterion):
    """``|w · g|`` with ``g`` the raw loss gradient at ``w`` (first-order Taylor
    saliency). Layerwise with ``distribution="uniform"`` / ``"erk"``, global
    saliency with ``distribution="global"``.

    In :func:`sparsejax.pruning` the gradient comes from the update's extra
    argument, ``tx.update(updates, state, params, grads=grads)``, and the
    scores are taken at ``params`` (where ``g`` was evaluated; pruned entries
    are 0 there, so they stay pruned).

    Example:
      >>> Saliency()({"w": jnp.array([2., -1.])}, grads={"w": jnp.array([.5, 3.])})["w"].tolist()
      [1.0, 3.0]

    References:
      Molchanov et al., ICLR 2017; Lange et al., jaxpruner (SaliencyPruning,
      GlobalSaliencyPruning).
    """

    needs: ClassVar[tuple[str, ...]] = ("grads",)

    def scores(self, params, *, grads=None, step=None):
        del step
        self._require_grads(grads)
        return saliency(params, grads)


@dataclasses.dataclass(frozen=True, eq=False)
class SNIP(Criterion):
    """SNIP connection sensitivity at initialisation, from ``loss_fn`` and ``batches``
    (see :func:`snip`). The paper prunes globally (``distribution="global"``); every
    distribution and pattern works. Compared and hashed by identity (it holds data).

    In :func:`sparsejax.pruning` SNIP scores the params given to ``init`` and the
    masks stay fixed (constant sparsity, ``update_every=None``, ``begin_step=0``):
    a later refresh would need the loss at the current params, which the
    optimizer does not see; :class:`Saliency` is its in-training counterpart
    (``|w · g|`` with the step's gradient).

    Attributes:
      loss_fn: ``loss_fn(params, batch) -> scalar``.
      batches: a non-empty list/tuple of batches; their gradients are summed.

    Example:
      >>> pruned, masks = prune(params, 0.9, criterion=SNIP(loss_fn, [batch]),
      ...                       distribution="global")  # doctest: +SKIP

    References:
      Lee, Ajanthan & Torr, "SNIP: Single-shot Network Pruning based on
      Connection Sensitivity", ICLR 2019.
    """

    loss_fn: Callable[[Any, Any], ArrayLike] = None  # type: ignore[assignment]
    batches: Sequence[Any] = ()
    fixed_at_init: ClassVar[bool] = True

    def __post_init__(self):
        _check_snip_inputs(self.loss_fn, self.batches)

    def __repr__(self) -> str:
        return f"SNIP(loss_fn={getattr(self.loss_fn, '__name__', self.loss_fn)!s}, " \
               f"batches=<{len(self.batches)}>)"

    def scores(self, params, *, grads=None, step=None):
        del grads, step
        return snip(params, self.loss_fn, self.batches)


CRITERIA = ("magnitude", "random", "saliency", "snip")
"""Names of the built-in criteria (config files name them)."""


def check_criterion(criterion: Any, where: str) -> "Criterion":
    """Returns ``criterion`` or raises ``TypeError`` naming ``where`` and the valid values."""
    if not isinstance(criterion, Criterion):
        raise TypeError(f"{where}(criterion=...) must be a sparsejax.criteria value "
                        f"(Magnitude(), Random(seed), Saliency(), SNIP(loss_fn, batches)), got "
                        f"{criterion!r}.")
    return criterion


__all__ = ["CRITERIA", "Criterion", "Magnitude", "Random", "SNIP", "Saliency", "check_like",
           "check_score", "magnitude", "random", "saliency", "snip"]
