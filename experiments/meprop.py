"""meProp (Sun et al., ICML 2017): MNIST MLP 784-500-500-10, top-k = 80 output
gradients per example in the backward of the hidden layers (the output layer
dense). Adam, LR 1e-3, batch 50, 20 epochs. Published: 98.20% (dense) → 98.27%.

Args (e.g. ``experiments/meprop.py:k=30,unified,smoke``):
  k: kept entries per row (a count >= 1, or a fraction of each layer's width < 1).
  unified: one shared set of k columns per batch.
  smoke: a few steps on the offline digits.
"""

import ml_collections

from sparsejax.experiment import config as config_lib


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    """meProp config; see the module docstring for ``arg``."""
    a = config_lib.parse_arg(arg, k=80.0, unified=False, smoke=False)
    c = config_lib.base_config()
    c.name = f"meprop{'_unified' if a.unified else ''}_k{a.k:g}"
    c.dataset.name = "mnist"
    c.model = ml_collections.ConfigDict({"name": "mlp", "kwargs": {"features": (500, 500)}})
    c.batch_size = 50
    c.eval_batch_size = 500
    c.num_epochs = 20.0
    c.optimizer.name = "adamw"
    c.optimizer.learning_rate = 1e-3
    c.optimizer.weight_decay = 0.0
    c.schedule.name = "constant"
    c.log_every_steps = 200
    c.checkpoint_every_steps = 2000
    c.method = ml_collections.ConfigDict({"name": "meprop", "k": a.k, "unified": a.unified,
                                          "exclude": ""})
    if a.smoke:
        config_lib.smoke(c)
        c.method.k = min(a.k, 8.0)
    return c


def sweep(arg: str = "") -> list[dict]:
    """Dense and meProp k = 10/20/40/80, per-example and unified."""
    del arg
    members = [{"name": "dense", "method": {"name": "dense"}}]
    for unified in (False, True):
        members += [{"name": f"meprop{'_unified' if unified else ''}_k{k}",
                     "method.k": float(k), "method.unified": unified} for k in (10, 20, 40, 80)]
    return members
