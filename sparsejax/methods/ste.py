"""STE / SR-STE: straight-through sparse training with a pattern mask (N:M, unstructured, ...)."""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any, ClassVar, Optional

from sparsejax.methods.base import Check, Method, option, stays_dense
from sparsejax.ops import Policy
from sparsejax.patterns import NM, Pattern
from sparsejax.validate import check_sparsity


def _non_negative(what: str) -> Check:
    def check(value: Any, where: str) -> None:
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= 0.0:
            raise ValueError(f"{where} must be a number >= 0 ({what}), got {value!r}.")
    return check


def _pattern(value: Any, where: str) -> None:
    if not isinstance(value, Pattern):
        raise TypeError(f"{where} needs a sparsejax.patterns Pattern (NM(2, 4), Unstructured(), "
                        f"Channel(...), Block(...)), got {value!r}.")


@dataclasses.dataclass(frozen=True)
class STE(Method):
    """STE / SR-STE: forward with the masked weight, dense gradient to the dense weight.

    Every step the mask is recomputed from the current dense weights (N:M groups
    along each layer's flattened contraction dimension, read from the layer:
    the input axis of Dense / Conv kernels, axis 0 of a DenseGeneral ``(in,
    heads, head_dim)``, axes ``(0, 1)`` of an attention output projection
    ``(heads, head_dim, out)``, the contracted labels of an Einsum; see
    :class:`sparsejax.patterns.NM`); the backward passes the
    gradient of the masked weight straight through to all of W. ``decay > 0``
    is SR-STE: ``λ · (1 − mask) · W`` is added to the gradient of the pruned
    weights. Layers that do not fit the pattern (e.g. a first conv with 3 input
    channels for 2:4) stay dense, with the reason logged.

    Args:
      pattern: a :mod:`sparsejax.patterns` value: ``NM(2, 4)`` (default),
        ``Unstructured()``, ``Channel(...)``, ``Block(...)``.
      sparsity: required for patterns that do not fix it (all but N:M).
      decay: SR-STE's λ (``0`` = plain STE).
      include: module-path rule of the layers to sparsify.
      exclude: module-path rule of layers to keep dense.
      sparse_eval: evaluate with the masked weights (True) or dense (False).

    Example:
      >>> ste(NM(2, 4), decay=2e-4)            # SR-STE 2:4
      >>> ste(Unstructured(), sparsity=0.8)    # unstructured STE

    References:
      Zhou et al., "Learning N:M Fine-grained Structured Sparse Neural Networks
      From Scratch", ICLR 2021; Bengio et al., "Estimating or Propagating
      Gradients Through Stochastic Neurons", 2013 (straight-through estimator).
    """

    pattern: Pattern = option(NM(2, 4), _pattern)
    _: dataclasses.KW_ONLY
    sparsity: Optional[float] = option(None, lambda v, where: None if v is None
                                       else check_sparsity(v, where))
    decay: float = option(0.0, _non_negative("SR-STE's λ; 0 = plain STE"))

    name: ClassVar[str] = "ste"

    def check(self):
        if self.pattern.fixed_sparsity is not None:
            if self.sparsity is not None:
                raise ValueError(f"{self.pattern!r} fixes its sparsity "
                                 f"({self.pattern.fixed_sparsity}); drop sparsity={self.sparsity}.")
        elif self.sparsity is None:
            raise ValueError(f"ste({self.pattern!r}) needs sparsity=... in [0, 1), e.g. "
                             f"ste(Unstructured(), sparsity=0.8).")

    def choose_layers(self, layers, chosen):
        kept = []
        for c in chosen:
            reason = self.pattern.along(c.contraction_axes).ineligible(c.kernel_shape)
            if reason:
                stays_dense(self.name, c.path, f"{self.pattern!r} does not fit: {reason}",
                            skipped=True)
            else:
                kept.append(c)
        return kept

    def sparsities(self, shapes):
        s = self.pattern.fixed_sparsity if self.sparsity is None else self.sparsity
        return {p: float(s) for p in shapes}

    def policy_aux(self, info, sparsity, state, shared, training):
        if not (training or self.sparse_eval):
            return None, None
        rule = self.pattern.along(info.contraction_axes)
        if rule.fixed_sparsity is None:
            rule = dataclasses.replace(rule, sparsity=sparsity)
        return Policy(weight=rule, weight_decay_pruned=float(self.decay),
                      straight_through=True), None


ste = STE
