"""Weight-gradient drop (Aji & Heafield 2017 style): the smallest 99% of each kernel
gradient is zeroed before momentum SGD; SWAT's CIFAR-10 setup (SPECS §3). A
baseline for "sparsify gradients instead of weights" (it saves communication,
not FLOPs).

Args (e.g. ``experiments/grad_drop.py:sparsity=0.9,smoke``):
  model: resnet18 | vgg16 | wrn16_8.
  sparsity: fraction of each kernel gradient dropped (0.99).
  smoke: a few steps on the offline digits.
"""

import ml_collections

from sparsejax.experiment import config as config_lib


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    """Gradient-drop config; see the module docstring for ``arg``."""
    a = config_lib.parse_arg(arg, model="resnet18", sparsity=0.99, smoke=False)
    c = config_lib.cifar_config(a.model)
    c.name = f"grad_drop_{round(100 * a.sparsity)}"
    c.method = ml_collections.ConfigDict({"name": "grad_drop", "sparsity": a.sparsity,
                                          "exclude": ""})
    if a.smoke:
        config_lib.smoke(c)
    return c
