"""Activation-sparsity monitor: metrics returned from inside the jitted step.

Spartan's observation is that a sparsity monitor must be cheap enough to run
during training. Here each sparse layer estimates, from an evenly strided
sample of tiles of its input activation (``samples`` tiles of ``tile``
consecutive entries, so a few KB are read whatever the tensor size):

* ``act_zero_fraction`` – fraction of zero entries (ReLU sparsity);
* ``act_tile_occupancy`` – fraction of tiles holding at least one non-zero
  (what a tile-skipping sparse GEMM or zero-value compression can exploit);
* ``act_tile_density`` – mean fraction of non-zeros inside the occupied tiles.

and reports, from the sparse op's :class:`sparsejax.ops.Stats`, the *realised*
sparsities actually used (exact counts, meaningful when thresholds are cached
or estimated): ``w_sparsity`` (forward weights), ``a_saved_sparsity`` (the
activation saved for dW) and ``out_sparsity`` (DSG's dropped outputs).

The linen adapter sows them into the ``"sparsity_metrics"`` collection (only
when the caller makes it mutable: no cost otherwise); the NNX adapter into
:class:`SparsityMetric` variables when built with ``monitor=...``.
:func:`flatten_metrics` turns either into ``{"layer/metric": float}``.

References:
  Dong et al., "Spartan: A Sparsity-Adaptive Framework to Accelerate Deep
  Neural Network Training on GPUs", IEEE TPDS 2021; Rhu et al., "Compressing
  DMA Engine", HPCA 2018 (zero-value compression over 32-entry blocks).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from sparsejax import select
from sparsejax.ops import Stats
from sparsejax.paths import flatten

Array = jax.Array
ArrayLike = jax.typing.ArrayLike


@dataclasses.dataclass(frozen=True)
class MonitorConfig:
    """How the monitor samples (hashable).

    Attributes:
      tile: entries per tile (32: one ZVC block / one warp).
      samples: number of tiles sampled, evenly strided over the tensor.
    """

    tile: int = 32
    samples: int = 256

    def __post_init__(self):
        for name in ("tile", "samples"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"MonitorConfig({name}=...) must be a positive int, got {v!r}.")


def tile_stats(x: ArrayLike, tile: int = 32, samples: int = 256) -> dict[str, Array]:
    """Zero fraction and tile occupancy of ``x`` estimated from sampled tiles.

    The flattened tensor is cut into tiles of ``tile`` consecutive entries and
    ``samples`` of them, evenly strided (with a prime stride, see
    :func:`sparsejax.select.sample_stride`), are read (all of them when there
    are fewer).

    Args:
      x: any array (an activation).
      tile: tile length.
      samples: number of tiles read.

    Returns:
      ``act_zero_fraction``, ``act_tile_occupancy`` and ``act_tile_density``
      (float32 scalars).

    Example:
      >>> s = tile_stats(jnp.concatenate([jnp.zeros(64), jnp.ones(64)]), tile=32)
      >>> [float(v) for v in s.values()]
      [0.5, 0.5, 1.0]

    References:
      Dong et al., IEEE TPDS 2021 (Spartan's sparsity monitor).
    """
    flat = jnp.asarray(x).reshape(-1)
    n_tiles = max(1, flat.size // tile)
    flat = flat[: n_tiles * tile] if flat.size >= tile else jnp.pad(flat, (0, tile - flat.size))
    tiles = flat.reshape(n_tiles, tile)
    if n_tiles > samples:  # a prime stride: tiles from every part of the channels
        tiles = tiles[:: select.sample_stride(n_tiles, samples)][:samples]
    nz = (tiles != 0).astype(jnp.float32)
    per_tile = jnp.mean(nz, axis=1)
    occupied = per_tile > 0
    n_occ = jnp.sum(occupied.astype(jnp.float32))
    return {
        "act_zero_fraction": 1.0 - jnp.mean(per_tile),
        "act_tile_occupancy": jnp.mean(occupied.astype(jnp.float32)),
        "act_tile_density": jnp.where(n_occ > 0, jnp.sum(per_tile) / jnp.maximum(n_occ, 1.0),
                                      0.0),
    }


def layer_metrics(lhs: ArrayLike, stats: Optional[Stats],
                  config: MonitorConfig) -> dict[str, Array]:
    """All monitor metrics of one layer call.

    Args:
      lhs: the layer's input activation.
      stats: the sparse op's stats (``None`` when the call ran dense).
      config: sampling settings.

    Returns:
      :func:`tile_stats` of ``lhs`` plus, for a sparse call, the realised
      ``w_sparsity``, ``a_saved_sparsity`` and ``out_sparsity``.
    """
    out = tile_stats(lhs, config.tile, config.samples)
    if stats is not None:
        out.update(w_sparsity=1.0 - stats.w_density, a_saved_sparsity=1.0 - stats.a_density,
                   out_sparsity=1.0 - stats.out_density)
    return out


def flatten_metrics(metrics: Any) -> dict[str, float]:
    """Flattens a metrics tree into ``{"Block_0/Conv_1/act_zero_fraction": 0.41, ...}``.

    Args:
      metrics: the linen ``"sparsity_metrics"`` collection (as returned by
        ``apply(..., mutable=[..., "sparsity_metrics"])``), an NNX state of
        :class:`sparsejax.adapters.nnx.SparsityMetric` variables, or any pytree of
        scalars.

    Returns:
      Path -> Python float (host values; call outside ``jit``). NNX wrapper
      segments (``value``) and the NNX op attribute names are dropped so paths
      match the linen ones.

    Example:
      >>> flatten_metrics({"Conv_0": {"act_zero_fraction": jnp.float32(0.5)}})
      {'Conv_0/act_zero_fraction': 0.5}
    """
    pairs, _ = flatten(metrics)
    out = {}
    for path, v in pairs:
        if v is None:
            continue
        parts = [p for p in path.split("/")
                 if p not in ("value", "dot_general", "conv_general_dilated", "einsum_op")]
        out["/".join(parts)] = float(np.asarray(v).reshape(-1)[-1])
    return out
