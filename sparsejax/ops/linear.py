"""The two linear ops a sparse op wraps (dot_general, conv) with their static arguments.

:class:`_Dot` and :class:`_Conv` are hashable (part of the op's static
configuration) and answer what :mod:`sparsejax.ops.algebra` asks of a linear
op: apply it, which axes are output features, which kernel axis is an input or
output channel (for channel compaction), and DSG's random-projection estimate
of the output.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from sparsejax.sparsifiers import ternary_projection

Array = jax.Array


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
