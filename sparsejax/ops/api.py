"""The public sparse ops: drop-in ``dot_general`` / ``conv`` replacements, :func:`forward_weight`.

Each call checks its arguments, builds the op's static configuration
(:mod:`sparsejax.ops.linear` and the :class:`~sparsejax.ops.policy.Policy`)
and runs the ``custom_vjp`` of :mod:`sparsejax.ops.algebra`.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from sparsejax.ops.algebra import _Cfg, _run
from sparsejax.ops.linear import _Conv, _Dot, _tuple
from sparsejax.ops.policy import Aux, Policy, Stats

Array = jax.Array
ArrayLike = jax.typing.ArrayLike
DTypeLike = jax.typing.DTypeLike
# lax's argument types, as the drop-in signatures take them.
DotDims = tuple[tuple[Sequence[int], Sequence[int]], tuple[Sequence[int], Sequence[int]]]
Padding = str | Sequence[tuple[int, int]]


def _no_sharding(out_sharding, where):
    if out_sharding is not None:
        raise NotImplementedError(
            f"sparse ops{' in ' + where if where else ''} do not take out_sharding; shard with "
            "jax.jit in/out shardings (the selection is made of plain reductions).")


def _dot_cfg(dimension_numbers, precision, preferred_element_type, policy, where):
    (lc, rc), (lb, rb) = dimension_numbers
    dn = ((tuple(int(i) for i in lc), tuple(int(i) for i in rc)),
          (tuple(int(i) for i in lb), tuple(int(i) for i in rb)))
    return _Cfg(_Dot(dn, _tuple(precision), preferred_element_type), policy, where)


def forward_weight(w: ArrayLike, policy: Optional[Policy], aux: Optional[Aux] = None, *,
                   where: Optional[str] = None) -> Array:
    """The kernel ``W_s`` the forward of a sparse op under ``policy`` multiplies with.

    The same selection as the op's forward (``policy.weight`` on ``w`` with the
    ``w_*`` fields of ``aux``; a compacted channel rule keeps the same slices),
    so a plain ``lax.dot_general`` / ``conv_general_dilated`` with ``W_s``
    reproduces the op's forward output whenever the policy has no ``out`` rule
    (DSG's, which masks outputs, not weights) and no ``act`` rule (which masks
    the input).

    Args:
      w: the kernel.
      policy: the op's policy; ``None`` (a dense call) or a policy without a
        ``weight`` rule returns ``w`` unchanged.
      aux: the op's dynamic inputs.
      where: layer name for error messages.

    Returns:
      ``where(mask, w, 0)`` (``w``'s dtype), or ``w``.

    Example:
      >>> forward_weight(jnp.array([[1.], [4.], [3.], [2.]]),
      ...                Policy(weight=NM(2, 4))).ravel().tolist()
      [0.0, 4.0, 3.0, 0.0]

    References:
      Raihan & Aamodt, NeurIPS 2020 (SWAT's top-K forward weights); Mishra et
      al., arXiv:2104.08378 (N:M).
    """
    w = jnp.asarray(w)
    if policy is None or policy.weight is None:
        return w
    mask, _ = policy.weight.keep(w, (Aux() if aux is None else aux).weight, (), where)
    return jnp.where(mask, w, jnp.zeros((), w.dtype))


def sparse_dot_general_with_stats(
        lhs: ArrayLike, rhs: ArrayLike, dimension_numbers: DotDims,
        precision: lax.PrecisionLike = None, preferred_element_type: Optional[DTypeLike] = None,
        *, policy: Policy, aux: Optional[Aux] = None, where: Optional[str] = None,
        out_sharding: Any = None) -> tuple[Array, Stats]:
    """:func:`sparse_dot_general` that also returns the forward's :class:`Stats`.

    Returns:
      ``(y, stats)``; ``stats`` carries the thresholds to cache and the realised
      densities to monitor.
    """
    _no_sharding(out_sharding, where)
    cfg = _dot_cfg(dimension_numbers, precision, preferred_element_type, policy, where)
    return _run(cfg, lhs, rhs, aux)


def sparse_dot_general(lhs: ArrayLike, rhs: ArrayLike, dimension_numbers: DotDims,
                       precision: lax.PrecisionLike = None,
                       preferred_element_type: Optional[DTypeLike] = None, *, policy: Policy,
                       aux: Optional[Aux] = None, where: Optional[str] = None,
                       out_sharding: Any = None) -> Array:
    """Drop-in ``lax.dot_general`` whose forward and backward follow ``policy``.

    Args:
      lhs: the activation A.
      rhs: the kernel W.
      dimension_numbers: as ``lax.dot_general`` (batch dims allowed).
      precision: as ``lax.dot_general``.
      preferred_element_type: as ``lax.dot_general``.
      policy: which rule sparsifies which tensor (static).
      aux: dynamic inputs of the rules (traced; changing them never recompiles).
      where: the layer's name for error messages.
      out_sharding: accepted for Flax NNX compatibility; must be ``None``.

    Returns:
      The output of ``lax.dot_general(lhs, W_s, ...)`` (masked by ``policy.out``).

    Example:
      >>> import functools, flax.linen as nn
      >>> dg = functools.partial(sparse_dot_general, policy=Policy(weight=TopK(0.8),
      ...                        act_saved=TopK(0.8)))
      >>> layer = nn.Dense(4, dot_general=dg)

    References:
      Raihan & Aamodt, NeurIPS 2020 (SWAT); Sun et al., ICML 2017 (meProp);
      Liu et al., ICLR 2019 (DSG); Zhou et al., ICLR 2021 (SR-STE).
    """
    return sparse_dot_general_with_stats(
        lhs, rhs, dimension_numbers, precision, preferred_element_type, policy=policy, aux=aux,
        where=where, out_sharding=out_sharding)[0]


def _conv_cfg(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
              dimension_numbers, feature_group_count, batch_group_count, precision,
              preferred_element_type, policy, where):
    dn = lax.conv_dimension_numbers(jnp.shape(lhs), jnp.shape(rhs), dimension_numbers)
    op = _Conv(_tuple(window_strides), _tuple(padding), _tuple(lhs_dilation),
               _tuple(rhs_dilation), dn, int(feature_group_count), int(batch_group_count),
               _tuple(precision), preferred_element_type)
    return _Cfg(op, policy, where)


def sparse_conv_general_dilated_with_stats(
        lhs: ArrayLike, rhs: ArrayLike, window_strides: Sequence[int], padding: Padding,
        lhs_dilation: Optional[Sequence[int]] = None,
        rhs_dilation: Optional[Sequence[int]] = None,
        dimension_numbers: lax.ConvGeneralDilatedDimensionNumbers = None,
        feature_group_count: int = 1, batch_group_count: int = 1,
        precision: lax.PrecisionLike = None, preferred_element_type: Optional[DTypeLike] = None,
        *, policy: Policy, aux: Optional[Aux] = None, where: Optional[str] = None,
        out_sharding: Any = None) -> tuple[Array, Stats]:
    """:func:`sparse_conv_general_dilated` that also returns the forward's :class:`Stats`."""
    _no_sharding(out_sharding, where)
    cfg = _conv_cfg(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                    dimension_numbers, feature_group_count, batch_group_count, precision,
                    preferred_element_type, policy, where)
    return _run(cfg, lhs, rhs, aux)


def sparse_conv_general_dilated(
        lhs: ArrayLike, rhs: ArrayLike, window_strides: Sequence[int], padding: Padding,
        lhs_dilation: Optional[Sequence[int]] = None,
        rhs_dilation: Optional[Sequence[int]] = None,
        dimension_numbers: lax.ConvGeneralDilatedDimensionNumbers = None,
        feature_group_count: int = 1, batch_group_count: int = 1,
        precision: lax.PrecisionLike = None, preferred_element_type: Optional[DTypeLike] = None,
        *, policy: Policy, aux: Optional[Aux] = None, where: Optional[str] = None,
        out_sharding: Any = None) -> Array:
    """Drop-in ``lax.conv_general_dilated`` whose forward and backward follow ``policy``.

    Args:
      lhs: the activation A.
      rhs: the kernel W.
      window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
      feature_group_count, batch_group_count, precision, preferred_element_type:
        as ``lax.conv_general_dilated``.
      policy: which rule sparsifies which tensor (static).
      aux: dynamic inputs of the rules (traced).
      where: the layer's name for error messages.
      out_sharding: accepted for Flax NNX compatibility; must be ``None``.

    Returns:
      The convolution of A with the sparse kernel (masked by ``policy.out``).

    Example:
      >>> import functools, flax.linen as nn
      >>> conv = functools.partial(sparse_conv_general_dilated,
      ...                          policy=Policy(weight=TopK(0.8), act_saved=TopK(0.8)))
      >>> layer = nn.Conv(8, (3, 3), conv_general_dilated=conv)

    References:
      Raihan & Aamodt, "Sparse Weight Activation Training", NeurIPS 2020.
    """
    return sparse_conv_general_dilated_with_stats(
        lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
        feature_group_count, batch_group_count, precision, preferred_element_type,
        policy=policy, aux=aux, where=where, out_sharding=out_sharding)[0]
