"""sparsejax: pure-function sparsity transforms for JAX, Flax and optax.

The core (everything importable from here) needs only jax, optax and flax.
The experiment stack lives in ``sparsejax.data`` and ``sparsejax.experiment``
and is imported explicitly.
"""

from sparsejax import compression, costs, schedules, tensorcore
from sparsejax.adapters import sparsify
from sparsejax.adapters.linen import Sparsified
from sparsejax.adapters.nnx import SparsityState
from sparsejax.adapters.planning import LayerPlan, Plan, plan
from sparsejax.adapters.weights import contraction_axes, effective_params
from sparsejax.distributions import erk_sparsities
from sparsejax.dst import DSTState, rigl, snfs, sparse_evolutionary, static_random
from sparsejax.methods import (LayerInfo, Method, dense, dsg, forward_topk, grad_drop, meprop,
                               momentum_budgets, ste, swat)
from sparsejax.monitor import MonitorConfig, flatten_metrics
from sparsejax.paths import leaf_paths, path_str, selected_paths
from sparsejax.residuals import LayerResiduals, residual_bytes
from sparsejax.ops import (Aux, Policy, Stats, sparse_conv_general_dilated,
                           sparse_conv_general_dilated_with_stats, sparse_dot_general,
                           sparse_dot_general_with_stats)
from sparsejax.patterns import (Block, Channel, NM, Pattern, Unstructured, block_mask,
                                channel_mask, default_contraction_axes, nm_mask, topk_mask)
from sparsejax.permutation import (PermutationResult, chain_pairs, permute_channels,
                                   permute_for_nm, permute_model, search_permutation)
from sparsejax.select import (keep_count, kth_largest_key_along, magnitude_keys, select_topk,
                              select_topk_key, threshold)
from sparsejax.sparsifiers import (Cached, Fixed, PatternRule, RandomProjection, RowTopK,
                                   SharedColumns, TopK)
from sparsejax.summary import Summary, summary
from sparsejax.transform import PruningState, get_masks, pruning
from sparsejax.tree import apply_masks, compute_masks, prune

__version__ = "0.1.0"
