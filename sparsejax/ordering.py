"""Backend hints: data dependences that order work on XLA:CPU, and the switch for them.

XLA:CPU drops ``optimization_barrier`` before scheduling, and its scheduler
places an operation as early as its operands allow: a buffer that needs
nothing (a zero fill, a masked kernel) is allocated at the start of the step
and held until its use. :func:`live` gives such work an operand that exists
only once some other value does. These hints change no value; they exist for
XLA:CPU's memory and are the only backend tactics of the sparse-op algebra
(:mod:`sparsejax.ops`, :mod:`sparsejax.ops.compaction`). The figures that justify them
are the ``benchmarks/bench_training_methods.py`` memory ratios (README,
"Benchmarks"); each hint, where it is used:

* the forward's ``W_s`` is built once the layer's input exists
  (:func:`sparsejax.ops` forward), or every layer's masked kernel is held
  through the forward pass;
* a packed saved activation (``Policy.saved``) is packed in the forward pass
  (the layer's output waits for it, :func:`depends_on`), or the pack runs
  lazily in the backward pass and the dense activation stays alive across the
  network; everything rebuilt from a packed or rematerialised residual, and
  a kernel rebuilt from its threshold, reads ``dY`` (:func:`after`), or XLA
  hoists the rebuild into the forward pass;
* a compacted layer's scatter fills its zeros only once its values exist
  (:func:`zeros_after` in :func:`sparsejax.ops.compaction.put`).

Switch: ``SPARSEJAX_BACKEND_HINTS=off`` (or :func:`set_enabled`) turns them
off; ``on`` forces them; the default ``auto`` applies them on the CPU backend
only, so GPU and TPU compilers schedule the plain math.

Example:
  >>> x = jnp.arange(3.0)
  >>> bool(live(x))
  True
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

import jax
import jax.numpy as jnp

ENV = "SPARSEJAX_BACKEND_HINTS"
_override: Optional[bool] = None


def set_enabled(value: Optional[bool]) -> None:
    """Turns the hints on (``True``), off (``False``) or back to the default (``None``:
    the environment variable, else on the CPU backend only).

    It affects functions traced after the call: a ``jit`` function already traced
    keeps its compiled program (set it before the first step, or use the
    environment variable)."""
    global _override
    if value is not None and not isinstance(value, bool):
        raise TypeError(f"set_enabled takes True, False or None, got {value!r}.")
    _override = value


def enabled() -> bool:
    """Whether the hints apply to what is traced now (see the module docstring).

    Raises:
      ValueError: ``SPARSEJAX_BACKEND_HINTS`` is not ``on``, ``off`` or ``auto``.
    """
    if _override is not None:
        return _override
    setting = os.environ.get(ENV, "auto").strip().lower()
    if setting not in ("on", "off", "auto"):
        raise ValueError(f"{ENV}={setting!r}; use on, off or auto (CPU only, the default).")
    return setting == "on" or (setting == "auto" and jax.default_backend() == "cpu")


def live(dep: jax.typing.ArrayLike) -> jax.Array:
    """A boolean scalar that is always True but, with the hints on, computed from ``dep``.

    ``where(live(dep), x, 0)`` is ``x``, scheduled only once ``dep`` exists.
    Exact: ``0 * finite`` is not folded for floats, and NaN cannot leak, since
    only ``isnan`` of one value of ``dep`` is read. With the hints off it is a
    constant, which the compiler folds away.

    Args:
      dep: any array (the value the work must wait for).

    Returns:
      ``True`` (traced from ``dep`` when the hints are on).
    """
    dep = jnp.asarray(dep)
    if dep.size == 0 or not enabled():
        return jnp.asarray(True)
    return jnp.isnan(dep.reshape(-1)[0]).astype(jnp.float32) * 0.0 == 0.0


def after(dep: jax.typing.ArrayLike, x: jax.Array) -> jax.Array:
    """``x``, computed only once ``dep`` exists (with the hints on)."""
    return jnp.where(live(dep), x, jnp.zeros((), x.dtype))


def zeros_after(dep: jax.typing.ArrayLike, dtype) -> jax.Array:
    """A zero scalar of ``dtype`` that, with the hints on, is computed from ``dep``.

    Unlike ``after(dep, zeros)``, which the compiler folds to a constant (both
    branches are 0), this selects between 0 and 1, so a buffer filled from it
    (a scatter's zeros) waits for ``dep``.
    """
    if not enabled():
        return jnp.zeros((), dtype)
    return jnp.where(live(dep), jnp.zeros((), dtype), jnp.ones((), dtype))


def depends_on(arrays: Sequence[Optional[jax.Array]], dtype) -> jax.Array:
    """A zero scalar of ``dtype`` that reads all of ``arrays`` (with the hints on).

    Adding it to a value makes that value wait for ``arrays`` (e.g. a layer's
    output for its packed saved activation). Exact for the same reason as
    :func:`live`: only ``max`` and ``isnan`` of the arrays are read, times 0.
    """
    if not enabled():
        return jnp.zeros((), dtype)
    probe = jnp.float32(0.0)
    for x in arrays:
        if x is None:
            continue
        m = jnp.max(x)
        probe = probe + (jnp.isnan(m).astype(jnp.float32) if jnp.issubdtype(m.dtype, jnp.floating)
                         else m.astype(jnp.float32))
    return (probe * 0.0).astype(dtype)
