"""The slot rules beyond the weight patterns: top-K (with SWAT's cached threshold), fixed
masks, per-row and per-column rules, and DSG's random projection.

Every rule here and every pattern of :mod:`sparsejax.patterns` derives from
:class:`sparsejax.rule.Rule` (one family): any of them fills a slot of a sparse-op
policy. Everything that changes between steps (a sparsity chosen by SWAT-M, a
cached threshold, a fixed pruning mask, a PRNG key) arrives through a
:class:`~sparsejax.rule.SlotInput` built from the op's ``aux`` argument, so
changing it never recompiles. Every magnitude selection goes through
:mod:`sparsejax.select` (the one selection routine).

=====================  ===============================================  ==========================
rule                   keeps                                            dynamic inputs (SlotInput)
=====================  ===============================================  ==========================
``TopK``               the ``1 - sparsity`` largest ``|x|`` of the      ``sparsity``
                       tensor
``TopK(cached=True)``  ``|x| >= threshold``, refreshed on request       ``threshold``, ``refresh``,
                                                                        ``sparsity``
``Unstructured``,      what the :mod:`~sparsejax.patterns` pattern      ``sparsity`` (not N:M)
``NM``, ``Channel``,   keeps
``Block``
``Fixed``              a given mask                                     ``mask``
``RowTopK``            the ``k`` largest ``|x|`` of every row           –
``SharedColumns``      ``k`` feature columns shared by all rows         –
``RandomProjection``   top ``1 - sparsity`` outputs per row, estimated  ``sparsity``, ``key``
                       by a sparse random projection (``out`` only)
=====================  ===============================================  ==========================

``Cached(s)`` and ``PatternRule(pattern, s)`` remain as names for
``TopK(s, cached=True)`` and ``pattern`` with its sparsity set.

"Rows" and "features" refer to the layer's output-feature axes (the kernel's
output dims): a row is one index of every other axis (sample, or sample ×
spatial position for a conv).

References:
  Raihan & Aamodt, "Sparse Weight Activation Training", NeurIPS 2020 (TopK
  and its cache); Sun et al., "meProp", ICML 2017 (RowTopK, SharedColumns); Liu et al.,
  "Dynamic Sparse Graph for Efficient Deep Learning", ICLR 2019
  (RandomProjection); Dong et al., "Spartan", IEEE TPDS 2021 (sampled thresholds).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, ClassVar, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from sparsejax import select
from sparsejax.patterns import NM, Block, Channel, Pattern, Unstructured
from sparsejax.rule import Rule, SlotInput, resolve_sparsity, where_suffix
from sparsejax.validate import check_sparsity

Array = jax.Array
ArrayLike = jax.typing.ArrayLike


__all__ = ["Block", "Cached", "Channel", "Fixed", "NM", "Pattern", "PatternRule",
           "RandomProjection", "RowTopK", "Rule", "SharedColumns", "SlotInput", "Sparsifier",
           "TopK", "Unstructured", "projection_dim", "ternary_projection"]

Sparsifier = Rule
"""The base class of the slot rules: :class:`sparsejax.rule.Rule` (one family with the
patterns; the old name stays)."""


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
class TopK(Rule):
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

    With ``cached=True`` the rule keeps ``|x| >= threshold`` with the threshold
    given in the slot's inputs (SWAT's cache: the official code recomputes the
    exact threshold every ``topk_period`` steps and reuses it in between). Pass
    the cached value as the slot's ``threshold``; to refresh it inside the same
    compiled step pass ``refresh=True`` (a traced bool) and the rule recomputes it
    with :func:`sparsejax.select.threshold` at ``sparsity`` (its counting passes
    run only on refresh steps). The op's stats return the threshold actually
    used, which the caller stores for the next step.

    Args:
      sparsity: fraction removed, in [0, 1); ``aux`` may override it per call
        (``None``: only given per call; with ``cached``, the target of refreshes).
      sample_size: optional sample size for an approximate threshold.
      ties: ``"index"`` (exact count, ties to the lowest index) or ``"all"``
        (keep every tie at the threshold; the kept count is then not static).
      cached: reuse the threshold passed in (see above).

    Example:
      >>> TopK(0.5).keep(jnp.array([1., -4., 2., 3.]), SlotInput(), ())[0].tolist()
      [False, True, False, True]
      >>> TopK(cached=True).keep(jnp.array([1., -4., 2.]), SlotInput(threshold=2.), ())[0].tolist()
      [False, True, True]

    References:
      Raihan & Aamodt, "Sparse Weight Activation Training", NeurIPS 2020
      (``topk_period`` in the official code).
    """

    sparsity: Optional[float] = 0.5
    sample_size: Optional[int] = None
    ties: str = "index"
    cached: bool = False

    def __post_init__(self):
        if self.sparsity is not None:
            check_sparsity(self.sparsity, "TopK(sparsity=...)")
        if self.ties not in ("index", "all"):
            raise ValueError(f"TopK(ties=...) must be 'index' (exact count) or 'all' (keep every "
                             f"tie at the threshold), got {self.ties!r}.")
        if self.sample_size is not None and (not isinstance(self.sample_size, int)
                                             or self.sample_size <= 0):
            raise ValueError(f"TopK(sample_size=...) must be a positive int or None, "
                             f"got {self.sample_size!r}.")
        if not isinstance(self.cached, bool):
            raise TypeError(f"TopK(cached=...) must be True or False, got {self.cached!r}.")
        if self.cached and self.ties != "index":
            raise ValueError("TopK(cached=True) keeps |x| >= the cached threshold, every tie "
                             "included; drop ties=.")

    @property
    def uses(self) -> frozenset[str]:
        return frozenset({"threshold", "refresh", "sparsity"} if self.cached else {"sparsity"})

    @property
    def requires(self) -> frozenset[str]:
        return frozenset({"threshold"} if self.cached else ())

    def density(self, width):
        return None if self.sparsity is None else 1.0 - self.sparsity

    def keep(self, x, given, feature_axes, where=None):
        if self.cached:
            return self._keep_cached(x, given, where)
        s = resolve_sparsity(self.sparsity, given.sparsity, self, where)
        if self.sample_size is not None:
            t = select.threshold(x, s, sample_size=self.sample_size)
            return jnp.abs(x.astype(jnp.float32)) >= t, t
        k = select.keep_count(s, x.size)
        [m], v = select.select_topk_key([x], k, ties=self.ties)
        return m, _key_threshold(v, k)

    def _keep_cached(self, x, given, where):
        t = jnp.asarray(given.threshold, jnp.float32)
        if t.ndim:
            raise ValueError(f"The cached threshold{where_suffix(where)} must be a scalar, got shape "
                             f"{t.shape}.")
        if given.refresh is not None:
            s = resolve_sparsity(self.sparsity, given.sparsity, self, where)
            refresh = jnp.asarray(given.refresh, bool)
            t = jnp.where(refresh, select.threshold(x, s, sample_size=self.sample_size,
                                                    refresh=refresh), t)
        elif given.sparsity is not None:
            raise ValueError(f"{self!r}{where_suffix(where)} got a sparsity in aux but no refresh "
                             "flag; the sparsity is only used on refresh steps (pass refresh=...).")
        return jnp.abs(x.astype(jnp.float32)) >= t, t

    def static_count(self, shape, given):
        if (self.cached or self.sample_size is not None or given.sparsity is not None
                or self.ties == "all" or self.sparsity is None):
            return None
        return select.keep_count(self.sparsity, math.prod(shape))

    def by_threshold(self, given):
        return self.cached or self.ties == "all" or self.sample_size is not None

    def pack_slots(self, shape, given):
        # ties="all" keeps |x| >= t with fewer than k entries strictly above t:
        # those take the k slots, the ties go to the tie plane.
        if (self.ties == "all" and self.sample_size is None and given.sparsity is None
                and self.sparsity is not None):
            return select.keep_count(self.sparsity, math.prod(shape)), True
        return super().pack_slots(shape, given)


def Cached(sparsity: Optional[float] = None, sample_size: Optional[int] = None) -> TopK:  # noqa: N802
    """SWAT's cached threshold: ``TopK(sparsity, sample_size=..., cached=True)``.

    The cache is an option of the top-K rule (one rule family); this name stays
    for code written against the earlier ``Cached`` rule.

    Example:
      >>> Cached(0.8) == TopK(0.8, cached=True)
      True
    """
    return TopK(sparsity, sample_size=sample_size, cached=True)


def PatternRule(pattern: Pattern, sparsity: Optional[float] = None) -> Pattern:  # noqa: N802
    """A pattern as a slot rule: ``pattern`` itself, with ``sparsity`` when given.

    Patterns are rules (:class:`sparsejax.rule.Rule`): ``Policy(weight=NM(2, 4))``
    and ``Policy(weight=Channel((-2,), sparsity=0.5))`` need no wrapper; this
    name stays for code written against the earlier wrapper and keeps its checks.

    Args:
      pattern: the pattern value.
      sparsity: fraction removed (``None`` for N:M, which fixes it).

    Returns:
      ``pattern`` with its ``sparsity`` set.

    Example:
      >>> PatternRule(Channel((-2,)), 0.5) == Channel((-2,), sparsity=0.5)
      True
    """
    if not isinstance(pattern, Pattern):
        raise TypeError(f"PatternRule needs a sparsejax.patterns.Pattern, got {pattern!r}.")
    if pattern.fixed_sparsity is None and sparsity is None and pattern.sparsity is None:
        raise ValueError(f"PatternRule({pattern!r}) needs a sparsity in [0, 1).")
    return pattern if sparsity is None else dataclasses.replace(pattern, sparsity=sparsity)


@dataclasses.dataclass(frozen=True)
class Fixed(Rule):
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
            raise ValueError(f"Fixed mask{where_suffix(where)} has shape {m.shape}, the tensor {x.shape}; "
                             "pass a mask of the tensor's shape.")
        return (m if m.dtype == jnp.bool_ else m != 0), None


def _check_k(rule: Rule, k: int, shape, feature_axes, where) -> None:
    if not feature_axes:
        raise ValueError(f"{rule!r}{where_suffix(where)} needs the tensor's output-feature axes; it "
                         "applies to the grad_out or out slot of a sparse op.")
    width = _feature_width(shape, feature_axes)
    if k > width:
        raise ValueError(f"{rule!r}{where_suffix(where)}: k={k} exceeds the layer width {width} "
                         f"(output features of shape {shape}); use k <= {width} or leave the "
                         "layer dense.")


@dataclasses.dataclass(frozen=True)
class RowTopK(Rule):
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
class SharedColumns(Rule):
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
class RandomProjection(Rule):
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
        s = resolve_sparsity(self.sparsity, given.sparsity, self, where)
        scores = jnp.maximum(x, 0) if self.relu else x
        rows, back = _as_rows(select.magnitude_keys(scores), feature_axes)
        k = select.keep_count(s, rows.shape[-1])
        v = select.kth_largest_key_along(rows, k, axis=-1)
        keep = rows >= v[..., None]
        if self.relu:
            keep = keep & (rows > 0)
        return back(keep), None
