"""Data dependences that order work on XLA:CPU, where nothing else can.

XLA:CPU drops ``optimization_barrier`` before scheduling, and its scheduler
places an operation as early as its operands allow: a buffer that needs
nothing (a zero fill, a masked kernel) is allocated at the start of the step
and held until its use. :func:`live` gives such work an operand that exists
only once some other value does.

Example:
  >>> x = jnp.arange(3.0)
  >>> bool(live(x))
  True
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def live(dep: jax.typing.ArrayLike) -> jax.Array:
    """A boolean scalar that is always True but is computed from ``dep``.

    ``where(live(dep), x, 0)`` is ``x``, scheduled only once ``dep`` exists.
    Exact: ``0 * finite`` is not folded for floats, and NaN cannot leak, since
    only ``isnan`` of one value of ``dep`` is read.

    Args:
      dep: any array (the value the work must wait for).

    Returns:
      A traced ``True``.
    """
    dep = jnp.asarray(dep)
    if dep.size == 0:
        return jnp.asarray(True)
    return jnp.isnan(dep.reshape(-1)[0]).astype(jnp.float32) * 0.0 == 0.0
