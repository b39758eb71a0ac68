"""Magnitude selection in O(n) passes: the one selection routine of sparsejax.

Every mask in the library (unstructured top-K, global thresholds across layers,
structured channel/block scores, SWAT activation top-K) is answered by
:func:`select_topk`, which finds the k-th largest magnitude by bisection over the
IEEE-754 bit patterns of ``|x|`` and then breaks ties deterministically (lowest
flat index first, leaves in the order given).

Why bit patterns: for non-negative floats the ordering of the ``int32`` bit
pattern equals the ordering of the value, so 32 counting passes of
``sum(keys >= mid)`` locate the exact k-th largest value without any sort.
``lax.top_k`` over 2.36M floats takes ~470 ms on a 2-core CPU; this takes a few
milliseconds and works under ``jit`` with a traced ``k`` (sparsity schedules) and
on sharded arrays (each pass is a plain reduction).

NaN handling: NaN magnitudes get the key ``-1`` and are never kept, so inside
``jit`` a NaN weight is always pruned (the kept count then falls short of ``k``
by the number of NaNs that would otherwise have been needed). Outside ``jit``
the tree-level functions raise a clear error on NaN weights instead.

References:
  Dong et al., "Spartan: A Sparsity-Adaptive Framework to Accelerate Deep
  Neural Network Training on GPUs", IEEE TPDS 2021 (sampled thresholds).
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

# Bit pattern of +inf as int32; every finite or infinite magnitude has a key in
# [0, _INF_KEY]; NaN gets -1.
_INF_KEY = 0x7F800000
_BISECTION_STEPS = 32


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
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"magnitude selection needs a floating array, got {x.dtype}; "
                    "cast it with .astype(jnp.float32) first.")
  a = jnp.abs(x.astype(jnp.float32))
  bits = lax.bitcast_convert_type(a, jnp.int32)
  return jnp.where(jnp.isnan(a), jnp.int32(-1), bits)


def keep_count(sparsity: ArrayLike, size: int) -> Array | int:
  """Number of entries kept at ``sparsity``: ``ceil((1 - sparsity) * size)``.

  A Python float gives an exact Python ``int`` (rounded to 9 decimals first so
  that ``(1 - 0.7) * 10`` is 3, not 4). A traced value (a schedule under
  ``jit``) is rounded to a multiple of 1e-4 and then evaluated in exact integer
  arithmetic, so it agrees with the Python value on that grid (float32 alone
  would be off by one for tensors of millions of entries).

  Args:
    sparsity: fraction removed, in [0, 1).
    size: number of entries (or of weighted units) to select from.

  Returns:
    The kept count, clipped to ``[0, size]``.

  Example:
    >>> keep_count(0.8, 10)
    2
  """
  if isinstance(sparsity, (int, float)):
    return max(0, min(size, math.ceil(round((1.0 - float(sparsity)) * size, 9))))
  grid = 10_000
  p = grid - jnp.round(jnp.asarray(sparsity, jnp.float32) * grid).astype(jnp.int32)
  p = jnp.clip(p, 0, grid)
  a, b = divmod(size, grid)
  return jnp.clip(p * a + (p * b + grid - 1) // grid, 0, size).astype(jnp.int32)


def _count(hit: Array, weight: Array | int = 1) -> Array:
  """Exact int32 (weighted) count of ``hit``.

  XLA:CPU reduces float32 several times faster than int32, and float32 sums of
  integers are exact below 2**24, so small enough populations count in float32.
  """
  w_max = weight if isinstance(weight, int) else None
  if w_max is not None and hit.size * w_max < 2**24:
    return jnp.sum(hit.astype(jnp.float32) * w_max if w_max != 1 else
                   hit.astype(jnp.float32)).astype(jnp.int32)
  return jnp.sum(jnp.where(hit, weight, 0), dtype=jnp.int32)


def _total(keys: Sequence[Array], weights: Sequence[Array | int] | None, pred) -> Array:
  total = jnp.zeros((), jnp.int32)
  for i, k in enumerate(keys):
    total = total + _count(pred(i, k), 1 if weights is None else weights[i])
  return total


def _flat(keys: Sequence[Array], weights: Sequence[Array | int] | None):
  """1-D views of keys and weights: XLA:CPU reduces rank-1 arrays 2-3x faster."""
  flat_keys = [kk.reshape(-1) for kk in keys]
  if weights is None:
    return flat_keys, None
  return flat_keys, [w if isinstance(w, int) else jnp.broadcast_to(w, kk.shape).reshape(-1)
                     for w, kk in zip(weights, keys)]


def _bisect(count_ge, lo: ArrayLike, hi: ArrayLike, k: Array, steps: int | None) -> Array:
  """Largest ``t`` in ``[lo, hi)`` with ``count_ge(t) >= k`` (given it holds at lo).

  ``steps=None`` loops until the bracket closes (``lax.while_loop``).
  """

  def body(lohi):
    lo, hi = lohi
    mid = lo + (hi - lo) // 2
    ok = count_ge(mid) >= k
    return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

  init = (jnp.asarray(lo, jnp.int32), jnp.asarray(hi, jnp.int32))
  if steps is None:
    return lax.while_loop(lambda lohi: lohi[1] - lohi[0] > 1, body, init)[0]
  return lax.fori_loop(0, steps, lambda _, lohi: body(lohi), init)[0]


# Populations above this size first bracket the threshold from a strided sample.
_SAMPLE_ABOVE = 1 << 17
_SAMPLE_SIZE = 1 << 14


def _sample_bracket(keys: Array, k: Array, count_ge) -> tuple[Array, Array]:
  """A verified bracket ``[lo, hi)`` around the k-th largest key of ``keys``.

  Quantiles of an evenly strided sample give a candidate bracket four standard
  deviations wide; two counting passes verify it, and a failed side falls back
  to the full key range, so the result is exact whatever the data order.
  """
  flat = keys.reshape(-1)
  n = flat.size
  stride = n // _SAMPLE_SIZE
  sample = flat[: stride * _SAMPLE_SIZE: stride]
  s = sample.size
  k_s = k.astype(jnp.float32) * s / n
  margin = 4.0 * jnp.sqrt(k_s * (1.0 - k_s / s) + 1.0) + 8.0
  rank = lambda r: jnp.clip(jnp.round(r), 1, s).astype(jnp.int32)
  sample_ge = lambda t: _count(sample >= t)
  key_at = lambda r: _bisect(sample_ge, -1, _INF_KEY + 1, r, _BISECTION_STEPS)
  lo = key_at(rank(k_s + margin))
  hi = key_at(rank(k_s - margin)) + 1
  lo = jnp.where(count_ge(lo) >= k, lo, -1)
  hi = jnp.where(count_ge(hi) < k, hi, _INF_KEY + 1)
  return lo, hi


def kth_largest_key(keys: Sequence[Array], k: ArrayLike,
                    weights: Sequence[Array | int] | None = None) -> Array:
  """Largest key ``v`` with ``count(keys >= v) >= k`` (weighted if given).

  Bisection over the int32 key range, one counting pass per step (32 steps).
  A single large population is first bracketed from a strided sample of
  16K keys (verified by two counting passes), which leaves about 18 full passes.

  Args:
    keys: int32 key arrays from :func:`magnitude_keys` (or any non-negative
      int32 scores); they are treated as one concatenated population.
    k: number of (weighted) entries to keep; may be traced. ``k >= 1``.
    weights: optional per-array weights (an int, or an int array broadcastable
      to the keys): an entry counts ``weight`` times (a channel of 9 weights
      counts 9).

  Returns:
    The int32 key of the k-th largest entry (``-1`` if only NaNs remain).
  """
  k = jnp.asarray(k, jnp.int32)
  keys, weights = _flat(keys, weights)
  count_ge = lambda t: _total(keys, weights, lambda i, kk: kk >= t)
  if len(keys) == 1 and weights is None and keys[0].size > _SAMPLE_ABOVE:
    lo, hi = _sample_bracket(keys[0], jnp.maximum(k, 1), count_ge)
    return _bisect(count_ge, lo, hi, k, None)
  return _bisect(count_ge, -1, _INF_KEY + 1, k, _BISECTION_STEPS)


def kth_largest_key_along(keys: Array, k: ArrayLike, axis: int = -1) -> Array:
  """Per-row k-th largest key along ``axis`` by vectorised bisection.

  Every row (all indices of the other axes) runs the same 32-step bisection
  over the int32 key range at once: one counting pass ``sum(keys >= mid)``
  along ``axis`` per step, no sort and no ``lax.top_k``. Used for per-row
  gradient selection (meProp) and per-position neuron selection (DSG).

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
  k = jnp.broadcast_to(jnp.asarray(k, jnp.int32), rows)
  small = keys.shape[axis] < 2**24

  def count_ge(t):
    hit = keys >= jnp.expand_dims(t, axis)
    if small:  # float32 sums of 0/1 are exact below 2**24 and faster on CPU
      return jnp.sum(hit.astype(jnp.float32), axis=axis).astype(jnp.int32)
    return jnp.sum(hit, axis=axis, dtype=jnp.int32)

  return _bisect(count_ge, jnp.full(rows, -1, jnp.int32), jnp.full(rows, _INF_KEY + 1, jnp.int32),
                 k, _BISECTION_STEPS)


def select_topk(keys: Sequence[Array], k: ArrayLike,
                weights: Sequence[Array | int] | None = None) -> list[Array]:
  """Exact top-k over one or several key arrays with deterministic ties.

  Keeps every entry whose key is above the k-th largest key ``v``, then the
  entries tied at ``v`` in order (array order, then row-major flat index) until
  exactly ``k`` (weighted) entries are kept. Tie ranks are found by a second
  bisection over the flat index, run only when some but not all ties fit
  (``lax.cond``), so the common case costs 32 counting passes and no sort or
  cumulative sum. NaN keys (``-1``) are never kept.

  Args:
    keys: int32 key arrays (see :func:`magnitude_keys`).
    k: kept count; Python int or traced int.
    weights: optional per-entry integer weights (see :func:`kth_largest_key`).

  Returns:
    One bool mask per key array.

  Example:
    >>> [m] = select_topk([magnitude_keys(jnp.array([1., 3., 2., 3.]))], 2)
    >>> m.tolist()
    [False, True, False, True]
  """
  k = jnp.asarray(k, jnp.int32)
  shapes = [kk.shape for kk in keys]
  keys, weights = _flat(keys, weights)
  v = kth_largest_key(keys, k, weights)
  room = k - _total(keys, weights, lambda i, kk: kk > v)
  n_tied = _total(keys, weights, lambda i, kk: kk == v)
  offsets, total = [], 0
  for kk in keys:
    offsets.append(total)
    total += kk.size
  flat_index = lambda i, kk: lax.iota(jnp.int32, kk.size) + offsets[i]

  def partial_ties():
    # Smallest cut c with count(tie & index < c) >= room: bisect on the index.
    count_lt = lambda c: _total(keys, weights, lambda i, kk: (kk == v) & (flat_index(i, kk) < c))
    below = lambda c: room - count_lt(c)  # positive while fewer than room ties precede c
    c = _bisect(below, 0, total + 1, jnp.int32(1), max(1, (total + 1).bit_length()))
    return c + 1

  cut = lax.cond((room > 0) & (room < n_tied), partial_ties,
                 lambda: jnp.where(room > 0, jnp.int32(total), jnp.int32(0)))
  masks = [(kk > v) | ((kk == v) & (v >= 0) & (flat_index(i, kk) < cut))
           for i, kk in enumerate(keys)]
  return [(m & (k > 0)).reshape(shape) for m, shape in zip(masks, shapes)]


def threshold(x: ArrayLike, sparsity: ArrayLike, *,
              sample_size: int | None = None) -> Array:
  """Magnitude threshold ``t`` such that ``|x| >= t`` keeps ``1 - sparsity`` of ``x``.

  With ``sample_size`` the threshold is estimated from an evenly strided sample
  of that many entries (Spartan-style, one pass over ``sample_size`` values
  instead of 32 over ``x``); the realised sparsity is then approximate and
  should be reported (see ``sparsejax.realised_sparsity``-style monitors).

  Args:
    x: floating array.
    sparsity: fraction removed in [0, 1); may be traced.
    sample_size: optional sample size for an approximate threshold.

  Returns:
    A float32 scalar magnitude threshold (``+inf``-free; 0 when sparsity is 0).

  Example:
    >>> float(threshold(jnp.arange(10.), 0.8))
    8.0
  """
  x = jnp.asarray(x).reshape(-1)
  if sample_size is not None and sample_size < x.size:
    stride = x.size // sample_size
    x = x[: stride * sample_size: stride]
  keys = magnitude_keys(x)
  v = kth_largest_key([keys], jnp.maximum(keep_count(sparsity, x.size), 1))
  return lax.bitcast_convert_type(jnp.maximum(v, 0), jnp.float32)
