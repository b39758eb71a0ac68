"""Magnitude selection in O(n) passes: the one selection routine of sparsejax."""

from sparsejax.select.api import select_topk, select_topk_key, threshold
from sparsejax.select.keys import keep_count, magnitude_keys
from sparsejax.select.primitive import _kth, kth_largest_key  # _kth: tests/test_native.py
from sparsejax.select.rows import kth_largest_key_along
from sparsejax.select.search import sample_stride

__all__ = ["keep_count", "kth_largest_key", "kth_largest_key_along", "magnitude_keys",
           "sample_stride", "select_topk", "select_topk_key", "threshold"]
