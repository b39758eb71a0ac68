"""Sparsity patterns: which entries a mask may remove, as hashable values.

A pattern is a small frozen dataclass (usable as a static ``jit`` argument, a
dict key, or a field of a Flax module) that turns an array and a sparsity into
a bool mask of the array's shape, always through the one selection routine
:func:`sparsejax.select.select_topk`:

* :class:`Unstructured` – individual entries by magnitude.
* :class:`NM` – exactly ``n`` of every ``m`` consecutive entries along the
  kernel's flattened contraction (input) dimension, where sparse tensor cores
  group them: derived from the layer by the adapters (``DenseGeneral`` /
  ``Einsum`` kernels may contract several axes), from a per-path map at the
  tree level, or from the kernel's rank for a bare array
  (:func:`default_contraction_axes`); ``NM(n, m, axis=...)`` overrides it.
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
from typing import Any, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from sparsejax import select
from sparsejax.rule import Rule, resolve_sparsity, where_suffix
from sparsejax.validate import check_sparsity, normalize_axis

Array = jax.Array
ArrayLike = jax.typing.ArrayLike


@dataclasses.dataclass(frozen=True)
class Pattern(Rule):
    """Base class: a hashable rule turning ``(x, sparsity)`` into a bool mask.

    A pattern is a :class:`~sparsejax.rule.Rule`, so it also fills a slot of a
    sparse-op policy: ``Policy(weight=NM(2, 4))``, ``Policy(weight=Channel((-2,),
    sparsity=0.5))`` (the slot's ``aux`` sparsity overrides ``sparsity``). At the
    tree level (``prune``, ``pruning``) the sparsity comes from the call instead.

    Attributes:
      sparsity: the fraction removed when used as a slot rule (keyword only;
        ``None``: given per call, or fixed by the pattern as for N:M).
    """

    sparsity: Optional[float] = dataclasses.field(default=None, kw_only=True)
    supports_global = False
    uses = frozenset({"sparsity"})

    def __repr__(self) -> str:
        # The pattern's own fields first, as dataclasses print them; the slot-rule
        # sparsity last and only when set (tree-level patterns never carry one).
        shown = [f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self)
                 if f.name != "sparsity"]
        if self.sparsity is not None:
            shown.append(f"sparsity={self.sparsity!r}")
        return f"{type(self).__name__}({', '.join(shown)})"

    def __post_init__(self):
        if self.sparsity is None:
            return
        if self.fixed_sparsity is not None:
            raise ValueError(f"{self!r} fixes its own sparsity ({self.fixed_sparsity:g}); drop "
                             f"sparsity={self.sparsity}.")
        check_sparsity(self.sparsity, f"{type(self).__name__}(sparsity=...)")

    @property
    def uses_contraction_axes(self) -> bool:
        """Whether the pattern groups along each kernel's contraction axes (``NM(n, m)``)."""
        return False

    def mask(self, x: ArrayLike, sparsity: Optional[ArrayLike] = None,
             where: str | None = None) -> Array:
        """Bool mask of ``x``'s shape removing ``sparsity`` (default: the pattern's own)
        of it under this pattern."""
        raise NotImplementedError

    def ineligible(self, shape: tuple[int, ...]) -> Optional[str]:
        """Reason why a leaf of ``shape`` cannot take this pattern, or ``None``."""
        return None

    def along(self, axes: Any) -> "Pattern":
        """This pattern for a layer whose contraction axes are ``axes`` (N:M binds them)."""
        del axes
        return self

    def ambiguous(self, shape: tuple[int, ...], where: Optional[str] = None) -> Optional[str]:
        """Why this pattern cannot tell how to apply to a bare leaf of ``shape`` (refused
        rather than skipped by the tree level), or ``None``."""
        del shape, where
        return None

    @property
    def fixed_sparsity(self) -> Optional[float]:
        """The sparsity the pattern itself implies (N:M), or ``None``."""
        return None

    def check_tree_use(self, argument: str) -> None:
        """Refuses this pattern at the tree level (``prune``, ``pruning``) if it carries a
        slot-rule sparsity: there the sparsity is the call's ``argument``, and the two
        could disagree.

        Raises:
          ValueError: naming the pattern, the call's argument and the fix.
        """
        if self.sparsity is not None:
            raise ValueError(f"{self!r} carries a slot-rule sparsity; pruning a tree takes the "
                             f"sparsity from {argument}: pass {type(self).__name__}(...) "
                             f"without sparsity= and give {argument}{self.sparsity:g} to the "
                             "call.")

    def _target(self, sparsity: Optional[ArrayLike], where: str | None) -> ArrayLike:
        """The sparsity to apply: the call's, else the pattern's own (checked)."""
        return resolve_sparsity(self.sparsity, sparsity, self, where)

    def keep(self, x, given, feature_axes, where=None):
        return self.mask(x, given.sparsity, where), None

    def density(self, width):
        s = self.fixed_sparsity if self.sparsity is None else self.sparsity
        return None if s is None else 1.0 - s

    def check(self, shape, feature_axes, where=None):
        reason = self.ineligible(shape)
        if reason:
            raise ValueError(f"{self!r} does not fit the tensor{where_suffix(where)} of shape "
                             f"{shape}: {reason}. Exclude the layer or pick another pattern.")

    def static_count(self, shape, given):
        if given.sparsity is not None or self.sparsity is None:
            return None
        size = math.prod(shape)
        units = jax.eval_shape(lambda: self.unit_scores(jnp.zeros(shape, jnp.float32))[0]).size
        return select.keep_count(self.sparsity, units) * (size // units)


@dataclasses.dataclass(frozen=True, repr=False)
class Unstructured(Pattern):
    """Individual entries by magnitude (exact count, lowest index wins ties).

    Example:
      >>> Unstructured().mask(jnp.array([1., -4., 2., 3.]), 0.5).tolist()
      [False, True, False, True]
    """

    supports_global = True

    def mask(self, x, sparsity=None, where=None):
        sparsity = self._target(sparsity, where)
        x = jnp.asarray(x)
        return _topk_keep(x, select.keep_count(sparsity, x.size))

    def unit_scores(self, x: Array) -> tuple[Array, int]:
        """Per-unit keys and the number of entries each unit stands for."""
        return select.magnitude_keys(x), 1

    def expand(self, unit_mask: Array, shape: tuple[int, ...]) -> Array:
        """Maps a unit mask back to the leaf's shape."""
        return unit_mask.reshape(shape)


Axes = Optional[Union[int, tuple[int, ...]]]


def default_contraction_axes(shape: tuple[int, ...]) -> Optional[tuple[int, ...]]:
    """The contraction axes of a bare kernel of ``shape`` (no layer information).

    The documented rule of the tree-level functions when no per-path axes are
    given: a rank-2 kernel is a Dense ``(in, out)`` (axis ``0``), a rank-4
    kernel a 2-D Conv ``(h, w, in, out)`` (axis ``2``, the input channels at
    each spatial position). Any other rank is ambiguous and gives ``None``:
    a rank-3 kernel may be a DenseGeneral query ``(in, heads, head_dim)``
    (contracting axis 0), an attention output projection ``(heads, head_dim,
    out)`` (axes 0 and 1) or a 1-D Conv ``(w, in, out)`` (axis 1).

    Args:
      shape: the kernel's shape.

    Returns:
      The contraction axes (non-negative), or ``None`` when the rank does not
      determine them.

    Example:
      >>> default_contraction_axes((64, 10)), default_contraction_axes((3, 3, 16, 32))
      ((0,), (2,))
      >>> default_contraction_axes((192, 3, 64)) is None
      True

    References:
      Mishra et al., "Accelerating Sparse Deep Neural Networks", arXiv:2104.08378
      (2:4 along the GEMM's K dimension); NVIDIA apex ASP.
    """
    if len(shape) == 2:
        return (0,)
    if len(shape) == 4:
        return (2,)
    return None


def _canonical_axes(axis: Any) -> Axes:
    if axis is None:
        return None
    if isinstance(axis, (list, tuple)):
        axes = tuple(axis)
        if not axes:
            raise ValueError("NM(axis=()) needs at least one axis (or axis=None: the layer's "
                             "contraction axes).")
        if any(isinstance(a, bool) or not isinstance(a, int) for a in axes):
            raise TypeError(f"NM(axis=...) needs an int or a tuple of ints, got {axis!r}.")
        if len(set(axes)) != len(axes):
            raise ValueError(f"NM(axis={axis!r}) repeats an axis.")
        return axes[0] if len(axes) == 1 else axes
    if isinstance(axis, bool) or not isinstance(axis, int):
        raise TypeError(f"NM(axis=...) needs an int, a tuple of ints or None, got {axis!r}.")
    return axis


def _resolve_axes(axis: Axes, ndim: int, where: Optional[str] = None) -> tuple[int, ...]:
    """``axis`` as a tuple of distinct non-negative axes of a rank-``ndim`` array."""
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    out = tuple(normalize_axis(a, ndim, where) for a in axes)
    if len(set(out)) != len(out):
        raise ValueError(f"N:M axes {axis!r} name one axis twice for a rank-{ndim} array"
                         f"{' (' + repr(where) + ')' if where else ''}.")
    return out


_AMBIGUOUS_FIX = ("pass the contraction axes: NM(n, m, axis=...) for one kernel, an axes map "
                  "{path: axes} to compute_masks / prune / pruning (e.g. from "
                  "sparsejax.contraction_axes(model, x)), or use the model-aware route "
                  "sparsify(model, ste(NM(n, m)))")


@dataclasses.dataclass(frozen=True, repr=False)
class NM(Pattern):
    """Keep ``n`` of every ``m`` consecutive entries along the contraction dimension.

    Groups run along the kernel's *flattened contraction (input) dimension*,
    the GEMM's K where sparse tensor cores group 2:4: the contraction axes are
    moved together (kept in kernel order) and flattened, groups of ``m``
    consecutive entries are taken along them, separately for every output (and
    batch / spatial) index, and the mask is reshaped back. For a Conv
    ``(h, w, in, out)`` the groups run along ``in`` at each spatial position.

    Which axes contract:

    * ``axis=None`` (default): the layer's own contraction axes. The adapters
      (:func:`sparsejax.sparsify`) derive them from the module (Dense /
      Linear ``(in, out)`` -> ``(0,)``; DenseGeneral ``(in, heads, head_dim)``
      -> ``(0,)``; DenseGeneral over ``axis=(-2, -1)`` with kernel
      ``(heads, head_dim, out)`` -> ``(0, 1)``; Einsum -> the kernel labels
      also in the input and not in the output; Conv -> the input-channel
      axis). On a bare array (tree-level pruning without an axes map) the rule
      is :func:`default_contraction_axes` (rank 2 -> axis 0, rank 4 -> axis 2);
      other ranks are ambiguous and refused with a message naming the fix.
    * ``axis=int`` or ``tuple``: an explicit override, used for every kernel.

    Args:
      n: kept entries per group, ``0 < n <= m``.
      m: group size.
      axis: ``None`` (the contraction axes, see above), an axis or a tuple of
        axes flattened in the given order.

    Example:
      >>> NM(2, 4).mask(jnp.array([[1.], [4.], [3.], [2.]]), None).ravel().tolist()
      [False, True, True, False]
      >>> w = jnp.arange(16.).reshape(2, 2, 4)   # (heads, head_dim, out), K = 4
      >>> int(NM(2, 4, axis=(0, 1)).mask(w).sum())
      8

    References:
      Mishra et al., "Accelerating Sparse Deep Neural Networks",
      arXiv:2104.08378 (2:4 along the contraction dimension); NVIDIA apex ASP.
    """

    n: int = 2
    m: int = 4
    axis: Axes = None
    uses = frozenset()

    def __post_init__(self):
        if not (isinstance(self.n, int) and isinstance(self.m, int)):
            raise TypeError(f"NM(n, m) needs integers, got n={self.n!r}, m={self.m!r}.")
        if self.m <= 0 or not 0 < self.n <= self.m:
            raise ValueError(f"NM needs 0 < n <= m and m > 0, got n={self.n}, m={self.m} "
                             "(2:4 is NM(2, 4)).")
        object.__setattr__(self, "axis", _canonical_axes(self.axis))
        super().__post_init__()

    @property
    def fixed_sparsity(self) -> float:
        return 1.0 - self.n / self.m

    @property
    def uses_contraction_axes(self) -> bool:
        return self.axis is None

    def along(self, axes: Axes) -> "NM":
        """This pattern for a layer whose contraction axes are ``axes``.

        An explicit ``axis`` wins; ``axes=None`` (unknown) leaves the pattern as is.
        """
        if self.axis is not None or axes is None:
            return self
        return dataclasses.replace(self, axis=axes)

    def axes_for(self, shape: tuple[int, ...], where: Optional[str] = None) -> tuple[int, ...]:
        """The grouped axes of a kernel of ``shape`` (non-negative, in flattening order).

        Raises:
          ValueError: ``axis=None`` and the rank is ambiguous (the message names
            ``where`` and the fix), or an axis is out of range.
        """
        if self.axis is None:
            axes = default_contraction_axes(tuple(shape))
            if axes is None:
                raise ValueError(self.ambiguous(shape, where))
            return axes
        return _resolve_axes(self.axis, len(shape), where)

    def ambiguous(self, shape: tuple[int, ...], where: Optional[str] = None) -> Optional[str]:
        """Why the contraction axes of a bare kernel of ``shape`` are unknown, or ``None``."""
        if self.axis is not None or len(shape) < 2 or default_contraction_axes(tuple(shape)):
            return None
        label = f"{where!r} " if where else ""
        return (f"{self!r}: the contraction axes of the rank-{len(shape)} kernel {label}"
                f"{tuple(shape)} are ambiguous (e.g. (in, heads, head_dim) contracts axis 0, "
                f"(heads, head_dim, out) axes (0, 1), a 1-D conv (w, in, out) axis 1); "
                + _AMBIGUOUS_FIX + ".")

    def ineligible(self, shape):
        if self.axis is None and len(shape) < 2:
            return f"a rank-{len(shape)} leaf has no axis to group along"
        if self.ambiguous(shape):
            return self.ambiguous(shape)
        if self.axis is not None and any(not -len(shape) <= a < len(shape) for a in
                                         ((self.axis,) if isinstance(self.axis, int) else self.axis)):
            return f"rank {len(shape)} has no axis {self.axis}"
        axes = self.axes_for(shape)
        size = math.prod(shape[a] for a in axes)
        if size % self.m:
            what = f"axis {axes[0]}" if len(axes) == 1 else f"axes {axes} (flattened)"
            return f"{what} has length {size}, not divisible by m={self.m}"
        return None

    def mask(self, x, sparsity=None, where=None):
        del sparsity  # fixed: n of every m
        x = jnp.asarray(x)
        return nm_mask(x, self.n, self.m, self.axes_for(x.shape, where), where=where)

    def static_count(self, shape, given):
        return math.prod(shape) // self.m * self.n


@dataclasses.dataclass(frozen=True, repr=False)
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
        super().__post_init__()
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

    def mask(self, x, sparsity=None, where=None):
        sparsity = self._target(sparsity, where)
        x = jnp.asarray(x)
        self._axes(x.ndim, where)
        keys, _ = self.unit_scores(x)
        [m] = select.select_topk([keys], select.keep_count(sparsity, keys.size))
        return self.expand(m, x.shape)


@dataclasses.dataclass(frozen=True, repr=False)
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
        super().__post_init__()
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

    def mask(self, x, sparsity=None, where=None):
        sparsity = self._target(sparsity, where)
        x = jnp.asarray(x)
        reason = self.ineligible(x.shape)
        if reason:
            raise ValueError(f"Block{self.shape} does not fit{' ' + where if where else ''}: "
                             f"{reason}; pick a block shape that divides the trailing dims.")
        keys, _ = self.unit_scores(x)
        [m] = select.select_topk([keys], select.keep_count(sparsity, keys.size))
        return self.expand(m, x.shape)


def nm_mask(x: ArrayLike, n: int, m: int, axis: Axes = None, *,
            where: str | None = None) -> Array:
    """Bool mask with exactly ``n`` True in every group of ``m`` along ``axis``.

    Groups are ``m`` consecutive entries along ``axis``, or, for a tuple of
    axes, along those axes flattened in the given order (the flattened
    contraction dimension of a DenseGeneral / Einsum kernel); inside each group
    an entry's rank is the number of entries with a larger magnitude (or equal
    and earlier), computed with ``m`` vectorised comparisons, never a sort. NaNs
    are never kept (a group with more than ``m - n`` NaNs keeps fewer than ``n``).

    Args:
      x: floating array whose grouped size is divisible by ``m``.
      n: kept entries per group.
      m: group size.
      axis: grouped axis or tuple of axes; ``None`` (default) applies the
        bare-kernel rule :func:`default_contraction_axes` (rank 2 -> 0, rank 4
        -> 2, other ranks refused).
      where: parameter path used in error messages.

    Returns:
      A bool array of ``x``'s shape.

    Example:
      >>> nm_mask(jnp.array([[4., 1., 3., 2.]]).T, 2, 4).ravel().tolist()
      [True, False, True, False]

    References:
      Mishra et al., "Accelerating Sparse Deep Neural Networks", 2021.
    """
    x = jnp.asarray(x)
    axes = NM(n, m, axis).axes_for(x.shape, where)  # validates n, m and the axes
    size = math.prod(x.shape[a] for a in axes)
    if size % m:
        what = f"axis {axis}" if len(axes) == 1 else f"axes {axes} (flattened length {size})"
        raise ValueError(
            f"N:M {n}:{m} needs {what} of length divisible by {m}"
            f"{' for ' + repr(where) if where else ''}, got shape {x.shape}. Pick the "
            "contraction axes, another m, or let the tree-level functions skip the layer "
            "(strict=False).")
    return _nm_keep(x, n, m, axes)


@jax.jit
def _topk_keep(x: Array, k: ArrayLike) -> Array:
    # Jitted for the same reason as _nm_keep; k is traced, so no recompilation
    # per sparsity.
    [m] = select.select_topk([select.magnitude_keys(x)], k)
    return m


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _nm_keep(x: Array, n: int, m: int, axes: tuple[int, ...]) -> Array:
    # Jitted: called eagerly (one-shot pruning, host tools) it would otherwise
    # dispatch and compile dozens of small ops per new shape.
    shape = x.shape
    if len(axes) > 1:
        # Several contraction axes: bring them together (in flattening order) at
        # the first one's place and flatten them; no copy when already adjacent.
        first = min(axes)
        rest = [a for a in range(x.ndim) if a not in axes]
        perm = rest[:first] + list(axes) + rest[first:]
        moved = jnp.transpose(x, perm) if perm != list(range(x.ndim)) else x
        mshape = moved.shape
        flat = moved.reshape(mshape[:first] + (-1,) + mshape[first + len(axes):])
        keep = _nm_keep(flat, n, m, (first,)).reshape(mshape)
        return jnp.transpose(keep, list(np.argsort(perm))) if perm != list(range(x.ndim)) \
            else keep
    (ax,) = axes
    # Split the grouped axis in place into (groups, m): no transposed copy.
    keys = select.magnitude_keys(x)
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
        (a schedule value under ``jit``: no recompilation per value). A
        concrete value outside ``[0, 1)`` (or NaN) raises ``ValueError``. A
        traced value cannot raise inside ``jit`` and is clamped into ``[0, 1)``
        (see :func:`sparsejax.select.keep_count`): negative or NaN removes
        nothing (all True), ``>= 1`` keeps the minimum (``ceil(x.size /
        10_000)`` entries, at least one), never an all-False mask. The same
        holds for :func:`channel_mask` / :func:`block_mask` (counted in
        channels / blocks). Use :func:`sparsejax.transform.pruning` (which
        raises for such values) or :func:`sparsejax.schedules.check_schedule`
        to catch them.

    Returns:
      A bool array of ``x``'s shape; ties go to the lowest flat index, NaNs are
      never kept.

    Example:
      >>> topk_mask(jnp.array([[0.1, -5.], [3., 0.2]]), 0.5).tolist()
      [[False, True], [True, False]]
      >>> jax.jit(topk_mask)(jnp.array([1., 2.]), jnp.float32(1.5)).tolist()  # clamped
      [False, True]

    References:
      Han et al., "Learning both Weights and Connections for Efficient Neural
      Networks", NeurIPS 2015.
    """
    return Unstructured().mask(x, sparsity)


def channel_mask(x: ArrayLike, sparsity: ArrayLike, axes: int | tuple[int, ...] = -1) -> Array:
    """Shortcut for ``Channel(axes).mask(x, sparsity)``.

    Out-of-range traced sparsities are clamped as in :func:`topk_mask`.
    """
    return Channel(axes).mask(x, sparsity)


def block_mask(x: ArrayLike, sparsity: ArrayLike, shape: tuple[int, ...] = (4, 4)) -> Array:
    """Shortcut for ``Block(shape).mask(x, sparsity)``.

    Out-of-range traced sparsities are clamped as in :func:`topk_mask`.
    """
    return Block(shape).mask(x, sparsity)
