"""gs:// paths against a fake GCS server (tests/gcs_fixture.py): the same files as a local run.

Every test gets a new bucket; nothing here reaches Google. ``subprocess_env`` and
``list_objects`` serve tests that run zkd in another process with its workdir in a bucket.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

from zkd import checkpoint, logit_cache, metrics_io, paths, teacher
from zkd.data import DATASETS

CIFAR = DATASETS["cifar100"]
def subprocess_env(gcs_server, **extra) -> dict:
    """The environment for a child process (a zkd run) that reads and writes the fake bucket."""
    return {**os.environ, **gcs_server.environ, **extra}


def list_objects(url: str) -> list[str]:
    """Every object under ``url``, as paths relative to it, sorted."""
    names = []
    for name in paths.listdir(url):
        child = paths.join(url, name)
        names += [f"{name}/{n}" for n in list_objects(child)] if paths.isdir(child) else [name]
    return sorted(names)


# ----------------------------------------------------------------------------- zkd.paths


@pytest.mark.parametrize("where", ["local", "bucket"])
def test_paths_behave_alike_on_disk_and_in_a_bucket(where, tmp_path, request):
    root = str(tmp_path) if where == "local" else request.getfixturevalue("gcs_bucket")
    d = paths.join(root, "run")
    paths.makedirs(d)
    f = paths.join(d, "a.json")
    assert not paths.exists(f)
    paths.write_text_atomic(f, "one\n")
    paths.write_text_atomic(f, "two\n")
    assert paths.read_text(f) == "two\n" and paths.isfile(f) and paths.isdir(d) and not paths.isfile(d)
    blob = tmp_path / "blob.bin"
    blob.write_bytes(bytes(range(256)) * 64)
    paths.makedirs(paths.join(d, "sub"))
    paths.copy_file(blob, paths.join(d, "sub", "blob.bin"))
    paths.copy_file(paths.join(d, "sub", "blob.bin"), tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == blob.read_bytes()
    assert sorted(paths.listdir(d)) == ["a.json", "sub"]  # no temporary file left
    hold = paths.join(d, "hold.json")
    assert paths.create_exclusive(hold, "first") and not paths.create_exclusive(hold, "second")
    assert paths.read_text(hold) == "first"
    student = paths.join(d, "students", "p0")
    assert paths.relpath(d, student) == "../.." and paths.normjoin(student, "../..") == d
    paths.remove(f)
    assert not paths.exists(f)
    paths.rmtree(d)
    paths.rmtree(d, ignore_errors=True)
    assert not paths.exists(d)


def test_tensorflow_gcs_never_leaves_the_machine(gcs_bucket):
    """TensorFlow's own GCS client cannot be pointed at the fake: it fails at once, reaching nothing."""
    import tensorflow as tf

    with pytest.raises(tf.errors.OpError, match="127.0.0.1"):
        tf.io.gfile.exists(f"{gcs_bucket}/x")


# ----------------------------------------------------------------------------- metrics


def test_metrics_in_a_bucket_append_truncate_and_resume(gcs_bucket, tmp_path):
    import tensorflow as tf

    workdir = paths.join(gcs_bucket, "run")
    writer = metrics_io.MetricWriter(workdir)
    writer.write(0, "teacher", {"top1": 50.0})
    for step in (2, 4, 6):
        writer.write(step, "train", {"loss": 1.0 / step, "nan": float("nan")})
    writer.close()
    assert [r["step"] for r in metrics_io.read_metrics(workdir)] == [0, 2, 4, 6]
    assert np.isnan(metrics_io.read_metrics(workdir, "train")[0]["nan"])

    # A restart from the checkpoint at step 4 drops step 6, then appends after step 4.
    resumed = metrics_io.MetricWriter(workdir)
    assert resumed.truncate_after(4) == 1
    resumed.write(6, "train", {"loss": 0.5})
    resumed.close()
    records = metrics_io.read_metrics(workdir)
    assert [(r["step"], r["kind"]) for r in records] == [(0, "teacher"), (2, "train"), (4, "train"), (6, "train")]
    assert records[-1]["loss"] == 0.5
    assert metrics_io.MetricWriter(workdir, tensorboard=False).truncate_after(0) == 4  # teacher record too
    assert metrics_io.read_metrics(workdir) == []

    # TensorBoard: one event file per writer, uploaded; its scalars are readable.
    events = [n for n in paths.listdir(paths.join(workdir, "tensorboard")) if n.startswith("events.out")]
    assert len(events) == 2
    tags = set()
    for name in events:
        local = str(tmp_path / name)
        paths.copy_file(paths.join(workdir, "tensorboard", name), local)
        for record in tf.data.TFRecordDataset(local):
            tags.update(v.tag for v in tf.compat.v1.Event.FromString(record.numpy()).summary.value)
    assert {"teacher/top1", "train/loss"} <= tags and "train/nan" not in tags


# ----------------------------------------------------------------------------- teachers


def _torch_teacher(tmp_path):
    """A resnet8 PyTorch teacher file in mdistiller's layout, its model and eval-mode logits."""
    torch = pytest.importorskip("torch")
    from torch_reference.resnets import cifar_resnet

    torch.manual_seed(0)
    model = cifar_resnet("resnet8", 100).eval()
    images = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32)
    with torch.no_grad():
        logits = model(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()
    path = tmp_path / "ckpt_epoch_240.pth"
    torch.save({"epoch": 240, "model": model.state_dict()}, path)
    return path, images, logits


def _teacher_config(checkpoint_path):
    import ml_collections

    return ml_collections.ConfigDict({"name": "resnet8", "zoo": "cifar", "checkpoint": checkpoint_path})


def test_pytorch_teacher_file_in_a_bucket(gcs_bucket, tmp_path):
    local, images, logits = _torch_teacher(tmp_path)
    remote = paths.join(gcs_bucket, "teachers", "ckpt_epoch_240.pth")
    paths.copy_file(local, remote)
    model, variables = teacher.load_teacher(_teacher_config(remote), 100, (32, 32, 3))
    np.testing.assert_allclose(model.apply(variables, images, train=False), logits, rtol=1e-4, atol=1e-4)
    with pytest.raises(teacher.TeacherError, match="does not exist"):
        teacher.load_teacher(_teacher_config(paths.join(gcs_bucket, "missing.pth")), 100, (32, 32, 3))


def test_converted_teacher_written_to_and_loaded_from_a_bucket(gcs_bucket, tmp_path, capsys, monkeypatch):
    from zkd import convert

    monkeypatch.chdir(tmp_path)  # where a path mistaken for a local one would land

    local, images, logits = _torch_teacher(tmp_path)
    out = paths.join(gcs_bucket, "teachers", "resnet8")
    argv = ["--checkpoint", str(local), "--model", "resnet8", "--num_classes", "100", "--output", out]
    assert convert.main(argv) == 0
    assert out in capsys.readouterr().out
    objects = list_objects(out)
    assert "metadata.json" in objects and "variables/commit_success.txt" in objects  # orbax's mark of a complete save
    with pytest.raises(SystemExit):  # never overwrites, in a bucket too
        convert.main(argv)
    model, variables = teacher.load_teacher(_teacher_config(out), 100, (32, 32, 3))
    np.testing.assert_allclose(model.apply(variables, images, train=False), logits, rtol=1e-4, atol=1e-4)


def test_variables_round_trip_through_orbax_in_a_bucket(gcs_bucket, tmp_path, monkeypatch):
    """orbax writes the arrays through tensorstore (TENSORSTORE_GCS_HTTP_URL), the rest through epath."""
    monkeypatch.chdir(tmp_path)  # where a path mistaken for a local one would land
    assert not os.listdir(tmp_path)
    variables = {"params": {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(3, np.float32)},
                 "batch_stats": {"mean": np.zeros(3, np.float32)}}
    directory = paths.join(gcs_bucket, "vars")
    assert checkpoint.save_variables(directory, variables, {"model": "tiny"}) == directory
    restored, meta = checkpoint.restore_variables(directory)
    assert meta == {"model": "tiny"}
    jax.tree.map(np.testing.assert_array_equal, restored, variables)
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        checkpoint.save_variables(directory, variables, {})
    assert not os.listdir(tmp_path)  # nothing written locally


# ----------------------------------------------------------------------------- the logit cache


def test_logit_cache_built_into_and_opened_from_a_bucket(gcs_bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("ZKD_CACHE_DIR", str(tmp_path / "local-copies"))
    variables = {"params": {"w": jax.random.normal(jax.random.key(1), (int(np.prod(CIFAR.image_shape)), 10))}}
    apply = lambda v, x, train: x.reshape(x.shape[0], -1) @ v["params"]["w"]  # noqa: E731 (a linear teacher)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, *CIFAR.image_shape)).astype(np.uint8)
    labels = rng.integers(0, CIFAR.num_classes, 3)
    build = lambda d: logit_cache.build_cache(d, apply, variables, "linear", images, labels, CIFAR,  # noqa: E731
                                              progress=False)
    local_meta = build(str(tmp_path / "local"))
    directory = paths.join(gcs_bucket, "caches", "c")

    # An interrupted upload (logits without meta) is no cache, and the next build overwrites it.
    paths.copy_file(tmp_path / "local" / logit_cache.LOGITS_FILE, paths.join(directory, logit_cache.LOGITS_FILE))
    with pytest.raises(logit_cache.CacheNotFoundError, match="not a complete logit cache"):
        logit_cache.TeacherLogitCache.open(directory, local_meta["hash"])
    meta = build(directory)
    assert meta["hash"] == local_meta["hash"] and paths.listdir(directory) == ["logits.npy", "meta.json"]
    assert build(directory) == meta  # up to date: nothing rebuilt

    local = logit_cache.TeacherLogitCache.open(tmp_path / "local", meta["hash"])
    remote = logit_cache.TeacherLogitCache.open(directory, meta["hash"])
    assert remote.directory == directory
    np.testing.assert_array_equal(np.asarray(remote.logits), np.asarray(local.logits))
    assert [os.path.basename(p) for p in _files(tmp_path / "local-copies")] == ["logits.npy"]  # one local copy
    logit_cache.TeacherLogitCache.open(directory, meta["hash"])
    assert len(_files(tmp_path / "local-copies")) == 1  # reused
    with pytest.raises(logit_cache.StaleCacheError, match="stale"):
        logit_cache.TeacherLogitCache.open(directory, "0" * 64)
    other = {**json.loads(paths.read_text(paths.join(directory, "meta.json"))), "hash": "f" * 64}
    paths.write_text_atomic(paths.join(directory, "meta.json"), json.dumps(other))
    with pytest.raises(logit_cache.CacheExistsError, match="refusing to overwrite"):
        build(directory)


def _files(root) -> list[str]:
    return sorted(os.path.join(d, f) for d, _, files in os.walk(root) for f in files)


# ----------------------------------------------------------------------------- a whole run in a bucket


def test_a_run_in_a_bucket_killed_and_resumed_ends_as_on_disk_and_teaches_a_student(gcs_bucket, tmp_path, request):
    """tests/train_worker.py's KD+LS run with its workdir in the bucket: SIGKILLed mid-epoch (its
    hold left behind), the same command again takes the hold over and ends with the metrics and
    parameters of the run on a local disk (the uninterrupted run tests/test_reliability.py's
    fault tests compare with, made once per session); every output is in the bucket; a student
    then distils from that run as its teacher, straight from the bucket."""
    from tests.test_reliability import _assert_same_run, _worker, shared_teacher, uninterrupted
    from tests.train_fixtures import mock_cifar100, tiny_config
    from zkd import checkpoint, metrics_io, train

    teacher = shared_teacher(request.getfixturevalue("tmp_path_factory"))
    run = f"{gcs_bucket}/runs/kd"
    killed = _worker(run, teacher, "--die_after_batches", "7")
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert "zkd-hold.json" in paths.listdir(run)
    resumed = _worker(run, teacher)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    objects = list_objects(run)
    for name in ("config.json", "metrics.jsonl", "summary.json"):
        assert name in objects, objects
    assert any(o.startswith("tensorboard/events.out.tfevents") for o in objects), objects
    local = uninterrupted(request, "single")["single"]  # the same run (same teacher) on a local disk
    assert checkpoint.TrainingCheckpoints(run).all_steps() == checkpoint.TrainingCheckpoints(local).all_steps()
    assert "zkd-hold.json" not in objects
    _assert_same_run(local, run)
    with mock_cifar100():
        summary = train.train_and_evaluate(tiny_config("kd", True, run, epochs=1), f"{gcs_bucket}/runs/student")
    assert summary["epochs"] == 1
    best = max(r["top1"] for r in metrics_io.read_metrics(run, "eval"))
    assert metrics_io.read_metrics(f"{gcs_bucket}/runs/student", "teacher")[0]["top1"] == best


def test_the_workdir_hold_in_a_bucket_is_exclusive_and_a_stale_one_is_taken_over(gcs_bucket):
    import socket
    import time

    from zkd import workdir as workdir_lib

    run = f"{gcs_bucket}/runs/held"
    hold = paths.join(run, workdir_lib.HOLD_FILE)
    with workdir_lib.WorkdirHold(run):
        assert json.loads(paths.read_text(hold))["pid"] == os.getpid()
        with pytest.raises(workdir_lib.WorkdirBusyError, match=f"pid {os.getpid()}"):
            with workdir_lib.WorkdirHold(run):
                pass
    assert not paths.exists(hold)  # released
    # A holder on another host whose lease lapsed (it was killed): taken over; a live one is not.
    paths.write_text_atomic(hold, json.dumps(dict(host="elsewhere", pid=1, renewed=time.time() - 61,
                                                  lease_seconds=60)))
    with workdir_lib.WorkdirHold(run):
        assert json.loads(paths.read_text(hold))["host"] == socket.gethostname()
    paths.write_text_atomic(hold, json.dumps(dict(host="elsewhere", pid=1, started="then", renewed=time.time(),
                                                  lease_seconds=60)))
    with pytest.raises(workdir_lib.WorkdirBusyError, match="host elsewhere"):
        with workdir_lib.WorkdirHold(run):
            pass


# ----------------------------------------------------------------------------- experiments/


def test_toy_case_figure_written_to_a_bucket(gcs_bucket, tmp_path, monkeypatch):
    """experiments/toy_case.py --out gs://...: the PNG is one object in the bucket, nothing local."""
    import importlib.util

    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments", "toy_case.py")
    spec = importlib.util.spec_from_file_location("experiments_toy_case_bucket", script)
    toy_case = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(toy_case)
    monkeypatch.chdir(tmp_path)  # where a path mistaken for a local one would land
    out = paths.join(gcs_bucket, "figures", "toy_case.png")
    toy_case.main(["--out", out])
    assert list_objects(gcs_bucket) == ["figures/toy_case.png"]
    with paths.open(out, "rb") as f:
        png = f.read()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000
    assert not os.listdir(tmp_path)  # nothing written locally
