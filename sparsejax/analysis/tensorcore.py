"""A roofline cost model for GEMMs on tensor cores, dense and 2:4 sparse.

``T = max(T_math, bytes / bandwidth)`` with tile and wave quantisation: the
output is cut into ``tile_m x tile_n`` tiles (shrunk to a power of two >= 16
for skinny GEMMs, as libraries do), tiles are scheduled in waves of
one tile per SM, and every wave costs a full tile's math. A 2:4 sparse operand
halves the math along K (sparse tensor cores) and stores half of its values
plus 2 bits of metadata per kept value (56.25% of dense FP16 bytes).
Unstructured sparsity gets no tensor-core speed-up and is modelled as dense.

References:
  Raihan, Goli & Aamodt, "Modeling Deep Learning Accelerator Enabled GPUs",
  ISPASS 2019; Mishra et al., "Accelerating Sparse Deep Neural Networks",
  arXiv:2104.08378 (A100 2:4 sparse tensor cores).
"""

from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class Hardware:
    """A GPU's tensor-core and memory parameters.

    Attributes:
      name: label.
      sms: streaming multiprocessors.
      clock_hz: tensor-core clock.
      fma_per_clk_per_sm: dense FP16 fused multiply-adds per clock per SM.
      bandwidth: DRAM bytes per second.
      tile: (tile_m, tile_n) output tile one SM computes at a time.
    """

    name: str
    sms: int
    clock_hz: float
    fma_per_clk_per_sm: int
    bandwidth: float
    tile: tuple[int, int] = (128, 128)

    @property
    def peak_flops(self) -> float:
        """Dense FP16 peak in FLOP/s (2 FLOPs per FMA)."""
        return 2.0 * self.sms * self.clock_hz * self.fma_per_clk_per_sm


# Titan V (Volta): 8 tensor cores x 64 FMA per SM -> 125 TFLOP/s peak.
TITAN_V = Hardware("Titan V", sms=80, clock_hz=1.53e9, fma_per_clk_per_sm=512, bandwidth=652.8e9)
# A100 SXM: 1024 dense FP16 FMA/clk/SM -> 312 TFLOP/s (624 with 2:4).
A100 = Hardware("A100", sms=108, clock_hz=1.41e9, fma_per_clk_per_sm=1024, bandwidth=1555e9)


@dataclasses.dataclass(frozen=True)
class GemmCost:
    """Modelled time of one GEMM and what bounds it."""

    seconds: float
    math_seconds: float
    memory_seconds: float
    bytes: float

    @property
    def bound(self) -> str:
        """``"math"`` or ``"memory"``."""
        return "math" if self.math_seconds >= self.memory_seconds else "memory"


def gemm_time(m: int, n: int, k: int, *, hw: Hardware = A100, bytes_per_element: int = 2,
              sparse_24: bool = False) -> GemmCost:
    """Modelled time of ``C[m, n] = A[m, k] @ B[k, n]`` on ``hw``.

    Args:
      m, n, k: GEMM sizes (for a linear layer: batch*positions, out, in).
      hw: hardware parameters.
      bytes_per_element: operand and result element size (2 for FP16/BF16).
      sparse_24: whether ``B`` is 2:4 sparse along ``k`` (sparse tensor cores).

    Returns:
      A :class:`GemmCost`.

    Example:
      >>> d = gemm_time(4096, 4096, 4096); s = gemm_time(4096, 4096, 4096, sparse_24=True)
      >>> round(d.seconds / s.seconds, 2)
      2.0
    """
    if min(m, n, k) <= 0:
        raise ValueError(f"GEMM sizes must be positive, got m={m}, n={n}, k={k}.")
    # Libraries pick smaller tiles for skinny GEMMs (down to 16, the MMA size).
    tm, tn = (min(t, max(16, 1 << (d - 1).bit_length())) for t, d in zip(hw.tile, (m, n)))
    tiles = math.ceil(m / tm) * math.ceil(n / tn)
    waves = math.ceil(tiles / hw.sms)
    k_eff = k / 2 if sparse_24 else k
    fma_per_tile = tm * tn * k_eff
    math_s = waves * fma_per_tile / (hw.fma_per_clk_per_sm * hw.clock_hz)
    b_bytes = k * n * bytes_per_element * (0.5625 if sparse_24 else 1.0)
    total_bytes = m * k * bytes_per_element + b_bytes + m * n * bytes_per_element
    mem_s = total_bytes / hw.bandwidth
    return GemmCost(max(math_s, mem_s), math_s, mem_s, total_bytes)


def speedup_24(m: int, n: int, k: int, *, hw: Hardware = A100, bytes_per_element: int = 2) -> float:
    """Modelled dense / 2:4-sparse time ratio of a GEMM (at most 2).

    Example:
      >>> speedup_24(8, 4096, 4096) < 1.5   # a skinny, memory-bound GEMM gains little
      True
    """
    dense = gemm_time(m, n, k, hw=hw, bytes_per_element=bytes_per_element)
    sparse = gemm_time(m, n, k, hw=hw, bytes_per_element=bytes_per_element, sparse_24=True)
    return dense.seconds / sparse.seconds
