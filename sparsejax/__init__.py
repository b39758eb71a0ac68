"""sparsejax: pure-function sparsity transforms for JAX, Flax and optax."""

from sparsejax.patterns import (Block, Channel, NM, Pattern, Unstructured, block_mask,
                                channel_mask, nm_mask, topk_mask)
from sparsejax.select import keep_count, magnitude_keys, select_topk, threshold

__version__ = "0.1.0"
