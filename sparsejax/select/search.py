"""The XLA counting search for the k-th largest key: sampled probes, then interpolation (ITP).

:func:`_search` finds the k-th largest magnitude by a counting search
(safeguarded interpolation) over the IEEE-754 bit patterns of ``|x|`` (see
:mod:`sparsejax.select.keys`): at most 34 counting passes of
``sum(keys >= t)`` and one ``max`` pass (5-9 on activations and weights of
more than 128K entries) locate the exact k-th largest value without any sort
(``lax.top_k`` sorts; for the difference see benchmarks/bench_masks.py). It
works under ``jit`` with a traced ``k`` (sparsity schedules) and on sharded
arrays (each pass is a plain reduction). :func:`_kth_xla` is the whole
selection in XLA ops: the lowering of the ``kth_largest_key`` primitive off
the CPU (:mod:`sparsejax.select.primitive`) and the route of weighted or
multi-array selections everywhere.

Compile time: every distinct XLA kernel costs compilation time (see the
compile-time target of benchmarks/bench_training_methods.py), so the search
keeps its whole state, the kept count included, in one int32 vector: its
update and loop-condition kernels are then the same for every layer and XLA
compiles them once per network. Floating inputs are selected by magnitude
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
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from sparsejax.select.keys import _INF_KEY, Array, ArrayLike, _key_of, _total

_BISECTION_STEPS = 32


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
    layer (every distinct kernel costs XLA:CPU compilation time, see
    benchmarks/bench_training_methods.py); they are module-level jitted
    functions, so JAX also traces them once rather than once per loop.

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
    1-D view it would re-index every element (much slower: see SWAT's step in
    benchmarks/bench_training_methods.py).
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


def _kth_xla(keys: list[Array], k: Array, weights, shapes: list[tuple[int, ...]],
             active: Array | None = None) -> tuple[Array, Callable[[], tuple[Array, Array]]]:
    """``(v, counts)`` by the XLA counting search; ``counts()`` gives
    ``(count(keys >= v), count(keys > v))`` with the passes they need.

    With ``active`` (a traced bool), only the counting loop runs, and only where
    ``active`` is true (``v = -1`` elsewhere): a cached threshold refreshed every
    few steps (SWAT's period) then costs nothing in between, with no
    ``lax.cond`` (whose operands and branch buffers XLA:CPU allocates beside the
    step's; see SWAT's cached thresholds in benchmarks/bench_training_methods.py).
    No sort, sample or exact-end pass, which would run every step.
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
    # _LARGE keys the ~10 passes it saves cost less than compiling it (see
    # benchmarks/bench_training_methods.py).
    extreme = _extreme(weights, shapes) if sum(kk.size for kk in keys) > _LARGE else None
    return _search(count_ge, extreme, keys, k, n_all, sample)
