"""Device-resident input pipeline for small datasets (CIFAR, Fashion-MNIST), in pure JAX.

The trainer keeps the uint8 training images and int32 labels on the accelerator (from
``zkd.data.load_arrays``) and, inside its compiled step, gathers a batch with
``batch_indices`` and augments it with ``device_augment``: the host does no per-step work.

Randomness: ``batch_indices`` draws one permutation per epoch from
``fold_in(fold_in(key(seed), 0), epoch)``; ``device_train_batch`` augments with
``fold_in(fold_in(key(seed), 1), step)``. Both are functions of (seed, step) only, so a run
resumed at step N sees what an uninterrupted run sees from step N on. The host pipeline
(``zkd.data.train_batches``) uses the same ``epoch_permutation``, so both pipelines visit
the same examples in the same order; only their augmentation draws differ (TF vs JAX
random streams), with the same distribution.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from zkd.data.info import DatasetInfo, get_info

_PERMUTATION_STREAM = 0
_AUGMENT_STREAM = 1


def epoch_permutation(seed, epoch, num_examples: int) -> jax.Array:
    """The order of the training examples in one epoch.

    Args:
      seed: int or int32 scalar (may be traced).
      epoch: int or int32 scalar (may be traced), counted from 0.
      num_examples: static size of the training split.

    Returns:
      int32 [num_examples], a permutation of ``arange(num_examples)``.
    """
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), _PERMUTATION_STREAM), epoch)
    return jax.random.permutation(key, num_examples).astype(jnp.int32)


def batch_indices(seed, step, global_batch_size: int, num_examples: int) -> jax.Array:
    """Example indices of the global training batch at ``step``.

    Epoch ``e = step // steps_per_epoch`` visits ``epoch_permutation(seed, e)`` in order,
    ``global_batch_size`` at a time; the last ``num_examples % global_batch_size`` examples
    of each permutation are dropped. jit-safe: ``seed`` and ``step`` may be traced.

    Returns:
      int32 [global_batch_size], distinct indices into the training arrays.
    """
    steps_per_epoch = num_examples // global_batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"global_batch_size {global_batch_size} exceeds num_examples {num_examples}")
    epoch, within = jnp.divmod(jnp.asarray(step, jnp.int32), steps_per_epoch)
    perm = epoch_permutation(seed, epoch, num_examples)
    return jax.lax.dynamic_slice(perm, (within * global_batch_size,), (global_batch_size,))


def device_normalize(images_uint8: jax.Array, dataset: str | DatasetInfo) -> jax.Array:
    """uint8 [..., H, W, C] -> float32 ``(x / 255 - mean) / std`` with the dataset's statistics."""
    info = get_info(dataset)
    mean = jnp.asarray(info.mean, jnp.float32)
    std = jnp.asarray(info.std, jnp.float32)
    return (images_uint8.astype(jnp.float32) / 255.0 - mean) / std


def crop_flip_params(rng: jax.Array, batch: int, pad: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-example random crop offsets and flips of the CIFAR recipe.

    Returns:
      (dy int32 [batch], dx int32 [batch], flip bool [batch]): the crop starts at
      (dy, dx) in the zero-padded image, offsets uniform in [0, 2 * pad]; flip with p = 0.5.
    """
    k_off, k_flip = jax.random.split(rng)
    offsets = jax.random.randint(k_off, (batch, 2), 0, 2 * pad + 1, dtype=jnp.int32)
    flip = jax.random.bernoulli(k_flip, 0.5, (batch,))
    return offsets[:, 0], offsets[:, 1], flip


def pad_crop_flip(images: jax.Array, dy: jax.Array, dx: jax.Array, flip: jax.Array, pad: int) -> jax.Array:
    """Crop each image of [B, H, W, C] at (dy, dx) from its ``pad``-zero-padded copy, then flip."""
    _, h, w, c = images.shape
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))

    def one(img, y, x, f):
        out = jax.lax.dynamic_slice(img, (y, x, 0), (h, w, c))
        return jnp.where(f, out[:, ::-1, :], out)

    return jax.vmap(one)(padded, dy, dx, flip)


def device_augment(rng: jax.Array, images_uint8: jax.Array, dataset: str | DatasetInfo) -> jax.Array:
    """Training augmentation of in-memory datasets: random crop from a zero-padded image + flip.

    CIFAR: 32x32 crop from the 4-pixel padded 40x40 image, horizontal flip with p = 0.5,
    normalization by the dataset mean/std. Fashion-MNIST: the same at 28x28, pad 4.
    jit- and vmap-safe; ``dataset`` is static.

    Args:
      rng: a JAX PRNG key.
      images_uint8: uint8 [B, H, W, C].
      dataset: name or ``DatasetInfo`` (must be an in-memory dataset).

    Returns:
      float32 [B, H, W, C], normalized.
    """
    info = get_info(dataset)
    if not info.in_memory:
        raise ValueError(f"device_augment is for in-memory datasets (CIFAR, Fashion-MNIST), not {info.name}")
    dy, dx, flip = crop_flip_params(rng, images_uint8.shape[0], info.pad)
    return device_normalize(pad_crop_flip(images_uint8, dy, dx, flip, info.pad), info)


@functools.partial(jax.jit, static_argnames=("dataset", "global_batch_size"))
def device_train_batch(seed, step, images: jax.Array, labels: jax.Array, *, dataset, global_batch_size: int):
    """The augmented global training batch at ``step``, gathered from device-resident arrays.

    Args:
      seed, step: int32 scalars (traced).
      images: uint8 [N, H, W, C]; labels: int32 [N] (the whole training split).
      dataset: name or ``DatasetInfo`` (static, hashable).
      global_batch_size: static.

    Returns:
      {"image": float32 [G, H, W, C] normalized, "label": int32 [G]}.
    """
    idx = batch_indices(seed, step, global_batch_size, images.shape[0])
    rng = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), _AUGMENT_STREAM), step)
    return {"image": device_augment(rng, images[idx], dataset), "label": labels[idx]}
