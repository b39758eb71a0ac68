"""Residual networks: ResNet-18/34/50 (CIFAR or ImageNet stem) and Wide ResNets.

Convolutions use PyTorch-style symmetric padding ``k // 2`` so parameter counts and
feature-map sizes match the reference implementations; convolutions feeding a
BatchNorm have no bias. BatchNorm statistics live in the ``batch_stats`` collection
(``momentum=0.9``, i.e. PyTorch's 0.1); call with ``train=True`` and
``mutable=["batch_stats"]`` to update them.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
ModuleDef = Any


def _conv(features: int, kernel: int, stride: int = 1, **kwargs: Any) -> nn.Conv:
    """Convolution with symmetric ``kernel // 2`` padding and no bias."""
    pad = kernel // 2
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                   padding=((pad, pad), (pad, pad)), use_bias=False, **kwargs)


def _batch_norm(train: bool, dtype: Dtype) -> Callable[..., nn.BatchNorm]:
    return functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                             epsilon=1e-5, dtype=dtype)


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convs, projection shortcut when shapes change."""

    features: int
    stride: int = 1
    dtype: Dtype = jnp.float32
    expansion = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Applies the block; ``train`` selects batch statistics in BatchNorm."""
        norm = _batch_norm(train, self.dtype)
        y = _conv(self.features, 3, self.stride, dtype=self.dtype, name="conv1")(x)
        y = nn.relu(norm(name="bn1")(y))
        y = _conv(self.features, 3, dtype=self.dtype, name="conv2")(y)
        y = norm(name="bn2")(y)
        if self.stride != 1 or x.shape[-1] != self.features:
            x = _conv(self.features, 1, self.stride, dtype=self.dtype, name="shortcut_conv")(x)
            x = norm(name="shortcut_bn")(x)
        return nn.relu(x + y)


class Bottleneck(nn.Module):
    """ResNet bottleneck block: 1x1 -> 3x3 (strided) -> 1x1 (4x channels)."""

    features: int
    stride: int = 1
    dtype: Dtype = jnp.float32
    expansion = 4

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Applies the block; ``train`` selects batch statistics in BatchNorm."""
        norm = _batch_norm(train, self.dtype)
        out = self.features * self.expansion
        y = _conv(self.features, 1, dtype=self.dtype, name="conv1")(x)
        y = nn.relu(norm(name="bn1")(y))
        y = _conv(self.features, 3, self.stride, dtype=self.dtype, name="conv2")(y)
        y = nn.relu(norm(name="bn2")(y))
        y = _conv(out, 1, dtype=self.dtype, name="conv3")(y)
        y = norm(name="bn3")(y)
        if self.stride != 1 or x.shape[-1] != out:
            x = _conv(out, 1, self.stride, dtype=self.dtype, name="shortcut_conv")(x)
            x = norm(name="shortcut_bn")(x)
        return nn.relu(x + y)


class ResNet(nn.Module):
    """ResNet v1 with a CIFAR (3x3, stride 1, no max-pool) or ImageNet stem.

    Attributes:
      stage_sizes: number of blocks in each of the 4 stages.
      block_cls: :class:`BasicBlock` or :class:`Bottleneck`.
      num_classes: number of output logits.
      stem: ``"cifar"`` (3x3 conv, stride 1) or ``"imagenet"`` (7x7 conv, stride 2,
        then 3x3 max-pool, stride 2).
      width: channels of the first stage (64 in the paper; stage i has
        ``width * 2**i``); use a small value for smoke tests.
      dtype: computation dtype.

    Parameter names: ``stem_conv``, ``stem_bn``, ``stage{i}_block{j}/...``, ``head``.

    Example:
      >>> model = ResNet18(stem="cifar")
      >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
      >>> logits, updates = model.apply(variables, jnp.ones((2, 32, 32, 3)),
      ...                               train=True, mutable=["batch_stats"])

    References:
      He et al., "Deep Residual Learning for Image Recognition", CVPR 2016.
    """

    stage_sizes: Sequence[int]
    block_cls: ModuleDef
    num_classes: int = 10
    stem: str = "cifar"
    width: int = 64
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Returns logits ``(batch, num_classes)``."""
        norm = _batch_norm(train, self.dtype)
        x = x.astype(self.dtype)
        if self.stem == "cifar":
            x = _conv(self.width, 3, dtype=self.dtype, name="stem_conv")(x)
            x = nn.relu(norm(name="stem_bn")(x))
        elif self.stem == "imagenet":
            x = _conv(self.width, 7, 2, dtype=self.dtype, name="stem_conv")(x)
            x = nn.relu(norm(name="stem_bn")(x))
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        else:
            raise ValueError(f"stem must be 'cifar' or 'imagenet', got {self.stem!r}.")
        for i, num_blocks in enumerate(self.stage_sizes):
            for j in range(num_blocks):
                stride = 2 if i > 0 and j == 0 else 1
                x = self.block_cls(self.width * 2**i, stride, dtype=self.dtype,
                                   name=f"stage{i + 1}_block{j + 1}")(x, train)
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
        return x.astype(jnp.float32)


def ResNet18(num_classes: int = 10, stem: str = "cifar", width: int = 64,  # noqa: N802
             dtype: Dtype = jnp.float32) -> ResNet:
    """ResNet-18 (BasicBlock, stages 2-2-2-2); 11,173,962 parameters with the CIFAR
    stem and 10 classes.

    Args:
      num_classes: number of output logits.
      stem: ``"cifar"`` or ``"imagenet"``.
      width: channels of the first stage.
      dtype: computation dtype.

    Returns:
      A :class:`ResNet`.
    """
    return ResNet((2, 2, 2, 2), BasicBlock, num_classes, stem, width, dtype)


def ResNet34(num_classes: int = 10, stem: str = "cifar", width: int = 64,  # noqa: N802
             dtype: Dtype = jnp.float32) -> ResNet:
    """ResNet-34 (BasicBlock, stages 3-4-6-3). Arguments as :func:`ResNet18`.

    Returns:
      A :class:`ResNet`.
    """
    return ResNet((3, 4, 6, 3), BasicBlock, num_classes, stem, width, dtype)


def ResNet50(num_classes: int = 1000, stem: str = "imagenet", width: int = 64,  # noqa: N802
             dtype: Dtype = jnp.float32) -> ResNet:
    """ResNet-50 (Bottleneck, stages 3-4-6-3); 25,557,032 parameters with the
    ImageNet stem and 1000 classes. Arguments as :func:`ResNet18`.

    Returns:
      A :class:`ResNet`.
    """
    return ResNet((3, 4, 6, 3), Bottleneck, num_classes, stem, width, dtype)


class WideBlock(nn.Module):
    """Pre-activation wide-ResNet block: BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3."""

    features: int
    stride: int = 1
    dropout_rate: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Applies the block; dropout (if any) needs a ``"dropout"`` rng in training."""
        norm = _batch_norm(train, self.dtype)
        pre = nn.relu(norm(name="bn1")(x))
        y = _conv(self.features, 3, self.stride, dtype=self.dtype, name="conv1")(pre)
        y = nn.relu(norm(name="bn2")(y))
        if self.dropout_rate > 0:
            y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
        y = _conv(self.features, 3, dtype=self.dtype, name="conv2")(y)
        if self.stride != 1 or x.shape[-1] != self.features:
            x = _conv(self.features, 1, self.stride, dtype=self.dtype, name="shortcut_conv")(pre)
        return x + y


class WideResNet(nn.Module):
    """Wide residual network WRN-depth-k for 32x32 inputs.

    Attributes:
      depth: total depth; ``(depth - 4)`` must be divisible by 6.
      widen_factor: k; the three groups have ``16k, 32k, 64k`` channels.
      num_classes: number of output logits.
      dropout_rate: dropout between the two convs of each block (0 disables it).
      dtype: computation dtype.

    References:
      Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016.
    """

    depth: int = 16
    widen_factor: int = 8
    num_classes: int = 10
    dropout_rate: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Returns logits ``(batch, num_classes)``."""
        if (self.depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n + 4 (e.g. 16, 28), got {self.depth}.")
        blocks = (self.depth - 4) // 6
        x = _conv(16, 3, dtype=self.dtype, name="stem_conv")(x.astype(self.dtype))
        for i, base in enumerate((16, 32, 64)):
            for j in range(blocks):
                stride = 2 if i > 0 and j == 0 else 1
                x = WideBlock(base * self.widen_factor, stride, self.dropout_rate,
                              dtype=self.dtype, name=f"stage{i + 1}_block{j + 1}")(x, train)
        x = nn.relu(_batch_norm(train, self.dtype)(name="final_bn")(x))
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
        return x.astype(jnp.float32)


def WRN16_8(num_classes: int = 10, dropout_rate: float = 0.0,  # noqa: N802
            dtype: Dtype = jnp.float32) -> WideResNet:
    """WRN-16-8 (about 11.0M parameters), as used by SWAT on CIFAR.

    Args:
      num_classes: number of output logits.
      dropout_rate: dropout inside each block.
      dtype: computation dtype.

    Returns:
      A :class:`WideResNet` with depth 16 and widen factor 8.
    """
    return WideResNet(16, 8, num_classes, dropout_rate, dtype)
