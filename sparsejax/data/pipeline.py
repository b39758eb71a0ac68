"""Input pipelines over TFDS: on-device batching for small datasets, tf.data for ImageNet.

Small datasets (``sklearn_digits``, ``mnist_5k``, ``mnist``, ``cifar10``, ``cifar100``: at
most a few hundred MB as uint8) are read once into memory, put on the device(s) as uint8 and
batched by one jitted function of the step number: shuffling is a permutation keyed
by ``fold_in(key, epoch)``, augmentation is keyed by ``fold_in(key, step)``. So the
data position of a run is just its step, and resuming from a checkpoint at step
``s`` replays exactly the batches ``s, s+1, ...`` of the uninterrupted run.

``imagenet2012`` streams through ``tf.data`` (random-resized crop + flip for
training, resize + center crop for evaluation), deterministically seeded; resuming
at step ``s`` skips ``s`` batches of raw (undecoded) records.

Every batch is a dict ``{"image": float32 (B, H, W, C) normalised,
"label": int32 (B,), "mask": bool (B,)}``; ``mask`` is False only on the padding of
the last, partial evaluation batch (so all batches have a static shape).

TensorFlow and TFDS are imported lazily; nothing here downloads unless
``load(..., download=True)`` is passed.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import itertools
import math
import os
import re
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from sparsejax.data.offline import OFFLINE_BUILDERS

Batch = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """Training augmentation of the in-memory pipeline (hashable, jit-static).

    Attributes:
      crop_padding: zero-pad each side by this many pixels, then crop back to the
        original size at a random offset (0 disables cropping). The streamed
        ImageNet pipeline always uses a random-resized crop instead.
      flip: random horizontal flip with probability 1/2 (wrong for digits).
    """

    crop_padding: int = 0
    flip: bool = False


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset.

    Attributes:
      name: registry name (see :data:`DATASETS`).
      num_classes: number of labels.
      image_shape: ``(height, width, channels)`` of the batches.
      num_train: examples in the ``train`` split (``None`` when TFDS does not know,
        e.g. under ``tfds.testing.mock_data``).
      num_test: examples in the evaluation split (``test``, or ``validation`` for
        ImageNet), or ``None``.
      mean: per-channel mean of the pixels scaled to [0, 1].
      std: per-channel standard deviation of the pixels scaled to [0, 1].
    """

    name: str
    num_classes: int
    image_shape: tuple[int, int, int]
    num_train: int | None
    num_test: int | None
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclasses.dataclass(frozen=True)
class _Spec:
    """Per-dataset constants; ``image_shape=None`` marks a streamed dataset."""

    num_classes: int
    image_shape: tuple[int, int, int] | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augmentation: Augmentation
    test_split: str = "test"


_SPECS: dict[str, _Spec] = {
    # Mean/std of the 1,500 training images (0..16 scaled to 0..255).
    "sklearn_digits": _Spec(10, (8, 8, 1), (0.3052,), (0.3749,), Augmentation(1, False)),
    # No augmentation by default: the LeNet baselines of Han et al. use none.
    "mnist": _Spec(10, (28, 28, 1), (0.1307,), (0.3081,), Augmentation(0, False)),
    # Mean/std of the 4,000 training images of the offline MNIST subset.
    "mnist_5k": _Spec(10, (28, 28, 1), (0.1309,), (0.3080,), Augmentation(0, False)),
    "cifar10": _Spec(10, (32, 32, 3), (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
                     Augmentation(4, True)),
    "cifar100": _Spec(100, (32, 32, 3), (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
                      Augmentation(4, True)),
    "imagenet2012": _Spec(1000, None, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
                          Augmentation(0, True), test_split="validation"),
}

DATASETS: tuple[str, ...] = tuple(sorted(_SPECS))
"""Names accepted by :func:`load`."""


def _spec(name: str) -> _Spec:
    if name not in _SPECS:
        raise ValueError(f"Unknown dataset {name!r}; valid names: {', '.join(DATASETS)}.")
    return _SPECS[name]


@functools.partial(jax.jit, static_argnames=("mean", "std"))
def normalize(images: ArrayLike, mean: tuple[float, ...], std: tuple[float, ...]) -> jax.Array:
    """Maps pixels in [0, 255] to float32 ``(x / 255 - mean) / std`` per channel.

    Args:
      images: ``(..., channels)`` pixels, uint8 or float.
      mean: per-channel mean in [0, 1] units (a tuple: static under jit).
      std: per-channel standard deviation in [0, 1] units.

    Returns:
      float32 array of the same shape.
    """
    x = jnp.asarray(images, jnp.float32) / 255.0
    return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


@functools.partial(jax.jit, static_argnames=("padding", "flip"))
def random_crop_flip(images: ArrayLike, key: jax.Array, *, padding: int,
                     flip: bool) -> jax.Array:
    """Random crop after zero padding, and optional horizontal flip, per example.

    Args:
      images: ``(batch, height, width, channels)`` of any dtype.
      key: PRNG key; the same key gives the same crops and flips.
      padding: pixels of zero padding on each side (0: no crop).
      flip: whether to flip each image left-right with probability 1/2.

    Returns:
      Augmented images with the input's shape and dtype.

    Example:
      >>> x = random_crop_flip(images, jax.random.key(0), padding=4, flip=True)

    References:
      He et al., "Deep Residual Learning for Image Recognition", CVPR 2016 (sec. 4.2:
      pad 4, random 32x32 crop, horizontal flip on CIFAR).
    """
    images = jnp.asarray(images)
    n, h, w, c = images.shape
    crop_key, flip_key = jax.random.split(key)
    if padding > 0:
        pad = ((0, 0), (padding, padding), (padding, padding), (0, 0))
        padded = jnp.pad(images, pad)
        offsets = jax.random.randint(crop_key, (n, 2), 0, 2 * padding + 1)
        images = jax.vmap(lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1], 0), (h, w, c)))(
            padded, offsets)
    if flip:
        flips = jax.random.bernoulli(flip_key, 0.5, (n,))
        images = jnp.where(flips[:, None, None, None], images[:, :, ::-1], images)
    return images


class Dataset(abc.ABC):
    """A batched, deterministic dataset; iterate it or ask for a step's batch.

    Attributes:
      info: the :class:`DatasetInfo`.
      batch_size: global batch size.
      num_examples: examples in the loaded split.
    """

    info: DatasetInfo
    batch_size: int
    num_examples: int

    @property
    @abc.abstractmethod
    def steps_per_epoch(self) -> int:
        """Batches in one pass over the split."""

    @abc.abstractmethod
    def get_batch(self, step: int) -> Batch:
        """Returns the batch of a global step (deterministic in the seed and the step).

        Args:
          step: global step.

        Returns:
          ``{"image": float32 (B, H, W, C), "label": int32 (B,), "mask": bool (B,)}``.
        """

    @abc.abstractmethod
    def iterate(self, start_step: int = 0, num_steps: int | None = None) -> Iterator[Batch]:
        """Yields the batches of steps ``start_step, start_step + 1, ...``.

        Args:
          start_step: first step (resume from a checkpoint by passing its step).
          num_steps: number of batches; ``None`` iterates forever (across epochs).

        Returns:
          An iterator of batch dicts.
        """

    def __iter__(self) -> Iterator[Batch]:
        """One epoch from step 0 (the usual evaluation loop)."""
        return self.iterate(0, self.steps_per_epoch)

    def __len__(self) -> int:
        return self.steps_per_epoch


@dataclasses.dataclass(frozen=True)
class _BatchPlan:
    num_examples: int
    batch_size: int
    shuffle: bool
    drop_remainder: bool
    augmentation: Augmentation | None
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def steps_per_epoch(self) -> int:
        if self.drop_remainder:
            return self.num_examples // self.batch_size
        return math.ceil(self.num_examples / self.batch_size)


def _batch_at(images: jax.Array, labels: jax.Array, key: jax.Array, step: jax.Array, *,
              plan: _BatchPlan) -> Batch:
    """The batch of ``step``: a pure function of (data, key, step)."""
    step = jnp.asarray(step, jnp.int32)
    epoch, index = jnp.divmod(step, plan.steps_per_epoch)
    shuffle_key, augment_key = jax.random.split(key)
    n = plan.num_examples
    if plan.shuffle:
        order = jax.random.permutation(jax.random.fold_in(shuffle_key, epoch), n)
    else:
        order = jnp.arange(n)
    position = index * plan.batch_size + jnp.arange(plan.batch_size)
    mask = position < n
    chosen = order[jnp.minimum(position, n - 1)]
    x = images[chosen]
    if plan.augmentation is not None:
        x = random_crop_flip(x, jax.random.fold_in(augment_key, step),
                             padding=plan.augmentation.crop_padding,
                             flip=plan.augmentation.flip)
    return {"image": normalize(x, plan.mean, plan.std),
            "label": labels[chosen].astype(jnp.int32), "mask": mask}


@functools.lru_cache(maxsize=None)
def _compiled_batch_fn(plan: _BatchPlan, sharding: jax.sharding.NamedSharding | None) -> Any:
    """One jitted batch function per (plan, sharding): equal datasets share compilations."""
    out_shardings = None if sharding is None else {"image": sharding, "label": sharding,
                                                   "mask": sharding}
    return jax.jit(functools.partial(_batch_at, plan=plan), out_shardings=out_shardings)


class InMemoryDataset(Dataset):
    """A dataset held on device as uint8 and batched by a jitted function of the step.

    ``get_batch(step)`` is deterministic in ``(seed, step)``: epoch ``e`` visits the
    examples in the order ``permutation(fold_in(key, e))``, so the data position
    needs no state beyond the step number (checkpoint/resume for free).

    Args:
      images: ``(N, H, W, C)`` uint8 pixels.
      labels: ``(N,)`` integer labels.
      info: dataset facts (normalisation constants are taken from it).
      batch_size: global batch size.
      seed: seed of shuffling and augmentation.
      shuffle: reshuffle every epoch (else the stored order).
      augmentation: crop/flip augmentation, or ``None``.
      drop_remainder: drop the last partial batch of each epoch; if False it is
        padded to ``batch_size`` with ``mask`` False on the padding.
      sharding: optional ``NamedSharding`` of the batches (leading axis, e.g.
        ``NamedSharding(mesh, P("data"))``); the stored data is replicated on its mesh.

    Example:
      >>> ds = InMemoryDataset(images, labels, info, batch_size=128)
      >>> batch = ds.get_batch(step)   # {"image", "label", "mask"}
    """

    def __init__(self, images: ArrayLike, labels: ArrayLike, info: DatasetInfo, *,
                 batch_size: int, seed: int = 0, shuffle: bool = True,
                 augmentation: Augmentation | None = None, drop_remainder: bool = True,
                 sharding: jax.sharding.NamedSharding | None = None) -> None:
        images = np.asarray(images)
        labels = np.asarray(labels)
        if images.ndim != 4 or labels.shape != images.shape[:1]:
            raise ValueError(f"Expected images (N, H, W, C) and labels (N,), got {images.shape} "
                             f"and {labels.shape}.")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}.")
        if drop_remainder and len(images) < batch_size:
            raise ValueError(f"batch_size={batch_size} exceeds the {len(images)} examples of the "
                             "split; use a smaller batch or drop_remainder=False.")
        self.info = info
        self.batch_size = batch_size
        self.num_examples = len(images)
        self._plan = _BatchPlan(len(images), batch_size, shuffle, drop_remainder, augmentation,
                                info.mean, info.std)
        stored = None if sharding is None else jax.sharding.NamedSharding(
            sharding.mesh, jax.sharding.PartitionSpec())
        self.images = jax.device_put(images, stored)
        self.labels = jax.device_put(labels.astype(np.int32), stored)
        self._key = jax.random.key(seed)
        self._batch_fn = _compiled_batch_fn(self._plan, sharding)

    @property
    def steps_per_epoch(self) -> int:
        """Batches per epoch (``N // B``, or ``ceil(N / B)`` without drop_remainder)."""
        return self._plan.steps_per_epoch

    @property
    def augmentation(self) -> Augmentation | None:
        """The augmentation applied to every batch (``None``: none)."""
        return self._plan.augmentation

    def get_batch(self, step: int | jax.Array) -> Batch:
        """Returns the batch of a global step (any step, in any order).

        Args:
          step: global step; epoch ``step // steps_per_epoch``. May be traced.

        Returns:
          ``{"image": float32 (B, H, W, C), "label": int32 (B,), "mask": bool (B,)}``.
        """
        return self._batch_fn(self.images, self.labels, self._key, step)

    def iterate(self, start_step: int = 0, num_steps: int | None = None) -> Iterator[Batch]:
        """Yields ``get_batch(s)`` for ``s = start_step, ...`` (forever if ``num_steps`` is None)."""
        steps = itertools.count(start_step) if num_steps is None else range(
            start_step, start_step + num_steps)
        return (self.get_batch(step) for step in steps)


class StreamingDataset(Dataset):
    """A tf.data pipeline over a TFDS builder for large datasets (ImageNet).

    Training (``shuffle=True``): files shuffled with ``seed``, records repeated and
    shuffled in a buffer, random-resized crop (area 8–100 %, aspect 3/4–4/3) and
    optional flip with stateless ops seeded by ``(seed, record index)``. Evaluation:
    resize so that a centred ``image_size`` crop covers ``image_size / (image_size
    + 32)`` of the short side, no shuffling, partial last batch padded (``mask``).
    With several JAX processes each reads its own shard of the split
    (``tfds.split_for_jax_process``) and batches are assembled into global arrays
    with ``sharding``.

    Args:
      builder: a TFDS builder whose data is prepared.
      split: TFDS split string.
      info: dataset facts.
      batch_size: global batch size (divisible by ``jax.process_count()``).
      num_examples: examples in ``split`` (sets ``steps_per_epoch``).
      seed: seed of file order, shuffling and augmentation.
      shuffle: training mode (shuffle + augmentation) or evaluation mode.
      augmentation: ``None`` disables the random crop and flip; its ``flip`` field
        enables flipping.
      drop_remainder: drop (True) or pad (False) the last partial batch.
      image_size: side of the output images.
      shuffle_buffer: records in the shuffle buffer.
      sharding: ``NamedSharding`` of the batches (needed with several processes).
    """

    def __init__(self, builder: Any, split: str, info: DatasetInfo, *, batch_size: int,
                 num_examples: int, seed: int = 0, shuffle: bool = True,
                 augmentation: Augmentation | None = None, drop_remainder: bool = True,
                 image_size: int = 224, shuffle_buffer: int = 10_000,
                 sharding: jax.sharding.NamedSharding | None = None) -> None:
        if batch_size <= 0 or batch_size % jax.process_count():
            raise ValueError(f"batch_size={batch_size} must be positive and divisible by the "
                             f"number of processes ({jax.process_count()}).")
        if jax.process_count() > 1 and sharding is None:
            raise ValueError("With several JAX processes pass a NamedSharding for the batches "
                             "so that each process's shard joins one global array.")
        self.info = info
        self.batch_size = batch_size
        self.num_examples = num_examples
        self._builder = builder
        self._split = split
        self._seed = seed
        self._shuffle = shuffle
        self._augmentation = augmentation
        self._drop_remainder = drop_remainder
        self._image_size = image_size
        self._shuffle_buffer = shuffle_buffer
        self._sharding = sharding
        self._cursor: tuple[int, Iterator[Batch]] | None = None

    @property
    def steps_per_epoch(self) -> int:
        """Batches per epoch of the global split."""
        if self._drop_remainder:
            return self.num_examples // self.batch_size
        return math.ceil(self.num_examples / self.batch_size)

    def get_batch(self, step: int) -> Batch:
        """Returns the batch of ``step`` (a Python int).

        Consecutive steps stream from one open pipeline; any other step reopens the
        pipeline there (skipping records, as on resume), so the result is always the
        batch the uninterrupted stream would give at ``step``.

        Args:
          step: global step.

        Returns:
          The batch dict.
        """
        if self._cursor is None or self._cursor[0] != step:
            self._cursor = (step, self.iterate(step))
        batch = next(self._cursor[1])
        self._cursor = (step + 1, self._cursor[1])
        return batch

    def _preprocess(self, index: Any, example: dict) -> dict:
        import tensorflow as tf

        size = self._image_size
        image = tf.io.decode_image(example["image"], channels=3, expand_animations=False)
        if self._shuffle and self._augmentation is not None:
            seeds = tf.random.experimental.stateless_split(
                tf.stack([tf.constant(self._seed, tf.int64), tf.cast(index, tf.int64)]), 2)
            begin, crop, _ = tf.image.stateless_sample_distorted_bounding_box(
                tf.shape(image), bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
                seed=seeds[0], min_object_covered=0.1, aspect_ratio_range=(3 / 4, 4 / 3),
                area_range=(0.08, 1.0), max_attempts=10, use_image_if_no_bounding_boxes=True)
            image = tf.image.resize(tf.slice(image, begin, crop), (size, size))
            if self._augmentation.flip:
                image = tf.image.stateless_random_flip_left_right(image, seed=seeds[1])
        else:
            shape = tf.shape(image)
            side = tf.cast(tf.cast(tf.minimum(shape[0], shape[1]), tf.float32)
                           * (size / (size + 32)), tf.int32)
            top, left = (shape[0] - side + 1) // 2, (shape[1] - side + 1) // 2
            image = tf.image.resize(tf.image.crop_to_bounding_box(image, top, left, side, side),
                                    (size, size))
        mean = tf.constant(self.info.mean, tf.float32) * 255.0
        std = tf.constant(self.info.std, tf.float32) * 255.0
        return {"image": (tf.cast(image, tf.float32) - mean) / std,
                "label": tf.cast(example["label"], tf.int32)}

    def _tf_dataset(self, start_step: int) -> Any:
        import tensorflow as tf
        import tensorflow_datasets as tfds

        processes = jax.process_count()
        split = tfds.split_for_jax_process(self._split) if processes > 1 else self._split
        local_batch = self.batch_size // processes
        ds = self._builder.as_dataset(
            split=split, shuffle_files=self._shuffle,
            decoders={"image": tfds.decode.SkipDecoding()},
            read_config=tfds.ReadConfig(shuffle_seed=self._seed))
        if self._shuffle:
            # Skip raw records before decoding: resuming costs only reads.
            ds = ds.repeat().shuffle(self._shuffle_buffer, seed=self._seed).enumerate()
            ds = ds.skip(start_step * local_batch)
            ds = ds.map(self._preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            ds = ds.batch(local_batch, drop_remainder=self._drop_remainder)
        else:
            ds = ds.enumerate().map(self._preprocess, num_parallel_calls=tf.data.AUTOTUNE,
                                    deterministic=True)
            ds = ds.batch(local_batch, drop_remainder=self._drop_remainder).repeat()
            ds = ds.skip(start_step)
        return ds.prefetch(tf.data.AUTOTUNE)

    def iterate(self, start_step: int = 0, num_steps: int | None = None) -> Iterator[Batch]:
        """Yields the batches of steps ``start_step, ...`` (forever if ``num_steps`` is None)."""
        local_batch = self.batch_size // jax.process_count()
        records = self._tf_dataset(start_step).as_numpy_iterator()
        if num_steps is not None:
            records = itertools.islice(records, num_steps)
        for record in records:
            count = len(record["label"])
            mask = np.arange(local_batch) < count
            batch = {key: np.concatenate([value, np.zeros((local_batch - count, *value.shape[1:]),
                                                          value.dtype)])
                     for key, value in record.items()}
            batch["mask"] = mask
            if self._sharding is None:
                yield jax.device_put(batch)
            else:
                yield {key: jax.make_array_from_process_local_data(self._sharding, value)
                       for key, value in batch.items()}


def _prepare_once(builder: Any, make_builder: Any, download_config: Any) -> Any:
    """``builder.download_and_prepare``, by process 0 first in a multi-process job.

    TFDS builds into a temporary directory and renames it, so two processes
    preparing the same ``data_dir`` at once collide. Process 0 prepares, all
    processes wait for it, then the others open a fresh builder (one made before
    the data existed keeps empty split info) and prepare too: a no-op where process
    0's copy is visible (a shared ``data_dir``), a local build where it is not.

    Returns:
      The builder to read from.
    """
    processes = jax.process_count() if jax.distributed.is_initialized() else 1
    if processes == 1 or jax.process_index() == 0:
        builder.download_and_prepare(download_config=download_config)
    if processes > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"sparsejax: prepared {builder.name}")
        if jax.process_index() != 0:
            builder = make_builder()
            builder.download_and_prepare(download_config=download_config)
    return builder


def _resolve_augmentation(augment: bool | Augmentation | None, train: bool,
                          spec: _Spec) -> Augmentation | None:
    if isinstance(augment, Augmentation):
        return augment
    if augment is None:
        augment = train
    return spec.augmentation if augment else None


def load(name: str, *, split: str = "train", batch_size: int,
         data_dir: str | os.PathLike | None = None, seed: int = 0, train: bool | None = None,
         augment: bool | Augmentation | None = None, download: bool = False,
         image_size: int = 224, shuffle_buffer: int = 10_000,
         sharding: jax.sharding.NamedSharding | None = None) -> Dataset:
    """Loads a TFDS image-classification dataset as a deterministic batched :class:`Dataset`.

    Args:
      name: one of :data:`DATASETS`: ``"sklearn_digits"`` (offline default) and
        ``"mnist_5k"`` (5,000 real MNIST images), both built locally on first use
        with no network (:mod:`sparsejax.data.offline`), ``"mnist"``, ``"cifar10"``,
        ``"cifar100"``, ``"imagenet2012"``.
      split: TFDS split string, slicing allowed (``"train[:90%]"``). ``"test"`` means
        ``"validation"`` for ImageNet.
      batch_size: global batch size.
      data_dir: TFDS data directory (default ``$TFDS_DATA_DIR`` or
        ``~/tensorflow_datasets``).
      seed: seed of shuffling and augmentation.
      train: training mode (shuffle, augment, drop the last partial batch); default:
        True iff ``split`` starts with ``"train"``.
      augment: override augmentation: True/False for the dataset's default on/off,
        or an :class:`Augmentation`. Default: on in training mode. Defaults per
        dataset: digits crop pad 1 without flip, MNIST none, CIFAR pad 4 + flip,
        ImageNet random-resized crop + flip.
      download: let TFDS download and prepare a missing dataset (network!). Without
        it a missing dataset raises ``FileNotFoundError``. The offline datasets are
        always built locally, with no network access.
      image_size: output side for streamed datasets (ImageNet).
      shuffle_buffer: shuffle buffer of streamed datasets.
      sharding: ``NamedSharding`` for the batches (leading axis over devices).

    Returns:
      An :class:`InMemoryDataset` (digits, MNIST, CIFAR) or a
      :class:`StreamingDataset` (ImageNet).

    Raises:
      ValueError: unknown dataset name.
      FileNotFoundError: the dataset is not prepared in ``data_dir`` and
        ``download`` is False.

    Example:
      >>> train = load("sklearn_digits", split="train", batch_size=64)
      >>> batch = train.get_batch(0)        # {"image": (64, 8, 8, 1), "label", "mask"}
      >>> test = load("sklearn_digits", split="test", batch_size=64)
      >>> for batch in test: ...            # one epoch, last batch padded (mask)
    """
    spec = _spec(name)
    import tensorflow_datasets as tfds

    if spec.test_split != "test":
        split = re.sub(r"^test(?=$|\[)", spec.test_split, split)
    if train is None:
        train = split.startswith("train")
    augmentation = _resolve_augmentation(augment, train, spec)
    make_builder = functools.partial(
        tfds.builder, name, data_dir=None if data_dir is None else os.fspath(data_dir),
        try_gcs=False)
    builder = make_builder()
    if download or name in OFFLINE_BUILDERS:
        builder = _prepare_once(builder, make_builder,
                                tfds.download.DownloadConfig(try_download_gcs=False))
    splits = builder.info.splits
    num_train = splits["train"].num_examples if "train" in splits else None
    num_test = splits[spec.test_split].num_examples if spec.test_split in splits else None
    image_shape = spec.image_shape or (image_size, image_size, 3)
    info = DatasetInfo(name, spec.num_classes, image_shape, num_train, num_test, spec.mean,
                       spec.std)
    missing = (f"TFDS dataset {name!r} is not prepared under {builder.data_dir_root}. Pass "
               "download=True to load() to download and prepare it (needs network; ImageNet "
               "also needs the manual tar files in <data_dir>/downloads/manual), or pass "
               "data_dir= (or set $TFDS_DATA_DIR) to a directory that holds it.")
    if spec.image_shape is None:
        try:
            probe = builder.as_dataset(split=split)  # Fail here, not at the first batch.
        except AssertionError as error:
            raise FileNotFoundError(missing) from error
        num_examples = int(probe.cardinality())
        if num_examples < 0:  # Cardinality unknown to tf.data: ask the metadata.
            num_examples = splits[split].num_examples
        return StreamingDataset(builder, split, info, batch_size=batch_size,
                                num_examples=num_examples, seed=seed,
                                shuffle=train, augmentation=augmentation, drop_remainder=train,
                                image_size=image_size, shuffle_buffer=shuffle_buffer,
                                sharding=sharding)
    try:
        records = builder.as_dataset(split=split, shuffle_files=False)
    except AssertionError as error:
        raise FileNotFoundError(missing) from error
    # Read in chunks (TFDS's batch_size=-1 needs known split sizes, absent under mocks).
    chunks = list(tfds.as_numpy(records.map(lambda ex: (ex["image"], ex["label"])).batch(8192)))
    images = np.concatenate([chunk[0] for chunk in chunks])
    labels = np.concatenate([chunk[1] for chunk in chunks])
    if images.shape[1:] != spec.image_shape:
        raise ValueError(f"{name!r} images have shape {images.shape[1:]}, expected "
                         f"{spec.image_shape}.")
    return InMemoryDataset(images, labels, info, batch_size=batch_size, seed=seed,
                           shuffle=train, augmentation=augmentation, drop_remainder=train,
                           sharding=sharding)
