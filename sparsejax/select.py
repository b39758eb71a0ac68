"""Magnitude selection in O(n) passes: the one selection routine of sparsejax.

Every mask in the library (unstructured top-K, global thresholds across layers,
structured channel/block scores, SWAT activation top-K) is answered by
:func:`select_topk`, which finds the k-th largest magnitude by a counting search
(safeguarded interpolation, see :func:`kth_largest_key`) over the IEEE-754 bit
patterns of ``|x|`` and then breaks ties deterministically (lowest flat index
first, leaves in the order given).

Why bit patterns: for non-negative floats the ordering of the ``int32`` bit
pattern equals the ordering of the value, so at most 34 counting passes of
``sum(keys >= t)`` and one ``max`` pass (5-9 on activations and weights of
more than 128K entries) locate the exact k-th largest value without any sort.
``lax.top_k`` over 2.36M floats takes ~470 ms on a 2-core CPU; this takes a few
milliseconds and works under ``jit`` with a traced ``k`` (sparsity schedules) and
on sharded arrays (each pass is a plain reduction).

NaN handling: NaN magnitudes get the key ``-1`` and are never kept, so inside
``jit`` a NaN weight is always pruned (the kept count then falls short of ``k``
by the number of NaNs that would otherwise have been needed). Outside ``jit``
the tree-level functions raise a clear error on NaN weights instead.

On the CPU a single population is answered by a C++ kernel instead
(:mod:`sparsejax.native`): ``_kth_p``, a primitive lowered to an XLA FFI
custom call there and to the search below on other backends. A custom call
costs XLA no code generation, where the search compiles a loop of kernels per
tensor shape; the tests check that both give the same answers.

Compile time: every distinct XLA kernel costs ~5-15 ms of compilation, so
the search keeps its whole state, the kept count included, in one int32 vector:
its update and loop-condition kernels are then the same for every layer and
XLA compiles them once per network. Floating inputs are selected by magnitude
with the keys computed inside each counting pass (no stored int32 copy, one
kernel fewer per shape). The selection is traced once per shape.

References:
  Dong et al., "Spartan: A Sparsity-Adaptive Framework to Accelerate Deep
  Neural Network Training on GPUs", IEEE TPDS 2021 (sampled thresholds);
  Oliveira & Takahashi, "An Enhancement of the Bisection Method Average
  Performance Preserving Minmax Optimality", ACM TOMS 2020 (ITP).
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Sequence

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.interpreters import batching, mlir

from sparsejax import native

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

# Bit pattern of +inf as int32; every finite or infinite magnitude has a key in
# [0, _INF_KEY]; NaN gets -1.
_INF_KEY = 0x7F800000
_BISECTION_STEPS = 32


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
    """1-D views of keys and weights: XLA:CPU reduces rank-1 arrays 2-3x faster."""
    flat_keys = [kk.reshape(-1) for kk in keys]
    if weights is None:
        return flat_keys, None
    return flat_keys, [w if isinstance(w, int) else jnp.broadcast_to(w, kk.shape).reshape(-1)
                       for w, kk in zip(weights, keys)]


def _bisect(ok: Callable[[Array], Array], lo: int, hi: int, steps: int) -> Array:
    """Largest ``t`` in ``[lo, hi)`` with ``ok(t)``, for ``ok`` true at ``lo``, false
    at ``hi`` and monotone; ``steps`` halvings (enough when ``2**steps >= hi - lo``)."""

    def body(_, state):
        lo, hi = state
        mid = lo + (hi - lo) // 2
        good = ok(mid)
        return jnp.where(good, mid, lo), jnp.where(good, hi, mid)

    return lax.fori_loop(0, steps, body, (jnp.int32(lo), jnp.int32(hi)))[0]


# A single population first takes two probes from a strided sample of 8K keys
# above this size, of 1K keys below it (sorting the sample costs less than the
# passes a larger one would save; fixed sizes share one sort kernel).
_LARGE = 1 << 17
_SAMPLE_SIZE = 1 << 13
_SMALL_SAMPLE_SIZE = 1 << 10


def sample_stride(size: int, samples: int) -> int:
    """Stride of an evenly spread sample of ``samples`` entries out of ``size``.

    The largest prime ``<= size // samples`` (at least 1). A stride sharing a
    factor with a channels-last tensor's channel count reads only some of its
    channels (``size // samples`` is often a multiple of 32, and then reads
    channel 0 alone), and channels differ in scale; a prime stride visits
    every channel.

    Args:
      size: population size.
      samples: number of entries to sample.

    Returns:
      The stride (a static Python int).

    Example:
      >>> sample_stride(262144, 8192)  # 32 would read channel 0 of 32 only
      31
    """
    stride = max(1, size // samples)
    while stride > 2 and any(stride % d == 0 for d in range(2, math.isqrt(stride) + 1)):
        stride -= 1
    return stride


# Largest float32 below 2**31 (int32 conversions of probe offsets stay in range).
_F32_BELOW_2_31 = 2147483520.0


def _sample_probe(sample: Array, i: Array, k: Array, n: Array) -> Array:
    """A probe key around the k-th largest, from a sorted strided sample of the keys.

    Quantiles of the sample (8K or 1K keys, strided with :func:`sample_stride`:
    its sort costs less than the passes a larger one would save) four standard
    deviations below (probe 0) and above (probe 1) the target rank: counted
    first, they bracket the threshold within ~2-8% of the keys for most data;
    they are only probes, so any data order keeps the result exact.

    Args:
      sample: the sorted int32 sample keys.
      i: which probe (0 or 1).
      k: the kept count.
      n: the population size (all three traced int32 scalars: they stay runtime
        values, see :func:`_search`).

    Returns:
      The probe key.
    """
    # The r-th largest sample key is the largest t with count(sample >= t) >= r.
    s, f32 = sample.size, np.float32
    f = lambda v: lax.convert_element_type(v, jnp.float32)
    k_s = lax.div(lax.mul(f(lax.max(k, np.int32(1))), f32(s)), f(n))
    var = lax.mul(k_s, lax.sub(f32(1), lax.div(k_s, f32(s))))
    margin = lax.add(lax.mul(lax.sqrt(lax.add(var, f32(1))), f32(4)), f32(8))
    up = lax.eq(i, np.int32(0))
    r = lax.round(lax.add(k_s, lax.select(up, margin, lax.neg(margin))))
    r = lax.clamp(np.int32(1), lax.convert_element_type(r, jnp.int32), np.int32(s))
    at = lax.dynamic_index_in_dim(sample, lax.sub(np.int32(s), r), keepdims=False)
    return lax.add(at, lax.convert_element_type(lax.bitwise_not(up), jnp.int32))


def _vector(*scalars: ArrayLike) -> Array:
    """int32 scalars as one rank-1 vector (``lax`` only: cheap to trace)."""
    return lax.concatenate([lax.broadcast(lax.convert_element_type(s, jnp.int32), (1,))
                            for s in scalars], 0)


# The search state: one int32 vector (see _search).
_LO, _HI, _C_LO, _C_HI, _STEP, _BLIND, _K, _N = range(8)
_at = lambda state, j: lax.index_in_dim(state, j, keepdims=False)


@jax.jit
def _propose(state: Array, sample: Array | None) -> Array:
    """The next key the search counts: a sample probe first, then an ITP step.

    Interpolates where the count crosses ``k`` between the bracket's ends, or
    bisects after a probe that crossed no key (``blind``); the ITP projection
    (Oliveira & Takahashi 2020) keeps probe ``i`` within
    ``2**(budget - i - 1) - width/2`` of the midpoint. Jitted at module level
    (as :func:`_advance`, :func:`_searching`): traced once for every layer's
    loop, not once per loop.
    """
    i32, f32 = np.int32, np.float32
    n_probes = 0 if sample is None else 2
    budget = _BISECTION_STEPS + n_probes
    lo, hi, c_lo, c_hi, i, blind, k, n = (_at(state, j) for j in range(8))
    # lax only (jnp operators trace a nested jit each: slow lowering).
    f = lambda v: lax.convert_element_type(v, jnp.float32)
    w = lax.sub(hi, lo)
    frac = lax.div(lax.add(f(lax.sub(c_lo, k)), f32(0.5)), f(lax.max(lax.sub(c_lo, c_hi), i32(1))))
    frac = lax.select(lax.gt(blind, i32(0)), f32(0.5), frac)
    off = lax.clamp(f32(0), lax.mul(frac, f(w)), f32(_F32_BELOW_2_31))
    off = lax.convert_element_type(lax.round(off), jnp.int32)
    # ITP projection onto [w/2 - r, w/2 + r] (r < 2**30: no int32 overflow).
    r = lax.sub(lax.exp2(f(lax.sub(i32(budget - 1), i))), lax.mul(f(w), f32(0.5)))
    r = lax.convert_element_type(lax.clamp(f32(0), r, f32(2**30 - 64)), jnp.int32)
    half = lax.div(w, i32(2))
    off = lax.clamp(lax.sub(half, r), off, lax.add(half, r))
    t = lax.add(lo, lax.clamp(i32(1), off, lax.sub(w, i32(1))))
    if sample is not None:
        p = _sample_probe(sample, lax.min(i, i32(1)), k, n)
        use = lax.bitwise_and(lax.lt(i, i32(n_probes)),
                              lax.bitwise_and(lax.gt(p, lo), lax.lt(p, hi)))
        t = lax.select(use, p, t)
    return t


@jax.jit
def _advance(state: Array, t: Array, c: Array) -> Array:
    """The search state after counting ``c = count(keys >= t)``."""
    lo, hi, c_lo, c_hi, i, _, k, n = (_at(state, j) for j in range(8))
    ok = lax.ge(c, k)
    blind = lax.select(ok, lax.eq(c, c_lo), lax.eq(c, c_hi))
    return _vector(lax.select(ok, t, lo), lax.select(ok, hi, t), lax.select(ok, c, c_lo),
                   lax.select(ok, c_hi, c), lax.add(i, np.int32(1)), blind, k, n)


@functools.partial(jax.jit, static_argnums=1)
def _searching(state: Array, exact_end: bool) -> Array:
    """Whether the search goes on: the bracket is wider than one key and (with
    ``exact_end``) neither end's count is ``k`` or ``k - 1``."""
    i32 = np.int32
    go = lax.gt(lax.sub(_at(state, _HI), _at(state, _LO)), i32(1))
    if not exact_end:
        return go
    k = _at(state, _K)
    end = lax.bitwise_or(lax.eq(_at(state, _C_LO), k),
                         lax.eq(_at(state, _C_HI), lax.sub(k, i32(1))))
    return lax.bitwise_and(go, lax.bitwise_not(end))


def _search(count_ge, extreme, data: list[Array], k: Array, n_all: ArrayLike,
            sample: Array | None = None, active: Array | None = None
            ) -> tuple[Array, Callable[[], tuple[Array, Array]]]:
    """Largest key ``t`` with ``count_ge(t) >= k``: safeguarded interpolation search.

    One counting pass per iteration over the bracket ``[lo, hi)``
    (``count_ge(lo) >= k > count_ge(hi)``, counts carried), starting from the
    whole key range. The first two iterations count the sample's probes (see
    :func:`_sample_probe`, when inside the bracket); then each probe
    interpolates or bisects (:func:`_propose`), so at most 34 counting passes
    are ever needed (bisection: 32). Exact for any data: only counts decide.

    With ``extreme``, the search stops early once an end's count is exactly
    ``k`` or ``k - 1``: the answer is then the smallest (count(lo) = k) or the
    largest (count(hi) = k - 1) key inside the bracket, which one ``extreme``
    pass finds. Counting alone would still have to bisect the gap between that
    key and its neighbour, ~log2(gap) more passes (about ten on dense data).

    Compile time: the state is one int32 vector (lo, hi, count(lo), count(hi),
    i, blind, k, n) that starts as a literal and is updated by small kernels
    next to the counting pass. ``k`` and ``n`` travel in the state rather than
    as constants, so those kernels (and the loop condition) are the same for
    every layer and XLA compiles them once per network instead of once per
    layer (every distinct kernel costs XLA:CPU ~10 ms); they are module-level
    jitted functions, so JAX also traces them once rather than once per loop.

    Args:
      count_ge: ``count_ge(data, t, never)``, the (weighted) count of keys
        ``>= t``.
      extreme: ``extreme(data, lo, hi, largest)``, the largest (else the
        smallest) key in ``[lo, hi)`` (of an entry with a positive weight), or
        None to count until the bracket is one key wide.
      data: the key arrays, passed to ``count_ge`` and ``extreme``.
      k: traced int32 kept count.
      n_all: ``count_ge(-1)``, the whole population.
      sample: optional sorted sample of the keys for the first two probes.
      active: optional traced bool; where false the search starts with a
        bracket one key wide, runs no counting pass and returns ``-1``.

    Returns:
      ``(t, counts)``: ``t`` and a thunk for ``(count_ge(t), count_ge(t + 1))``
      (one more counting pass, only for callers that need them).
    """
    i32 = np.int32

    def body(state):
        t = _propose(state, sample)
        # `never` is false, but XLA cannot fold it (see _key_of).
        return _advance(state, t, count_ge(data, t, lax.lt(_at(state, _STEP), i32(0))))

    hi = i32(_INF_KEY + 1) if active is None else lax.select(active, i32(_INF_KEY + 1), i32(0))
    init = _vector(i32(-1), hi, n_all, i32(0), i32(0), i32(0), k, n_all)
    out = lax.while_loop(lambda s: _searching(s, extreme is not None), body, init)
    lo, hi, c_lo, c_hi = (_at(out, j) for j in range(4))
    if extreme is None:  # hi = lo + 1
        return lo, lambda: (c_lo, c_hi)
    largest = lax.eq(c_hi, lax.sub(k, i32(1)))
    # An empty bracket only when k > n_all (then t = lo = -1).
    t = lax.select(lax.gt(c_lo, c_hi), extreme(data, lo, hi, largest), lo)

    def counts():
        # largest: nothing in (t, hi), count(> t) = c_hi; else nothing in [lo, t).
        c = count_ge(data, lax.select(largest, t, lax.add(t, i32(1))))
        return lax.select(largest, c, c_lo), lax.select(largest, c_hi, c)

    return t, counts


# A single population this small is selected by one sort (no loop to compile).
_SORT_BELOW = 1 << 12


def _small(keys: list[Array], weights) -> bool:
    return len(keys) == 1 and weights is None and keys[0].size <= _SORT_BELOW


def _extreme(weights, shapes):
    """``extreme(data, lo, hi, largest)``: the largest (else smallest) key in ``[lo, hi)``.

    A floating population is reduced as float32 (XLA:CPU reduces it several
    times faster than int32): the keys of ``|x|`` order like ``|x|`` itself,
    and NaN (key -1) reduces as -1.0. Each array is reduced in its own shape:
    XLA fuses its producer (e.g. a bias + ReLU) into this pass, and through a
    1-D view it would re-index every element (up to 15x slower).
    """
    i32_min, i32_max = np.iinfo(np.int32).min, np.iinfo(np.int32).max

    def one(a, w, lo, hi, largest):
        key, axes = _key_of(a), tuple(range(a.ndim))
        inside = lax.bitwise_and(lax.ge(key, lo), lax.lt(key, hi))
        if isinstance(w, int):
            inside = lax.bitwise_and(inside, lax.full_like(inside, w > 0))
        elif w is not None:
            inside = lax.bitwise_and(inside, lax.gt(w, np.int32(0)))
        wide = lambda v: lax.broadcast(v, a.shape)
        if not jnp.issubdtype(a.dtype, jnp.floating):  # max of ~key is ~(min of key)
            v = lax.select(wide(largest), key, lax.bitwise_not(key))
            m = lax.reduce_max(lax.select(inside, v, lax.full_like(v, i32_min)), axes)
            return lax.select(largest, m, lax.bitwise_not(m))
        mag = lax.abs(a.astype(jnp.float32))
        v = lax.select(lax.lt(key, np.int32(0)), lax.full_like(mag, -1), mag)
        v = lax.select(wide(largest), v, lax.neg(v))
        m = lax.reduce_max(lax.select(inside, v, lax.full_like(v, -np.inf)), axes)
        empty = lax.eq(m, np.float32(-np.inf))
        m = lax.select(largest, m, lax.neg(m))
        m = lax.select(lax.lt(m, np.float32(0)), np.int32(-1),
                       lax.bitcast_convert_type(m, jnp.int32))
        return lax.select(empty, lax.select(largest, np.int32(i32_min), np.int32(i32_max)), m)

    def extreme(data, lo, hi, largest):
        best = []
        for i, (a, shape) in enumerate(zip(data, shapes)):
            w = None if weights is None else weights[i]
            w = w if w is None or isinstance(w, int) else w.reshape(shape)
            best.append(one(a.reshape(shape), w, lo, hi, largest))
        return lax.select(largest, functools.reduce(lax.max, best),
                          functools.reduce(lax.min, best))

    return extreme


def _kth(keys: list[Array], k: Array, weights, shapes: list[tuple[int, ...]],
         active: Array | None = None, counts: bool = False,
         use_native: bool | None = None) -> tuple[Array, tuple[Array, Array] | None]:
    """``(v, (count(keys >= v), count(keys > v)))`` on flat keys of the given
    original shapes (see kth_largest_key); the counts only with ``counts``.

    A single unweighted population is one ``kth_largest_key`` primitive
    (``_kth_p``) unless ``use_native`` is false (default:
    :func:`sparsejax.native.enabled`): on the CPU it lowers to the native
    kernel (:mod:`sparsejax.native`, a custom call with nothing for XLA to
    compile), on every other backend to the XLA counting search
    (``_kth_xla``), which is then traced at lowering time only. Weighted or
    several populations run the XLA search everywhere. Both give the same
    answer.
    """
    if use_native is None:
        use_native = native.enabled()
    if not (use_native and len(keys) == 1 and weights is None):
        v, thunk = _kth_xla(keys, k, weights, shapes, active)
        return v, (thunk() if counts else None)
    x = lax.stop_gradient(keys[0])  # a key has no gradient (nor has the search's)
    if jnp.issubdtype(x.dtype, jnp.floating) and x.dtype != jnp.float32:
        x = x.astype(jnp.float32)  # magnitude order is kept exactly (float64: rounded)
    on = jnp.bool_(True) if active is None else jnp.asarray(active, bool)
    out = _kth_p.bind(x.reshape(shapes[0]), k, on, counts=counts, gated=active is not None)
    return _at(out, 0), ((_at(out, 1), _at(out, 2)) if counts else None)


def _kth_search(x: Array, k: Array, on: Array, *, counts: bool, gated: bool) -> Array:
    """``_kth_p`` by the XLA counting search: ``(v, count >= v, count > v)``
    (zero counts unless ``counts``)."""
    v, thunk = _kth_xla([x.reshape(-1)], k, None, [x.shape], on if gated else None)
    return _vector(v, *(thunk() if counts else (0, 0)))


def _kth_batched(args, dims, *, counts: bool, gated: bool):
    """vmap of ``_kth_p``: one selection per batch entry, in sequence."""
    size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
    args = [jnp.broadcast_to(a, (size,) + a.shape) if d is None
            else jnp.moveaxis(a, d, 0) for a, d in zip(args, dims)]
    return lax.map(lambda a: _kth_p.bind(*a, counts=counts, gated=gated), tuple(args)), 0


_kth_p = jax.extend.core.Primitive("kth_largest_key")
_kth_p.def_abstract_eval(lambda x, k, on, **_: jax.core.ShapedArray((3,), jnp.int32))
# Eager calls compile the primitive alone (as any jax.numpy function outside jit).
_kth_p.def_impl(lambda *args, **params: jax.jit(functools.partial(_kth_p.bind, **params))(*args))
batching.primitive_batchers[_kth_p] = _kth_batched
_search_lowering = mlir.lower_fun(_kth_search, multiple_results=False)


def _partitioned(ctx) -> bool:
    """Whether the module is lowered for XLA to partition over several devices."""
    axes = ctx.module_context.axis_context  # duck-typed: JAX's context classes are private
    manual = getattr(axes, "manual_axes", None)
    if manual is not None:  # inside shard_map: data along the manual axes is local
        return any(size > 1 for name, size in axes.mesh.shape.items() if name not in manual)
    return getattr(axes, "num_devices", 1) > 1  # jit over a mesh; pmap bodies are local


def _cpu_lowering(ctx, x, k, on, **params):
    """The kernel's custom call, except where the XLA search is the better lowering:

    - in ``jax.export``, whose artifacts must not name a target that only this
      process registered;
    - in a module XLA partitions over several devices: the custom call has no
      partitioning rule, so XLA would gather the keys onto every device first,
      where the search's reductions stay sharded.
    """
    if ctx.module_context.lowering_parameters.for_export or _partitioned(ctx):
        return _search_lowering(ctx, x, k, on, **params)
    return native.lowering(ctx, x, k, on)


mlir.register_lowering(_kth_p, _search_lowering)
mlir.register_lowering(_kth_p, _cpu_lowering, platform="cpu")


def _kth_xla(keys: list[Array], k: Array, weights, shapes: list[tuple[int, ...]],
             active: Array | None = None) -> tuple[Array, Callable[[], tuple[Array, Array]]]:
    """``(v, counts)`` by the XLA counting search; ``counts()`` gives
    ``(count(keys >= v), count(keys > v))`` with the passes they need.

    With ``active`` (a traced bool), only the counting loop runs, and only where
    ``active`` is true (``v = -1`` elsewhere): a cached threshold refreshed every
    few steps (SWAT's period) then costs nothing in between, with no
    ``lax.cond`` (whose operands and branch buffers XLA:CPU allocates beside the
    step's: +2 MiB, 8%, on the reference CNN). No sort, sample or exact-end
    pass, which would run every step.
    """
    count_ge = lambda data, t, never=None: _total(data, weights, lambda i, kk: kk >= t, never)
    n_all = (sum(kk.size for kk in keys) if weights is None
             else _total(keys, weights, lambda i, kk: kk >= -1))
    if active is not None:
        return _search(count_ge, None, keys, k, n_all, active=active)
    if _small(keys, weights):
        n = keys[0].size
        v = jnp.sort(_key_of(keys[0]))[jnp.clip(n - k, 0, n - 1)]
        v = jnp.where(k > n, -1, jnp.where(k > 0, v, _INF_KEY))
        return v, lambda: (count_ge(keys, v), count_ge(keys, v + 1))
    sample = None
    if len(keys) == 1 and weights is None:  # larger than _SORT_BELOW: sampled probes
        size = min(keys[0].size, _SAMPLE_SIZE if keys[0].size > _LARGE else _SMALL_SAMPLE_SIZE)
        stride = sample_stride(keys[0].size, size)
        sample = lax.sort(_key_of(lax.slice(keys[0], (0,), (stride * size,), (stride,))))
    # The exact-end pass is one more kernel to compile per array shape; below
    # _LARGE keys the ~10 passes it saves cost less than that (~20 us each).
    extreme = _extreme(weights, shapes) if sum(kk.size for kk in keys) > _LARGE else None
    return _search(count_ge, extreme, keys, k, n_all, sample)


def kth_largest_key(keys: Sequence[Array], k: ArrayLike,
                    weights: Sequence[Array | int] | None = None) -> Array:
    """Largest key ``v`` with ``count(keys >= v) >= k`` (weighted if given).

    Safeguarded interpolation search over the int32 key range, one counting
    pass per step, then (above 128K keys) one ``max`` pass inside the final
    bracket: 5-9 passes on activations and weights above 128K keys, 13-25
    below, never more than 35 (plain bisection takes 32).
    A single population of more than 4096 keys takes its first two probes from
    the quantiles of a sorted strided sample (8K keys above 128K, else 1K); a
    single population of at most 4096 keys is sorted instead (no loop).

    Args:
      keys: int32 key arrays from :func:`magnitude_keys` (or any non-negative
        int32 scores), or floating arrays, selected by magnitude with their
        keys computed inside each pass (see :func:`select_topk_key`); they are
        treated as one concatenated population.
      k: number of (weighted) entries to keep; may be traced. ``k >= 1``.
      weights: optional per-array weights (an int, or an int array broadcastable
        to the keys): an entry counts ``weight`` times (a channel of 9 weights
        counts 9).

    Returns:
      The int32 key of the k-th largest entry (``-1`` if only NaNs remain).
    """
    shapes = [jnp.shape(kk) for kk in keys]
    keys, weights = _flat(keys, weights)
    return _kth(keys, jnp.asarray(k, jnp.int32), weights, shapes)[0]


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
        # elementwise adds (2x faster on conv-sized gradients); the loop state is
        # kept rank-1 like the columns.
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
# used for rows of at most _PACKED_WIDTH entries: measured on XLA:CPU, packing
# halves the time for rows of 32-64 but is slower for some wider layouts.
_MAX_PIVOTS = 3
_PACKED_WIDTH = 64


def _kth_by_network(keys: Array, k: int, axis: int) -> Array:
    """k-th largest along ``axis`` by an unrolled insertion network.

    ``top[0] >= ... >= top[k-1]`` hold each row's k largest keys so far; every
    entry of the row is inserted with ``k`` max/min pairs. All ``width * k``
    pairs are elementwise ops on slices of ``keys`` that XLA fuses into one
    loop, so the keys are read once, in place (no transposed copy), instead of
    once per bisection step (meProp's 1M-key gradient of a 32-channel conv,
    k = 7, 2-core CPU: 0.6-0.8 ms; 1.9 ms through a transposed copy, ~5 ms by
    bisection). Equal to the bisection's result: the
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
    is reported by :mod:`sparsejax.monitor` for the sparse ops.

    Args:
      x: floating array.
      sparsity: fraction removed in [0, 1); may be traced.
      sample_size: optional sample size for an approximate threshold.
      refresh: optional traced bool for a threshold cached between refreshes
        (SWAT's ``topk_period``): where false no counting pass runs and the
        result is 0, for the caller to replace by its cached value, e.g.
        ``jnp.where(refresh, threshold(x, s, refresh=refresh), cached)``.
        Cheaper than a ``lax.cond`` around the search on XLA:CPU, in time and
        memory (see ``_kth``).

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
