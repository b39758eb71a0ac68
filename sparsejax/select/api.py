"""Top-k masks and magnitude thresholds: the selection API every mask in sparsejax goes through.

Every mask in the library (unstructured top-K, global thresholds across layers,
structured channel/block scores, SWAT activation top-K) is answered by
:func:`select_topk`, which finds the k-th largest magnitude with
:func:`~sparsejax.select.primitive.kth_largest_key` and then breaks ties
deterministically (lowest flat index first, leaves in the order given).
:func:`threshold` gives the magnitude threshold itself, exact or from a
strided sample (Spartan-style).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax

from sparsejax import native
from sparsejax.select.keys import (Array, ArrayLike, _flat, _key_of, _require_floating, _total,
                                   keep_count)
from sparsejax.select.keys import magnitude_keys  # noqa: F401 (the docstring examples)
from sparsejax.select.primitive import _kth, kth_largest_key
from sparsejax.select.search import _bisect, _small, sample_stride


def select_topk(keys: Sequence[Array], k: ArrayLike,
                weights: Sequence[Array | int] | None = None) -> list[Array]:
    """Exact top-k over one or several key arrays with deterministic ties.

    Keeps every entry whose key is above the k-th largest key ``v``, then the
    entries tied at ``v`` in order (array order, then row-major flat index) until
    exactly ``k`` (weighted) entries are kept. Tie ranks are found by a second
    bisection over the flat index, run only when some but not all ties fit
    (``lax.cond``), so the common case costs the counting passes of
    :func:`kth_largest_key` and no sort or cumulative sum (the tied and
    strictly-greater counts come out of that bisection). NaN keys (``-1``) are
    never kept.

    Args:
      keys: int32 key arrays (see :func:`magnitude_keys`), or floating arrays
        (selected by magnitude, see :func:`select_topk_key`).
      k: kept count; Python int or traced int.
      weights: optional per-entry integer weights (see :func:`kth_largest_key`).

    Returns:
      One bool mask per key array.

    Example:
      >>> [m] = select_topk([magnitude_keys(jnp.array([1., 3., 2., 3.]))], 2)
      >>> m.tolist()
      [False, True, False, True]
    """
    return select_topk_key(keys, k, weights)[0]


def select_topk_key(keys: Sequence[Array], k: ArrayLike,
                    weights: Sequence[Array | int] | None = None, *,
                    ties: str = "index") -> tuple[list[Array], Array]:
    """:func:`select_topk` that also returns the k-th largest key ``v``.

    ``v`` is the selection's threshold (``bitcast(v)`` is the smallest kept
    magnitude), so a caller caching thresholds needs no extra pass over the
    tensor to find it.

    Args:
      keys: int32 key arrays (see :func:`magnitude_keys`), or floating arrays,
        which are selected by magnitude: their keys are computed inside every
        counting pass and the mask instead of being stored (no int32 copy of a
        large activation lives through the search).
      k: kept count; Python int or traced int.
      weights: optional per-entry integer weights (see :func:`kth_largest_key`).
      ties: ``"index"``: exactly ``k`` kept, ties at ``v`` broken by index (as
        :func:`select_topk`). ``"all"``: keep every entry with ``key >= v`` (the
        rule "|x| >= threshold of the k-th largest", SWAT's): at least ``k``
        kept, more only on ties at ``v``; no tie-resolution pass or loop.

    Returns:
      ``(masks, v)``: one bool mask per key array and the int32 k-th largest
      key (``-1`` if only NaNs remain).

    Example:
      >>> [m], v = select_topk_key([magnitude_keys(jnp.array([1., 3., 2., 3.]))], 1, ties="all")
      >>> m.tolist(), float(lax.bitcast_convert_type(v, jnp.float32))
      ([False, True, False, True], 3.0)
    """
    if ties not in ("index", "all"):
        raise ValueError(f"select_topk_key(ties=...) must be 'index' or 'all', got {ties!r}.")
    k = jnp.asarray(k, jnp.int32)
    keys = [jnp.asarray(kk) for kk in keys]
    if weights is None or all(isinstance(w, int) for w in weights):
        # Traced once per shape and reused (the layers of a network repeat shapes).
        static = None if weights is None else tuple(weights)
        return _select_cached(keys, k, static, ties, native.enabled())
    return _select(keys, k, weights, ties)


def _select(keys: list[Array], k: Array, weights, ties: str,
            use_native: bool | None = None) -> tuple[list[Array], Array]:
    shapes = [kk.shape for kk in keys]
    keys, weights = _flat(keys, weights)
    v, counts = _kth(keys, k, weights, shapes, counts=ties == "index", use_native=use_native)
    if ties == "all":
        t = jnp.maximum(v, 0)
        return [((_key_of(kk) >= t) & (k > 0)).reshape(shape)
                for kk, shape in zip(keys, shapes)], v
    n_ge, n_gt = counts
    room, n_tied = k - n_gt, n_ge - n_gt
    if _small(keys, weights):  # rank the ties by a running count (cheap at this size)
        [kk], [shape] = [_key_of(kk) for kk in keys], shapes
        tie = (kk == v) & (v >= 0)
        m = (kk > v) | (tie & (jnp.cumsum(tie.astype(jnp.int32)) <= room))
        return [(m & (k > 0)).reshape(shape)], v
    offsets, total = [], 0
    for kk in keys:
        offsets.append(total)
        total += kk.size
    flat_index = lambda i, kk: lax.iota(jnp.int32, kk.size) + offsets[i]

    def partial_ties():
        # Smallest cut c with count(tie & index < c) >= room: bisect on the index.
        count_lt = lambda c: _total(keys, weights,
                                    lambda i, kk: (kk == v) & (flat_index(i, kk) < c))
        c = _bisect(lambda c: count_lt(c) < room, 0, total + 1,
                    max(1, (total + 1).bit_length()))
        return c + 1

    cut = lax.cond((room > 0) & (room < n_tied), partial_ties,
                   lambda: jnp.where(room > 0, jnp.int32(total), jnp.int32(0)))
    masks = [(kk > v) | ((kk == v) & (v >= 0) & (flat_index(i, kk) < cut))
             for i, kk in enumerate(map(_key_of, keys))]
    return [(m & (k > 0)).reshape(shape) for m, shape in zip(masks, shapes)], v


_select_cached = jax.jit(_select, static_argnums=(2, 3, 4))


def threshold(x: ArrayLike, sparsity: ArrayLike, *,
              sample_size: int | None = None, refresh: ArrayLike | None = None) -> Array:
    """Magnitude threshold ``t`` such that ``|x| >= t`` keeps ``1 - sparsity`` of ``x``.

    With ``sample_size`` the threshold is estimated from an evenly strided sample
    of that many entries (Spartan-style, one pass over ``sample_size`` values
    instead of 32 over ``x``); the realised sparsity is then approximate and
    is reported by :mod:`sparsejax.analysis.monitor` for the sparse ops.

    Args:
      x: floating array.
      sparsity: fraction removed in [0, 1); may be traced.
      sample_size: optional sample size for an approximate threshold.
      refresh: optional traced bool for a threshold cached between refreshes
        (SWAT's ``topk_period``): where false no counting pass runs and the
        result is 0, for the caller to replace by its cached value, e.g.
        ``jnp.where(refresh, threshold(x, s, refresh=refresh), cached)``.
        Cheaper than a ``lax.cond`` around the search on XLA:CPU, in time and
        memory (see ``_kth_xla``).

    Returns:
      A float32 scalar magnitude threshold (``+inf``-free; 0 when sparsity is 0).

    Example:
      >>> float(threshold(jnp.arange(10.), 0.8))
      8.0
    """
    x = _require_floating(jnp.asarray(x)).reshape(-1)
    if sample_size is not None and sample_size < x.size:
        stride = sample_stride(x.size, sample_size)
        x = x[: stride * sample_size: stride]
    # The values themselves: their keys are computed inside every counting pass,
    # so no int32 copy of a large activation lives through the search.
    k = jnp.maximum(keep_count(sparsity, x.size), 1)
    if refresh is None:
        v = kth_largest_key([x], k)
    else:
        refresh = jnp.asarray(refresh, bool)
        if refresh.ndim:
            raise ValueError(f"threshold(refresh=...) must be a scalar bool (one flag per "
                             f"threshold), got shape {refresh.shape}.")
        v = _kth([x], jnp.asarray(k, jnp.int32), None, [x.shape], active=refresh)[0]
    return lax.bitcast_convert_type(jnp.maximum(v, 0), jnp.float32)
