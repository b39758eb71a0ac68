"""The sparse linear ops: policy, linear ops, custom_vjp algebra, public API and packing."""

from sparsejax.ops.api import (forward_weight, sparse_conv_general_dilated,
                               sparse_conv_general_dilated_with_stats, sparse_dot_general,
                               sparse_dot_general_with_stats)
from sparsejax.ops.policy import PACK_MIN_SIZE, SAVED, Aux, Policy, Stats
