"""Parameter paths and layer selection for the tree-level functions.

A parameter is named by its pytree key path joined with ``/`` (Flax linen
params ``{"Conv_0": {"kernel": ...}}`` give ``"Conv_0/kernel"``), and
:func:`selected_paths` decides which leaves a pruning method touches.

Selection rules (:func:`selected_paths`):

* Default targets are floating, non-empty leaves with ``ndim >= 2``: the
  kernels of ``Dense``, ``Conv``, ``DenseGeneral`` and ``Einsum``. Biases,
  norm scales/offsets, scalars and integer leaves are untouched.
* ``include`` (when given) *replaces* the default rule: exactly the leaves it
  matches are candidates, which may add leaves the default skips (a bias, a
  1-D embedding scale). An explicitly included non-floating leaf is a
  ``TypeError`` naming its path. Write ``include=r"Dense_\\d+/kernel"`` to
  restrict pruning to some kernels, or use ``exclude`` for the common case.
* ``exclude`` removes candidates it matches (it wins over ``include``).
* A rule is a regex string (``re.search`` against the path), a sequence of
  regexes (the first one that matches is the one reported in the log), or a
  callable ``(path, leaf) -> bool``. A regex that matches no path in the tree
  emits a ``warnings.warn`` naming it (usually a typo or a renamed layer).

Every decision is logged on the ``"sparsejax"`` logger (INFO), with the rule
that made it, so ``logging.getLogger("sparsejax").setLevel(logging.INFO)``
shows exactly which layers are pruned.
"""

from __future__ import annotations

import logging
import re
import warnings
from typing import Any, Callable, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from sparsejax.validate import check_floating

logger = logging.getLogger("sparsejax")

# A path rule: regex, sequence of regexes, or predicate on (path, leaf).
PathRule = Union[str, "re.Pattern[str]", Sequence[Union[str, "re.Pattern[str]"]],
                 Callable[[str, Any], bool]]

_is_none = lambda x: x is None


def path_str(keypath: Sequence[Any]) -> str:
    """Joins a jax key path into a ``"Conv_0/kernel"`` style string.

    Args:
      keypath: a key path from ``jax.tree_util.tree_flatten_with_path`` (dict
        keys, attribute names, sequence indices, flattened indices).

    Returns:
      The keys joined by ``/`` (dict keys and attribute names as written,
      sequence indices as decimals).

    Example:
      >>> [(kp, _)] = jax.tree_util.tree_flatten_with_path({"Conv_0": {"kernel": 1.}})[0]
      >>> path_str(kp)
      'Conv_0/kernel'
    """
    return jax.tree_util.keystr(tuple(keypath), simple=True, separator="/")


def flatten(tree: Any) -> tuple[list[tuple[str, Any]], Any]:
    """Flattens ``tree`` into ``(path, leaf)`` pairs, keeping ``None`` as a leaf.

    ``None`` entries (untouched leaves of a mask tree) are kept as leaves so
    that params and masks flatten to the same paths.

    Args:
      tree: any pytree.

    Returns:
      The ``(path, leaf)`` pairs in flatten order and the tree definition
      (``jax.tree_util.tree_unflatten(treedef, leaves)`` rebuilds the tree).
    """
    pairs, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_none)
    return [(path_str(kp), leaf) for kp, leaf in pairs], treedef


def leaf_paths(tree: Any) -> dict[str, Any]:
    """Maps every leaf's ``"a/b/c"`` path to the leaf.

    Args:
      tree: any pytree (Flax params, optax states, mask trees).

    Returns:
      A dict in flatten order; ``None`` entries are included as ``None``.

    Example:
      >>> leaf_paths({"Dense_0": {"bias": 0., "kernel": 1.}})
      {'Dense_0/bias': 0.0, 'Dense_0/kernel': 1.0}
    """
    pairs, _ = flatten(tree)
    paths = dict(pairs)
    if len(paths) != len(pairs):
        dup = next(p for i, (p, _) in enumerate(pairs) if p in dict(pairs[:i]))
        raise ValueError(f"two leaves share the path {dup!r} (a key contains '/'?); "
                         "rename the keys so that paths are unique.")
    return paths


def _dtype(leaf: Any) -> np.dtype:
    return np.dtype(leaf.dtype) if hasattr(leaf, "dtype") else np.asarray(leaf).dtype


def _shape(leaf: Any) -> tuple[int, ...]:
    return tuple(leaf.shape) if hasattr(leaf, "shape") else np.shape(leaf)


def default_target(leaf: Any) -> bool:
    """Whether ``leaf`` is pruned by default: floating, non-empty, ``ndim >= 2``.

    Args:
      leaf: an array, tracer, ``jax.ShapeDtypeStruct`` or scalar (``None`` is
        never a target).

    Returns:
      ``True`` for Dense/Conv/DenseGeneral/Einsum kernels, ``False`` for biases,
      norm parameters, scalars and integer leaves.
    """
    if leaf is None:
        return False
    shape = _shape(leaf)
    return (jnp.issubdtype(_dtype(leaf), jnp.floating) and len(shape) >= 2
            and int(np.prod(shape)) > 0)


class PathMatcher:
    """A compiled path rule (see the module docstring for the semantics).

    Args:
      rule: regex string, compiled regex, sequence of those, or a callable
        ``(path, leaf) -> bool``.
      name: argument name used in messages (``"include"``, ``"exclude"``, ``"q"``).

    Example:
      >>> PathMatcher(["Dense_1", "kernel"], "exclude")("Dense_1/kernel", None)
      "exclude regex 'Dense_1'"
    """

    def __init__(self, rule: PathRule, name: str):
        self.name = name
        if callable(rule) and not isinstance(rule, re.Pattern):
            self.func, self.regexes = rule, ()
            return
        self.func = None
        rules = [rule] if isinstance(rule, (str, re.Pattern)) else list(rule)
        self.regexes = tuple(self._compile(r) for r in rules)

    def _compile(self, r: Any) -> "re.Pattern[str]":
        if isinstance(r, re.Pattern):
            return r
        if not isinstance(r, str):
            raise TypeError(f"{self.name} must be a regex string, a sequence of regex strings "
                            f"or a callable (path, leaf) -> bool; got element {r!r}.")
        try:
            return re.compile(r)
        except re.error as e:
            raise ValueError(f"{self.name} regex {r!r} does not compile: {e}.") from e

    def __call__(self, path: str, leaf: Any) -> str | None:
        """The rule that matches ``path`` (for logging), or ``None``."""
        if self.func is not None:
            return f"{self.name} callable" if self.func(path, leaf) else None
        i = self.first_index(path)
        return None if i is None else f"{self.name} regex {self.regexes[i].pattern!r}"

    def first_index(self, path: str) -> int | None:
        """Index of the first regex matching ``path`` (regex rules only)."""
        return next((i for i, r in enumerate(self.regexes) if r.search(path)), None)

    def warn_unmatched(self, paths: Sequence[str]) -> None:
        """Warns about every regex that matches none of ``paths``."""
        for r in self.regexes:
            if not any(r.search(p) for p in paths):
                warnings.warn(
                    f"{self.name} regex {r.pattern!r} matches no parameter path (paths look like "
                    f"{paths[0]!r}); check for a typo or a renamed layer." if paths else
                    f"{self.name} regex {r.pattern!r} matches nothing: the tree has no leaves.",
                    stacklevel=4)


def selected_paths(params: Any, include: PathRule | None = None,
                   exclude: PathRule | None = None) -> list[str]:
    """Paths of the leaves a pruning method touches, in flatten order.

    Args:
      params: parameter pytree (arrays, tracers or ``jax.ShapeDtypeStruct``).
      include: optional rule replacing the default target rule (see the module
        docstring); matched non-floating leaves raise ``TypeError``.
      exclude: optional rule removing matched leaves.

    Returns:
      The selected paths. Decisions are logged on the ``"sparsejax"`` logger
      and unmatched regexes are warned about.

    Example:
      >>> p = {"Dense_0": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)},
      ...      "Dense_1": {"kernel": jnp.ones((2, 1))}}
      >>> selected_paths(p, exclude="Dense_1")
      ['Dense_0/kernel']
    """
    pairs = list(leaf_paths(params).items())
    paths = [p for p, _ in pairs]
    inc = PathMatcher(include, "include") if include is not None else None
    exc = PathMatcher(exclude, "exclude") if exclude is not None else None
    for m in (inc, exc):
        if m is not None:
            m.warn_unmatched(paths)
    chosen = []
    for path, leaf in pairs:
        if leaf is None:
            continue
        if inc is None:
            why = "default (floating, ndim >= 2)" if default_target(leaf) else None
            if why is None:
                logger.debug("untouched %s: not a default target (dtype %s, shape %s)",
                             path, _dtype(leaf), _shape(leaf))
                continue
        else:
            why = inc(path, leaf)
            if why is None:
                logger.debug("untouched %s: not matched by include", path)
                continue
        veto = exc(path, leaf) if exc is not None else None
        if veto is not None:
            logger.info("excluded %s (%s)", path, veto)
            continue
        if inc is not None:
            check_floating(leaf, path)
        logger.info("selected %s %s (%s)", path, _shape(leaf), why)
        chosen.append(path)
    return chosen
