"""NVIDIA ASP 2:4: train dense → one-shot 2:4 magnitude masks → retrain with the same
optimizer, schedule and length (Mishra et al. 2021), with SWAT's CIFAR-10 setup
(SPECS §3). Layers are pruned only if ``out % 8 == 0 and in % 16 == 0`` (the first
conv is skipped); biases and norms never.

Args (e.g. ``experiments/asp.py:model=vgg16,smoke``):
  model: resnet18 | vgg16 | wrn16_8 | densenet121 | vit_tiny (CIFAR-10).
  n, m: the N:M pattern (2, 4).
  permute: search ASP's channel permutation before pruning (Pool & Yu 2021; off by
    default; MLPs and conv chains without residual connections only).
  smoke: a few steps on the offline digits.
"""

import ml_collections

from sparsejax.experiment import config as config_lib


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    """ASP config; see the module docstring for ``arg``."""
    a = config_lib.parse_arg(arg, model="resnet18", n=2, m=4, permute=False, smoke=False)
    c = config_lib.cifar_config(a.model)
    c.name = f"asp_{a.n}:{a.m}" + ("_permute" if a.permute else "")
    c.method = ml_collections.ConfigDict({"name": "asp", "n": a.n, "m": a.m, "exclude": "",
                                          "permute": a.permute})
    if a.smoke:
        config_lib.smoke(c)
    return c
