"""Dynamic sparse training (static random, SET, RigL, SNFS) as optax optimizer wrappers.

Each method is a function that *wraps the user's optimizer*:
``rigl(optax.sgd(0.1, momentum=0.9), 0.9, end_step=...)`` returns an
``optax.GradientTransformationExtraArgs`` that is used like any optimizer
(``tx.init(params)``, ``tx.update(grads, state, params)``,
``optax.apply_updates``). Its state :class:`~sparsejax.mask_wrappers.DSTState` holds the step
``count``, the bool ``masks`` (the params' structure, ``None`` for untouched
leaves, as :func:`sparsejax.pruning`'s), the wrapped optimizer's own state
``inner_state`` and, for SNFS, the gradient ``momentum`` it regrows by.

Why a wrapper and not a link placed last in an ``optax.chain`` (as
:func:`sparsejax.pruning`):

* RigL regrows by the *raw* dense gradient and SNFS by a momentum of it; a
  transform placed after the optimizer in a chain only sees the optimizer's
  update (Adam's normalised step, SGD's momentum times the learning rate).
  The wrapper receives the gradient itself and feeds the optimizer the masked
  gradient ``g * mask``.
* When a connection is dropped or grown, its entries in the optimizer state
  (momentum, Adam's moments, ...) must be reset, which needs that state in
  hand: the wrapper owns it.

What one ``update(grads, state, params)`` does (``t = state.count``, the
number of updates done so far):

1. The wrapped optimizer steps on the masked gradients:
   ``u, inner = optimizer.update(g * mask, inner, params)``.
2. At a mask-update step (``t > 0``, ``t % update_every == 0`` and
   ``t < end_step``), from the post-step weights ``w = params + u``, each
   layer with ``n`` active weights drops the ``k = floor(f(t) · n)`` active
   ones with the smallest ``|w|`` and grows ``k`` (SET, RigL) or its
   redistributed share (SNFS) among the inactive positions, ranked by random
   scores (SET), ``|g|`` (RigL) or ``|momentum|`` (SNFS). All selections go
   through :func:`sparsejax.select.select_topk` (exact counts, ties to the
   lower flat index), so SET and RigL keep exactly ``n`` active weights per
   layer and SNFS the same total.
3. The emitted update is ``where(old_mask & new_mask, u, -params)``: after
   ``optax.apply_updates`` every inactive weight is exactly 0, a dropped one
   too, and a newly grown one starts at exactly 0 (its params entry was
   already 0, so the optimizer's step there is discarded).
4. The entries of the wrapped optimizer's state at every changed position
   (dropped or newly grown) are set to 0.

The update decision is a ``lax.cond`` on the traced ``count`` and the drop
fraction a traced scalar: one trace serves every step.

Optimizer-state reset for any optax state. The wrapper does not know the
wrapped optimizer's state types (jaxpruner resets only states it knows and
raises on others). It walks the state tree by key paths instead: a state leaf
whose key path is ``prefix + p``, with ``p`` the key path of a parameter and
every leaf under ``prefix`` likewise a prefixed parameter path (a sub-tree
structured like the params: ``mu`` and ``nu`` of Adam, ``trace`` of SGD
momentum, ``acc_grads`` of ``MultiSteps``, a params-shaped field of your own
NamedTuple, ``optax.masked`` sub-trees with ``MaskedNode`` holes), belongs to
that parameter (the shortest such prefix wins). Such a leaf with the
parameter's shape is reset entrywise. Scalars and size-1 leaves (``count``,
injected hyper-parameters, Adafactor's unfactored placeholders) are left
alone, as are leaves that belong to an untouched parameter or have a shape of
no pruned parameter (an RNG key). Two cases cannot be reset correctly and
raise ``ValueError`` naming the state path, at ``init``: a leaf that belongs
to a pruned parameter but has another shape (a factored statistic such as
Adafactor's ``v_row`` / ``v_col``), and a leaf with a pruned parameter's
shape outside any params-structured sub-tree (ambiguous). Pass
``keep_state=`` (a path rule on the state's ``"a/b/c"`` paths, as
``include``/``exclude``) to leave such leaves unchanged on purpose.
(``optax.tree_utils.tree_map_params`` finds params trees by calling ``init``
on a placeholder, which fails for every transform whose ``init`` computes on
the params, e.g. ``jax.tree.map(jnp.zeros_like, params)``.)

Start from sparse weights: ``init`` draws the masks but cannot change the
params; the first ``update`` zeroes the pruned weights (as ``pruning``). To
make the first forward pass sparse too, apply the masks yourself::

  tx = rigl(optax.sgd(0.1, momentum=0.9), 0.9, end_step=75_000)
  opt_state = tx.init(params)
  params = sparsejax.apply_masks(params, opt_state.masks)

The wrapper must see the raw gradients and its updates must reach the params
unchanged: do not put it inside a chain after another optimizer nor put a
transform after it; chain everything you need *inside* it, e.g.
``rigl(optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3)), ...)``.
With ``check=True`` (default) every update verifies that the params are
exactly 0 where the masks prune, as ``pruning`` does.

Deviations from the reference code, on purpose: the first mask update is at
step ``update_every`` (the RigL code also updates at step 0, from the
unmasked initialisation); a position dropped and regrown in the same RigL or
SNFS update keeps its weight and state (the RigL code's default,
``reinit_when_same=False``), so a dense (ERK) layer is unchanged.

References:
  Mocanu et al., "Scalable training of artificial neural networks with
  adaptive sparse connectivity inspired by network science", Nature
  Communications 9, 2383 (2018) (SET); Evci et al., "Rigging the Lottery:
  Making All Tickets Winners", ICML 2020 (RigL, ERK); Dettmers & Zettlemoyer,
  "Sparse Networks from Scratch: Faster Training without Losing Performance",
  arXiv:1907.04840, 2019 (SNFS / sparse momentum).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax import lax

from sparsejax import mask_wrappers as mw
from sparsejax import select
from sparsejax.methods import momentum_budgets
from sparsejax.paths import PathMatcher, PathRule
from sparsejax.mask_wrappers import DSTState
from sparsejax.validate import plain, raise_if

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

def _random_masks(layers: dict, key: Array) -> dict[str, Array]:
    """Exactly ``n`` uniformly random active positions per layer."""
    out = {}
    for i, (path, (shape, n)) in enumerate(layers.items()):
        scores = jax.random.uniform(jax.random.fold_in(key, i), shape)
        [out[path]] = select.select_topk([scores], n)
    return out


# ----------------------------------------------------------------------------- selection


def _keys(candidates: Array, scores: Array) -> Array:
    """int32 magnitude keys of ``scores`` where ``candidates``, -1 (never kept) elsewhere."""
    return jnp.where(candidates, select.magnitude_keys(scores), -1)


def _drop(active: Array, weights: Array, k: Array) -> Array:
    """``active`` minus its ``k`` smallest-magnitude entries (exactly ``n - k`` kept)."""
    n = jnp.sum(active, dtype=jnp.int32)
    [kept] = select.select_topk([_keys(active, weights)], n - k)
    return kept


def _grow(candidates: Array, scores: Array, k: Array) -> Array:
    """The ``k`` candidates with the largest ``|scores|``."""
    [grown] = select.select_topk([_keys(candidates, scores)], k)
    return grown


def _regrowth_counts(free: Array, scores: Array, total: Array) -> Array:
    """SNFS: split ``total`` regrown weights over layers in proportion to ``scores``.

    The shares come from :func:`sparsejax.methods.momentum_budgets` (proportional
    rule, capped at each layer's ``free`` inactive positions, the excess re-shared),
    then are made integers summing to exactly ``total`` with ``0 <= count <= free``
    (the largest scores absorb the rounding remainder; the at-least-one-weight
    floor of ``momentum_budgets`` is taken back from the smallest scores first).

    Args:
      free: int32 ``(L,)`` inactive positions per layer after dropping.
      scores: float ``(L,)`` mean |momentum| of each layer's active weights.
      total: int32 number of weights to regrow (``<= sum(free)``).

    Returns:
      int32 ``(L,)`` regrowth counts.
    """
    n_layers = free.shape[0]
    names = [str(i) for i in range(n_layers)]
    room = jnp.maximum(jnp.sum(free), 1)
    target = 1.0 - total.astype(jnp.float32) / room.astype(jnp.float32)
    sparsities = momentum_budgets({n: free[i] for i, n in enumerate(names)},
                                  {n: scores[i] for i, n in enumerate(names)}, target, cap=1.0,
                                  redistribution="proportional")
    share = jnp.stack([(1.0 - sparsities[n]) for n in names]) * free.astype(jnp.float32)
    share = jnp.where((free > 0) & jnp.isfinite(share), share, 0.0)
    counts = jnp.minimum(jnp.floor(share + 1e-3).astype(jnp.int32), free)
    # Exactly `total`: the rounding remainder goes to the layers with the largest scores;
    # an excess (momentum_budgets keeps >= 1 weight per layer) leaves the smallest first.
    rest = total - jnp.sum(counts)
    order = jnp.argsort(-scores)
    for i in range(n_layers):
        layer = order[i]
        add = jnp.clip(rest, 0, free[layer] - counts[layer])
        counts = counts.at[layer].add(add)
        rest = rest - add
    for i in reversed(range(n_layers)):
        layer = order[i]
        sub = jnp.clip(-rest, 0, counts[layer])
        counts = counts.at[layer].add(-sub)
        rest = rest + sub
    return counts


# ----------------------------------------------------------------------------- the wrapper


def _cosine_fraction(step: ArrayLike, drop_fraction: float, end_step: int) -> Array:
    """RigL's drop fraction at ``step``: ``drop_fraction · (1 + cos(π step / end_step)) / 2``
    (float32; 0 from ``end_step`` on)."""
    t = jnp.minimum(jnp.asarray(step, jnp.float32), float(end_step))
    return jnp.float32(drop_fraction) * (1.0 + jnp.cos(jnp.pi * t / end_step)) / 2.0


def _wrapper(method: str, optimizer: optax.GradientTransformationExtraArgs, sparsity: float, *,
             grow: str | None, drop_fraction: float, update_every: int, end_step: int | None,
             cosine: bool, distribution: str, include: PathRule | None,
             exclude: PathRule | None, seed: int, momentum: float | None,
             keep_state: PathRule | None, check: bool) -> optax.GradientTransformationExtraArgs:
    keep_matcher = PathMatcher(keep_state, "keep_state") if keep_state is not None else None

    def plan_for(params: Any) -> tuple[dict, list[str | None]]:
        layers = mw.layers(params, sparsity, distribution, include, exclude)
        state_shapes = jax.eval_shape(optimizer.init, params)
        return layers, mw.state_plan(state_shapes, params, layers, keep_matcher, method)

    def init_fn(params):
        params = plain(params)
        layers, _ = plan_for(params)
        mw.warn_unmatched_state(keep_matcher, optimizer, params)
        masks = _random_masks(layers, jax.random.key(seed))
        mom = None
        if grow == "momentum":
            mom = mw.to_tree(params, {p: jnp.zeros(shape, jnp.float32)
                                    for p, (shape, _) in layers.items()})
        return DSTState(jnp.zeros((), jnp.int32), mw.to_tree(params, masks),
                        optimizer.init(params), mom)

    def fraction_at(count: Array) -> Array:
        if cosine:
            return _cosine_fraction(count, drop_fraction, end_step)
        return jnp.float32(drop_fraction)

    def is_update_step(count: Array) -> Array:
        due = (count > 0) & (count % update_every == 0)
        return due if end_step is None else due & (count < end_step)

    def new_masks(masks, candidate, grads, mom, count):
        """The masks after this step's drop and growth, per selected layer."""
        f = fraction_at(count)
        key = jax.random.fold_in(jax.random.key(seed), count)
        names = list(masks)
        n = {p: jnp.sum(masks[p], dtype=jnp.int32) for p in names}
        k = {p: jnp.floor(f * n[p].astype(jnp.float32)).astype(jnp.int32) for p in names}
        if grow == "random":  # SET: regrow among the positions inactive before this update
            k = {p: jnp.minimum(k[p], masks[p].size - n[p]) for p in names}
        kept = {p: _drop(masks[p], candidate[p], k[p]) for p in names}
        if grow == "momentum":
            free = jnp.stack([masks[p].size - n[p] + k[p] for p in names])
            scores = jnp.stack([jnp.sum(jnp.where(masks[p], jnp.abs(mom[p]), 0.0))
                                / jnp.maximum(n[p], 1).astype(jnp.float32) for p in names])
            total = sum((k[p] for p in names), jnp.int32(0))
            counts = _regrowth_counts(free, scores, total)
            k = {p: counts[i] for i, p in enumerate(names)}
        out = {}
        for i, p in enumerate(names):
            if grow == "random":
                noise = jax.random.uniform(jax.random.fold_in(key, i), masks[p].shape)
                grown = _grow(~masks[p], noise, k[p])
            elif grow == "gradient":
                grown = _grow(~kept[p], grads[p], k[p])
            else:
                grown = _grow(~kept[p], mom[p], k[p])
            out[p] = kept[p] | grown
        return out

    def update_fn(updates, state, params=None, **extra_args):
        params, grads = plain(mw.needs_params(method, params)), updates
        layers, plan = plan_for(params)
        names = list(layers)
        count = state.count
        masks, p_sel = mw.masked_layers(method, state, params, names, check)
        g_sel = mw.from_tree(grads, names)
        masked_grads = mw.replace(grads, {p: jnp.where(masks[p], g_sel[p],
                                                     jnp.zeros((), g_sel[p].dtype))
                                        for p in names})
        inner_updates, inner_state = optimizer.update(masked_grads, state.inner_state, params,
                                                      **extra_args)
        u_sel = mw.from_tree(inner_updates, names)
        mom_tree = state.momentum
        mom = None
        if grow == "momentum":
            mom = {p: momentum * m + (1.0 - momentum) * g_sel[p].astype(jnp.float32)
                   for p, m in mw.from_tree(state.momentum, names).items()}
            mom_tree = mw.to_tree(params, mom)

        if grow is None or not names:
            after = masks
        else:
            refresh = is_update_step(count)

            def refreshed(operands):
                masks_, (p_, u_), grads_, mom_, inner_ = operands
                # the post-step weights, computed only in the update branch
                candidate_ = {p: p_[p] + u_[p].astype(p_[p].dtype) for p in names}
                if check and grow == "gradient":  # masked gradients leave nothing to grow by
                    silent = jnp.all(jnp.stack([jnp.all(masks_[p] | (grads_[p] == 0))
                                                for p in names]))
                    room = jnp.any(jnp.stack([jnp.any(~masks_[p]) for p in names]))
                    raise_if(silent & room, _no_gradient_error, count)
                out = new_masks(masks_, candidate_, grads_, mom_, count)
                changed = {p: out[p] != masks_[p] for p in names}
                return out, mw.reset_state(inner_, plan, changed)

            after, inner_state = lax.cond(refresh, refreshed,
                                          lambda ops: (ops[0], ops[4]),
                                          (masks, (p_sel, u_sel), g_sel, mom, inner_state))
        emitted = {p: jnp.where(masks[p] & after[p], u_sel[p], -jnp.asarray(p_sel[p],
                                                                            u_sel[p].dtype))
                   for p in names}
        new_state = DSTState(optax.safe_int32_increment(count), mw.to_tree(params, after),
                             inner_state, mom_tree)
        return mw.replace(inner_updates, emitted), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _no_gradient_error(step) -> Exception:
    return ValueError(
        f"rigl: at the mask update of step {int(step)} the gradients are exactly 0 at every "
        "inactive position, so there is nothing to regrow by (RigL grows the inactive "
        "connections with the largest |dense gradient|). Pass the raw gradients of the loss "
        "w.r.t. the params, not masked ones: the model must use the params as they are (do not "
        "multiply them by the masks in the forward pass) and rigl(...) must wrap the optimizer, "
        "not follow it in an optax.chain.")


# ----------------------------------------------------------------------------- public API


def static_random(optimizer: optax.GradientTransformation, sparsity: float, *,
                  distribution: str = "uniform", include: PathRule | None = None,
                  exclude: PathRule | None = None, seed: int = 0,
                  keep_state: PathRule | None = None,
                  check: bool = True) -> optax.GradientTransformationExtraArgs:
    """Static random sparse training: a random mask per layer at init, never changed.

    The lower baseline of dynamic sparse training: each selected layer keeps
    exactly ``keep_count(s_l, size)`` uniformly random weights, ``s_l`` the
    layer's sparsity (``sparsity`` for ``"uniform"``, ERK's for ``"erk"``).

    Args:
      optimizer: the optax optimizer to wrap (it sees the masked gradients).
      sparsity: fraction of each pruned layer's weights removed (the global
        target for ``"erk"``), in ``[0, 1)``.
      distribution: ``"uniform"`` or ``"erk"``
        (:func:`sparsejax.distributions.erk_sparsities`).
      include: path rule of the leaves to sparsify (replaces the default:
        floating leaves with ``ndim >= 2``, i.e. kernels; see
        :mod:`sparsejax.paths`).
      exclude: path rule of leaves left dense (e.g. the classifier head).
      seed: seed of the random masks.
      keep_state: path rule on the wrapped optimizer's state paths for leaves
        deliberately not reset (see the module docstring).
      check: verify at every update that the params are exactly 0 where the
        masks prune (raises otherwise, see :func:`rigl`).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with state
      :class:`~sparsejax.mask_wrappers.DSTState`; ``update`` requires ``params``.

    Raises:
      ValueError: a bad argument (the message names it and the fix), or a
        wrapped optimizer state leaf that cannot be reset (at ``init``).

    Example:
      >>> params = {"w": jnp.ones((4, 4)), "b": jnp.ones(4)}
      >>> tx = static_random(optax.sgd(0.1), 0.75)
      >>> state = tx.init(params)
      >>> int(state.masks["w"].sum()), state.masks["b"] is None
      (4, True)

    References:
      Evci et al., "Rigging the Lottery", ICML 2020 (the static and ERK
      baselines); Mocanu et al., Nature Communications 2018.
    """
    optimizer, _ = mw.validate("static_random", optimizer, sparsity, distribution, seed, check)
    return _wrapper("static_random", optimizer, float(sparsity), grow=None, drop_fraction=0.0,
                    update_every=1, end_step=None, cosine=False, distribution=distribution,
                    include=include, exclude=exclude, seed=int(seed), momentum=None,
                    keep_state=keep_state, check=check)


def sparse_evolutionary(optimizer: optax.GradientTransformation, sparsity: float, *,
                        drop_fraction: float = 0.3, update_every: int = 100,
                        end_step: int | None = None, distribution: str = "uniform",
                        include: PathRule | None = None, exclude: PathRule | None = None,
                        seed: int = 0, keep_state: PathRule | None = None,
                        check: bool = True) -> optax.GradientTransformationExtraArgs:
    """SET: every ``update_every`` steps drop the smallest weights, regrow as many at random.

    At a mask update each layer with ``n`` active weights drops the
    ``k = floor(drop_fraction · n)`` active weights of smallest magnitude
    (after this step's optimizer update) and activates ``k`` uniformly random
    positions among those inactive *before* the update (the just-dropped ones
    are not candidates; ``k`` is capped by their number), starting at exactly
    0 with zero optimizer state. Each layer keeps exactly ``n`` active weights.

    Args:
      optimizer: the optax optimizer to wrap (it sees the masked gradients).
      sparsity: fraction of each pruned layer's weights removed (the global
        target for ``"erk"``), in ``[0, 1)``.
      drop_fraction: ``ζ``, fraction of the active weights replaced per update,
        in ``[0, 1)`` (0.3 in the paper).
      update_every: ``ΔT``, steps between mask updates (>= 1; the paper
        updates once per epoch).
      end_step: no mask update at or after this step (``None``: never stop).
      distribution: ``"uniform"`` or ``"erk"``.
      include, exclude: path rules selecting the sparsified leaves (default:
        kernels; see :func:`static_random`).
      seed: seed of the initial masks and of the random regrowth.
      keep_state: path rule of wrapped-state leaves not reset (module docstring).
      check: verify the params are exactly 0 where the masks prune.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with state
      :class:`~sparsejax.mask_wrappers.DSTState`; ``update`` requires ``params``.

    Raises:
      ValueError: a bad argument (named, with the fix), or a wrapped optimizer
        state leaf that cannot be reset (at ``init``).

    Example:
      >>> tx = sparse_evolutionary(optax.sgd(0.1, momentum=0.9), 0.9, update_every=500)
      >>> state = tx.init({"w": jnp.ones((10, 10))})
      >>> int(state.masks["w"].sum())
      10

    References:
      Mocanu et al., "Scalable training of artificial neural networks with
      adaptive sparse connectivity inspired by network science", Nature
      Communications 9, 2383 (2018).
    """
    optimizer, args = mw.validate("sparse_evolutionary", optimizer, sparsity, distribution, seed,
                                check, drop_fraction=drop_fraction,
                                update_every=update_every, end_step=end_step)
    return _wrapper("sparse_evolutionary", optimizer, float(sparsity), grow="random",
                    cosine=False, distribution=distribution, include=include, exclude=exclude,
                    seed=int(seed), momentum=None, keep_state=keep_state, check=check, **args)


def rigl(optimizer: optax.GradientTransformation, sparsity: float, *, end_step: int,
         drop_fraction: float = 0.3, update_every: int = 100, distribution: str = "erk",
         include: PathRule | None = None, exclude: PathRule | None = None, seed: int = 0,
         keep_state: PathRule | None = None,
         check: bool = True) -> optax.GradientTransformationExtraArgs:
    """RigL: drop the smallest weights, regrow where the dense gradient is largest.

    At a mask update (step ``t`` with ``t % update_every == 0``,
    ``0 < t < end_step``) each layer with ``n`` active weights drops the
    ``k = floor(f(t) · n)`` active weights of smallest magnitude (after this
    step's optimizer update) and activates the ``k`` positions with the
    largest ``|gradient|`` among those inactive after the drop (a weight
    dropped and regrown in the same update keeps its value). The drop fraction
    decays on a cosine, ``f(t) = drop_fraction · (1 + cos(π t / end_step)) / 2``.
    New connections start at exactly 0 with zero optimizer state; each layer
    keeps exactly ``n`` active weights.

    The gradient is the one passed to ``update``, which is why ``rigl`` wraps
    the optimizer: it must be the dense gradient of the loss w.r.t. the params
    (the model uses the params as they are; pruned ones are exactly 0). With
    ``check=True`` a mask update whose gradients are 0 at every inactive
    position raises (masked gradients give RigL nothing to grow by).

    Args:
      optimizer: the optax optimizer to wrap (it sees the masked gradients).
      sparsity: fraction of the pruned weights removed (the global target for
        ``"erk"``, per layer for ``"uniform"``), in ``[0, 1)``.
      end_step: ``T_end``, no mask update from this step on (>= 1; the paper
        uses 75% of training).
      drop_fraction: ``α``, the initial drop fraction, in ``[0, 1)`` (0.3).
      update_every: ``ΔT``, steps between mask updates (>= 1; 100).
      distribution: ``"erk"`` (default, as the paper) or ``"uniform"``.
      include, exclude: path rules selecting the sparsified leaves (default:
        kernels; see :func:`static_random`).
      seed: seed of the initial random masks.
      keep_state: path rule of wrapped-state leaves not reset (module docstring).
      check: verify at every update that the params are exactly 0 where the
        masks prune (true when the wrapper's updates reach the params
        unchanged) and that a mask update has non-zero gradients to grow by;
        under ``jit`` the ``ValueError`` surfaces as a JAX runtime error
        containing its message.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with state
      :class:`~sparsejax.mask_wrappers.DSTState`; ``update`` requires ``params``.

    Raises:
      ValueError: a bad argument (the message names it and the fix), e.g. a
        ``drop_fraction`` outside ``[0, 1)``, ``update_every`` or ``end_step``
        ``<= 0``, a ``sparsity`` outside ``[0, 1)``, an unknown
        ``distribution``, or an ``optimizer`` that is not an optax optimizer
        (RigL must wrap it to see the gradients); at ``init``, a wrapped state
        leaf that cannot be reset.

    Example:
      >>> params = {"w": jnp.ones((8, 8))}
      >>> tx = rigl(optax.adam(1e-3), 0.5, end_step=1000, update_every=10)
      >>> state = tx.init(params)
      >>> updates, state = tx.update({"w": jnp.ones((8, 8))}, state, params)
      >>> params = optax.apply_updates(params, updates)
      >>> int((params["w"] != 0).sum())
      32

    References:
      Evci, Gale, Menick, Castro, Elsen, "Rigging the Lottery: Making All
      Tickets Winners", ICML 2020 (official code: google-research/rigl,
      ``SparseRigLOptimizer``).
    """
    optimizer, args = mw.validate("rigl", optimizer, sparsity, distribution, seed, check,
                                required=("end_step",), drop_fraction=drop_fraction,
                                update_every=update_every, end_step=end_step)
    return _wrapper("rigl", optimizer, float(sparsity), grow="gradient", cosine=True,
                    distribution=distribution, include=include, exclude=exclude, seed=int(seed),
                    momentum=None, keep_state=keep_state, check=check, **args)


def snfs(optimizer: optax.GradientTransformation, sparsity: float, *, end_step: int,
         drop_fraction: float = 0.5, update_every: int = 100, momentum: float = 0.9,
         distribution: str = "uniform", include: PathRule | None = None,
         exclude: PathRule | None = None, seed: int = 0, keep_state: PathRule | None = None,
         check: bool = True) -> optax.GradientTransformationExtraArgs:
    """Sparse momentum (SNFS): prune by magnitude, redistribute and regrow by momentum.

    The wrapper keeps its own momentum ``m ← momentum · m + (1 − momentum) · g``
    of the raw dense gradients (so it works with any wrapped optimizer). At a
    mask update (as :func:`rigl`: ``t % update_every == 0``, ``0 < t <
    end_step``, cosine-decayed ``f(t)``):

    1. every layer drops ``k_l = floor(f(t) · n_l)`` active weights of smallest
       magnitude (``K = Σ k_l`` in all);
    2. the ``K`` regrowths are shared over layers in proportion to the mean
       ``|m|`` of each layer's active weights (measured before the drop),
       capped at each layer's inactive positions, with the excess re-shared
       (:func:`sparsejax.methods.momentum_budgets`, ``"proportional"``);
    3. each layer activates its share of inactive positions with the largest
       ``|m|``, at exactly 0 with zero optimizer state.

    The total number of active weights is invariant; per layer it moves with
    the momentum.

    Args:
      optimizer: the optax optimizer to wrap (it sees the masked gradients).
      sparsity: fraction of the pruned weights removed, in ``[0, 1)``.
      end_step: no mask update from this step on (>= 1); the prune rate decays
        to 0 there on a cosine, as in the paper.
      drop_fraction: the initial prune rate, in ``[0, 1)`` (0.5 in the paper).
      update_every: steps between mask updates (>= 1; the paper: every epoch).
      momentum: the momentum's decay, in ``[0, 1)`` (0.9).
      distribution: ``"uniform"`` (default) or ``"erk"`` initial sparsities.
      include, exclude: path rules selecting the sparsified leaves (default:
        kernels; see :func:`static_random`).
      seed: seed of the initial random masks.
      keep_state: path rule of wrapped-state leaves not reset (module docstring).
      check: verify the params are exactly 0 where the masks prune.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with state
      :class:`~sparsejax.mask_wrappers.DSTState` (its ``momentum`` field holds ``m``); ``update``
      requires ``params``.

    Raises:
      ValueError: a bad argument (named, with the fix), or a wrapped optimizer
        state leaf that cannot be reset (at ``init``).

    Example:
      >>> tx = snfs(optax.sgd(0.1, momentum=0.9), 0.8, end_step=1000)
      >>> state = tx.init({"a": jnp.ones((10, 10)), "b": jnp.ones((10, 10))})
      >>> int(state.masks["a"].sum() + state.masks["b"].sum())
      40

    References:
      Dettmers & Zettlemoyer, "Sparse Networks from Scratch: Faster Training
      without Losing Performance", arXiv:1907.04840, 2019.
    """
    optimizer, args = mw.validate("snfs", optimizer, sparsity, distribution, seed, check,
                                required=("end_step",), drop_fraction=drop_fraction,
                                update_every=update_every, end_step=end_step, momentum=momentum)
    return _wrapper("snfs", optimizer, float(sparsity), grow="momentum", cosine=True,
                    distribution=distribution, include=include, exclude=exclude, seed=int(seed),
                    keep_state=keep_state, check=check, **args)
