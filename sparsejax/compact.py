"""Compact storage of sparse tensors and structured gather/scatter helpers.

Two ways to turn sparsity into savings on XLA without custom kernels:

* **Memory** – a tensor saved for the backward pass with a *static* kept count
  ``k`` (SWAT's top-K activations) is stored as :class:`Packed`: the occupancy
  bits (``jnp.packbits``, 1 bit per entry) plus the ``k`` kept values in
  row-major order, and rebuilt in the backward pass (a running count of the
  bits gives each kept entry's slot: one scatter to pack, one gather to unpack). At 80% sparsity a float32 tensor takes
  ``1/32 + 0.2 = 23%`` of its dense bytes (values + int32 indices would take
  40%). This is zero-value compression (cDMA's ZVC) with one mask for the whole
  tensor.
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
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array
ArrayLike = jax.typing.ArrayLike


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Packed:
    """A tensor stored as occupancy bits plus its kept values.

    Attributes:
      bits: ``uint8[ceil(size / 8)]``, the keep-mask packed 8 entries per byte
        (``jnp.packbits``, big-endian bit order).
      values: the ``k`` kept values in row-major order (padding after the last
        kept entry when fewer than ``k`` were kept, never read back).
      shape: the dense shape (static).
    """

    bits: Array
    values: Array
    shape: tuple[int, ...] = dataclasses.field(metadata=dict(static=True))

    @property
    def nbytes(self) -> int:
        """Bytes held: bits plus values."""
        return self.bits.size * self.bits.dtype.itemsize + self.values.size * self.values.dtype.itemsize


_GROUP = 32  # entries per occupancy word


def _slots(bits: Array, size: int) -> tuple[Array, Array]:
    """Occupancy and value slot of every entry, as ``(groups, 32)`` arrays.

    The bytes are read as big-endian 32-bit words (32 entries each); a word's
    first slot is the exclusive running count of the word popcounts (one small
    cumulative sum over ``size / 32`` words) and an entry's slot adds the
    popcount of the bits before it in its word. Everything else is elementwise,
    so XLA fuses it into the pack scatter / unpack gather instead of
    materialising a full-size int32 prefix array.
    """
    groups = -(-size // _GROUP)
    b = jnp.pad(bits, (0, groups * 4 - bits.size)).reshape(groups, 4).astype(jnp.uint32)
    words = (b[:, 0] << 24) | (b[:, 1] << 16) | (b[:, 2] << 8) | b[:, 3]
    cnt = lax.population_count(words).astype(jnp.int32)
    first = jnp.cumsum(cnt) - cnt
    j = lax.broadcasted_iota(jnp.uint32, (groups, _GROUP), 1)
    w = words[:, None]
    occupied = ((w >> (31 - j)) & 1).astype(bool)
    # Bits before entry j are the top j bits; an XLA shift by 32 gives 0 (j = 0).
    before = lax.population_count(lax.shift_right_logical(w, 32 - j)).astype(jnp.int32)
    return occupied, first[:, None] + before


def _grouped(x: Array, size: int) -> Array:
    groups = -(-size // _GROUP)
    return jnp.pad(x.reshape(-1), (0, groups * _GROUP - size)).reshape(groups, _GROUP)


def pack(x: ArrayLike, mask: ArrayLike, k: int) -> Packed:
    """Stores ``where(mask, x, 0)`` as bits plus ``k`` values.

    One pass: the mask is packed into bits, each kept entry's slot comes from
    word popcounts (no full-size prefix array) and one scatter writes the kept
    values in row-major order.

    Args:
      x: array to store.
      mask: bool keep-mask of ``x``'s shape with at most ``k`` True entries (an
        exact top-K mask has exactly ``k``).
      k: static number of values to keep room for.

    Returns:
      A :class:`Packed` value; :func:`unpack` rebuilds the masked array.

    Example:
      >>> p = pack(jnp.array([1., 2., 3., 4.]), jnp.array([True, False, False, True]), 2)
      >>> p.values.tolist(), unpack(p).tolist()
      ([1.0, 4.0], [1.0, 0.0, 0.0, 4.0])

    References:
      Rhu et al., HPCA 2018 (ZVC).
    """
    x = jnp.asarray(x)
    m = jnp.asarray(mask, bool).reshape(-1)
    if m.size != x.size:
        raise ValueError(f"pack: mask has {m.size} entries, x has shape {x.shape}.")
    bits = jnp.packbits(m)
    occupied, slot = _slots(bits, m.size)
    slot = jnp.where(occupied, slot, k)  # dropped entries go out of range
    values = jnp.zeros((k,), x.dtype).at[slot].set(_grouped(x, m.size), mode="drop",
                                                   unique_indices=True)
    return Packed(bits, values, tuple(x.shape))


def unpack(p: Packed) -> Array:
    """Rebuilds the dense masked array from a :class:`Packed` value.

    One fused gather: each entry's slot is computed from the word popcounts.

    Args:
      p: the packed tensor.

    Returns:
      An array of ``p.shape`` with the kept values in place and zeros elsewhere.

    Example:
      >>> unpack(pack(jnp.eye(2), jnp.eye(2, dtype=bool), 2)).tolist()
      [[1.0, 0.0], [0.0, 1.0]]
    """
    size = math.prod(p.shape)
    occupied, slot = _slots(p.bits, size)
    vals = p.values[jnp.clip(slot, 0, max(p.values.size - 1, 0))]
    dense = jnp.where(occupied, vals, jnp.zeros((), p.values.dtype))
    return dense.reshape(-1)[:size].reshape(p.shape)


def packed_nbytes(shape: tuple[int, ...], k: int, dtype) -> int:
    """Bytes :func:`pack` uses for a tensor of ``shape`` with ``k`` kept values.

    Example:
      >>> packed_nbytes((1000,), 200, jnp.float32) / 4000
      0.23125
    """
    size = math.prod(shape)
    return -(-size // 8) + k * np.dtype(dtype).itemsize


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
    return jnp.zeros(shape, x_small.dtype).at[index].set(x_small, unique_indices=True)
