"""MLKD's strong augmentation in TensorFlow: RandAugment(n=2) over 14 ops, then Cutout.

Follows the ``RandAugment`` class of the MLKD release (Jin et al., CVPR 2023) as described in
docs/paper.md §3: for each image, draw 2 ops uniformly with replacement from the
14-op list below and apply each with a magnitude drawn uniformly from the op's range (the
release ignores its magnitude argument "10"); then Cutout with a square side of
U(0, 0.5) * width, centre uniform in the image, filled with (125, 123, 114). Op semantics
are PIL's (``ImageOps`` / ``ImageEnhance`` / ``Image.transform`` with nearest resampling
and black fill), re-implemented here on [0, 255] float values.

Everything is vectorized over a batch [B, H, W, C] with per-example magnitudes [B]; the
op choice is per example too: the batch is partitioned by op, each op runs on its rows only.
"""

from __future__ import annotations

import math

import tensorflow as tf

CUTOUT_FILL = (125.0, 123.0, 114.0)
CUTOUT_MAX_FRACTION = 0.5
NUM_OPS_PER_IMAGE = 2


def _gray(x):
    """PIL's ``convert("L")`` of [B, H, W, 3] (ITU-R 601-2 luma, rounded) -> [B, H, W, 1]."""
    if x.shape[-1] == 1:
        return x
    w = tf.constant([19595.0, 38470.0, 7471.0])
    return tf.floor((tf.reduce_sum(x * w, axis=-1, keepdims=True) + 32768.0) / 65536.0)


def _blend(degenerate, x, factor):
    """PIL ``Image.blend(degenerate, x, factor)``, factor [B]: truncated to integers, clipped."""
    out = degenerate + factor[:, None, None, None] * (x - degenerate)
    return tf.floor(tf.clip_by_value(out, 0.0, 255.0))


def auto_contrast(x, v):
    """Per image and channel, stretch [min, max] to [0, 255] (identity where min == max)."""
    del v
    lo = tf.reduce_min(x, axis=[1, 2], keepdims=True)
    hi = tf.reduce_max(x, axis=[1, 2], keepdims=True)
    scale = 255.0 / tf.maximum(hi - lo, 1.0)
    out = tf.clip_by_value(tf.floor((x - lo) * scale), 0.0, 255.0)
    return tf.where(hi > lo, out, x)


def brightness(x, v):
    """Blend with black: factor v (0 = black, 1 = unchanged)."""
    return _blend(tf.zeros_like(x), x, v)


def color(x, v):
    """Blend with the grayscale image: factor v (0 = gray, 1 = unchanged)."""
    return _blend(tf.broadcast_to(_gray(x), tf.shape(x)), x, v)


def contrast(x, v):
    """Blend with the constant mean gray level (rounded): factor v."""
    mean = tf.floor(tf.reduce_mean(_gray(x), axis=[1, 2, 3], keepdims=True) + 0.5)
    return _blend(tf.broadcast_to(mean, tf.shape(x)), x, v)


def equalize(x, v):
    """PIL ``ImageOps.equalize`` per image and channel (histogram equalization)."""
    del v
    b, h, w, c = tf.shape(x)[0], tf.shape(x)[1], tf.shape(x)[2], x.shape[3]
    xi = tf.cast(x, tf.int32)
    chans = tf.transpose(tf.reshape(xi, [b, h * w, c]), [0, 2, 1])  # [B, C, HW]
    offsets = tf.reshape(tf.range(b * c) * 256, [b, c, 1])
    hist = tf.reshape(tf.math.bincount(chans + offsets, minlength=b * c * 256, maxlength=b * c * 256), [b, c, 256])
    last = 255 - tf.argmax(tf.reverse(tf.cast(hist > 0, tf.int32), axis=[2]), axis=2, output_type=tf.int32)
    top_count = tf.gather(hist, last, batch_dims=2)  # [B, C]
    step = (tf.reduce_sum(hist, axis=2) - top_count) // 256
    nonzero_bins = tf.reduce_sum(tf.cast(hist > 0, tf.int32), axis=2)
    cum = tf.cumsum(hist, axis=2, exclusive=True)
    safe_step = tf.maximum(step, 1)[..., None]
    lut = tf.minimum((safe_step // 2 + cum) // safe_step, 255)  # [B, C, 256]
    keep = (nonzero_bins <= 1) | (step == 0)
    lut = tf.where(keep[..., None], tf.range(256)[None, None, :], lut)
    out = tf.gather(lut, chans, batch_dims=2)  # [B, C, HW]
    return tf.cast(tf.reshape(tf.transpose(out, [0, 2, 1]), tf.shape(x)), tf.float32)


def identity(x, v):
    del v
    return x


def posterize(x, v):
    """Keep the top max(1, int(v)) bits of each value."""
    bits = tf.maximum(tf.cast(tf.floor(v), tf.int32), 1)
    mask = 255 - (tf.bitwise.left_shift(1, 8 - bits) - 1)
    return tf.cast(tf.bitwise.bitwise_and(tf.cast(x, tf.int32), mask[:, None, None, None]), tf.float32)


def _affine(x, m):
    """PIL ``Image.transform(AFFINE, m, NEAREST)`` with black fill; m float32 [B, 6].

    Output pixel (col, row) takes input pixel (floor(a(col+.5) + b(row+.5) + c),
    floor(d(col+.5) + e(row+.5) + f)) when that lies inside the image.
    """
    h, w = x.shape[1], x.shape[2]
    cols, rows = tf.meshgrid(tf.range(w, dtype=tf.float32) + 0.5, tf.range(h, dtype=tf.float32) + 0.5)
    centres = tf.stack([cols, rows, tf.ones_like(cols)], axis=-1)  # [H, W, 3]
    # (An einsum, not broadcast products: grappler mis-shapes those inside tf.data maps.)
    src = tf.cast(tf.floor(tf.einsum("bij,hwj->bhwi", tf.reshape(m, [-1, 2, 3]), centres)), tf.int32)
    src_x, src_y = src[..., 0], src[..., 1]  # [B, H, W]
    inside = (src_x >= 0) & (src_x < w) & (src_y >= 0) & (src_y < h)
    idx = tf.stack([tf.clip_by_value(src_y, 0, h - 1), tf.clip_by_value(src_x, 0, w - 1)], axis=-1)
    out = tf.gather_nd(x, idx, batch_dims=1)
    return tf.where(inside[..., None], out, tf.zeros_like(out))


def rotate(x, v):
    """PIL ``rotate(v)``: v degrees counter-clockwise about the image centre, black fill."""
    h, w = x.shape[1], x.shape[2]
    theta = -v * (math.pi / 180.0)
    cos, sin = tf.cos(theta), tf.sin(theta)
    cx, cy = w / 2.0, h / 2.0
    c = cos * -cx + sin * -cy + cx
    f = -sin * -cx + cos * -cy + cy
    return _affine(x, tf.stack([cos, sin, c, -sin, cos, f], axis=1))


def _sharpness_degenerate(x):
    """PIL ``ImageFilter.SMOOTH`` (3x3 kernel 1 1 1 / 1 5 1 / 1 1 1, sum 13), border pixels kept."""
    h, w = x.shape[1], x.shape[2]
    # Sum of shifted slices, not a convolution: TF's conv returns a wrong shape for empty batches.
    total = 4.0 * x[:, 1 : h - 1, 1 : w - 1]
    for dy in range(3):
        for dx in range(3):
            total += x[:, dy : h - 2 + dy, dx : w - 2 + dx]
    smooth = tf.clip_by_value(tf.floor(total / 13.0 + 0.5), 0.0, 255.0)
    inner = tf.pad(smooth, [[0, 0], [1, 1], [1, 1], [0, 0]])
    border = tf.pad(tf.ones([h - 2, w - 2]), [[1, 1], [1, 1]])[None, :, :, None] > 0
    return tf.where(border, inner, x)


def sharpness(x, v):
    """Blend with the smoothed image: factor v (< 1 blurs)."""
    return _blend(_sharpness_degenerate(x), x, v)


def shear_x(x, v):
    """Affine (1, v, 0, 0, 1, 0): input x = x + v * y."""
    z, o = tf.zeros_like(v), tf.ones_like(v)
    return _affine(x, tf.stack([o, v, z, z, o, z], axis=1))


def shear_y(x, v):
    """Affine (1, 0, 0, v, 1, 0): input y = v * x + y."""
    z, o = tf.zeros_like(v), tf.ones_like(v)
    return _affine(x, tf.stack([o, z, z, v, o, z], axis=1))


def solarize(x, v):
    """Invert values >= threshold v."""
    return tf.where(x < v[:, None, None, None], x, 255.0 - x)


def translate_x(x, v):
    """Shift content left by v * width pixels (input x = x + v * width), black fill."""
    z, o = tf.zeros_like(v), tf.ones_like(v)
    return _affine(x, tf.stack([o, z, v * x.shape[2], z, o, z], axis=1))


def translate_y(x, v):
    """Shift content up by v * height pixels (input y = y + v * height), black fill."""
    z, o = tf.zeros_like(v), tf.ones_like(v)
    return _affine(x, tf.stack([o, z, z, z, o, v * x.shape[1]], axis=1))


# (op, low, high): the magnitude is drawn uniformly from [low, high].
OPS = (
    (auto_contrast, 0.0, 1.0),
    (brightness, 0.05, 0.95),
    (color, 0.05, 0.95),
    (contrast, 0.05, 0.95),
    (equalize, 0.0, 1.0),
    (identity, 0.0, 1.0),
    (posterize, 4.0, 8.0),
    (rotate, -30.0, 30.0),
    (sharpness, 0.05, 0.95),
    (shear_x, -0.3, 0.3),
    (shear_y, -0.3, 0.3),
    (solarize, 0.0, 256.0),
    (translate_x, -0.3, 0.3),
    (translate_y, -0.3, 0.3),
)


def apply_op(x, op_index, u):
    """Applies op ``op_index[i]`` to image i with magnitude low + (high - low) * u[i].

    Args:
      x: float32 [B, H, W, C] in [0, 255]; op_index: int32 [B]; u: float32 [B] in [0, 1).
    """
    lows = tf.constant([lo for _, lo, _ in OPS])
    highs = tf.constant([hi for _, _, hi in OPS])
    v = tf.gather(lows, op_index) + (tf.gather(highs, op_index) - tf.gather(lows, op_index)) * u
    rows = tf.dynamic_partition(tf.range(tf.shape(x)[0]), op_index, len(OPS))
    outs = [fn(tf.gather(x, r), tf.gather(v, r)) for (fn, _, _), r in zip(OPS, rows)]
    return tf.ensure_shape(tf.dynamic_stitch(rows, outs), x.shape)


def cutout(x, frac, cx, cy):
    """MLKD's Cutout: a square of side frac * width, filled with (125, 123, 114).

    Args:
      x: float32 [B, H, W, C]; frac: [B] side as a fraction of the width (no-op where <= 0);
      cx, cy: [B] uniforms in [0, 1): the square's centre as a fraction of width / height.

    The box is PIL's ``rectangle((x0, y0, x1, y1))`` with x0 = int(max(0, cx * W - s / 2)),
    x1 = min(W, x0 + s) (likewise for y), both ends included.
    """
    h, w, c = x.shape[1], x.shape[2], x.shape[3]
    side = frac * w
    x0 = tf.floor(tf.maximum(0.0, cx * w - side / 2.0))
    y0 = tf.floor(tf.maximum(0.0, cy * h - side / 2.0))
    x1 = tf.floor(tf.minimum(float(w), x0 + side))
    y1 = tf.floor(tf.minimum(float(h), y0 + side))
    cols = tf.range(w, dtype=tf.float32)[None, :]
    rows = tf.range(h, dtype=tf.float32)[None, :]
    in_x = (cols >= x0[:, None]) & (cols <= x1[:, None])  # [B, W]
    in_y = (rows >= y0[:, None]) & (rows <= y1[:, None])  # [B, H]
    box = in_y[:, :, None] & in_x[:, None, :] & (frac > 0.0)[:, None, None]
    fill = tf.constant(CUTOUT_FILL) if c == 3 else _gray(tf.constant(CUTOUT_FILL)[None, None, None, :])[0, 0, 0]
    return tf.where(box[..., None], tf.broadcast_to(fill, tf.shape(x)), x)


NUM_UNIFORMS = 2 * NUM_OPS_PER_IMAGE + 3


def rand_augment_cutout(x, u):
    """The full strong transform of MLKD after crop + flip.

    Args:
      x: uint8 or float32 [B, H, W, C] in [0, 255].
      u: float32 [B, NUM_UNIFORMS] uniforms in [0, 1): per op (choice, magnitude), then
        Cutout (fraction, centre x, centre y).

    Returns:
      float32 [B, H, W, C] in [0, 255] (integral values).
    """
    x = tf.cast(x, tf.float32)
    n_ops = len(OPS)
    for k in range(NUM_OPS_PER_IMAGE):
        op_index = tf.minimum(tf.cast(tf.floor(u[:, 2 * k] * n_ops), tf.int32), n_ops - 1)
        x = apply_op(x, op_index, u[:, 2 * k + 1])
    j = 2 * NUM_OPS_PER_IMAGE
    return cutout(x, u[:, j] * CUTOUT_MAX_FRACTION, u[:, j + 1], u[:, j + 2])
