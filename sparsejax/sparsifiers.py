"""Sparsifiers: the hashable rules that fill the slots of a sparse-op policy.

A sparsifier is a small frozen dataclass (a static ``jit`` argument) that turns
an array into a bool keep-mask. Everything that changes between steps (a
sparsity chosen by SWAT-M, a cached threshold, a fixed pruning mask, a PRNG
key) arrives through a :class:`SlotInput` built from the op's ``aux`` argument,
so changing it never recompiles. Every magnitude selection goes through
:mod:`sparsejax.select` / :mod:`sparsejax.patterns` (the one selection routine).

==================  ===================================================  ==========================
rule                keeps                                                dynamic inputs (SlotInput)
==================  ===================================================  ==========================
``TopK``            the ``1 - sparsity`` largest ``|x|`` of the tensor    ``sparsity``
``Cached``          ``|x| >= threshold``                                  ``threshold``, ``refresh``,
                                                                          ``sparsity``
``PatternRule``     what a :class:`~sparsejax.patterns.Pattern` keeps     ``sparsity``
``Fixed``           a given mask                                          ``mask``
``RowTopK``         the ``k`` largest ``|x|`` of every row                –
``SharedColumns``   ``k`` feature columns shared by all rows              –
``RandomProjection``  top ``1 - sparsity`` outputs per row, estimated     ``sparsity``, ``key``
                    by a sparse random projection (``out`` slot only)
==================  ===================================================  ==========================

"Rows" and "features" refer to the layer's output-feature axes (the kernel's
output dims): a row is one index of every other axis (sample, or sample ×
spatial position for a conv).

References:
  Raihan & Aamodt, "Sparse Weight Activation Training", NeurIPS 2020 (TopK,
  Cached); Sun et al., "meProp", ICML 2017 (RowTopK, SharedColumns); Liu et al.,
  "Dynamic Sparse Graph for Efficient Deep Learning", ICLR 2019
  (RandomProjection); Dong et al., "Spartan", IEEE TPDS 2021 (sampled thresholds).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, ClassVar, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from sparsejax import select
from sparsejax.patterns import NM, Block, Channel, Pattern, Unstructured
from sparsejax.validate import check_sparsity

Array = jax.Array
ArrayLike = jax.typing.ArrayLike


class SlotInput(NamedTuple):
    """The dynamic (traced) inputs of one policy slot; ``None`` = not given.

    Attributes:
      sparsity: overrides the rule's static sparsity (e.g. SWAT-M budgets).
      threshold: magnitude threshold for :class:`Cached`.
      refresh: bool scalar; where True :class:`Cached` recomputes its threshold.
      mask: keep-mask for :class:`Fixed` (bool or 0/1, the tensor's shape).
      key: PRNG key for :class:`RandomProjection`.
    """

    sparsity: Optional[ArrayLike] = None
    threshold: Optional[ArrayLike] = None
    refresh: Optional[ArrayLike] = None
    mask: Optional[ArrayLike] = None
    key: Optional[ArrayLike] = None


def _where(where: str | None) -> str:
    return f" in {where}" if where else ""


def _sparsity(rule_value: Optional[float], given: Optional[ArrayLike], rule: object,
              where: str | None) -> ArrayLike:
    s = rule_value if given is None else given
    if s is None:
        raise ValueError(f"{rule!r}{_where(where)} has no sparsity: give one to the rule or "
                         "pass it through aux.")
    check_sparsity(s, where)
    return s


def _key_threshold(v: Array, k: ArrayLike) -> Array:
    """The magnitude of the k-th largest key ``v`` (the threshold a cache should
    store: ``|x| >= t`` keeps the same entries); ``inf`` when nothing is kept."""
    t = lax.bitcast_convert_type(jnp.maximum(v, 0), jnp.float32)
    return jnp.where(jnp.asarray(k) > 0, t, jnp.float32(jnp.inf))


def _as_rows(x: Array, feature_axes: tuple[int, ...]) -> tuple[Array, Callable[[Array], Array]]:
    """Moves ``feature_axes`` last and flattens them: ``(..., F)`` plus the inverse map."""
    other = tuple(i for i in range(x.ndim) if i not in feature_axes)
    perm = other + tuple(feature_axes)
    moved = jnp.transpose(x, perm)
    rows = moved.reshape(moved.shape[:len(other)] + (-1,))
    inv = tuple(int(i) for i in np.argsort(perm))
    return rows, lambda r: jnp.transpose(r.reshape(moved.shape), inv)


def _feature_width(shape: tuple[int, ...], feature_axes: tuple[int, ...]) -> int:
    return math.prod(shape[i] for i in feature_axes)


@dataclasses.dataclass(frozen=True)
class Sparsifier:
    """Base class of the slot rules.

    Subclasses set ``uses`` (the :class:`SlotInput` fields they read) and
    ``requires`` (those that must be given) and implement :meth:`keep`.
    """

    uses: ClassVar[frozenset[str]] = frozenset()
    requires: ClassVar[frozenset[str]] = frozenset()

    def keep(self, x: Array, given: SlotInput, feature_axes: tuple[int, ...],
             where: str | None = None) -> tuple[Array, Optional[Array]]:
        """Returns ``(mask, threshold)``.

        Args:
          x: the tensor the slot sparsifies.
          given: the slot's dynamic inputs.
          feature_axes: the output-feature axes of ``x`` (used by row/column rules).
          where: layer name for error messages.

        Returns:
          A bool mask of ``x``'s shape and the magnitude threshold it used (float32
          scalar) or ``None`` when the rule has no single threshold.
        """
        raise NotImplementedError

    def static_count(self, shape: tuple[int, ...], given: SlotInput) -> Optional[int]:
        """Exact number of kept entries if it is known at trace time, else ``None``."""
        return None

    def pack_slots(self, shape: tuple[int, ...], given: SlotInput) -> Optional[tuple[int, bool]]:
        """How a kept tensor packs (:func:`sparsejax.ops.compaction.pack`), if statically.

        Returns:
          ``(value slots, ties)`` or ``None``: ``ties=True`` when the kept entries
          are ``|x| >=`` the returned threshold and the entries tied at it may
          exceed the slots (they go to a tie bit plane).
        """
        count = self.static_count(shape, given)
        return None if count is None else (count, False)

    def by_threshold(self, given: SlotInput) -> bool:
        """True when :meth:`keep`'s mask is ``|x| >=`` the threshold it returns.

        A kept tensor's mask can then be rebuilt from the tensor and that scalar
        (the sparse ops rebuild W's mask in the backward pass instead of saving it).
        """
        del given
        return False

    def check(self, shape: tuple[int, ...], feature_axes: tuple[int, ...],
              where: str | None = None) -> None:
        """Raises a clear error if the rule cannot apply to a tensor of ``shape``."""

    def density(self, width: int) -> Optional[float]:
        """The fraction of entries the rule keeps, from its static arguments.

        Args:
          width: the tensor's feature width (rows keep ``k`` of ``width``).

        Returns:
          The kept fraction, or ``None`` when only the data decides it (a
          :class:`Fixed` mask, a :class:`Cached` threshold without a target).
          The cost model (:func:`sparsejax.analysis.costs.policy_fractions`) reads it.
        """
        del width
        return None


@dataclasses.dataclass(frozen=True)
class TopK(Sparsifier):
    """Whole-tensor magnitude top-K (one threshold per tensor, SWAT's rule).

    Exact (``ceil((1 - sparsity) * size)`` entries, ties to the lowest index) via
    :func:`sparsejax.select.select_topk`. With ``ties="all"`` every entry with
    ``|x| >=`` the magnitude of the k-th largest is kept (SWAT's rule as the
    paper states it: at least ``k`` entries, more only on ties at the threshold,
    e.g. zeros after a ReLU when more than ``sparsity`` of ``x`` is zero, which
    changes no value), which needs no tie-resolution pass and compiles to one
    loop fewer. With ``sample_size`` the threshold is
    estimated from a strided sample (Spartan-style, approximate count) and
    ``|x| >= threshold`` is kept. If more than ``sparsity`` of ``x`` is already
    zero (after a ReLU) nothing non-zero is dropped.

    Args:
      sparsity: fraction removed, in [0, 1); ``aux`` may override it per call.
      sample_size: optional sample size for an approximate threshold.
      ties: ``"index"`` (exact count, ties to the lowest index) or ``"all"``
        (keep every tie at the threshold; the kept count is then not static).

    Example:
      >>> TopK(0.5).keep(jnp.array([1., -4., 2., 3.]), SlotInput(), ())[0].tolist()
      [False, True, False, True]

    References:
      Raihan & Aamodt, "Sparse Weight Activation Training", NeurIPS 2020.
    """

    sparsity: float = 0.5
    sample_size: Optional[int] = None
    ties: str = "index"
    uses: ClassVar[frozenset[str]] = frozenset({"sparsity"})

    def __post_init__(self):
        check_sparsity(self.sparsity, "TopK(sparsity=...)")
        if self.ties not in ("index", "all"):
            raise ValueError(f"TopK(ties=...) must be 'index' (exact count) or 'all' (keep every "
                             f"tie at the threshold), got {self.ties!r}.")
        if self.sample_size is not None and (not isinstance(self.sample_size, int)
                                             or self.sample_size <= 0):
            raise ValueError(f"TopK(sample_size=...) must be a positive int or None, "
                             f"got {self.sample_size!r}.")

    def density(self, width):
        return 1.0 - self.sparsity

    def keep(self, x, given, feature_axes, where=None):
        s = _sparsity(self.sparsity, given.sparsity, self, where)
        if self.sample_size is not None:
            t = select.threshold(x, s, sample_size=self.sample_size)
            return jnp.abs(x.astype(jnp.float32)) >= t, t
        check_sparsity(s, where)
        k = select.keep_count(s, x.size)
        [m], v = select.select_topk_key([x], k, ties=self.ties)
        return m, _key_threshold(v, k)

    def static_count(self, shape, given):
        if self.sample_size is not None or given.sparsity is not None or self.ties == "all":
            return None
        return select.keep_count(self.sparsity, math.prod(shape))

    def by_threshold(self, given):
        return self.ties == "all" or self.sample_size is not None

    def pack_slots(self, shape, given):
        # ties="all" keeps |x| >= t with fewer than k entries strictly above t:
        # those take the k slots, the ties go to the tie plane.
        if self.ties == "all" and self.sample_size is None and given.sparsity is None:
            return select.keep_count(self.sparsity, math.prod(shape)), True
        return super().pack_slots(shape, given)


@dataclasses.dataclass(frozen=True)
class Cached(Sparsifier):
    """Keeps ``|x| >= threshold`` with the threshold given in ``aux`` (SWAT's cache).

    SWAT recomputes the exact threshold every ``topk_period`` steps and reuses it
    in between. Pass the cached value as the slot's ``threshold``; to refresh it
    inside the same compiled step pass ``refresh=True`` (a traced bool) and the
    rule recomputes it with :func:`sparsejax.select.threshold` at ``sparsity``
    (its counting passes run only on refresh steps). The op's stats return the
    threshold actually used, which the caller stores for the next step.

    Args:
      sparsity: target used on refresh steps (``aux`` may override it).
      sample_size: optional sample size for the refreshed threshold.

    Example:
      >>> Cached().keep(jnp.array([1., -4., 2.]), SlotInput(threshold=2.), ())[0].tolist()
      [False, True, True]

    References:
      Raihan & Aamodt, NeurIPS 2020 (``topk_period`` in the official code).
    """

    sparsity: Optional[float] = None
    sample_size: Optional[int] = None
    uses: ClassVar[frozenset[str]] = frozenset({"threshold", "refresh", "sparsity"})
    requires: ClassVar[frozenset[str]] = frozenset({"threshold"})

    def __post_init__(self):
        if self.sparsity is not None:
            check_sparsity(self.sparsity, "Cached(sparsity=...)")

    def density(self, width):
        return None if self.sparsity is None else 1.0 - self.sparsity

    def by_threshold(self, given):
        return True

    def keep(self, x, given, feature_axes, where=None):
        t = jnp.asarray(given.threshold, jnp.float32)
        if t.ndim:
            raise ValueError(f"Cached threshold{_where(where)} must be a scalar, got shape {t.shape}.")
        if given.refresh is not None:
            s = _sparsity(self.sparsity, given.sparsity, self, where)
            refresh = jnp.asarray(given.refresh, bool)
            t = jnp.where(refresh, select.threshold(x, s, sample_size=self.sample_size,
                                                    refresh=refresh), t)
        elif given.sparsity is not None:
            raise ValueError(f"Cached{_where(where)} got a sparsity in aux but no refresh flag; the "
                             "sparsity is only used on refresh steps (pass refresh=...).")
        return jnp.abs(x.astype(jnp.float32)) >= t, t


@dataclasses.dataclass(frozen=True)
class PatternRule(Sparsifier):
    """Applies a :class:`~sparsejax.patterns.Pattern` (N:M, Channel, Block, ...).

    ``PatternRule(Channel((-2,)), 0.5)`` on a Flax kernel drops half the input
    channels; with a single kernel in/out axis and a static sparsity the ops
    compact the kept slices into a smaller dense op (see :mod:`sparsejax.ops`).

    Args:
      pattern: the pattern value.
      sparsity: fraction removed (``None`` for N:M, which fixes it).

    Example:
      >>> PatternRule(NM(2, 4)).keep(jnp.array([[1.], [4.], [3.], [2.]]), SlotInput(), ())[0].ravel().tolist()
      [False, True, True, False]

    References:
      Mishra et al. 2021 (N:M); Raihan & Aamodt, NeurIPS 2020 (structured SWAT).
    """

    pattern: Pattern = dataclasses.field(default_factory=Unstructured)
    sparsity: Optional[float] = None
    uses: ClassVar[frozenset[str]] = frozenset({"sparsity"})

    def __post_init__(self):
        if not isinstance(self.pattern, Pattern):
            raise TypeError(f"PatternRule needs a sparsejax.patterns.Pattern, got {self.pattern!r}.")
        if self.pattern.fixed_sparsity is not None:
            if self.sparsity is not None:
                raise ValueError(f"{self.pattern!r} fixes its own sparsity; drop sparsity="
                                 f"{self.sparsity}.")
        elif self.sparsity is None:
            raise ValueError(f"PatternRule({self.pattern!r}) needs a sparsity in [0, 1).")
        else:
            check_sparsity(self.sparsity, "PatternRule(sparsity=...)")

    def density(self, width):
        s = self.pattern.fixed_sparsity if self.sparsity is None else self.sparsity
        return None if s is None else 1.0 - s

    def keep(self, x, given, feature_axes, where=None):
        if self.pattern.fixed_sparsity is not None:
            if given.sparsity is not None:
                raise ValueError(f"{self.pattern!r}{_where(where)} fixes its sparsity; aux cannot "
                                 "override it.")
            return self.pattern.mask(x, None, where), None
        return self.pattern.mask(x, _sparsity(self.sparsity, given.sparsity, self, where), where), None

    def check(self, shape, feature_axes, where=None):
        reason = self.pattern.ineligible(shape)
        if reason:
            raise ValueError(f"{self.pattern!r} does not fit the tensor{_where(where)} of shape "
                             f"{shape}: {reason}. Exclude the layer or pick another pattern.")

    def static_count(self, shape, given):
        if given.sparsity is not None:
            return None
        size = math.prod(shape)
        p = self.pattern
        if isinstance(p, NM):
            return size // p.m * p.n
        if isinstance(p, Unstructured):
            return select.keep_count(self.sparsity, size)
        if isinstance(p, (Channel, Block)):
            units = jax.eval_shape(lambda: p.unit_scores(jnp.zeros(shape, jnp.float32))[0]).size
            return select.keep_count(self.sparsity, units) * (size // units)
        return None


@dataclasses.dataclass(frozen=True)
class Fixed(Sparsifier):
    """Keeps where the mask given in ``aux`` is true (pruning, ASP, lottery masks).

    Example:
      >>> Fixed().keep(jnp.ones(3), SlotInput(mask=jnp.array([1, 0, 1])), ())[0].tolist()
      [True, False, True]
    """

    uses: ClassVar[frozenset[str]] = frozenset({"mask"})
    requires: ClassVar[frozenset[str]] = frozenset({"mask"})

    def keep(self, x, given, feature_axes, where=None):
        m = jnp.asarray(given.mask)
        if m.shape != x.shape:
            raise ValueError(f"Fixed mask{_where(where)} has shape {m.shape}, the tensor {x.shape}; "
                             "pass a mask of the tensor's shape.")
        return (m if m.dtype == jnp.bool_ else m != 0), None


def _check_k(rule: Sparsifier, k: int, shape, feature_axes, where) -> None:
    if not feature_axes:
        raise ValueError(f"{rule!r}{_where(where)} needs the tensor's output-feature axes; it "
                         "applies to the grad_out or out slot of a sparse op.")
    width = _feature_width(shape, feature_axes)
    if k > width:
        raise ValueError(f"{rule!r}{_where(where)}: k={k} exceeds the layer width {width} "
                         f"(output features of shape {shape}); use k <= {width} or leave the "
                         "layer dense.")


@dataclasses.dataclass(frozen=True)
class RowTopK(Sparsifier):
    """Keeps the ``k`` largest ``|x|`` of every row over the output-feature axes.

    meProp's rule for ``dY``: each example (and, for a conv, each spatial
    position) keeps its own top-k output gradients. The per-row k-th largest
    magnitude comes from :func:`sparsejax.select.kth_largest_key_along`; entries
    tied with it are all kept.

    Args:
      k: kept entries per row, ``1 <= k <=`` layer width.

    Example:
      >>> x = jnp.array([[1., -4., 2.], [3., 0., 5.]])
      >>> RowTopK(1).keep(x, SlotInput(), (1,))[0].tolist()
      [[False, True, False], [False, False, True]]

    References:
      Sun et al., "meProp", ICML 2017.
    """

    k: int = 1

    def __post_init__(self):
        if not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"RowTopK(k=...) must be a positive int, got {self.k!r}.")

    def check(self, shape, feature_axes, where=None):
        _check_k(self, self.k, shape, feature_axes, where)

    def density(self, width):
        return min(self.k, width) / width

    def keep(self, x, given, feature_axes, where=None):
        self.check(x.shape, feature_axes, where)
        rows, back = _as_rows(select.magnitude_keys(x), feature_axes)
        v = select.kth_largest_key_along(rows, self.k, axis=-1)
        return back(rows >= v[..., None]), None


@dataclasses.dataclass(frozen=True)
class SharedColumns(Sparsifier):
    """Keeps ``k`` output-feature columns shared by every row, by ``Σ_rows |x|``.

    meProp's "unified" variant: the backward becomes smaller dense GEMMs (the ops
    gather the ``k`` columns; see :mod:`sparsejax.ops`).

    Args:
      k: kept columns, ``1 <= k <=`` layer width.

    Example:
      >>> x = jnp.array([[1., -4., 2.], [3., 0., 5.]])
      >>> SharedColumns(1).keep(x, SlotInput(), (1,))[0].tolist()
      [[False, False, True], [False, False, True]]

    References:
      Sun et al., "meProp", ICML 2017 (unified top-k).
    """

    k: int = 1

    def __post_init__(self):
        if not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"SharedColumns(k=...) must be a positive int, got {self.k!r}.")

    def check(self, shape, feature_axes, where=None):
        _check_k(self, self.k, shape, feature_axes, where)

    def columns(self, x: Array, feature_axes: tuple[int, ...], where: str | None = None) -> Array:
        """Bool mask over the feature axes (their shape) of the ``k`` kept columns."""
        self.check(x.shape, feature_axes, where)
        other = tuple(i for i in range(x.ndim) if i not in feature_axes)
        score = jnp.sum(jnp.abs(x.astype(jnp.float32)), axis=other)
        [m] = select.select_topk([select.magnitude_keys(score)], self.k)
        return m

    def density(self, width):
        return min(self.k, width) / width

    def keep(self, x, given, feature_axes, where=None):
        cols = self.columns(x, feature_axes, where)
        shape = [x.shape[i] if i in feature_axes else 1 for i in range(x.ndim)]
        return jnp.broadcast_to(cols.reshape(shape), x.shape), None


def projection_dim(n_points: int, epsilon: float) -> int:
    """Johnson–Lindenstrauss dimension ``ceil(4 ln n / (ε²/2 − ε³/3))``.

    Args:
      n_points: number of vectors whose pairwise products must be preserved.
      epsilon: distortion, in (0, 1).

    Returns:
      The projection dimension.

    Example:
      >>> projection_dim(1000, 0.5)
      332

    References:
      Dasgupta & Gupta, "An elementary proof of the Johnson–Lindenstrauss lemma",
      2003; used by Liu et al., ICLR 2019 (DSG).
    """
    return math.ceil(4 * math.log(max(n_points, 2)) / (epsilon**2 / 2 - epsilon**3 / 3))


def ternary_projection(key: ArrayLike, shape: tuple[int, ...],
                       dtype: jax.typing.DTypeLike = jnp.float32) -> Array:
    """Sparse ternary random matrix: ``±√3`` with probability 1/6 each, else 0.

    Entries have zero mean and unit variance, so ``E[R Rᵀ] = k I`` for ``k``
    columns (Achlioptas 2003).

    Args:
      key: PRNG key.
      shape: output shape.
      dtype: output dtype.

    Returns:
      The random matrix.

    Example:
      >>> ternary_projection(jax.random.key(0), (2, 3)).shape
      (2, 3)

    References:
      Achlioptas, "Database-friendly random projections", JCSS 2003.
    """
    u = jax.random.randint(key, shape, 0, 6)
    r = jnp.where(u == 0, 1.0, jnp.where(u == 1, -1.0, 0.0)) * math.sqrt(3.0)
    return r.astype(dtype)


@dataclasses.dataclass(frozen=True)
class RandomProjection(Sparsifier):
    """DSG: keep the top ``1 - sparsity`` output neurons per row, estimated cheaply.

    For the ``out`` slot only. Each output neuron's pre-activation is estimated
    as ``op(A R, Rᵀ W) / k`` with a sparse ternary projection ``R`` of the
    contraction (input-feature) dimension to ``k = projection_dim(rows + features,
    epsilon)`` dimensions, drawn from the ``key`` in ``aux``; when ``k`` is not
    below the contraction size the exact pre-activation is used instead (the
    projection would cost more than it saves). Each row (sample × spatial
    position) keeps its ``keep_count(sparsity, features)`` largest estimates.

    Args:
      sparsity: fraction of output neurons dropped per row, γ (``aux`` may
        override it).
      epsilon: Johnson–Lindenstrauss distortion, in (0, 1).
      relu: score neurons by ``max(estimate, 0)`` and never keep a neuron whose
        estimate is ``<= 0`` (the layer feeds a ReLU, as in DSG); ``False``
        scores by ``|estimate|``.

    Example:
      >>> rule = RandomProjection(0.5)
      >>> rule.keep(jnp.array([[1., -4., 2., 3.]]), SlotInput(), (1,))[0].tolist()
      [[False, False, True, True]]

    References:
      Liu et al., "Dynamic Sparse Graph for Efficient Deep Learning", ICLR 2019.
    """

    sparsity: float = 0.5
    epsilon: float = 0.5
    relu: bool = True
    uses: ClassVar[frozenset[str]] = frozenset({"sparsity", "key"})

    def __post_init__(self):
        check_sparsity(self.sparsity, "RandomProjection(sparsity=...)")
        if not 0.0 < self.epsilon < 1.0:
            raise ValueError(f"RandomProjection(epsilon=...) must be in (0, 1), got {self.epsilon}.")

    def check(self, shape, feature_axes, where=None):
        _check_k(self, 1, shape, feature_axes, where)

    def density(self, width):
        return 1.0 - self.sparsity

    def keep(self, x, given, feature_axes, where=None):
        """Selects neurons from the scores ``x`` (an estimate of the output)."""
        self.check(x.shape, feature_axes, where)
        s = _sparsity(self.sparsity, given.sparsity, self, where)
        scores = jnp.maximum(x, 0) if self.relu else x
        rows, back = _as_rows(select.magnitude_keys(scores), feature_axes)
        k = select.keep_count(s, rows.shape[-1])
        v = select.kth_largest_key_along(rows, k, axis=-1)
        keep = rows >= v[..., None]
        if self.relu:
            keep = keep & (rows > 0)
        return back(keep), None
