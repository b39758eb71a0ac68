"""The sparse ops' policy: the hashable :class:`Policy`, its inputs and its statistics.

A :class:`Policy` names which rule (:class:`sparsejax.rule.Rule`) sparsifies
which tensor of a sparse linear op (its *slots*), and how the activation saved
for dW is kept (:data:`SAVED`); it is a static ``jit`` argument. The rules'
dynamic values come through :class:`Aux` (traced; changing them never
recompiles) and the forward pass reports what it selected in :class:`Stats`.
The forward/backward algebra itself is :mod:`sparsejax.ops.algebra`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Optional

import jax

from sparsejax.rule import Rule, SlotInput
from sparsejax.sparsifiers import RandomProjection

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

_SLOTS = (("weight", "w"), ("act_saved", "a"), ("grad_out", "g"), ("out", "o"), ("act", "x"),
          ("grad_weight", "d"))
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
      out: rule selecting output neurons in the forward pass (the op's output is
        zero elsewhere; a layer's bias, added after the op, is not masked); the same
        mask is applied to dY in the backward pass (DSG).
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
        :mod:`sparsejax.backend_hints`'s backend hints. ``pack_saved=True`` /
        ``remat_saved=True`` (earlier names) raise, naming the replacement.

    Example:
      >>> swat = Policy(weight=TopK(0.8), act_saved=TopK(0.8))
      >>> hash(swat) == hash(Policy(weight=TopK(0.8), act_saved=TopK(0.8)))
      True
    """

    weight: Optional[Rule] = None
    act_saved: Optional[Rule] = None
    grad_out: Optional[Rule] = None
    out: Optional[Rule] = None
    act: Optional[Rule] = None
    grad_weight: Optional[Rule] = None
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
            if rule is not None and not isinstance(rule, Rule):
                raise TypeError(f"Policy.{slot} must be a sparsejax rule (sparsejax.rule.Rule: TopK, "
                                f"a pattern such as NM(2, 4), Fixed, RowTopK, SharedColumns, "
                                f"RandomProjection) or None, got {rule!r}.")
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


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True, init=False, eq=True, repr=False)
class Aux:
    """Dynamic per-call inputs of the policy's rules: one typed
    :class:`~sparsejax.rule.SlotInput` per slot, named as :class:`Policy`'s slots.

    Each slot's input may carry ``sparsity`` (overrides the rule's, a traced
    scalar: e.g. SWAT-M's per-layer budget this step, no recompilation),
    ``threshold`` and ``refresh`` (a cached ``TopK``), ``mask`` (``Fixed``) and, in
    ``out``, the PRNG ``key`` of ``RandomProjection``. A field given for a rule that
    does not read it, or missing for one that needs it, raises an error. ``Aux`` is
    a pytree (the slot inputs are its children), so it passes through ``jit``.

    Args:
      weight, act_saved, grad_out, out, act, grad_weight: each slot's
        :class:`~sparsejax.rule.SlotInput` (default: nothing given).
      **flat: the earlier flat spelling, ``<prefix>_<field>`` with prefixes ``w_``
        weight, ``a_`` act_saved, ``g_`` grad_out, ``o_`` out, ``x_`` act, ``d_``
        grad_weight, and ``key`` for ``out.key`` (``Aux(w_threshold=t)`` is
        ``Aux(weight=SlotInput(threshold=t))``); the same names read and
        :meth:`_replace` fields.

    Example:
      >>> aux = Aux(weight=SlotInput(threshold=1.0), act_saved=SlotInput(sparsity=0.5))
      >>> aux.weight.threshold, aux == Aux(w_threshold=1.0, a_sparsity=0.5)
      (1.0, True)
    """

    weight: SlotInput
    act_saved: SlotInput
    grad_out: SlotInput
    out: SlotInput
    act: SlotInput
    grad_weight: SlotInput

    def __init__(self, weight: Optional[SlotInput] = None, act_saved: Optional[SlotInput] = None,
                 grad_out: Optional[SlotInput] = None, out: Optional[SlotInput] = None,
                 act: Optional[SlotInput] = None, grad_weight: Optional[SlotInput] = None,
                 **flat: Optional[ArrayLike]):
        given = dict(weight=weight, act_saved=act_saved, grad_out=grad_out, out=out, act=act,
                     grad_weight=grad_weight)
        for slot, value in given.items():
            if value is not None and not isinstance(value, SlotInput):
                raise TypeError(f"Aux({slot}=...) must be a sparsejax.SlotInput, got "
                                f"{type(value).__name__}: Aux's positional arguments are the "
                                f"slots ({', '.join(s for s, _ in _SLOTS)}); the earlier flat "
                                "fields are keywords (w_threshold=..., key=...).")
            object.__setattr__(self, slot, SlotInput() if value is None else value)
        for name, value in flat.items():
            slot, field = _flat_name(name)
            if given[slot] is not None:
                raise TypeError(f"Aux got both {slot}= and {name}=; give {field} inside "
                                f"{slot}=SlotInput(...).")
            object.__setattr__(self, slot, getattr(self, slot)._replace(**{field: value}))

    def __getattr__(self, name: str):
        # Only reached for names that are not slots: the earlier flat names.
        if name.startswith("__"):
            raise AttributeError(name)
        slot, field = _flat_name(name)
        return getattr(getattr(self, slot), field)

    def _replace(self, **changes: Any) -> "Aux":
        """A copy with slots (``act_saved=SlotInput(...)``) or flat fields
        (``a_threshold=t``) replaced."""
        slots = {slot: getattr(self, slot) for slot, _ in _SLOTS}
        for name, value in changes.items():
            if name in slots:
                slots[name] = value
            else:
                slot, field = _flat_name(name)
                slots[slot] = slots[slot]._replace(**{field: value})
        return Aux(**slots)

    def __repr__(self) -> str:
        shown = [f"{slot}={getattr(self, slot)!r}" for slot, _ in _SLOTS
                 if getattr(self, slot) != SlotInput()]
        return f"Aux({', '.join(shown)})"

    def tree_flatten(self):
        return tuple(getattr(self, slot) for slot, _ in _SLOTS), None

    @classmethod
    def tree_unflatten(cls, meta, children):
        del meta
        return cls(*children)


def _flat_name(name: str) -> tuple[str, str]:
    """``"a_threshold"`` -> ``("act_saved", "threshold")``; ``"key"`` -> ``("out", "key")``."""
    if name == "key":
        return "out", "key"
    prefix, _, field = name.partition("_")
    slot = dict((p, s) for s, p in _SLOTS).get(prefix)
    if slot is None or field not in SlotInput._fields or field == "key":
        raise AttributeError(f"Aux has no field {name!r}: give one SlotInput per slot "
                             f"({', '.join(s for s, _ in _SLOTS)}), or the flat names "
                             f"<prefix>_<{'|'.join(f for f in SlotInput._fields if f != 'key')}> "
                             f"with prefixes {', '.join(p + '_' for _, p in _SLOTS)} and key.")
    return slot, field


class Stats(NamedTuple):
    """What the forward pass selected (float32 scalars; no gradient flows).

    Attributes:
      w_threshold: magnitude threshold the weight rule used (the smallest kept
        ``|W|`` for ``TopK``; the cached/refreshed value for a cached ``TopK``): store it
        as ``aux.weight.threshold`` for the next steps. NaN when the rule has none.
      a_threshold: the same for the saved activation.
      w_density: fraction of non-zero entries of the W used in the forward pass.
      a_density: fraction of non-zero entries of A as saved for dW (after the
        ``act`` rule, when there is one, and ``act_saved``).
      a_input_density: fraction of non-zero entries of A as given (the
        activation-sparsity monitor, e.g. ReLU zeros), before any rule.
      out_density: fraction of outputs kept by the ``out`` rule (1 without one).
      x_threshold: the threshold of the ``act`` rule (the forward input), as
        ``w_threshold``: store it as ``aux.act.threshold`` for a cached ``TopK``.
        NaN when there is no such rule or it has no threshold.
    """

    w_threshold: Array
    a_threshold: Array
    w_density: Array
    a_density: Array
    a_input_density: Array
    out_density: Array
    x_threshold: Array
