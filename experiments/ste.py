"""STE / SR-STE 2:4 from scratch (Zhou et al., ICLR 2021) with SWAT's CIFAR-10
setup (SPECS §3): N:M-masked weights in the forward, the dense gradient to W;
SR-STE adds λ·(1 − mask)·W to the pruned weights' gradient (λ = 2e-4).

Args (e.g. ``experiments/ste.py:srste,smoke``):
  model: resnet18 | vgg16 | wrn16_8 | densenet121 | vit_tiny.
  pattern: N:M such as 2:4, or unstructured (then set sparsity).
  sparsity: for the unstructured pattern.
  srste: use SR-STE's decay λ = 2e-4.
  smoke: a few steps on the offline digits.
"""

import ml_collections

from sparsejax.experiment import config as config_lib


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    """STE config; see the module docstring for ``arg``."""
    a = config_lib.parse_arg(arg, model="resnet18", pattern="2:4", sparsity=0.0, srste=False,
                             smoke=False)
    c = config_lib.cifar_config(a.model)
    c.name = ("srste_" if a.srste else "ste_") + a.pattern
    c.method = ml_collections.ConfigDict({
        "name": "ste", "pattern": a.pattern, "sparsity": a.sparsity,
        "decay": 2e-4 if a.srste else 0.0, "exclude": ""})
    if a.smoke:
        config_lib.smoke(c)
    return c


def sweep(arg: str = "") -> list[dict]:
    """Dense, STE 2:4 and SR-STE 2:4."""
    del arg
    return [{"name": "dense", "method": {"name": "dense"}},
            {"name": "ste_2:4", "method.decay": 0.0},
            {"name": "srste_2:4", "method.decay": 2e-4}]
