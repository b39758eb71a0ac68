"""The rule protocol: :class:`Rule`, the base of every sparsity rule, and :class:`SlotInput`.

One family: the weight patterns of :mod:`sparsejax.patterns` (``Unstructured``,
``NM``, ``Channel``, ``Block``) and the slot rules of :mod:`sparsejax.sparsifiers`
(``TopK`` with its cached-threshold option, ``Fixed``, ``RowTopK``,
``SharedColumns``, ``RandomProjection``) all derive from :class:`Rule`, so any of
them fills a slot of a sparse-op :class:`~sparsejax.ops.Policy`. A rule is a small
frozen dataclass (a static ``jit`` argument); what changes between steps arrives
as a :class:`SlotInput` (traced, so changing it never recompiles).

References:
  Raihan & Aamodt, "Sparse Weight Activation Training", NeurIPS 2020 (the slots).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, NamedTuple, Optional

import jax

from sparsejax.validate import check_sparsity

Array = jax.Array
ArrayLike = jax.typing.ArrayLike


class SlotInput(NamedTuple):
    """The dynamic (traced) inputs of one policy slot; ``None`` = not given.

    Attributes:
      sparsity: overrides the rule's static sparsity (e.g. SWAT-M budgets).
      threshold: magnitude threshold of a cached ``TopK(cached=True)``.
      refresh: bool scalar; where True a cached ``TopK`` recomputes its threshold.
      mask: keep-mask for :class:`~sparsejax.sparsifiers.Fixed` (bool or 0/1, the
        tensor's shape).
      key: PRNG key for :class:`~sparsejax.sparsifiers.RandomProjection`.
    """

    sparsity: Optional[ArrayLike] = None
    threshold: Optional[ArrayLike] = None
    refresh: Optional[ArrayLike] = None
    mask: Optional[ArrayLike] = None
    key: Optional[ArrayLike] = None


def where_suffix(where: str | None) -> str:
    """``" in <where>"`` for error messages (empty without a location)."""
    return f" in {where}" if where else ""


def resolve_sparsity(rule_value: Optional[float], given: Optional[ArrayLike], rule: object,
                     where: str | None) -> ArrayLike:
    """The sparsity a rule applies: the slot's dynamic one if given, else the rule's own.

    Raises:
      ValueError: neither is given, or the value is outside ``[0, 1)``.
    """
    s = rule_value if given is None else given
    if s is None:
        raise ValueError(f"{rule!r}{where_suffix(where)} has no sparsity: give one to the rule "
                         "or pass it through aux.")
    check_sparsity(s, where)
    return s


@dataclasses.dataclass(frozen=True)
class Rule:
    """Base class of every sparsity rule (patterns and slot rules alike).

    Subclasses set ``uses`` (the :class:`SlotInput` fields they read) and
    ``requires`` (those that must be given) and implement :meth:`keep`; the
    other methods have defaults that say "unknown statically".

    Example:
      >>> from sparsejax.patterns import NM
      >>> isinstance(NM(2, 4), Rule)
      True
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
        del shape, given
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

    @property
    def cached(self) -> bool:
        """Whether the rule reuses a threshold passed in (SWAT's ``topk_period`` cache)."""
        return False

    def check(self, shape: tuple[int, ...], feature_axes: tuple[int, ...],
              where: str | None = None) -> None:
        """Raises a clear error if the rule cannot apply to a tensor of ``shape``."""

    def density(self, width: int) -> Optional[float]:
        """The fraction of entries the rule keeps, from its static arguments.

        Args:
          width: the tensor's feature width (rows keep ``k`` of ``width``).

        Returns:
          The kept fraction, or ``None`` when only the data decides it (a fixed
          mask, a cached threshold without a target). The cost model
          (:func:`sparsejax.analysis.costs.policy_fractions`) reads it.
        """
        del width
        return None
