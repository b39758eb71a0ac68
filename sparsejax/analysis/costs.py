"""Training-cost model: per-layer forward FLOPs and each method's backward savings.

A linear layer (``Dense``, ``DenseGeneral``, ``Conv``) with forward cost ``F`` costs
``3F`` per training step when dense: the forward GEMM, the input gradient
``dA`` and the weight gradient ``dW``. A method scales the three terms by the
densities of the operands it sparsifies, ``cost = F · (f + a + w)``
(SPECS §3, "Training cost per layer" [derived]), and the scales follow from
the layer's :class:`~sparsejax.ops.Policy` (:func:`policy_fractions`), so a new
method gets its cost without a cost model of its own. With ``d_s`` the kept
fraction of the rule in slot ``s`` (:meth:`sparsejax.rule.Rule.density`;
1 without a rule)::

  forward f = d_weight · d_act · d_out
  dA      a = d_weight · d_act · d_out · d_grad_out
  dW      w = d_act_saved · d_act · d_out · d_grad_out   (· d_weight when dW is
              masked like W, ``straight_through=False``)

which gives, for the built-in methods:

=============================  =============  ==========  ==========
method                         forward ``f``  dA ``a``    dW ``w``
=============================  =============  ==========  ==========
dense, weight-gradient drop    1              1           1
pruning with fixed masks       ``d_w``        ``d_w``     ``d_w``
SWAT                           ``d_w``        ``d_w``     ``d_a``
STE / SR-STE, forward top-K W  ``d_w``        ``d_w``     1
forward top-K A                ``d_x``        ``d_x``     ``d_x``
meProp (hidden layers)         1              ``k/n``     ``k/n``
DSG                            ``1-γ``        ``1-γ``     ``1-γ``
=============================  =============  ==========  ==========

``d_w`` is the density of the weights the layer multiplies with, ``d_a`` that of
the saved activations (SWAT sets ``d_a = d_w``), ``d_x`` that of the forward
input, ``k/n`` meProp's kept fraction of the ``n`` output columns (its output
layer stays dense), ``γ`` DSG's sparsity. Pruning with fixed masks: ``3F(1 - s)``
on pruned layers; SWAT: ``F[(1 - s_w) + (1 - s_w) + (1 - s_a)]``; meProp:
``F + 2F·k/n``. Gradient drop zeroes ``dW`` *after* computing it, so it saves no
FLOPs (only communication). DSG's random projection (a sparse ternary GEMM of
small dimension) and the non-linear ops (norms, activations, attention's
activation-activation products) are not counted. These are arithmetic counts:
unstructured sparsity gives no speed-up on dense hardware.

References:
  Raihan & Aamodt, "Sparse Weight Activation Training", NeurIPS 2020 (SWAT's
  FLOP model; VGG-16 at 90/90 → 89.7% reduction); Sun et al., "meProp", ICML
  2017; Liu et al., "Dynamic Sparse Graph", ICLR 2019.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sparsejax.ops import Policy
from sparsejax.sparsifiers import Fixed

LINEAR_LAYERS = (nn.Dense, nn.DenseGeneral, nn.Conv)
Fractions = tuple[float, float, float]
PRUNED = Policy(weight=Fixed(), straight_through=False)
"""The policy of a layer under fixed pruning masks (magnitude pruning, ASP retraining):
its cost scales with the counted weight density (``policy_fractions(PRUNED, layer, d_w)``)."""


@dataclasses.dataclass(frozen=True)
class Layer:
    """A linear layer of a model, in call order.

    Attributes:
      path: module path (``"stage1_block1/conv1"``).
      kind: ``"conv"`` or ``"dense"``.
      kernel: parameter path of its kernel (``path + "/kernel"``).
      kernel_shape: shape of the kernel.
      forward_flops: FLOPs (2 × multiply-adds) of its forward pass per example.
      out_features: number of output features (meProp's ``n``).
    """

    path: str
    kind: str
    kernel: str
    kernel_shape: tuple[int, ...]
    forward_flops: int
    out_features: int


def linear_layers(model: nn.Module, input_shape: Sequence[int]) -> list[Layer]:
    """Finds every ``Dense``/``DenseGeneral``/``Conv`` call of ``model`` and its FLOPs.

    Traces ``model.init`` abstractly (``jax.eval_shape``: no FLOPs are spent)
    under ``nn.intercept_methods``; per example, a layer costs
    ``2 · (output size / out_features) · kernel size`` FLOPs (for a conv: output
    positions × ``kh·kw·cin/groups·cout``).

    Args:
      model: an unbound linen model taking ``(x, train=False)``.
      input_shape: shape of one example, e.g. ``(32, 32, 3)``.

    Returns:
      The layers in call order (a layer called twice appears twice).

    Example:
      >>> [l.forward_flops for l in linear_layers(zoo.MLP(features=(4,)), (8, 8, 1))]
      [512, 80]
    """
    found: list[Layer] = []

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        module = context.module
        if context.method_name == "__call__" and isinstance(module, LINEAR_LAYERS):
            kernel = module.get_variable("params", "kernel")
            features = module.features
            out_features = math.prod(features) if isinstance(features, tuple) else features
            per_example = math.prod(out.shape[1:]) // out_features
            path = "/".join(module.path)
            kind = "conv" if isinstance(module, nn.Conv) else "dense"
            found.append(Layer(path, kind, f"{path}/kernel", tuple(kernel.shape),
                               2 * per_example * math.prod(kernel.shape), out_features))
        return out

    def init():
        with nn.intercept_methods(interceptor):
            return model.init({"params": jax.random.key(0), "dropout": jax.random.key(0)},
                              jnp.zeros((1, *input_shape)), train=False)

    jax.eval_shape(init)
    return found


def policy_fractions(policy: Any, layer: Layer, weight_density: float = 1.0) -> Fractions:
    """The (forward, dA, dW) cost fractions of a layer trained under ``policy``.

    Args:
      policy: the layer's :class:`~sparsejax.ops.Policy` (``None``: dense).
      layer: the layer (its ``out_features`` is the width row rules keep ``k`` of).
      weight_density: the density of the weights for a weight rule whose kept
        fraction only the data decides (a :class:`~sparsejax.sparsifiers.Fixed`
        pruning mask): the counted non-zeros.

    Returns:
      ``(f, a, w)`` (see the module docstring); the layer's training FLOPs are
      ``forward_flops · (f + a + w)``.

    Example:
      >>> swat = Policy(weight=TopK(0.9), act_saved=TopK(0.9))
      >>> policy_fractions(swat, layer)
      (0.1, 0.1, 0.1)
    """
    if policy is None:
        return 1.0, 1.0, 1.0
    if not isinstance(policy, Policy):
        raise TypeError(f"policy_fractions needs a sparsejax.ops.Policy or None for layer "
                        f"{layer.path!r}, got {type(policy).__name__}; a method's policy is "
                        "method.layer_policy(info, sparsity).")

    def kept(rule: Any, fallback: float = 1.0) -> float:
        if rule is None:
            return 1.0
        d = rule.density(layer.out_features)
        return fallback if d is None else float(d)

    d_w = kept(policy.weight, weight_density)
    d_x, d_o, d_g = kept(policy.act), kept(policy.out), kept(policy.grad_out)
    d_a = kept(policy.act_saved)
    forward = d_w * d_x * d_o
    grad_input = forward * d_g
    grad_weight = d_a * d_x * d_o * d_g * (1.0 if policy.straight_through else d_w)
    return forward, grad_input, grad_weight


def step_flops(layers: Sequence[Layer],
               fractions: Mapping[str, Fractions] | None = None) -> float:
    """Training FLOPs of one example's step (forward + dA + dW over linear layers).

    Args:
      layers: from :func:`linear_layers`.
      fractions: kernel path -> ``(f, a, w)`` (:func:`policy_fractions`); missing
        paths (and ``None``) count as dense.

    Returns:
      ``Σ_l F_l · (f_l + a_l + w_l)``; the dense value is ``3 Σ_l F_l``.

    Example:
      >>> layers = linear_layers(zoo.MLP(features=(4,)), (8, 8, 1))
      >>> pruned = policy_fractions(PRUNED, layers[0], weight_density=0.5)
      >>> step_flops(layers, {"fc1/kernel": pruned}) / step_flops(layers)
      0.5675...
    """
    fractions = fractions or {}
    return sum(layer.forward_flops * sum(fractions.get(layer.kernel, (1.0, 1.0, 1.0)))
               for layer in layers)


def __getattr__(name: str) -> Any:
    if name in ("layer_fractions", "COSTS"):
        raise AttributeError(f"{__name__}.{name} was removed: a layer's cost now follows "
                             "from its Policy; use costs.policy_fractions(policy, layer) and "
                             "costs.step_flops(layers, fractions).")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
