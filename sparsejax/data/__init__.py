"""Datasets of the experiment stack (TFDS-backed; imports TensorFlow Datasets).

Not imported by the core ``sparsejax`` package. Importing it registers the offline
``sklearn_digits`` and ``mnist_5k`` TFDS builders (:mod:`sparsejax.data.offline`).

Example:
  >>> from sparsejax import data
  >>> train = data.load("sklearn_digits", split="train", batch_size=64, seed=0)
  >>> batch = train.get_batch(0)
"""

from sparsejax.data.offline import OFFLINE_BUILDERS, Mnist5k, SklearnDigits, prepare
from sparsejax.data.pipeline import (DATASETS, Augmentation, Batch, Dataset, DatasetInfo,
                                     InMemoryDataset, StreamingDataset, load, normalize,
                                     random_crop_flip)

__all__ = [
    "DATASETS", "OFFLINE_BUILDERS", "Augmentation", "Batch", "Dataset", "DatasetInfo",
    "InMemoryDataset", "Mnist5k", "SklearnDigits", "StreamingDataset", "load", "normalize",
    "prepare", "random_crop_flip",
]
