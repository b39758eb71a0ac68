"""The sparse linear ops: one ``custom_vjp`` algebra for dot_general and conv.

:func:`sparse_dot_general` and :func:`sparse_conv_general_dilated` are drop-in
replacements for ``lax.dot_general`` / ``lax.conv_general_dilated`` (same
arguments; ``lhs`` is the activation A, ``rhs`` the kernel W, as Flax passes
them). A hashable :class:`Policy` says which tensor is sparsified in which
pass, by which :mod:`sparsejax.sparsifiers` rule; dynamic values come through
:class:`Aux`, so they change without recompiling::

  forward   A   = A ⊙ act(A)                             (forward activations, SWAT §3)
            W_s = W ⊙ weight(W)                         (SWAT, STE, fixed masks)
            Y   = op(A, W_s) ⊙ out(Y or its estimate)    (DSG)
            save  A_s = A ⊙ act_saved(A)                 (SWAT), W_s
  backward  G   = dY ⊙ out-mask ⊙ grad_out(dY)           (DSG reuse, meProp)
            dA  = op_transposeᴬ(G, W_s) ⊙ act-mask
            dW  = op_transposeᵂ(G, A_s)                  dense over all positions
                  (straight-through), or ⊙ weight-mask if ``straight_through=False``
                  + weight_decay_pruned · (W − W_s)      (SR-STE)
            dW  = dW ⊙ grad_weight(dW)                   (e.g. top-k per output channel)

The bias is added outside the op (Flax adds it after ``dot_general``), so its
gradient ``Σ dY`` is never sparsified (meProp keeps it dense too).

Structured compaction: with ``weight=PatternRule(Channel((axis,)), s)`` on one
kernel input axis (Dense ``-2``; Conv ``in``) or output axis (Dense ``-1``;
Conv ``out``), a static ``s`` and no feature/batch groups, the kept slices are
gathered and the forward and dA run as *smaller dense ops*. dW: SWAT's dW is
dense (straight-through, ``straight_through=True``) so it still runs at full
size over all positions; ``straight_through=False`` gives dropped slices a
zero gradient and then dW runs compacted too (all three GEMMs shrink). Both
equal the masked dense computation exactly. ``SharedColumns`` (unified meProp)
likewise gathers its ``k`` gradient columns so dA and dW are smaller GEMMs.

Memory: ``Policy.saved`` chooses, once per layer, how the activation saved
for dW is kept: packed (bits + kept values; the default wherever the kept
count is static), a masked dense copy, or recomputed in the backward pass. A
threshold weight rule (SWAT's) saves only its threshold: W_s is rebuilt in the
backward pass from W, a parameter. :func:`sparsejax.residuals.residual_bytes`
reports what each layer saves, from JAX's own residuals.

References:
  Raihan & Aamodt, "Sparse Weight Activation Training", NeurIPS 2020;
  Zhou et al., "Learning N:M Fine-grained Structured Sparse Neural Networks
  From Scratch", ICLR 2021 (SR-STE); Sun et al., "meProp", ICML 2017; Liu et
  al., "Dynamic Sparse Graph for Efficient Deep Learning", ICLR 2019.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from sparsejax import compact, ordering, select
from sparsejax.patterns import Channel
from sparsejax.sparsifiers import (PatternRule, RandomProjection, SharedColumns, SlotInput,
                                   Sparsifier, projection_dim, ternary_projection)

Array = jax.Array
ArrayLike = jax.typing.ArrayLike
DTypeLike = jax.typing.DTypeLike
# lax's argument types, as the drop-in signatures take them.
DotDims = tuple[tuple[Sequence[int], Sequence[int]], tuple[Sequence[int], Sequence[int]]]
Padding = str | Sequence[tuple[int, int]]

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

        * ``"packed"``: as :class:`sparsejax.compact.Packed` (1 bit per entry
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

        In every format a weight rule that keeps ``|W| >=`` a threshold
        (SWAT's) saves only that scalar: the backward pass rebuilds W_s from W,
        a parameter. Other weight rules save W_s (or, with ``"packed"``, W's
        mask as bits). Memory and step-time figures of the formats are in the
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


def _tuple(x):
    return tuple(_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def _project(x: Array, axes: Sequence[int], r: Array) -> Array:
    """Contracts ``x``'s ``axes`` with ``r``'s leading dims; puts ``k`` at ``min(axes)``."""
    y = jnp.tensordot(x, r.astype(x.dtype), (tuple(axes), tuple(range(len(axes)))))
    return jnp.moveaxis(y, -1, min(axes))


@dataclasses.dataclass(frozen=True)
class _Dot:
    """``lax.dot_general`` with its static arguments."""

    dimension_numbers: Any
    precision: Any
    preferred_element_type: Any

    def apply(self, a, w):
        return lax.dot_general(a, w, self.dimension_numbers, precision=self.precision,
                               preferred_element_type=self.preferred_element_type)

    def out_feature_axes(self, a_ndim, w_ndim):
        (lc, rc), (lb, rb) = self.dimension_numbers
        start = a_ndim - len(lc)
        return tuple(range(start, start + w_ndim - len(rc) - len(rb)))

    def w_axis_role(self, w_axis, a_ndim, w_ndim):
        """``('in', a_axis)``, ``('out', y_axis)`` or ``None`` for a kernel axis."""
        (lc, rc), (_, rb) = self.dimension_numbers
        if w_axis in rc:
            return "in", lc[rc.index(w_axis)]
        if w_axis in rb:
            return None
        free = [i for i in range(w_ndim) if i not in rc and i not in rb]
        return "out", a_ndim - len(lc) + free.index(w_axis)

    def w_contraction_axes(self, w_ndim):
        """The kernel axes contracted with the input (a ``grad_weight`` rule's row)."""
        (_, rc), _ = self.dimension_numbers
        return tuple(sorted(i % w_ndim for i in rc))

    def out_w_axis(self, a_ndim, w_ndim):
        (_, rc), (_, rb) = self.dimension_numbers
        free = [i for i in range(w_ndim) if i not in rc and i not in rb]
        return free[0] if len(free) == 1 else None

    def contraction_size(self, a_shape, w_shape):
        (lc, _), _ = self.dimension_numbers
        return math.prod(a_shape[i] for i in lc)

    def estimate(self, a, w, key, k):
        """``op(A R, Rᵀ W) / k`` with R projecting the contracted dims to ``k``."""
        (lc, rc), (lb, rb) = self.dimension_numbers
        r = ternary_projection(key, tuple(a.shape[i] for i in lc) + (k,))
        renum = lambda b, axes: b - sum(x < b for x in axes) + (b > min(axes))
        dn = (((min(lc),), (min(rc),)),
              (tuple(renum(b, lc) for b in lb), tuple(renum(b, rc) for b in rb)))
        y = lax.dot_general(_project(a, lc, r), _project(w, rc, r), dn, precision=self.precision,
                            preferred_element_type=self.preferred_element_type)
        return y / k


@dataclasses.dataclass(frozen=True)
class _Conv:
    """``lax.conv_general_dilated`` with its static arguments."""

    window_strides: Any
    padding: Any
    lhs_dilation: Any
    rhs_dilation: Any
    dimension_numbers: lax.ConvDimensionNumbers
    feature_group_count: int
    batch_group_count: int
    precision: Any
    preferred_element_type: Any

    def apply(self, a, w):
        return lax.conv_general_dilated(
            a, w, self.window_strides, self.padding, self.lhs_dilation, self.rhs_dilation,
            self.dimension_numbers, self.feature_group_count, self.batch_group_count,
            precision=self.precision, preferred_element_type=self.preferred_element_type)

    @property
    def _ungrouped(self):
        return self.feature_group_count == 1 and self.batch_group_count == 1

    def out_feature_axes(self, a_ndim, w_ndim):
        return (self.dimension_numbers.out_spec[1],)

    def w_axis_role(self, w_axis, a_ndim, w_ndim):
        lhs, rhs, out = self.dimension_numbers
        if not self._ungrouped:
            return None
        if w_axis == rhs[1]:
            return "in", lhs[1]
        if w_axis == rhs[0]:
            return "out", out[1]
        return None

    def w_contraction_axes(self, w_ndim):
        """The kernel axes contracted with the input: all but the output features."""
        return tuple(i for i in range(w_ndim) if i != self.dimension_numbers.rhs_spec[0])

    def out_w_axis(self, a_ndim, w_ndim):
        return self.dimension_numbers.rhs_spec[0] if self._ungrouped else None

    def contraction_size(self, a_shape, w_shape):
        o = self.dimension_numbers.rhs_spec[0]
        return math.prod(w_shape) // w_shape[o]

    def estimate(self, a, w, key, k):
        """Patches of A projected by a ``k``-filter conv, times the projected filters."""
        lhs, rhs, out = self.dimension_numbers
        r_shape = list(w.shape)
        r_shape[rhs[0]] = k
        r = ternary_projection(key, tuple(r_shape), w.dtype)
        a_hat = self.apply(a, r)  # (..., k at out[1], ...)
        other = tuple(i for i in range(w.ndim) if i != rhs[0])
        w_hat = jnp.tensordot(r, w, (other, other))  # (k, O)
        y = jnp.tensordot(a_hat, w_hat, ((out[1],), (0,)))
        return jnp.moveaxis(y, -1, out[1]) / k


@dataclasses.dataclass(frozen=True)
class _Cfg:
    op: Any
    policy: Policy
    where: Optional[str]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class _Meta:
    a: jax.ShapeDtypeStruct = dataclasses.field(metadata=dict(static=True))
    w: jax.ShapeDtypeStruct = dataclasses.field(metadata=dict(static=True))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class _Residuals:
    """What the forward pass saves for the backward pass (``None``: not saved).

    Attributes:
      meta: the input and kernel shapes and dtypes.
      a: the activation dW reads (masked, packed, compacted or to recompute).
      w: the kernel dA reads (``W_s``; the dense W when its mask is packed).
      wbits: the weight mask as bits (``saved="packed"``).
      wmask: the weight mask, when dW is masked like W (``straight_through=False``).
      wthr: the weight rule's threshold when its mask is ``|W| >= wthr`` (the
        backward pass rebuilds the mask from W, a parameter, and this scalar).
      omask: the ``out`` rule's output mask (DSG), reapplied to dY.
      xmask: the ``act`` rule's input mask, applied to dA.
      xbits: ``xmask`` as bits (``saved="packed"``).
      g: the ``grad_out`` rule's dynamic inputs.
      d: the ``grad_weight`` rule's dynamic inputs.
      idx: the kept channels of a compacted layer.
      w_pruned: ``W - W_s`` for SR-STE's decay of the pruned weights.
    """

    meta: _Meta
    a: Any
    w: Any
    wbits: Any = None
    wmask: Any = None
    wthr: Any = None
    omask: Any = None
    xmask: Any = None
    xbits: Any = None
    g: Any = None
    d: Any = None
    idx: Any = None
    w_pruned: Any = None


class _Plan(NamedTuple):
    """Channel compaction: role ``in``/``out``, the A or Y axis, the W axis, kept indices."""

    role: str
    axis: int
    w_axis: int
    idx: Array


def _slot(aux: Aux, prefix: str) -> SlotInput:
    return SlotInput(*(getattr(aux, f"{prefix}_{f}") for f in _FIELDS),
                     key=aux.key if prefix == "o" else None)


def _validate(cfg: _Cfg, a, w, aux: Aux, y_shape_of: Callable[[], tuple[int, ...]]):
    """Raises a clear error for bad inputs; ``y_shape_of()`` (the output shape, an
    abstract evaluation of the op) is only called for rules on the output."""
    where = f" in {cfg.where}" if cfg.where else ""
    for x, name in ((a, "lhs (activation)"), (w, "rhs (kernel)")):
        if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
            raise TypeError(f"sparse op{where}: {name} has dtype {jnp.result_type(x)}; sparse "
                            "training needs floating inputs (integers have no gradient). Cast with "
                            ".astype(jnp.float32) or use the lax op directly.")
    feat = cfg.op.out_feature_axes(a.ndim, w.ndim)
    shapes = {"w": lambda: (w.shape, ()), "a": lambda: (a.shape, ()), "x": lambda: (a.shape, ()),
              "d": lambda: (w.shape, cfg.op.w_contraction_axes(w.ndim)),
              "g": lambda: (y_shape_of(), feat), "o": lambda: (y_shape_of(), feat)}
    for slot, prefix in _SLOTS:
        rule = getattr(cfg.policy, slot)
        given = {f for f, v in _slot(aux, prefix)._asdict().items() if v is not None}
        if rule is None:
            if given:
                raise ValueError(f"aux gives {sorted(prefix + '_' + f if f != 'key' else f for f in given)}"
                                 f"{where} but Policy.{slot} is None; drop them or set the rule.")
            continue
        extra, missing = given - rule.uses, rule.requires - given
        if extra:
            raise ValueError(f"{rule!r} (Policy.{slot}){where} does not read aux field(s) "
                             f"{sorted(extra)}; it reads {sorted(rule.uses) or 'none'}.")
        if missing:
            raise ValueError(f"{rule!r} (Policy.{slot}){where} needs aux field(s) {sorted(missing)} "
                             f"(prefix {prefix}_).")
        rule.check(*shapes[prefix](), cfg.where)
    out = cfg.policy.out
    if (isinstance(out, RandomProjection) and aux.key is None
            and _proj_dim(cfg, a, w, y_shape_of())):
        raise ValueError(f"RandomProjection{where} needs a PRNG key in aux.key.")


def _proj_dim(cfg: _Cfg, a, w, y_shape) -> Optional[int]:
    """JL dimension for DSG, or ``None`` when the exact product is not more expensive."""
    rule = cfg.policy.out
    feat = cfg.op.out_feature_axes(a.ndim, w.ndim)
    f = math.prod(y_shape[i] for i in feat)
    k = projection_dim(math.prod(y_shape) // f + f, rule.epsilon)
    return k if k < cfg.op.contraction_size(a.shape, w.shape) else None


def _channel_plan(cfg: _Cfg, a, w, given: SlotInput) -> Optional[_Plan]:
    rule = cfg.policy.weight
    if not (cfg.policy.compact and isinstance(rule, PatternRule)
            and isinstance(rule.pattern, Channel) and len(rule.pattern.axes) == 1
            and given.sparsity is None):
        return None
    w_axis = rule.pattern.axes[0] % w.ndim
    role = cfg.op.w_axis_role(w_axis, a.ndim, w.ndim)
    if role is None:
        return None
    keys, _ = rule.pattern.unit_scores(w)
    kept = select.keep_count(rule.sparsity, keys.size)
    [unit] = select.select_topk([keys], kept)
    (idx,) = jnp.nonzero(unit, size=kept, fill_value=0)
    return _Plan(role[0], role[1], w_axis, idx)


def _t_a(op, w_x, a_struct, g):
    return jax.linear_transpose(lambda a_: op.apply(a_, w_x), a_struct)(g)[0]


def _t_w(op, a_x, w_struct, g):
    return jax.linear_transpose(lambda w_: op.apply(a_x, w_), w_struct)(g)[0]


def _with_axis(struct: jax.ShapeDtypeStruct, axis: int, n: int) -> jax.ShapeDtypeStruct:
    shape = list(struct.shape)
    shape[axis] = n
    return jax.ShapeDtypeStruct(tuple(shape), struct.dtype)


def _density(x: Array) -> Array:
    nonzero = lax.convert_element_type(lax.ne(x, lax.full_like(x, 0)), jnp.float32)
    return lax.div(lax.reduce_sum(nonzero, tuple(range(x.ndim))), np.float32(x.size))


_NAN = float("nan")


def _pack_room(pol: Policy, shape: tuple[int, ...], given: SlotInput, where: Optional[str]):
    """``(value slots, pack by threshold)`` when the saved activation is packed, else ``None``
    (see :meth:`sparsejax.sparsifiers.Sparsifier.pack_slots` and ``Policy.saved``); a
    ``"packed"`` rule without a static kept count raises rather than storing it unpacked."""
    if pol.saved not in ("packed", "auto"):
        return None
    slots = pol.act_saved.pack_slots(shape, given)
    if slots is None and pol.saved == "packed":
        raise ValueError(
            f"{where or 'sparse op'}: Policy.saved='packed' needs the act_saved rule's kept count "
            f"at trace time, but {pol.act_saved!r} has none here (a cached or sampled threshold, "
            "or a traced sparsity in aux); use saved='remat' or 'auto', or a TopK with a Python "
            "sparsity.")
    if slots is None or slots[0] >= math.prod(shape):
        return None
    if pol.saved == "auto" and math.prod(shape) < PACK_MIN_SIZE:
        return None
    return slots


def _forward(cfg: _Cfg, a: Array, w: Array, aux: Aux, save: bool = True):
    op, pol, where = cfg.op, cfg.policy, cfg.where
    meta = _Meta(jax.ShapeDtypeStruct(a.shape, a.dtype), jax.ShapeDtypeStruct(w.shape, w.dtype))
    feat = op.out_feature_axes(a.ndim, w.ndim)
    a_input_density = _density(a)
    xmask = x_thr = None
    if pol.act is not None:  # Forward input: every later use (op, act_saved, dW) sees A ⊙ mask.
        xmask, x_thr = pol.act.keep(a, _slot(aux, "x"), (), where)
        a = jnp.where(xmask, a, jnp.zeros((), a.dtype))
    plan, wmask, w_thr, w_s = None, None, None, w
    if pol.weight is not None:
        given = _slot(aux, "w")
        plan = _channel_plan(cfg, a, w, given)
        if plan is None:
            wmask, w_thr = pol.weight.keep(w, given, (), where)
        else:
            wmask = compact.put(jnp.ones(plan.idx.shape, bool), plan.idx, 0, (w.shape[plan.w_axis],))
            wmask = jnp.broadcast_to(
                wmask.reshape([-1 if i == plan.w_axis else 1 for i in range(w.ndim)]), w.shape)
        # Backend hint (sparsejax.ordering): W_s is built once the layer's input exists.
        w_s = jnp.where(wmask & ordering.live(a), w, jnp.zeros((), w.dtype))

    if plan is None:
        y, w_keep = op.apply(a, w_s), w_s
    else:
        w_keep = compact.take(w, plan.idx, plan.w_axis)
        if plan.role == "in":
            y = op.apply(compact.take(a, plan.idx, plan.axis), w_keep)
        else:
            y_small = op.apply(a, w_keep)
            y = compact.put(y_small, plan.idx, plan.axis,
                            _with_axis(y_small, plan.axis, w.shape[plan.w_axis]).shape)

    omask = None
    if pol.out is not None:
        scores = y
        if isinstance(pol.out, RandomProjection):
            k = _proj_dim(cfg, a, w_s, y.shape)
            if k is not None:
                scores = op.estimate(a, w_s, aux.key, k)
        omask, _ = pol.out.keep(scores, _slot(aux, "o"), feat, where)
        y = jnp.where(omask, y, jnp.zeros((), y.dtype))

    a_thr, a_s, a_saved = None, a, a
    if pol.act_saved is not None:
        given = _slot(aux, "a")
        amask, a_thr = pol.act_saved.keep(a, given, (), where)
        a_s = jnp.where(amask, a, jnp.zeros((), a.dtype))
        room = _pack_room(pol, a.shape, given, where)
        a_saved = a_s
        if plan is not None and plan.role == "in" and not pol.straight_through:
            a_saved = compact.take(a_s, plan.idx, plan.axis)
        elif room is not None and save:
            count, by_threshold = room
            a_saved = (compact.pack_threshold(a, a_thr, count) if by_threshold
                       else compact.pack(a, amask, count))
            # Backend hint: pack in the forward pass. The values are computed last (from
            # the bit planes), so waiting for them waits for the whole pack.
            y = y + ordering.depends_on([a_saved.values], y.dtype)
    elif plan is not None and plan.role == "in" and not pol.straight_through:
        a_saved = compact.take(a, plan.idx, plan.axis)

    nan = jnp.float32(_NAN)
    stats = Stats(
        w_threshold=nan if w_thr is None else jnp.asarray(w_thr, jnp.float32),
        a_threshold=nan if a_thr is None else jnp.asarray(a_thr, jnp.float32),
        w_density=_density(w_s), a_density=_density(a_s), a_input_density=a_input_density,
        out_density=jnp.float32(1.0) if omask is None else jnp.mean(omask.astype(jnp.float32)),
        x_threshold=nan if x_thr is None else jnp.asarray(x_thr, jnp.float32))
    # W_s is rebuilt in the backward pass from W (a parameter, alive anyway) and the
    # threshold (a threshold rule) or, with saved="packed", its mask bits (1/32 of its
    # bytes): a saved W_s, and the transposed copies XLA makes of it for dA ahead of
    # time, would hold a dense copy of every kernel.
    wbits = wmask_saved = wthr = None
    if wmask is not None and plan is None:
        if pol.saved != "masked" and pol.weight.by_threshold(_slot(aux, "w")):
            w_keep, wthr = w, jnp.asarray(w_thr, jnp.float32)
        elif pol.saved == "packed":
            w_keep, wbits = w, compact.pack_bits(wmask)
        elif not pol.straight_through:
            wmask_saved = wmask
    xbits = None
    if xmask is not None and pol.saved == "packed":  # 1 bit per entry of A, not a bool byte.
        xbits, xmask = compact.pack_bits(xmask), None
    res = _Residuals(meta=meta, a=a_saved, w=w_keep, wbits=wbits, wmask=wmask_saved, wthr=wthr,
               omask=omask,
               xmask=xmask, xbits=xbits, g=_slot(aux, "g"), d=_slot(aux, "d"),
               idx=None if plan is None else plan.idx,
               w_pruned=(w - w_s) if pol.weight_decay_pruned else None)
    return (y, stats), res


def _backward(cfg: _Cfg, res: _Residuals, cts):
    op, pol, where = cfg.op, cfg.policy, cfg.where
    g, _ = cts
    meta = res.meta
    a_struct, w_struct = meta.a, meta.w
    feat = op.out_feature_axes(len(a_struct.shape), len(w_struct.shape))
    if res.omask is not None:
        g = jnp.where(res.omask, g, jnp.zeros((), g.dtype))
    after = lambda x: ordering.after(g, x)  # backend hint: rebuild residuals in the backward
    a_saved = res.a
    if isinstance(a_saved, compact.Packed):
        # Everything the unpack reads comes with the bits: making them wait for dY makes
        # the rebuild wait too.
        a_saved = compact.unpack(dataclasses.replace(a_saved, bits=after(a_saved.bits)))
    elif pol.saved == "remat":  # see Policy.saved
        a_saved = after(a_saved)
    w_keep, idx, wmask = res.w, res.idx, res.wmask
    if res.wbits is not None:
        wmask = compact.unpack_bits(after(res.wbits), w_struct.shape)
        w_keep = jnp.where(wmask, w_keep, jnp.zeros((), w_keep.dtype))
    elif res.wthr is not None:
        wmask = jnp.abs(after(w_keep).astype(jnp.float32)) >= res.wthr
        w_keep = jnp.where(wmask, w_keep, jnp.zeros((), w_keep.dtype))
    plan = None
    if idx is not None:
        w_axis = pol.weight.pattern.axes[0] % len(w_struct.shape)
        role, axis = op.w_axis_role(w_axis, len(a_struct.shape), len(w_struct.shape))
        plan = _Plan(role, axis, w_axis, idx)

    cols = None
    if pol.grad_out is not None:
        rule = pol.grad_out
        out_w = op.out_w_axis(len(a_struct.shape), len(w_struct.shape))
        if (isinstance(rule, SharedColumns) and pol.compact and plan is None and out_w is not None):
            cols = jnp.nonzero(rule.columns(g, feat, where), size=rule.k, fill_value=0)[0]
        else:
            gmask, _ = rule.keep(g, res.g, feat, where)
            g = jnp.where(gmask, g, jnp.zeros((), g.dtype))

    if cols is not None:
        (y_axis,) = feat
        g_k = compact.take(g, cols, y_axis)
        w_k = compact.take(w_keep, cols, out_w)
        da = _t_a(op, w_k, a_struct, g_k)
        dw = compact.put(_t_w(op, a_saved, _with_axis(w_struct, out_w, cols.size), g_k), cols,
                         out_w, w_struct.shape)
    elif plan is None:
        dw = _t_w(op, a_saved, w_struct, g)
        da = _t_a(op, w_keep, a_struct, g)
    else:
        n = idx.size
        w_k_struct = _with_axis(w_struct, plan.w_axis, n)
        if plan.role == "in":
            da = compact.put(_t_a(op, w_keep, _with_axis(a_struct, plan.axis, n), g), idx, plan.axis,
                             a_struct.shape)
            if pol.straight_through:
                dw = _t_w(op, a_saved, w_struct, g)
            else:
                dw = compact.put(_t_w(op, a_saved, w_k_struct, g), idx, plan.w_axis, w_struct.shape)
        else:
            g_k = compact.take(g, idx, plan.axis)
            da = _t_a(op, w_keep, a_struct, g_k)
            if pol.straight_through:
                dw = _t_w(op, a_saved, w_struct, g)
            else:
                dw = compact.put(_t_w(op, a_saved, w_k_struct, g_k), idx, plan.w_axis, w_struct.shape)
    if wmask is not None and not pol.straight_through:
        dw = jnp.where(wmask, dw, jnp.zeros((), dw.dtype))
    if res.w_pruned is not None:
        dw = dw + jnp.asarray(pol.weight_decay_pruned, dw.dtype) * res.w_pruned
    if pol.grad_weight is not None:  # Only the kept entries of dW reach the optimizer.
        dmask, _ = pol.grad_weight.keep(dw, res.d, op.w_contraction_axes(len(w_struct.shape)),
                                        where)
        dw = jnp.where(dmask, dw, jnp.zeros((), dw.dtype))
    xmask = res.xmask
    if res.xbits is not None:
        xmask = compact.unpack_bits(after(res.xbits), a_struct.shape)
    if xmask is not None:  # The forward multiplied A ⊙ mask: its gradient is masked too.
        da = jnp.where(xmask, da, jnp.zeros((), da.dtype))
    return da.astype(a_struct.dtype), dw.astype(w_struct.dtype), None


def _primal(cfg: _Cfg, a, w, aux):
    return _forward(cfg, a, w, aux, save=False)[0]


_sparse_op = jax.custom_vjp(_primal, nondiff_argnums=(0,))
_sparse_op.defvjp(_forward, _backward)


def _run(cfg: _Cfg, a: ArrayLike, w: ArrayLike, aux: Optional[Aux]) -> tuple[Array, Stats]:
    if not isinstance(cfg.policy, Policy):
        raise TypeError(f"policy must be a sparsejax.ops.Policy, got {cfg.policy!r}.")
    if aux is None:
        aux = Aux()
    elif not isinstance(aux, Aux):
        raise TypeError(f"aux must be a sparsejax.ops.Aux or None, got {type(aux).__name__}.")
    a, w = jnp.asarray(a), jnp.asarray(w)
    _validate(cfg, a, w, aux, lambda: jax.eval_shape(cfg.op.apply, a, w).shape)
    return _sparse_op(cfg, a, w, aux)


def _no_sharding(out_sharding, where):
    if out_sharding is not None:
        raise NotImplementedError(
            f"sparse ops{' in ' + where if where else ''} do not take out_sharding; shard with "
            "jax.jit in/out shardings (the selection is made of plain reductions).")


def _dot_cfg(dimension_numbers, precision, preferred_element_type, policy, where):
    (lc, rc), (lb, rb) = dimension_numbers
    dn = ((tuple(int(i) for i in lc), tuple(int(i) for i in rc)),
          (tuple(int(i) for i in lb), tuple(int(i) for i in rb)))
    return _Cfg(_Dot(dn, _tuple(precision), preferred_element_type), policy, where)


def forward_weight(w: ArrayLike, policy: Optional[Policy], aux: Optional[Aux] = None, *,
                   where: Optional[str] = None) -> Array:
    """The kernel ``W_s`` the forward of a sparse op under ``policy`` multiplies with.

    The same selection as the op's forward (``policy.weight`` on ``w`` with the
    ``w_*`` fields of ``aux``; a compacted channel rule keeps the same slices),
    so a plain ``lax.dot_general`` / ``conv_general_dilated`` with ``W_s``
    reproduces the op's forward output whenever the policy has no ``out`` rule
    (DSG's, which masks outputs, not weights) and no ``act`` rule (which masks
    the input).

    Args:
      w: the kernel.
      policy: the op's policy; ``None`` (a dense call) or a policy without a
        ``weight`` rule returns ``w`` unchanged.
      aux: the op's dynamic inputs.
      where: layer name for error messages.

    Returns:
      ``where(mask, w, 0)`` (``w``'s dtype), or ``w``.

    Example:
      >>> forward_weight(jnp.array([[1.], [4.], [3.], [2.]]),
      ...                Policy(weight=PatternRule(NM(2, 4)))).ravel().tolist()
      [0.0, 4.0, 3.0, 0.0]

    References:
      Raihan & Aamodt, NeurIPS 2020 (SWAT's top-K forward weights); Mishra et
      al., arXiv:2104.08378 (N:M).
    """
    w = jnp.asarray(w)
    if policy is None or policy.weight is None:
        return w
    mask, _ = policy.weight.keep(w, _slot(Aux() if aux is None else aux, "w"), (), where)
    return jnp.where(mask, w, jnp.zeros((), w.dtype))


def sparse_dot_general_with_stats(
        lhs: ArrayLike, rhs: ArrayLike, dimension_numbers: DotDims,
        precision: lax.PrecisionLike = None, preferred_element_type: Optional[DTypeLike] = None,
        *, policy: Policy, aux: Optional[Aux] = None, where: Optional[str] = None,
        out_sharding: Any = None) -> tuple[Array, Stats]:
    """:func:`sparse_dot_general` that also returns the forward's :class:`Stats`.

    Returns:
      ``(y, stats)``; ``stats`` carries the thresholds to cache and the realised
      densities to monitor.
    """
    _no_sharding(out_sharding, where)
    cfg = _dot_cfg(dimension_numbers, precision, preferred_element_type, policy, where)
    return _run(cfg, lhs, rhs, aux)


def sparse_dot_general(lhs: ArrayLike, rhs: ArrayLike, dimension_numbers: DotDims,
                       precision: lax.PrecisionLike = None,
                       preferred_element_type: Optional[DTypeLike] = None, *, policy: Policy,
                       aux: Optional[Aux] = None, where: Optional[str] = None,
                       out_sharding: Any = None) -> Array:
    """Drop-in ``lax.dot_general`` whose forward and backward follow ``policy``.

    Args:
      lhs: the activation A.
      rhs: the kernel W.
      dimension_numbers: as ``lax.dot_general`` (batch dims allowed).
      precision: as ``lax.dot_general``.
      preferred_element_type: as ``lax.dot_general``.
      policy: which rule sparsifies which tensor (static).
      aux: dynamic inputs of the rules (traced; changing them never recompiles).
      where: the layer's name for error messages.
      out_sharding: accepted for Flax NNX compatibility; must be ``None``.

    Returns:
      The output of ``lax.dot_general(lhs, W_s, ...)`` (masked by ``policy.out``).

    Example:
      >>> import functools, flax.linen as nn
      >>> dg = functools.partial(sparse_dot_general, policy=Policy(weight=TopK(0.8),
      ...                        act_saved=TopK(0.8)))
      >>> layer = nn.Dense(4, dot_general=dg)

    References:
      Raihan & Aamodt, NeurIPS 2020 (SWAT); Sun et al., ICML 2017 (meProp);
      Liu et al., ICLR 2019 (DSG); Zhou et al., ICLR 2021 (SR-STE).
    """
    return sparse_dot_general_with_stats(
        lhs, rhs, dimension_numbers, precision, preferred_element_type, policy=policy, aux=aux,
        where=where, out_sharding=out_sharding)[0]


def _conv_cfg(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
              dimension_numbers, feature_group_count, batch_group_count, precision,
              preferred_element_type, policy, where):
    dn = lax.conv_dimension_numbers(jnp.shape(lhs), jnp.shape(rhs), dimension_numbers)
    op = _Conv(_tuple(window_strides), _tuple(padding), _tuple(lhs_dilation),
               _tuple(rhs_dilation), dn, int(feature_group_count), int(batch_group_count),
               _tuple(precision), preferred_element_type)
    return _Cfg(op, policy, where)


def sparse_conv_general_dilated_with_stats(
        lhs: ArrayLike, rhs: ArrayLike, window_strides: Sequence[int], padding: Padding,
        lhs_dilation: Optional[Sequence[int]] = None,
        rhs_dilation: Optional[Sequence[int]] = None,
        dimension_numbers: lax.ConvGeneralDilatedDimensionNumbers = None,
        feature_group_count: int = 1, batch_group_count: int = 1,
        precision: lax.PrecisionLike = None, preferred_element_type: Optional[DTypeLike] = None,
        *, policy: Policy, aux: Optional[Aux] = None, where: Optional[str] = None,
        out_sharding: Any = None) -> tuple[Array, Stats]:
    """:func:`sparse_conv_general_dilated` that also returns the forward's :class:`Stats`."""
    _no_sharding(out_sharding, where)
    cfg = _conv_cfg(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                    dimension_numbers, feature_group_count, batch_group_count, precision,
                    preferred_element_type, policy, where)
    return _run(cfg, lhs, rhs, aux)


def sparse_conv_general_dilated(
        lhs: ArrayLike, rhs: ArrayLike, window_strides: Sequence[int], padding: Padding,
        lhs_dilation: Optional[Sequence[int]] = None,
        rhs_dilation: Optional[Sequence[int]] = None,
        dimension_numbers: lax.ConvGeneralDilatedDimensionNumbers = None,
        feature_group_count: int = 1, batch_group_count: int = 1,
        precision: lax.PrecisionLike = None, preferred_element_type: Optional[DTypeLike] = None,
        *, policy: Policy, aux: Optional[Aux] = None, where: Optional[str] = None,
        out_sharding: Any = None) -> Array:
    """Drop-in ``lax.conv_general_dilated`` whose forward and backward follow ``policy``.

    Args:
      lhs: the activation A.
      rhs: the kernel W.
      window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
      feature_group_count, batch_group_count, precision, preferred_element_type:
        as ``lax.conv_general_dilated``.
      policy: which rule sparsifies which tensor (static).
      aux: dynamic inputs of the rules (traced).
      where: the layer's name for error messages.
      out_sharding: accepted for Flax NNX compatibility; must be ``None``.

    Returns:
      The convolution of A with the sparse kernel (masked by ``policy.out``).

    Example:
      >>> import functools, flax.linen as nn
      >>> conv = functools.partial(sparse_conv_general_dilated,
      ...                          policy=Policy(weight=TopK(0.8), act_saved=TopK(0.8)))
      >>> layer = nn.Conv(8, (3, 3), conv_general_dilated=conv)

    References:
      Raihan & Aamodt, "Sparse Weight Activation Training", NeurIPS 2020.
    """
    return sparse_conv_general_dilated_with_stats(
        lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
        feature_group_count, batch_group_count, precision, preferred_element_type,
        policy=policy, aux=aux, where=where, out_sharding=out_sharding)[0]
