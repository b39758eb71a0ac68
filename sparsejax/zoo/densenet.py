"""DenseNet-BC (DenseNet-121) with a CIFAR or ImageNet stem."""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


class DenseNet(nn.Module):
    """DenseNet-BC: bottleneck dense layers, compressing transitions.

    Each dense layer is BN-ReLU-conv1x1(4k)-BN-ReLU-conv3x3(k) and its output is
    concatenated to its input; each transition is BN-ReLU-conv1x1-avgpool 2x2 with
    compression ``reduction``.

    Attributes:
      block_sizes: dense layers per block.
      growth_rate: k, channels added by each dense layer.
      reduction: channel compression of the transitions.
      num_classes: number of output logits.
      stem: ``"cifar"`` (conv3x3 with 2k channels) or ``"imagenet"`` (conv7x7
        stride 2 + BN + ReLU + max-pool 3x3 stride 2).
      dtype: computation dtype.

    References:
      Huang et al., "Densely Connected Convolutional Networks", CVPR 2017.
    """

    block_sizes: Sequence[int] = (6, 12, 24, 16)
    growth_rate: int = 32
    reduction: float = 0.5
    num_classes: int = 10
    stem: str = "cifar"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Returns logits ``(batch, num_classes)``."""
        norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                                 epsilon=1e-5, dtype=self.dtype)
        conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype)
        k = self.growth_rate
        x = x.astype(self.dtype)
        if self.stem == "cifar":
            x = conv(2 * k, (3, 3), padding=((1, 1), (1, 1)), name="stem_conv")(x)
        elif self.stem == "imagenet":
            x = conv(2 * k, (7, 7), strides=(2, 2), padding=((3, 3), (3, 3)), name="stem_conv")(x)
            x = nn.relu(norm(name="stem_bn")(x))
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        else:
            raise ValueError(f"stem must be 'cifar' or 'imagenet', got {self.stem!r}.")
        for b, size in enumerate(self.block_sizes):
            for i in range(size):
                prefix = f"block{b + 1}_layer{i + 1}"
                y = nn.relu(norm(name=f"{prefix}_bn1")(x))
                y = conv(4 * k, (1, 1), name=f"{prefix}_conv1")(y)
                y = nn.relu(norm(name=f"{prefix}_bn2")(y))
                y = conv(k, (3, 3), padding=((1, 1), (1, 1)), name=f"{prefix}_conv2")(y)
                x = jnp.concatenate([x, y], axis=-1)
            if b + 1 < len(self.block_sizes):
                prefix = f"transition{b + 1}"
                x = nn.relu(norm(name=f"{prefix}_bn")(x))
                x = conv(int(x.shape[-1] * self.reduction), (1, 1), name=f"{prefix}_conv")(x)
                x = nn.avg_pool(x, (2, 2), strides=(2, 2), padding="SAME")
        x = nn.relu(norm(name="final_bn")(x))
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
        return x.astype(jnp.float32)


def DenseNet121(num_classes: int = 10, stem: str = "cifar", growth_rate: int = 32,  # noqa: N802
                dtype: Dtype = jnp.float32) -> DenseNet:
    """DenseNet-121 (blocks 6-12-24-16, k = 32); 6,956,298 parameters with the CIFAR
    stem and 10 classes, 7,978,856 with the ImageNet stem and 1000 classes.

    Args:
      num_classes: number of output logits.
      stem: ``"cifar"`` or ``"imagenet"``.
      growth_rate: k (32 in the paper); smaller values for smoke tests.
      dtype: computation dtype.

    Returns:
      A :class:`DenseNet`.
    """
    return DenseNet((6, 12, 24, 16), growth_rate, 0.5, num_classes, stem, dtype)
