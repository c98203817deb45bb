"""Host-side (TensorFlow) image transforms of the reference recipes (docs/paper.md §4).

All randomness is stateless: every function takes its random numbers (or a TF stateless
seed, int32/int64 [2]) as arguments, so a pipeline is a pure function of (seed, step,
example position).

Conventions: images are uint8 or float32 with values in [0, 255] until ``normalize``.
"""

from __future__ import annotations

import math

import tensorflow as tf

from zkd.data.info import DatasetInfo

EVAL_RESIZE_RATIO = 256 / 224  # resize the shorter side to 256 before a 224 centre crop
RRC_SCALE = (0.08, 1.0)
RRC_RATIO = (3.0 / 4.0, 4.0 / 3.0)
RRC_ATTEMPTS = 10


def normalize(images: tf.Tensor, info: DatasetInfo) -> tf.Tensor:
    """[..., H, W, C] in [0, 255] -> float32 ``(x / 255 - mean) / std``."""
    mean = tf.constant(info.mean, tf.float32)
    std = tf.constant(info.std, tf.float32)
    return (tf.cast(images, tf.float32) / 255.0 - mean) / std


def crop_flip_from_uniform(u: tf.Tensor, pad: int) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Maps uniforms in [0, 1) [B, 3] to (dy, dx) in [0, 2 * pad] (int32 [B] each) and flip (bool [B])."""
    n = 2 * pad + 1
    offsets = tf.minimum(tf.cast(tf.floor(u[:, :2] * n), tf.int32), n - 1)
    return offsets[:, 0], offsets[:, 1], u[:, 2] < 0.5


def pad_crop_flip(images: tf.Tensor, dy: tf.Tensor, dx: tf.Tensor, flip: tf.Tensor, pad: int) -> tf.Tensor:
    """CIFAR-style crop of a batch: [B, H, W, C] -> [B, H, W, C].

    Each image is zero-padded by ``pad`` on every side, cropped back to H x W at
    (dy[i], dx[i]) of the padded image, and mirrored left-right where flip[i].
    """
    h, w = images.shape[1], images.shape[2]
    padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    rows = dy[:, None] + tf.range(h)[None, :]  # [B, H]
    cols = dx[:, None] + tf.range(w)[None, :]  # [B, W]
    cols = tf.where(flip[:, None], tf.reverse(cols, axis=[1]), cols)
    out = tf.gather(padded, rows, axis=1, batch_dims=1)  # [B, H, W + 2 pad, C]
    return tf.gather(out, cols, axis=2, batch_dims=1)


def random_resized_crop_box(seed: tf.Tensor, height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
    """torchvision ``RandomResizedCrop.get_params`` with scale (0.08, 1) and ratio (3/4, 4/3).

    Up to 10 attempts: area fraction ~ U(0.08, 1), log aspect ratio ~ U(log 3/4, log 4/3),
    w = round(sqrt(area * ratio)), h = round(sqrt(area / ratio)); the first attempt with
    0 < w <= width and 0 < h <= height is placed uniformly (top in [0, height - h], left in
    [0, width - w]). If none fits: the central crop with the aspect ratio clamped to
    [3/4, 4/3] (the whole image when its ratio is inside).

    Args:
      seed: stateless seed, int [2].
      height, width: int32 scalars, the image size.

    Returns:
      int32 [4]: (top, left, h, w).
    """
    height_f = tf.cast(height, tf.float32)
    width_f = tf.cast(width, tf.float32)
    u = tf.random.stateless_uniform([RRC_ATTEMPTS, 4], seed=seed)
    area = height_f * width_f * (RRC_SCALE[0] + (RRC_SCALE[1] - RRC_SCALE[0]) * u[:, 0])
    log_lo, log_hi = math.log(RRC_RATIO[0]), math.log(RRC_RATIO[1])
    ratio = tf.exp(log_lo + (log_hi - log_lo) * u[:, 1])
    w = tf.cast(tf.round(tf.sqrt(area * ratio)), tf.int32)
    h = tf.cast(tf.round(tf.sqrt(area / ratio)), tf.int32)
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = tf.argmax(tf.cast(ok, tf.int32), output_type=tf.int32)
    h_k, w_k = h[first], w[first]
    top = tf.minimum(tf.cast(tf.floor(u[first, 2] * tf.cast(height - h_k + 1, tf.float32)), tf.int32), height - h_k)
    left = tf.minimum(tf.cast(tf.floor(u[first, 3] * tf.cast(width - w_k + 1, tf.float32)), tf.int32), width - w_k)

    # Fallback: central crop.
    in_ratio = width_f / height_f
    fb_w = tf.where(
        in_ratio < RRC_RATIO[0],
        width,
        tf.where(in_ratio > RRC_RATIO[1], tf.cast(tf.round(height_f * RRC_RATIO[1]), tf.int32), width),
    )
    fb_h = tf.where(
        in_ratio < RRC_RATIO[0],
        tf.cast(tf.round(width_f / RRC_RATIO[0]), tf.int32),
        height,
    )
    fallback = tf.stack([(height - fb_h) // 2, (width - fb_w) // 2, fb_h, fb_w])
    return tf.where(tf.reduce_any(ok), tf.stack([top, left, h_k, w_k]), fallback)


def decode_random_resized_crop(encoded: tf.Tensor, seed: tf.Tensor, size: int) -> tf.Tensor:
    """JPEG bytes -> RandomResizedCrop(size) as float32 [size, size, 3] in [0, 255].

    Only the crop window is decoded. Resizing is bilinear with antialiasing (as torchvision
    on PIL images).
    """
    shape = tf.image.extract_jpeg_shape(encoded)
    box = random_resized_crop_box(seed, shape[0], shape[1])
    crop = tf.image.decode_and_crop_jpeg(encoded, box, channels=3)
    return _resize(crop, [size, size])


def decode_resize_center_crop(encoded: tf.Tensor, size: int, resize: int | None = None) -> tf.Tensor:
    """JPEG bytes -> resize the shorter side to ``resize`` then center-crop ``size``.

    torchvision ``Resize(256)`` + ``CenterCrop(224)``: the longer side becomes
    int(resize * long / short); the crop's top is round((h - size) / 2). ``resize``
    defaults to round(size * 256 / 224) (256 for 224).

    Returns:
      float32 [size, size, 3] in [0, 255].
    """
    resize = round(size * EVAL_RESIZE_RATIO) if resize is None else resize
    image = tf.image.decode_jpeg(encoded, channels=3)
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    short = tf.minimum(h, w)
    long_ = tf.maximum(h, w)
    new_long = (resize * long_) // short  # int() of a positive ratio
    new_h = tf.where(h <= w, resize, new_long)
    new_w = tf.where(h <= w, new_long, resize)
    image = _resize(image, tf.stack([new_h, new_w]))
    top = tf.cast(tf.round(tf.cast(new_h - size, tf.float32) / 2.0), tf.int32)
    left = tf.cast(tf.round(tf.cast(new_w - size, tf.float32) / 2.0), tf.int32)
    return image[top : top + size, left : left + size, :]


def decode_any(encoded: tf.Tensor, channels: int) -> tf.Tensor:
    """Encoded image bytes of any format TF decodes (JPEG, PNG, GIF, BMP) -> uint8 [H, W, channels]."""
    image = tf.io.decode_image(encoded, channels=channels, expand_animations=False)
    image.set_shape([None, None, channels])
    return image


def random_resized_crop_any(image: tf.Tensor, seed: tf.Tensor, size: int) -> tf.Tensor:
    """``decode_random_resized_crop`` of a decoded image [H, W, C] (any format, any C):
    float32 [size, size, C] in [0, 255]."""
    shape = tf.shape(image)
    box = random_resized_crop_box(seed, shape[0], shape[1])
    return _resize(tf.cast(image[box[0] : box[0] + box[2], box[1] : box[1] + box[3]], tf.float32), [size, size])


def resize_center_crop_any(image: tf.Tensor, size: int, resize: int | None = None) -> tf.Tensor:
    """``decode_resize_center_crop`` of a decoded image [H, W, C]: the shorter side to ``resize``
    (default round(size * 256 / 224); ``size`` itself for a plain centre crop), then the centre
    ``size`` x ``size``. Returns float32 [size, size, C] in [0, 255]."""
    resize = round(size * EVAL_RESIZE_RATIO) if resize is None else resize
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    short, long_ = tf.minimum(h, w), tf.maximum(h, w)
    new_long = (resize * long_) // short
    new_h = tf.where(h <= w, resize, new_long)
    new_w = tf.where(h <= w, new_long, resize)
    image = _resize(tf.cast(image, tf.float32), tf.stack([new_h, new_w]))
    top = tf.cast(tf.round(tf.cast(new_h - size, tf.float32) / 2.0), tf.int32)
    left = tf.cast(tf.round(tf.cast(new_w - size, tf.float32) / 2.0), tf.int32)
    return image[top : top + size, left : left + size, :]


def random_flip(image: tf.Tensor, u: tf.Tensor) -> tf.Tensor:
    """Mirror one [H, W, C] image left-right when the uniform ``u`` < 0.5."""
    return tf.cond(u < 0.5, lambda: tf.reverse(image, axis=[1]), lambda: image)


def _resize(image: tf.Tensor, size) -> tf.Tensor:
    out = tf.image.resize(image, size, method="bilinear", antialias=True)
    return tf.clip_by_value(out, 0.0, 255.0)


def resize_to_uint8_grid(images: tf.Tensor, size: int, method: str) -> tf.Tensor:
    """[B, H, W, C] in [0, 255] -> float32 [B, size, size, C] in [0, 255], rounded to integers as a
    PIL ``resize`` of a uint8 image returns them. ``method``: "bicubic" (timm's train transform)
    or "bilinear" (torchvision ``Resize``, the release's test transform). No antialiasing: the
    CIFAR images are upsampled, where PIL's filters and TF's kernels (Keys a = -0.5 for bicubic,
    half-pixel centres) agree up to rounding at the borders."""
    out = tf.image.resize(tf.cast(images, tf.float32), [size, size], method=method, antialias=False)
    return tf.clip_by_value(tf.round(out), 0.0, 255.0)


def random_resized_crop_batch(images: tf.Tensor, seeds: tf.Tensor, size: int, method: str = "bicubic") -> tf.Tensor:
    """timm's ``RandomResizedCropAndInterpolation(size, interpolation=method)`` of each image:
    [B, H, W, C] -> float32 [B, size, size, C] in [0, 255].

    Args:
      images: [B, H, W, C] in [0, 255].
      seeds: int64 [B, 2], one stateless seed per image (``random_resized_crop_box``: scale
        (0.08, 1), ratio (3/4, 4/3), 10 attempts, centre-crop fallback).
    """
    height, width, channels = images.shape[1], images.shape[2], images.shape[3]

    def one(args):
        image, seed = args
        box = random_resized_crop_box(seed, tf.constant(height, tf.int32), tf.constant(width, tf.int32))
        crop = tf.slice(image, tf.stack([box[0], box[1], 0]), tf.stack([box[2], box[3], channels]))
        return resize_to_uint8_grid(crop[None], size, method)[0]

    spec = tf.TensorSpec([size, size, channels], tf.float32)
    return tf.map_fn(one, (tf.cast(images, tf.float32), seeds), fn_output_signature=spec)


def flip_batch(images: tf.Tensor, flip: tf.Tensor) -> tf.Tensor:
    """Mirror each image [B, H, W, C] left-right where ``flip`` (bool [B])."""
    return tf.where(flip[:, None, None, None], tf.reverse(images, axis=[2]), images)
