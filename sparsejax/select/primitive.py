"""The ``kth_largest_key`` primitive: one population's k-th largest key, lowered per platform.

A single unweighted population is one ``kth_largest_key`` primitive
(``_kth_p``). On the CPU it is answered by a C++ kernel
(:mod:`sparsejax.native`) behind an XLA FFI custom call; on other backends (and
in exported or partitioned modules) it lowers to the XLA counting search of
:mod:`sparsejax.select.search`. A custom call costs XLA no code generation,
where the search compiles a loop of kernels per tensor shape; the tests check
that both give the same answers. Under ``vmap`` the primitive runs one
selection per batch entry.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.extend
import jax.numpy as jnp
from jax import lax
from jax.interpreters import batching, mlir

from sparsejax import native
from sparsejax.select.keys import Array, ArrayLike, _flat
from sparsejax.select.search import _at, _kth_xla, _vector


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


def _cpu_lowering(ctx, x, k, on, **params):
    """The kernel's custom call, except where :func:`sparsejax.native.custom_call_allowed`
    says no (``jax.export``; a module XLA partitions over several devices, where the
    search's reductions stay sharded): the XLA search there."""
    if not native.custom_call_allowed(ctx):
        return _search_lowering(ctx, x, k, on, **params)
    return native.lowering(ctx, x, k, on)


mlir.register_lowering(_kth_p, _search_lowering)
mlir.register_lowering(_kth_p, _cpu_lowering, platform="cpu")


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
