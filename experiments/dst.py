"""Dynamic sparse training vs its baselines at equal sparsity (issue 18; SWAT's Table 3
comparison): static random, SET, RigL and sparse momentum (SNFS) at 80% and 90% with ERK
layer sparsities, plus AC/DC, on SWAT's CIFAR-10 setup (SPECS §3: SGD momentum 0.9, wd
5e-4, batch 128, 150 epochs, LR 0.1 → 0.01 @50 → 0.001 @100). Every method trains for
the dense run's step budget (one phase of the main length, no extra epochs).

Method settings (the papers' CIFAR ones where they exist): mask updates every ΔT = 100
steps (RigL's CIFAR value; SET and SNFS update once per epoch = 391 steps in their
papers, set ``update_every=391`` to match), drop fraction 0.3 (RigL, SET) / prune rate
0.5 (SNFS), RigL's cosine drop-fraction decay to 75% of training, SNFS's to the end.
AC/DC: uniform magnitude masks, 10% dense warm-up, sparse / dense phases of 5% of
training each, sparse fine-tuning from 90%, optimizer reset at each dense-phase start.

Args (comma-separated, e.g. ``experiments/dst.py:method=set,sparsity=0.8,smoke``):
  model: resnet18 | vgg16 | wrn16_8 | densenet121.
  method: rigl | set | snfs | static | acdc (rigl).
  sparsity: target weight sparsity (0.9).
  distribution: erk | uniform (erk; AC/DC: uniform | erk | global, default uniform).
  update_every: ΔT, steps between mask updates (100).
  smoke: a few steps of a narrow model on the offline digits (mask updates every 2 steps).
"""

import ml_collections

from sparsejax.experiment import config as config_lib

METHODS = ("static", "set", "rigl", "snfs", "acdc")


def method_config(method: str, sparsity: float, distribution: str | None = None,
                  update_every: int = 100) -> dict:
    """The ``config.method`` dict of one member (the papers' settings, module docstring)."""
    if method not in METHODS:
        raise ValueError(f"experiments/dst.py: method={method!r}; valid: {', '.join(METHODS)}.")
    if method == "acdc":
        return {"name": "acdc", "sparsity": sparsity, "distribution": distribution or "uniform",
                "warmup": 0.1, "sparse_phase": 0.05, "dense_phase": 0.05, "finetune": 0.9,
                "reset_state": "dense", "exclude": ""}
    out = {"name": method, "sparsity": sparsity, "distribution": distribution or "erk",
           "exclude": ""}
    if method != "static":
        out.update(update_every=update_every, drop_fraction=0.5 if method == "snfs" else 0.3,
                   end=0.75 if method == "rigl" else 1.0)
    return out


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    """One DST run; see the module docstring for ``arg``."""
    a = config_lib.parse_arg(arg, model="resnet18", method="rigl", sparsity=0.9,
                             distribution="", update_every=100, smoke=False)
    c = config_lib.cifar_config(a.model)
    update_every = 2 if a.smoke else a.update_every
    c.method = ml_collections.ConfigDict(
        method_config(a.method, a.sparsity, a.distribution or None, update_every))
    c.name = f"{a.method}_{c.method.distribution}_{round(100 * a.sparsity)}"
    if a.smoke:
        config_lib.smoke(c)
    return c


def sweep(arg: str = "") -> list[dict]:
    """Dense, then static / SET / RigL / SNFS (ERK) and AC/DC at 80% and 90%."""
    update_every = 2 if config_lib.parse_arg(arg, smoke=False).smoke else 100
    members = [{"name": "dense", "method": {"name": "dense"}}]
    for method in METHODS:
        for s in (0.8, 0.9):
            cfg = method_config(method, s, update_every=update_every)
            members.append({"name": f"{method}_{cfg['distribution']}_{round(100 * s)}",
                            "method": cfg})
    return members
