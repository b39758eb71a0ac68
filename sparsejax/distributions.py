"""How a global sparsity target is spread over layers.

* ``"uniform"`` – every selected layer gets the target sparsity.
* ``"erk"`` – Erdős–Rényi-Kernel (:func:`erk_sparsities`): small layers stay
  denser, the total kept count matches the target.
* ``"global"`` – one magnitude threshold across all selected layers
  (:func:`global_masks`), for every pattern with ``supports_global``.
* Han's rule (:func:`han_masks`) – no target: a per-layer threshold
  ``q · std(W)``.

All functions work on host values and under ``jit`` with a traced sparsity
(a schedule value), without recompiling per value.

References:
  Evci et al., "Rigging the Lottery: Making All Tickets Winners", ICML 2020
  (ERK); Han et al., "Learning both Weights and Connections for Efficient
  Neural Networks", NeurIPS 2015 (q·std thresholds).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from sparsejax import select
from sparsejax.paths import PathMatcher
from sparsejax.patterns import Pattern
from sparsejax.validate import check_sparsity, is_concrete

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

DISTRIBUTIONS = ("uniform", "erk", "global")


def erk_sparsities(shapes: Mapping[str, tuple[int, ...]],
                   sparsity: ArrayLike) -> dict[str, float | Array]:
    """Per-layer sparsities of the Erdős–Rényi-Kernel distribution.

    Layer ``l`` gets density ``eps · sum(shape_l) / prod(shape_l)`` with ``eps``
    chosen so that the kept entries total ``(1 - sparsity) · sum(prod(shape_l))``.
    A layer whose density would exceed 1 is made dense and ``eps`` is re-solved
    over the rest, until no density exceeds 1 (at most ``len(shapes)`` rounds,
    unrolled statically so that a traced ``sparsity`` works under ``jit``).
    Since ``eps`` only grows as layers turn dense, marking every overflowing
    layer at once gives the same result as RigL's one-at-a-time loop.

    Args:
      shapes: layer path -> kernel shape (all dims count, spatial ones included).
      sparsity: global target in ``[0, 1)``; a Python float gives Python floats
        (computed in float64), a traced scalar gives float32 scalars.

    Returns:
      Layer path -> sparsity, in the order of ``shapes``.

    Example:
      >>> s = erk_sparsities({"small": (2, 2), "big": (100, 100)}, 0.5)
      >>> s["small"], round(s["big"], 4)
      (0.0, 0.5002)

    References:
      Evci et al., "Rigging the Lottery", ICML 2020 (Erdős–Rényi-Kernel);
      Mocanu et al., Nature Communications 2018 (Erdős–Rényi).
    """
    names = list(shapes)
    for name in names:
        if math.prod(shapes[name]) == 0:
            raise ValueError(f"ERK needs non-empty layers; {name!r} has shape "
                             f"{tuple(shapes[name])}. Exclude it (exclude=...).")
    if not names:
        return {}
    check_sparsity(sparsity, "sparsity (ERK target)")
    host = is_concrete(sparsity)
    xp = np if host else jnp
    dtype = np.float64 if host else jnp.float32
    sizes = xp.asarray([math.prod(shapes[n]) for n in names], dtype)
    raw = xp.asarray([sum(shapes[n]) / math.prod(shapes[n]) for n in names], dtype)
    s = float(sparsity) if host else jnp.asarray(sparsity, jnp.float32)
    budget = (1.0 - s) * sizes.sum()

    def scale(dense):
        rest = xp.where(dense, 0.0, raw * sizes).sum()
        left = budget - xp.where(dense, sizes, 0.0).sum()
        return xp.where(rest > 0, left / xp.where(rest > 0, rest, 1.0), 0.0)

    dense = xp.zeros(len(names), bool)
    for _ in range(len(names)):
        dense = dense | (scale(dense) * raw > 1.0)
    density = xp.where(dense, 1.0, xp.minimum(scale(dense) * raw, 1.0))
    out = 1.0 - density
    return {n: (float(out[i]) if host else out[i]) for i, n in enumerate(names)}


def global_masks(leaves: Mapping[str, Array], sparsity: ArrayLike,
                 pattern: Pattern) -> dict[str, Array]:
    """Masks from one magnitude threshold shared by all ``leaves``.

    Every leaf is scored in ``pattern``'s units (entries, channels, blocks) with
    ``pattern.unit_scores``; one :func:`sparsejax.select.select_topk` over all
    units, each weighted by the entries it stands for, keeps
    ``ceil((1 - sparsity) · total entries)`` entries (exactly for
    ``Unstructured``; for channels/blocks the last kept unit may overshoot by
    less than one unit). Ties go to the earlier leaf, then the lower index.

    Args:
      leaves: path -> floating array, all eligible for ``pattern``.
      sparsity: global fraction removed in ``[0, 1)``; may be traced.
      pattern: a pattern with ``supports_global`` (Unstructured, Channel, Block).

    Returns:
      Path -> bool mask of the leaf's shape.

    Example:
      >>> m = global_masks({"a": jnp.array([[1., 2.]]), "b": jnp.array([[3., 4.]])},
      ...                  0.5, Unstructured())
      >>> m["a"].tolist(), m["b"].tolist()
      ([[False, False]], [[True, True]])

    References:
      Frankle & Carbin, "The Lottery Ticket Hypothesis", ICLR 2019 (global
      magnitude pruning); Blalock et al., "What is the State of Neural Network
      Pruning?", MLSys 2020.
    """
    if not pattern.supports_global:
        raise ValueError(f"{pattern!r} has no global threshold (N:M keeps a fixed n of "
                         "every m); use distribution='uniform'.")
    if not leaves:
        return {}
    scored = [pattern.unit_scores(jnp.asarray(x)) for x in leaves.values()]
    keys = [k for k, _ in scored]
    weights = [w for _, w in scored]
    total = sum(k.size * w for k, w in scored)
    k = select.keep_count(sparsity, total)
    unit_masks = select.select_topk(keys, k, None if set(weights) == {1} else weights)
    return {p: pattern.expand(m, jnp.shape(x))
            for (p, x), m in zip(leaves.items(), unit_masks)}


def layer_values(leaves: Mapping[str, Any], rules: Mapping[str, Any], name: str) -> dict[str, Any]:
    """Per-layer values from a mapping path-regex -> value (the first regex that
    ``re.search``-es a path wins).

    Args:
      leaves: the layers' paths (keys).
      rules: path-regex -> value.
      name: the argument's name, for messages (``"q"``, ``"sparsity"``).

    Returns:
      Path -> value for every leaf.

    Raises:
      ValueError: a leaf no regex matches (a regex matching no leaf is logged).

    Example:
      >>> layer_values({"fc1/kernel": 0, "fc3/kernel": 0}, {"fc3": 0.74, ".*": 0.92}, "sparsity")
      {'fc1/kernel': 0.92, 'fc3/kernel': 0.74}
    """
    matcher = PathMatcher(list(rules), name)
    matcher.warn_unmatched(list(leaves))
    values = list(rules.values())
    out = {}
    for path in leaves:
        i = matcher.first_index(path)
        if i is None:
            raise ValueError(f"no {name} regex matches {path!r} (regexes: {list(rules)}); add one "
                             "(e.g. '.*' as the last key) or exclude the layer.")
        out[path] = values[i]
    return out


def han_masks(leaves: Mapping[str, Array],
              q: ArrayLike | Mapping[str, ArrayLike]) -> dict[str, Array]:
    """Han et al.'s rule: keep ``|W| > q · std(W)``, per layer.

    Args:
      leaves: path -> floating array.
      q: quality parameter ``>= 0``: one scalar for every layer (may be traced),
        or a mapping path-regex -> q where the first regex that ``re.search``-es
        a path gives that layer's q; every layer must be matched.

    Returns:
      Path -> bool mask (NaN entries are never kept; ``std`` is the population
      standard deviation, computed in float32).

    Example:
      >>> han_masks({"w": jnp.array([[-2., 0.1, 0., 2.]])}, 1.0)["w"].tolist()
      [[True, False, False, True]]

    References:
      Han et al., "Learning both Weights and Connections for Efficient Neural
      Networks", NeurIPS 2015, Section 3.
    """
    per_layer = layer_values(leaves, q, "q") if isinstance(q, Mapping) else {p: q for p in leaves}
    for path, qv in per_layer.items():
        if is_concrete(qv) and not float(qv) >= 0.0:
            raise ValueError(f"q for {path!r} must be >= 0 (threshold q·std(W)), got {qv}.")
    out = {}
    for path, x in leaves.items():
        x32 = jnp.asarray(x, jnp.float32)
        out[path] = jnp.abs(x32) > per_layer[path] * jnp.std(x32)
    return out
