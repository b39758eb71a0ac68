"""Magnitude pruning as an optax transform: masks live in the optimizer state.

(Other criteria rank entries with the same machinery: ``pruning(...,
criterion=Random(seed) | Saliency() | SNIP(loss_fn, batches))``, see
:mod:`sparsejax.criteria` and the ``criterion`` argument of :func:`pruning`.)

:func:`pruning` is a ``GradientTransformationExtraArgs`` placed *last* in an
``optax.chain``. Its state :class:`PruningState` holds the step ``count``, the
bool ``masks`` (the params' structure, ``None`` for untouched leaves) and
``mask_step``, the step whose schedule value the masks were computed for. The
update it emits is ``where(mask, update, -param)``, so
``optax.apply_updates`` returns masked params: a pruned weight is exactly 0
after every step whatever momentum, Adam or weight decay did upstream, and the
training loop needs no extra call. That holds only when ``pruning`` is last:
with ``check=True`` (the default) each update verifies that the params it gets
are exactly 0 where the previous masks prune, and raises, naming the fix,
when a later transform rescaled its updates (``optax.chain(pruning(0.8),
optax.sgd(0.1))`` is caught at the second update). Masks are refreshed inside ``jit`` (a
``lax.cond``), from the *post-update* candidate ``params + updates``, so a
weight pruned at step ``t`` is already 0 after step ``t``. Checkpointing and
sharding of masks come with the optimizer state.

When masks are refreshed (``count`` is the number of updates done so far):

* ``update_every=k``: at every ``count`` in ``[begin_step, end_step)`` with
  ``(count - begin_step) % k == 0``, at the schedule's value at ``count``.
* ``update_every=None``: at a ``count`` in ``[begin_step, end_step)`` whose
  scheduled sparsity differs from the one the current masks were computed for
  (0 before the first pruning). A constant sparsity therefore prunes once, at
  the first step in the window (Han's and ASP's fixed masks); a
  :func:`sparsejax.schedules.iterative` or ``one_shot`` schedule re-prunes
  exactly at its listed steps; a ``polynomial`` one every ``frequency`` steps.
  For rules that fix their own sparsity (``NM`` with ``sparsity=None``, Han's
  ``q · std`` rule) the masks are computed once. With a constant sparsity
  and ``begin_step=0`` the masks come from ``init`` and ``update`` has no
  refresh branch at all: its only cost is one ``where`` per pruned leaf.

``init(params)`` computes the masks for step 0 from the given params when
``begin_step == 0`` and the sparsity at step 0 is above 0 (so pruning trained
weights one-shot is exactly ``compute_masks(trained_params, ...)``, and
``get_masks`` is meaningful before the first step); otherwise it returns
all-True masks and ``mask_step = -1``. Until the first ``update`` the params
themselves are not masked; the first update zeroes the pruned weights.

Examples (``params`` are trained weights for the first and third):

Han et al.: train dense, prune one-shot to 90 %, retrain with fixed masks at a
lower learning rate; iterate with a piecewise-constant schedule::

  tx = optax.chain(optax.sgd(1e-3, momentum=0.9), pruning(0.9, update_every=None))
  tx = optax.chain(optax.sgd(1e-3, momentum=0.9),
                   pruning(schedules.iterative([(0, 0.5), (2000, 0.75), (4000, 0.9)]),
                           update_every=None))  # re-prunes at steps 2000 and 4000

Gradual pruning (Zhu & Gupta) from scratch, masks refreshed every 100 steps::

  sched = schedules.polynomial(0.9, begin_step=1000, end_step=20000, frequency=100)
  tx = optax.chain(optax.adamw(1e-3), pruning(sched, update_every=100, begin_step=1000,
                                               end_step=20000, exclude="head"))

ASP 2:4 (NVIDIA apex): one-shot N:M masks on the trained weights, then retrain
with the same optimizer and fixed masks; groups run along each kernel's
contraction axes (pass ``axes=sparsejax.contraction_axes(model, x)`` for
DenseGeneral / Einsum kernels, see :func:`sparsejax.tree.compute_masks`);
layers whose contraction size is not divisible by 4 are skipped (logged)::

  tx = optax.chain(optax.sgd(0.1, momentum=0.9), pruning(None, pattern=NM(2, 4),
                                                          update_every=None,
                                                          axes=sj.contraction_axes(model, x)))

References:
  Han et al., "Learning both Weights and Connections for Efficient Neural
  Networks", NeurIPS 2015; Zhu & Gupta, "To prune, or not to prune",
  arXiv:1710.01878; Mishra et al., "Accelerating Sparse Deep Neural Networks",
  arXiv:2104.08378 (ASP).
"""

from __future__ import annotations

import numbers
from typing import Any, Callable, Mapping, NamedTuple, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from sparsejax import paths
from sparsejax.criteria import Criterion, Magnitude, check_criterion
from sparsejax.patterns import Pattern, Unstructured
from sparsejax.paths import PathRule
from sparsejax.schedules import check_schedule
from sparsejax.tree import compute_masks
from sparsejax.validate import (check_pruned_zero, check_sparsity, plain, pruned_nonzeros,
                                raise_if)

Array = jax.Array
ArrayLike = jax.typing.ArrayLike
SparsityOrSchedule = Union[float, Mapping[str, float], Callable[[ArrayLike], ArrayLike], None]


class PruningState(NamedTuple):
    """State of :func:`pruning`.

    Attributes:
      count: int32 number of updates done.
      masks: bool masks with the params' structure (``None`` for untouched
        leaves); ``True`` = kept.
      mask_step: int32 step whose scheduled sparsity the masks were computed for
        (``-1``: no pruning yet, masks all ``True``).
    """

    count: Array
    masks: Any
    mask_step: Array

    holds_masks = True  # get_masks finds every state class that sets this (sparsejax.dst too)


def _check_step(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"pruning({name}=...) must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def _chain_error(names: list[str]) -> Callable[..., Exception]:
    def error(step, counts):
        return ValueError(
            f"pruning: at step {int(step)} the params hold {pruned_nonzeros(counts, names)}: "
            "a transform after pruning in the chain "
            "changed its updates (an optimizer, a learning rate, weight decay), or the params "
            "were changed outside the optimizer, so pruned weights are not kept at exactly 0. "
            "Put pruning last in the chain: optax.chain(optax.sgd(...), sparsejax.pruning(...)). "
            "If the params are changed between steps on purpose, pass pruning(..., check=False).")
    return error


def _sparsity_error(step, value) -> Exception:
    return ValueError(
        f"pruning: the sparsity schedule returns {np.float32(value)!s} at step {int(step)}; a sparsity "
        "must be in [0, 1) (the masks of that step were computed with it clamped into [0, 1): "
        "NaN or < 0 prune nothing, >= 1 keeps the minimum). Fix the schedule (e.g. jnp.clip(s, "
        "0.0, 0.99)) or stop pruning before that step (end_step=...).")


def pruning(sparsity_or_schedule: SparsityOrSchedule, *, pattern: Pattern = Unstructured(),
            distribution: str = "uniform", update_every: int | None = 1, begin_step: int = 0,
            end_step: int | None = None, include: PathRule | None = None,
            exclude: PathRule | None = None, strict: bool = False,
            q: ArrayLike | dict | None = None,
            axes: dict | None = None,
            check: bool = True,
            criterion: Criterion = Magnitude()) -> optax.GradientTransformationExtraArgs:
    """Pruning (by magnitude or a criterion) that keeps pruned weights exactly 0; place it
    last in a chain.

    Args:
      sparsity_or_schedule: a sparsity in ``[0, 1)``, a schedule ``step ->
        sparsity`` (see :mod:`sparsejax.schedules`; evaluated under ``jit`` with a
        traced step), fixed per-layer targets (a mapping path-regex -> sparsity,
        see :func:`sparsejax.tree.compute_masks`), or ``None`` when the rule
        implies it (``pattern=NM(n, m)``, or Han's ``q``).
      pattern: which entries may be removed (``Unstructured()``, ``NM(2, 4)``,
        ``Channel(...)``, ``Block(...)``).
      distribution: how the sparsity is spread over layers (``"uniform"``,
        ``"erk"``, ``"global"``; see :func:`sparsejax.tree.compute_masks`).
      update_every: refresh masks every this many steps from ``begin_step``;
        ``None`` refreshes only when the scheduled sparsity changes (see the
        module docstring).
      begin_step: first step at which masks may be refreshed.
      end_step: masks are frozen from this step on (``None``: never frozen).
      include: path rule of the leaves to prune (replaces the default: floating
        leaves with ``ndim >= 2``).
      exclude: path rule of leaves left dense (e.g. the classifier head).
      strict: raise instead of skipping (and logging) leaves the pattern does not
        fit.
      q: Han's quality parameter(s): masks ``|W| > q · std(W)`` per layer.
      axes: ``{leaf path: contraction axes}`` for N:M (see
        :func:`sparsejax.tree.compute_masks`), e.g.
        ``sparsejax.contraction_axes(model, x)``; needed for kernels whose rank
        does not determine them (attention ``DenseGeneral`` / ``Einsum``), which
        are otherwise refused.
      check: verify at every update that the params it receives hold exact
        zeros wherever the previous update's masks prune (true exactly when
        ``pruning`` is last in the chain and its updates were applied
        unchanged), and that a schedule's value at a mask refresh is in
        ``[0, 1)``; raise otherwise (see Raises). Costs one reduction per
        pruned leaf and one scalar branch per step; ``False`` skips both (e.g.
        when params are changed between steps on purpose, or for a step
        serialized with ``jax.export``, which cannot serialize the check's host
        callback).
      criterion: what ranks the entries at a mask refresh
        (:mod:`sparsejax.criteria`). ``Magnitude()`` (default) ranks the
        candidate ``params + updates`` as described above. Every other
        criterion is scored at the ``params`` the update receives (where the
        step's gradient was taken; pruned weights are exactly 0 there, so they
        score 0 and stay pruned as the sparsity grows), the masks then apply
        to the update as usual:

        * ``Random(seed)``: a fresh draw per refresh (the step is folded into
          the key); masks at ``init`` like magnitude.
        * ``Saliency()``: ``|w · g|`` with the raw gradient, which the update
          must receive as an extra argument: ``tx.update(updates, state,
          params, grads=grads)`` (``optax.chain`` forwards it; plain
          transforms ignore it; the sparsejax training loop passes it). ``init``
          has no gradient, so the first masks come from the first refresh
          (with a constant sparsity, ``update_every=None`` and
          ``begin_step=0``: step 0, i.e. SNIP on the first batch, then fixed).
        * ``SNIP(loss_fn, batches)``: masks computed once by ``init`` from the
          params it gets (pruning at initialisation) and kept: needs a constant
          sparsity (or an N:M pattern), ``update_every=None`` and
          ``begin_step=0``.

        Han's ``q`` takes ``Magnitude()`` only.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose ``update`` requires
      ``params`` and returns ``where(mask, update, -param)`` for pruned leaves
      (untouched leaves pass through).

    Raises:
      ValueError: at construction, for a schedule whose value is NaN or outside
        ``[0, 1)`` at some step of ``[0, end_step)`` (``end_step=None``: the
        first ``2**20`` steps; see :func:`sparsejax.schedules.check_schedule`),
        naming the step and value. At update, with ``check=True``: when pruning
        is not last in the chain (e.g. ``optax.chain(pruning(0.8),
        optax.sgd(0.1))``, detected at the second update: the first update's
        pruned weights are not 0), naming the step and the layers; or when the
        schedule's value at a refresh step is NaN or outside ``[0, 1)``
        (beyond the range checked at construction), naming the step and value.
        Eager calls raise the ``ValueError`` itself; under ``jit`` it is raised
        from a ``jax.debug.callback``, so JAX reports it as a runtime error
        (``jax.errors.JaxRuntimeError``) whose message contains it. Such an
        out-of-range sparsity is also clamped into ``[0, 1)`` for the masks
        (:func:`sparsejax.select.keep_count`), so they stay meaningful.
        At construction: ``q`` with a criterion other than ``Magnitude()``;
        ``SNIP`` with a schedule, ``update_every`` or ``begin_step > 0``. When
        the update is traced: a criterion that needs ``grads`` (``Saliency()``)
        called without ``grads=``, naming how to pass them.

    Example:
      >>> params = {"w": jnp.array([[1., -3.], [0.5, 2.]])}
      >>> tx = optax.chain(optax.sgd(0.0), pruning(0.5))
      >>> state = tx.init(params)
      >>> updates, state = tx.update({"w": jnp.zeros((2, 2))}, state, params)
      >>> optax.apply_updates(params, updates)["w"].tolist()
      [[0.0, -3.0], [0.0, 2.0]]

    References:
      Han et al., NeurIPS 2015; Zhu & Gupta, arXiv:1710.01878; NVIDIA apex ASP
      (Mishra et al., arXiv:2104.08378).
    """
    if not isinstance(pattern, Pattern):
        raise TypeError(f"pruning(pattern=...) must be a sparsejax Pattern (Unstructured(), "
                        f"NM(2, 4), Channel(...), Block(...)), got {pattern!r}.")
    pattern.check_tree_use("sparsity_or_schedule=")
    check_criterion(criterion, "pruning")
    by_magnitude = type(criterion) is Magnitude
    needs_grads = "grads" in criterion.needs
    if not by_magnitude and q is not None:
        raise ValueError(f"pruning(criterion={criterion!r}, q=...): q= (Han's |W| > q·std(W) "
                         "rule) thresholds the weights themselves; pass a sparsity (or a "
                         "schedule) with this criterion, or use criterion=Magnitude() with q.")
    schedule = sparsity_or_schedule if callable(sparsity_or_schedule) else None
    if criterion.fixed_at_init and (schedule is not None or update_every is not None
                                    or begin_step != 0):
        raise ValueError(
            f"pruning(criterion={criterion!r}) prunes once, at init (SNIP: pruning at "
            "initialisation); a refresh during training would need the loss at the current "
            "params. Use a constant sparsity with update_every=None and begin_step=0 (got "
            f"{'a schedule' if schedule is not None else 'a constant sparsity'}, "
            f"update_every={update_every!r}, begin_step={begin_step!r}), or "
            "criterion=Saliency() (|w·g| with each step's gradient) to refresh masks.")
    if sparsity_or_schedule is None:
        if pattern.fixed_sparsity is None and q is None:
            raise ValueError(f"pruning(None, pattern={pattern!r}) needs a sparsity: pass a float "
                             "or a schedule, or a pattern that fixes it (NM(2, 4)) or Han's q.")
    elif isinstance(sparsity_or_schedule, Mapping):  # per-layer targets, fixed
        for regex, value in sparsity_or_schedule.items():
            check_sparsity(value, f"pruning(sparsity[{regex!r}])")
    elif schedule is None:
        check_sparsity(sparsity_or_schedule, "pruning(sparsity)")
    elif pattern.fixed_sparsity is not None:
        raise ValueError(f"{pattern!r} fixes its own sparsity; pass sparsity_or_schedule=None "
                         "instead of a schedule.")
    if update_every is not None:
        update_every = _check_step(update_every, "update_every", 1)
    begin_step = _check_step(begin_step, "begin_step", 0)
    if end_step is not None:
        end_step = _check_step(end_step, "end_step", begin_step + 1)
    options = dict(pattern=pattern, distribution=distribution, include=include,
                   exclude=exclude, strict=strict, q=q, axes=axes)
    if not isinstance(check, bool):
        raise TypeError(f"pruning(check=...) must be True or False, got {check!r}.")
    if schedule is not None:  # hand-written schedules too: refuse NaN / >= 1 before training
        check_schedule(schedule, 0, None if end_step is None else end_step - 1,
                       steps=(begin_step,), where="pruning's sparsity schedule")

    # A constant sparsity with update_every=None from step 0: init computed the
    # masks (or the sparsity is 0) and no later step can refresh them, so the
    # update skips the refresh branch entirely (Han / ASP retraining).
    # A criterion that needs the step's gradient cannot score at init: its first masks come
    # from the first refresh (step 0 with these settings).
    masks_fixed_at_init = (update_every is None and schedule is None and begin_step == 0
                           and not needs_grads)

    def sparsity_at(step: ArrayLike) -> ArrayLike | None:
        """The argument ``compute_masks`` gets at ``step``."""
        return sparsity_or_schedule if schedule is None else schedule(step)

    def level(step: ArrayLike) -> Array:
        """The value whose changes trigger a refresh (``update_every=None``)."""
        if schedule is not None:
            return jnp.asarray(schedule(step), jnp.float32)
        if isinstance(sparsity_or_schedule, Mapping):
            return jnp.float32(max(sparsity_or_schedule.values()))
        return jnp.float32(1.0 if sparsity_or_schedule is None else sparsity_or_schedule)

    def masks_at(candidate: Any, step: ArrayLike, params: Any = None, grads: Any = None) -> Any:
        """Masks of ``candidate`` at ``step``; a non-magnitude criterion scores ``params``
        (the update's incoming params; ``candidate`` itself at init)."""
        if by_magnitude:
            return compute_masks(candidate, sparsity_at(step), **options)
        scores = criterion.scores(candidate if params is None else params, grads=grads, step=step)
        return compute_masks(candidate, sparsity_at(step), scores=scores, **options)

    def should_refresh(count: Array, mask_step: Array) -> Array:
        in_window = count >= begin_step
        if end_step is not None:
            in_window = in_window & (count < end_step)
        if update_every is not None:
            return in_window & ((count - begin_step) % update_every == 0)
        previous = jnp.where(mask_step < 0, 0.0, level(jnp.maximum(mask_step, 0)))
        return in_window & (level(count) != previous)

    def init_fn(params):
        params = plain(params)
        with jax.ensure_compile_time_eval():
            s0 = level(0)
        if schedule is not None:
            check_sparsity(s0, "pruning schedule at step 0")
        if begin_step == 0 and float(s0) > 0.0 and not needs_grads:
            return PruningState(jnp.zeros((), jnp.int32), masks_at(params, 0), jnp.zeros((), jnp.int32))
        shapes = jax.eval_shape(lambda p: compute_masks(p, sparsity_at(0), **options), params)
        ones = jax.tree.map(lambda s: jnp.ones(s.shape, bool), shapes)
        return PruningState(jnp.zeros((), jnp.int32), ones, jnp.full((), -1, jnp.int32))

    def update_fn(updates, state, params=None, **extra_args):
        grads = extra_args.get("grads")
        if params is None:
            raise ValueError("pruning needs the params: call tx.update(grads, opt_state, params) "
                             "(flax TrainState and nnx.Optimizer pass them).")
        if needs_grads and not masks_fixed_at_init and grads is None:
            raise ValueError(
                f"pruning(criterion={criterion!r}) scores |w · g| with the raw loss gradient, "
                "and this update got none: pass it as an extra argument, "
                "tx.update(grads, opt_state, params, grads=grads) (optax.chain forwards it to "
                "pruning; other transforms ignore it). flax's TrainState.apply_gradients does "
                "not pass it: call tx.update yourself.")
        count = state.count
        if check:
            # Pruning last in the chain => the params it gets are the previous step's
            # masked ones: every pruned weight exactly 0.
            pairs = [(n, m) for n, m in paths.flatten(state.masks)[0] if m is not None]
            by_path = dict(paths.flatten(params)[0])
            check_pruned_zero(dict(pairs), {n: by_path[n] for n, _ in pairs}, count,
                              _chain_error)
        if masks_fixed_at_init:
            masks, mask_step = state.masks, state.mask_step
        else:
            refresh = should_refresh(count, state.mask_step)
            if check and schedule is not None:
                value = jnp.asarray(schedule(count), jnp.float32)
                raise_if(refresh & ~((value >= 0.0) & (value < 1.0)), _sparsity_error, count,
                          value)
            candidate = optax.apply_updates(params, updates)
            scored = None if by_magnitude else plain(params)
            masks = lax.cond(refresh, lambda c: masks_at(c, count, scored, grads),
                             lambda c: state.masks, candidate)
            mask_step = jnp.where(refresh, count, state.mask_step)
        masked = jax.tree.map(
            lambda m, u, p: u if m is None else jnp.where(m, u, -jnp.asarray(p, u.dtype)),
            masks, updates, params, is_leaf=lambda x: x is None)
        return masked, PruningState(optax.safe_int32_increment(count), masks, mask_step)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def get_masks(opt_state: Any) -> Any:
    """The masks of the :func:`pruning` transform (or a :mod:`sparsejax.dst` wrapper) in a state.

    Searches the whole state pytree (``optax.chain`` tuples,
    ``inject_hyperparams``, ``MultiSteps``, ``masked``, a Flax ``TrainState``'s
    ``opt_state`` or an ``nnx.Optimizer``'s ``opt_state``).

    Args:
      opt_state: any optimizer state.

    Returns:
      The bool mask tree (``None`` for untouched leaves; Flax NNX wrappers are
      removed), or ``None`` if the state holds no :class:`PruningState` (nor
      :class:`sparsejax.dst.DSTState`).

    Raises:
      ValueError: if the state holds more than one of them.

    Example:
      >>> state = optax.chain(optax.sgd(0.1), pruning(0.5)).init({"w": jnp.ones((2, 2))})
      >>> get_masks(state)["w"].sum().item()
      2
    """
    is_state = lambda x: getattr(type(x), "holds_masks", False) is True
    found = [x for x in jax.tree.leaves(opt_state, is_leaf=is_state) if is_state(x)]
    if not found:
        return None
    if len(found) > 1:
        raise ValueError(f"the optimizer state holds {len(found)} pruning states; read the one "
                         "you want directly (state[i].masks) instead of get_masks.")
    return plain(found[0].masks)
