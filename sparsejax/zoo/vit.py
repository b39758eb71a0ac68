"""Vision Transformer for small images (patch embedding by a strided nn.Conv)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


class EncoderBlock(nn.Module):
    """Pre-LayerNorm transformer block: self-attention and a GELU MLP, both residual."""

    heads: int
    mlp_dim: int
    dropout_rate: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Applies the block to tokens ``(batch, length, dim)``."""
        y = nn.LayerNorm(dtype=self.dtype, name="ln1")(x)
        y = nn.MultiHeadDotProductAttention(num_heads=self.heads, dtype=self.dtype,
                                            dropout_rate=self.dropout_rate,
                                            deterministic=not train, name="attention")(y)
        x = x + nn.Dropout(self.dropout_rate, deterministic=not train)(y)
        y = nn.LayerNorm(dtype=self.dtype, name="ln2")(x)
        y = nn.gelu(nn.Dense(self.mlp_dim, dtype=self.dtype, name="mlp_fc1")(y))
        y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
        y = nn.Dense(x.shape[-1], dtype=self.dtype, name="mlp_fc2")(y)
        return x + nn.Dropout(self.dropout_rate, deterministic=not train)(y)


class ViT(nn.Module):
    """Vision Transformer with a class token and learned position embeddings.

    The position embedding has one entry per patch of the image used at ``init``,
    so a model must be applied to images of the size it was initialised with.

    Attributes:
      num_classes: number of output logits.
      patch: patch side in pixels; must divide the image height and width.
      dim: token width.
      depth: number of encoder blocks.
      heads: attention heads (must divide ``dim``).
      mlp_dim: hidden width of each block's MLP.
      dropout_rate: dropout on attention weights and residual branches (needs a
        ``"dropout"`` rng when > 0 and ``train=True``).
      dtype: computation dtype.

    Parameter names: ``embedding`` (the patch conv), ``cls``, ``pos_embedding``,
    ``block{i}/{ln1,attention,ln2,mlp_fc1,mlp_fc2}``, ``ln_final``, ``head``.

    Example:
      >>> model = ViT(patch=4, dim=64, depth=2, heads=4, mlp_dim=128)
      >>> params = model.init(jax.random.key(0), jnp.zeros((2, 32, 32, 3)))

    References:
      Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021.
    """

    num_classes: int = 10
    patch: int = 4
    dim: int = 192
    depth: int = 12
    heads: int = 3
    mlp_dim: int = 768
    dropout_rate: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Returns logits ``(batch, num_classes)`` for images ``(batch, h, w, c)``."""
        height, width = x.shape[1], x.shape[2]
        if height % self.patch or width % self.patch:
            raise ValueError(f"ViT patch={self.patch} must divide the image size "
                             f"{height}x{width}; choose a patch size that divides it.")
        x = nn.Conv(self.dim, (self.patch, self.patch), strides=(self.patch, self.patch),
                    padding="VALID", dtype=self.dtype, name="embedding")(x.astype(self.dtype))
        x = x.reshape((x.shape[0], -1, self.dim))
        cls = self.param("cls", nn.initializers.zeros, (1, 1, self.dim))
        x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, self.dim)).astype(x.dtype), x],
                            axis=1)
        pos = self.param("pos_embedding", nn.initializers.normal(stddev=0.02),
                         (1, x.shape[1], self.dim))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x + pos.astype(x.dtype))
        for i in range(self.depth):
            x = EncoderBlock(self.heads, self.mlp_dim, self.dropout_rate, dtype=self.dtype,
                             name=f"block{i + 1}")(x, train)
        x = nn.LayerNorm(dtype=self.dtype, name="ln_final")(x[:, 0])
        x = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
        return x.astype(jnp.float32)


def vit_tiny(num_classes: int = 10, patch: int = 4, dtype: Dtype = jnp.float32) -> ViT:
    """ViT-Tiny (dim 192, depth 12, 3 heads, MLP 768) with 4x4 patches.

    Works on 8x8 images (4 patches) and 32x32 images (64 patches).

    Args:
      num_classes: number of output logits.
      patch: patch side; must divide the image size.
      dtype: computation dtype.

    Returns:
      A :class:`ViT`.

    References:
      Touvron et al., "Training data-efficient image transformers", ICML 2021 (DeiT-Ti).
    """
    return ViT(num_classes=num_classes, patch=patch, dim=192, depth=12, heads=3, mlp_dim=768,
               dtype=dtype)
