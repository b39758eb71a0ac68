"""Input checks shared by every public entry point.

Errors name the offending parameter path (``where``) and say how to fix the
input; values that are traced under ``jit`` cannot be inspected and are
documented to follow the in-jit rules instead (e.g. NaNs are never kept).
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Mapping

import numpy as np
import jax
import jax.numpy as jnp
from jax import core, lax

ArrayLike = jax.typing.ArrayLike


def _where(where: str | None) -> str:
    return f" for {where!r}" if where else ""


def is_concrete(x: object) -> bool:
    """Whether ``x`` can be read on the host (not a tracer)."""
    return not isinstance(x, core.Tracer)


def check_sparsity(sparsity: ArrayLike, where: str | None = None) -> None:
    """Raises ``ValueError`` unless ``0 <= sparsity < 1`` (traced values pass).

    Args:
      sparsity: the fraction of entries to remove.
      where: parameter path or argument name to put in the message.
    """
    if not is_concrete(sparsity):
        return
    s = np.asarray(sparsity)
    if s.ndim != 0 or not np.issubdtype(s.dtype, np.number):
        raise TypeError(f"sparsity{_where(where)} must be a scalar number, got {sparsity!r}.")
    s = float(s)
    if not 0.0 <= s < 1.0:
        raise ValueError(
            f"sparsity{_where(where)} must be in [0, 1) (0 = dense, 0.9 = keep 10%), "
            f"got {s}. Sparsity 1.0 would remove every weight; exclude the layer "
            "instead (exclude=...).")


def check_finite(x: ArrayLike, where: str | None = None) -> None:
    """Raises ``ValueError`` if a concrete array holds NaN (traced arrays pass).

    Inside ``jit`` NaN magnitudes are simply never kept by the selection.
    """
    if not is_concrete(x):
        return
    a = np.asarray(x)
    if jax.numpy.issubdtype(a.dtype, jax.numpy.floating) and np.isnan(a).any():
        raise ValueError(
            f"NaN weights{_where(where)} ({int(np.isnan(a).sum())} of {a.size}); "
            "masks would be meaningless. Check the learning rate / loss for divergence "
            "or restore a finite checkpoint before pruning.")


def check_floating(x: ArrayLike, where: str | None = None) -> None:
    """Raises ``TypeError`` unless ``x`` has a floating dtype."""
    dtype = np.asarray(x).dtype if is_concrete(x) else x.dtype
    if not jax.numpy.issubdtype(dtype, jax.numpy.floating):
        raise TypeError(f"leaf{_where(where)} has dtype {dtype}; sparsity applies to "
                        "floating weights only. Exclude it (exclude=...) or cast it.")


def normalize_axis(axis: int, ndim: int, where: str | None = None) -> int:
    """Returns ``axis`` in ``[0, ndim)`` or raises a ``ValueError`` naming ``where``."""
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} is out of range for a rank-{ndim} array{_where(where)}; "
                         f"use an axis in [{-ndim}, {ndim}).")
    return axis % ndim


def plain(tree: Any) -> Any:
    """Unwraps Flax NNX ``Variable`` leaves (``nnx.Optimizer`` passes them to ``init``).

    Only a loaded ``flax.nnx`` can have put Variables in the tree, so the core
    does not import flax for plain optax users.

    Args:
      tree: any pytree.

    Returns:
      The tree with every NNX ``Variable`` replaced by its value.
    """
    nnx = sys.modules.get("flax.nnx")
    return tree if nnx is None else nnx.as_pure(tree)


def raise_if(flag: jax.Array, error: Callable[..., Exception], *operands: jax.Array) -> None:
    """Raises ``error(*operands)`` when ``flag`` holds, eagerly or from inside ``jit``.

    Concrete values raise here; traced ones raise from a ``jax.debug.callback``
    in a ``lax.cond`` branch taken only when ``flag`` holds (JAX then raises a
    runtime error whose message contains this error's).

    Args:
      flag: a bool scalar.
      error: builds the exception from the operands' host values.
      *operands: arrays the message needs (the step, per-layer counts).
    """
    if is_concrete(flag):
        if bool(flag):
            raise error(*(np.asarray(o) for o in operands))
        return

    def fail(*values):
        raise error(*values)

    lax.cond(flag, lambda ops: jax.debug.callback(fail, *ops), lambda ops: None, operands)


def pruned_nonzeros(counts: Any, names: list[str]) -> str:
    """``"N non-zero weights that its masks prune (n1 in 'a', ...)"``: the message part of a
    mask check, from per-layer counts (the three largest named)."""
    counts = np.asarray(counts).reshape(-1)
    worst = [f"{int(c)} in {n!r}" for c, n in sorted(zip(counts, names), key=lambda x: -x[0])
             if c > 0][:3]
    return f"{int(counts.sum())} non-zero weights that its masks prune ({', '.join(worst)})"


def check_pruned_zero(masks: Mapping[str, jax.Array], params: Mapping[str, jax.Array],
                      count: jax.Array, error: Callable[[list[str]], Callable[..., Exception]]
                      ) -> None:
    """The check of every transform that keeps pruned weights at exactly 0.

    From the second update on (``count > 0``) the params a masking transform
    receives are the ones its previous update produced: every entry its masks
    prune is exactly 0 (non-finite ones are divergence, not a chain error). A
    non-zero there means a later transform changed its updates, or the params
    were changed outside the optimizer; raise (see :func:`raise_if`).

    Args:
      masks: path -> bool mask (``True`` = kept) of the masked layers.
      params: path -> the layer's params, the same paths.
      count: the number of updates done so far.
      error: ``error(paths)`` returns ``fn(step, counts) -> Exception``, whose
        message can use :func:`pruned_nonzeros` and names the fix.
    """
    names = list(masks)
    if not names:
        return
    found = jnp.stack([jnp.sum(~masks[p] & (params[p] != 0) & jnp.isfinite(params[p]),
                               dtype=jnp.int32) for p in names])
    raise_if((count > 0) & jnp.any(found > 0), error(names), count, found)
