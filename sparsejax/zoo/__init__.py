"""Model zoo: standard Flax linen image classifiers and a name registry.

Every model is built from stock ``nn.Dense`` / ``nn.Conv`` / ``nn.BatchNorm`` layers
(so sparsity adapters can intercept them), is called as
``model.apply(variables, x, train=...)`` on NHWC images and returns float32 logits
``(batch, num_classes)``. Models with BatchNorm keep running statistics in the
``batch_stats`` collection. Imports only jax and flax.

Example:
  >>> from sparsejax import zoo
  >>> model = zoo.get_model("resnet18", num_classes=10)
  >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn

from sparsejax.zoo.densenet import DenseNet, DenseNet121
from sparsejax.zoo.mlp import MLP, LeNet5, LeNet300100, RefCNN
from sparsejax.zoo.resnet import (BasicBlock, Bottleneck, ResNet, ResNet18, ResNet34, ResNet50,
                                  WideBlock, WideResNet, WRN16_8)
from sparsejax.zoo.vgg import VGG16
from sparsejax.zoo.vit import EncoderBlock, ViT, vit_tiny

MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP,
    "lenet300100": LeNet300100,
    "lenet5": LeNet5,
    "refcnn": RefCNN,
    "resnet18": ResNet18,
    "resnet34": ResNet34,
    "resnet50": ResNet50,
    "vgg16": VGG16,
    "wrn16_8": WRN16_8,
    "wideresnet": WideResNet,
    "densenet121": DenseNet121,
    "vit": ViT,
    "vit_tiny": vit_tiny,
}


def get_model(name: str, **kwargs: Any) -> nn.Module:
    """Builds a model of the zoo by name.

    Args:
      name: one of ``MODELS`` (case-insensitive).
      **kwargs: constructor arguments of that model (e.g. ``num_classes``,
        ``width``, ``stem``, ``dtype``).

    Returns:
      An unbound Flax linen module.

    Raises:
      ValueError: for an unknown name (the message lists the valid names).

    Example:
      >>> model = get_model("lenet300100", num_classes=10)
    """
    key = name.lower()
    if key not in MODELS:
        raise ValueError(f"Unknown model {name!r}; valid names: {', '.join(sorted(MODELS))}.")
    return MODELS[key](**kwargs)


__all__ = [
    "MODELS", "get_model", "MLP", "LeNet300100", "LeNet5", "RefCNN", "ResNet", "BasicBlock",
    "Bottleneck", "ResNet18", "ResNet34", "ResNet50", "WideBlock", "WideResNet", "WRN16_8",
    "VGG16", "DenseNet", "DenseNet121", "EncoderBlock", "ViT", "vit_tiny",
]
