"""Host input pipelines (tf.data over TFDS): training streams and exact evaluation.

Two training paths, chosen by ``DatasetInfo.in_memory``:

* in-memory (CIFAR, Fashion-MNIST): the training split is loaded once as uint8 arrays; step
  k's global batch is ``batch_indices(seed, k, ...)`` (the same sampler the device-resident
  pipeline uses) and this process takes its slice of it. The global batch does not depend on
  the number of processes.
* streaming (ImageNet): each process reads a contiguous 1/P of the training split
  (``train[a:b]``), reshuffled every epoch (file order and a 16k-example buffer, both seeded
  by (seed, epoch)); resuming mid-epoch skips the already-consumed records before decoding.

Augmentation randomness is TF stateless, keyed by (seed, step, position in the global
batch), so step k is a deterministic function of (seed, k) (and of the process count for
ImageNet) and a run started at ``start_step=N`` yields exactly the batches an uninterrupted
run yields from step N on.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from zkd.data import randaugment, timm_augment, transforms
from zkd.data.device import epoch_permutation
from zkd.data.info import DatasetInfo, get_info
from zkd.data.integrity import check_prepared_directory, read_errors_named, read_named
from zkd.data.sources import DataNotFoundError, how_to_prepare

SHUFFLE_BUFFER = 16_384

# Random streams: the second word of every stateless seed is (counter * _NUM_STREAMS + stream).
_WEAK, _STRONG_CROP, _STRONG_RA, _WEAK_RRC = 0, 1, 2, 3
_NUM_STREAMS = 4


# ----------------------------------------------------------------------------- processes


def resolve_processes(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    """(process_index, process_count), defaulting to JAX's; validated."""
    p = jax.process_index() if process_index is None else int(process_index)
    n = jax.process_count() if process_count is None else int(process_count)
    if n < 1 or not 0 <= p < n:
        raise ValueError(f"process_index must be in [0, process_count); got {p} of {n}")
    return p, n


def local_batch_size(global_batch_size: int, process_count: int) -> int:
    """Per-process batch: ``global_batch_size // process_count``; they must divide."""
    if global_batch_size <= 0 or global_batch_size % process_count:
        raise ValueError(
            f"global_batch_size {global_batch_size} must be a positive multiple of the {process_count} processes"
        )
    return global_batch_size // process_count


def process_range(num_examples: int, process_index: int, process_count: int) -> tuple[int, int]:
    """The contiguous [start, end) of ``num_examples`` read by one process (sizes differ by <= 1)."""
    start = num_examples * process_index // process_count
    end = num_examples * (process_index + 1) // process_count
    return start, end


# ----------------------------------------------------------------------------- TFDS access


def prepared_builder(info: DatasetInfo, data_dir: str | None) -> tfds.core.DatasetBuilder:
    """The TFDS builder of a prepared dataset; fails early with preparation instructions.

    Raises:
      DataNotFoundError: the dataset is not prepared in ``data_dir``.
      DatasetMismatchError: the directory holds another dataset or version (zkd.data.integrity).
    """
    if info.source == "arrays":
        raise ValueError(f"{info.name} is held in memory (zkd.data.from_arrays); it has no TFDS builder")
    if info.source == "builtin":  # a user's dataset has no constants to compare with
        check_prepared_directory(info, data_dir)  # before TFDS, which would fail on another version
        builder = tfds.builder(info.tfds_name, data_dir=data_dir)
    else:
        builder = tfds.builder(info.tfds_name, data_dir=data_dir, try_gcs=False)
    if not builder.is_prepared():
        raise DataNotFoundError(how_to_prepare(info.name, data_dir or str(builder.data_dir_root)))
    return builder


def load_arrays(dataset: str | DatasetInfo, data_dir: str | None, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """A whole split of an in-memory dataset as arrays, in TFDS's (fixed) file order.

    Args:
      dataset: name or ``DatasetInfo`` of an in-memory dataset (CIFAR, Fashion-MNIST).
      data_dir: the TFDS data directory (None: TFDS's default).
      split: "train" or "test".

    Returns:
      (images uint8 [N, H, W, C], labels int32 [N]), N = the split's constant size.

    Raises:
      DataNotFoundError: the dataset is not prepared in ``data_dir`` (says how to prepare it).
      DatasetMismatchError: ``data_dir`` holds another dataset under this one's name.
      DataCorruptError: the split's record files are damaged (names the files and the fix).
      ValueError: the stored split does not have the expected size or image shape.
    """
    info = get_info(dataset)
    if not info.in_memory:
        raise ValueError(f"{info.name} is too large to load as arrays; use train_batches / eval_batches")
    if info.arrays is not None:
        images, labels = info.arrays["train" if split == "train" else "test"]
        info.split_size(split)  # validates the name
        return images, labels
    builder = prepared_builder(info, data_dir)
    shape = tf.TensorSpec(info.image_shape, tf.uint8)
    size, channels = info.image_shape[0], info.image_shape[2]

    def decode_one(encoded):
        if not info.resize:
            return tf.io.decode_image(encoded, channels=channels, expand_animations=False)
        image = transforms.resize_center_crop_any(transforms.decode_any(encoded, channels), size, resize=size)
        return tf.cast(tf.round(image), tf.uint8)

    def decode(batch):  # decoding whole batches is faster than TFDS's per-example decoding
        images = tf.map_fn(decode_one, batch[info.image_key], fn_output_signature=shape)
        return images, tf.cast(batch[info.label_key], tf.int32)

    ds = builder.as_dataset(split=info.tfds_split(split), decoders={info.image_key: tfds.decode.SkipDecoding()})
    ds = ds.batch(4096).map(decode, num_parallel_calls=tf.data.AUTOTUNE)
    with read_errors_named(info, split, builder, locate=True):
        parts = list(ds.as_numpy_iterator())
    images = np.concatenate([x for x, _ in parts]) if parts else np.zeros((0, *info.image_shape), np.uint8)
    labels = np.concatenate([y for _, y in parts]) if parts else np.zeros((0,), np.int32)
    expected = (info.split_size(split), *info.image_shape)
    if images.shape != expected or labels.shape != expected[:1]:
        raise ValueError(
            f"{info.name} {split} split in {data_dir} has images {images.shape} / labels {labels.shape}; "
            f"expected {expected}. Re-run the preparation: {how_to_prepare(info.name, data_dir)}"
        )
    return images, labels


# ----------------------------------------------------------------------------- randomness


def _seed(seed: int, counter, stream: int) -> tf.Tensor:
    """Stateless seed int64 [2] = (seed, counter * _NUM_STREAMS + stream)."""
    counter = tf.cast(counter, tf.int64)
    return tf.stack([tf.constant(seed, tf.int64), counter * _NUM_STREAMS + stream])


def _batch_uniforms(seed: int, step, stream: int, global_batch_size: int, local: slice, width: int) -> tf.Tensor:
    """Uniforms [b, width] for this process's rows of the global batch at ``step``.

    Drawn for the whole global batch and sliced, so example j of the global batch gets the
    same numbers whatever the number of processes.
    """
    u = tf.random.stateless_uniform([global_batch_size, width], seed=_seed(seed, step, stream))
    return u[local]


@functools.lru_cache(maxsize=4)
def _host_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    """``epoch_permutation`` evaluated on the host CPU (bit-identical to the device's)."""
    try:
        device = jax.local_devices(backend="cpu")[0]  # this process's own (multi-host safe)
    except RuntimeError:  # CPU backend disabled (JAX_PLATFORMS without cpu): default device
        device = None
    with jax.default_device(device):
        return np.asarray(epoch_permutation(seed, epoch, num_examples))


# ----------------------------------------------------------------------------- training


def train_batches(
    dataset: str | DatasetInfo,
    *,
    data_dir: str | None,
    global_batch_size: int,
    seed: int,
    start_step: int = 0,
    two_views: bool = False,
    process_index: int | None = None,
    process_count: int | None = None,
    augmentation_params: bool = False,
    image_size: int = 0,
    augmentation: str = "",
) -> Iterator[dict[str, np.ndarray]]:
    """Infinite iterator over this process's part of the global training batches.

    Yields, for steps start_step, start_step + 1, ...:
      ``{"image": float32 [b, H, W, C] normalized, "label": int32 [b]}``, or with
      ``two_views`` (MLKD) ``{"image_weak", "image_strong", "label"}``;
      b = global_batch_size // process_count. Concatenating the batches of processes
      0..P-1 gives the global batch of the step. With ``augmentation_params`` (in-memory
      datasets, one view) each batch also holds ``AUGMENTATION_PARAMS``: "index" int32 [b] (the
      example's row in ``load_arrays``'s split), "crop_dy", "crop_dx" int32 [b] in [0, 2 * pad]
      and "flip" bool [b], exactly the crop and flip that made "image" (zkd.logit_cache).
      ``image_size`` > 0 and ``augmentation`` (in-memory datasets, one view; see
      ``AUGMENTATIONS``) give the transformer students' view (docs/paper.md §8).
    """
    info = get_info(dataset)
    _check_augmentation_params(info, two_views, augmentation_params)
    _check_view(info, two_views, augmentation_params, image_size, augmentation)
    p, n = resolve_processes(process_index, process_count)
    b = local_batch_size(global_batch_size, n)
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}")
    if info.in_memory:
        images, labels = load_arrays(info, data_dir, "train")
        return _in_memory_train(
            info, images, labels, global_batch_size, p, b, seed, start_step, two_views, augmentation_params,
            image_size, augmentation,
        )
    builder = prepared_builder(info, data_dir)  # fail now, not at the first batch
    return _streaming_train(info, builder, global_batch_size, p, n, seed, start_step, two_views, augmentation)


def in_memory_train_batches(
    info: DatasetInfo,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    global_batch_size: int,
    seed: int,
    start_step: int = 0,
    two_views: bool = False,
    process_index: int = 0,
    process_count: int = 1,
    augmentation_params: bool = False,
    image_size: int = 0,
    augmentation: str = "",
) -> Iterator[dict[str, np.ndarray]]:
    """The in-memory training stream over given arrays (``train_batches`` without TFDS).

    Args:
      images: uint8 [N, H, W, C]; labels: int [N] (N need not be the constant size).
      augmentation_params: add "index" (row in ``images``), "crop_dy", "crop_dx", "flip" to
        every batch (see ``train_batches``).
      image_size, augmentation: the student's view (see ``train_batches``).
    """
    _check_augmentation_params(info, two_views, augmentation_params)
    _check_view(info, two_views, augmentation_params, image_size, augmentation)
    b = local_batch_size(global_batch_size, process_count)
    return _in_memory_train(
        info, images, labels, global_batch_size, process_index, b, seed, start_step, two_views, augmentation_params,
        image_size, augmentation,
    )


# Keys ``augmentation_params=True`` adds to an in-memory training batch.
AUGMENTATION_PARAMS = ("index", "crop_dy", "crop_dx", "flip")

# The training view of an in-memory dataset: "" the dataset's own (CIFAR: a crop of the 4-pixel
# zero-padded image + flip; with image_size, then resized bicubically to image_size), or
# "random_resized_crop": timm's RandomResizedCrop (scale 0.08-1, ratio 3/4-4/3, bicubic) to
# image_size (default: the dataset's) + flip, optionally followed by "+rand-m9-mstd0.5-inc1"
# (timm's RandAugment on the [0, 255] view) and/or "+re0.25" (timm's random erasing, pixel mode,
# probability 0.25, on the normalized view): the release's transformer transform with both
# (docs/paper.md §8; zkd.data.timm_augment).
# "crop_flip" names the in-memory default explicitly; "none": no augmentation at all (the
# evaluation view: in-memory images as they are, streamed ones resized and centre-cropped).
RRC = "random_resized_crop"
RANDOM_ERASING = "re0.25"
CROP_FLIP = "crop_flip"
NONE = "none"
AUGMENTATIONS = ("", CROP_FLIP, NONE, RRC, f"{RRC}+{timm_augment.RANDAUGMENT}", f"{RRC}+{RANDOM_ERASING}",
                 f"{RRC}+{timm_augment.RANDAUGMENT}+{RANDOM_ERASING}")


def _augmentation_parts(augmentation: str) -> tuple[bool, bool, float]:
    """(random-resized crop, RandAugment, random-erasing probability) of an ``AUGMENTATIONS`` entry."""
    parts = augmentation.split("+") if augmentation else []
    erasing = float(RANDOM_ERASING[2:]) if RANDOM_ERASING in parts else 0.0
    return RRC in parts, timm_augment.RANDAUGMENT in parts, erasing


def _check_view(info: DatasetInfo, two_views: bool, augmentation_params: bool, image_size: int,
                augmentation: str) -> None:
    if augmentation not in AUGMENTATIONS:
        raise ValueError(f"augmentation={augmentation!r}; valid: {', '.join(map(repr, AUGMENTATIONS))}")
    if augmentation == CROP_FLIP and not info.in_memory:
        raise ValueError(f"augmentation='crop_flip' serves in-memory datasets; {info.name} is streamed "
                         "(its default is the random-resized crop; 'none' turns augmentation off)")
    if augmentation == NONE and (two_views or augmentation_params):
        raise ValueError("augmentation='none' is one plain view: not with MLKD's two views nor a teacher-logit cache")
    if augmentation in (CROP_FLIP, NONE) and not image_size:
        return
    if not info.in_memory and augmentation in (RRC, NONE) and not image_size:
        return  # a streamed dataset's own view, or none
    if not (image_size or augmentation):
        return
    if image_size < 0:
        raise ValueError(f"image_size must be >= 0, got {image_size}")
    if not info.in_memory or two_views or augmentation_params:
        raise ValueError(
            "image_size / augmentation serve one view of an in-memory dataset (CIFAR, Fashion-MNIST) without "
            f"augmentation_params; got {info.name}, two_views={two_views}, augmentation_params={augmentation_params}"
        )


def _check_augmentation_params(info: DatasetInfo, two_views: bool, augmentation_params: bool) -> None:
    if not augmentation_params:
        return
    if not info.in_memory:
        raise ValueError(
            f"augmentation_params=True needs an in-memory dataset (CIFAR, Fashion-MNIST): {info.name} is streamed "
            "with RandomResizedCrop, whose crops are not a small finite set, so its teacher logits cannot be cached"
        )
    if two_views:
        raise ValueError(
            "augmentation_params=True is for one view only: with two_views (MLKD) the strong view goes through "
            "RandAugment + Cutout, which a teacher-logit cache cannot enumerate; use the on-the-fly teacher"
        )


def _in_memory_train(info, images, labels, global_batch_size, p, b, seed, start_step, two_views,
                     augmentation_params=False, image_size=0, augmentation=""):
    """Python generator over epochs; each epoch is a tf.data pipeline over that epoch's batches.

    The epoch's permutation is computed here, in the caller's thread (never inside a tf.data
    thread), and this process's rows are gathered in one numpy take. With
    ``augmentation_params`` the rows' indices go through tf.data too, and each batch carries
    them with the crop offsets and flips ``augment`` drew.
    """
    num = images.shape[0]
    steps_per_epoch = num // global_batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"global_batch_size {global_batch_size} exceeds the {num} training examples")
    labels = np.asarray(labels, np.int32)
    local = slice(p * b, p * b + b)
    rrc, rand_augment, erasing = _augmentation_parts(augmentation)

    def augment(step, x, y, index=None):
        u = _batch_uniforms(seed, step, _WEAK, global_batch_size, local, 3)
        dy, dx, flip = transforms.crop_flip_from_uniform(u, info.pad)
        if rrc:  # one stateless seed per example of the global stream
            counters = tf.cast(step, tf.int64) * global_batch_size + local.start + tf.range(b, dtype=tf.int64)
            seeds = tf.stack([tf.fill([b], tf.constant(seed, tf.int64)), counters * _NUM_STREAMS + _WEAK_RRC], 1)
            size = image_size or info.image_shape[0]
            weak = transforms.flip_batch(transforms.random_resized_crop_batch(x, seeds, size), flip)
            # timm's strong part (never with two_views, so MLKD's strong streams are free here):
            # its uniforms per step on _STRONG_CROP, the erasing noise per example on _STRONG_RA.
            if rand_augment or erasing:
                width = timm_augment.NUM_RA_UNIFORMS + timm_augment.NUM_RE_UNIFORMS
                u_strong = _batch_uniforms(seed, step, _STRONG_CROP, global_batch_size, local, width)
            if rand_augment:
                weak = timm_augment.rand_augment(weak, u_strong[:, : timm_augment.NUM_RA_UNIFORMS])
        else:
            weak = x if augmentation == NONE else transforms.pad_crop_flip(x, dy, dx, flip, info.pad)
            if image_size:
                weak = transforms.resize_to_uint8_grid(weak, image_size, "bicubic")
        if not two_views:
            image = transforms.normalize(weak, info)
            if erasing:
                noise_seeds = tf.stack([seeds[:, 0], counters * _NUM_STREAMS + _STRONG_RA], 1)
                noise = tf.map_fn(lambda s: tf.random.stateless_normal(image.shape[1:], s), noise_seeds,
                                  fn_output_signature=tf.float32)
                image = timm_augment.random_erasing(image, u_strong[:, timm_augment.NUM_RA_UNIFORMS:], noise, erasing)
            out = {"image": image, "label": y}
            if index is not None:
                out.update(index=index, crop_dy=dy, crop_dx=dx, flip=flip)
            return out
        u = _batch_uniforms(seed, step, _STRONG_CROP, global_batch_size, local, 3)
        strong = transforms.pad_crop_flip(x, *transforms.crop_flip_from_uniform(u, info.pad), info.pad)
        u = _batch_uniforms(seed, step, _STRONG_RA, global_batch_size, local, randaugment.NUM_UNIFORMS)
        strong = randaugment.rand_augment_cutout(strong, u)
        return {
            "image_weak": transforms.normalize(weak, info),
            "image_strong": transforms.normalize(strong, info),
            "label": y,
        }

    epoch, first = divmod(start_step, steps_per_epoch)
    while True:
        perm = _host_permutation(seed, epoch, num)[: steps_per_epoch * global_batch_size]
        idx = perm.reshape(steps_per_epoch, global_batch_size)[first:, local]  # [steps, b]
        steps = np.arange(epoch * steps_per_epoch + first, (epoch + 1) * steps_per_epoch, dtype=np.int64)
        columns = (steps, images[idx], labels[idx]) + ((idx.astype(np.int32),) if augmentation_params else ())
        ds = tf.data.Dataset.from_tensor_slices(columns)
        ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        yield from ds.prefetch(tf.data.AUTOTUNE).with_options(_without_autotune()).as_numpy_iterator()
        epoch, first = epoch + 1, 0


def _without_autotune() -> tf.data.Options:
    """Options of the in-memory training pipeline: tf.data's autotuning model off.

    With autotuning on, deleting an iterator that has not reached its end (every run that stops
    mid-epoch: the end of training, a preemption, ``train_steps`` below an epoch) blocks until
    tf.data's autotuning thread is joined, and that thread sleeps between its optimization
    rounds, up to a minute apart, so a run could stall at its end (py-spy:
    ``RootDataset::Iterator::~Iterator`` waiting on the thread; docs/performance.md). This
    pipeline does not need the tuning: its map runs at one call per core and its output stays
    far ahead of any training step without it, and the batches are the same either way
    (stateless seeds, deterministic order).
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return options


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def _read_config(seed: int | None) -> tfds.ReadConfig:
    options = tf.data.Options()
    options.deterministic = True
    return tfds.ReadConfig(shuffle_seed=seed, options=options)


def _center_view(info: DatasetInfo, encoded: tf.Tensor) -> tf.Tensor:
    """A streamed example's evaluation view: float32 [H, W, C] in [0, 255] (ImageNet: resize 256,
    centre crop 224; a user's dataset the same proportions from any image format)."""
    size = info.image_shape[0]
    if info.source == "builtin":
        return transforms.decode_resize_center_crop(encoded, size)
    return transforms.resize_center_crop_any(transforms.decode_any(encoded, info.image_shape[2]), size)


def raw_train_images(info: DatasetInfo, data_dir: str | None, batch: int = 1024) -> Iterator[np.ndarray]:
    """The training split's images as the models see them before augmentation and normalization:
    uint8 [<= batch, H, W, C] batches in file order (in-memory datasets: ``load_arrays``; streamed:
    the evaluation view). Used for normalization statistics (zkd.data.catalog)."""
    if info.in_memory:
        images, _ = load_arrays(info, data_dir, "train")
        for i in range(0, images.shape[0], batch):
            yield images[i : i + batch]
        return
    builder = prepared_builder(info, data_dir)
    ds = builder.as_dataset(split=info.train_split, shuffle_files=False,
                            decoders={info.image_key: tfds.decode.SkipDecoding()})
    ds = ds.map(lambda ex: tf.cast(tf.round(_center_view(info, ex[info.image_key])), tf.uint8),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    yield from read_named(ds.batch(batch).prefetch(2).as_numpy_iterator(), info, "train", builder)


def _streaming_train(info, builder, global_batch_size, p, n, seed, start_step, two_views, augmentation=""):
    b = global_batch_size // n
    steps_per_epoch = info.train_size // global_batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"global_batch_size {global_batch_size} exceeds the {info.train_size} training examples")
    start, end = process_range(info.train_size, p, n)
    height, width, channels = info.image_shape
    builtin = info.source == "builtin"  # ImageNet's JPEGs: only the crop window is decoded
    # A dataset stored in a fixed order (TFDS disable_shuffling) is read in that order, shuffled
    # by the buffer only: TFDS refuses to shuffle its files.
    ordered = bool(getattr(builder.info, "disable_shuffling", False))

    def crop(encoded, crop_seed):
        if builtin:
            return transforms.decode_random_resized_crop(encoded, crop_seed, height)
        return transforms.random_resized_crop_any(transforms.decode_any(encoded, channels), crop_seed, height)

    def example(j, epoch, ex):
        """j: index of the example within this process's epoch stream."""
        step = epoch * steps_per_epoch + j // b
        counter = step * global_batch_size + p * b + j % b  # position in the global stream
        u = tf.random.stateless_uniform([2], seed=_seed(seed, counter, _WEAK))
        encoded, label = ex[info.image_key], tf.cast(ex[info.label_key], tf.int32)
        if augmentation == NONE:
            return {"image": _center_view(info, encoded), "label": label}
        weak = crop(encoded, _seed(seed, counter, _WEAK_RRC))
        out = {"image": transforms.random_flip(weak, u[0]), "label": label}
        if two_views:
            strong = crop(encoded, _seed(seed, counter, _STRONG_CROP))
            strong = transforms.random_flip(strong, u[1])
            ra = tf.random.stateless_uniform([1, randaugment.NUM_UNIFORMS], seed=_seed(seed, counter, _STRONG_RA))
            out = {
                "image_weak": out["image"],
                "image_strong": randaugment.rand_augment_cutout(strong[None], ra)[0],
                "label": out["label"],
            }
        return out

    def normalize_batch(batch):
        return {k: (v if k == "label" else transforms.normalize(v, info)) for k, v in batch.items()}

    epoch = start_step // steps_per_epoch
    skip = (start_step - epoch * steps_per_epoch) * b
    while True:
        epoch_seed = _epoch_seed(seed, epoch)
        ds = builder.as_dataset(
            split=f"{info.train_split}[{start}:{end}]",
            shuffle_files=not ordered,
            read_config=_read_config(epoch_seed),
            decoders={info.image_key: tfds.decode.SkipDecoding()},
        )
        ds = ds.shuffle(SHUFFLE_BUFFER, seed=epoch_seed, reshuffle_each_iteration=False)
        ds = ds.take(steps_per_epoch * b).skip(skip).enumerate(start=skip)
        ds = ds.map(
            lambda j, ex, e=epoch: example(j, e, ex),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        ds = ds.batch(b, drop_remainder=True).map(normalize_batch).prefetch(tf.data.AUTOTUNE)
        yield from read_named(ds.as_numpy_iterator(), info, "train", builder)
        epoch, skip = epoch + 1, 0


# ----------------------------------------------------------------------------- evaluation


def eval_steps(num_examples: int, global_batch_size: int, process_count: int) -> int:
    """Evaluation steps, the same on every process: ceil(ceil(N / P) / b)."""
    b = local_batch_size(global_batch_size, process_count)
    return math.ceil(math.ceil(num_examples / process_count) / b)


def eval_batches(
    dataset: str | DatasetInfo,
    *,
    data_dir: str | None,
    split: str = "test",
    global_batch_size: int,
    process_index: int | None = None,
    process_count: int | None = None,
    image_size: int = 0,
) -> Iterator[dict[str, np.ndarray]]:
    """Finite iterator over this process's evaluation batches, every example exactly once.

    Process p reads the contiguous ``process_range(N, p, P)`` of the split, in order. Every
    process yields ``eval_steps(N, global_batch_size, P)`` batches of b = G // P examples:
    ``{"image": float32 [b, H, W, C] normalized, "label": int32 [b], "mask": bool [b]}``;
    padding rows have zero images, label 0 and mask False, and the masks of all processes
    together hold exactly N True entries. No augmentation (ImageNet: resize 256, centre
    crop 224). ``image_size`` > 0 (in-memory datasets): each image resized bilinearly to
    image_size x image_size (torchvision ``Resize``, the release's transformer test transform).
    """
    info = get_info(dataset)
    p, n = resolve_processes(process_index, process_count)
    b = local_batch_size(global_batch_size, n)
    num = info.split_size(split)
    start, end = process_range(num, p, n)
    steps = eval_steps(num, global_batch_size, n)
    image_shape = info.image_shape
    if image_size:
        if not info.in_memory:
            raise ValueError(f"image_size serves in-memory datasets (CIFAR, Fashion-MNIST), not {info.name}")
        image_shape = (image_size, image_size, info.image_shape[2])
    if info.in_memory and not image_size:
        images, labels = load_arrays(info, data_dir, split)
        batches = _in_memory_eval_numpy(info, images[start:end], labels[start:end], b)
    elif info.in_memory:
        images, labels = load_arrays(info, data_dir, split)
        batches = _in_memory_eval(info, images[start:end], labels[start:end], b, image_size).as_numpy_iterator()
    else:
        builder = prepared_builder(info, data_dir)
        ds = _streaming_eval(info, builder, f"{info.tfds_split(split)}[{start}:{end}]", end - start, b)
        batches = read_named(ds.as_numpy_iterator(), info, split, builder)
    return pad_eval_batches(batches, b, steps, image_shape)


def _in_memory_eval_numpy(info, images, labels, b):
    """The in-memory evaluation batches without resizing, in NumPy: ``transforms.normalize``'s
    float32 operations in its order (the same bits as the tf.data path), and no TensorFlow call,
    so arrays held in memory are evaluated on machines whose TensorFlow is absent or stubbed."""
    mean, std = np.asarray(info.mean, np.float32), np.asarray(info.std, np.float32)
    for start in range(0, len(labels), b):
        x = images[start:start + b].astype(np.float32) / np.float32(255.0)
        yield {"image": (x - mean) / std, "label": np.asarray(labels[start:start + b], np.int32)}


def _in_memory_eval(info, images, labels, b, image_size=0):
    ds = tf.data.Dataset.from_tensor_slices({"image": images, "label": np.asarray(labels, np.int32)}).batch(b)

    def prepare(e):
        x = transforms.resize_to_uint8_grid(e["image"], image_size, "bilinear") if image_size else e["image"]
        return {"image": transforms.normalize(x, info), "label": e["label"]}

    return ds.map(prepare).prefetch(2)


def _streaming_eval(info, builder, split, count, b):
    ds = builder.as_dataset(split=split, shuffle_files=False, decoders={info.image_key: tfds.decode.SkipDecoding()})

    def example(ex):
        image = _center_view(info, ex[info.image_key])
        return {"image": transforms.normalize(image, info), "label": tf.cast(ex[info.label_key], tf.int32)}

    ds = ds.take(count).map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(b).prefetch(tf.data.AUTOTUNE)


def pad_eval_batches(batches, b: int, steps: int, image_shape) -> Iterator[dict[str, np.ndarray]]:
    """Pads a finite stream of {"image", "label"} batches (<= b rows) to ``steps`` full batches with masks.

    Raises:
      ValueError: the stream holds more than ``steps`` batches.
    """
    done = 0
    for batch in batches:
        rows = batch["label"].shape[0]
        if done == steps or rows > b:
            raise ValueError(f"evaluation stream longer than {steps} batches of {b}")
        mask = np.arange(b) < rows
        yield {
            "image": _pad_rows(batch["image"].astype(np.float32, copy=False), b),
            "label": _pad_rows(batch["label"].astype(np.int32, copy=False), b),
            "mask": mask,
        }
        done += 1
    for _ in range(steps - done):
        yield {
            "image": np.zeros((b, *image_shape), np.float32),
            "label": np.zeros((b,), np.int32),
            "mask": np.zeros((b,), bool),
        }


def _pad_rows(x: np.ndarray, b: int) -> np.ndarray:
    if x.shape[0] == b:
        return x
    return np.concatenate([x, np.zeros((b - x.shape[0], *x.shape[1:]), x.dtype)])
