"""DSG (Liu et al., ICLR 2019): output neurons chosen per row by a sparse random
projection, VGG-16 with SWAT's CIFAR-10 setup (SPECS §3). Published: within ≈1%
of dense at 80% sparsity. Applied to the unmodified conv → BN → ReLU model the
single output mask is used (see :func:`sparsejax.methods.dsg`).

Args (e.g. ``experiments/dsg.py:sparsity=0.5,smoke``):
  model: vgg16 | resnet18 | wrn16_8.
  sparsity: fraction γ of output neurons dropped (0.8).
  smoke: a few steps on the offline digits.
"""

import ml_collections

from sparsejax.experiment import config as config_lib


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    """DSG config; see the module docstring for ``arg``."""
    a = config_lib.parse_arg(arg, model="vgg16", sparsity=0.8, smoke=False)
    c = config_lib.cifar_config(a.model)
    c.name = f"dsg_{round(100 * a.sparsity)}"
    c.method = ml_collections.ConfigDict({"name": "dsg", "sparsity": a.sparsity,
                                          "epsilon": 0.5, "exclude": ""})
    if a.smoke:
        config_lib.smoke(c)
    return c
