"""zkd.data host pipelines on tfds.testing.mock_data: shapes, determinism, resume, sharding, exact eval."""

import contextlib
import dataclasses
import functools
from unittest import mock

import numpy as np
import pytest
import tensorflow_datasets as tfds

from zkd import data
from zkd.data import pipeline

N = 48  # mock examples per split
CIFAR = dataclasses.replace(data.DATASETS["cifar100"], train_size=N, test_size=N)
# A small input size keeps the mock ImageNet fast; the transforms are size-generic.
IMAGENET = dataclasses.replace(data.DATASETS["imagenet2012"], train_size=N, test_size=N, image_shape=(32, 32, 3))


@contextlib.contextmanager
def mock_tfds(num_examples=N):
    """TFDS mock data; ``is_prepared`` agrees with the mock that the dataset exists."""
    with tfds.testing.mock_data(num_examples=num_examples), mock.patch.object(
        tfds.core.DatasetBuilder, "is_prepared", return_value=True
    ):
        yield


def take(it, n):
    return [next(it) for _ in range(n)]


def normalized_range(info):
    lo = (0.0 - np.array(info.mean)) / np.array(info.std)
    hi = (1.0 - np.array(info.mean)) / np.array(info.std)
    return lo, hi


# ----------------------------------------------------------------------------- constants


def test_dataset_table_and_errors():
    assert set(data.DATASETS) == {"cifar100", "cifar10", "imagenet2012", "fashion_mnist"}
    c100 = data.DATASETS["cifar100"]
    assert (c100.num_classes, c100.image_shape, c100.train_size, c100.test_size) == (100, (32, 32, 3), 50_000, 10_000)
    assert c100.mean == (0.5071, 0.4867, 0.4408) and c100.std == (0.2675, 0.2565, 0.2761)
    assert data.DATASETS["imagenet2012"].test_split == "validation"
    with pytest.raises(KeyError, match="valid names: cifar10, cifar100, fashion_mnist, imagenet2012"):
        data.DATASETS["mnist"]
    with pytest.raises(ValueError, match="valid names"):
        data.steps_per_epoch("svhn", 64)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c100.train_size = 1


def test_steps_per_epoch_drops_remainder():
    assert data.steps_per_epoch("cifar100", 64) == 781
    assert data.steps_per_epoch("imagenet2012", 512) == 2502
    with pytest.raises(ValueError, match="exceeds"):
        data.steps_per_epoch(CIFAR, N + 1)


def test_batch_must_divide_processes():
    with mock_tfds(), pytest.raises(ValueError, match="multiple of the 3 processes"):
        data.train_batches(CIFAR, data_dir=None, global_batch_size=16, seed=0, process_index=0, process_count=3)
    with pytest.raises(ValueError, match="process_index"):
        pipeline.resolve_processes(2, 2)


def test_missing_data_says_how_to_prepare(tmp_path):
    with pytest.raises(data.DataNotFoundError) as err:
        data.load_arrays("fashion_mnist", str(tmp_path), "train")
    msg = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in msg
    assert f"python -m zkd.data.prepare --dataset fashion_mnist --source /usr/share/datasets/fashion-mnist --data_dir {tmp_path}" in msg
    with pytest.raises(data.DataNotFoundError, match="cifar-100-python.tar.gz"):
        next(data.eval_batches("cifar100", data_dir=str(tmp_path), global_batch_size=8))


# ----------------------------------------------------------------------------- CIFAR (in memory)


def test_cifar_train_shapes_ranges_and_labels():
    with mock_tfds():
        images, labels = data.load_arrays(CIFAR, None, "train")
        batches = take(data.train_batches(CIFAR, data_dir=None, global_batch_size=16, seed=0), 4)
    assert images.shape == (N, 32, 32, 3) and images.dtype == np.uint8 and labels.dtype == np.int32
    lo, hi = normalized_range(CIFAR)
    for b in batches:
        assert b["image"].shape == (16, 32, 32, 3) and b["image"].dtype == np.float32
        assert b["label"].shape == (16,) and b["label"].dtype == np.int32
        assert np.all(b["image"] >= lo - 1e-5) and np.all(b["image"] <= hi + 1e-5)
        # zero padding shows up as exactly normalized 0 pixels in some crops
    # An epoch (3 steps of 16) visits every example exactly once.
    epoch_labels = np.sort(np.concatenate([b["label"] for b in batches[:3]]))
    np.testing.assert_array_equal(epoch_labels, np.sort(labels))
    # Steps follow batch_indices, the device sampler.
    for step, b in enumerate(batches):
        idx = np.asarray(data.batch_indices(0, step, 16, N))
        np.testing.assert_array_equal(b["label"], labels[idx])


def test_cifar_determinism_and_resume():
    with mock_tfds():
        a = take(data.train_batches(CIFAR, data_dir=None, global_batch_size=8, seed=3), 9)
        b = take(data.train_batches(CIFAR, data_dir=None, global_batch_size=8, seed=3), 9)
        resumed = take(data.train_batches(CIFAR, data_dir=None, global_batch_size=8, seed=3, start_step=7), 2)
        other = take(data.train_batches(CIFAR, data_dir=None, global_batch_size=8, seed=4), 1)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["image"], y["image"])
    for x, y in zip(a[7:], resumed):  # crosses the epoch boundary at step 6
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])
    assert not np.array_equal(a[0]["image"], other[0]["image"])
    assert not np.array_equal(a[0]["image"], a[6]["image"])  # a new epoch is reshuffled


def test_in_memory_stream_runs_without_tfdata_autotuning():
    """The in-memory stream's tf.data pipelines run with autotuning off (deleting an autotuned
    iterator mid-epoch waits for tf.data's tuning thread, up to a minute: see
    pipeline._without_autotune), and give the same batches as with it on."""
    seen = []
    as_numpy = pipeline.tf.data.Dataset.as_numpy_iterator

    def recording(ds):
        seen.append(ds.options().autotune.enabled)
        return as_numpy(ds)

    with mock_tfds(), mock.patch.object(pipeline.tf.data.Dataset, "as_numpy_iterator", recording):
        stream = data.train_batches(CIFAR, data_dir=None, global_batch_size=8, seed=3)
        ours = take(stream, 7)  # crosses the epoch boundary at step 6: two pipelines
        stream.close()
    assert seen[-2:] == [False, False]
    with mock_tfds(), mock.patch.object(pipeline, "_without_autotune", pipeline.tf.data.Options):
        tuned = take(data.train_batches(CIFAR, data_dir=None, global_batch_size=8, seed=3), 7)
    for x, y in zip(ours, tuned):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])


@functools.lru_cache(maxsize=None)
def two_view_global_batches(steps):
    """The first ``steps`` global batches of the two-view (MLKD) stream of one process: the
    reference of both process counts below, computed once (each epoch's tf.data pipeline traces
    RandAugment, seconds apiece)."""
    with mock_tfds():
        return take(data.train_batches(CIFAR, data_dir=None, global_batch_size=16, seed=1, two_views=True), steps)


@pytest.mark.parametrize("processes", [2, 4])
def test_cifar_process_batches_concatenate_to_global(processes):
    single = two_view_global_batches(4)  # steps 0-2 are epoch 0, step 3 epoch 1
    with mock_tfds():
        parts = [
            take(
                data.train_batches(
                    CIFAR, data_dir=None, global_batch_size=16, seed=1, two_views=True,
                    process_index=p, process_count=processes,
                ),
                4,
            )
            for p in range(processes)
        ]
    for step in range(4):
        for key in ("image_weak", "image_strong", "label"):
            local = [parts[p][step][key] for p in range(processes)]
            assert local[0].shape[0] == 16 // processes
            np.testing.assert_allclose(np.concatenate(local), single[step][key], rtol=0, atol=1e-6)


def test_cifar_two_views_differ_and_keep_range():
    with mock_tfds():
        b = next(data.train_batches(CIFAR, data_dir=None, global_batch_size=16, seed=0, two_views=True))
    assert set(b) == {"image_weak", "image_strong", "label"}
    assert b["image_weak"].shape == b["image_strong"].shape == (16, 32, 32, 3)
    lo, hi = normalized_range(CIFAR)
    assert np.all(b["image_strong"] >= lo - 1e-5) and np.all(b["image_strong"] <= hi + 1e-5)
    assert not np.allclose(b["image_weak"], b["image_strong"])


@pytest.mark.parametrize("processes,batch", [(1, 20), (2, 20), (3, 9), (4, 32)])
def test_cifar_eval_counts_every_example_once(processes, batch):
    with mock_tfds():
        images, labels = data.load_arrays(CIFAR, None, "test")
        per_process = [
            list(data.eval_batches(CIFAR, data_dir=None, global_batch_size=batch, process_index=p, process_count=processes))
            for p in range(processes)
        ]
    steps = data.eval_steps(N, batch, processes)
    assert all(len(batches) == steps for batches in per_process)
    kept_images, kept_labels, total = [], [], 0
    for batches in per_process:
        for b in batches:
            assert b["image"].shape == (batch // processes, 32, 32, 3) and b["mask"].dtype == bool
            assert np.all(b["image"][~b["mask"]] == 0) and np.all(b["label"][~b["mask"]] == 0)
            kept_images.append(b["image"][b["mask"]])
            kept_labels.append(b["label"][b["mask"]])
            total += int(b["mask"].sum())
    assert total == N  # the accuracy denominator
    expected = (images.astype(np.float32) / 255.0 - np.array(CIFAR.mean, np.float32)) / np.array(CIFAR.std, np.float32)
    np.testing.assert_allclose(np.concatenate(kept_images), expected, atol=1e-5)  # unaugmented, in order
    np.testing.assert_array_equal(np.concatenate(kept_labels), labels)


def test_in_memory_eval_batches_are_the_tf_data_pipelines_bits_without_tensorflow(monkeypatch):
    """In-memory evaluation without resizing runs in NumPy: the same bits as the tf.data pipeline
    it replaced (kept for resized views), and no TensorFlow call at all (machines without it)."""
    with mock_tfds():
        images, labels = data.load_arrays(CIFAR, None, "test")
    via_tf = list(pipeline._in_memory_eval(CIFAR, images, labels, 7).as_numpy_iterator())

    def no_tensorflow(*args, **kwargs):
        raise AssertionError("TensorFlow called")

    monkeypatch.setattr(pipeline.tf.data.Dataset, "from_tensor_slices", no_tensorflow)
    monkeypatch.setattr(pipeline.transforms, "normalize", no_tensorflow)
    via_numpy = list(pipeline._in_memory_eval_numpy(CIFAR, images, labels, 7))
    assert len(via_numpy) == len(via_tf) == -(-len(labels) // 7)
    for a, b in zip(via_numpy, via_tf):
        assert a["image"].dtype == np.float32 and a["label"].dtype == np.int32
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])


def test_eval_denominator_of_full_cifar100_test_set():
    """10,000 test images over 3 processes with global batch 96: masks sum to exactly 10,000."""
    counts = []
    for p in range(3):
        start, end = pipeline.process_range(10_000, p, 3)
        fake = ({"image": np.zeros((min(32, end - s), 1, 1, 1)), "label": np.zeros(min(32, end - s))} for s in range(start, end, 32))
        batches = list(pipeline.pad_eval_batches(fake, 32, data.eval_steps(10_000, 96, 3), (1, 1, 1)))
        assert len(batches) == data.eval_steps(10_000, 96, 3) == 105
        counts.append(sum(int(b["mask"].sum()) for b in batches))
    assert sum(counts) == 10_000


# ----------------------------------------------------------------------------- ImageNet (streaming)


def test_imagenet_train_shapes_determinism_resume():
    kw = dict(data_dir=None, global_batch_size=8, seed=5)
    with mock_tfds():
        a = take(data.train_batches(IMAGENET, **kw), 8)
        b = take(data.train_batches(IMAGENET, **kw), 8)
        resumed = take(data.train_batches(IMAGENET, start_step=5, **kw), 3)
    lo, hi = normalized_range(IMAGENET)
    for x in a:
        assert x["image"].shape == (8, 32, 32, 3) and x["image"].dtype == np.float32
        assert x["label"].dtype == np.int32 and np.all((x["label"] >= 0) & (x["label"] < 1000))
        assert np.all(x["image"] >= lo - 1e-4) and np.all(x["image"] <= hi + 1e-4)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["image"], y["image"])
    for x, y in zip(a[5:], resumed):  # step 5 is mid-epoch 0, step 6 starts epoch 1
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])
    # One epoch (6 steps of 8) covers the 48 examples once; the next epoch is reshuffled.
    epoch0 = np.concatenate([x["label"] for x in a[:6]])
    assert len(epoch0) == N and not np.array_equal(a[0]["label"], a[6]["label"])


def test_imagenet_two_views_and_processes():
    with mock_tfds():
        b = next(data.train_batches(IMAGENET, data_dir=None, global_batch_size=8, seed=0, two_views=True))
        # Mock data ignores split slicing, so this checks shapes and the per-process batch only.
        p1 = next(data.train_batches(IMAGENET, data_dir=None, global_batch_size=8, seed=0, process_index=1, process_count=2))
    assert b["image_weak"].shape == b["image_strong"].shape == (8, 32, 32, 3)
    assert not np.allclose(b["image_weak"], b["image_strong"])
    assert p1["image"].shape == (4, 32, 32, 3)


@pytest.mark.parametrize("processes", [1, 3])
def test_imagenet_eval_masks(processes):
    with mock_tfds():
        per_process = [
            list(data.eval_batches(IMAGENET, data_dir=None, global_batch_size=15, process_index=p, process_count=processes))
            for p in range(processes)
        ]
    steps = data.eval_steps(N, 15, processes)
    assert all(len(batches) == steps for batches in per_process)
    assert sum(int(b["mask"].sum()) for batches in per_process for b in batches) == N
    first = per_process[0][0]
    assert first["image"].shape == (15 // processes, 32, 32, 3) and first["image"].dtype == np.float32
