"""Han et al. (NeurIPS 2015) magnitude pruning: train dense → prune → retrain at LR/10.

MNIST, Caffe LeNet solver: SGD momentum 0.9, wd 5e-4, batch 64, LR 0.01 (cosine
decay stands in for Caffe's "inv" policy), 20 epochs; each retraining phase as
long as the dense one at 1/10 of the LR. Published (Table 1): LeNet-300-100
267K → 22K params (12×, 92% sparsity), error 1.64% → 1.59%; LeNet-5 431K → 36K
(12×), 0.80% → 0.77%.

Args (e.g. ``experiments/han.py:model=lenet5,iterations=3,smoke``):
  model: lenet300100 | lenet5.
  sparsity: final sparsity (0.92).
  iterations: prune → retrain rounds (1 = one-shot; Han used 5 for VGG-16).
  dataset: mnist (TFDS download, 60K images) | mnist_5k (5,000 real MNIST images that
    ship offline: 4,000 train / 1,000 test).
  criterion: magnitude (Han) | random | saliency (|w·g| with the first retraining batch's
    gradient) | snip (prune at initialisation from the first batch's gradient, then train
    sparse; SNIP prunes globally: add distribution=global). A non-default criterion is
    added to the run name.
  distribution: uniform | erk | global.
  smoke: a few steps on the offline digits.
"""

import ml_collections

from sparsejax.experiment import config as config_lib


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    """Han prune → retrain config; see the module docstring for ``arg``."""
    a = config_lib.parse_arg(arg, model="lenet300100", sparsity=0.92, iterations=1,
                             dataset="mnist", criterion="magnitude", distribution="uniform",
                             smoke=False)
    c = config_lib.base_config()
    c.name = f"han_{a.model}_{round(100 * a.sparsity)}" + (
        f"_x{a.iterations}" if a.iterations > 1 else "") + (
        f"_{a.criterion}" if a.criterion != "magnitude" else "")
    c.dataset.name = a.dataset
    c.model = ml_collections.ConfigDict({"name": a.model, "kwargs": {}})
    c.batch_size = 64
    c.eval_batch_size = 500
    c.num_epochs = 20.0
    c.optimizer.learning_rate = 0.01
    c.optimizer.weight_decay = 5e-4
    c.schedule.name = "cosine"
    c.log_every_steps = 200
    c.checkpoint_every_steps = 2000
    c.method = ml_collections.ConfigDict({
        "name": "magnitude", "sparsity": a.sparsity, "iterations": a.iterations,
        "retrain_epochs": 20.0, "retrain_lr_scale": 0.1, "distribution": a.distribution,
        "q": 0.0, "layers": "", "exclude": "", "criterion": a.criterion})
    if a.smoke:
        config_lib.smoke(c)
    return c


def sweep(arg: str = "") -> list[dict]:
    """One-shot and 3-round iterative pruning at 80/90/92/95%."""
    del arg
    return [{"name": f"han{round(100 * s)}_x{n}", "method.sparsity": s, "method.iterations": n}
            for n in (1, 3) for s in (0.8, 0.9, 0.92, 0.95)]
