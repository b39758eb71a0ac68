"""Magnitude keys and kept counts: the int32 keys every selection counts, and counting helpers.

Why bit patterns: for non-negative floats the ordering of the ``int32`` bit
pattern equals the ordering of the value, so counting passes of
``sum(keys >= t)`` locate the exact k-th largest value without any sort (see
:mod:`sparsejax.select.search`).

NaN handling: NaN magnitudes get the key ``-1`` and are never kept, so inside
``jit`` a NaN weight is always pruned (the kept count then falls short of ``k``
by the number of NaNs that would otherwise have been needed). Outside ``jit``
the tree-level functions raise a clear error on NaN weights instead.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

# Bit pattern of +inf as int32; every finite or infinite magnitude has a key in
# [0, _INF_KEY]; NaN gets -1.
_INF_KEY = 0x7F800000


def _require_floating(x: Array) -> Array:
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"magnitude selection needs a floating array, got {x.dtype}; "
                        "cast it with .astype(jnp.float32) first.")
    return x


def magnitude_keys(x: ArrayLike) -> Array:
    """Returns int32 keys whose ordering equals the ordering of ``|x|``.

    Args:
      x: any real floating array (float16/bfloat16/float32; float64 is rounded
        to float32, which can only merge near-equal magnitudes into ties).

    Returns:
      An int32 array of ``x``'s shape: the bit pattern of ``|x|`` as float32, with
      NaN mapped to ``-1`` so that it sorts below every number.

    Example:
      >>> magnitude_keys(jnp.array([-2.0, 1.0])) [0] > magnitude_keys(jnp.array([1.0]))[0]
      Array(True, dtype=bool)
    """
    x = _require_floating(jnp.asarray(x))
    a = lax.abs(x.astype(jnp.float32))
    bits = lax.bitcast_convert_type(a, jnp.int32)
    return lax.select(lax.ne(a, a), lax.full_like(bits, -1), bits)  # a != a: NaN


def keep_count(sparsity: ArrayLike, size: int) -> Array | int:
    """Number of entries kept at ``sparsity``: ``ceil((1 - sparsity) * size)``.

    A Python float gives an exact Python ``int`` (rounded to 9 decimals first so
    that ``(1 - 0.7) * 10`` is 3, not 4). A traced value (a schedule under
    ``jit``) is rounded to a multiple of 1e-4 and then evaluated in exact integer
    arithmetic, so it agrees with the Python value on that grid (float32 alone
    would be off by one for tensors of millions of entries).

    Out-of-range traced values cannot raise inside ``jit``; they are clamped
    into ``[0, 1)``: a negative value or NaN removes nothing (``size`` kept), a
    value ``>= 1`` removes all but the minimum (``ceil(size / 10_000)`` kept,
    at least 1), never everything. Python values are checked by the callers
    (:func:`sparsejax.validate.check_sparsity`). :func:`sparsejax.transform.pruning`
    additionally raises for such a value (see its docstring).

    Args:
      sparsity: fraction removed, in [0, 1).
      size: number of entries (or of weighted units) to select from.

    Returns:
      The kept count, clipped to ``[0, size]`` (``[1, size]`` for a traced
      sparsity and ``size >= 1``).

    Example:
      >>> keep_count(0.8, 10)
      2
    """
    if isinstance(sparsity, (int, float)):
        return max(0, min(size, math.ceil(round((1.0 - float(sparsity)) * size, 9))))
    grid = 10_000
    s = jnp.asarray(sparsity, jnp.float32)
    s = jnp.where(jnp.isnan(s), 0.0, jnp.clip(s, 0.0, 1.0))  # NaN / < 0: remove nothing
    p = grid - jnp.round(s * grid).astype(jnp.int32)
    p = jnp.clip(p, 1, grid)  # >= 1 (or rounding to 1): keep the minimum, never nothing
    a, b = divmod(size, grid)
    return jnp.clip(p * a + (p * b + grid - 1) // grid, 0, size).astype(jnp.int32)


def _count(hit: Array, weight: Array | int = 1) -> Array:
    """Exact int32 (weighted) count of ``hit``.

    XLA:CPU reduces float32 several times faster than int32, and float32 sums of
    integers are exact below 2**24, so small enough populations count in float32.
    """
    w_max = weight if isinstance(weight, int) else None
    axes = tuple(range(hit.ndim))
    if w_max is not None and hit.size * w_max < 2**24:
        ones = hit.astype(jnp.float32)
        return lax.reduce_sum(ones * np.float32(w_max) if w_max != 1 else ones,
                              axes).astype(jnp.int32)
    return jnp.sum(jnp.where(hit, weight, 0), dtype=jnp.int32)


def _key_of(a: Array, never: Array | None = None) -> Array:
    """int32 keys as given; a floating array's magnitude keys, computed where used.

    Passing values instead of keys lets XLA fuse the key computation into every
    counting pass and the final mask, so no int32 key array is stored. Inside a
    search loop, ``never`` is a loop-state bool that is always false but that
    XLA cannot prove so: selecting on it first makes the keys depend on the loop
    state, which keeps XLA from hoisting them (or the bit cast) out of the loop
    as a stored copy.
    """
    if not jnp.issubdtype(a.dtype, jnp.floating):
        return a
    if never is not None:
        a = lax.select(lax.broadcast(never, a.shape), lax.full_like(a, 0), a)
    return magnitude_keys(a)


def _total(keys: Sequence[Array], weights: Sequence[Array | int] | None, pred,
           never: Array | None = None) -> Array:
    counts = [_count(pred(i, _key_of(k, never)), 1 if weights is None else weights[i])
              for i, k in enumerate(keys)]
    return functools.reduce(lax.add, counts)


def _flat(keys: Sequence[Array], weights: Sequence[Array | int] | None):
    """1-D views of keys and weights: XLA:CPU reduces rank-1 arrays faster (see
    benchmarks/bench_masks.py)."""
    flat_keys = [kk.reshape(-1) for kk in keys]
    if weights is None:
        return flat_keys, None
    return flat_keys, [w if isinstance(w, int) else jnp.broadcast_to(w, kk.shape).reshape(-1)
                       for w, kk in zip(weights, keys)]
