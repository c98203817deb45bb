"""Constants of the supported datasets: sizes, shapes, normalization, TFDS names.

Everything the pipelines need about the four built-in datasets is a constant here, never
TFDS metadata, so an offline machine without ``dataset_info.json`` files (or a test under
``tfds.testing.mock_data``) still knows split sizes and statistics. Users' datasets (any TFDS
dataset, a prepared image folder, arrays in memory) get the same ``DatasetInfo``, read from
their metadata or arrays by ``zkd.data.catalog``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from zkd.errors import ZkdError


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Static description of one dataset.

    Attributes:
      name: zkd's name (the key in ``DATASETS``).
      tfds_name: the TFDS builder name.
      num_classes: number of classes.
      image_shape: (H, W, C) of the network input (after augmentation / eval crop).
      train_size: examples in the training split.
      test_size: examples in the evaluation split (``test_split``).
      mean: per-channel mean on the [0, 1] scale, length C.
      std: per-channel std on the [0, 1] scale, length C.
      test_split: the TFDS split evaluated as "test" ("validation" for ImageNet).
      in_memory: small enough to hold as uint8 arrays in host or device memory; such
        datasets use the in-memory host pipeline and offer the device-resident one.
      pad: zero padding of the CIFAR-style random crop (in-memory datasets only).
      balanced: every class has train_size / num_classes training images (and likewise
        for test); checked by ``zkd.data.prepare``.
      train_split: the TFDS split trained on (a split name or a TFDS slice, e.g. "train[:90%]").
      source: "builtin" (the constants below), "tfds" (a user's TFDS dataset, zkd.data.catalog)
        or "arrays" (``arrays`` in memory).
      image_key, label_key: the TFDS feature names of the image and the class label.
      resize: the stored images are not all ``image_shape``: an in-memory dataset is resized
        on loading (shorter side to H, centre crop), a streamed one always is.
      class_names: the classes' names, when known.
      arrays: for source "arrays": {"train": (uint8 [N, H, W, C], int32 [N]), "test": ...}.
    """

    name: str
    tfds_name: str
    num_classes: int
    image_shape: tuple[int, int, int]
    train_size: int
    test_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    test_split: str = "test"
    in_memory: bool = True
    pad: int = 4
    balanced: bool = True
    train_split: str = "train"
    source: str = "builtin"
    image_key: str = "image"
    label_key: str = "label"
    resize: bool = False
    class_names: tuple[str, ...] = ()
    arrays: Any = dataclasses.field(default=None, compare=False, repr=False)

    def split_size(self, split: str) -> int:
        """Number of examples of ``split`` ("train", "test" or the TFDS name of the test split)."""
        if split == "train":
            return self.train_size
        if split in ("test", self.test_split):
            return self.test_size
        raise ValueError(
            f"dataset {self.name!r} has splits 'train' and 'test' (TFDS {self.test_split!r}); got {split!r}"
        )

    def tfds_split(self, split: str) -> str:
        """The TFDS split name for zkd's "train"/"test"."""
        self.split_size(split)  # validates
        return self.train_split if split == "train" else self.test_split


# CIFAR-100 statistics are the ones of the reference recipe (docs/paper.md §4).
# CIFAR-10 and Fashion-MNIST statistics are population mean / std over all training pixels
# on the [0, 1] scale; the Fashion-MNIST values were computed from the 60,000 training images
# (tests/test_data_prepare.py recomputes them from the Debian files).
class UnknownDatasetError(ZkdError, KeyError, ValueError):
    """A dataset name that ``DATASETS`` does not hold."""

    def __str__(self):  # KeyError would print the repr of the message
        return str(self.args[0])


class _Registry(dict):
    """A dict whose missing keys raise an error listing the valid names."""

    def __missing__(self, key):
        raise UnknownDatasetError(f"unknown dataset {key!r}; valid names: {', '.join(sorted(self))}")


DATASETS: dict[str, DatasetInfo] = _Registry({
    "cifar100": DatasetInfo(
        name="cifar100",
        tfds_name="cifar100",
        num_classes=100,
        image_shape=(32, 32, 3),
        train_size=50_000,
        test_size=10_000,
        mean=(0.5071, 0.4867, 0.4408),
        std=(0.2675, 0.2565, 0.2761),
    ),
    "cifar10": DatasetInfo(
        name="cifar10",
        tfds_name="cifar10",
        num_classes=10,
        image_shape=(32, 32, 3),
        train_size=50_000,
        test_size=10_000,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
    ),
    "fashion_mnist": DatasetInfo(
        name="fashion_mnist",
        tfds_name="fashion_mnist",
        num_classes=10,
        image_shape=(28, 28, 1),
        train_size=60_000,
        test_size=10_000,
        mean=(0.2860,),
        std=(0.3530,),
    ),
    "imagenet2012": DatasetInfo(
        name="imagenet2012",
        tfds_name="imagenet2012",
        num_classes=1000,
        image_shape=(224, 224, 3),
        train_size=1_281_167,
        test_size=50_000,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        test_split="validation",
        in_memory=False,
        pad=0,
        balanced=False,
    ),
})


def get_info(dataset: str | DatasetInfo) -> DatasetInfo:
    """Resolves a built-in dataset's name (or passes a ``DatasetInfo`` through).

    Raises:
      UnknownDatasetError (a KeyError and a ValueError): the message lists the valid names
        (a "tfds:NAME" dataset needs its data directory: ``zkd.data.resolve(name, data_dir)``).
    """
    if isinstance(dataset, DatasetInfo):
        return dataset
    if isinstance(dataset, str) and dataset.startswith("tfds:"):
        raise UnknownDatasetError(
            f"{dataset!r} is read from its TFDS metadata: resolve it with zkd.data.resolve({dataset!r}, data_dir) "
            "and pass the DatasetInfo")
    return DATASETS[dataset]


def steps_per_epoch(dataset: str | DatasetInfo, global_batch_size: int) -> int:
    """Training steps per epoch: ``train_size // global_batch_size`` (the remainder is dropped)."""
    info = get_info(dataset)
    if global_batch_size <= 0:
        raise ValueError(f"global_batch_size must be positive, got {global_batch_size}")
    steps = info.train_size // global_batch_size
    if steps == 0:
        raise ValueError(
            f"global_batch_size {global_batch_size} exceeds the {info.train_size} training examples of {info.name}"
        )
    return steps
