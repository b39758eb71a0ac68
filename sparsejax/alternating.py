"""AC/DC: alternating compressed (sparse) and decompressed (dense) training, an optax wrapper.

``acdc(optimizer, 0.9, warmup_steps=..., sparse_steps=..., finetune_step=...)``
wraps the user's optimizer like the :mod:`sparsejax.dst` methods and returns an
``optax.GradientTransformationExtraArgs`` with state
:class:`sparsejax.mask_wrappers.DSTState` (``momentum`` is ``None``). The schedule
(:func:`sparse_phase`, a pure function of the step):

* steps ``[0, warmup_steps)`` train dense (the warm-up);
* then sparse phases of ``sparse_steps`` and dense phases of ``dense_steps``
  alternate, starting with a sparse one;
* from ``finetune_step`` on every step is sparse (the final compressed
  fine-tuning; ``None``: the alternation runs to the end).

What one ``update(grads, state, params)`` at step ``t = state.count`` does:

1. At the first step of a sparse phase the masks are recomputed by magnitude
   from the params *before* this step (:func:`sparsejax.tree.compute_masks`,
   per layer ``"uniform"`` or ``"erk"``, or one ``"global"`` threshold); at the
   first step of a dense phase every mask becomes ``True``.
2. With ``reset_state="dense"`` (the paper: "We reset SGD momentum at the
   beginning of every decompression phase") the wrapped optimizer's state of
   the sparsified parameters is zeroed at the start of each dense phase; with
   ``"all"`` at the start of every phase (jaxpruner's ``reset_optimizer``);
   ``"none"`` never. The reset maps state leaves to parameters by key paths,
   for any optax state, with :mod:`sparsejax.dst`'s machinery (same errors,
   same ``keep_state``). A reset happens before the step's optimizer update.
3. The wrapped optimizer steps on ``g * mask``; the emitted update is
   ``where(mask, u, -params)``: during a sparse phase the pruned weights are
   exactly 0 after ``optax.apply_updates``; during a dense phase every weight
   trains, the previously pruned ones from 0.

The phase decision is a ``lax.cond`` on the traced ``count`` (one trace serves
every step); the top-k runs only at sparse-phase starts. With ``check=True``
every update verifies that the params are exactly 0 where the masks prune.

Deviations from the reference code, on purpose: phases are counted in steps,
not epochs (``steps_per_epoch · epochs`` gives the paper's schedule); the reset
covers the sparsified parameters' state only (the official code zeroes every
momentum buffer; jaxpruner resets a fixed list of optax states and raises on
others).

References:
  Peste, Iofinova, Vladu, Alistarh, "AC/DC: Alternating Compressed/DeCompressed
  Training of Deep Neural Networks", NeurIPS 2021 (official code:
  IST-DASLab/ACDC).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax import lax

from sparsejax import mask_wrappers as mw
from sparsejax.paths import PathMatcher, PathRule
from sparsejax.tree import compute_masks
from sparsejax.validate import plain

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

RESETS = ("none", "dense", "all")


def sparse_phase(step: ArrayLike, *, warmup_steps: int, sparse_steps: int,
                 dense_steps: int | None = None, finetune_step: int | None = None) -> Array:
    """Whether step ``step`` of an AC/DC schedule trains sparse (bool, traceable).

    Args:
      step: the 0-based step (int or int array, concrete or traced).
      warmup_steps: dense steps first.
      sparse_steps: length of each sparse (compressed) phase.
      dense_steps: length of each dense (decompressed) phase (``None``: as
        ``sparse_steps``).
      finetune_step: every step from this one is sparse (``None``: never).

    Returns:
      A bool array of ``step``'s shape.

    Example:
      >>> [bool(sparse_phase(t, warmup_steps=2, sparse_steps=2, dense_steps=1))
      ...  for t in range(7)]
      [False, False, True, True, False, True, True]

    References:
      Peste et al., "AC/DC", NeurIPS 2021 (Figure 1).
    """
    dense_steps = sparse_steps if dense_steps is None else dense_steps
    step = jnp.asarray(step)
    cycle = jnp.maximum(step - warmup_steps, 0) % (sparse_steps + dense_steps)
    out = (step >= warmup_steps) & (cycle < sparse_steps)
    if finetune_step is not None:
        out = out | (step >= finetune_step)
    return out


def acdc(optimizer: optax.GradientTransformation, sparsity: float, *, warmup_steps: int,
         sparse_steps: int, dense_steps: int | None = None, finetune_step: int | None = None,
         reset_state: str = "dense", distribution: str = "uniform",
         include: PathRule | None = None, exclude: PathRule | None = None,
         keep_state: PathRule | None = None,
         check: bool = True) -> optax.GradientTransformationExtraArgs:
    """AC/DC: dense warm-up, then alternating sparse / dense phases, then sparse fine-tuning.

    Args:
      optimizer: the optax optimizer to wrap (it sees the masked gradients).
      sparsity: fraction of the weights removed during sparse phases (per layer
        for ``"uniform"``, the global target for ``"erk"`` / ``"global"``), in
        ``[0, 1)``.
      warmup_steps: dense steps before the first sparse phase (>= 0; the paper:
        10 of 100 epochs).
      sparse_steps: length of each sparse phase (>= 1; the paper: 5 epochs).
      dense_steps: length of each dense phase (>= 1; ``None``: as
        ``sparse_steps``).
      finetune_step: the step the final sparse phase starts (``None``: the
        alternation runs to the end; the paper: epoch 90 of 100).
      reset_state: ``"dense"`` (zero the wrapped optimizer's state of the
        sparsified parameters at each dense-phase start, as the paper),
        ``"all"`` (at every phase start) or ``"none"``.
      distribution: ``"uniform"``, ``"erk"`` or ``"global"``
        (:func:`sparsejax.tree.compute_masks`).
      include, exclude: path rules selecting the sparsified leaves (default:
        floating leaves with ``ndim >= 2``; see :mod:`sparsejax.paths`).
      keep_state: path rule of wrapped-state leaves never reset (see
        :mod:`sparsejax.dst`).
      check: verify at every update that the params are exactly 0 where the
        masks prune.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with state
      :class:`sparsejax.mask_wrappers.DSTState`; ``update`` requires ``params``.

    Raises:
      ValueError: a bad argument (named, with its range and an example), e.g.
        phase lengths ``<= 0`` or a ``sparsity`` outside ``[0, 1)``; at
        ``init``, a wrapped state leaf that cannot be reset.

    Example:
      >>> params = {"w": jnp.arange(1.0, 17.0).reshape(4, 4)}
      >>> tx = acdc(optax.sgd(0.0), 0.75, warmup_steps=1, sparse_steps=2)
      >>> state = tx.init(params)
      >>> for _ in range(2):  # one dense step, then the first sparse step
      ...     updates, state = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
      ...     params = optax.apply_updates(params, updates)
      >>> int((params["w"] != 0).sum())
      4

    References:
      Peste, Iofinova, Vladu, Alistarh, "AC/DC: Alternating Compressed/DeCompressed
      Training of Deep Neural Networks", NeurIPS 2021.
    """
    optimizer, args = mw.validate("acdc", optimizer, sparsity, distribution, 0, check,
                                distributions=("uniform", "erk", "global"),
                                warmup_steps=warmup_steps, sparse_steps=sparse_steps,
                                dense_steps=dense_steps, finetune_step=finetune_step)
    if reset_state not in RESETS:
        raise ValueError(f"acdc(reset_state=...) must be one of {', '.join(map(repr, RESETS))} "
                         "('dense': zero the optimizer state at each dense-phase start, as the "
                         f"paper), got {reset_state!r}.")
    sparsity = float(sparsity)
    schedule = lambda t: sparse_phase(t, **{k: args[k] for k in (
        "warmup_steps", "sparse_steps", "dense_steps", "finetune_step")})
    keep_matcher = PathMatcher(keep_state, "keep_state") if keep_state is not None else None

    def plan_for(params: Any) -> tuple[dict, list[str | None]]:
        # The layers' shapes (their keep counts come from compute_masks at phase starts).
        layers = mw.layers(params, sparsity, "uniform" if distribution == "global" else
                         distribution, include, exclude)
        state_shapes = jax.eval_shape(optimizer.init, params)
        return layers, mw.state_plan(state_shapes, params, layers, keep_matcher, "acdc")

    def init_fn(params):
        params = plain(params)
        layers, _ = plan_for(params)
        mw.warn_unmatched_state(keep_matcher, optimizer, params)
        masks = {p: jnp.ones(shape, bool) for p, (shape, _) in layers.items()}
        return mw.DSTState(jnp.zeros((), jnp.int32), mw.to_tree(params, masks),
                        optimizer.init(params), None)

    def magnitude_masks(params: Any, names: list[str]) -> dict[str, Array]:
        masks = compute_masks(params, sparsity, distribution=distribution, include=include,
                              exclude=exclude)
        return mw.from_tree(masks, names)

    def update_fn(updates, state, params=None, **extra_args):
        params, grads = plain(mw.needs_params("acdc", params)), updates
        layers, plan = plan_for(params)
        names = list(layers)
        count = state.count
        old, p_sel = mw.masked_layers("acdc", state, params, names, check)
        sparse_now = schedule(count)
        sparse_before = (count > 0) & schedule(jnp.maximum(count - 1, 0))
        starts_sparse = sparse_now & ~sparse_before
        starts_dense = ~sparse_now & sparse_before
        masks = lax.cond(starts_sparse, lambda ops: magnitude_masks(ops[0], names),
                         lambda ops: {p: ops[1][p] | ~sparse_now for p in names},
                         (params, old)) if names else {}
        inner_state = state.inner_state
        reset = {"none": None, "dense": starts_dense,
                 "all": starts_dense | starts_sparse}[reset_state]
        if reset is not None and names:
            everything = {p: jnp.ones((), bool) for p in names}
            inner_state = lax.cond(reset, lambda s: mw.reset_state(s, plan, everything),
                                   lambda s: s, inner_state)
        g_sel = mw.from_tree(grads, names)
        masked_grads = mw.replace(grads, {p: jnp.where(masks[p], g_sel[p],
                                                     jnp.zeros((), g_sel[p].dtype))
                                        for p in names})
        inner_updates, inner_state = optimizer.update(masked_grads, inner_state, params,
                                                      **extra_args)
        u_sel = mw.from_tree(inner_updates, names)
        emitted = {p: jnp.where(masks[p], u_sel[p], -jnp.asarray(p_sel[p], u_sel[p].dtype))
                   for p in names}
        new_state = mw.DSTState(optax.safe_int32_increment(count), mw.to_tree(params, masks),
                             inner_state, None)
        return mw.replace(inner_updates, emitted), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
