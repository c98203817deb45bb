"""Teacher-logit cache (zkd.logit_cache) and the pipeline's augmentation parameters.

Expected values are computed independently of zkd's augmentation code: images are padded,
cropped and flipped with NumPy slicing, normalized with NumPy, and fed to ``teacher.apply``.
"""

import dataclasses
import glob
import itertools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zkd import checkpoint, data, engine, logit_cache, metrics_io, models, parallel, recipes, sweep, train, validate
from zkd import step as step_lib
from zkd.errors import ConfigError
from zkd.data import pipeline

from train_fixtures import mock_cifar100, save_random_teacher, synthetic_split

CIFAR = data.DATASETS["cifar100"]
FMNIST = data.DATASETS["fashion_mnist"]
N = 16  # examples of the synthetic training split
F16_RTOL = 2.0**-11  # float16 rounding (round to nearest, 11 significant bits)


def synthetic_images(info, n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, *info.image_shape)).astype(np.uint8), rng.integers(0, info.num_classes, n)


def numpy_augment(images, index, dy, dx, flip, info):
    """images[index] zero-padded by pad, cropped at (dy, dx), mirrored where flip, normalized: float32."""
    pad = info.pad
    h, w = images.shape[1:3]
    padded = np.pad(images[np.asarray(index)], ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    crops = np.stack([p[y:y + h, x:x + w] for p, y, x in zip(padded, dy, dx)])
    crops = np.where(np.asarray(flip)[:, None, None, None], crops[:, :, ::-1], crops)
    mean, std = np.asarray(info.mean, np.float32), np.asarray(info.std, np.float32)
    return (crops.astype(np.float32) / np.float32(255.0) - mean) / std


def teacher_of(info, seed=1):
    model = models.build("resnet8", info.num_classes)
    variables = model.init(jax.random.key(seed), jnp.zeros((1, *info.image_shape)), train=False)
    return model, variables


def take(iterator, k):
    return list(itertools.islice(iterator, k))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A cache of a random resnet8 over 16 synthetic CIFAR images (5 examples per device call: the last is padded)."""
    model, variables = teacher_of(CIFAR)
    images, labels = synthetic_images(CIFAR, N)
    directory = str(tmp_path_factory.mktemp("cache") / "c")
    meta = logit_cache.build_cache(directory, model.apply, variables, "resnet8", images, labels, CIFAR,
                                   batch_size=5 * 162, progress=False)
    return dict(model=model, variables=variables, images=images, labels=labels, directory=directory, meta=meta)


# ----------------------------------------------------------------------------- variants


def test_variant_index_round_trip_and_layout():
    pad = 4
    v = np.arange(logit_cache.num_variants(pad))
    assert v.size == 162
    dy, dx, flip = logit_cache.variant_params(v, pad)
    assert dy.dtype == dx.dtype == np.int32 and flip.dtype == bool
    assert dy.min() == dx.min() == 0 and dy.max() == dx.max() == 8 and flip.sum() == 81
    index = logit_cache.variant_index(dy, dx, flip, pad)
    assert index.dtype == np.int32
    np.testing.assert_array_equal(index, v)
    # The documented formula v = (dy * 9 + dx) * 2 + flip, by hand.
    assert logit_cache.variant_index(0, 0, False, pad) == 0
    assert logit_cache.variant_index(0, 0, True, pad) == 1
    assert logit_cache.variant_index(0, 1, False, pad) == 2
    assert logit_cache.variant_index(1, 0, False, pad) == 18
    assert logit_cache.variant_index(8, 8, True, pad) == 161
    assert logit_cache.num_variants(0) == 2 and logit_cache.num_variants(2) == 50
    with pytest.raises(ValueError, match="dx must be in"):
        logit_cache.variant_index(0, 9, False, pad)
    with pytest.raises(ValueError, match="variant must be in"):
        logit_cache.variant_params(162, pad)


# ----------------------------------------------------------------------------- pipeline


def test_augmentation_params_reproduce_the_batch_images():
    images, labels = synthetic_images(CIFAR, N, seed=3)
    kwargs = dict(global_batch_size=8, seed=5)
    with_params = take(pipeline.in_memory_train_batches(CIFAR, images, labels, augmentation_params=True, **kwargs), 5)
    plain = take(pipeline.in_memory_train_batches(CIFAR, images, labels, **kwargs), 5)
    for step, (batch, ref) in enumerate(zip(with_params, plain)):
        assert set(ref) == {"image", "label"}  # default off: today's batches, byte for byte
        assert set(batch) == {"image", "label", "index", "crop_dy", "crop_dx", "flip"}
        np.testing.assert_array_equal(batch["image"], ref["image"])
        np.testing.assert_array_equal(batch["label"], ref["label"])
        assert batch["index"].dtype == batch["crop_dy"].dtype == batch["crop_dx"].dtype == np.int32
        assert batch["flip"].dtype == bool and batch["index"].shape == (8,)
        for k in ("crop_dy", "crop_dx"):
            assert batch[k].min() >= 0 and batch[k].max() <= 2 * CIFAR.pad
        np.testing.assert_array_equal(batch["index"], np.asarray(data.batch_indices(5, step, 8, N)))
        np.testing.assert_array_equal(batch["label"], labels[batch["index"]])
        expected = numpy_augment(images, batch["index"], batch["crop_dy"], batch["crop_dx"], batch["flip"], CIFAR)
        np.testing.assert_array_equal(batch["image"], expected)
    both = np.concatenate([b["index"] for b in with_params[:2]])
    np.testing.assert_array_equal(np.sort(both), np.arange(N))  # an epoch visits every row once
    flips = np.concatenate([b["flip"] for b in with_params])
    assert 0 < flips.sum() < flips.size
    # Process 1 of 2 holds the second half of the global batch's rows and their parameters.
    half = take(pipeline.in_memory_train_batches(CIFAR, images, labels, augmentation_params=True, process_index=1,
                                                 process_count=2, **kwargs), 2)
    for local, glob_ in zip(half, with_params):
        for k in ("index", "crop_dy", "crop_dx", "flip", "image"):
            np.testing.assert_array_equal(local[k], glob_[k][4:])


def test_augmentation_params_refused_for_two_views_and_streaming():
    images, labels = synthetic_images(CIFAR, N)
    with pytest.raises(ValueError, match="two_views"):
        pipeline.in_memory_train_batches(CIFAR, images, labels, global_batch_size=8, seed=0, two_views=True,
                                         augmentation_params=True)
    with pytest.raises(ValueError, match="in-memory dataset"):  # before any data is read
        data.train_batches("imagenet2012", data_dir="/nonexistent", global_batch_size=8, seed=0,
                           augmentation_params=True)


# ----------------------------------------------------------------------------- cache contents


@pytest.mark.parametrize("info", [CIFAR, FMNIST], ids=lambda i: i.name)
def test_cache_equals_on_the_fly_teacher_to_float16(built, info, tmp_path):
    if info is CIFAR:
        model, variables, images = built["model"], built["variables"], built["images"]
        cache = logit_cache.TeacherLogitCache.open(built["directory"], built["meta"]["hash"])
    else:  # 28x28x1, 10 classes: one device call
        model, variables = teacher_of(info, seed=2)
        images, labels = synthetic_images(info, 3)
        meta = logit_cache.build_cache(tmp_path / "f", model.apply, variables, "resnet8", images, labels, info,
                                       progress=False)
        cache = logit_cache.TeacherLogitCache.open(tmp_path / "f", meta["hash"])
    n = images.shape[0]
    assert cache.logits.shape == (n, 162, info.num_classes) and cache.logits.dtype == np.float16
    assert not cache.logits.flags.writeable
    assert cache.meta["num_examples"] == n and cache.meta["pad"] == 4 and cache.meta["dataset"] == info.name
    rng = np.random.default_rng(7)
    k = 24
    index = np.concatenate([[0, n - 1], rng.integers(0, n, k - 2)])
    dy = np.concatenate([[0, 8], rng.integers(0, 9, k - 2)])
    dx = np.concatenate([[8, 0], rng.integers(0, 9, k - 2)])
    flip = np.concatenate([[True, False], rng.random(k - 2) < 0.5])
    expected = np.asarray(model.apply(variables, numpy_augment(images, index, dy, dx, flip, info), train=False))
    got = cache.lookup(index, dy, dx, flip)
    assert got.dtype == np.float16 and got.shape == (k, info.num_classes)
    np.testing.assert_allclose(got.astype(np.float32), expected, rtol=F16_RTOL, atol=1e-6)
    # Variants differ: the cache is not one logit vector repeated.
    assert np.abs(cache.logits[0, 0].astype(np.float32) - cache.logits[0, 161].astype(np.float32)).max() > 1e-3
    with pytest.raises(ValueError, match="index must be in"):
        cache.lookup([n], [0], [0], [False])


def test_attach_teacher_logits_serves_the_teacher_of_each_batch(built):
    cache = logit_cache.TeacherLogitCache.open(built["directory"], built["meta"]["hash"])
    stream = pipeline.in_memory_train_batches(CIFAR, built["images"], built["labels"], global_batch_size=8, seed=1,
                                              augmentation_params=True)
    raw = take(pipeline.in_memory_train_batches(CIFAR, built["images"], built["labels"], global_batch_size=8, seed=1,
                                                augmentation_params=True), 3)
    served = take(logit_cache.attach_teacher_logits(stream, cache), 3)
    for batch, params in zip(served, raw):
        assert set(batch) == {"image", "label", "teacher_logits"}
        assert batch["teacher_logits"].dtype == np.float32 and batch["teacher_logits"].shape == (8, 100)
        np.testing.assert_array_equal(batch["image"], params["image"])
        np.testing.assert_array_equal(
            batch["teacher_logits"],
            cache.lookup(params["index"], params["crop_dy"], params["crop_dx"], params["flip"]).astype(np.float32))
        on_the_fly = np.asarray(built["model"].apply(built["variables"], batch["image"], train=False))
        np.testing.assert_allclose(batch["teacher_logits"], on_the_fly, rtol=F16_RTOL, atol=1e-6)
    plain = pipeline.in_memory_train_batches(CIFAR, built["images"], built["labels"], global_batch_size=8, seed=1)
    with pytest.raises(ValueError, match="augmentation_params=True"):
        next(logit_cache.attach_teacher_logits(plain, cache))


# ----------------------------------------------------------------------------- staleness and atomicity


def test_content_hash_changes_with_one_weight_pixel_label_or_name(built):
    variables, images, labels = built["variables"], built["images"], built["labels"]
    base = logit_cache.content_hash("resnet8", variables, images, labels, CIFAR)
    assert base == built["meta"]["hash"] and len(base) == 64
    host = jax.tree.map(np.asarray, variables)  # numpy or jax arrays: the same bytes, the same hash
    assert logit_cache.content_hash("resnet8", host, images, labels, CIFAR) == base
    leaves, treedef = jax.tree.flatten(host)
    leaves[-1] = leaves[-1].copy()
    leaves[-1].flat[0] += 1e-3
    one_weight = jax.tree.unflatten(treedef, leaves)
    one_pixel = images.copy()
    one_pixel[3, 10, 20, 1] ^= 1
    one_label = labels.copy()
    one_label[0] = (labels[0] + 1) % 100
    other_norm = dataclasses.replace(CIFAR, std=(0.25, 0.25, 0.25))
    variants = [
        logit_cache.content_hash("resnet8", one_weight, images, labels, CIFAR),
        logit_cache.content_hash("resnet8", variables, one_pixel, labels, CIFAR),
        logit_cache.content_hash("resnet8", variables, images, one_label, CIFAR),
        logit_cache.content_hash("resnet20", variables, images, labels, CIFAR),
        logit_cache.content_hash("resnet8", variables, images, labels, other_norm),
    ]
    assert len(set(variants + [base])) == len(variants) + 1


def test_stale_cache_is_refused_with_both_hashes_and_the_command(built):
    directory, meta = built["directory"], built["meta"]
    leaves, treedef = jax.tree.flatten(jax.tree.map(np.asarray, built["variables"]))
    leaves[0] = leaves[0].copy()
    leaves[0].flat[0] += 1e-3
    changed = jax.tree.unflatten(treedef, leaves)
    new_hash = logit_cache.content_hash("resnet8", changed, built["images"], built["labels"], CIFAR)
    with pytest.raises(logit_cache.StaleCacheError) as err:
        logit_cache.TeacherLogitCache.open(directory, new_hash, rebuild_command="python -m zkd.logit_cache --x")
    message = str(err.value)
    assert meta["hash"] in message and new_hash in message and "python -m zkd.logit_cache --x" in message
    # A build of other content never overwrites a complete cache; the same content is not rebuilt.
    mtime = os.stat(os.path.join(directory, "logits.npy")).st_mtime_ns
    with pytest.raises(logit_cache.CacheExistsError, match="refusing to overwrite"):
        logit_cache.build_cache(directory, built["model"].apply, changed, "resnet8", built["images"],
                                built["labels"], CIFAR, progress=False)
    again = logit_cache.build_cache(directory, built["model"].apply, built["variables"], "resnet8", built["images"],
                                    built["labels"], CIFAR, progress=False)
    assert again == meta and os.stat(os.path.join(directory, "logits.npy")).st_mtime_ns == mtime
    assert logit_cache.TeacherLogitCache.open(directory, meta["hash"]).meta == meta


def test_interrupted_build_leaves_no_complete_looking_cache(tmp_path):
    model, variables = teacher_of(CIFAR)
    images, labels = synthetic_images(CIFAR, 4)
    calls = []

    def fail_on_second_call(x):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated failure mid-build")
        return x

    def flaky_apply(v, x, train):  # the teacher, failing on its second device call
        logits = model.apply(v, x, train=train)
        return jax.pure_callback(fail_on_second_call, jax.ShapeDtypeStruct(logits.shape, logits.dtype), logits)

    directory = str(tmp_path / "cache")
    with pytest.raises(Exception, match="simulated failure"):
        logit_cache.build_cache(directory, flaky_apply, variables, "resnet8", images, labels, CIFAR,
                                batch_size=162, progress=False)
    assert len(calls) >= 2
    assert os.listdir(tmp_path) == []  # neither the cache nor its temporary directory
    with pytest.raises(logit_cache.CacheNotFoundError, match="python -m zkd.logit_cache") as err:
        logit_cache.TeacherLogitCache.open(directory, "0" * 64)
    assert isinstance(err.value, FileNotFoundError)
    # A build killed without clean-up leaves only <directory>.tmp-<pid>, which open names.
    os.makedirs(directory + ".tmp-999999")
    with pytest.raises(logit_cache.CacheNotFoundError, match=r"interrupted build left .*\.tmp-999999"):
        logit_cache.TeacherLogitCache.open(directory, "0" * 64)
    # A directory that is not a cache is never built over.
    os.makedirs(tmp_path / "other")
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(logit_cache.CacheExistsError, match="not a logit cache"):
        logit_cache.build_cache(tmp_path / "other", model.apply, variables, "resnet8", images, labels, CIFAR,
                                progress=False)


# ----------------------------------------------------------------------------- command line and training


def test_cli_builds_the_cache_of_a_saved_teacher(tmp_path, capsys):
    teacher_dir = save_random_teacher(tmp_path / "teacher", "resnet8", 100, seed=3)
    output = str(tmp_path / "cache")
    with mock_cifar100(num_examples=4) as info:
        rc = logit_cache.main(["--teacher", teacher_dir, "--teacher_name", "resnet8", "--dataset", "cifar100",
                               "--output", output])
        images, labels = synthetic_split(info, "train")
    assert rc == 0, capsys.readouterr().err
    variables, _ = checkpoint.restore_variables(teacher_dir)
    expected_hash = logit_cache.content_hash("resnet8", variables, images, labels, info)
    cache = logit_cache.TeacherLogitCache.open(output, expected_hash)
    assert cache.logits.shape == (4, 162, 100) and expected_hash in capsys.readouterr().out
    model = models.build("resnet8", 100)
    expected = np.asarray(model.apply(variables, numpy_augment(images, [2], [1], [7], [True], info), train=False))
    np.testing.assert_allclose(cache.lookup([2], [1], [7], [True]).astype(np.float32), expected,
                               rtol=F16_RTOL, atol=1e-6)
    assert glob.glob(output + ".tmp-*") == []
    rc = logit_cache.main(["--teacher", str(tmp_path / "missing"), "--teacher_name", "resnet8", "--output", output])
    assert rc == 1 and "does not exist" in capsys.readouterr().err


def test_short_kd_ls_run_with_the_cache_matches_the_run_without(built):
    """Three KD+LS steps: teacher forward on the batch vs the cache's logits, same student init.

    The only difference is float16 rounding of the teacher's logits (relative 2^-11). Losses agree
    to ~1e-4; parameter updates to ~1% of their size (the KD gradient is a difference of nearly
    equal probabilities, so its relative error is larger than the logits').
    """
    config = recipes.cifar_distillation("kd", "resnet8", "resnet8", True)
    config.batch_size = 8
    info = dataclasses.replace(CIFAR, train_size=16)
    run = engine.build(config, teacher=(built["model"], built["variables"]), info=info, mesh=parallel.make_mesh(1))
    with_teacher = run.state
    student_only = jax.tree.map(jnp.copy, run.state)  # the same student init (the step donates its state)
    init = jax.tree.map(np.asarray, with_teacher.students[0].params)
    cache = logit_cache.TeacherLogitCache.open(built["directory"], built["meta"]["hash"])

    def stream():
        return pipeline.in_memory_train_batches(CIFAR, built["images"], built["labels"], global_batch_size=8, seed=2,
                                                augmentation_params=True)

    plain = [{k: b[k] for k in ("image", "label")} for b in take(stream(), 3)]
    cached = take(logit_cache.attach_teacher_logits(stream(), cache), 3)
    assert all("teacher_logits" in b for b in cached)
    for a, b in zip(plain, cached):
        with_teacher, (ma,) = run.train_step(with_teacher, parallel.global_batch(a, run.mesh))
        student_only, (mb,) = run.train_step(student_only, parallel.global_batch(
            {k: b[k] for k in ("image", "label", "teacher_logits")}, run.mesh))
        assert "kd" in mb and float(mb["kd"]) > 0.5 * float(mb["ce"])  # the KD term is a large part of the loss
        for name in ("loss", "kd", "ce", "agreement"):
            np.testing.assert_allclose(mb[name], ma[name], rtol=5e-4, atol=1e-6, err_msg=name)

    def update_gap(cached_p, teacher_p, start):  # max |difference of updates| / max |update|
        du, dv = np.asarray(cached_p) - start, np.asarray(teacher_p) - start
        return np.abs(du - dv).max() / np.abs(dv).max()

    gaps = jax.tree.leaves(jax.tree.map(update_gap, student_only.students[0].params,
                                        with_teacher.students[0].params, init))
    assert max(gaps) < 0.03, max(gaps)


def test_a_run_with_config_teacher_logit_cache_trains_from_the_cache(tmp_path, monkeypatch):
    """The trainer end to end: the cache's logits reach the step (no teacher forward in it), the
    run tracks the run without a cache to float16 precision, and a stale cache is refused."""
    from train_fixtures import tiny_config

    teacher_dir = save_random_teacher(str(tmp_path / "teacher"))
    cache_dir = str(tmp_path / "cache")
    seen = []
    original = step_lib.teacher_logits_of_batch

    def spy(settings, apply_fn, variables, batch):
        seen.append("teacher_logits" in batch)
        return original(settings, apply_fn, variables, batch)

    monkeypatch.setattr(step_lib, "teacher_logits_of_batch", spy)
    with mock_cifar100(num_examples=32) as info:
        images, labels = data.load_arrays(info, None, "train")
        variables, _ = checkpoint.restore_variables(teacher_dir)
        logit_cache.build_cache(cache_dir, models.build("resnet8", 100).apply, variables, "resnet8", images, labels,
                                info, progress=False)
        plain = tiny_config("kd", True, teacher_dir, epochs=1)
        train.train_and_evaluate(plain, str(tmp_path / "plain"))
        cached = tiny_config("kd", True, teacher_dir, epochs=1)
        cached.teacher.logit_cache = cache_dir
        train.train_and_evaluate(cached, str(tmp_path / "cached"))
        # A sweep reads the cache the same way: one grid point (the same run) takes the same steps.
        swept = tiny_config("kd", True, teacher_dir, epochs=1)
        swept.teacher.logit_cache = cache_dir
        swept.sweep.kd_weight = (swept.loss.kd_weight,)
        result = sweep.train_sweep(swept, str(tmp_path / "swept"))
        # One trace each: the plain step runs the teacher, the cached ones do not.
        assert seen == [False, True, True]
        s = metrics_io.read_metrics(result["points"][0]["workdir"], "train")
        assert s == metrics_io.read_metrics(str(tmp_path / "cached"), "train")
        a = metrics_io.read_metrics(str(tmp_path / "plain"), "train")
        b = metrics_io.read_metrics(str(tmp_path / "cached"), "train")
        for name in ("loss", "kd", "ce", "agreement", "logit_std_teacher"):
            np.testing.assert_allclose([m[name] for m in b], [m[name] for m in a], rtol=2e-3, err_msg=name)

        other = save_random_teacher(str(tmp_path / "other"), seed=2)
        stale = tiny_config("kd", True, other, epochs=1)
        stale.teacher.logit_cache = cache_dir
        with pytest.raises(logit_cache.StaleCacheError, match="python -m zkd.logit_cache --teacher .*other"):
            train.train_and_evaluate(stale, str(tmp_path / "stale"))
    bad = tiny_config("mlkd", True, teacher_dir)
    bad.teacher.logit_cache = cache_dir
    with pytest.raises(ConfigError, match="MLKD's two views"):
        validate.validate_config(bad)
