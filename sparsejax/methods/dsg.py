"""DSG (Dynamic Sparse Graph): output neurons chosen per row by a random projection."""

from __future__ import annotations

import dataclasses
import numbers
import zlib
from typing import Any, ClassVar, Optional

import jax
import jax.numpy as jnp

from sparsejax.methods.base import (Array, ArrayLike, Check, LayerInfo, LayerState, Method,
                                    first_last, layer_state, option)
from sparsejax.ops import Aux, Policy
from sparsejax.rule import SlotInput
from sparsejax.sparsifiers import RandomProjection
from sparsejax.validate import check_sparsity


def _open_unit(what: str) -> Check:
    def check(value: Any, where: str) -> None:
        if isinstance(value, bool) or not isinstance(value, numbers.Real) \
                or not 0.0 < value < 1.0:
            raise ValueError(f"{where} must be in (0, 1) ({what}), got {value!r}.")
    return check


def _seed(value: Any, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{where} must be an int, got {value!r}.")


@layer_state
class DSGState(LayerState):
    """A DSG layer's state.

    Attributes:
      sparsity: the layer's sparsity.
      step: training calls so far (folded into the projection key).
    """

    step: Optional[Array] = None


@dataclasses.dataclass(frozen=True)
class DSG(Method):
    """DSG: per row, compute only the output neurons a random projection ranks highest.

    Each output neuron's pre-activation is estimated with a sparse ternary random
    projection (Johnson–Lindenstrauss dimension for ``epsilon``) and every row
    (sample, or sample × position for a conv) keeps the top ``1 − sparsity``
    neurons, scored as if followed by a ReLU; the op's output is zero elsewhere and
    the backward reuses the same mask on ``dY``. A layer's bias is added after the
    op (Flax adds it outside ``dot_general`` / ``conv``), so a dropped neuron outputs
    its bias, and the scores ignore the bias (bias-free layers, as before a BN, are
    unaffected). The projection is redrawn every
    training step from a key folded from ``seed``, the layer path and the
    layer's step counter (state ``"step"``). The last layer (the classifier)
    stays dense.

    Conv → BN → ReLU models: DSG reorders layers to conv → ReLU → BN and
    re-applies the mask after BN ("double mask"), which needs a model change.
    Applied to an unmodified model this adapter applies the *single* mask at the
    conv output only: BN then shifts the dropped neurons to ``β − μ·γ/σ`` and the
    following ReLU may re-activate them, so the sparsity after BN is lower than
    ``sparsity`` (the memory saving of the paper's ordering is not reproduced).

    Args:
      sparsity: fraction γ of output neurons dropped per row, in ``[0, 1)``.
      epsilon: JL distortion in (0, 1).
      seed: base seed of the projections.
      include: module-path rule of the layers to sparsify.
      exclude: module-path rule of layers to keep dense.
      sparse_eval: evaluate with the selection too (True) or dense (False).

    Example:
      >>> dsg(0.8)

    References:
      Liu et al., "Dynamic Sparse Graph for Efficient Deep Learning", ICLR 2019.
    """

    sparsity: float = option(check=check_sparsity)
    _: dataclasses.KW_ONLY
    epsilon: float = option(0.5, _open_unit("Johnson–Lindenstrauss distortion; DSG uses 0.5"))
    seed: int = option(0, _seed)

    name: ClassVar[str] = "dsg"
    state_type: ClassVar[type] = DSGState

    def choose_layers(self, layers, chosen):
        return first_last(layers, chosen, False, True, self.name)

    def sparsities(self, shapes):
        return {p: float(self.sparsity) for p in shapes}

    def init_state(self, info, sparsity, kernel):
        return DSGState(sparsity=jnp.asarray(sparsity, jnp.float32), step=jnp.zeros((), jnp.int32))

    def key(self, info: LayerInfo, step: ArrayLike) -> Array:
        """The layer's projection key at ``step``: ``fold_in(fold_in(seed, crc32(path)), step)``."""
        layer = zlib.crc32(info.path.encode()) & 0x7FFFFFFF
        return jax.random.fold_in(jax.random.fold_in(jax.random.key(self.seed), layer), step)

    def policy_aux(self, info, sparsity, state, shared, training):
        if not (training or self.sparse_eval):
            return None, None
        policy = Policy(out=RandomProjection(sparsity, float(self.epsilon), relu=True))
        return policy, Aux(out=SlotInput(key=self.key(info, state.step)))

    def update(self, info, state, shared, stats, kernel):
        return state.replace(step=state.step + 1), shared


dsg = DSG
