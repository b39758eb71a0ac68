"""Input checks shared by every public entry point.

Errors name the offending parameter path (``where``) and say how to fix the
input; values that are traced under ``jit`` cannot be inspected and are
documented to follow the in-jit rules instead (e.g. NaNs are never kept).
"""

from __future__ import annotations

import numpy as np
import jax
from jax import core

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
