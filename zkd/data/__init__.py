"""TFDS input pipelines for CIFAR-100/10, ImageNet and Fashion-MNIST (docs/paper.md §4), and for
users' own data: any TFDS dataset, an image folder, arrays in memory (docs/data.md).

Importing this package hides every GPU from TensorFlow (tf.data only ever runs on the host).

Datasets
    DATASETS[name] -> DatasetInfo          name in "cifar100", "cifar10", "imagenet2012", "fashion_mnist";
                                           an unknown name raises UnknownDatasetError listing the valid ones.
    DatasetInfo(name, tfds_name, num_classes, image_shape (H, W, C), train_size, test_size, mean, std,
                test_split, in_memory, pad, balanced)   frozen; constants, never TFDS metadata.
    get_info(name_or_info) -> DatasetInfo
    steps_per_epoch(dataset, global_batch_size) -> int          train_size // global_batch_size

Users' datasets (zkd.data.catalog): the same DatasetInfo, from metadata or arrays
    resolve(dataset, data_dir=None, *, train_split="train", test_split="", image_size=0, mean=(), std=(),
            image_key="", label_key="") -> DatasetInfo     a built-in name or "tfds:NAME" (any TFDS dataset
                                           prepared in data_dir, including image folders prepared with
                                           python -m zkd.data.prepare --folder)
    resolve_config(config) -> DatasetInfo  config.dataset / data_dir / data.*
    from_arrays((images uint8 [N, H, W, C], labels int [N]), (test images, test labels), *, name="arrays",
                num_classes=None, mean=(), std=(), pad=None) -> DatasetInfo   held in memory, source "arrays"
    synthetic(like="cifar100", train_size=None, test_size=None, seed=0) -> DatasetInfo   random uint8 images
                                           shaped and normalized like a built-in dataset, in memory (timing, smoke tests)
    DatasetSpecError (a DataError): what cannot be served as asked, and the fix

Host pipelines (numpy batches for THIS process; b = global_batch_size // process_count)
    train_batches(dataset, *, data_dir, global_batch_size, seed, start_step=0, two_views=False,
                  process_index=None, process_count=None, image_size=0, augmentation="")
        -> infinite iterator of {"image": float32 [b, H, W, C] normalized, "label": int32 [b]}
           or, with two_views (MLKD), {"image_weak", "image_strong", "label"}.
        Step k is a deterministic function of (seed, k): start_step=N yields exactly what an
        uninterrupted stream yields from step N. Concatenating the process-local batches in
        process order gives the global batch (build it with
        jax.make_array_from_process_local_data). For CIFAR / Fashion-MNIST the global batch is
        independent of the process count; for ImageNet each process reads its own 1/P of the
        training split. image_size > 0 / augmentation="random_resized_crop" (CIFAR / Fashion-MNIST,
        one view): the transformer students' view, upsampled (bicubic) to image_size; with
        "+rand-m9-mstd0.5-inc1" / "+re0.25" also timm's RandAugment / random erasing (zkd.data.timm_augment).
    eval_batches(dataset, *, data_dir, split="test", global_batch_size, process_index=None,
                 process_count=None, image_size=0)
        -> finite iterator of {"image", "label", "mask": bool [b]}: every example of the split
           exactly once across processes, the same number of batches on every process
           (eval_steps(N, global_batch_size, P)), padding rows masked out.
    load_arrays(dataset, data_dir, split="train") -> (uint8 [N, H, W, C], int32 [N])   CIFAR / Fashion-MNIST

Device-resident pipeline (pure JAX, inside the compiled step; CIFAR / Fashion-MNIST)
    batch_indices(seed, step, global_batch_size, num_examples) -> int32 [global_batch_size]
        per-epoch permutation epoch_permutation(seed, epoch, N), remainder dropped; the host
        pipeline visits the same indices in the same order.
    device_augment(rng, images_uint8 [B, H, W, C], dataset) -> float32 [B, H, W, C] normalized
        random crop from the 4-pixel zero-padded image + horizontal flip (jit / vmap safe).
    device_normalize(images_uint8, dataset) -> float32
    device_train_batch(seed, step, images, labels, *, dataset, global_batch_size)
        -> {"image", "label"}: gather + augment, jitted.

Augmentations (host): CIFAR / Fashion-MNIST crop from a 4-pixel zero-padded image + flip;
ImageNet RandomResizedCrop 224 (scale 0.08-1, ratio 3/4-4/3, torchvision's 10 attempts and
centre-crop fallback) + flip, evaluation resize 256 + centre crop 224. MLKD strong view: an
independently drawn crop + flip, then RandAugment (2 of 14 ops) + Cutout (zkd.data.randaugment).
Evaluation: no augmentation. All normalize by the dataset's mean / std.

Offline preparation (no network)
    python -m zkd.data.prepare --dataset fashion_mnist --source /usr/share/datasets/fashion-mnist --data_dir DIR
    python -m zkd.data.prepare --dataset cifar100 --source cifar-100-python.tar.gz --data_dir DIR
    python -m zkd.data.prepare --dataset imagenet2012 --source DIR_WITH_ILSVRC2012_TARS --data_dir DIR
A missing dataset raises DataNotFoundError saying what to download and which command prepares it.

Bad data (zkd.data.integrity), all DataError (a ValueError), each naming the fix:
    DatasetMismatchError   <data_dir>/<name>/<version> holds another dataset or version (stored
                           name / version / image shape / class count differ from DATASETS)
    DataCorruptError       damaged record files (failed checksum, a file cut short, undecodable
                           images), naming the dataset, split and, for in-memory datasets, the files
"""

import tensorflow as _tf

# tf.data must never take an accelerator away from JAX.
_tf.config.set_visible_devices([], "GPU")

from zkd.data.device import (  # noqa: E402
    batch_indices,
    device_augment,
    device_normalize,
    device_train_batch,
    epoch_permutation,
)
from zkd.data.catalog import DatasetSpecError, from_arrays, resolve, resolve_config, synthetic  # noqa: E402
from zkd.data.info import DATASETS, DatasetInfo, UnknownDatasetError, get_info, steps_per_epoch  # noqa: E402
from zkd.data.integrity import DataCorruptError, DataError, DatasetMismatchError  # noqa: E402
from zkd.data.pipeline import eval_batches, eval_steps, load_arrays, train_batches  # noqa: E402
from zkd.data.sources import DataNotFoundError  # noqa: E402

__all__ = [
    "DATASETS",
    "DataCorruptError",
    "DataError",
    "DataNotFoundError",
    "DatasetInfo",
    "DatasetMismatchError",
    "DatasetSpecError",
    "UnknownDatasetError",
    "batch_indices",
    "device_augment",
    "device_normalize",
    "device_train_batch",
    "epoch_permutation",
    "eval_batches",
    "eval_steps",
    "from_arrays",
    "get_info",
    "load_arrays",
    "resolve",
    "resolve_config",
    "steps_per_epoch",
    "synthetic",
    "train_batches",
]
