"""meProp: top-k of each row of the output gradient (and its unified variant)."""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, ClassVar

from sparsejax.methods.base import Method, boolean, first_last, option
from sparsejax.ops import Policy
from sparsejax.sparsifiers import RowTopK, SharedColumns


def _kept(value: Any, where: str) -> None:
    """meProp's ``k``: an int count >= 1 or a kept fraction in (0, 1)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{where} must be an int (entries kept per row) or a fraction in (0, 1), "
                        f"got {value!r}.")
    if isinstance(value, numbers.Integral):
        if value < 1:
            raise ValueError(f"{where} must be >= 1 (entries kept per row), got {value}.")
    elif not 0.0 < value < 1.0:
        raise ValueError(f"{where}: a float k is the kept fraction and must be in (0, 1), got "
                         f"{value}; pass an int for a count.")


@dataclasses.dataclass(frozen=True)
class MeProp(Method):
    """meProp: keep the top-k output gradients of each row in the backward pass.

    The forward is unchanged. In the backward of every hidden linear layer each
    row of ``dY`` (one example; one example × position for a conv) keeps its
    ``k`` largest magnitudes, and ``dA``/``dW`` use that sparse ``dY``; the bias
    gradient uses the dense ``dY``. The last layer (the classifier) stays dense.

    Args:
      k: an int (entries kept per row; larger than a layer's output width is an
        error naming the layer) or a float in (0, 1) (the kept fraction of each
        layer's width, rounded up).
      unified: one shared set of ``k`` output columns for the whole batch, chosen
        by ``Σ_batch |dY|``, so the backward runs as smaller dense GEMMs. On a
        convolution the columns are output channels, shared by every example and
        position: far more aggressive than per-example meProp, since only ``k``
        filters get a gradient and ``dA`` passes through only those channels, so
        in a deep residual net the early layers receive a small fraction of the
        dense gradient and a learning rate tuned for dense training can overshoot
        (use a smaller one, a larger ``k``, or per-example meProp there).
      include: module-path rule of the layers to sparsify.
      exclude: module-path rule of layers to keep dense.

    Returns:
      A hashable :class:`MeProp` method (the forward, hence evaluation, is
      dense: the method only changes the backward pass).

    Example:
      >>> meprop(80)                 # MNIST MLP 784-500-500-10, k = 80
      >>> meprop(0.2, unified=True)  # keep 20% of the columns

    References:
      Sun et al., "meProp: Sparsified Back Propagation for Accelerated Deep
      Learning with Reduced Overfitting", ICML 2017; Sun et al., "Training
      Simplification and Model Simplification for Deep Learning: A Minimal
      Effort Back Propagation Method", IEEE TKDE 2018 (unified meProp).
    """

    k: Any = option(check=_kept)
    _: dataclasses.KW_ONLY
    unified: bool = option(False, boolean)

    name: ClassVar[str] = "meprop"

    def kept(self, width: int) -> int:
        """Kept gradient entries per row for a layer with ``width`` output features."""
        if isinstance(self.k, numbers.Integral):
            return int(self.k)
        return max(1, math.ceil(round(self.k * width, 9)))

    def choose_layers(self, layers, chosen):
        chosen = first_last(layers, chosen, False, True, self.name)
        for c in chosen:
            if self.kept(c.out_features) > c.out_features:
                raise ValueError(f"meprop(k={self.k}) keeps more gradient entries than layer "
                                 f"{c.path!r} has output features ({c.out_features}); use k <= "
                                 f"{c.out_features}, a fraction, or exclude={c.path!r}.")
        return chosen

    def sparsities(self, shapes):
        # Dropped fraction of dY per row, for reporting only (int k: relative to the
        # kernel's last dim); the kept count itself comes from LayerInfo.out_features.
        return {p: 1.0 - self.kept(s[-1]) / s[-1] if isinstance(self.k, numbers.Integral)
                else 1.0 - float(self.k) for p, s in shapes.items()}

    def policy_aux(self, info, sparsity, state, shared, training):
        # Backward-only: read-only (evaluation) calls get the rule too, so a
        # gradient through them still follows meProp; the forward is unchanged.
        k = self.kept(info.out_features)
        rule = SharedColumns(k) if self.unified else RowTopK(k)
        return Policy(grad_out=rule), None


meprop = MeProp
