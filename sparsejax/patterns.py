"""Sparsity patterns: which entries a mask may remove, as hashable values.

A pattern is a small frozen dataclass (usable as a static ``jit`` argument, a
dict key, or a field of a Flax module) that turns an array and a sparsity into
a bool mask of the array's shape, always through the one selection routine
:func:`sparsejax.select.select_topk`:

* :class:`Unstructured` – individual entries by magnitude.
* :class:`NM` – exactly ``n`` of every ``m`` consecutive entries along ``axis``
  (default ``-2``: the contraction axis of Flax ``Dense`` ``(in, out)`` and
  ``Conv`` ``(h, w, in, out)`` kernels, where sparse tensor cores group them).
* :class:`Channel` – whole slices indexed by ``axes`` (e.g. ``(-1,)`` output
  filters, ``(-2,)`` input channels, ``(-2, -1)`` SWAT's (filter, channel)
  kernel slices), scored by mean ``|w|`` (the L1 norm per entry).
* :class:`Block` – dense blocks of ``shape`` over the trailing dimensions.

Patterns that admit one threshold across layers (``supports_global``) expose
``unit_scores``/``expand`` so the tree level can select globally.

References:
  Mishra et al., "Accelerating Sparse Deep Neural Networks", arXiv:2104.08378
  (N:M along the contraction dimension); Raihan & Aamodt, "Sparse Weight
  Activation Training", NeurIPS 2020 (structured kernel slices).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax

from sparsejax import select
from sparsejax.validate import check_sparsity, normalize_axis

Array = jax.Array
ArrayLike = jax.typing.ArrayLike


@dataclasses.dataclass(frozen=True)
class Pattern:
    """Base class: a hashable rule turning ``(x, sparsity)`` into a bool mask."""

    supports_global = False

    def mask(self, x: ArrayLike, sparsity: ArrayLike, where: str | None = None) -> Array:
        """Bool mask of ``x``'s shape removing ``sparsity`` of it under this pattern."""
        raise NotImplementedError

    def ineligible(self, shape: tuple[int, ...]) -> Optional[str]:
        """Reason why a leaf of ``shape`` cannot take this pattern, or ``None``."""
        return None

    @property
    def fixed_sparsity(self) -> Optional[float]:
        """The sparsity the pattern itself implies (N:M), or ``None``."""
        return None


@dataclasses.dataclass(frozen=True)
class Unstructured(Pattern):
    """Individual entries by magnitude (exact count, lowest index wins ties).

    Example:
      >>> Unstructured().mask(jnp.array([1., -4., 2., 3.]), 0.5).tolist()
      [False, True, False, True]
    """

    supports_global = True

    def mask(self, x, sparsity, where=None):
        check_sparsity(sparsity, where)
        x = jnp.asarray(x)
        return _topk_keep(x, select.keep_count(sparsity, x.size))

    def unit_scores(self, x: Array) -> tuple[Array, int]:
        """Per-unit keys and the number of entries each unit stands for."""
        return select.magnitude_keys(x), 1

    def expand(self, unit_mask: Array, shape: tuple[int, ...]) -> Array:
        """Maps a unit mask back to the leaf's shape."""
        return unit_mask.reshape(shape)


@dataclasses.dataclass(frozen=True)
class NM(Pattern):
    """Keep ``n`` of every ``m`` consecutive entries along ``axis``.

    Args:
      n: kept entries per group, ``0 < n <= m``.
      m: group size.
      axis: grouped axis; ``-2`` is the input (contraction) axis of Flax Dense
        and Conv kernels.

    Example:
      >>> NM(2, 4).mask(jnp.array([[1.], [4.], [3.], [2.]]), None).ravel().tolist()
      [False, True, True, False]

    References:
      Mishra et al. 2021, arXiv:2104.08378; NVIDIA apex ASP.
    """

    n: int = 2
    m: int = 4
    axis: int = -2

    def __post_init__(self):
        if not (isinstance(self.n, int) and isinstance(self.m, int)):
            raise TypeError(f"NM(n, m) needs integers, got n={self.n!r}, m={self.m!r}.")
        if self.m <= 0 or not 0 < self.n <= self.m:
            raise ValueError(f"NM needs 0 < n <= m and m > 0, got n={self.n}, m={self.m} "
                             "(2:4 is NM(2, 4)).")

    @property
    def fixed_sparsity(self) -> float:
        return 1.0 - self.n / self.m

    def ineligible(self, shape):
        if not -len(shape) <= self.axis < len(shape):
            return f"rank {len(shape)} has no axis {self.axis}"
        size = shape[self.axis]
        if size % self.m:
            return f"axis {self.axis} has length {size}, not divisible by m={self.m}"
        return None

    def mask(self, x, sparsity=None, where=None):
        return nm_mask(x, self.n, self.m, self.axis, where=where)


@dataclasses.dataclass(frozen=True)
class Channel(Pattern):
    """Whole slices indexed by ``axes``, scored by their mean magnitude.

    ``Channel((-1,))`` removes output filters, ``Channel((-2,))`` input channels
    and ``Channel((-2, -1))`` (filter, channel) kernel slices of a Conv kernel
    ``(h, w, in, out)`` as in structured SWAT. A layer keeps
    ``ceil((1 - sparsity) * units)`` slices.

    Example:
      >>> Channel((-1,)).mask(jnp.array([[1., 5.], [1., 5.]]), 0.5).tolist()
      [[False, True], [False, True]]
    """

    axes: tuple[int, ...] = (-1,)
    supports_global = True

    def __post_init__(self):
        axes = (self.axes,) if isinstance(self.axes, int) else tuple(self.axes)
        if not axes:
            raise ValueError("Channel(axes=...) needs at least one axis.")
        object.__setattr__(self, "axes", axes)

    def _axes(self, ndim: int, where=None) -> tuple[int, ...]:
        return tuple(sorted(normalize_axis(a, ndim, where) for a in self.axes))

    def ineligible(self, shape):
        if any(not -len(shape) <= a < len(shape) for a in self.axes):
            return f"rank {len(shape)} lacks axes {self.axes}"
        return None

    def unit_scores(self, x: Array) -> tuple[Array, int]:
        axes = self._axes(x.ndim)
        other = tuple(i for i in range(x.ndim) if i not in axes)
        score = jnp.mean(jnp.abs(x.astype(jnp.float32)), axis=other)
        return select.magnitude_keys(score), math.prod(x.shape[i] for i in other)

    def expand(self, unit_mask: Array, shape: tuple[int, ...]) -> Array:
        axes = self._axes(len(shape))
        full = [shape[i] if i in axes else 1 for i in range(len(shape))]
        return jnp.broadcast_to(unit_mask.reshape(full), shape)

    def mask(self, x, sparsity, where=None):
        check_sparsity(sparsity, where)
        x = jnp.asarray(x)
        self._axes(x.ndim, where)
        keys, _ = self.unit_scores(x)
        [m] = select.select_topk([keys], select.keep_count(sparsity, keys.size))
        return self.expand(m, x.shape)


@dataclasses.dataclass(frozen=True)
class Block(Pattern):
    """Dense blocks of ``shape`` over the trailing dimensions, by mean magnitude.

    Example:
      >>> x = jnp.array([[1., 1., 9., 9.], [1., 1., 9., 9.]])
      >>> Block((2, 2)).mask(x, 0.5).astype(int).tolist()
      [[0, 0, 1, 1], [0, 0, 1, 1]]
    """

    shape: tuple[int, ...] = (4, 4)
    supports_global = True

    def __post_init__(self):
        shp = tuple(self.shape)
        if not shp or any((not isinstance(b, int)) or b <= 0 for b in shp):
            raise ValueError(f"Block(shape=...) needs positive integer sizes, got {self.shape!r}.")
        object.__setattr__(self, "shape", shp)

    def ineligible(self, shape):
        b = self.shape
        if len(shape) < len(b):
            return f"rank {len(shape)} is below the block rank {len(b)}"
        tail = shape[len(shape) - len(b):]
        if any(s % bs for s, bs in zip(tail, b)):
            return f"trailing dims {tail} are not divisible by block {b}"
        return None

    def _blocked(self, shape):
        lead = len(shape) - len(self.shape)
        split = list(shape[:lead])
        for s, bs in zip(shape[lead:], self.shape):
            split += [s // bs, bs]
        block_axes = tuple(lead + 2 * i + 1 for i in range(len(self.shape)))
        return split, block_axes

    def unit_scores(self, x: Array) -> tuple[Array, int]:
        split, block_axes = self._blocked(x.shape)
        score = jnp.mean(jnp.abs(x.astype(jnp.float32)).reshape(split), axis=block_axes)
        return select.magnitude_keys(score), math.prod(self.shape)

    def expand(self, unit_mask: Array, shape: tuple[int, ...]) -> Array:
        split, block_axes = self._blocked(shape)
        bshape = list(split)
        for a in block_axes:
            bshape[a] = 1
        m = unit_mask.reshape(bshape)
        return jnp.broadcast_to(m, split).reshape(shape)

    def mask(self, x, sparsity, where=None):
        check_sparsity(sparsity, where)
        x = jnp.asarray(x)
        reason = self.ineligible(x.shape)
        if reason:
            raise ValueError(f"Block{self.shape} does not fit{' ' + where if where else ''}: "
                             f"{reason}; pick a block shape that divides the trailing dims.")
        keys, _ = self.unit_scores(x)
        [m] = select.select_topk([keys], select.keep_count(sparsity, keys.size))
        return self.expand(m, x.shape)


def nm_mask(x: ArrayLike, n: int, m: int, axis: int = -2, *,
            where: str | None = None) -> Array:
    """Bool mask with exactly ``n`` True in every group of ``m`` along ``axis``.

    Groups are ``m`` consecutive entries along ``axis``; inside each group an
    entry's rank is the number of entries with a larger magnitude (or equal and
    earlier), computed with ``m`` vectorised comparisons, never a sort. NaNs are
    never kept (a group with more than ``m - n`` NaNs keeps fewer than ``n``).

    Args:
      x: floating array with ``x.shape[axis] % m == 0``.
      n: kept entries per group.
      m: group size.
      axis: grouped axis (default ``-2``, the contraction axis of Flax kernels).
      where: parameter path used in error messages.

    Returns:
      A bool array of ``x``'s shape.

    Example:
      >>> nm_mask(jnp.array([[4., 1., 3., 2.]]).T, 2, 4).ravel().tolist()
      [True, False, True, False]

    References:
      Mishra et al., "Accelerating Sparse Deep Neural Networks", 2021.
    """
    NM(n, m, axis)  # validates n, m
    x = jnp.asarray(x)
    ax = normalize_axis(axis, x.ndim, where)
    if x.shape[ax] % m:
        raise ValueError(
            f"N:M {n}:{m} needs axis {axis} of length divisible by {m}"
            f"{' for ' + repr(where) if where else ''}, got shape {x.shape}. Pick the "
            "contraction axis (-2 for Flax kernels), another m, or let the tree-level "
            "functions skip the layer (strict=False).")
    return _nm_keep(x, n, m, ax)


@jax.jit
def _topk_keep(x: Array, k: ArrayLike) -> Array:
    # Jitted for the same reason as _nm_keep; k is traced, so no recompilation
    # per sparsity.
    [m] = select.select_topk([select.magnitude_keys(x)], k)
    return m


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _nm_keep(x: Array, n: int, m: int, ax: int) -> Array:
    # Jitted: called eagerly (one-shot pruning, host tools) it would otherwise
    # dispatch and compile dozens of small ops per new shape.
    # Split the grouped axis in place into (groups, m): no transposed copy.
    keys = select.magnitude_keys(x)
    shape = keys.shape
    g = keys.reshape(shape[:ax] + (shape[ax] // m, m) + shape[ax + 1:])
    gax = ax + 1
    idx = jnp.arange(m).reshape((1,) * gax + (m,) + (1,) * (g.ndim - gax - 1))
    rank = jnp.zeros(g.shape, jnp.int32)
    for j in range(m):
        gj = lax.slice_in_dim(g, j, j + 1, axis=gax)
        rank = rank + ((gj > g) | ((gj == g) & (j < idx))).astype(jnp.int32)
    keep = (rank < n) & (g >= 0)
    return keep.reshape(shape)


def topk_mask(x: ArrayLike, sparsity: ArrayLike) -> Array:
    """Bool mask keeping exactly ``ceil((1 - sparsity) * x.size)`` largest ``|x|``.

    Args:
      x: floating array of any shape.
      sparsity: fraction removed in [0, 1); a Python float or a traced scalar
        (a schedule value under ``jit``: no recompilation per value).

    Returns:
      A bool array of ``x``'s shape; ties go to the lowest flat index, NaNs are
      never kept.

    Example:
      >>> topk_mask(jnp.array([[0.1, -5.], [3., 0.2]]), 0.5).tolist()
      [[False, True], [True, False]]

    References:
      Han et al., "Learning both Weights and Connections for Efficient Neural
      Networks", NeurIPS 2015.
    """
    return Unstructured().mask(x, sparsity)


def channel_mask(x: ArrayLike, sparsity: ArrayLike, axes: int | tuple[int, ...] = -1) -> Array:
    """Shortcut for ``Channel(axes).mask(x, sparsity)``."""
    return Channel(axes).mask(x, sparsity)


def block_mask(x: ArrayLike, sparsity: ArrayLike, shape: tuple[int, ...] = (4, 4)) -> Array:
    """Shortcut for ``Block(shape).mask(x, sparsity)``."""
    return Block(shape).mask(x, sparsity)
