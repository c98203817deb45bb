"""timm's strong augmentation for the transformer students (docs/paper.md §8), in TensorFlow.

The release's train transform is timm's ``create_transform(is_training=True,
auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.25, re_mode="pixel", re_count=1,
interpolation="bicubic")``: after the random-resized crop and the flip,

* ``rand_augment``: timm's RandAugment "rand-m9-mstd0.5-inc1": 2 ops per image, each drawn
  uniformly (with replacement) from timm's ``_RAND_INCREASING_TRANSFORMS`` (``OPS`` below, 15
  ops) and applied with probability 0.5, at magnitude N(9, 0.5) clipped to [0, 10] (drawn per
  op), mapped to the op's argument by timm's "increasing" level functions (``op_arguments``);
  signed ops (rotate, shear, translate, the enhance factors) are negated with probability 0.5.
  Values stay on PIL's uint8 grid ([0, 255] floats). Geometric ops fill with ``FILL``, the
  release's ``img_mean`` (timm: the normalization mean, ImageNet's, x 255 rounded).
* ``random_erasing``: timm's ``RandomErasing(probability, mode="pixel", max_count=1)`` on the
  normalized image: with probability p, up to 10 attempts at a rectangle of area fraction
  U(0.02, 1/3) and log-uniform aspect ratio in [0.3, 3.3] (h = round(sqrt(area * ratio)),
  w = round(sqrt(area / ratio)), kept when h < H and w < W, top-left uniform over the valid
  positions); the first that fits is filled with per-pixel standard-normal noise.

All randomness comes in as arguments (uniforms, noise), so the caller keys it statelessly.
Differences from timm: geometric ops resample bilinearly (TF's ``ImageProjectiveTransformV3``)
where timm uses PIL bicubic; values are rounded back to integers as PIL's uint8 output.
"""

from __future__ import annotations

import math

import tensorflow as tf

from zkd.data import randaugment

RANDAUGMENT = "rand-m9-mstd0.5-inc1"
NUM_LAYERS = 2
MAGNITUDE, MAGNITUDE_STD, MAX_LEVEL = 9.0, 0.5, 10.0
OP_PROBABILITY = 0.5
FILL = (124.0, 116.0, 104.0)  # round(255 * (0.485, 0.456, 0.406)): timm's img_mean for the ImageNet mean
TRANSLATE_PCT = 0.45


# ----------------------------------------------------------------------------- ops on [0, 255]


def invert(x, v):
    del v
    return 255.0 - x


def posterize(x, bits):
    """PIL ``ImageOps.posterize(img, bits)`` (timm: identity when bits >= 8); bits may be 0 (black)."""
    b = tf.clip_by_value(tf.cast(tf.floor(bits), tf.int32), 0, 8)
    mask = 255 - (tf.bitwise.left_shift(1, 8 - b) - 1)
    return tf.cast(tf.bitwise.bitwise_and(tf.cast(x, tf.int32), mask[:, None, None, None]), tf.float32)


def solarize_add(x, add):
    """timm's ``solarize_add(img, add, thresh=128)``: values < 128 get + add (capped at 255)."""
    return tf.where(x < 128.0, tf.minimum(255.0, x + add[:, None, None, None]), x)


def affine(x, m, fill=FILL):
    """PIL ``Image.transform(AFFINE, m, fillcolor=fill)`` with bilinear resampling; m float32 [B, 6].

    Output pixel centre (col + .5, row + .5) samples the input at (a(col+.5) + b(row+.5) + c,
    d(col+.5) + e(row+.5) + f) (pixel centres at +.5); outside the image reads ``fill``.
    Rounded to integers.
    """
    a, b, c, d, e, f = tf.unstack(tf.reshape(m, [-1, 6]), axis=1)
    # TF maps output index (x, y) to input index (a0 x + a1 y + a2, b0 x + b1 y + b2): shift the centres.
    tf_m = tf.stack([a, b, c + 0.5 * (a + b) - 0.5, d, e, f + 0.5 * (d + e) - 0.5,
                     tf.zeros_like(a), tf.zeros_like(a)], axis=1)
    fill_c = tf.constant(fill[: x.shape[3]] if x.shape[3] == 3 else (sum(fill) / 3.0,), tf.float32)
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=x - fill_c, transforms=tf_m, output_shape=tf.shape(x)[1:3], fill_value=0.0,
        interpolation="BILINEAR", fill_mode="CONSTANT")
    return tf.ensure_shape(tf.clip_by_value(tf.round(out + fill_c), 0.0, 255.0), x.shape)


def rotate(x, degrees):
    """PIL ``rotate(degrees)`` (counter-clockwise about the centre), ``FILL`` outside."""
    h, w = x.shape[1], x.shape[2]
    theta = -degrees * (math.pi / 180.0)
    cos, sin = tf.cos(theta), tf.sin(theta)
    cx, cy = w / 2.0, h / 2.0
    c = cos * -cx + sin * -cy + cx
    f = -sin * -cx + cos * -cy + cy
    return affine(x, tf.stack([cos, sin, c, -sin, cos, f], axis=1))


def shear_x(x, v):
    z, o = tf.zeros_like(v), tf.ones_like(v)
    return affine(x, tf.stack([o, v, z, z, o, z], axis=1))


def shear_y(x, v):
    z, o = tf.zeros_like(v), tf.ones_like(v)
    return affine(x, tf.stack([o, z, z, v, o, z], axis=1))


def translate_x_rel(x, pct):
    """Input x = x + pct * width (content moves left for pct > 0)."""
    z, o = tf.zeros_like(pct), tf.ones_like(pct)
    return affine(x, tf.stack([o, z, pct * x.shape[2], z, o, z], axis=1))


def translate_y_rel(x, pct):
    z, o = tf.zeros_like(pct), tf.ones_like(pct)
    return affine(x, tf.stack([o, z, z, z, o, pct * x.shape[1]], axis=1))


# timm's _RAND_INCREASING_TRANSFORMS, in its order: (name, op(x [B,H,W,C], argument [B])).
OPS = (
    ("AutoContrast", randaugment.auto_contrast),
    ("Equalize", randaugment.equalize),
    ("Invert", invert),
    ("Rotate", rotate),
    ("PosterizeIncreasing", posterize),
    ("SolarizeIncreasing", randaugment.solarize),
    ("SolarizeAdd", solarize_add),
    ("ColorIncreasing", randaugment.color),
    ("ContrastIncreasing", randaugment.contrast),
    ("BrightnessIncreasing", randaugment.brightness),
    ("SharpnessIncreasing", randaugment.sharpness),
    ("ShearX", shear_x),
    ("ShearY", shear_y),
    ("TranslateXRel", translate_x_rel),
    ("TranslateYRel", translate_y_rel),
)
OP_NAMES = tuple(name for name, _ in OPS)


def magnitude_from_uniform(u):
    """N(MAGNITUDE, MAGNITUDE_STD) from a uniform in (0, 1) (inverse CDF), clipped to [0, 10]."""
    return tf.clip_by_value(MAGNITUDE + MAGNITUDE_STD * tf.math.ndtri(u), 0.0, MAX_LEVEL)


def op_arguments(op_index, magnitude, negate):
    """timm's level-to-argument of each op (``LEVEL_TO_ARG``, the "increasing" variants).

    Args: op_index int32 [B]; magnitude float32 [B] in [0, 10]; negate bool [B] (timm's
    ``_randomly_negate``: ``random() > 0.5``). Returns float32 [B].
    """
    level = magnitude / MAX_LEVEL
    sign = tf.where(negate, -1.0, 1.0)
    enhance = tf.maximum(0.1, 1.0 + sign * level * 0.9)
    per_op = tf.stack([
        tf.zeros_like(level),  # AutoContrast
        tf.zeros_like(level),  # Equalize
        tf.zeros_like(level),  # Invert
        sign * level * 30.0,  # Rotate: degrees
        4.0 - tf.floor(level * 4.0),  # PosterizeIncreasing: bits kept
        256.0 - tf.floor(level * 256.0),  # SolarizeIncreasing: threshold
        tf.floor(level * 110.0),  # SolarizeAdd: added value
        enhance, enhance, enhance, enhance,  # Color, Contrast, Brightness, Sharpness (increasing)
        sign * level * 0.3, sign * level * 0.3,  # ShearX, ShearY
        sign * level * TRANSLATE_PCT, sign * level * TRANSLATE_PCT,  # TranslateXRel, TranslateYRel
    ], axis=1)
    return tf.gather(per_op, op_index, batch_dims=1)


def apply_op(x, op_index, arg):
    """Op ``op_index[i]`` on image i with argument arg[i]; op_index == len(OPS) leaves it unchanged."""
    n = len(OPS)
    rows = tf.dynamic_partition(tf.range(tf.shape(x)[0]), op_index, n + 1)
    outs = [fn(tf.gather(x, r), tf.gather(arg, r)) for (_, fn), r in zip(OPS, rows)]
    outs.append(tf.gather(x, rows[n]))
    return tf.ensure_shape(tf.dynamic_stitch(rows, outs), x.shape)


UNIFORMS_PER_LAYER = 4  # op choice, apply (<= 0.5), magnitude noise, sign
NUM_RA_UNIFORMS = NUM_LAYERS * UNIFORMS_PER_LAYER


def rand_augment(x, u):
    """timm's RandAugment "rand-m9-mstd0.5-inc1" of each image.

    Args:
      x: [B, H, W, C] in [0, 255] (integral values).
      u: float32 [B, NUM_RA_UNIFORMS] uniforms in [0, 1): per layer (op choice, apply, magnitude
        noise, sign). The op applies when its "apply" uniform is <= 0.5 (timm skips when
        ``random() > prob``).

    Returns:
      float32 [B, H, W, C] in [0, 255] (integral values).
    """
    x = tf.cast(x, tf.float32)
    n = len(OPS)
    tiny = 1e-7
    for k in range(NUM_LAYERS):
        choice, apply, noise, sign = (u[:, UNIFORMS_PER_LAYER * k + j] for j in range(UNIFORMS_PER_LAYER))
        op_index = tf.minimum(tf.cast(tf.floor(choice * n), tf.int32), n - 1)
        magnitude = magnitude_from_uniform(tf.clip_by_value(noise, tiny, 1.0 - tiny))
        arg = op_arguments(op_index, magnitude, sign > 0.5)
        op_index = tf.where(apply <= OP_PROBABILITY, op_index, n)
        x = apply_op(x, op_index, arg)
    return x


# ----------------------------------------------------------------------------- random erasing

ERASE_ATTEMPTS = 10
ERASE_MIN_AREA, ERASE_MAX_AREA = 0.02, 1.0 / 3.0
ERASE_MIN_ASPECT, ERASE_MAX_ASPECT = 0.3, 1.0 / 0.3
NUM_RE_UNIFORMS = 1 + 4 * ERASE_ATTEMPTS


def erasing_boxes(u, height: int, width: int, probability: float):
    """The rectangle timm's RandomErasing erases in each image, from uniforms.

    Args:
      u: float32 [B, NUM_RE_UNIFORMS]: whether to erase (<= probability), then per attempt
        (area fraction, log aspect ratio, top, left).

    Returns:
      (erase bool [B], top, left, h, w int32 [B]); where erase is False the box is meaningless.
    """
    attempts = tf.reshape(u[:, 1:], [-1, ERASE_ATTEMPTS, 4])
    area = height * width * (ERASE_MIN_AREA + attempts[..., 0] * (ERASE_MAX_AREA - ERASE_MIN_AREA))
    lo, hi = math.log(ERASE_MIN_ASPECT), math.log(ERASE_MAX_ASPECT)
    ratio = tf.exp(lo + attempts[..., 1] * (hi - lo))
    h = tf.cast(tf.round(tf.sqrt(area * ratio)), tf.int32)  # round half to even, as Python's round
    w = tf.cast(tf.round(tf.sqrt(area / ratio)), tf.int32)
    fits = (h < height) & (w < width)
    first = tf.argmax(tf.cast(fits, tf.int32), axis=1, output_type=tf.int32)  # first attempt that fits
    pick = lambda t: tf.gather(t, first, batch_dims=1)  # noqa: E731
    h, w = pick(h), pick(w)
    top = tf.minimum(tf.cast(tf.floor(pick(attempts[..., 2]) * tf.cast(height - h + 1, tf.float32)), tf.int32),
                     height - h)
    left = tf.minimum(tf.cast(tf.floor(pick(attempts[..., 3]) * tf.cast(width - w + 1, tf.float32)), tf.int32),
                      width - w)
    erase = (u[:, 0] <= probability) & tf.reduce_any(fits, axis=1)
    return erase, top, left, h, w


def random_erasing(x, u, noise, probability: float):
    """timm's ``RandomErasing(probability, mode="pixel", max_count=1)`` on normalized images.

    Args:
      x: float32 [B, H, W, C] normalized; u: float32 [B, NUM_RE_UNIFORMS] (``erasing_boxes``);
      noise: float32 [B, H, W, C] standard normal (the pixel-mode fill).
    """
    height, width = x.shape[1], x.shape[2]
    erase, top, left, h, w = erasing_boxes(u, height, width, probability)
    rows = tf.range(height)[None, :]
    cols = tf.range(width)[None, :]
    in_y = (rows >= top[:, None]) & (rows < (top + h)[:, None])
    in_x = (cols >= left[:, None]) & (cols < (left + w)[:, None])
    box = in_y[:, :, None] & in_x[:, None, :] & erase[:, None, None]
    return tf.where(box[..., None], noise, x)
