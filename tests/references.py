"""Helpers shared by the tests: hand references computed without the library, tiny configs."""

from __future__ import annotations

import math

import numpy as np


def np_topk(x, sparsity):
    """Reference whole-tensor top-K mask by a full sort: the ceil((1 - s) * n) largest |x|
    (stable order breaks ties; random data has none)."""
    x = np.asarray(x)
    keep = math.ceil(round((1 - sparsity) * x.size, 9))
    mask = np.zeros(x.size, bool)
    mask[np.argsort(-np.abs(x).ravel(), kind="stable")[:keep]] = True
    return mask.reshape(x.shape)


def tiny_config():
    """A two-step run of a 16-unit MLP on the offline digits (the experiment-stack tests')."""
    import ml_collections

    from sparsejax.experiment import config as config_lib

    config = config_lib.smoke(config_lib.base_config())
    config.model = ml_collections.ConfigDict({"name": "mlp", "kwargs": {"features": (16,)}})
    config.num_steps = 2
    config.checkpoint_every_steps = 0
    return config
