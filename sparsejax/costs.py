"""Training-cost model: per-layer forward FLOPs and each method's backward savings.

A linear layer (``Dense``, ``DenseGeneral``, ``Conv``) with forward cost ``F`` costs
``3F`` per training step when dense: the forward GEMM, the input gradient
``dA`` and the weight gradient ``dW``. A method scales the three terms by the
densities of the operands it sparsifies, ``cost = F · (f + a + w)``
(SPECS §3, "Training cost per layer" [derived]):

=============================  =============  ==========  ==========
method (cost model)            forward ``f``  dA ``a``    dW ``w``
=============================  =============  ==========  ==========
dense, weight-gradient drop    1              1           1
pruning with fixed masks       ``d_w``        ``d_w``     ``d_w``
SWAT                           ``d_w``        ``d_w``     ``d_a``
STE / SR-STE (N:M forward)     ``d_w``        ``d_w``     1
meProp (hidden layers)         1              ``k/n``     ``k/n``
DSG                            ``1-γ``        ``1-γ``     ``1-γ``
forward top-K, weights         ``d_w``        ``d_w``     1
forward top-K, activations     ``d_x``        ``d_x``     ``d_x``
=============================  =============  ==========  ==========

``d_w`` is the density of the weights the layer multiplies with, ``d_a`` that of
the saved activations (SWAT sets ``d_a = d_w``), ``k/n`` meProp's kept fraction
of the ``n`` output columns (its output layer stays dense), ``γ`` DSG's
sparsity, ``d_x = 1 - s`` the kept fraction of the layer's input in SWAT's
forward-operand study (:func:`sparsejax.methods.forward_topk`): cost model
``"forward_topk_w"`` (top-K forward weights: the fractions of ``"ste"``) and
``"forward_topk_a"`` (top-K forward input A: the forward and ``dA`` run only
at the kept input positions, ``dW`` with the sparse A; passed like DSG's,
``sparsified`` kernel paths with ``keep = d_x``). Pruning with fixed masks:
``3F(1 - s)`` on pruned layers; SWAT: ``F[(1 - s_w) + (1 - s_w) + (1 - s_a)]``;
meProp: ``F + 2F·k/n``. Gradient drop zeroes ``dW`` *after* computing it, so
it saves no FLOPs (only communication). DSG's random projection (a sparse
ternary GEMM of small dimension) and the non-linear ops (norms, activations,
attention's activation-activation products) are not counted. These are
arithmetic counts: unstructured sparsity gives no speed-up on dense hardware.

References:
  Raihan & Aamodt, "Sparse Weight Activation Training", NeurIPS 2020 (SWAT's
  FLOP model; VGG-16 at 90/90 → 89.7% reduction); Sun et al., "meProp", ICML
  2017; Liu et al., "Dynamic Sparse Graph", ICLR 2019.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Collection, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

LINEAR_LAYERS = (nn.Dense, nn.DenseGeneral, nn.Conv)
COSTS = ("dense", "grad_drop", "masked", "swat", "ste", "meprop", "dsg", "forward_topk_w",
         "forward_topk_a")


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


def layer_fractions(cost: str, layer: Layer, density: float, *,
                    sparsified: Collection[str] = (),
                    kept: Callable[[int], int] | None = None,
                    keep: float = 1.0) -> tuple[float, float, float]:
    """The (forward, dA, dW) cost fractions of one layer under a method's cost model.

    Args:
      cost: one of :data:`COSTS` (see the module docstring's table).
      layer: the layer.
      density: density of the weights the layer multiplies with (1 for dense).
      sparsified: kernel paths the method applies to (meProp, DSG, forward top-K
        activations).
      kept: meProp's kept output columns for a layer width.
      keep: DSG's kept fraction of output neurons ``1 - γ``; for
        ``"forward_topk_a"`` the kept fraction of the input activation ``1 - s``.

    Returns:
      ``(f, a, w)``; the layer's training FLOPs are ``forward_flops · (f + a + w)``.
    """
    if cost not in COSTS:
        raise ValueError(f"Unknown cost model {cost!r}; valid: {', '.join(COSTS)}.")
    if cost in ("masked", "swat"):  # SWAT: activation density = weight density.
        return density, density, density
    if cost in ("ste", "forward_topk_w"):
        return density, density, 1.0
    if layer.kernel in sparsified and cost == "meprop":
        r = min(kept(layer.out_features), layer.out_features) / layer.out_features
        return 1.0, r, r
    if layer.kernel in sparsified and cost in ("dsg", "forward_topk_a"):
        return keep, keep, keep
    return 1.0, 1.0, 1.0


def step_flops(layers: Sequence[Layer], cost: str, densities: Mapping[str, float],
               **cost_args: Any) -> float:
    """Training FLOPs of one example's step (forward + dA + dW over linear layers).

    Args:
      layers: from :func:`linear_layers`.
      cost: the phase's cost model.
      densities: kernel path -> weight density (missing paths count as dense).
      **cost_args: ``sparsified``, ``kept``, ``keep`` (see :func:`layer_fractions`).

    Returns:
      ``Σ_l F_l · (f_l + a_l + w_l)``; the dense value is ``3 Σ_l F_l``.

    Example:
      >>> layers = linear_layers(zoo.MLP(features=(4,)), (8, 8, 1))
      >>> step_flops(layers, "masked", {"fc1/kernel": 0.5}) / step_flops(layers, "dense", {})
      0.5675...
    """
    total = 0.0
    for layer in layers:
        f, a, w = layer_fractions(cost, layer, densities.get(layer.kernel, 1.0), **cost_args)
        total += layer.forward_flops * (f + a + w)
    return total
