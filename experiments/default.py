"""The main job: sparsity methods compared on the offline 8x8 digits dataset.

``python launch.py`` (no flags) runs the members of :func:`sweep` in
``runs/default`` and prints the results table: dense training, magnitude
pruning (Han: dense → prune 80% with one global magnitude threshold → retrain
at LR/10), ASP 2:4 (dense → one-shot
2:4 → retrain with the same schedule), SWAT-U at 80% and meProp keeping 20% of
each hidden layer's output gradients. A 64-256-256-10 MLP trains in about a
second per member on a laptop CPU.

Args (``--config=experiments/default.py:ARG``): ``smoke`` (a few steps).
"""

import ml_collections

from sparsejax.experiment import config as config_lib


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    """The dense member's config; :func:`sweep` overrides the method."""
    options = config_lib.parse_arg(arg, smoke=False)
    c = config_lib.base_config()
    c.name = "dense"
    c.model = ml_collections.ConfigDict({"name": "mlp", "kwargs": {"features": (256, 256)}})
    c.batch_size = 128
    c.num_epochs = 30.0
    c.optimizer.learning_rate = 0.1
    c.optimizer.weight_decay = 5e-4
    c.schedule.name = "cosine"
    c.log_every_steps = 100
    c.checkpoint_every_steps = 0
    # Every member's method fields (a sweep member may only override existing keys).
    c.method = ml_collections.ConfigDict({"name": "dense"})
    if options.smoke:
        config_lib.smoke(c)
    return c


def sweep(arg: str = "") -> list[dict]:
    """Dense, magnitude 80%, ASP 2:4, SWAT-U 80%, meProp k = 20%."""
    del arg
    return [
        {"name": "dense", "method": {"name": "dense"}},
        {"name": "magnitude80", "method": {"name": "magnitude", "sparsity": 0.8,
                                           "retrain_epochs": 10.0, "retrain_lr_scale": 0.1,
                                           "distribution": "global"}},
        {"name": "asp2:4", "method": {"name": "asp", "n": 2, "m": 4}},
        {"name": "swat_u80", "method": {"name": "swat", "sparsity": 0.8}},
        {"name": "meprop20", "method": {"name": "meprop", "k": 0.2}},
    ]
