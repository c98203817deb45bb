"""Offline preparation: Fashion-MNIST from the Debian IDX files, CIFAR-100 from synthetic official archives."""

import gzip
import hashlib
import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

from zkd import data
from zkd.data import prepare, sources

FASHION_SOURCE = Path("/usr/share/datasets/fashion-mnist")


# ----------------------------------------------------------------------------- Fashion-MNIST


def read_idx(path, offset):
    return np.frombuffer(gzip.open(path).read(), np.uint8, offset=offset)


@pytest.fixture(scope="module")
def fashion_dir(fashion_mnist_prepared):
    """prepare.prepare's (data_dir, summary), run once per session (tests/shared_data.py)."""
    return fashion_mnist_prepared


def test_fashion_mnist_prepared_from_debian_files(fashion_dir):
    data_dir, summary = fashion_dir
    assert summary["splits"]["train"]["num_examples"] == 60_000
    assert summary["splits"]["test"]["num_examples"] == 10_000
    assert summary["splits"]["train"]["image_shape"] == [28, 28, 1]
    assert summary["splits"]["train"]["label_histogram"] == [6_000] * 10
    assert summary["splits"]["test"]["label_histogram"] == [1_000] * 10
    # Plain TFDS reads it back with no network.
    ds = tfds.load("fashion_mnist", split="test", data_dir=str(data_dir), download=False)
    assert ds.element_spec["image"].shape == (28, 28, 1)


def test_fashion_mnist_content_equals_the_idx_files(fashion_dir):
    data_dir, _ = fashion_dir
    for split, prefix in (("train", "train"), ("test", "t10k")):
        raw_images = read_idx(FASHION_SOURCE / f"{prefix}-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28, 1)
        raw_labels = read_idx(FASHION_SOURCE / f"{prefix}-labels-idx1-ubyte.gz", 8)
        images, labels = data.load_arrays("fashion_mnist", str(data_dir), split)

        def digests(imgs, labs):
            return sorted(hashlib.sha1(img.tobytes() + bytes([lab])).digest() for img, lab in zip(imgs, labs))

        # Same (image, label) pairs; TFDS stores them in its own shuffled order.
        assert digests(images, labels) == digests(raw_images, raw_labels)
        if split == "train":  # the documented normalization constants
            pixels = raw_images.astype(np.float64) / 255.0
            info = data.DATASETS["fashion_mnist"]
            assert abs(pixels.mean() - info.mean[0]) < 5e-5 and abs(pixels.std() - info.std[0]) < 5e-5


def test_fashion_mnist_pipelines_read_the_prepared_data(fashion_dir):
    data_dir, _ = fashion_dir
    batch = next(data.train_batches("fashion_mnist", data_dir=str(data_dir), global_batch_size=32, seed=0))
    assert batch["image"].shape == (32, 28, 28, 1) and batch["image"].dtype == np.float32
    masks = [b["mask"] for b in data.eval_batches("fashion_mnist", data_dir=str(data_dir), global_batch_size=3072)]
    assert len(masks) == 4 and sum(int(m.sum()) for m in masks) == 10_000


def test_missing_sources_fail_early(tmp_path):
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"")
    with pytest.raises(data.DataNotFoundError, match="lacks train-labels-idx1-ubyte.gz, t10k-images"):
        prepare.prepare("fashion_mnist", tmp_path, tmp_path / "out")
    with pytest.raises(data.DataNotFoundError, match="lacks ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar"):
        prepare.prepare("imagenet2012", tmp_path, tmp_path / "out")
    assert prepare.main(["--dataset", "cifar100", "--source", str(tmp_path / "nope.tar.gz"), "--data_dir", str(tmp_path)]) == 2


# ----------------------------------------------------------------------------- CIFAR-100


def synthetic_cifar100(n_train=30, n_test=10, seed=0):
    rng = np.random.default_rng(seed)
    splits = {}
    for split, n in (("train", n_train), ("test", n_test)):
        splits[split] = {
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            "fine_labels": rng.integers(0, 100, n).tolist(),
            "coarse_labels": rng.integers(0, 20, n).tolist(),
        }
    names = {"fine": [f"fine{i}" for i in range(100)], "coarse": [f"coarse{i}" for i in range(20)]}
    return splits, names


def _add(tar, name, blob):
    info = tarfile.TarInfo(name)
    info.size = len(blob)
    tar.addfile(info, io.BytesIO(blob))


def write_python_archive(path, splits, names):
    """The official python layout: pickled dicts with bytes keys, as in cifar-100-python.tar.gz."""
    with tarfile.open(path, "w:gz") as tar:
        for split, content in splits.items():
            batch = {
                b"filenames": [f"{split}_{i}.png".encode() for i in range(len(content["data"]))],
                b"batch_label": f"{split} batch".encode(),
                b"fine_labels": content["fine_labels"],
                b"coarse_labels": content["coarse_labels"],
                b"data": content["data"],
            }
            _add(tar, f"cifar-100-python/{split}", pickle.dumps(batch, protocol=2))
        meta = {
            b"fine_label_names": [n.encode() for n in names["fine"]],
            b"coarse_label_names": [n.encode() for n in names["coarse"]],
        }
        _add(tar, "cifar-100-python/meta", pickle.dumps(meta, protocol=2))


def write_binary_archive(path, splits, names):
    """The official binary layout: <coarse><fine><3072 pixels> records, as in cifar-100-binary.tar.gz."""
    with tarfile.open(path, "w:gz") as tar:
        for split, content in splits.items():
            labels = np.stack([content["coarse_labels"], content["fine_labels"]], axis=1).astype(np.uint8)
            _add(tar, f"cifar-100-binary/{split}.bin", np.concatenate([labels, content["data"]], axis=1).tobytes())
        _add(tar, "cifar-100-binary/fine_label_names.txt", ("\n".join(names["fine"]) + "\n").encode())
        _add(tar, "cifar-100-binary/coarse_label_names.txt", ("\n".join(names["coarse"]) + "\n").encode())


def read_prepared(data_dir, split):
    """{index: (image, label, coarse_label)} keyed by the example id's index."""
    builder = tfds.builder("cifar100", data_dir=str(data_dir))
    out = {}
    for ex in tfds.as_numpy(builder.as_dataset(split=split)):
        index = int(ex["id"].decode().split("_")[1])
        out[index] = (ex["image"], int(ex["label"]), int(ex["coarse_label"]))
    return builder, out


def test_cifar100_from_python_and_binary_archives(tmp_path):
    splits, names = synthetic_cifar100()
    write_python_archive(tmp_path / "cifar-100-python.tar.gz", splits, names)
    write_binary_archive(tmp_path / "cifar-100-binary.tar.gz", splits, names)
    assert sources.cifar_source_kind("cifar100", tmp_path / "cifar-100-python.tar.gz") == "python"
    assert sources.cifar_source_kind("cifar100", tmp_path / "cifar-100-binary.tar.gz") == "binary"
    results = {}
    for kind in ("python", "binary"):
        summary = prepare.prepare("cifar100", tmp_path / f"cifar-100-{kind}.tar.gz", tmp_path / kind, check=False)
        assert Path(summary["path"]).is_dir()
        results[kind] = {split: read_prepared(tmp_path / kind, split) for split in ("train", "test")}
    for split, content in splits.items():
        builder, prepared = results["python"][split]
        assert sorted(prepared) == list(range(len(content["data"])))
        for i, (image, label, coarse) in prepared.items():
            np.testing.assert_array_equal(image, content["data"][i].reshape(3, 32, 32).transpose(1, 2, 0))
            assert (label, coarse) == (content["fine_labels"][i], content["coarse_labels"][i])
        _, from_binary = results["binary"][split]
        for i in prepared:  # both archive formats give identical examples
            np.testing.assert_array_equal(prepared[i][0], from_binary[i][0])
            assert prepared[i][1:] == from_binary[i][1:]
    assert builder.info.features["label"].names == names["fine"]
    assert builder.info.splits["train"].num_examples == 30
    # The constants-based check refuses a dataset of the wrong size, naming the mismatch.
    with pytest.raises(ValueError, match="30 examples stored, expected 50000"):
        prepare.verify("cifar100", tmp_path / "python")


def test_cifar_extracted_directory_and_bad_sources(tmp_path):
    splits, names = synthetic_cifar100(n_train=4, n_test=2)
    write_python_archive(tmp_path / "a.tar.gz", splits, names)
    with tarfile.open(tmp_path / "a.tar.gz") as tar:
        tar.extractall(tmp_path / "extracted", filter="data")
    for source in (tmp_path / "extracted", tmp_path / "extracted" / "cifar-100-python"):
        assert sources.cifar_source_kind("cifar100", source) == "python"
    out = sources.write_cifar_binary("cifar100", tmp_path / "extracted", tmp_path / "bin")
    records = np.frombuffer((out / "cifar-100-binary" / "train.bin").read_bytes(), np.uint8).reshape(4, 3074)
    np.testing.assert_array_equal(records[:, 2:], splits["train"]["data"])
    np.testing.assert_array_equal(records[:, 1], splits["train"]["fine_labels"])
    with pytest.raises(data.DataNotFoundError, match="neither the python nor the binary cifar100"):
        sources.cifar_source_kind("cifar100", tmp_path / "bin" / "cifar-100-binary" / "train.bin")


def test_cifar_pickle_loader_refuses_code():
    evil = pickle.dumps({b"data": os.system})  # a global other than numpy's array pieces
    with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
        sources.load_cifar_pickle(evil)
