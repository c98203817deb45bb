"""Users' data: a TFDS dataset other than the four (written by the test), an image folder prepared
by zkd.data.prepare, arrays in memory; each trained for a few steps through the command or the
Python API, and each bad input named (nothing written)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from zkd import data, engine, recipes, streams, train, validate
from zkd.data import catalog, folder, pipeline, prepare
from zkd.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("red", "green", "blue")


def colour_images(rng, n, size=16, channels=3):
    """uint8 [n, size, size, channels], image i of class i % 3 brighter in channel (i % 3) % channels."""
    labels = np.arange(n) % 3
    images = rng.integers(0, 80, (n, size, size, channels), dtype=np.uint8)
    for i, label in enumerate(labels):
        images[i, ..., label % channels] += 150
    return images, labels


def write_tfds(data_dir, name, splits, shape=(16, 16, 3), image_key="image", label_key="label", extra=None):
    features = {image_key: tfds.features.Image(shape=shape), label_key: tfds.features.ClassLabel(names=CLASSES)}
    features.update(extra or {})

    def examples(images, labels):
        for i, (x, y) in enumerate(zip(images, labels)):
            yield i, {image_key: x, label_key: int(y), **{k: 0 for k in (extra or {})}}

    tfds.dataset_builders.store_as_tfds_dataset(
        name=name, version="1.0.0", features=tfds.features.FeaturesDict(features), data_dir=str(data_dir),
        split_datasets={s: examples(*xy) for s, xy in splits.items()}, disable_shuffling=True)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """A TFDS dataset 'zkd_test_shapes' (48 train / 12 test, 16x16x3, 3 classes) and its arrays."""
    data_dir = tmp_path_factory.mktemp("tfds")
    rng = np.random.default_rng(0)
    splits = {"train": colour_images(rng, 48), "test": colour_images(rng, 12)}
    write_tfds(data_dir, "zkd_test_shapes", splits)
    return str(data_dir), splits


def small_config(dataset, data_dir, method="ce", **overrides):
    c = recipes.your_data(dataset, method, "resnet8", epochs=2, batch_size=16, data_dir=data_dir)
    c.eval_batch_size = 8
    c.progress_bar = False
    c.log_every_steps = 1
    c.optimizer.lr_milestones = (1,)
    for k, v in overrides.items():
        node = c
        *parents, leaf = k.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = v
    return recipes.finalize(c)


def metrics(workdir, kind):
    return [r for r in map(json.loads, Path(workdir, "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


# ----------------------------------------------------------------------------- TFDS by name


def test_tfds_dataset_info_comes_from_its_metadata(shapes):
    data_dir, splits = shapes
    info = data.resolve("tfds:zkd_test_shapes", data_dir)
    assert (info.name, info.num_classes, info.image_shape) == ("tfds:zkd_test_shapes", 3, (16, 16, 3))
    assert (info.train_size, info.test_size, info.test_split, info.class_names) == (48, 12, "test", CLASSES)
    assert info.in_memory and info.pad == 2 and not info.resize
    # Normalization statistics: NumPy over the training images, stored beside the data.
    x = splits["train"][0].astype(np.float64) / 255
    np.testing.assert_allclose(info.mean, x.mean((0, 1, 2)), rtol=1e-12)
    np.testing.assert_allclose(info.std, x.std((0, 1, 2)), rtol=1e-9)
    stored = json.loads(Path(data_dir, "zkd_test_shapes", "1.0.0", catalog.NORMALIZATION_FILE).read_text())
    assert stored["train@16x16"]["mean"] == list(info.mean) and stored["train@16x16"]["images"] == 48
    # Given statistics win; the arrays are the split's (TFDS order = written order here).
    given = data.resolve("tfds:zkd_test_shapes", data_dir, mean=(0.5,) * 3, std=(0.25,) * 3)
    assert given.mean == (0.5,) * 3 and given.std == (0.25,) * 3
    images, labels = data.load_arrays(info, data_dir, "test")
    np.testing.assert_array_equal(images, splits["test"][0])
    np.testing.assert_array_equal(labels, splits["test"][1])


def test_tfds_dataset_trains_through_the_api_with_exact_evaluation(shapes, tmp_path):
    data_dir, _ = shapes
    c = small_config("tfds:zkd_test_shapes", data_dir)
    summary = train.train_and_evaluate(c, str(tmp_path / "wd"))
    evals = metrics(tmp_path / "wd", "eval")
    assert [e["epoch"] for e in evals] == [1, 2] and all(e["count"] == 12 for e in evals)
    assert summary["epochs"] == 2 and summary["run"] == "tfds_zkd_test_shapes/ce/resnet8/seed0"
    assert json.loads(Path(tmp_path / "wd" / "config.json").read_text())["dataset"] == "tfds:zkd_test_shapes"


def test_tfds_splits_slices_resize_and_feature_names(tmp_path):
    rng = np.random.default_rng(1)
    # Mixed image sizes, other feature names, only a train split.
    big, labels = colour_images(rng, 12, size=20)
    features = {"picture": tfds.features.Image(shape=(None, None, 3)), "target": tfds.features.ClassLabel(names=CLASSES)}

    def examples():
        for i in range(12):
            x = big[i] if i % 2 else big[i, :, :12]  # 20x20 and 20x12 images
            yield i, {"picture": x, "target": int(labels[i])}

    tfds.dataset_builders.store_as_tfds_dataset(
        name="zkd_test_mixed", version="1.0.0", features=tfds.features.FeaturesDict(features),
        data_dir=str(tmp_path), split_datasets={"train": examples()}, disable_shuffling=True)
    with pytest.raises(data.DatasetSpecError, match="differ in size.*config.data.image_size"):
        data.resolve("tfds:zkd_test_mixed", str(tmp_path))
    with pytest.raises(data.DatasetSpecError, match="no split 'validation'.*its splits: train"):
        data.resolve("tfds:zkd_test_mixed", str(tmp_path), image_size=8)
    info = data.resolve("tfds:zkd_test_mixed", str(tmp_path), image_size=8, train_split="train[:9]",
                        test_split="train[9:]")
    assert (info.image_key, info.label_key, info.resize) == ("picture", "target", True)
    assert (info.train_size, info.test_size, info.image_shape) == (9, 3, (8, 8, 3))
    images, got = data.load_arrays(info, str(tmp_path), "test")
    assert images.shape == (3, 8, 8, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(got, labels[9:])
    # Image 11 (20x20) resized to 8x8: the shorter side to 8 and a centre crop, i.e. the whole image.
    expected = tf.image.resize(big[11].astype(np.float32), [8, 8], antialias=True).numpy().clip(0, 255).round()
    np.testing.assert_array_equal(images[2], expected.astype(np.uint8))


def test_tfds_bad_names_and_options_are_named(shapes, tmp_path):
    data_dir, _ = shapes
    with pytest.raises(data.DatasetSpecError, match="Closest names: .*zkd_test_shapes"):
        data.resolve("tfds:zkd_test_shape", data_dir)
    with pytest.raises(data.DatasetSpecError, match="Closest names: .*mnist"):
        data.resolve("tfds:mnistt", data_dir)
    with pytest.raises(data.DataNotFoundError, match="not prepared.*tfds build mnist"):
        data.resolve("tfds:mnist", str(tmp_path))
    with pytest.raises(data.DatasetSpecError, match="both 'test'"):
        data.resolve("tfds:zkd_test_shapes", data_dir, train_split="test", test_split="test")
    with pytest.raises(data.DatasetSpecError, match="3 values"):
        data.resolve("tfds:zkd_test_shapes", data_dir, mean=(0.5,), std=(0.2,))
    with pytest.raises(data.DatasetSpecError, match="config.data.image_size is for 'tfds:NAME'"):
        data.resolve("cifar100", None, image_size=64)
    with pytest.raises(ConfigError, match="config.dataset='cifar101'; valid: .*tfds:NAME"):
        validate.validate_config(small_config("cifar101", ""))
    # Labels outside the class range stop training before the step, naming the step.
    x, y = colour_images(np.random.default_rng(2), 16)
    write_tfds(tmp_path, "zkd_test_badlabels", {"train": (x, y), "test": (x, y)})
    builder = tfds.builder("zkd_test_badlabels", data_dir=str(tmp_path))
    info = data.resolve("tfds:zkd_test_badlabels", str(tmp_path))
    batch = {"label": np.array([0, 3, 1])}
    with pytest.raises(data.DataError, match="labels \\[3\\] outside \\[0, 3\\)"):
        streams.check_labels(batch, info.num_classes, 7)
    assert builder.info.splits["train"].num_examples == 16


def test_augmentation_none_and_crop_flip(shapes):
    data_dir, _ = shapes
    info = data.resolve("tfds:zkd_test_shapes", data_dir)
    images, labels = data.load_arrays(info, data_dir, "train")
    kw = dict(data_dir=data_dir, global_batch_size=16, seed=3)
    default = next(data.train_batches(info, **kw))
    crop_flip = next(data.train_batches(info, augmentation="crop_flip", **kw))
    none = next(data.train_batches(info, augmentation="none", **kw))
    np.testing.assert_array_equal(default["image"], crop_flip["image"])
    idx = np.asarray(data.batch_indices(3, 0, 16, 48))
    expected = (images[idx] / 255.0 - np.array(info.mean)) / np.array(info.std)
    np.testing.assert_allclose(none["image"], expected, atol=1e-6)
    np.testing.assert_array_equal(none["label"], labels[idx])
    assert not np.allclose(default["image"], none["image"])


# ----------------------------------------------------------------------------- image folders


def write_folder(root, layout, rng, size=12):
    """layout: {relative class dir: number of images}; PNG and JPEG alternate."""
    written = {}
    for rel, n in layout.items():
        d = Path(root, rel)
        d.mkdir(parents=True)
        for i in range(n):
            x = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            path = d / f"img{i}.png"
            path.write_bytes(tf.io.encode_png(x).numpy())
            written[str(path)] = x
    return written


def test_image_folder_prepared_then_trained_by_the_command(tmp_path):
    rng = np.random.default_rng(4)
    src = tmp_path / "images"
    # The sizes of the shapes fixture's runs (48 / 12 images of 16x16x3, batch 16): the same step, compiled once.
    written = write_folder(src, {f"{s}/{c}": n for s, n in (("train", 16), ("val", 4)) for c in CLASSES}, rng, size=16)
    (src / ".DS_Store").write_text("ignored")
    data_dir = tmp_path / "tfds"
    assert prepare.main(["--folder", str(src), "--name", "zkd_test_folder", "--data_dir", str(data_dir)]) == 0
    info = data.resolve("tfds:zkd_test_folder", str(data_dir))
    classes = tuple(sorted(CLASSES))  # labels follow the sorted folder names
    assert (info.train_size, info.test_size, info.test_split, info.class_names) == (48, 12, "validation", classes)
    ds = tfds.load("zkd_test_folder", split="validation", data_dir=str(data_dir))
    for ex in ds.as_numpy_iterator():  # lossless, labelled by sorted class folder name
        path = src / "val" / ex["file_name"].decode().split("val/", 1)[1]
        np.testing.assert_array_equal(ex["image"], written[str(path)])
        assert classes[ex["label"]] == path.parent.name
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-m", "zkd.main",
         f"--config=configs/your_data.py:dataset=tfds:zkd_test_folder,data_dir={data_dir},epochs=1,batch_size=16",
         "--config.eval_batch_size=8", "--config.optimizer.lr_milestones=(1,)", f"--workdir={tmp_path / 'wd'}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (record,) = metrics(tmp_path / "wd", "eval")
    assert record["count"] == 12 and record["epoch"] == 1


def test_flat_folder_with_held_out_fraction(tmp_path):
    rng = np.random.default_rng(5)
    write_folder(tmp_path / "flat", {c: 10 for c in CLASSES}, rng)
    summary = folder.prepare_folder(tmp_path / "flat", "zkd_test_flat", tmp_path / "tfds", test_fraction=0.2)
    assert summary["splits"] == {"train": 24, "test": 6} and summary["classes"] == sorted(CLASSES)
    labels = [ex["label"] for ex in tfds.load("zkd_test_flat", split="test", data_dir=str(tmp_path / "tfds"))
              .as_numpy_iterator()]
    assert sorted(labels) == [0, 0, 1, 1, 2, 2]


@pytest.mark.parametrize("case, pattern", [
    ("one_class", "1 class folder \\(red\\)"),
    ("empty_class", "class folder .*blue is empty"),
    ("not_an_image", "not images \\(notes.txt"),
    ("undecodable", "1 image do not decode: .*broken.png"),
    ("split_classes", "splits 'train' and 'validation' have different classes \\(e.g. blue\\)"),
    ("catalog_name", "is a dataset of TFDS's catalog"),
])
def test_bad_folders_are_named_and_nothing_is_written(tmp_path, case, pattern):
    rng = np.random.default_rng(6)
    src, name = tmp_path / "src", "zkd_test_bad"
    if case == "one_class":
        write_folder(src, {"red": 2}, rng)
    elif case == "empty_class":
        write_folder(src, {"red": 2, "green": 2}, rng)
        (src / "blue").mkdir()
    elif case == "not_an_image":
        write_folder(src, {"red": 2, "green": 2}, rng)
        (src / "red" / "notes.txt").write_text("x")
    elif case == "undecodable":
        write_folder(src, {"red": 2, "green": 2}, rng)
        (src / "green" / "broken.png").write_bytes(b"\x89PNG not really")
    elif case == "split_classes":
        write_folder(src, {"train/red": 1, "train/green": 1, "train/blue": 1, "val/red": 1, "val/green": 1}, rng)
    else:
        write_folder(src, {"red": 2, "green": 2}, rng)
        name = "mnist"
    with pytest.raises(folder.FolderError, match=pattern):
        folder.prepare_folder(src, name, tmp_path / "tfds")
    assert not (tmp_path / "tfds").exists()


# ----------------------------------------------------------------------------- arrays


def test_arrays_train_through_the_api_and_resume(tmp_path):
    rng = np.random.default_rng(7)
    info = data.from_arrays(colour_images(rng, 48), colour_images(rng, 10), name="colours")
    assert (info.name, info.num_classes, info.train_size, info.test_size) == ("arrays:colours", 3, 48, 10)
    np.testing.assert_allclose(info.mean, (info.arrays["train"][0] / 255.0).mean((0, 1, 2)), rtol=1e-12)
    c = small_config("cifar100", "", num_epochs=2)  # config.dataset is replaced by the arrays' name
    straight = train.train_and_evaluate(c, str(tmp_path / "straight"), dataset=info)
    assert c.dataset == "cifar100"  # the caller's config is left alone
    one = small_config("cifar100", "", num_epochs=1)
    train.train_and_evaluate(one, str(tmp_path / "resumed"), dataset=info)
    resumed = train.train_and_evaluate(c, str(tmp_path / "resumed"), dataset=info)
    assert resumed["last_top1"] == straight["last_top1"]
    a, b = metrics(tmp_path / "straight", "eval"), metrics(tmp_path / "resumed", "eval")
    assert [r["loss"] for r in a] == [r["loss"] for r in b] and a[-1]["count"] == 10
    with pytest.raises(ConfigError, match="names arrays held in memory"):
        validate.dataset_info(small_config("arrays:colours", ""))


def test_array_streams_shard_over_processes_like_any_in_memory_set():
    rng = np.random.default_rng(8)
    info = data.from_arrays(colour_images(rng, 40), colour_images(rng, 9))
    kw = dict(global_batch_size=8, seed=1, data_dir=None)
    whole = [next(data.train_batches(info, start_step=s, **kw)) for s in (0, 6)]
    parts = [next(data.train_batches(info, start_step=6, process_index=p, process_count=2, **kw)) for p in (0, 1)]
    np.testing.assert_array_equal(np.concatenate([p["image"] for p in parts]), whole[1]["image"])
    stream = data.train_batches(info, **kw)
    for _ in range(6):
        next(stream)
    np.testing.assert_array_equal(next(stream)["image"], whole[1]["image"])  # resume == uninterrupted
    masks = [b["mask"] for p in (0, 1) for b in data.eval_batches(info, data_dir=None, global_batch_size=4,
                                                                  process_index=p, process_count=2)]
    assert sum(int(m.sum()) for m in masks) == 9


@pytest.mark.parametrize("train_pair, pattern", [
    ((np.zeros((4, 8, 8, 3), np.float32), np.zeros(4, int)), "must be uint8"),
    ((np.zeros((4, 8, 8), np.uint8), np.zeros(4, int)), "\\[N, H, H, C\\].*x\\[..., None\\]"),
    ((np.zeros((4, 8, 8, 3), np.uint8), np.zeros(3, int)), "labels must be integers \\[N\\] with N = 4"),
    ((np.zeros((4, 8, 8, 3), np.uint8), np.array([0, 1, 2, 5])), "labels \\[5\\] are outside \\[0, 3\\)"),
    ((np.zeros((4, 6, 6, 3), np.uint8), np.zeros(4, int)), "train images are \\(6, 6, 3\\) but test images"),
    ((np.zeros((0, 8, 8, 3), np.uint8), np.zeros(0, int)), "the train split is empty"),
])
def test_bad_arrays_are_named(train_pair, pattern):
    test_pair = (np.zeros((2, 8, 8, 3), np.uint8), np.array([0, 1]))
    with pytest.raises(data.DatasetSpecError, match=pattern):
        data.from_arrays(train_pair, test_pair, num_classes=3)


def test_a_tfds_dataset_over_the_memory_limit_is_streamed(shapes, monkeypatch):
    data_dir, splits = shapes
    monkeypatch.setattr(catalog, "IN_MEMORY_BYTES", 1000)
    info = data.resolve("tfds:zkd_test_shapes", data_dir, image_size=8, mean=(0.5,) * 3, std=(0.5,) * 3)
    assert not info.in_memory and info.image_shape == (8, 8, 3)
    kw = dict(data_dir=data_dir, global_batch_size=8, seed=2)
    stream = data.train_batches(info, **kw)
    first = [next(stream) for _ in range(3)]
    assert first[0]["image"].shape == (8, 8, 8, 3) and first[0]["image"].dtype == np.float32
    np.testing.assert_array_equal(next(data.train_batches(info, start_step=2, **kw))["image"], first[2]["image"])
    evals = list(data.eval_batches(info, data_dir=data_dir, global_batch_size=8))
    assert sum(int(b["mask"].sum()) for b in evals) == 12
    # The evaluation view: the 16x16 image resized (shorter side to round(8 * 256 / 224) = 9), centre 8x8.
    x = tf.image.resize(splits["test"][0][0].astype(np.float32), [9, 9], antialias=True).numpy().clip(0, 255)[:8, :8]
    np.testing.assert_allclose(evals[0]["image"][0], (x / 255 - 0.5) / 0.5, atol=1e-5)
    with pytest.raises(data.DatasetSpecError, match="streamed.*one whole split"):
        data.resolve("tfds:zkd_test_shapes", data_dir, image_size=8, train_split="train[:40]")
    none = next(data.train_batches(info, augmentation="none", **kw))
    assert none["image"].shape == (8, 8, 8, 3)
    with pytest.raises(ValueError, match="crop_flip' serves in-memory datasets"):
        data.train_batches(info, augmentation="crop_flip", **kw)


def test_synthetic_datasets_are_shaped_like_the_built_in_ones():
    a = data.synthetic("fashion_mnist", 30, 10, seed=3)
    cifar = data.synthetic("cifar100", 20, 5)
    fm = data.DATASETS["fashion_mnist"]
    assert (a.image_shape, a.num_classes, a.train_size, a.test_size) == (fm.image_shape, 10, 30, 10)
    assert (a.mean, a.std, a.pad) == (fm.mean, fm.std, fm.pad) and a.in_memory
    assert cifar.image_shape == (32, 32, 3) and cifar.num_classes == 100
    images, labels = data.load_arrays(a, None, "train")
    assert images.dtype == np.uint8 and images.shape == (30, 28, 28, 1) and labels.max() < 10
    np.testing.assert_array_equal(images, data.load_arrays(data.synthetic("fashion_mnist", 30, 10, seed=3), None)[0])
    with pytest.raises(data.UnknownDatasetError, match="valid: "):
        data.synthetic("svhn")
