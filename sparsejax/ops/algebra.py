"""The sparse ops' ``custom_vjp`` algebra: one forward and backward pass for dot_general and conv.

:func:`~sparsejax.ops.sparse_dot_general` and
:func:`~sparsejax.ops.sparse_conv_general_dilated` (:mod:`sparsejax.ops.api`)
are drop-in replacements for ``lax.dot_general`` / ``lax.conv_general_dilated``
(same arguments; ``lhs`` is the activation A, ``rhs`` the kernel W, as Flax
passes them); both run :func:`_run` here, with the linear op of
:mod:`sparsejax.ops.linear`. A hashable :class:`~sparsejax.ops.policy.Policy`
says which tensor is sparsified in which pass, by which
:mod:`sparsejax.sparsifiers` rule; dynamic values come through
:class:`~sparsejax.ops.policy.Aux`, so they change without recompiling::

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

Structured compaction: with ``weight=Channel((axis,), sparsity=s)`` on one
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
backward pass from W, a parameter; packing is :mod:`sparsejax.ops.compaction`.
:func:`sparsejax.analysis.residuals.residual_bytes` reports what each layer
saves, from JAX's own residuals.

References:
  Raihan & Aamodt, "Sparse Weight Activation Training", NeurIPS 2020;
  Zhou et al., "Learning N:M Fine-grained Structured Sparse Neural Networks
  From Scratch", ICLR 2021 (SR-STE); Sun et al., "meProp", ICML 2017; Liu et
  al., "Dynamic Sparse Graph for Efficient Deep Learning", ICLR 2019.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from sparsejax import backend_hints, select
from sparsejax.ops import compaction
from sparsejax.ops.policy import _SLOTS, PACK_MIN_SIZE, Aux, Policy, Stats
from sparsejax.patterns import Channel
from sparsejax.rule import SlotInput
from sparsejax.sparsifiers import RandomProjection, SharedColumns, projection_dim

Array = jax.Array
ArrayLike = jax.typing.ArrayLike


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
        given = {f for f, v in getattr(aux, slot)._asdict().items() if v is not None}
        named = lambda fields: ", ".join(  # noqa: E731
            f"aux.{slot}.{f} ({f if f == 'key' else prefix + '_' + f})" for f in sorted(fields))
        if rule is None:
            if given:
                raise ValueError(f"{named(given)}{where} given but Policy.{slot} is None; drop "
                                 "them or set the rule.")
            continue
        extra, missing = given - rule.uses, rule.requires - given
        if extra:
            raise ValueError(f"{rule!r} (Policy.{slot}){where} does not read aux field(s) "
                             f"{named(extra)}; it reads {sorted(rule.uses) or 'none'}.")
        if missing:
            raise ValueError(f"{rule!r} (Policy.{slot}){where} needs aux field(s) "
                             f"{named(missing)}.")
        rule.check(*shapes[prefix](), cfg.where)
    out = cfg.policy.out
    if (isinstance(out, RandomProjection) and aux.out.key is None
            and _proj_dim(cfg, a, w, y_shape_of())):
        raise ValueError(f"RandomProjection{where} needs a PRNG key in aux.out.key "
                         "(Aux(out=SlotInput(key=...))).")


def _proj_dim(cfg: _Cfg, a, w, y_shape) -> Optional[int]:
    """JL dimension for DSG, or ``None`` when the exact product is not more expensive."""
    rule = cfg.policy.out
    feat = cfg.op.out_feature_axes(a.ndim, w.ndim)
    f = math.prod(y_shape[i] for i in feat)
    k = projection_dim(math.prod(y_shape) // f + f, rule.epsilon)
    return k if k < cfg.op.contraction_size(a.shape, w.shape) else None


def _channel_plan(cfg: _Cfg, a, w, given: SlotInput) -> Optional[_Plan]:
    rule = cfg.policy.weight
    if not (cfg.policy.compact and isinstance(rule, Channel) and len(rule.axes) == 1
            and rule.sparsity is not None and given.sparsity is None):
        return None
    w_axis = rule.axes[0] % w.ndim
    role = cfg.op.w_axis_role(w_axis, a.ndim, w.ndim)
    if role is None:
        return None
    keys, _ = rule.unit_scores(w)
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
    (see :meth:`sparsejax.rule.Rule.pack_slots` and ``Policy.saved``); a
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
        xmask, x_thr = pol.act.keep(a, aux.act, (), where)
        a = jnp.where(xmask, a, jnp.zeros((), a.dtype))
    plan, wmask, w_thr, w_s = None, None, None, w
    if pol.weight is not None:
        given = aux.weight
        plan = _channel_plan(cfg, a, w, given)
        if plan is None:
            wmask, w_thr = pol.weight.keep(w, given, (), where)
        else:
            wmask = compaction.put(jnp.ones(plan.idx.shape, bool), plan.idx, 0,
                                   (w.shape[plan.w_axis],))
            wmask = jnp.broadcast_to(
                wmask.reshape([-1 if i == plan.w_axis else 1 for i in range(w.ndim)]), w.shape)
        # Backend hint (sparsejax.backend_hints): W_s is built once the layer's input exists.
        w_s = jnp.where(wmask & backend_hints.live(a), w, jnp.zeros((), w.dtype))

    if plan is None:
        y, w_keep = op.apply(a, w_s), w_s
    else:
        w_keep = compaction.take(w, plan.idx, plan.w_axis)
        if plan.role == "in":
            y = op.apply(compaction.take(a, plan.idx, plan.axis), w_keep)
        else:
            y_small = op.apply(a, w_keep)
            y = compaction.put(y_small, plan.idx, plan.axis,
                               _with_axis(y_small, plan.axis, w.shape[plan.w_axis]).shape)

    omask = None
    if pol.out is not None:
        scores = y
        if isinstance(pol.out, RandomProjection):
            k = _proj_dim(cfg, a, w_s, y.shape)
            if k is not None:
                scores = op.estimate(a, w_s, aux.out.key, k)
        omask, _ = pol.out.keep(scores, aux.out, feat, where)
        y = jnp.where(omask, y, jnp.zeros((), y.dtype))

    a_thr, a_s, a_saved = None, a, a
    if pol.act_saved is not None:
        given = aux.act_saved
        amask, a_thr = pol.act_saved.keep(a, given, (), where)
        a_s = jnp.where(amask, a, jnp.zeros((), a.dtype))
        room = _pack_room(pol, a.shape, given, where)
        a_saved = a_s
        if plan is not None and plan.role == "in" and not pol.straight_through:
            a_saved = compaction.take(a_s, plan.idx, plan.axis)
        elif room is not None and save:
            count, by_threshold = room
            a_saved = (compaction.pack_threshold(a, a_thr, count) if by_threshold
                       else compaction.pack(a, amask, count))
            # Backend hint: pack in the forward pass. The values are computed last (from
            # the bit planes), so waiting for them waits for the whole pack.
            y = y + backend_hints.depends_on([a_saved.values], y.dtype)
    elif plan is not None and plan.role == "in" and not pol.straight_through:
        a_saved = compaction.take(a, plan.idx, plan.axis)

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
        # The kernel is rebuilt from its threshold where the layer keeps nothing dense: its
        # activation packed or recomputed. Elsewhere ("masked", or "auto" where A cannot
        # be packed) W_s is saved as is, which spares the backward pass the rebuild.
        lean = pol.saved == "remat" or isinstance(a_saved, compaction.Packed)
        if lean and pol.weight.by_threshold(aux.weight):
            w_keep, wthr = w, jnp.asarray(w_thr, jnp.float32)
        elif pol.saved == "packed":
            w_keep, wbits = w, compaction.pack_bits(wmask)
        elif not pol.straight_through:
            wmask_saved = wmask
    xbits = None
    if xmask is not None and pol.saved == "packed":  # 1 bit per entry of A, not a bool byte.
        xbits, xmask = compaction.pack_bits(xmask), None
    res = _Residuals(meta=meta, a=a_saved, w=w_keep, wbits=wbits, wmask=wmask_saved, wthr=wthr,
               omask=omask,
               xmask=xmask, xbits=xbits, g=aux.grad_out, d=aux.grad_weight,
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
    after = lambda x: backend_hints.after(g, x)  # backend hint: rebuild residuals in the backward
    a_saved = res.a
    if isinstance(a_saved, compaction.Packed):
        # Everything the unpack reads comes with the bits: making them wait for dY makes
        # the rebuild wait too.
        a_saved = compaction.unpack(dataclasses.replace(a_saved, bits=after(a_saved.bits)))
    elif pol.saved == "remat":  # see Policy.saved
        a_saved = after(a_saved)
    w_keep, idx, wmask = res.w, res.idx, res.wmask
    if res.wbits is not None:
        wmask = compaction.unpack_bits(after(res.wbits), w_struct.shape)
        w_keep = jnp.where(wmask, w_keep, jnp.zeros((), w_keep.dtype))
    elif res.wthr is not None:
        wmask = jnp.abs(after(w_keep).astype(jnp.float32)) >= res.wthr
        w_keep = jnp.where(wmask, w_keep, jnp.zeros((), w_keep.dtype))
    plan = None
    if idx is not None:
        w_axis = pol.weight.axes[0] % len(w_struct.shape)
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
        g_k = compaction.take(g, cols, y_axis)
        w_k = compaction.take(w_keep, cols, out_w)
        da = _t_a(op, w_k, a_struct, g_k)
        dw = compaction.put(_t_w(op, a_saved, _with_axis(w_struct, out_w, cols.size), g_k),
                            cols, out_w, w_struct.shape)
    elif plan is None:
        dw = _t_w(op, a_saved, w_struct, g)
        da = _t_a(op, w_keep, a_struct, g)
    else:
        n = idx.size
        w_k_struct = _with_axis(w_struct, plan.w_axis, n)
        if plan.role == "in":
            da = compaction.put(_t_a(op, w_keep, _with_axis(a_struct, plan.axis, n), g), idx,
                                plan.axis, a_struct.shape)
            if pol.straight_through:
                dw = _t_w(op, a_saved, w_struct, g)
            else:
                dw = compaction.put(_t_w(op, a_saved, w_k_struct, g), idx, plan.w_axis,
                                    w_struct.shape)
        else:
            g_k = compaction.take(g, idx, plan.axis)
            da = _t_a(op, w_keep, a_struct, g_k)
            if pol.straight_through:
                dw = _t_w(op, a_saved, w_struct, g)
            else:
                dw = compaction.put(_t_w(op, a_saved, w_k_struct, g_k), idx, plan.w_axis,
                                    w_struct.shape)
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
        xmask = compaction.unpack_bits(after(res.xbits), a_struct.shape)
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
