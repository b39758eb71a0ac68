"""The sparse ops' policy: the hashable :class:`Policy`, its inputs and its statistics.

A :class:`Policy` names which :mod:`sparsejax.sparsifiers` rule sparsifies
which tensor of a sparse linear op (its *slots*), and how the activation saved
for dW is kept (:data:`SAVED`); it is a static ``jit`` argument. The rules'
dynamic values come through :class:`Aux` (traced; changing them never
recompiles) and the forward pass reports what it selected in :class:`Stats`.
The forward/backward algebra itself is :mod:`sparsejax.ops.algebra`.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Optional

import jax

from sparsejax.sparsifiers import RandomProjection, SlotInput, Sparsifier

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

_SLOTS = (("weight", "w"), ("act_saved", "a"), ("grad_out", "g"), ("out", "o"), ("act", "x"),
          ("grad_weight", "d"))
_FIELDS = ("sparsity", "threshold", "refresh", "mask")
# How the activation saved for dW is kept (Policy.saved).
SAVED = ("auto", "masked", "packed", "remat")
# "auto" packs a saved activation of at least this many entries: a smaller one
# saves under 128 KiB (float32), less than a pack's fixed cost is worth.
PACK_MIN_SIZE = 1 << 15


@dataclasses.dataclass(frozen=True)
class Policy:
    """Which tensor each rule sparsifies (a hashable, static ``jit`` argument).

    Attributes:
      weight: rule applied to W in the forward pass; the same sparse W is saved
        for dA (SWAT, STE, N:M, fixed pruning masks).
      act_saved: rule applied to A before it is saved for dW (SWAT); A stays
        dense in the forward pass.
      grad_out: rule applied to dY in the backward pass, for dA and dW (meProp
        ``RowTopK``, unified meProp ``SharedColumns``).
      out: rule selecting output neurons in the forward pass (the output is zero
        elsewhere); the same mask is applied to dY in the backward pass (DSG).
      act: rule applied to the layer's input A in the forward pass (SWAT's §3
        sensitivity study of forward-side operands): the op multiplies
        ``A ⊙ mask`` (every other rule, ``act_saved`` included, then sees that
        sparse A); ``dA`` is masked by the same mask (the true gradient of
        ``op(A ⊙ mask, W)`` for the mask held fixed); ``dW`` uses the sparse A
        (or, when ``act_saved`` is also set, act_saved's rule applied on top of
        the sparse A). The mask is kept for the backward pass (as bits with
        ``saved="packed"``).
      grad_weight: rule applied to dW at the end of the backward pass: only the
        kept entries reach the optimizer. Its rows are the output features (its
        ``feature_axes`` are W's contraction axes), so ``RowTopK(k)`` keeps the
        ``k`` largest gradients of each output channel. dW is computed densely
        first, so the cost model counts no saving for it.
      weight_decay_pruned: SR-STE's λ: adds ``λ · (1 − mask) · W`` to dW.
      straight_through: True: dW is computed at every position (pruned weights
        keep learning: SWAT, STE). False: dW is masked like W, the true gradient
        of ``op(A, W ⊙ mask)`` for a fixed mask (pruning); with a channel rule
        this also compacts the dW GEMM.
      compact: gather kept channels / shared gradient columns into smaller dense
        ops where the kept count is static (same result as masking).
      saved: how A_s (the activation saved for dW) is kept until the
        backward pass, one strategy per layer:

        * ``"packed"``: as :class:`sparsejax.ops.compaction.Packed` (1 bit per entry
          plus the kept values: about a quarter of the dense bytes at 80%);
          needs the act_saved rule's kept count at trace time (``TopK`` with
          a Python sparsity, N:M, channel; a cached or sampled threshold
          raises). The backward pass runs dW before dA, so the rebuilt A_s and
          dW's layout copies are freed before dA's output is allocated.
        * ``"masked"``: a dense masked copy (no pack or unpack work).
        * ``"remat"``: recomputed in the backward pass from A's producer. Its
          use there is made to read dY, so XLA cannot schedule it early: it
          fuses the producer (e.g. BatchNorm + ReLU), the mask and the dW
          layout copy into one backward kernel reading the producer's inputs,
          which a BatchNorm model keeps for its own backward anyway.
        * ``"auto"`` (default): ``"packed"`` where the kept count is static and
          A has at least :data:`PACK_MIN_SIZE` entries, else ``"masked"``.

        Where A is packed or recomputed, a weight rule that keeps ``|W| >=`` a
        threshold (SWAT's) saves only that scalar: the backward pass rebuilds
        W_s from W, a parameter. Elsewhere W_s is saved as is (or, with
        ``"packed"`` and another weight rule, W's mask as bits). Memory and step-time figures of the formats are in the
        README's benchmark table (``benchmarks/bench_training_methods.py``);
        the orderings that make them hold on XLA:CPU are
        :mod:`sparsejax.ordering`'s backend hints. ``pack_saved=True`` /
        ``remat_saved=True`` (earlier names) raise, naming the replacement.

    Example:
      >>> swat = Policy(weight=TopK(0.8), act_saved=TopK(0.8))
      >>> hash(swat) == hash(Policy(weight=TopK(0.8), act_saved=TopK(0.8)))
      True
    """

    weight: Optional[Sparsifier] = None
    act_saved: Optional[Sparsifier] = None
    grad_out: Optional[Sparsifier] = None
    out: Optional[Sparsifier] = None
    act: Optional[Sparsifier] = None
    grad_weight: Optional[Sparsifier] = None
    weight_decay_pruned: float = 0.0
    straight_through: bool = True
    compact: bool = True
    saved: str = "auto"
    pack_saved: dataclasses.InitVar[bool] = False
    remat_saved: dataclasses.InitVar[bool] = False

    def __post_init__(self, pack_saved: bool, remat_saved: bool):
        if pack_saved or remat_saved:
            raise TypeError("Policy(pack_saved=/remat_saved=) became Policy(saved='packed') / "
                            "Policy(saved='remat'); the default saved='auto' packs wherever the "
                            "kept count is static.")
        for slot, _ in _SLOTS:
            rule = getattr(self, slot)
            if rule is not None and not isinstance(rule, Sparsifier):
                raise TypeError(f"Policy.{slot} must be a sparsejax.sparsifiers rule (TopK, Cached, "
                                f"PatternRule, Fixed, RowTopK, SharedColumns, RandomProjection) or "
                                f"None, got {rule!r}.")
            if isinstance(rule, RandomProjection) and slot != "out":
                raise ValueError(f"RandomProjection estimates output neurons; put it in Policy.out, "
                                 f"not Policy.{slot}.")
        if not self.weight_decay_pruned >= 0.0:
            raise ValueError(f"Policy.weight_decay_pruned must be >= 0, got {self.weight_decay_pruned}.")
        for name in ("straight_through", "compact"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"Policy.{name} must be True or False, got "
                                f"{getattr(self, name)!r}.")
        if self.saved not in SAVED:
            raise ValueError(f"Policy.saved must be one of {', '.join(map(repr, SAVED))}, got "
                             f"{self.saved!r}.")
        if self.weight is None and (self.weight_decay_pruned or not self.straight_through):
            raise ValueError("weight_decay_pruned / straight_through=False act on the pruned "
                             "weights; set Policy.weight too.")


class Aux(NamedTuple):
    """Dynamic per-call inputs of the policy's rules (arrays; ``None`` = absent).

    Prefixes name the slot: ``w_`` weight, ``a_`` act_saved, ``g_`` grad_out,
    ``o_`` out, ``x_`` act (the forward input), ``d_`` grad_weight (the ``x_``
    and ``d_`` fields come after ``key`` so the older fields keep their
    positions). Each prefix has:

    * ``*_sparsity``: overrides the rule's sparsity (a traced scalar, e.g. SWAT-M's
      per-layer budget this step; no recompilation).
    * ``*_threshold``: the cached magnitude threshold for ``Cached``.
    * ``*_refresh``: bool scalar; True makes ``Cached`` recompute its threshold.
    * ``*_mask``: the keep-mask for ``Fixed`` (the tensor's shape).

    and ``key`` is the PRNG key of ``RandomProjection`` (``out`` slot). A field
    given for a rule that does not read it, or missing for one that needs it,
    raises an error.
    """

    w_sparsity: Optional[ArrayLike] = None
    w_threshold: Optional[ArrayLike] = None
    w_refresh: Optional[ArrayLike] = None
    w_mask: Optional[ArrayLike] = None
    a_sparsity: Optional[ArrayLike] = None
    a_threshold: Optional[ArrayLike] = None
    a_refresh: Optional[ArrayLike] = None
    a_mask: Optional[ArrayLike] = None
    g_sparsity: Optional[ArrayLike] = None
    g_threshold: Optional[ArrayLike] = None
    g_refresh: Optional[ArrayLike] = None
    g_mask: Optional[ArrayLike] = None
    o_sparsity: Optional[ArrayLike] = None
    o_threshold: Optional[ArrayLike] = None
    o_refresh: Optional[ArrayLike] = None
    o_mask: Optional[ArrayLike] = None
    key: Optional[ArrayLike] = None
    x_sparsity: Optional[ArrayLike] = None
    x_threshold: Optional[ArrayLike] = None
    x_refresh: Optional[ArrayLike] = None
    x_mask: Optional[ArrayLike] = None
    d_sparsity: Optional[ArrayLike] = None
    d_threshold: Optional[ArrayLike] = None
    d_refresh: Optional[ArrayLike] = None
    d_mask: Optional[ArrayLike] = None


class Stats(NamedTuple):
    """What the forward pass selected (float32 scalars; no gradient flows).

    Attributes:
      w_threshold: magnitude threshold the weight rule used (the smallest kept
        ``|W|`` for ``TopK``; the cached/refreshed value for ``Cached``): store it
        as ``aux.w_threshold`` for the next steps. NaN when the rule has none.
      a_threshold: the same for the saved activation.
      w_density: fraction of non-zero entries of the W used in the forward pass.
      a_density: fraction of non-zero entries of A as saved for dW (after the
        ``act`` rule, when there is one, and ``act_saved``).
      a_input_density: fraction of non-zero entries of A as given (the
        activation-sparsity monitor, e.g. ReLU zeros), before any rule.
      out_density: fraction of outputs kept by the ``out`` rule (1 without one).
      x_threshold: the threshold of the ``act`` rule (the forward input), as
        ``w_threshold``: store it as ``aux.x_threshold`` for a ``Cached`` rule.
        NaN when there is no such rule or it has no threshold.
    """

    w_threshold: Array
    a_threshold: Array
    w_density: Array
    a_density: Array
    a_input_density: Array
    out_density: Array
    x_threshold: Array


def _slot(aux: Aux, prefix: str) -> SlotInput:
    return SlotInput(*(getattr(aux, f"{prefix}_{f}") for f in _FIELDS),
                     key=aux.key if prefix == "o" else None)
