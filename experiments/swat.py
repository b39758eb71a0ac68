"""SWAT (Raihan & Aamodt, NeurIPS 2020) with the paper's hyper-parameters (SPECS §3).

CIFAR-10 (ResNet-18, VGG-16, WRN-16-8, DenseNet-121): SGD momentum 0.9, wd 5e-4,
batch 128, 150 epochs, LR 0.1 → 0.01 @50 → 0.001 @100, crop + flip; the last FC
sparse; the first conv dense for SWAT-U and inside the budget for SWAT-ERK and
SWAT-M (the official ``run_configurations``: ``sparsify_first_layer`` is False in
the ``unstructured_constant_*`` configs, True in the ERK and momentum ones).
VGG-16 is the official CIFAR VGG-16 (``zoo.VGG16(classifier="official")``: 13
conv + 512→4096→4096→10, 16 layers, 33.6M weights). ImageNet (``model=resnet50``): 90 epochs, batch
256, LR 0.1 ×0.1 @30/@60, wd 1e-4. Published: VGG-16 SWAT-U 90/90 → 91.95%,
WRN-16-8 → 95.13%; ImageNet ResNet-50 SWAT-U 80% → 75.2, 90% → 72.1, ERK 80% → 76.0.

Args (comma-separated, e.g. ``experiments/swat.py:model=vgg16,sparsity=0.9,smoke``):
  model: resnet18 | vgg16 (the official 16-layer VGG-16) | wrn16_8 | densenet121 (CIFAR-10)
    | resnet50 (ImageNet).
  sparsity: weight = activation sparsity (0.9).
  distribution: uniform (SWAT-U) | erk (SWAT-ERK) | momentum (SWAT-M).
  structured: none | slice | filter | channel.
  period: steps between exact top-K refreshes (1; the official code uses 10-20).
  saved: auto | packed | masked | remat: how the activation saved for dW is kept (auto:
    bits + kept values wherever the kept count is static, i.e. period 1 and uniform/erk, else a
    masked dense array; packed: always, period 1 and uniform/erk only; masked: a masked dense
    array; remat: recomputed in the backward pass, least memory with BatchNorm).
  smoke: a few steps of a narrow model on the offline digits (seconds on CPU).
"""

import ml_collections

from sparsejax.experiment import config as config_lib


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    """SWAT config; see the module docstring for ``arg``."""
    a = config_lib.parse_arg(arg, model="resnet18", sparsity=0.9, distribution="uniform",
                             structured="none", period=1, saved="auto", smoke=False)
    c = config_lib.imagenet_config() if a.model == "resnet50" else config_lib.cifar_config(a.model)
    c.name = f"swat_{a.distribution}_{round(100 * a.sparsity)}"
    c.method = ml_collections.ConfigDict({
        "name": "swat", "sparsity": a.sparsity, "distribution": a.distribution,
        "structured": a.structured, "period": a.period,
        "dense_first": _dense_first(a.distribution), "dense_last": False, "exclude": "",
        "saved": a.saved})
    if a.smoke:
        config_lib.smoke(c)
    if a.model == "vgg16":  # SWAT's CIFAR VGG-16 (also its narrow smoke stand-in)
        c.model.kwargs.classifier = "official"
    return c


def _dense_first(distribution: str) -> bool:
    """The official configs' ``not sparsify_first_layer``: SWAT-U only."""
    return distribution == "uniform"


def sweep(arg: str = "") -> list[dict]:
    """SWAT-U and SWAT-ERK at 50/70/80/90% and the dense baseline."""
    del arg
    members = [{"name": "dense", "method": {"name": "dense"}}]
    for distribution in ("uniform", "erk"):
        for s in (0.5, 0.7, 0.8, 0.9):
            members.append({"name": f"swat_{distribution}_{round(100 * s)}",
                            "method.distribution": distribution, "method.sparsity": s,
                            "method.dense_first": _dense_first(distribution)})
    return members
