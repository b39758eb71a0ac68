"""Sparse-training methods as hashable values: SWAT, STE/SR-STE, meProp, DSG,
and SWAT's forward-operand study (:class:`ForwardTopK`).

One module per method (:mod:`.swat`, :mod:`.ste`, :mod:`.meprop`, :mod:`.dsg`,
:mod:`.forward_topk`, :mod:`.baselines` for dense and weight-gradient drop) on
the protocol of :mod:`.base`; every name is re-exported here.

A :class:`Method` is a small frozen dataclass (a static ``jit`` argument, a
dict key) that answers, for every linear layer an adapter finds
(:func:`sparsejax.adapters.sparsify`):

* **which layers** are sparse and at which sparsity (:meth:`Method.plan`,
  computed once from all layers' kernel shapes and call order: uniform, ERK,
  first/last layer dense, include/exclude by module path);
* **which policy** of :mod:`sparsejax.ops` runs the layer and with which
  dynamic inputs (:meth:`Method.policy_aux`): every method is a row of the
  ops' one ``custom_vjp`` algebra, no method owns its own gradient code;
* **which state** the layer keeps between steps (:meth:`Method.init_state`,
  :meth:`Method.update`), a typed :class:`LayerState` pytree: cached thresholds
  and a step counter (SWAT's ``period``), the previous kernel (SWAT-M),
  :class:`SWATState`; a step counter for DSG's PRNG keys, :class:`DSGState`.
  The adapters store it, one variable per field, in an explicit variable collection named
  ``"sparsity"`` (linen) or in :class:`sparsejax.adapters.nnx.SparsityState`
  variables (NNX); nothing lives in hidden globals.

Layers are named by their module path (``"Conv_0"``, ``"ResNetBlock_0/Conv_1"``:
the ``params`` path without ``/kernel``); ``include`` / ``exclude`` are
:class:`sparsejax.paths.PathMatcher` rules (regex, sequence of regexes or a
callable ``(path, None) -> bool``) searched in that module path, ``exclude``
winning.

Training vs evaluation: the adapters run a layer in *training* mode when its
state is mutable (linen ``apply(..., mutable=["sparsity", ...])``; NNX unless
``model.eval()`` was called), updating the state; otherwise the state is read-only and, with ``sparse_eval=True``,
the forward uses the same sparse weights (SWAT evaluates with its top-K
weights, as the official code does), else the layer runs dense. Rules that only
shape the backward pass (SWAT's saved activation, meProp's ``dY``) apply in
read-only calls too, so a gradient taken without the state mutable still follows
the method (only the cached thresholds / counters do not advance); they cost
nothing when no gradient is taken.

:func:`grad_drop` is a plain optax transform (the model is left unmodified).

References:
  Raihan & Aamodt, "Sparse Weight Activation Training", NeurIPS 2020 (SWAT);
  Zhou et al., "Learning N:M Fine-grained Structured Sparse Neural Networks
  From Scratch", ICLR 2021 (STE/SR-STE); Sun et al., "meProp: Sparsified Back
  Propagation for Accelerated Deep Learning with Reduced Overfitting", ICML 2017;
  Liu et al., "Dynamic Sparse Graph for Efficient Deep Learning", ICLR 2019;
  Aji & Heafield, "Sparse Communication for Distributed Gradient Descent",
  EMNLP 2017 (gradient drop).
"""

from sparsejax.methods.base import (LayerInfo, LayerState, Method, State, boolean, integer,
                                    layer_state, one_of, option, stays_dense)
from sparsejax.methods.baselines import Dense, GradDropState, dense, grad_drop
from sparsejax.methods.dsg import DSG, DSGState, dsg
from sparsejax.methods.forward_topk import FORWARD_OPERANDS, ForwardTopK, forward_topk
from sparsejax.methods.meprop import MeProp, meprop
from sparsejax.methods.ste import STE, ste
from sparsejax.methods.swat import MOMENTUM_DENSITY_CAP, SWAT, SWATState, momentum_budgets, swat
from sparsejax.validate import check_sparsity

__all__ = ["DSG", "DSGState", "Dense", "FORWARD_OPERANDS", "ForwardTopK", "GradDropState",
           "LayerInfo", "LayerState", "MOMENTUM_DENSITY_CAP", "MeProp", "Method", "STE", "SWAT",
           "SWATState", "State", "boolean", "check_sparsity", "dense", "dsg", "forward_topk",
           "grad_drop", "integer", "layer_state", "meprop", "momentum_budgets", "one_of", "option",
           "ste", "stays_dense", "swat"]
