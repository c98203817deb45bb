"""zkd.data.timm_augment: timm's RandAugment "rand-m9-mstd0.5-inc1" and random erasing (pixel
mode) for the transformer students' view, op by op against PIL / NumPy, and in the pipeline."""

import dataclasses
import math

import numpy as np
import pytest
import tensorflow as tf
from scipy.special import ndtri

from tests.train_fixtures import synthetic_split
from zkd import data
from zkd.data import pipeline
from zkd.data import timm_augment as ta

Image = pytest.importorskip("PIL.Image")
ImageEnhance = pytest.importorskip("PIL.ImageEnhance")
ImageOps = pytest.importorskip("PIL.ImageOps")


def _image(seed=0, size=8):
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3)).astype(np.uint8)


def _run(name, x, magnitude, negate=False):
    i = ta.OP_NAMES.index(name)
    arg = ta.op_arguments(tf.constant([i]), tf.constant([magnitude]), tf.constant([negate]))
    return ta.apply_op(tf.constant(x[None], tf.float32), tf.constant([i]), arg)[0].numpy(), float(arg[0])


def test_the_op_list_is_timms_increasing_list():
    assert ta.OP_NAMES == (
        "AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing", "SolarizeAdd",
        "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing", "ShearX", "ShearY",
        "TranslateXRel", "TranslateYRel")


@pytest.mark.parametrize("negate", [False, True])
def test_the_increasing_level_to_argument_mappings_at_magnitude_9(negate):
    s = -1.0 if negate else 1.0
    want = {"Rotate": 27 * s, "PosterizeIncreasing": 4 - int(0.9 * 4), "SolarizeIncreasing": 256 - int(0.9 * 256),
            "SolarizeAdd": int(0.9 * 110), "ColorIncreasing": max(0.1, 1 + s * 0.81), "ShearX": 0.27 * s,
            "TranslateYRel": 0.405 * s, "SharpnessIncreasing": max(0.1, 1 + s * 0.81)}
    for name, value in want.items():
        _, arg = _run(name, _image(), 9.0, negate)
        assert arg == pytest.approx(value, abs=1e-5), name
    _, arg = _run("PosterizeIncreasing", _image(), 10.0)
    assert arg == 0  # 4 - int(4): all bits dropped


def test_colour_ops_match_pil_at_magnitude_9():
    x = _image(1)
    pil = Image.fromarray(x)
    cases = {
        "AutoContrast": ImageOps.autocontrast(pil),
        "Equalize": ImageOps.equalize(pil),
        "Invert": ImageOps.invert(pil),
        "PosterizeIncreasing": ImageOps.posterize(pil, 1),
        "SolarizeIncreasing": ImageOps.solarize(pil, 26),
        "ColorIncreasing": ImageEnhance.Color(pil).enhance(1.81),
        "ContrastIncreasing": ImageEnhance.Contrast(pil).enhance(1.81),
        "BrightnessIncreasing": ImageEnhance.Brightness(pil).enhance(1.81),
    }
    for name, want in cases.items():
        got, _ = _run(name, x, 9.0)
        np.testing.assert_allclose(got, np.asarray(want, np.float32), atol=1, err_msg=name)
    # SolarizeAdd (timm's LUT, threshold 128, + int(0.9 * 110) = 99)
    got, _ = _run("SolarizeAdd", x, 9.0)
    np.testing.assert_array_equal(got, np.where(x < 128, np.minimum(255, x.astype(np.int32) + 99), x))
    # the negated enhance factor 0.19 (brightness: a blend with black, truncated)
    got, _ = _run("BrightnessIncreasing", x, 9.0, negate=True)
    np.testing.assert_array_equal(got, np.floor(x * np.float32(0.19)))


def test_colour_ops_exactly_on_a_hand_computed_array():
    x = np.zeros((4, 4, 3), np.uint8)
    x[..., 0] = [[0, 64, 127, 128]] * 4
    x[..., 1] = 200
    x[..., 2] = 255
    np.testing.assert_array_equal(_run("Invert", x, 9.0)[0], 255 - x)
    got = _run("SolarizeIncreasing", x, 9.0)[0]  # threshold 26: values >= 26 inverted
    np.testing.assert_array_equal(got[0, :, 0], [0, 191, 128, 127])
    got = _run("PosterizeIncreasing", x, 9.0)[0]  # one bit kept
    np.testing.assert_array_equal(got[0, :, 0], [0, 0, 0, 128])
    np.testing.assert_array_equal(got[0, 0, 1:], [128, 128])
    got = _run("SolarizeAdd", x, 9.0)[0]
    np.testing.assert_array_equal(got[0, :, 0], [99, 163, 226, 128])
    np.testing.assert_array_equal(got[0, 0, 1:], [200, 255])
    got = _run("AutoContrast", x, 9.0)[0]  # red 0..128 stretched, constant channels kept
    np.testing.assert_array_equal(got[0, :, 0], np.floor(np.array([0, 64, 127, 128]) * (255 / 128)))
    np.testing.assert_array_equal(got[0, 0, 1:], [200, 255])


def test_geometric_ops_fill_with_timms_mean_and_shift_exactly():
    x = _image(2)
    # TranslateXRel at magnitude 9: 0.405 * 8 = 3.24 px; at an exact 2-pixel shift (pct 0.25) no blend
    got = ta.translate_x_rel(tf.constant(x[None], tf.float32), tf.constant([0.25]))[0].numpy()
    np.testing.assert_array_equal(got[:, :6], x[:, 2:])
    np.testing.assert_array_equal(got[:, 6:], np.broadcast_to(ta.FILL, (8, 2, 3)))
    got = ta.translate_y_rel(tf.constant(x[None], tf.float32), tf.constant([-0.125]))[0].numpy()
    np.testing.assert_array_equal(got[1:], x[:-1])
    np.testing.assert_array_equal(got[0], np.broadcast_to(ta.FILL, (8, 3)))
    # rotate by 180 degrees about the centre (and 90: a transpose + flip) is exact on the grid
    got = ta.rotate(tf.constant(x[None], tf.float32), tf.constant([180.0]))[0].numpy()
    np.testing.assert_array_equal(got, x[::-1, ::-1])
    got = ta.rotate(tf.constant(x[None], tf.float32), tf.constant([90.0]))[0].numpy()
    np.testing.assert_array_equal(got, np.asarray(Image.fromarray(x).rotate(90)))
    # shear by 1 (PIL: input x = x + y): output centre (c + .5, r + .5) reads the input at x = c + r + 1,
    # half-way between the centres of columns c + r and c + r + 1: their mean (rounded), the fill beyond
    got = ta.shear_x(tf.constant(x[None], tf.float32), tf.constant([1.0]))[0].numpy()
    xf = x.astype(np.float64)
    for row in range(8):
        inside = 7 - row
        np.testing.assert_allclose(got[row, :inside], (xf[row, row:7] + xf[row, row + 1:]) / 2, atol=0.5)
        np.testing.assert_array_equal(got[row, inside + 1:], np.broadcast_to(ta.FILL, (7 - inside, 3)))
    # the sign comes from the negate draw
    assert _run("ShearY", x, 9.0, negate=True)[1] == pytest.approx(-0.27)


def test_noise_probability_and_op_draws_follow_the_uniforms():
    x = tf.constant(np.stack([_image(s) for s in range(6)]), tf.float32)
    u = np.asarray(tf.random.stateless_uniform([6, ta.NUM_RA_UNIFORMS], seed=[4, 5]))
    # magnitude: N(9, 0.5) by the inverse CDF, clipped to [0, 10]
    q = np.array([0.001, 0.3, 0.5, 0.9, 0.999999], np.float32)
    np.testing.assert_allclose(ta.magnitude_from_uniform(tf.constant(q)), np.clip(9 + 0.5 * ndtri(q), 0, 10),
                               rtol=1e-5)
    # "apply" > 0.5 on both layers: unchanged
    skip = u.copy()
    skip[:, 1::4] = 0.75
    np.testing.assert_array_equal(ta.rand_augment(x, tf.constant(skip)), x)
    # one layer applied (Invert chosen: index 2 of 15): exactly invert
    one = skip.copy()
    one[:, 0], one[:, 1] = (2 + 0.5) / 15, 0.25
    np.testing.assert_array_equal(ta.rand_augment(x, tf.constant(one)), 255 - x.numpy())
    # deterministic in the uniforms, and images are independent of each other
    a, b = ta.rand_augment(x, tf.constant(u)), ta.rand_augment(x, tf.constant(u))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ta.rand_augment(x[2:3], tf.constant(u[2:3])), a[2:3])
    assert a.numpy().min() >= 0 and a.numpy().max() <= 255 and np.array_equal(a, np.round(a))


def test_random_erasing_touches_one_rectangle_within_the_bounds():
    h = w = 32
    n = 400
    u = tf.random.stateless_uniform([n, ta.NUM_RE_UNIFORMS], seed=[7, 8])
    erase, top, left, bh, bw = (t.numpy() for t in ta.erasing_boxes(u, h, w, 0.25))
    assert 0.15 < erase.mean() < 0.35
    np.testing.assert_array_equal(erase, u.numpy()[:, 0] <= 0.25)  # every draw fits at 32x32 within 10 tries
    assert (bh >= 1).all() and (bw >= 1).all() and (bh < h).all() and (bw < w).all()
    assert (top >= 0).all() and (left >= 0).all() and (top + bh <= h).all() and (left + bw <= w).all()
    area = bh * bw / (h * w)
    # rounding h and w moves the area / aspect a little off the drawn bounds
    assert area.min() > 0.01 and area.max() < 0.40
    aspect = bh / bw
    assert aspect.min() > 0.3 / 1.5 and aspect.max() < 3.3 * 1.5
    # timm's loop over the attempts, in NumPy: the first that fits
    for i, row in enumerate(u.numpy()):
        for k in range(10):
            ua, ur, ut, ul = row[1 + 4 * k: 5 + 4 * k]
            a = h * w * (0.02 + ua * (1 / 3 - 0.02))
            r = math.exp(math.log(0.3) + ur * (math.log(1 / 0.3) - math.log(0.3)))
            eh, ew = round(math.sqrt(a * r)), round(math.sqrt(a / r))
            if eh < h and ew < w:
                assert (bh[i], bw[i]) == (eh, ew), i
                assert (top[i], left[i]) == (int(ut * (h - eh + 1)), int(ul * (w - ew + 1))), i
                break
    # applied: exactly that rectangle holds the noise, everything else is untouched
    x = tf.zeros([n, h, w, 3]) + 5.0
    noise = tf.random.stateless_normal([n, h, w, 3], seed=[1, 1])
    out = ta.random_erasing(x, u, noise, 0.25).numpy()
    for i in range(n):
        mask = np.zeros((h, w), bool)
        if erase[i]:
            mask[top[i]:top[i] + bh[i], left[i]:left[i] + bw[i]] = True
        np.testing.assert_array_equal(out[i][mask], noise.numpy()[i][mask])
        np.testing.assert_array_equal(out[i][~mask], 5.0)


def test_random_erasing_gives_up_when_nothing_fits():
    u = np.full([1, ta.NUM_RE_UNIFORMS], 0.999, np.float32)
    u[0, 0] = 0.0
    erase = ta.erasing_boxes(tf.constant(u), 4, 4, 1.0)[0].numpy()  # area 1/3 of 16, ratio 3.3: h = 4 = H
    assert not erase[0]


def test_the_strong_student_view_is_resumable_and_off_by_default():
    info = data.get_info("cifar100")
    images, labels = synthetic_split(dataclasses.replace(info, train_size=32, test_size=32), "train")
    strong = f"{pipeline.RRC}+{ta.RANDAUGMENT}+{pipeline.RANDOM_ERASING}"
    assert strong in pipeline.AUGMENTATIONS
    kwargs = dict(global_batch_size=8, seed=3, image_size=24, augmentation=strong)
    first = [b for _, b in zip(range(3), pipeline.in_memory_train_batches(info, images, labels, **kwargs))]
    resumed = next(pipeline.in_memory_train_batches(info, images, labels, start_step=2, **kwargs))
    np.testing.assert_array_equal(resumed["image"], first[2]["image"])
    halves = [next(pipeline.in_memory_train_batches(info, images, labels, process_index=p, process_count=2, **kwargs))
              for p in (0, 1)]
    np.testing.assert_array_equal(np.concatenate([h["image"] for h in halves]), first[0]["image"])
    plain = dict(kwargs, augmentation=pipeline.RRC)
    base = next(pipeline.in_memory_train_batches(info, images, labels, **plain))
    assert not np.array_equal(base["image"], first[0]["image"])
    # each part alone changes the view; the crop + flip stay the same draws
    for part in (ta.RANDAUGMENT, pipeline.RANDOM_ERASING):
        one = next(pipeline.in_memory_train_batches(info, images, labels, **dict(kwargs, augmentation=f"{pipeline.RRC}+{part}")))
        assert one["image"].shape == base["image"].shape and not np.array_equal(one["image"], base["image"])
    erased = next(pipeline.in_memory_train_batches(
        info, images, labels, **dict(kwargs, augmentation=f"{pipeline.RRC}+{pipeline.RANDOM_ERASING}", seed=4)))
    base4 = next(pipeline.in_memory_train_batches(info, images, labels, **dict(plain, seed=4)))
    changed = (erased["image"] != base4["image"]).any(axis=-1)
    assert changed.any(axis=(1, 2)).sum() <= 8
    with pytest.raises(ValueError, match="augmentation"):
        pipeline.in_memory_train_batches(info, images, labels, global_batch_size=8, seed=3, augmentation="rand-m9")
