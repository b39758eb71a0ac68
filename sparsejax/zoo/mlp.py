"""Fully connected and small convolutional reference models.

All models use stock Flax linen layers (``nn.Dense``, ``nn.Conv``) so that the
sparsity adapters can intercept them, take ``(x, train=False)`` and return float32
logits of shape ``(batch, num_classes)``.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


class MLP(nn.Module):
    """Multi-layer perceptron with ReLU hidden layers; flattens its input.

    Attributes:
      features: widths of the hidden layers.
      num_classes: number of output logits.
      dtype: computation dtype (parameters stay float32).

    Layers are named ``fc1 … fc{L+1}`` (the last one is the classifier), matching
    the layer names of Han et al.'s LeNet-300-100.

    Example:
      >>> model = MLP(features=(300, 100))
      >>> params = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    """

    features: Sequence[int] = (300, 100)
    num_classes: int = 10
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Returns logits ``(batch, num_classes)``; ``train`` is unused."""
        del train
        x = x.reshape((x.shape[0], -1)).astype(self.dtype)
        for i, width in enumerate(self.features):
            x = nn.relu(nn.Dense(width, dtype=self.dtype, name=f"fc{i + 1}")(x))
        x = nn.Dense(self.num_classes, dtype=self.dtype, name=f"fc{len(self.features) + 1}")(x)
        return x.astype(jnp.float32)


def LeNet300100(num_classes: int = 10, dtype: Dtype = jnp.float32) -> MLP:  # noqa: N802
    """LeNet-300-100: 784-300-100-10 MLP (266,610 parameters on 28x28x1 inputs).

    Args:
      num_classes: number of output logits.
      dtype: computation dtype.

    Returns:
      An :class:`MLP` with hidden widths (300, 100).

    References:
      LeCun et al., "Gradient-based learning applied to document recognition", 1998;
      Han et al., "Learning both Weights and Connections", NeurIPS 2015 (Table 1).
    """
    return MLP(features=(300, 100), num_classes=num_classes, dtype=dtype)


class LeNet5(nn.Module):
    """LeNet-5, Caffe variant used by Han et al. (431,080 parameters on 28x28x1).

    conv 20@5x5 -> maxpool 2 -> conv 50@5x5 -> maxpool 2 -> fc 500 (ReLU) -> fc.
    Layers are named ``conv1, conv2, fc1, fc2`` as in Han et al.'s Table 1.

    Attributes:
      num_classes: number of output logits.
      padding: convolution padding; the Caffe model uses ``"VALID"``, pass
        ``"SAME"`` for inputs smaller than 16x16 (e.g. 8x8 digits).
      dtype: computation dtype.

    References:
      Han et al., "Learning both Weights and Connections for Efficient Neural
      Networks", NeurIPS 2015; Caffe ``examples/mnist/lenet.prototxt``.
    """

    num_classes: int = 10
    padding: str = "VALID"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Returns logits ``(batch, num_classes)``; ``train`` is unused."""
        del train
        x = x.astype(self.dtype)
        x = nn.Conv(20, (5, 5), padding=self.padding, dtype=self.dtype, name="conv1")(x)
        x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
        x = nn.Conv(50, (5, 5), padding=self.padding, dtype=self.dtype, name="conv2")(x)
        x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(500, dtype=self.dtype, name="fc1")(x))
        x = nn.Dense(self.num_classes, dtype=self.dtype, name="fc2")(x)
        return x.astype(jnp.float32)


class RefCNN(nn.Module):
    """Reference CNN of the benchmarks (3x3 convs, ReLU, average pooling, no BN).

    conv w -> conv w + avgpool -> conv 2w -> conv 2w + avgpool -> conv 4w + avgpool
    -> dense 8w -> dense num_classes, with ``w = width`` (32 by default, giving
    32, 32, 64, 64, 128 channels and a 256-unit dense layer). Pooling uses
    ``"SAME"`` padding so 8x8 inputs work (8 -> 4 -> 2 -> 1).

    Attributes:
      num_classes: number of output logits.
      width: base channel count (scales every layer).
      dtype: computation dtype.

    Example:
      >>> model = RefCNN(width=8)
      >>> params = model.init(jax.random.key(0), jnp.zeros((2, 32, 32, 3)))
    """

    num_classes: int = 10
    width: int = 32
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Returns logits ``(batch, num_classes)``; ``train`` is unused."""
        del train
        w = self.width
        x = x.astype(self.dtype)
        plan = ((w, False), (w, True), (2 * w, False), (2 * w, True), (4 * w, True))
        for i, (channels, pool) in enumerate(plan):
            x = nn.relu(nn.Conv(channels, (3, 3), dtype=self.dtype, name=f"conv{i + 1}")(x))
            if pool:
                x = nn.avg_pool(x, (2, 2), strides=(2, 2), padding="SAME")
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(8 * w, dtype=self.dtype, name="fc1")(x))
        x = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
        return x.astype(jnp.float32)
