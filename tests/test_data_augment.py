"""Augmentations: host (TF) transforms, RandAugment ops, device (JAX) pipeline, and their agreement."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from zkd import data
from zkd.data import device, pipeline, randaugment, transforms

CIFAR = data.DATASETS["cifar100"]


def images_np(b, h=32, w=32, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (b, h, w, c)).astype(np.float32)


# ----------------------------------------------------------------------------- sampler


def test_batch_indices_epochs_are_permutations():
    n, g = 50, 16  # 3 steps per epoch, 2 examples dropped each epoch
    steps = [np.asarray(data.batch_indices(7, s, g, n)) for s in range(6)]
    for epoch in range(2):
        seen = np.concatenate(steps[3 * epoch : 3 * epoch + 3])
        assert len(np.unique(seen)) == 48 and seen.min() >= 0 and seen.max() < n
        np.testing.assert_array_equal(seen, np.asarray(data.epoch_permutation(7, epoch, n))[:48])
    assert not np.array_equal(steps[0], steps[3])
    jitted = jax.jit(lambda step: data.batch_indices(7, step, g, n))
    np.testing.assert_array_equal(jitted(jnp.int32(4)), steps[4])
    assert steps[0].dtype == np.int32


# ----------------------------------------------------------------------------- CIFAR crop / flip


def test_pad_crop_flip_host_matches_numpy_and_device():
    x = images_np(5)
    dy, dx = np.array([0, 8, 4, 3, 8]), np.array([0, 8, 4, 7, 1])
    flip = np.array([False, True, False, True, True])
    padded = np.pad(x, ((0, 0), (4, 4), (4, 4), (0, 0)))
    expected = np.stack([padded[i, dy[i] : dy[i] + 32, dx[i] : dx[i] + 32] for i in range(5)])
    expected[flip] = expected[flip][:, :, ::-1]
    host = transforms.pad_crop_flip(tf.constant(x), tf.constant(dy, tf.int32), tf.constant(dx, tf.int32), tf.constant(flip), 4)
    np.testing.assert_array_equal(host.numpy(), expected)
    dev = device.pad_crop_flip(jnp.asarray(x), jnp.asarray(dy), jnp.asarray(dx), jnp.asarray(flip), 4)
    np.testing.assert_array_equal(np.asarray(dev), expected)
    np.testing.assert_array_equal(expected[2], x[2])  # offset 4, no flip: the original image


def _probe_images(n, h=32, w=32):
    """Channel 0 holds row + 1, channel 1 holds col + 1: crops and flips can be read back."""
    rows, cols = np.meshgrid(np.arange(1, h + 1), np.arange(1, w + 1), indexing="ij")
    probe = np.stack([rows, cols, np.full_like(rows, 7)], axis=-1).astype(np.uint8)
    return np.broadcast_to(probe, (n, h, w, 3)).copy()


def _read_crop_flip(normalized, info):
    """Recovers (dy, dx, flip) from augmented probe images [B, 32, 32, 3]."""
    x = np.rint((normalized * np.array(info.std) + np.array(info.mean)) * 255.0).astype(int)
    centre_row, centre_col, next_col = x[:, 16, 16, 0], x[:, 16, 16, 1], x[:, 16, 17, 1]
    flip = next_col < centre_col
    dy = centre_row - 1 - 16 + info.pad
    dx = np.where(flip, centre_col - 1 - 15 + info.pad, centre_col - 1 - 16 + info.pad)
    return dy, dx, flip


def test_host_and_device_augmentations_have_the_same_distribution():
    n, g, steps = 256, 128, 20
    probe = _probe_images(n)
    it = pipeline.in_memory_train_batches(CIFAR, probe, np.zeros(n, np.int32), global_batch_size=g, seed=0)
    host = np.concatenate([next(it)["image"] for _ in range(steps)])
    keys = jax.random.split(jax.random.key(1), steps)
    dev = np.concatenate([np.asarray(data.device_augment(k, jnp.asarray(probe[:g]), "cifar100")) for k in keys])
    total = g * steps
    for name, out in (("host", host), ("device", dev)):
        dy, dx, flip = _read_crop_flip(out, CIFAR)
        for offsets in (dy, dx):
            counts = np.bincount(offsets, minlength=9)
            assert len(counts) == 9, name  # offsets in [0, 8]
            # each of the 9 offsets has probability 1/9: within 5 binomial standard deviations
            sd = math.sqrt(total * (1 / 9) * (8 / 9))
            assert np.all(np.abs(counts - total / 9) < 5 * sd), (name, counts)
        assert abs(flip.mean() - 0.5) < 5 * math.sqrt(0.25 / total), name
    # The two pipelines agree on the joint offset distribution (chi-square on the 81 cells).
    h_cells = np.bincount(np.ravel_multi_index(_read_crop_flip(host, CIFAR)[:2], (9, 9)), minlength=81)
    d_cells = np.bincount(np.ravel_multi_index(_read_crop_flip(dev, CIFAR)[:2], (9, 9)), minlength=81)
    chi2 = np.sum((h_cells - d_cells) ** 2 / np.maximum(h_cells + d_cells, 1))
    assert chi2 < 80 + 5 * math.sqrt(2 * 80), chi2  # 80 degrees of freedom

    # Per-pixel means of augmented natural-ish images agree within sampling noise.
    imgs = np.random.default_rng(3).integers(0, 256, (g, 32, 32, 3), dtype=np.uint8)
    it = pipeline.in_memory_train_batches(CIFAR, imgs, np.zeros(g, np.int32), global_batch_size=g, seed=0)
    host_mean = np.mean([next(it)["image"] for _ in range(steps)], axis=(0, 1))
    dev_mean = np.mean([np.asarray(data.device_augment(k, jnp.asarray(imgs), CIFAR)) for k in keys], axis=(0, 1))
    assert np.abs(host_mean - dev_mean).mean() < 0.05
    # zero padding darkens the border in both: the corner is the darkest on average
    assert host_mean[0, 0].mean() < host_mean[16, 16].mean() and dev_mean[0, 0].mean() < dev_mean[16, 16].mean()


def test_device_train_batch_is_jitted_gather_and_augment():
    n = 64
    imgs = jnp.asarray(np.random.default_rng(0).integers(0, 256, (n, 28, 28, 1), dtype=np.uint8))
    labels = jnp.arange(n, dtype=jnp.int32)
    a = data.device_train_batch(3, 5, imgs, labels, dataset="fashion_mnist", global_batch_size=16)
    b = data.device_train_batch(3, 5, imgs, labels, dataset="fashion_mnist", global_batch_size=16)
    assert a["image"].shape == (16, 28, 28, 1) and a["image"].dtype == jnp.float32
    np.testing.assert_array_equal(a["label"], data.batch_indices(3, 5, 16, n))
    np.testing.assert_array_equal(a["image"], b["image"])
    normalized = data.device_normalize(imgs[:2], "fashion_mnist")
    np.testing.assert_allclose(normalized, (np.asarray(imgs[:2]) / 255.0 - 0.2860) / 0.3530, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="in-memory"):
        data.device_augment(jax.random.key(0), imgs[:2], "imagenet2012")


# ----------------------------------------------------------------------------- ImageNet crops


@pytest.mark.parametrize("height,width", [(300, 400), (64, 64), (500, 100), (20, 600)])
def test_random_resized_crop_box_follows_torchvision(height, width):
    boxes = np.stack(
        [transforms.random_resized_crop_box(tf.constant([s, 1], tf.int64), height, width).numpy() for s in range(200)]
    )
    top, left, h, w = boxes.T
    assert np.all(top >= 0) and np.all(left >= 0) and np.all(top + h <= height) and np.all(left + w <= width)
    assert np.all(h > 0) and np.all(w > 0)
    area = h * w / (height * width)
    ratio = w / h
    sampled = (area >= 0.08 - 0.05) & (ratio >= 0.7) & (ratio <= 1.4)
    fallback_w = width if width / height <= 4 / 3 else round(height * 4 / 3)
    fallback_h = height if width / height >= 3 / 4 else round(width / (3 / 4))
    is_fallback = (h == fallback_h) & (w == fallback_w) & (top == (height - h) // 2) & (left == (width - w) // 2)
    assert np.all(sampled | is_fallback)
    if height == width == 64:
        assert len({tuple(b) for b in boxes}) > 150 and area.min() < 0.3 and area.max() > 0.8
    if height == 20:  # 1:30 strip: no attempt can fit the ratio, always the central crop
        assert np.all(is_fallback) and fallback_w == round(20 * 4 / 3)


def test_eval_resize_center_crop_and_rrc_output():
    image = tf.cast(tf.random.stateless_uniform([300, 400, 3], [0, 0], maxval=255), tf.uint8)
    jpeg = tf.io.encode_jpeg(image)
    out = transforms.decode_resize_center_crop(jpeg, 224)
    assert out.shape == (224, 224, 3) and out.dtype == tf.float32
    # A 300x400 image becomes 256x341; the crop takes rows 16..240 and columns 58..282.
    full = transforms._resize(tf.image.decode_jpeg(jpeg), [256, 341])
    np.testing.assert_allclose(out.numpy(), full[16:240, 58:282].numpy(), atol=1e-3)
    crop = transforms.decode_random_resized_crop(jpeg, tf.constant([1, 2], tf.int64), 224)
    assert crop.shape == (224, 224, 3) and 0 <= crop.numpy().min() and crop.numpy().max() <= 255


# ----------------------------------------------------------------------------- RandAugment ops


def run(op, x, v):
    return op(tf.constant(x, tf.float32), tf.constant(v, tf.float32)).numpy()


def test_enhance_ops_blend_with_their_degenerate_image():
    x = images_np(3)
    np.testing.assert_array_equal(run(randaugment.brightness, x, [0.5] * 3), np.floor(x * 0.5))
    gray = np.floor((x @ np.array([19595.0, 38470.0, 7471.0]) + 32768) / 65536)[..., None]
    np.testing.assert_array_equal(run(randaugment.color, x, [0.0] * 3), np.broadcast_to(gray, x.shape))
    const = np.floor(gray.mean(axis=(1, 2, 3)) + 0.5)
    np.testing.assert_array_equal(run(randaugment.contrast, x, [0.0] * 3), np.broadcast_to(const[:, None, None, None], x.shape))
    for op in (randaugment.brightness, randaugment.color, randaugment.contrast, randaugment.sharpness):
        np.testing.assert_array_equal(run(op, x, [1.0] * 3), x)  # factor 1: unchanged
    flat = np.full((1, 8, 8, 3), 100.0)
    np.testing.assert_array_equal(run(randaugment.sharpness, flat, [0.1]), flat)  # smoothing a constant
    spot = np.zeros((1, 5, 5, 1))
    spot[0, 2, 2, 0] = 130.0
    smooth = run(randaugment.sharpness, spot, [0.0])[0, ..., 0]
    assert smooth[2, 2] == 50.0 and smooth[1, 1] == 10.0 and smooth[0, 0] == 0.0  # 130*5/13, 130/13, border kept


def pil_equalize(channel):
    """PIL's ImageOps.equalize for one channel, as a plain loop (LUT clipped to 8 bits)."""
    hist = np.bincount(channel.astype(int).ravel(), minlength=256)
    used = hist[hist > 0]
    if len(used) <= 1:
        return channel
    step = (used.sum() - used[-1]) // 256
    if step == 0:
        return channel
    lut, n = [], step // 2
    for i in range(256):
        lut.append(min(n // step, 255))
        n += hist[i]
    return np.array(lut, np.float64)[channel.astype(int)]


def test_histogram_ops():
    x = np.zeros((2, 4, 4, 1))
    x[0] = np.arange(16).reshape(4, 4, 1) + 100  # values 100..115
    x[1] = 42.0
    ac = run(randaugment.auto_contrast, x, [0.0, 0.0])
    assert ac[0].min() == 0 and ac[0].max() == 255 and np.all(np.diff(ac[0].ravel()) > 0)
    np.testing.assert_array_equal(ac[1], x[1])  # constant: unchanged
    eq = run(randaugment.equalize, x, [0.0, 0.0])
    # 16 distinct values once each: step = (16 - 1) // 256 = 0, so PIL leaves the image as is
    np.testing.assert_array_equal(eq, x)
    y = np.concatenate([np.repeat(np.arange(0, 256, 4.0), 64).reshape(1, 64, 64, 1), images_np(1, 64, 64, 1)])
    y = np.concatenate([y, y[::-1]], axis=-1)  # two images, two channels with different histograms
    eq = run(randaugment.equalize, y, [0.0, 0.0])
    for i in range(2):
        for c in range(2):
            np.testing.assert_array_equal(eq[i, ..., c], pil_equalize(y[i, ..., c]))
    assert np.unique(eq[0, ..., 0]).min() == 0 and eq[0, ..., 0].max() == 255  # spread over the full range
    np.testing.assert_array_equal(run(randaugment.posterize, np.full((1, 2, 2, 1), 255.0), [4.9]), np.full((1, 2, 2, 1), 240.0))
    np.testing.assert_array_equal(run(randaugment.posterize, np.full((1, 2, 2, 1), 77.0), [8.0]), np.full((1, 2, 2, 1), 77.0))
    sol = run(randaugment.solarize, np.array([10.0, 127.0, 128.0, 250.0]).reshape(1, 2, 2, 1), [128.0])
    np.testing.assert_array_equal(sol.ravel(), [10.0, 127.0, 127.0, 5.0])


def test_geometric_ops():
    x = images_np(2, 8, 8, 3) + 1.0  # no zeros, so fill is recognisable
    np.testing.assert_array_equal(run(randaugment.rotate, x, [0.0, 0.0]), x)
    np.testing.assert_array_equal(run(randaugment.shear_x, x, [0.0, 0.0]), x)
    t = run(randaugment.translate_x, x, [0.25, -0.25])  # 2 pixels on an 8-wide image
    np.testing.assert_array_equal(t[0, :, :6], x[0, :, 2:])
    assert np.all(t[0, :, 6:] == 0)
    np.testing.assert_array_equal(t[1, :, 2:], x[1, :, :6])
    ty = run(randaugment.translate_y, x, [0.25, 0.0])
    np.testing.assert_array_equal(ty[0, :6], x[0, 2:])
    r90 = run(randaugment.rotate, x, [90.0, -90.0])
    np.testing.assert_array_equal(r90[0], np.rot90(x[0], k=1, axes=(0, 1)))  # counter-clockwise
    np.testing.assert_array_equal(r90[1], np.rot90(x[1], k=-1, axes=(0, 1)))
    r30 = run(randaugment.rotate, x, [30.0, 30.0])
    assert np.any(r30[0] == 0) and r30[0, 4, 4, 0] == x[0, 4, 4, 0]  # corners filled, centre kept
    sh = run(randaugment.shear_x, x, [0.3, -0.3])
    np.testing.assert_array_equal(sh[:, 0, 0], x[:, 0, 0])  # top row barely moves
    assert np.any(sh[0, -1] == 0)


def test_cutout_and_full_strong_transform():
    x = np.full((3, 32, 32, 3), 200.0, np.float32)
    out = randaugment.cutout(tf.constant(x), tf.constant([0.5, 0.25, 0.0]), tf.constant([0.5, 0.0, 0.5]), tf.constant([0.5, 0.99, 0.5])).numpy()
    filled = np.all(out == np.array(randaugment.CUTOUT_FILL), axis=-1)
    # side 16 centred at (16, 16): x0 = y0 = 8, x1 = y1 = 24, both ends included
    assert filled[0].sum() == 17 * 17 and filled[0, 8, 8] and filled[0, 24, 24] and not filled[0, 25, 25]
    # side 8 centred at (0, 31.68): x0 = 0, x1 = 8 (PIL keeps the full side after clamping x0),
    # y0 = int(27.68) = 27, y1 = min(32, 35) = 32: columns 0..8, rows 27..31
    assert filled[1].sum() == 9 * 5 and filled[1, 31, 0] and filled[1, 27, 8] and not filled[1, 26, 0]
    np.testing.assert_array_equal(out[2], x[2])  # fraction 0: no-op
    gray = randaugment.cutout(tf.constant(x[:1, :, :, :1]), tf.constant([0.5]), tf.constant([0.5]), tf.constant([0.5])).numpy()
    assert gray[0, 16, 16, 0] == 123.0  # the fill's luma for 1-channel images

    u = tf.random.stateless_uniform([64, randaugment.NUM_UNIFORMS], [0, 1])
    strong = randaugment.rand_augment_cutout(tf.constant(images_np(64), tf.uint8), u).numpy()
    assert strong.shape == (64, 32, 32, 3) and strong.min() >= 0 and strong.max() <= 255
    np.testing.assert_array_equal(strong, np.round(strong))
    one = randaugment.rand_augment_cutout(tf.constant(images_np(64)[5:6]), u[5:6]).numpy()
    np.testing.assert_array_equal(one[0], strong[5])  # per-example: independent of the batch


def test_apply_op_uses_each_examples_op():
    x = images_np(14, 8, 8, 3)
    ops = tf.range(14, dtype=tf.int32)
    out = randaugment.apply_op(tf.constant(x), ops, tf.fill([14], 0.5)).numpy()
    for k, (fn, lo, hi) in enumerate(randaugment.OPS):
        np.testing.assert_array_equal(out[k], run(fn, x[k : k + 1], [lo + 0.5 * (hi - lo)])[0], err_msg=fn.__name__)
