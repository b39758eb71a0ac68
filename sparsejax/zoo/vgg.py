"""VGG-16 with BatchNorm, CIFAR variant (512 features -> linear classifier)."""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

# Channels of the 13 convolutions; "M" is a 2x2 max-pool.
VGG16_PLAN = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M")


class VGG16(nn.Module):
    """VGG-16 with BatchNorm for 32x32 inputs; 14,728,266 parameters at width 64.

    13 conv3x3 (with bias, as in the common CIFAR implementation) + BN + ReLU,
    five 2x2 max-pools, global average pooling (the identity on the 1x1 map of a
    32x32 input) and one linear classifier. Pools use ``"SAME"`` padding so inputs
    smaller than 32x32 (e.g. 8x8) also work.

    Attributes:
      num_classes: number of output logits.
      width: channels of the first conv (64 in the paper); every conv scales with it.
      dtype: computation dtype.

    Parameter names: ``conv1 … conv13``, ``bn1 … bn13``, ``head``.

    References:
      Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
      Recognition", ICLR 2015; the SWAT CIFAR-10 results (Raihan & Aamodt 2020).
    """

    num_classes: int = 10
    width: int = 64
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Returns logits ``(batch, num_classes)``."""
        norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                                 epsilon=1e-5, dtype=self.dtype)
        x = x.astype(self.dtype)
        index = 0
        for item in VGG16_PLAN:
            if item == "M":
                x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
                continue
            index += 1
            channels = item * self.width // 64
            x = nn.Conv(channels, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype,
                        name=f"conv{index}")(x)
            x = nn.relu(norm(name=f"bn{index}")(x))
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
        return x.astype(jnp.float32)
