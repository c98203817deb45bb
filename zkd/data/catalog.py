"""Users' datasets: any TFDS dataset by name, a prepared image folder, arrays held in memory.

Each becomes the same ``zkd.data.DatasetInfo`` the built-in datasets have, so every pipeline
(in-memory or streamed, sharded over processes, exact evaluation, resumable) serves it
unchanged:

    resolve("cifar100")                                   the built-in constants
    resolve("tfds:oxford_flowers102", data_dir, image_size=64, test_split="test")
                                                          read from the prepared dataset's metadata
    from_arrays((x_train, y_train), (x_test, y_test))     arrays in memory (notebooks, tests)

A "tfds:" dataset: its classes come from the label feature's ``ClassLabel``, its image shape
from the image feature (or ``image_size`` when the images differ in size or should be
resized), its split sizes from the prepared dataset's ``DatasetInfo``; ``train_split`` and
``test_split`` name the TFDS splits (TFDS slices such as "train[:90%]" work for in-memory
datasets). A dataset whose training images fit in ``IN_MEMORY_BYTES`` is held in memory as
uint8 (the CIFAR pipeline: permutation sampler, device-resident option, teacher-logit cache);
a larger one is streamed (the ImageNet pipeline: random-resized crop, resize + centre crop in
evaluation). Normalization statistics are given (``mean``, ``std``) or computed once over the
training split and stored beside the prepared data in ``zkd-normalization.json``.

The default augmentation (config.augmentation "") of a user's in-memory dataset is the CIFAR
crop-and-flip with zero padding of H // 8 pixels (4 for 32x32); of a streamed one, the ImageNet
random-resized crop and flip. "none" turns augmentation off; see zkd.data.pipeline.
"""

from __future__ import annotations

import difflib
import json
import math
from typing import Optional, Sequence

import numpy as np

from zkd import paths
from zkd.data.info import DATASETS, DatasetInfo, UnknownDatasetError
from zkd.data.integrity import DataError
from zkd.data.sources import DataNotFoundError

TFDS_PREFIX = "tfds:"
IN_MEMORY_BYTES = 2 << 30  # uint8 training images up to 2 GiB are held in memory
NORMALIZATION_FILE = "zkd-normalization.json"


class DatasetSpecError(DataError):
    """A user's dataset (TFDS name, splits, features, arrays) that zkd cannot serve as asked."""


def is_builtin(name: str) -> bool:
    """True for the four datasets whose constants zkd holds (``zkd.data.DATASETS``)."""
    return name in DATASETS


def resolve(dataset, data_dir: Optional[str] = None, *, train_split: str = "train", test_split: str = "",
            image_size: int = 0, mean: Sequence[float] = (), std: Sequence[float] = (), image_key: str = "",
            label_key: str = "") -> DatasetInfo:
    """The ``DatasetInfo`` of a built-in dataset's name, of "tfds:NAME", or a ``DatasetInfo`` itself.

    Args:
      dataset: "cifar100" | "cifar10" | "fashion_mnist" | "imagenet2012" (constants), or
        "tfds:NAME" (NAME as ``tfds.builder`` takes it: "name", "name/config", "name:1.2.0"),
        prepared in ``data_dir``; or a ``DatasetInfo`` (returned unchanged).
      data_dir: the TFDS data directory ("" / None: TFDS's default).
      train_split, test_split: TFDS split names ("" test: "test", else "validation").
      image_size: > 0: the images are resized to image_size x image_size (needed when their
        sizes differ); 0: the dataset's fixed size.
      mean, std: per-channel normalization on the [0, 1] scale; empty: computed over the
        training split once and stored beside the data.
      image_key, label_key: the feature names ("": the one Image / ClassLabel feature).

    Raises:
      UnknownDatasetError: a name that is neither built in nor "tfds:..." (lists the valid ones).
      DatasetSpecError: options a built-in dataset does not take, a TFDS name TFDS does not know
        (with the closest names), a missing split, ambiguous features, mixed image sizes
        without ``image_size``, bad statistics.
      DataNotFoundError: the TFDS dataset is not prepared in ``data_dir`` (says how to prepare it).
    """
    if isinstance(dataset, DatasetInfo):
        return dataset
    options = dict(train_split=train_split != "train", test_split=bool(test_split), image_size=bool(image_size),
                   mean=bool(len(mean)), std=bool(len(std)), image_key=bool(image_key), label_key=bool(label_key))
    if not dataset.startswith(TFDS_PREFIX):
        if dataset not in DATASETS:
            raise UnknownDatasetError(
                f"unknown dataset {dataset!r}; valid: {', '.join(sorted(DATASETS))}, or 'tfds:NAME' for any "
                "TFDS dataset (or an image folder prepared with python -m zkd.data.prepare --folder)")
        set_options = [k for k, v in options.items() if v]
        if set_options:
            raise DatasetSpecError(
                f"config.data.{set_options[0]} is for 'tfds:NAME' datasets; the built-in {dataset!r} has fixed "
                "splits, size and statistics (docs/paper.md §4). Reset it, or load the dataset as "
                f"'tfds:{DATASETS[dataset].tfds_name}'")
        return DATASETS[dataset]
    return _tfds_info(dataset[len(TFDS_PREFIX):], data_dir or None, train_split, test_split, image_size,
                      tuple(mean), tuple(std), image_key, label_key)


def resolve_config(config) -> DatasetInfo:
    """``resolve`` with a run config's ``dataset``, ``data_dir`` and ``data`` fields."""
    d = config.get("data", None)
    get = (lambda k, default: d.get(k, default)) if d is not None else (lambda k, default: default)
    return resolve(config.dataset, config.get("data_dir", "") or None, train_split=get("train_split", "train"),
                   test_split=get("test_split", ""), image_size=int(get("image_size", 0)),
                   mean=tuple(get("mean", ())), std=tuple(get("std", ())), image_key=get("image_key", ""),
                   label_key=get("label_key", ""))


# ----------------------------------------------------------------------------- TFDS datasets


def _builder(name: str, data_dir: Optional[str]):
    import tensorflow_datasets as tfds

    try:
        return tfds.builder(name, data_dir=data_dir, try_gcs=False)
    except tfds.core.registered.DatasetNotFoundError as err:
        known = set(tfds.list_builders(with_community_datasets=False))
        root = paths.path(data_dir or tfds.core.constants.DATA_DIR).expanduser()
        if root.exists():  # prepared folders and other datasets stored there
            known |= {p.name for p in root.iterdir() if p.is_dir()}
        base = name.split(":")[0].split("/")[0]
        close = difflib.get_close_matches(base, sorted(known), n=3, cutoff=0.6)
        hint = f" Closest names: {', '.join(close)}." if close else ""
        raise DatasetSpecError(
            f"TFDS does not know a dataset {name!r} (neither its catalog nor {root} holds it).{hint} "
            "An image folder becomes one with: python -m zkd.data.prepare --folder DIR --name NAME "
            f"--data_dir {data_dir or root}") from err


def _feature_key(features, kind, wanted: str, what: str, field: str, name: str) -> str:
    if wanted:
        if wanted not in features or not isinstance(features[wanted], kind):
            raise DatasetSpecError(f"tfds:{name} has no {what} feature {wanted!r}; its features: "
                                   f"{_describe(features)}. Set config.data.{field}")
        return wanted
    keys = [k for k, f in features.items() if isinstance(f, kind)]
    if len(keys) != 1:
        raise DatasetSpecError(
            f"tfds:{name} has {'no' if not keys else len(keys)} {what} features ({_describe(features)}); "
            f"name the one to use with config.data.{field}")
    return keys[0]


def _describe(features) -> str:
    return ", ".join(f"{k}: {type(f).__name__}" for k, f in features.items())


def _split_size(builder, split: str, name: str) -> int:
    try:
        return int(builder.info.splits[split].num_examples)
    except (KeyError, ValueError, AssertionError) as err:
        have = ", ".join(sorted(builder.info.splits)) or "none"
        raise DatasetSpecError(f"tfds:{name} has no split {split!r} (its splits: {have}). Set "
                               "config.data.train_split / config.data.test_split (TFDS slices such as "
                               "'train[:90%]' work too)") from err


def _tfds_info(name, data_dir, train_split, test_split, image_size, mean, std, image_key, label_key):
    import tensorflow_datasets as tfds

    builder = _builder(name, data_dir)
    if not builder.is_prepared():
        raise DataNotFoundError(
            f"tfds:{name} is not prepared in {data_dir or tfds.core.constants.DATA_DIR}. On a machine with "
            f"network: tfds build {name} --data_dir {data_dir or '~/tensorflow_datasets'} (or tfds.load once), "
            "then copy that directory here; an image folder: python -m zkd.data.prepare --folder DIR --name NAME")
    features = builder.info.features
    image_key = _feature_key(features, tfds.features.Image, image_key, "image", "image_key", name)
    label_key = _feature_key(features, tfds.features.ClassLabel, label_key, "class-label", "label_key", name)
    num_classes = int(features[label_key].num_classes)
    if num_classes < 2:
        raise DatasetSpecError(f"tfds:{name} has {num_classes} class; distillation needs at least 2")
    stored = tuple(features[image_key].shape)  # (H, W, C), None where sizes vary
    channels = stored[2]
    if channels not in (1, 3):
        raise DatasetSpecError(f"tfds:{name}'s images have {channels} channels; zkd reads 1 or 3")
    if image_size < 0:
        raise DatasetSpecError(f"config.data.image_size must be >= 0, got {image_size}")
    if not image_size and (stored[0] is None or stored[1] is None):
        raise DatasetSpecError(
            f"tfds:{name}'s images differ in size (stored shape {stored}): set config.data.image_size to the size "
            "the models take (the images are resized to it)")
    if not image_size and stored[0] != stored[1]:
        raise DatasetSpecError(f"tfds:{name}'s images are {stored[0]}x{stored[1]}: set config.data.image_size to "
                               "the square size the models take")
    size = image_size or stored[0]
    resize = stored[0] != size or stored[1] != size
    if not test_split:
        test_split = "test" if "test" in builder.info.splits else "validation"
    if train_split == test_split:
        raise DatasetSpecError(f"config.data.train_split and test_split are both {train_split!r}: evaluate on "
                               "held-out data (e.g. train_split='train[:90%]', test_split='train[90%:]')")
    train_size = _split_size(builder, train_split, name)
    test_size = _split_size(builder, test_split, name)
    image_shape = (size, size, channels)
    in_memory = train_size * math.prod(image_shape) <= IN_MEMORY_BYTES
    if not in_memory and ("[" in train_split or "+" in train_split):
        raise DatasetSpecError(f"tfds:{name} is streamed (its training images exceed {IN_MEMORY_BYTES >> 30} GiB); "
                               f"a streamed dataset trains on one whole split, not {train_split!r}")
    info = DatasetInfo(
        name=f"{TFDS_PREFIX}{name}", tfds_name=name, num_classes=num_classes, image_shape=image_shape,
        train_size=train_size, test_size=test_size, mean=(0.0,) * channels, std=(1.0,) * channels,
        test_split=test_split, in_memory=in_memory, pad=size // 8 if in_memory else 0, balanced=False,
        train_split=train_split, source="tfds", image_key=image_key, label_key=label_key, resize=resize,
        class_names=tuple(features[label_key].names),
    )
    mean, std = _statistics(info, builder, data_dir, mean, std)
    return _with_statistics(info, mean, std)


def _with_statistics(info: DatasetInfo, mean, std) -> DatasetInfo:
    import dataclasses

    c = info.image_shape[2]
    mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    if len(mean) != c or len(std) != c:
        raise DatasetSpecError(f"config.data.mean / std need {c} values (one per channel), got {mean} / {std}")
    if not all(np.isfinite(mean)) or not all(s > 0 and np.isfinite(s) for s in std):
        raise DatasetSpecError(f"normalization std must be positive and finite, mean finite; got {mean} / {std}")
    return dataclasses.replace(info, mean=mean, std=std)


def _statistics(info, builder, data_dir, mean, std):
    """Given statistics, or the training split's, read from / stored in ``NORMALIZATION_FILE``."""
    if len(mean) or len(std):
        if not (len(mean) and len(std)):
            raise DatasetSpecError("set both config.data.mean and config.data.std, or neither (then they are "
                                   "computed over the training split)")
        return mean, std
    path = paths.join(str(builder.data_dir), NORMALIZATION_FILE)
    key = f"{info.train_split}@{info.image_shape[0]}x{info.image_shape[1]}"
    stored = json.loads(paths.read_text(path)) if paths.exists(path) else {}
    if key in stored:
        return stored[key]["mean"], stored[key]["std"]
    from zkd.data import pipeline

    print(f"zkd: computing the normalization statistics of {info.name} ({info.train_split}, "
          f"{info.train_size} images); stored in {path}", flush=True)
    mean, std, count = channel_statistics(pipeline.raw_train_images(info, data_dir))
    stored[key] = {"mean": mean, "std": std, "images": count}
    try:
        paths.write_text_atomic(path, json.dumps(stored, indent=1, sort_keys=True))
    except OSError as err:  # a read-only data directory: use them, say they were not kept
        print(f"zkd: could not store the statistics in {path} ({err}); they will be computed again next time",
              flush=True)
    return mean, std


def channel_statistics(batches) -> tuple[list[float], list[float], int]:
    """Per-channel mean and std (population) on the [0, 1] scale over uint8 images.

    Args:
      batches: iterable of uint8 [B, H, W, C] arrays (any B, same C).

    Returns:
      (mean [C], std [C], number of images); sums in float64, exact for any split size.
    """
    total, total_sq, pixels, images = None, None, 0, 0
    for x in batches:
        x = np.asarray(x)
        flat = x.reshape(-1, x.shape[-1]).astype(np.float64) / 255.0
        s, sq = flat.sum(0), np.square(flat).sum(0)
        total, total_sq = (s, sq) if total is None else (total + s, total_sq + sq)
        pixels += flat.shape[0]
        images += x.shape[0]
    if not images:
        raise DatasetSpecError("the training split holds no images: cannot compute normalization statistics")
    mean = total / pixels
    std = np.sqrt(np.maximum(total_sq / pixels - np.square(mean), 0.0))
    return mean.tolist(), std.tolist(), images


# ----------------------------------------------------------------------------- arrays


def from_arrays(train: tuple, test: tuple, *, name: str = "arrays", num_classes: Optional[int] = None,
                mean: Sequence[float] = (), std: Sequence[float] = (), pad: Optional[int] = None,
                class_names: Sequence[str] = ()) -> DatasetInfo:
    """A dataset of arrays in memory, served by the same pipelines as CIFAR.

    Args:
      train, test: (images uint8 [N, H, W, C] with H == W and C in {1, 3}, labels int [N]).
      name: the dataset is called "arrays:<name>" (config.dataset, run names).
      num_classes: default max label + 1 over both splits.
      mean, std: per-channel normalization on the [0, 1] scale; default the training images'.
      pad: zero padding of the crop-and-flip augmentation; default H // 8.

    Raises:
      DatasetSpecError: arrays of the wrong dtype, rank, shape or length; labels outside
        [0, num_classes); an empty split.
    """
    splits = {}
    for split, pair in (("train", train), ("test", test)):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise DatasetSpecError(f"{split} must be a pair (images, labels), got {type(pair).__name__}")
        images, labels = np.asarray(pair[0]), np.asarray(pair[1])
        if images.dtype != np.uint8:
            raise DatasetSpecError(f"{split} images must be uint8 [N, H, W, C] in [0, 255], got {images.dtype}; "
                                   "convert with (x * 255).round().astype(np.uint8) if they are in [0, 1]")
        if images.ndim != 4 or images.shape[-1] not in (1, 3) or images.shape[1] != images.shape[2]:
            raise DatasetSpecError(f"{split} images must be [N, H, H, C] with C 1 or 3, got shape {images.shape} "
                                   "(add a channel axis to grayscale images: x[..., None])")
        if not np.issubdtype(labels.dtype, np.integer) or labels.shape != images.shape[:1]:
            raise DatasetSpecError(f"{split} labels must be integers [N] with N = {images.shape[0]} images, got "
                                   f"{labels.dtype} {labels.shape}")
        if images.shape[0] == 0:
            raise DatasetSpecError(f"the {split} split is empty")
        splits[split] = (images, labels)
    if splits["train"][0].shape[1:] != splits["test"][0].shape[1:]:
        raise DatasetSpecError(f"train images are {splits['train'][0].shape[1:]} but test images "
                               f"{splits['test'][0].shape[1:]}: resize them to one shape")
    top = max(int(labels.max()) for _, labels in splits.values()) + 1
    num_classes = top if num_classes is None else int(num_classes)
    for split, (_, labels) in splits.items():
        bad = labels[(labels < 0) | (labels >= num_classes)]
        if bad.size:
            raise DatasetSpecError(f"{split} labels {sorted(set(bad.tolist()))[:5]} are outside [0, {num_classes}); "
                                   "pass num_classes or fix the labels")
    if num_classes < 2:
        raise DatasetSpecError(f"{num_classes} class: distillation needs at least 2")
    shape = tuple(int(d) for d in splits["train"][0].shape[1:])
    arrays = {s: (np.ascontiguousarray(x), y.astype(np.int32)) for s, (x, y) in splits.items()}
    info = DatasetInfo(
        name=f"arrays:{name}", tfds_name="", num_classes=num_classes, image_shape=shape,
        train_size=arrays["train"][0].shape[0], test_size=arrays["test"][0].shape[0],
        mean=(0.0,) * shape[2], std=(1.0,) * shape[2], in_memory=True,
        pad=shape[0] // 8 if pad is None else int(pad), balanced=False, source="arrays",
        class_names=tuple(class_names), arrays=arrays,
    )
    if not (len(mean) or len(std)):
        mean, std, _ = channel_statistics([arrays["train"][0]])
    elif not (len(mean) and len(std)):
        raise DatasetSpecError("pass both mean and std, or neither (then they are the training images')")
    return _with_statistics(info, mean, std)


def synthetic(like: str = "cifar100", train_size: Optional[int] = None, test_size: Optional[int] = None,
              seed: int = 0) -> DatasetInfo:
    """Random uint8 images and labels shaped like the built-in dataset ``like`` (its image shape,
    classes, split sizes unless given, normalization and padding), held in memory
    (``from_arrays``, name "synthetic_<like>"): for timing runs and smoke tests, not for learning.
    Deterministic in ``seed``."""
    if like not in DATASETS:
        raise UnknownDatasetError(f"synthetic(like={like!r}): valid: {', '.join(sorted(DATASETS))}")
    info = DATASETS[like]
    rng = np.random.default_rng(seed)

    def split(n):
        return (rng.integers(0, 256, (n, *info.image_shape), dtype=np.uint8),
                rng.integers(0, info.num_classes, n).astype(np.int32))

    return from_arrays(split(info.train_size if train_size is None else train_size),
                       split(info.test_size if test_size is None else test_size), name=f"synthetic_{like}",
                       num_classes=info.num_classes, mean=info.mean, std=info.std, pad=info.pad)
