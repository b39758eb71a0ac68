"""SWAT's forward-operand study: top-K of the forward activations or of the forward weights."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from sparsejax.methods.base import Method, boolean, first_last, one_of, option
from sparsejax.ops import Policy
from sparsejax.sparsifiers import TopK
from sparsejax.validate import check_sparsity

# The forward-side operands forward_topk can sparsify.
FORWARD_OPERANDS = ("activations", "weights")


@dataclasses.dataclass(frozen=True)
class ForwardTopK(Method):
    """SWAT's sensitivity study: sparsify one forward-side operand of every chosen layer.

    Each sparse layer applies a whole-tensor magnitude top-K (SWAT's rule,
    ``TopK(sparsity, ties="all")``: every entry with ``|x| >=`` the k-th largest
    magnitude is kept) to one operand of its forward pass; everything else is
    dense:

    * ``operand="activations"``: the layer multiplies ``TopK(A)`` (its input
      ``A ⊙ mask``, one threshold over the whole batch tensor) with the dense W;
      ``dA`` is masked by the same mask (the true gradient of
      ``op(A ⊙ mask, W)`` for the mask held fixed) and ``dW`` uses the sparse A
      (``Policy(act=TopK(s))``). After a ReLU with more than ``sparsity`` zeros
      no non-zero is dropped.
    * ``operand="weights"``: the forward and ``dA`` use ``TopK(W)``; ``dW`` is
      computed with the dense A at every position (straight-through), so pruned
      weights keep learning (``Policy(weight=TopK(s), straight_through=True)``:
      the same math as ``ste(Unstructured(), sparsity=s)``).

    The paper's Section 3 compares these forward-side operands with the
    backward-side ones (SWAT's saved activations, :class:`SWAT`). Layers are
    chosen as in SWAT-U: the first layer (in call order) stays dense by default.
    Evaluation (read-only state) applies the same top-K unless
    ``sparse_eval=False``.

    Args:
      sparsity: fraction of the operand removed, in ``[0, 1)``, the same for
        every sparse layer.
      operand: ``"activations"`` (the layer's input A) or ``"weights"`` (W).
      dense_first: keep the first layer dense (the SWAT-U configs).
      dense_last: keep the last layer dense.
      include: module-path rule of the layers to sparsify (default: all).
      exclude: module-path rule of layers to keep dense.
      sparse_eval: evaluate with the top-K operand (True) or dense (False).

    Raises:
      ValueError: ``sparsity`` outside ``[0, 1)`` (or NaN), or an unknown ``operand``.

    Example:
      >>> model = sparsify(zoo.get_model("resnet18"), forward_topk(0.8))
      >>> forward_topk(0.9, operand="weights")    # forward weights only

    References:
      Raihan & Aamodt, "Sparse Weight Activation Training", NeurIPS 2020
      (Section 3, the sensitivity of forward- and backward-side operands).
    """

    sparsity: float = option(check=check_sparsity)
    _: dataclasses.KW_ONLY
    operand: str = option("activations", one_of(FORWARD_OPERANDS,
                                                "the forward-side operand to sparsify"))
    dense_first: bool = option(True, boolean)
    dense_last: bool = option(False, boolean)

    name: ClassVar[str] = "forward_topk"

    def choose_layers(self, layers, chosen):
        return first_last(layers, chosen, self.dense_first, self.dense_last, self.name)

    def sparsities(self, shapes):
        return {p: float(self.sparsity) for p in shapes}

    def policy_aux(self, info, sparsity, state, shared, training):
        if not (training or self.sparse_eval):
            return None, None
        rule = TopK(sparsity, ties="all")  # SWAT's rule: |x| >= the k-th largest magnitude.
        if self.operand == "weights":
            return Policy(weight=rule, straight_through=True), None
        return Policy(act=rule), None


forward_topk = ForwardTopK
