"""Gradual magnitude pruning (Zhu & Gupta 2017) in one training run, CIFAR-10 setup
of SPECS §3: sparsity ramps cubically from 0 at 10% of training to the target at
60%, masks refreshed every 100 steps, then fixed.

Args (e.g. ``experiments/gradual.py:sparsity=0.95,smoke``):
  model: resnet18 | vgg16 | wrn16_8 | densenet121.
  sparsity: final sparsity (0.9).
  distribution: uniform | erk | global.
  criterion: magnitude (Zhu & Gupta) | random | saliency (|w·g| with the refresh step's
    gradient; with distribution=global: jaxpruner's global saliency). A non-default
    criterion is added to the run name.
  smoke: a few steps on the offline digits.
"""

import ml_collections

from sparsejax.experiment import config as config_lib


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    """Gradual pruning config; see the module docstring for ``arg``."""
    a = config_lib.parse_arg(arg, model="resnet18", sparsity=0.9, distribution="uniform",
                             criterion="magnitude", smoke=False)
    c = config_lib.cifar_config(a.model)
    c.name = f"gradual_{round(100 * a.sparsity)}" + (
        f"_{a.criterion}" if a.criterion != "magnitude" else "")
    c.method = ml_collections.ConfigDict({
        "name": "gradual", "sparsity": a.sparsity, "begin": 0.1, "end": 0.6,
        "frequency": 100, "distribution": a.distribution, "exclude": "",
        "criterion": a.criterion})
    if a.smoke:
        config_lib.smoke(c)
        c.method.frequency = 1
    return c
