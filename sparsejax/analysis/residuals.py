"""Bytes each linear layer saves for the backward pass, read from JAX's saved residuals.

A portable memory measure: what ``jax.vjp`` keeps alive between the forward
and the backward pass of each sparse op (and, for comparison, what a dense
``dot_general`` / ``conv_general_dilated`` with the same operands keeps),
independent of any compiler's buffer assignment or scheduling. Parameters are
not counted: a kernel saved as itself costs no memory beyond the parameter.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Iterator

import jax
import jax.extend
import numpy as np

_DENSE_OPS = ("dot_general", "conv_general_dilated")


@dataclasses.dataclass(frozen=True)
class LayerResiduals:
    """What one linear op saves for its backward pass.

    Attributes:
      path: the op's name stack (the Flax module path, e.g. ``"model/Conv_1"``).
      sparse: True for a sparse op (a sparsejax ``custom_vjp``), False for a
        plain ``dot_general`` / ``conv_general_dilated``.
      saved_bytes: bytes of the residuals the op saves, its kernel excluded.
      dense_bytes: bytes a dense op with the same operands saves (its input
        activation).
    """

    path: str
    sparse: bool
    saved_bytes: int
    dense_bytes: int


def _nbytes(aval: Any) -> int:
    return math.prod(aval.shape) * np.dtype(aval.dtype).itemsize


def _saved_bytes(eqn: Any) -> int:
    """Bytes of the residuals ``jax.vjp`` keeps for one equation, its kernel (input 1) excluded."""
    avals = [jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype) for v in eqn.invars]
    single = jax.extend.core.Jaxpr([], eqn.invars, eqn.outvars, [eqn])
    fn = lambda *args: jax.core.eval_jaxpr(single, [], *args)
    closed, shape = jax.make_jaxpr(lambda *a: jax.vjp(fn, *a), return_shape=True)(*avals)
    jaxpr = closed.jaxpr
    n_res = len(jax.tree.leaves(shape[1]))
    kernel = jaxpr.invars[1]
    seen, total = set(), 0
    for var in jaxpr.outvars[len(jaxpr.outvars) - n_res:]:
        if isinstance(var, jax.extend.core.Literal) or var is kernel or id(var) in seen:
            continue  # a literal, the parameter itself, or a residual counted already
        seen.add(id(var))
        total += _nbytes(var.aval)
    return total


def _is_sparse_op(eqn: Any) -> bool:
    inner = eqn.params.get("call_jaxpr")
    return (eqn.primitive.name.startswith("custom_vjp_call") and inner is not None
            and len(eqn.invars) >= 2
            and any(e.primitive.name in _DENSE_OPS for e in _eqns(inner)))


def _eqns(jaxpr: Any) -> Iterator[Any]:
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    for eqn in jaxpr.eqns:
        yield eqn


def _walk(jaxpr: Any) -> Iterator[tuple[Any, bool]]:
    for eqn in _eqns(jaxpr):
        if _is_sparse_op(eqn):
            yield eqn, True
            continue
        if eqn.primitive.name in _DENSE_OPS:
            yield eqn, False
            continue
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                if hasattr(getattr(sub, "jaxpr", sub), "eqns"):
                    yield from _walk(sub)


def residual_bytes(fn: Callable[..., Any], *args: Any) -> list[LayerResiduals]:
    """Bytes each linear layer of ``fn`` saves for the backward pass.

    Traces ``fn`` (nothing runs) and, for every sparse op and every plain
    ``dot_general`` / ``conv_general_dilated`` in it, asks JAX which residuals
    its vector-Jacobian product keeps. A dense op keeps its input activation
    (and its kernel, a parameter, not counted); SWAT's op keeps the masked
    activation and a threshold, or their packed form (``Policy.saved``).

    Args:
      fn: a function of ``args`` (e.g. the loss of a sparsified model as a
        function of its parameters).
      *args: its arguments (arrays or ``jax.ShapeDtypeStruct``).

    Returns:
      One :class:`LayerResiduals` per op, in trace order. Ops inside
      ``scan`` / ``while`` bodies are reported once per body.

    Example:
      >>> layers = residual_bytes(lambda p: jnp.sum(model.apply(p, x)), params)
      >>> sum(l.saved_bytes for l in layers if l.sparse) / \
      ...     sum(l.dense_bytes for l in layers if l.sparse)   # doctest: +SKIP

    References:
      Raihan & Aamodt, "Sparse Weight Activation Training", NeurIPS 2020 (§4:
      the memory SWAT saves is the sparse activations and weights kept for the
      backward pass).
    """
    closed = jax.make_jaxpr(fn)(*args)
    out = []
    for eqn, sparse in _walk(closed.jaxpr):
        stack = str(eqn.source_info.name_stack)
        out.append(LayerResiduals(stack, sparse, _saved_bytes(eqn), _nbytes(eqn.invars[0].aval)))
    return out
