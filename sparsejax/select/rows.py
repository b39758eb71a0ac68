"""Row-wise selection: every row's k-th largest key at once (bisection or insertion network)."""

from __future__ import annotations

import math

import jax.numpy as jnp
from jax import lax

from sparsejax.select.keys import _INF_KEY, Array, ArrayLike
from sparsejax.select.keys import magnitude_keys  # noqa: F401 (the docstring example)


def kth_largest_key_along(keys: Array, k: ArrayLike, axis: int = -1) -> Array:
    """Per-row k-th largest key along ``axis``, without a sort or ``lax.top_k``.

    Short rows with a static ``k`` (``width * k <= 256``, e.g. meProp on 32 conv
    channels) go through an unrolled insertion network that reads the keys once.
    Otherwise every row (all indices of the other axes) runs the same search
    over the int32 key range at once: bisection, with three pivots per counting
    pass for rows of up to 64 entries (16 passes instead of 32, see
    :func:`_radix_rows`). Used for per-row gradient selection (meProp) and
    per-position neuron selection (DSG).

    Args:
      keys: int32 keys from :func:`magnitude_keys` (or non-negative int32 scores).
      k: kept count per row, ``1 <= k <= keys.shape[axis]``; a Python int, a
        traced scalar, or an int array broadcastable to the row shape.
      axis: the axis each row runs along.

    Returns:
      An int32 array of ``keys``'s shape without ``axis``: the largest key ``v``
      of each row with ``count(row >= v) >= k``; ``keys >= expand_dims(v, axis)``
      keeps at least ``k`` entries per row (more only on ties at ``v``).

    Example:
      >>> keys = magnitude_keys(jnp.array([[1., 4., 2.], [3., 0., 5.]]))
      >>> v = kth_largest_key_along(keys, 2, axis=1)
      >>> (keys >= v[:, None]).tolist()
      [[False, True, True], [True, False, True]]

    References:
      Sun et al., "meProp: Sparsified Back Propagation for Accelerated Deep
      Learning with Reduced Overfitting", ICML 2017 (per-example top-k).
    """
    keys = jnp.asarray(keys)
    axis = axis % keys.ndim
    rows = keys.shape[:axis] + keys.shape[axis + 1:]
    width = keys.shape[axis]
    if isinstance(k, int) and 1 <= k <= width and width * k <= _NETWORK_BUDGET:
        return _kth_by_network(keys, k, axis)
    k = jnp.broadcast_to(jnp.asarray(k, jnp.int32), rows)
    if math.prod(rows) >= _COLUMN_ROWS:
        # Many short rows: XLA:CPU reduces a short minor axis slowly, so lay the
        # rows out as columns (width, R) and sum by halving: contiguous, fused
        # elementwise adds (faster on conv-sized gradients, see meProp in
        # benchmarks/bench_training_methods.py); the loop state is kept rank-1
        # like the columns.
        cols = jnp.moveaxis(keys, axis, 0).reshape(width, -1)
        v = _radix_rows(lambda t: _halving_sum(t(cols)), width, k.reshape(-1))
        return v.reshape(rows)
    return _radix_rows(lambda t: jnp.sum(t(keys, axis), axis=axis), width, k)


def _radix_rows(reduce_rows, width: int, k: Array) -> Array:
    """Per-row k-th largest key: bisection generalised to ``p + 1`` parts per pass.

    Each pass compares every key with ``p`` pivots splitting each row's bracket
    ``[lo, hi)`` into ``p + 1`` parts and counts all ``p`` of them in *one*
    reduction: a row has at most ``width`` hits per pivot, so the counts are
    packed into disjoint bit fields of one float32 sum (exact below ``2**24``):
    3 pivots (16 passes instead of 32) for rows of up to 64 entries; wider rows
    use one pivot (plain bisection), which XLA:CPU runs faster there.

    Args:
      reduce_rows: ``reduce_rows(hits)`` applies ``hits(keys[, axis])`` (a
        float32 array of ``keys``'s shape) and sums it over each row.
      width: the row length.
      k: kept count per row (int32, the row shape).

    Returns:
      The largest key ``v`` of each row with ``count(row >= v) >= k``.
    """
    bits = width.bit_length()
    p = max(1, min(_MAX_PIVOTS, 24 // bits)) if width <= _PACKED_WIDTH else 1
    exact_f32 = p * bits <= 24
    lo = jnp.full(k.shape, -1, jnp.int32)
    hi = jnp.full(k.shape, _INF_KEY + 1, jnp.int32)
    expand = lambda t, keys, axis: t if axis is None else jnp.expand_dims(t, axis)

    def body(_, state):
        lo, hi = state
        q = jnp.maximum((hi - lo) // (p + 1), 1)
        pivots = [jnp.minimum(lo + i * q, hi) for i in range(1, p + 1)]

        def hits(keys, axis=None):
            if not exact_f32:  # rows of 2**24 or more: one int32 count
                return (keys >= expand(pivots[0], keys, axis)).astype(jnp.int32)
            return sum((keys >= expand(t, keys, axis)).astype(jnp.float32) * float(1 << (bits * i))
                       for i, t in enumerate(pivots))

        packed = reduce_rows(hits).astype(jnp.int32)
        for i, t in enumerate(pivots):  # ascending: lo = last pivot reaching k, hi = next
            ok = ((packed >> (bits * i)) & ((1 << bits) - 1) if exact_f32 else packed) >= k
            lo, hi = jnp.where(ok, t, lo), jnp.where(ok, hi, jnp.minimum(hi, t))
        return lo, hi

    return lax.fori_loop(0, _radix_steps(p), body, (lo, hi))[0]


def _radix_steps(p: int) -> int:
    """Passes that close the widest bracket with ``p`` pivots (worst case)."""
    r, steps = _INF_KEY + 2, 0
    while r > 1:
        q = max(r // (p + 1), 1)
        r = max(q, r - p * q) if p * q < r else 1
        steps += 1
    return steps


# Row selections over at least this many rows count in the column layout.
_COLUMN_ROWS = 1024
# Short rows with a static k (width * k at most this) use the insertion network.
_NETWORK_BUDGET = 256
# Pivots per pass of the per-row selection (counts packed into one float32 sum),
# used for rows of at most _PACKED_WIDTH entries: on XLA:CPU packing pays for
# short rows but not for some wider layouts (see meProp in
# benchmarks/bench_training_methods.py).
_MAX_PIVOTS = 3
_PACKED_WIDTH = 64


def _kth_by_network(keys: Array, k: int, axis: int) -> Array:
    """k-th largest along ``axis`` by an unrolled insertion network.

    ``top[0] >= ... >= top[k-1]`` hold each row's k largest keys so far; every
    entry of the row is inserted with ``k`` max/min pairs. All ``width * k``
    pairs are elementwise ops on slices of ``keys`` that XLA fuses into one
    loop, so the keys are read once, in place (no transposed copy), instead of
    once per bisection step: faster on meProp's conv gradients than either (see
    benchmarks/bench_training_methods.py). Equal to the bisection's result: the
    k-th largest counting multiplicity (``-1`` when fewer than ``k`` keys are
    not NaN).
    """
    top: list[Array] = []
    for j in range(keys.shape[axis]):
        v = lax.index_in_dim(keys, j, axis, keepdims=False)
        for i in range(len(top)):
            top[i], v = jnp.maximum(top[i], v), jnp.minimum(top[i], v)
        if len(top) < k:
            top.append(v)
    return top[k - 1]


def _halving_sum(h: Array) -> Array:
    """Sum over axis 0 by repeated halving (contiguous adds XLA fuses into one loop)."""
    while h.shape[0] > 1:
        half = h.shape[0] // 2
        if h.shape[0] % 2:  # fold the odd last row into the first
            h = h[:-1].at[0].add(h[-1])
        h = h[:half] + h[half:]
    return h[0]
