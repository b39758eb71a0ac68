"""Datasets of the experiment stack (TFDS-backed; imports TensorFlow Datasets).

Not imported by the core ``sparsejax`` package. Importing it registers the offline
``sklearn_digits`` TFDS builder.

Example:
  >>> from sparsejax import data
  >>> train = data.load("sklearn_digits", split="train", batch_size=64, seed=0)
  >>> batch = train.get_batch(0)
"""

from sparsejax.data.digits import SklearnDigits, prepare
from sparsejax.data.pipeline import (DATASETS, Augmentation, Batch, Dataset, DatasetInfo,
                                     InMemoryDataset, StreamingDataset, load, normalize,
                                     random_crop_flip)

__all__ = [
    "DATASETS", "Augmentation", "Batch", "Dataset", "DatasetInfo", "InMemoryDataset",
    "StreamingDataset", "SklearnDigits", "load", "normalize", "prepare", "random_crop_flip",
]
