"""What the optimizer wrappers that own masks share: :mod:`sparsejax.dst` (static random,
SET, RigL, SNFS) and :mod:`sparsejax.alternating` (AC/DC).

Their state :class:`DSTState`; the one argument check of their factories
(:func:`validate`); the layers they sparsify and their active counts
(:func:`layers`); reading and writing the layers' leaves of a tree
(:func:`from_tree`, :func:`to_tree`, :func:`replace`); the optimizer-state reset
for any optax state, walked by key paths (:func:`state_plan`,
:func:`reset_state`; the rule is in :mod:`sparsejax.dst`'s docstring); and the
start of every update (:func:`needs_params`, :func:`masked_layers`: the params
must hold exact zeros where the masks prune).
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sparsejax import select
from sparsejax.distributions import erk_sparsities
from sparsejax.paths import PathMatcher, PathRule, flatten, path_str, selected_paths
from sparsejax.validate import check_pruned_zero, check_sparsity, pruned_nonzeros

Array = jax.Array

DISTRIBUTIONS = ("uniform", "erk")


class DSTState(NamedTuple):
    """State of the dynamic-sparse-training wrappers (:func:`rigl`, ...).

    Attributes:
      count: int32 number of updates done.
      masks: bool masks with the params' structure (``None`` for untouched
        leaves); ``True`` = active.
      inner_state: the wrapped optimizer's state (entries of dropped and grown
        positions reset to 0 at each mask update).
      momentum: SNFS's exponential average of the raw gradients (float32, the
        masks' structure); ``None`` for the other methods.
    """

    count: Array
    masks: Any
    inner_state: Any
    momentum: Any

    holds_masks = True  # sparsejax.get_masks finds it


# ----------------------------------------------------------------------------- validation


# Every numeric argument of the factories (here and in sparsejax.alternating): name ->
# (minimum integer, or "fraction" for a number in [0, 1); None allowed; what it means).
ARGUMENTS: dict[str, tuple[int | str, bool, str]] = {
    "drop_fraction": ("fraction", False, "fraction of the active weights replaced per update, "
                                         "e.g. 0.3"),
    "update_every": (1, False, "steps between mask updates, e.g. 100"),
    "end_step": (1, True, "no mask update from this step on, e.g. 75% of training; None "
                          "(where allowed) never stops"),
    "momentum": ("fraction", False, "decay of the gradient momentum regrowth ranks by, e.g. 0.9"),
    "warmup_steps": (0, False, "dense steps before the first sparse phase, e.g. 10% of training"),
    "sparse_steps": (1, False, "length of each compressed (sparse) phase, e.g. 5 epochs"),
    "dense_steps": (1, True, "length of each decompressed (dense) phase, e.g. 5 epochs; None: "
                             "as sparse_steps"),
    "finetune_step": (0, True, "the step the final sparse phase starts, e.g. 90% of training; "
                               "None: phases alternate to the end"),
}


def validate(method: str, optimizer: Any, sparsity: Any, distribution: Any, seed: Any,
              check: Any, *, distributions: tuple[str, ...] = DISTRIBUTIONS,
              required: tuple[str, ...] = (), **arguments: Any
              ) -> tuple[optax.GradientTransformationExtraArgs, dict[str, Any]]:
    """The one place the factories check their arguments.

    Args:
      method: the factory's name (error messages read ``method(arg=...)``).
      optimizer, sparsity, distribution, seed, check: the common arguments.
      distributions: the distributions the factory accepts.
      required: names of ``arguments`` that may not be ``None`` even if
        :data:`ARGUMENTS` allows it (RigL's ``end_step``).
      **arguments: the factory's numeric arguments, each checked by its
        :data:`ARGUMENTS` rule.

    Returns:
      The optimizer with extra-args support and ``arguments`` as Python
      ``int`` / ``float`` (``None`` kept where allowed).

    Raises:
      ValueError: naming the first bad argument, its valid range and an example.
    """
    if not isinstance(optimizer, optax.GradientTransformation) and callable(
            getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None)):
        # optax.MultiSteps and other optimizer objects with init / update (extra args ok)
        optimizer = optax.GradientTransformationExtraArgs(optimizer.init, optimizer.update)
    if not isinstance(optimizer, optax.GradientTransformation):
        why = ("; it regrows by the raw gradients, which only a wrapper around the optimizer "
               "sees" if method in ("rigl", "snfs") else "")
        raise ValueError(
            f"{method}(optimizer=...) must be the optax optimizer it wraps, e.g. "
            f"{method}(optax.sgd(0.1, momentum=0.9), 0.9, ...){why}; got {optimizer!r}. It is not "
            "a link of an optax.chain: chain other transforms inside it instead.")
    if isinstance(sparsity, (bool, str)) or np.ndim(sparsity) != 0 or not np.issubdtype(
            np.asarray(sparsity).dtype, np.number):
        raise ValueError(f"{method}(sparsity=...) must be a number in [0, 1) (0.9 = keep 10% "
                         f"of each pruned layer's weights), got {sparsity!r}.")
    check_sparsity(sparsity, f"{method}(sparsity)")
    if not isinstance(distribution, str) or distribution not in distributions:
        names = {"uniform": "'uniform' (every layer at the sparsity)",
                 "erk": "'erk' (Erdős–Rényi-Kernel)", "global": "'global' (one threshold)"}
        raise ValueError(f"{method}(distribution=...) must be "
                         f"{' or '.join(names[d] for d in distributions)}, got {distribution!r}.")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"{method}(seed=...) must be an integer (the random masks' seed), "
                         f"got {seed!r}.")
    if not isinstance(check, bool):
        raise ValueError(f"{method}(check=...) must be True or False, got {check!r}.")
    out = {}
    for name, value in arguments.items():
        rule, optional, what = ARGUMENTS[name]
        if value is None and optional and name not in required:
            out[name] = None
        elif rule == "fraction":
            if isinstance(value, bool) or not isinstance(value, numbers.Real) \
                    or not 0.0 <= float(value) < 1.0:
                raise ValueError(f"{method}({name}=...) must be a number in [0, 1) ({what}), "
                                 f"got {value!r}.")
            out[name] = float(value)
        else:
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) \
                    or value < rule:
                raise ValueError(f"{method}({name}=...) must be an integer >= {rule} ({what}), "
                                 f"got {value!r}.")
            out[name] = int(value)
    return optax.with_extra_args_support(optimizer), out


# ----------------------------------------------------------------------------- layers


def layers(params: Any, sparsity: float, distribution: str, include: PathRule | None,
            exclude: PathRule | None) -> dict[str, tuple[tuple[int, ...], int]]:
    """Selected leaf path -> (shape, number of active weights)."""
    leaves = dict(flatten(params)[0])
    chosen = selected_paths(params, include, exclude)
    if not chosen:
        warnings.warn("dynamic sparse training selected no leaf to sparsify (see the 'sparsejax' "
                      "logger at INFO level for why); the optimizer runs dense.", stacklevel=4)
    shapes = {p: tuple(jnp.shape(leaves[p])) for p in chosen}
    if distribution == "erk":
        per_layer = erk_sparsities(shapes, sparsity)
    else:
        per_layer = {p: sparsity for p in chosen}
    return {p: (shapes[p], select.keep_count(float(per_layer[p]), math.prod(shapes[p])))
            for p in chosen}


def to_tree(params: Any, values: dict[str, Any]) -> Any:
    pairs, treedef = flatten(params)
    return jax.tree_util.tree_unflatten(treedef, [values.get(p) for p, _ in pairs])


def replace(tree: Any, values: dict[str, Any]) -> Any:
    """``tree`` with the leaves at the paths of ``values`` replaced."""
    pairs, treedef = flatten(tree)
    return jax.tree_util.tree_unflatten(treedef, [values.get(p, x) for p, x in pairs])


def from_tree(tree: Any, names: Any) -> dict[str, Any]:
    pairs = dict(flatten(tree)[0])
    return {p: pairs[p] for p in names}



# ----------------------------------------------------------------------------- state reset


def warn_unmatched_state(keep_state: PathMatcher | None, optimizer: Any, params: Any) -> None:
    """At a wrapper's ``init``: warns about ``keep_state=`` regexes that match no path of the
    optimizer's state (a typo would otherwise reset what the user meant to keep)."""
    if keep_state is not None:
        keep_state.warn_unmatched([p for p, _ in flatten(jax.eval_shape(optimizer.init,
                                                                        params))[0]])


def state_plan(state: Any, params: Any, layers: dict, keep_state: PathMatcher | None,
                method: str) -> list[str | None]:
    """For every leaf of ``state`` (flatten order), the pruned parameter whose entries it
    holds entrywise (to reset), or ``None`` (left unchanged). Raises for the leaves that
    cannot be mapped (see the module docstring)."""
    param_keys = {tuple(kp): path_str(kp)
                  for kp, _ in jax.tree_util.tree_flatten_with_path(params)[0]}
    pairs = jax.tree_util.tree_flatten_with_path(state)[0]
    under: dict[tuple, int] = {}    # prefix -> number of state leaves under it
    matched: dict[tuple, int] = {}  # prefix -> leaves under it that are prefix + a param path
    for kp, _ in pairs:
        kp = tuple(kp)
        for i in range(len(kp) + 1):
            under[kp[:i]] = under.get(kp[:i], 0) + 1
            if kp[i:] in param_keys:
                matched[kp[:i]] = matched.get(kp[:i], 0) + 1
    pruned_shapes = {}
    for path, (shape, _) in layers.items():
        pruned_shapes.setdefault(shape, []).append(path)
    plan = []
    for kp, leaf in pairs:
        kp, spath = tuple(kp), path_str(kp)
        shape = tuple(jnp.shape(leaf))
        owner = next((param_keys[kp[i:]] for i in range(len(kp) + 1)
                      if kp[i:] in param_keys and matched.get(kp[:i]) == under[kp[:i]]), None)
        kept = keep_state is not None and keep_state(spath, leaf) is not None
        if owner is not None:
            if owner not in layers or math.prod(shape) <= 1:
                plan.append(None)
            elif shape == layers[owner][0]:
                plan.append(None if kept else owner)
            elif kept:
                plan.append(None)
            else:
                raise ValueError(
                    f"{method}: the wrapped optimizer's state leaf {spath!r} {shape} belongs to "
                    f"the pruned parameter {owner!r} {layers[owner][0]} but has another shape (a "
                    "factored statistic, e.g. Adafactor's v_row / v_col), so its entries cannot "
                    "be reset when connections are dropped or grown. Pass "
                    f"{method}(..., keep_state={spath!r}) to leave it unchanged, or use an "
                    "optimizer whose state is per entry.")
        elif len(shape) >= 1 and shape in pruned_shapes and not kept:
            raise ValueError(
                f"{method}: the wrapped optimizer's state leaf {spath!r} has the shape {shape} of "
                f"the pruned parameter(s) {pruned_shapes[shape][:3]} but is not inside a sub-tree "
                "structured like the params, so which parameter's entries it holds is ambiguous "
                "and it cannot be reset when connections are dropped or grown. Keep per-parameter "
                "state in a params-structured field (e.g. jax.tree.map(jnp.zeros_like, params)), "
                f"or pass {method}(..., keep_state={spath!r}) to leave it unchanged.")
        else:
            plan.append(None)
    return plan


def reset_state(state: Any, plan: list[str | None], changed: dict[str, Array]) -> Any:
    leaves, treedef = jax.tree_util.tree_flatten(state)
    out = [leaf if owner is None else jnp.where(changed[owner], jnp.zeros((), leaf.dtype), leaf)
           for leaf, owner in zip(leaves, plan)]
    return jax.tree_util.tree_unflatten(treedef, out)



def needs_params(method: str, params: Any) -> Any:
    if params is None:
        raise ValueError(f"{method} needs the params: call tx.update(grads, opt_state, params) "
                         "(flax TrainState and nnx.Optimizer pass them).")
    return params


def masked_layers(method: str, state: Any, params: Any, names: list[str], check: bool
                   ) -> tuple[dict[str, Array], dict[str, Array]]:
    """A wrapper's masks and params of its layers ``names``; with ``check``, verifies that
    the params hold exact zeros where the masks prune (see :func:`chain_error`)."""
    masks = from_tree(state.masks, names)
    p_sel = from_tree(params, names)
    if check:
        check_pruned_zero(masks, p_sel, state.count, lambda paths: chain_error(method, paths))
    return masks, p_sel


def chain_error(method: str, names: list[str]) -> Callable[..., Exception]:
    def error(step, counts):
        return ValueError(
            f"{method}: at step {int(step)} the params hold {pruned_nonzeros(counts, names)}: "
            "its updates were changed before "
            "optax.apply_updates (a transform chained after it) or the params were changed "
            "outside the optimizer. Chain other transforms inside it: "
            f"{method}(optax.chain(..., optimizer), ...). If the params are changed between steps "
            f"on purpose, pass {method}(..., check=False).")
    return error


