"""sparsejax: pure-function sparsity transforms for JAX, Flax and optax.

The core (everything importable from here) needs only jax, optax and flax.
The experiment stack lives in ``sparsejax.data`` and ``sparsejax.experiment``
and is imported explicitly.
"""

import sys as _sys

from sparsejax import analysis, backend_hints, criteria, ops, schedules
from sparsejax.adapters import sparsify
from sparsejax.adapters.linen import Sparsified
from sparsejax.adapters.nnx import SparsityState
from sparsejax.adapters.planning import LayerPlan, Plan, plan
from sparsejax.adapters.weights import contraction_axes, effective_params
from sparsejax.analysis import compression, costs, tensorcore
from sparsejax.analysis.monitor import MonitorConfig, flatten_metrics
from sparsejax.analysis.residuals import LayerResiduals, residual_bytes
from sparsejax.analysis.summary import Summary, summary
from sparsejax.criteria import SNIP, Criterion, Magnitude, Random, Saliency
from sparsejax.distributions import erk_sparsities
from sparsejax.dst import DSTState, rigl, snfs, sparse_evolutionary, static_random
from sparsejax.alternating import acdc
from sparsejax.methods import (LayerInfo, Method, dense, dsg, forward_topk, grad_drop, meprop,
                               momentum_budgets, ste, swat)
from sparsejax.ops import (Aux, Policy, Stats, sparse_conv_general_dilated,
                           sparse_conv_general_dilated_with_stats, sparse_dot_general,
                           sparse_dot_general_with_stats)
from sparsejax.paths import leaf_paths, path_str, selected_paths
from sparsejax.patterns import (Block, Channel, NM, Pattern, Unstructured, block_mask,
                                channel_mask, default_contraction_axes, nm_mask, topk_mask)
from sparsejax.permutation import (PermutationResult, chain_pairs, permute_channels,
                                   permute_for_nm, permute_model, search_permutation)
from sparsejax.select import (keep_count, kth_largest_key_along, magnitude_keys, select_topk,
                              select_topk_key, threshold)
from sparsejax.rule import Rule, SlotInput
from sparsejax.sparsifiers import (Cached, Fixed, PatternRule, RandomProjection, RowTopK,
                                   SharedColumns, TopK)
from sparsejax.transform import PruningState, get_masks, pruning
from sparsejax.tree import apply_masks, compute_masks, prune
from sparsejax.wanda import (per_output_mask, wanda, wanda_layers, wanda_masks, wanda_norms,
                             wanda_scores)

# Compatibility table: old module path -> where the module now lives. Only code outside this
# repository uses the old paths (`import sparsejax.monitor`, `from sparsejax.compact import
# pack`, `sparsejax.costs.step_flops`); the repository imports the new ones.
_MOVED = {"compact": ops.compaction, "compression": analysis.compression,
          "costs": analysis.costs, "monitor": analysis.monitor, "ordering": backend_hints,
          "residuals": analysis.residuals, "summary": analysis.summary,
          "tensorcore": analysis.tensorcore}
for _old, _module in _MOVED.items():
    _sys.modules[f"{__name__}.{_old}"] = _module
# The package attributes (compression, costs and tensorcore are imported above; the attribute
# sparsejax.summary stays the summary() function, as before the move).
compact, monitor, residuals = ops.compaction, analysis.monitor, analysis.residuals
ordering = backend_hints
del _old, _module, _sys

__version__ = "0.1.0"
