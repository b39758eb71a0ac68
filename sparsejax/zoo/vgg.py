"""VGG-16 with BatchNorm, CIFAR variant: 512 features -> a linear classifier, or the
SWAT code's 512 -> 4096 -> 4096 -> classes head (``classifier="official"``)."""

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
CLASSIFIERS = ("linear", "official")


class VGG16(nn.Module):
    """VGG-16 with BatchNorm for 32x32 inputs; 14,728,266 parameters at width 64.

    13 conv3x3 (with bias, as in the common CIFAR implementation) + BN + ReLU,
    five 2x2 max-pools, global average pooling (the identity on the 1x1 map of a
    32x32 input) and the classifier. Pools use ``"SAME"`` padding so inputs
    smaller than 32x32 (e.g. 8x8) also work.

    ``classifier="linear"``: one linear layer 512 -> classes (14.7M weights, 14
    linear layers). ``classifier="official"``: the head of the official SWAT
    CIFAR VGG-16 (``models/vgg.py``: Linear 512→4096, ReLU, Dropout(0.5),
    Linear 4096→4096, ReLU, Dropout(0.5), Linear 4096→classes): 16 linear layers,
    33,625,792 kernel weights (33,646,666 parameters with the biases and the
    BatchNorm scales and offsets) for 10 classes, the network of SWAT's CIFAR
    tables; SWAT at 90/90 with a dense first conv saves 89.5% of its training
    FLOPs (:mod:`sparsejax.analysis.costs`; the paper reports 89.7%). Its hidden
    width is ``4096 · width / 64``. Dropout needs a ``"dropout"`` rng when
    ``train=True``.

    Attributes:
      num_classes: number of output logits.
      width: channels of the first conv (64 in the paper); every conv scales with it.
      classifier: ``"linear"`` or ``"official"`` (see above).
      dtype: computation dtype.

    Parameter names: ``conv1 … conv13``, ``bn1 … bn13``, ``head`` (and ``fc1``,
    ``fc2`` before it with ``classifier="official"``).

    References:
      Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
      Recognition", ICLR 2015; the SWAT CIFAR-10 results (Raihan & Aamodt 2020).
    """

    num_classes: int = 10
    width: int = 64
    classifier: str = "linear"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Returns logits ``(batch, num_classes)``."""
        if self.classifier not in CLASSIFIERS:
            raise ValueError(f"VGG16(classifier={self.classifier!r}); valid: "
                             f"{', '.join(CLASSIFIERS)}.")
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
        if self.classifier == "official":
            hidden = 4096 * self.width // 64
            for name in ("fc1", "fc2"):
                x = nn.relu(nn.Dense(hidden, dtype=self.dtype, name=name)(x))
                x = nn.Dropout(0.5, deterministic=not train)(x)
        x = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
        return x.astype(jnp.float32)
