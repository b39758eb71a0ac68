"""``sklearn_digits``: scikit-learn's 8x8 handwritten digits as an offline TFDS dataset.

The 1,797 images ship inside the scikit-learn wheel (``sklearn.datasets.load_digits``
reads a local file), so building this dataset never touches the network. It is the
default dataset of the experiment stack: small enough to train a model end to end
on a laptop CPU in seconds.

Features: ``image`` uint8 ``(8, 8, 1)`` (the 0..16 intensities scaled to 0..255 and
rounded), ``label`` ``ClassLabel(10)``. Splits: ``train`` = the first 1,500 images,
``test`` = the last 297 (deterministic, roughly class balanced).

Importing this module registers the builder with TFDS, so
``tfds.builder("sklearn_digits")`` works after ``import sparsejax.data``.

References:
  Alpaydin & Kaynak, "Optical Recognition of Handwritten Digits", UCI Machine
  Learning Repository, 1998. https://doi.org/10.24432/C50P49
"""

from __future__ import annotations

import os
from typing import Iterator

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

NUM_TRAIN = 1500
NUM_EXAMPLES = 1797


class SklearnDigits(tfds.core.GeneratorBasedBuilder):
    """TFDS builder for scikit-learn's 8x8 digits (offline, no download)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: first 1500 images train, last 297 test."}
    # TFDS derives `code_path` through `importlib_resources`, which it only declares
    # as a dependency for Python < 3.9; this builder lives in a plain file, so name it.
    code_path = epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=("8x8 grey-scale handwritten digits bundled with scikit-learn "
                         "(sklearn.datasets.load_digits), intensities scaled 0..16 -> 0..255."),
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(8, 8, 1)),
                "label": tfds.features.ClassLabel(num_classes=10),
            }),
            supervised_keys=("image", "label"),
            homepage="https://archive.ics.uci.edu/dataset/80",
            citation=("@misc{alpaydin1998digits, title={Optical Recognition of Handwritten "
                      "Digits}, author={Alpaydin, E. and Kaynak, C.}, year={1998}, "
                      "howpublished={UCI Machine Learning Repository}}"),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        del dl_manager  # The data is local: nothing to download.
        return {
            "train": self._generate_examples(0, NUM_TRAIN),
            "test": self._generate_examples(NUM_TRAIN, NUM_EXAMPLES),
        }

    def _generate_examples(self, start: int, stop: int) -> Iterator[tuple[int, dict]]:
        from sklearn.datasets import load_digits  # Lazy: only needed to build.

        digits = load_digits()
        images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
        for index in range(start, stop):
            yield index, {"image": images[index], "label": int(digits.target[index])}


def prepare(data_dir: str | os.PathLike | None = None) -> SklearnDigits:
    """Builds ``sklearn_digits`` into ``data_dir`` (no-op if already built).

    Args:
      data_dir: TFDS data directory; ``None`` uses TFDS's default
        (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).

    Returns:
      The prepared builder (``builder.as_dataset(split="train")`` reads it).

    Example:
      >>> builder = prepare("/tmp/tfds")
      >>> builder.info.splits["test"].num_examples
      297
    """
    builder = SklearnDigits(data_dir=None if data_dir is None else os.fspath(data_dir))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return builder
