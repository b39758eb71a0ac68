"""Compact storage of sparse tensors and structured gather/scatter helpers.

Two ways to turn sparsity into savings on XLA without custom kernels:

* **Memory** – a tensor saved for the backward pass with a *static* number
  ``k`` of kept values (SWAT's top-K activations) is stored as :class:`Packed`:
  occupancy bits (1 bit per entry, 32-bit words) plus the kept values in
  row-major order, and rebuilt in the backward pass. Packing gathers the ``k``
  values (their positions come from word popcounts, a running maximum over the
  ``k`` slots and a 5-step in-word bisection) and unpacking gathers them back,
  so neither has an intermediate of the tensor's size: only ``k``- and
  word-sized ones. At 80% sparsity a float32 tensor takes ``1/32 + 0.2 = 23%``
  of its dense bytes (values + int32 indices would take 40%); SWAT's rule,
  which keeps every tie at its threshold, adds a tie plane (26%). This is
  zero-value compression (cDMA's ZVC) with one mask for the whole tensor.
  :func:`pack_bits` alone stores a mask (1/32 of a float32 tensor).
* **Compute** – structured rules with a static kept count select whole slices;
  :func:`take` gathers them so the op runs as a smaller dense op and
  :func:`put` scatters results back (zero elsewhere).

References:
  Rhu et al., "Compressing DMA Engine: Leveraging Activation Sparsity for
  Training Deep Neural Networks", HPCA 2018 (zero-value compression); Dong et
  al., "Spartan", IEEE TPDS 2021 (compaction engine).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Optional

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.interpreters import batching, mlir

from sparsejax import backend_hints, native

Array = jax.Array
ArrayLike = jax.typing.ArrayLike


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Packed:
    """A tensor stored as occupancy bits plus its kept values.

    Attributes:
      bits: ``uint32[ceil(size / 32)]``, the occupancy words (entry ``32 g + j``
        is bit ``31 - j`` of word ``g``): entries whose value is stored, and,
        with ``ties``, the negative ties.
      values: the stored values in row-major order, room for ``k`` (the slots
        after the last stored entry hold arbitrary values, never read back).
      shape: the dense shape (static).
      ties: ``None``, or words marking the entries equal to ``±tie`` (the
        sign is the ``bits`` bit); such entries take no value slot.
      tie: ``None``, or the float32 magnitude of the ties.
    """

    bits: Array
    values: Array
    shape: tuple[int, ...] = dataclasses.field(metadata=dict(static=True))
    ties: Optional[Array] = None
    tie: Optional[Array] = None

    @property
    def nbytes(self) -> int:
        """Bytes held: bit planes plus values."""
        planes = 1 if self.ties is None else 2
        return planes * self.bits.nbytes + self.values.nbytes


_GROUP = 32  # entries per occupancy word


def _grouped(x: Array, size: int) -> Array:
    groups = -(-size // _GROUP)
    return jnp.pad(x.reshape(-1), (0, groups * _GROUP - size)).reshape(groups, _GROUP)


def pack_bits(mask: ArrayLike) -> Array:
    """Packs a bool mask into ``uint32`` words, 32 entries each (row-major, MSB first).

    One OR-reduction over groups of 32 (XLA fuses the mask's producer into it:
    no full-size intermediate, unlike a sum, which XLA:CPU hands to a library
    kernel that needs its input materialised).

    Example:
      >>> pack_bits(jnp.arange(33) % 16 == 0).tolist()
      [2147516416, 2147483648]
    """
    m = jnp.asarray(mask, bool)
    j = lax.broadcasted_iota(jnp.uint32, (1, _GROUP), 1)
    bits = _grouped(m, m.size).astype(jnp.uint32) << (31 - j)
    return lax.reduce(bits, np.uint32(0), lax.bitwise_or, (1,))


def _unpack_words(words: Array) -> Array:
    j = lax.broadcasted_iota(jnp.uint32, (words.size, _GROUP), 1)
    return ((words[:, None] >> (31 - j)) & 1).astype(bool)


def unpack_bits(words: Array, shape: tuple[int, ...]) -> Array:
    """The bool mask of ``shape`` packed by :func:`pack_bits`.

    Example:
      >>> unpack_bits(pack_bits(jnp.eye(2, dtype=bool)), (2, 2)).tolist()
      [[True, False], [False, True]]
    """
    size = math.prod(shape)
    return _unpack_words(words).reshape(-1)[:size].reshape(shape)


def _slots(words: Array) -> tuple[Array, Array]:
    """Occupancy and value slot of every entry, as ``(groups, 32)`` arrays.

    A word's first slot is the exclusive running count of the word popcounts
    (one small cumulative sum over ``size / 32`` words) and an entry's slot adds
    the popcount of the bits before it in its word; the rest is elementwise, so
    XLA fuses it into the unpack gather.
    """
    cnt = lax.population_count(words).astype(jnp.int32)
    first = jnp.cumsum(cnt) - cnt
    j = lax.broadcasted_iota(jnp.uint32, (words.size, _GROUP), 1)
    w = words[:, None]
    # Bits before entry j are the top j bits; an XLA shift by 32 gives 0 (j = 0).
    before = lax.population_count(lax.shift_right_logical(w, 32 - j)).astype(jnp.int32)
    return _unpack_words(words), first[:, None] + before


def _sources(words: Array, k: int) -> Array:
    """Flat index of the ``j``-th set bit for ``j < k`` (arbitrary past the last one).

    Only word- and ``k``-sized arrays: each non-empty word writes its index at
    its first slot, a running maximum gives every slot its word, and a
    five-step bisection on popcounts finds the bit inside the word.
    """
    groups = words.size
    cnt = lax.population_count(words).astype(jnp.int32)
    first = jnp.cumsum(cnt) - cnt
    owner = jnp.zeros((k,), jnp.int32).at[jnp.where(cnt > 0, first, k)].max(
        jnp.arange(groups, dtype=jnp.int32), mode="drop")
    owner = lax.cummax(owner)
    rank = jnp.arange(k, dtype=jnp.int32) - first[owner]
    w = words[owner]
    pos = jnp.zeros((k,), jnp.int32)
    for half in (16, 8, 4, 2, 1):  # largest pos with popcount(top pos bits) <= rank
        top = lax.population_count(lax.shift_right_logical(w, (32 - pos - half).astype(jnp.uint32)))
        pos = jnp.where(top.astype(jnp.int32) <= rank, pos + half, pos)
    return owner * _GROUP + pos


def pack(x: ArrayLike, mask: ArrayLike, k: int, tie: Optional[ArrayLike] = None) -> Packed:
    """Stores ``where(mask, x, 0)`` as bits plus at most ``k`` values.

    The kept non-zero entries are stored in row-major order; their positions
    are found from word popcounts and read by one gather of ``k`` entries, so
    no intermediate has the size of ``x``.

    With ``tie`` (a threshold rule that keeps ``|x| >= tie``: SWAT's top-K with
    every tie kept), kept entries with ``|x| == tie > 0`` are recorded in a
    second bit plane with their sign instead of a value slot, so ``k`` only has
    to cover the entries strictly above ``tie`` (fewer than the top-K count).

    Args:
      x: array to store.
      mask: bool keep-mask of ``x``'s shape.
      k: static number of value slots: at least the number of kept non-zero
        entries (not counting ties when ``tie`` is given).
      tie: optional float32 scalar threshold (see above).

    Returns:
      A :class:`Packed` value; :func:`unpack` rebuilds the masked array (a
      kept ``-0.0`` comes back as ``0.0``).

    Example:
      >>> p = pack(jnp.array([1., 2., 3., 4.]), jnp.array([True, False, False, True]), 2)
      >>> p.values.tolist(), unpack(p).tolist()
      ([1.0, 4.0], [1.0, 0.0, 0.0, 4.0])

    References:
      Rhu et al., HPCA 2018 (ZVC).
    """
    x = jnp.asarray(x)
    m = jnp.asarray(mask, bool)
    if m.size != x.size:
        raise ValueError(f"pack: mask has {m.size} entries, x has shape {x.shape}.")
    kept = m.reshape(x.shape) & (x != 0)
    ties = None
    if tie is None:
        store = kept
        bits = pack_bits(store)
    else:
        tie = jnp.asarray(tie, jnp.float32)
        at_tie = kept & (jnp.abs(x.astype(jnp.float32)) == tie)
        store = kept & ~at_tie
        bits = pack_bits(store | (at_tie & (x < 0)))
        ties = pack_bits(at_tie)
    src = jnp.clip(_sources(bits if ties is None else bits & ~ties, k), 0, x.size - 1)
    values = x.reshape(-1)[src]
    return Packed(bits, values, tuple(x.shape), ties, tie)


def _pack_threshold_xla(x: Array, tie: Array, *, k: int) -> tuple[Array, Array, Array]:
    p = pack(x, jnp.abs(x.astype(jnp.float32)) >= tie, k, tie)
    return p.bits, p.ties, p.values


def _unpack_threshold_xla(bits, ties, values, tie, *, shape):
    return _unpack(Packed(bits, values, shape, ties, tie))


def _kernel_lowering(xla_fn, kernel, multiple_results):
    """The CPU kernel's custom call where allowed, else the XLA formulation
    (:func:`sparsejax.native.custom_call_allowed`)."""
    fallback = mlir.lower_fun(xla_fn, multiple_results=multiple_results)

    def lower(ctx, *operands, **params):
        if native.custom_call_allowed(ctx):
            return kernel(ctx, *operands)
        return fallback(ctx, *operands, **params)

    return lower


def _vmapped(xla_fn, n_out):
    """Batching rule: the XLA formulation, vectorised (the kernels take one tensor)."""

    def rule(args, dims, **params):
        out = jax.vmap(functools.partial(xla_fn, **params), in_axes=dims)(*args)
        return out, (0,) * n_out if n_out > 1 else 0

    return rule


def _primitive(name, xla_fn, abstract, kernel, n_out):
    p = jax.extend.core.Primitive(name)
    p.multiple_results = n_out > 1
    p.def_abstract_eval(abstract)
    p.def_impl(lambda *args, **params: jax.jit(functools.partial(p.bind, **params))(*args))
    batching.primitive_batchers[p] = _vmapped(xla_fn, n_out)
    mlir.register_lowering(p, mlir.lower_fun(xla_fn, multiple_results=n_out > 1))
    mlir.register_lowering(p, _kernel_lowering(xla_fn, kernel, n_out > 1), platform="cpu")
    return p


def _words(size: int) -> int:
    return -(-size // _GROUP)


_pack_p = _primitive(
    "pack_threshold", _pack_threshold_xla,
    lambda x, tie, *, k: (jax.core.ShapedArray((_words(x.size),), jnp.uint32),
                          jax.core.ShapedArray((_words(x.size),), jnp.uint32),
                          jax.core.ShapedArray((k,), x.dtype)),
    native.pack_lowering, 3)
_unpack_p = _primitive(
    "unpack_threshold", _unpack_threshold_xla,
    lambda bits, ties, values, tie, *, shape: jax.core.ShapedArray(shape, values.dtype),
    native.unpack_lowering, 1)


def pack_threshold(x: ArrayLike, tie: ArrayLike, k: int) -> Packed:
    """Stores ``where(|x| >= tie, x, 0)`` as a :class:`Packed` with a tie plane.

    The same value as ``pack(x, |x| >= tie, k, tie)`` (SWAT's rule: every
    entry at the threshold kept); on the CPU one pass of a kernel
    (:mod:`sparsejax.native`) where the XLA formulation compiles a loop of
    kernels per shape. Slots past the stored values hold zeros (the XLA
    formulation leaves arbitrary values there; neither is read back).

    Args:
      x: array to store.
      tie: float32 scalar threshold.
      k: static number of value slots: at least the number of entries with
        ``|x| > tie``.

    Returns:
      A :class:`Packed` value with ``ties`` and ``tie`` set.

    Example:
      >>> p = pack_threshold(jnp.array([1., -3., 2., 3.]), 2.0, 2)
      >>> unpack(p).tolist()
      [0.0, -3.0, 2.0, 3.0]

    References:
      Rhu et al., HPCA 2018 (ZVC); Raihan & Aamodt, NeurIPS 2020 (SWAT's rule).
    """
    x = jnp.asarray(x)
    tie = jnp.asarray(tie, jnp.float32)
    if x.dtype == jnp.float32 and native.enabled():
        bits, ties, values = _pack_p.bind(x, tie, k=k)
    else:
        bits, ties, values = _pack_threshold_xla(x, tie, k=k)
    return Packed(bits, values, tuple(x.shape), ties, tie)


def unpack(p: Packed) -> Array:
    """Rebuilds the dense masked array from a :class:`Packed` value.

    One fused gather: each entry's slot is computed from the word popcounts
    (on the CPU, a threshold pack of float32 values is one pass of a kernel).

    Args:
      p: the packed tensor.

    Returns:
      An array of ``p.shape`` with the kept values in place and zeros elsewhere.

    Example:
      >>> unpack(pack(jnp.eye(2), jnp.eye(2, dtype=bool), 2)).tolist()
      [[1.0, 0.0], [0.0, 1.0]]
    """
    if p.ties is not None and p.values.dtype == jnp.float32 and native.enabled():
        return _unpack_p.bind(p.bits, p.ties, p.values, p.tie, shape=tuple(p.shape))
    return _unpack(p)


def _unpack(p: Packed) -> Array:
    size = math.prod(p.shape)
    store = p.bits if p.ties is None else p.bits & ~p.ties
    occupied, slot = _slots(store)
    vals = p.values[jnp.clip(slot, 0, max(p.values.size - 1, 0))]
    zero = jnp.zeros((), p.values.dtype)
    dense = jnp.where(occupied, vals, zero)
    if p.ties is not None:
        t = p.tie.astype(p.values.dtype)
        dense = jnp.where(_unpack_words(p.ties), jnp.where(_unpack_words(p.bits), -t, t), dense)
    return dense.reshape(-1)[:size].reshape(p.shape)


def packed_nbytes(shape: tuple[int, ...], k: int, dtype: jax.typing.DTypeLike,
                  ties: bool = False) -> int:
    """Bytes :func:`pack` uses for a tensor of ``shape`` with ``k`` value slots.

    Example:
      >>> packed_nbytes((1000,), 200, jnp.float32) / 4000
      0.232
    """
    size = math.prod(shape)
    words = -(-size // _GROUP) * 4
    return (2 if ties else 1) * words + k * np.dtype(dtype).itemsize


def take(x: ArrayLike, idx: ArrayLike, axis: int) -> Array:
    """Gathers the slices ``idx`` of ``x`` along ``axis`` (a smaller dense array).

    Example:
      >>> take(jnp.arange(6.).reshape(2, 3), jnp.array([0, 2]), 1).tolist()
      [[0.0, 2.0], [3.0, 5.0]]
    """
    return jnp.take(jnp.asarray(x), idx, axis=axis, mode="clip")


def put(x_small: ArrayLike, idx: ArrayLike, axis: int, shape: tuple[int, ...]) -> Array:
    """Scatters ``x_small`` into zeros of ``shape`` at slices ``idx`` along ``axis``.

    The inverse of :func:`take` for distinct ``idx``.

    Example:
      >>> put(jnp.ones((2, 1)), jnp.array([2]), 1, (2, 3)).tolist()
      [[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]]
    """
    x_small = jnp.asarray(x_small)
    index = (slice(None),) * axis + (idx,)
    zero = backend_hints.zeros_after(x_small, x_small.dtype)  # backend hint: fill late
    return jnp.broadcast_to(zero, shape).at[index].set(x_small, unique_indices=True)
