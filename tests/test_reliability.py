"""Preemption, determinism, non-finite values and bad input (issue: reliability)."""

import contextlib
import dataclasses
import fcntl
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.train_fixtures import mock_cifar100, save_random_teacher, tiny_config
from zkd import checkpoint, data, metrics_io, train

WORKER = os.path.join(os.path.dirname(__file__), "train_worker.py")
TIMING = {"images_per_second"}


# ----------------------------------------------------------------------------- shared by every worker of a session
#
# The teacher and the uninterrupted runs the fault tests (and tests/test_buckets.py) compare with
# are made once per pytest session, in a directory every pytest-xdist worker of it sees, under a
# file lock: a worker that needs a run another worker is making waits for it instead of training it again.


def _shared_root(tmp_path_factory):
    base = tmp_path_factory.getbasetemp()  # <session>/popen-gwN under xdist, <session> without
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "zkd-reliability-shared"
    root.mkdir(exist_ok=True)
    return root


@contextlib.contextmanager
def _locked(path):
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def shared_teacher(tmp_path_factory) -> str:
    """A saved random resnet8 teacher (save_random_teacher's default seed), one per session."""
    root = _shared_root(tmp_path_factory)
    directory = root / "teacher" / "resnet8"
    with _locked(root / "teacher.lock"):
        if not (root / "teacher.done").exists():
            shutil.rmtree(root / "teacher", ignore_errors=True)
            save_random_teacher(str(directory))
            (root / "teacher.done").touch()
    return str(directory)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    return shared_teacher(tmp_path_factory)


def _worker(workdir, teacher, *flags):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    return subprocess.run([sys.executable, WORKER, workdir, teacher, *flags], capture_output=True, text=True,
                          env=env, timeout=600)


def _comparable(workdir):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in metrics_io.read_metrics(workdir)]


def _assert_same_run(a, b):
    ra, rb = _comparable(a), _comparable(b)
    assert [(r["kind"], r["step"]) for r in ra] == [(r["kind"], r["step"]) for r in rb]
    for x, y in zip(ra, rb):
        assert set(x) == set(y)
        for k in x:
            if isinstance(x[k], str):
                assert x[k] == y[k]
            else:
                np.testing.assert_allclose(y[k], x[k], rtol=1e-5, atol=1e-7, err_msg=f"{x['kind']} {x['step']} {k}")
    pa, pb = checkpoint.restore_best_student(a), checkpoint.restore_best_student(b)
    import jax

    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-7), pa, pb)


def _baselines_the_session_runs(session) -> set:
    """The uninterrupted runs that this session's fault tests compare with ("single", "sweep")."""
    names = set()
    for item in session.items:
        fault = getattr(getattr(item, "callspec", None), "params", {}).get("fault")
        if fault in FAULTS:
            names.add("sweep" if "--sweep" in FAULTS[fault][0] else "single")
    return names


def uninterrupted(request, *names) -> dict:
    """{name: workdir} of the worker's run ("single") and of its two-point sweep ("sweep"), each
    without a fault: made once per session (with the shared teacher), in one process for every
    one of them the session's tests need, the first time a test asks for one."""
    tmp_path_factory = request.getfixturevalue("tmp_path_factory")
    root = _shared_root(tmp_path_factory)
    teacher = shared_teacher(tmp_path_factory)
    runs = {name: str(root / "straight" / name) for name in ("single", "sweep")}
    with _locked(root / "straight.lock"):
        missing = [n for n in runs if n in set(names) | _baselines_the_session_runs(request.session)
                   and not (root / f"straight-{n}.done").exists()]
        for name in missing:
            shutil.rmtree(runs[name], ignore_errors=True)  # a start that failed earlier
        if missing == ["single", "sweep"]:
            done = _worker(runs["single"], teacher, "--then_sweep", runs["sweep"])
        elif missing:
            done = _worker(runs[missing[0]], teacher, *(("--sweep",) if missing == ["sweep"] else ()))
        if missing:
            assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        for name in missing:
            (root / f"straight-{name}.done").touch()
    return {name: runs[name] for name in names}


# (flags of the faulty start, its exit status, the step its checkpoint holds or None, what it prints)
FAULTS = {
    "sigkill_mid_epoch": (["--die_after_batches", "7"], -9, None, ""),
    "sigkill_while_writing_a_checkpoint": (["--die_in_checkpoint", "2"], -9, None, ""),
    # Batch call 10 is step 3 (teacher eval: 3 calls; epoch 1: 3 steps + 3 eval batches): the run
    # stops after step 3, mid-epoch, with step 3's metrics not yet logged (log_every_steps 2).
    "sigterm_mid_epoch": (["--signal_after_batches", "9"], 75, 4,
                          "error (Preempted): stopped on SIGTERM after step 4; its checkpoint is saved in"),
    "sigterm_mid_epoch_sweep": (["--sweep", "--signal_after_batches", "9"], 75, 4, "stopped on SIGTERM after step 4"),
    "step_checkpoints_then_sigkill": (["--checkpoint_every_steps", "2", "--die_after_batches", "11"], -9, 4, ""),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_an_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path, teacher_dir, request, fault):
    """Real processes: killed (SIGKILL, mid-epoch or mid-write), preempted (SIGTERM: the step
    finishes, its checkpoint is saved, exit 75; a first Ctrl-C sets the same request, see
    test_a_second_ctrl_c_aborts_at_once), or saving every 2 steps and then killed;
    the same command again ends with the parameters and metrics of the uninterrupted run."""
    flags, status, saved_step, message = FAULTS[fault]
    sweep = "--sweep" in flags
    workdir = str(tmp_path / "run")
    first = _worker(workdir, teacher_dir, *flags)
    assert first.returncode == status, first.stderr[-3000:]
    assert message in first.stderr
    if status == 75:
        assert f"Run the same command again to resume at step {saved_step}." in first.stderr
        assert not os.path.exists(os.path.join(workdir, "zkd-hold.json"))  # released on the way out
    else:
        assert os.path.exists(os.path.join(workdir, "zkd-hold.json"))  # a SIGKILL leaves a stale hold ...
    if saved_step is not None:
        ck = checkpoint.TrainingCheckpoints(workdir)
        assert ck.latest_step() == saved_step
        _, meta = ck.restore_latest(None)
        ck.close()
        assert set(meta) == {"epoch", "steps_per_epoch", "train_seconds", "train_images", "students"}  # no half epoch
        for student in [os.path.join(workdir, "students", n) for n in ("kd1", "kd5")] if sweep else [workdir]:
            # the metrics of the steps before the save were flushed first
            assert saved_step in [r["step"] for r in metrics_io.read_metrics(student, "train")]
    second = _worker(workdir, teacher_dir, *[f for f in flags if f == "--sweep"])  # ... the restart takes over
    assert second.returncode == 0, second.stderr[-3000:]
    ck = checkpoint.TrainingCheckpoints(workdir)
    _, meta = ck.restore_latest(None)
    ck.close()
    assert "step" not in meta and "partial" not in meta  # an epoch end's meta: a later restart resumes from it
    # Asked for last: while one xdist worker trains the uninterrupted runs, another runs its faults.
    if sweep:
        straight = uninterrupted(request, "sweep")["sweep"]
        for name in ("kd1", "kd5"):
            _assert_same_run(os.path.join(straight, "students", name), os.path.join(workdir, "students", name))
    else:
        _assert_same_run(uninterrupted(request, "single")["single"], workdir)


def test_same_seed_gives_identical_metrics_and_another_seed_differs(tmp_path, teacher_dir):
    with mock_cifar100():
        for name, seed in (("a", 0), ("b", 0), ("c", 1)):
            train.train_and_evaluate(tiny_config("kd", True, teacher_dir, epochs=1, seed=seed), str(tmp_path / name))
    a, b, c = (_comparable(str(tmp_path / n)) for n in "abc")
    assert a == b
    assert [r.get("loss") for r in a] != [r.get("loss") for r in c]


def _no_checkpoint_written(workdir):
    return checkpoint.TrainingCheckpoints(workdir).latest_step() is None


def test_nan_in_the_teacher_logits_stops_the_run_naming_step_and_term(tmp_path):
    import jax
    import jax.numpy as jnp

    from zkd import models

    model = models.build("resnet8", 100)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
    variables["params"]["fc"]["bias"] = jnp.full_like(variables["params"]["fc"]["bias"], jnp.nan)
    teacher = checkpoint.save_variables(str(tmp_path / "nan_teacher"), variables, {"model": "resnet8", "num_classes": 100})
    workdir = str(tmp_path / "run")
    with mock_cifar100(), pytest.raises(train.NonFiniteError, match=r"non-finite values at step 0: kd=nan"):
        train.train_and_evaluate(tiny_config("kd", True, teacher), workdir)
    assert _no_checkpoint_written(workdir)


def test_nan_in_a_batch_stops_the_run(tmp_path, teacher_dir, monkeypatch):
    real = data.train_batches

    def poisoned(*args, **kwargs):
        for i, batch in enumerate(real(*args, **kwargs)):
            if i == 3:
                batch = dict(batch, image=np.full_like(batch["image"], np.nan))
            yield batch

    monkeypatch.setattr(data, "train_batches", poisoned)
    workdir = str(tmp_path / "run")
    # NaN images: the conv/BN/ReLU stack may squash the forward to finite logits, but not the gradients.
    with mock_cifar100(), pytest.raises(train.NonFiniteError, match=r"non-finite values at step 3: .*grad_norm=nan"):
        train.train_and_evaluate(tiny_config("kd", True, teacher_dir, epochs=2, steps=2), workdir)
    # The first epoch (steps 0-1) was fine and is kept; nothing from step 3 was written.
    assert checkpoint.TrainingCheckpoints(workdir).latest_step() == 2


def test_an_absurd_learning_rate_stops_the_run(tmp_path, teacher_dir):
    c = tiny_config("kd", True, teacher_dir, epochs=1, steps=3)
    with c.unlocked():
        c.optimizer.learning_rate = 1e30
    workdir = str(tmp_path / "run")
    with mock_cifar100(), pytest.raises(train.NonFiniteError, match=r"non-finite values at step [0-9]+: "):
        train.train_and_evaluate(c, workdir)
    assert _no_checkpoint_written(workdir)


def test_labels_outside_the_class_range_are_named(tmp_path, teacher_dir, monkeypatch):
    real = data.train_batches

    def bad_labels(*args, **kwargs):
        for i, batch in enumerate(real(*args, **kwargs)):
            if i == 1:
                batch = dict(batch, label=np.where(np.arange(len(batch["label"])) == 0, 100, batch["label"]))
            yield batch

    monkeypatch.setattr(data, "train_batches", bad_labels)
    with mock_cifar100(), pytest.raises(train.DataError, match=r"step 1 has labels \[100\] outside \[0, 100\)"):
        train.train_and_evaluate(tiny_config("kd", True, teacher_dir, epochs=1, steps=3), str(tmp_path / "run"))


def test_an_unwritable_workdir_is_named(tmp_path, teacher_dir):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with mock_cifar100(), pytest.raises(train.ConfigError, match="is not writable.*choose another --workdir"):
        train.train_and_evaluate(tiny_config("kd", True, teacher_dir, epochs=1), str(blocker / "run"))
    assert blocker.read_text() == "not a directory"  # nothing overwritten


def test_a_missing_dataset_says_how_to_prepare_it(tmp_path, teacher_dir):
    c = tiny_config("kd", True, teacher_dir, epochs=1)
    with c.unlocked():
        c.data_dir = str(tmp_path / "no_tfds_here")
    with pytest.raises(data.DataNotFoundError, match="python -m zkd.data.prepare"):
        train.train_and_evaluate(c, str(tmp_path / "run"))


def test_a_teacher_checkpoint_of_another_class_count_is_named(tmp_path):
    teacher = save_random_teacher(str(tmp_path / "teacher10"), num_classes=10)
    with mock_cifar100(), pytest.raises(ValueError, match="num_classes=10.*asks for 100"):
        train.train_and_evaluate(tiny_config("kd", True, teacher, epochs=1), str(tmp_path / "run"))


@pytest.mark.parametrize("override, suggestion", [
    ("--config.num_epochz=3", "did you mean 'num_epochs'? (valid fields under config: "),
    ("--config.loss.temperatur=2", "did you mean 'loss.temperature'? (valid fields under config.loss: "),
], ids=["top_level", "nested"])
def test_a_misspelled_config_override_is_one_line_with_the_closest_field(override, suggestion):
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-m", "zkd.main", "--config=configs/fashion_mnist.py", override],
                          capture_output=True, text=True, cwd=repo, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    field = override.split("=")[0][len("--config."):]
    assert lines[0].startswith(f"error: unknown config field '{field}'; {suggestion}"), lines[0]
    assert done.stdout == ""  # stopped before any run started


@pytest.mark.parametrize("argument, error", [
    ("method=kdd", "error (UnknownMethodError): config.method='kdd'; valid: ce, kd, dkd, mlkd, ctkd (did you mean 'kd'?)"),
    ("lss=1", "error (ConfigError): unknown config argument 'lss' (did you mean 'ls'?); valid: epochs, "),
    ("epochs=two", "error (ConfigError): config argument epochs must be an integer, got 'two'"),
], ids=["method", "key", "value"])
def test_a_bad_config_file_argument_is_one_line(argument, error):
    """``configs/x.py:ARGS`` mistakes: one line naming the fix, exit 2, as a misspelled field."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-m", "zkd.main", f"--config=configs/fashion_mnist.py:{argument}"],
                          capture_output=True, text=True, cwd=repo, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert lines[0].startswith(error), lines[0]
    assert done.stdout == ""


INTERRUPT_WHILE_BUILDING = """
import os, runpy, signal, sys
sys.argv = ["zkd.main", *sys.argv[1:]]
from zkd import engine
build = engine.build
def interrupted_build(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the run is being built (before the loop's handler)
    return build(*args, **kwargs)
engine.build = interrupted_build
runpy.run_module("zkd.main", run_name="__main__", alter_sys=True)
"""


def test_ctrl_c_outside_the_loop_is_one_line_and_exit_130(tmp_path):
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    workdir = tmp_path / "run"
    done = subprocess.run([sys.executable, "-c", INTERRUPT_WHILE_BUILDING,
                           "--config=configs/fashion_mnist.py:method=ce,model=resnet8", f"--workdir={workdir}"],
                          capture_output=True, text=True, cwd=repo, timeout=300,
                          env={**os.environ, "PYTHONPATH": repo})
    assert done.returncode == 130, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and done.stderr.strip().splitlines()[-1].startswith("zkd: interrupted")
    assert not workdir.exists()


@pytest.mark.parametrize("arguments, error", [
    (["--config=configs/fashion_mnist.py"], "error (TeacherError): config.teacher.checkpoint is empty: point it at"),
    (["--config=configs/fashion_mnist.py:method=ce,model=resnet8", "--config.data_dir={empty}"],
     "error (DataNotFoundError): "),
], ids=["no_teacher", "no_dataset"])
def test_the_command_prints_named_errors_without_a_traceback(tmp_path, arguments, error):
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    os.makedirs(tmp_path / "empty")
    argv = [a.format(empty=tmp_path / "empty") for a in arguments] + [f"--workdir={tmp_path / 'run'}"]
    env = {k: v for k, v in os.environ.items() if k != "ZKD_TRACEBACK"}
    done = subprocess.run([sys.executable, "-m", "zkd.main", *argv], capture_output=True, text=True, cwd=repo,
                          timeout=300, env=env)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and error in done.stderr, done.stderr[-2000:]
    assert ("python -m zkd.data.prepare" in done.stderr) == ("DataNotFound" in error)  # the fix is named


def test_unknown_field_message_walks_nested_fields():
    from zkd import recipes
    from zkd.cli import unknown_field_message

    config = recipes.finalize(recipes.fashion_mnist("kd", "resnet8"))
    assert unknown_field_message(config, "loss.temperature") is None
    assert "did you mean 'loss'?" in unknown_field_message(config, "losss.temperature")
    assert unknown_field_message(config, "loss.zzzzzz").startswith(
        "error: unknown config field 'loss.zzzzzz' (valid fields under config.loss: ")
    assert "holds a value of type int, not a group of fields" in unknown_field_message(config, "num_epochs.x")


def test_a_full_disk_while_checkpointing_stops_the_run_and_keeps_the_last_checkpoint(tmp_path, teacher_dir,
                                                                                    monkeypatch, capsys):
    import errno

    import orbax.checkpoint as ocp

    real_save = ocp.JsonCheckpointHandler._save_fn

    async def disk_full_at_step_4(self, item, directory):
        # orbax writes step 4 into <workdir>/checkpoints/4.orbax-checkpoint-tmp/ in a background thread
        if directory.parent.name.split(".")[0] == "4":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory / "metadata"))
        return await real_save(self, item, directory)

    monkeypatch.setattr(ocp.JsonCheckpointHandler, "_save_fn", disk_full_at_step_4)
    workdir = str(tmp_path / "run")
    config = tiny_config("kd", True, teacher_dir, epochs=2, steps=2)  # checkpoints at steps 2 and 4
    with mock_cifar100(), pytest.raises(checkpoint.CheckpointWriteError) as err:
        train.train_and_evaluate(config, workdir)
    message = str(err.value)
    assert f"cannot write a checkpoint in {workdir}/checkpoints: no space left on the disk" in message
    assert "the latest complete checkpoint, step 2, is intact" in message
    assert "Free space on that disk, or move" in message and "--workdir" in message
    assert err.value.errno == errno.ENOSPC
    monkeypatch.undo()  # space freed
    assert checkpoint.TrainingCheckpoints(workdir).latest_step() == 2
    capsys.readouterr()
    with mock_cifar100():
        summary = train.train_and_evaluate(config, workdir)  # the same command again
    printed = capsys.readouterr().out
    assert "epoch 1/2" not in printed and "epoch 2/2" in printed, printed  # resumed from step 2
    assert summary["epochs"] == 2 and checkpoint.TrainingCheckpoints(workdir).latest_step() == 4


# ----------------------------------------------------------------------------- damaged or foreign TFDS directories

TINY_CIFAR100 = dataclasses.replace(data.DATASETS["cifar100"], train_size=30, test_size=10)


@pytest.fixture(scope="module")
def tiny_cifar100_tfds(tmp_path_factory):
    """A real TFDS data_dir holding cifar100/3.0.2 (30 train / 10 test images), written by zkd's own prepare."""
    from tests.test_data_prepare import synthetic_cifar100, write_python_archive
    from zkd.data import prepare

    root = tmp_path_factory.mktemp("tiny_tfds")
    splits, names = synthetic_cifar100(n_train=TINY_CIFAR100.train_size, n_test=TINY_CIFAR100.test_size)
    write_python_archive(root / "cifar-100-python.tar.gz", splits, names)
    prepare.prepare("cifar100", root / "cifar-100-python.tar.gz", root / "tfds", check=False)
    return root / "tfds"


def _damage(path, how):
    """Cut the file in half or flip one byte in its middle; returns the damaged bytes."""
    blob = bytearray(path.read_bytes())
    if how == "cut_in_half":
        del blob[len(blob) // 2:]
    else:
        blob[len(blob) // 2] ^= 0xFF
    path.write_bytes(bytes(blob))
    return bytes(blob)


@pytest.mark.parametrize("how, problem", [
    ("cut_in_half", "15 records, dataset_info.json lists 30 (the file is cut short)"),
    ("flipped_byte", "corrupted record at "),
], ids=["cut_in_half", "flipped_byte"])
def test_a_damaged_record_file_is_named_with_the_fix(tmp_path, tiny_cifar100_tfds, how, problem):
    data_dir = tmp_path / "tfds"
    shutil.copytree(tiny_cifar100_tfds, data_dir)
    prepared = data_dir / "cifar100" / "3.0.2"
    train_file = prepared / "cifar100-train.tfrecord-00000-of-00001"
    damaged = _damage(train_file, how)
    with pytest.raises(data.DataCorruptError) as err:
        data.load_arrays(TINY_CIFAR100, str(data_dir), "train")
    message = str(err.value)
    assert message.startswith(f"the cifar100 train split in {prepared} cannot be read: "), message
    assert f"Damaged: cifar100-train.tfrecord-00000-of-00001: {problem}" in message
    assert f"Fix: delete {prepared} and prepare cifar100 again" in message
    assert (f"python -m zkd.data.prepare --dataset cifar100 --source /path/to/cifar-100-python.tar.gz "
            f"--data_dir {data_dir}") in message
    assert isinstance(err.value, train.DataError)
    assert train_file.read_bytes() == damaged  # nothing rewritten or deleted
    # The streaming reader (ImageNet's path; its decode_jpeg reads these PNGs too) names it as well.
    _damage(prepared / "cifar100-test.tfrecord-00000-of-00001", how)
    streamed = dataclasses.replace(TINY_CIFAR100, in_memory=False)
    with pytest.raises(data.DataCorruptError, match=r"the cifar100 test split in .* cannot be read: .*"
                                                    r"The damaged file is one of cifar100-test\.\* there"):
        list(data.eval_batches(streamed, data_dir=str(data_dir), global_batch_size=4))


@pytest.mark.parametrize("asked, differences", [
    ("fashion_mnist", "name 'cifar100' (expected 'fashion_mnist'); version '3.0.2' (expected '3.0.1'); "
                      "image shape (32, 32, 3) (expected (28, 28, 1)); label classes 100 (expected 10)"),
    ("cifar10", "name 'cifar100' (expected 'cifar10'); label classes 100 (expected 10)"),
], ids=["fashion_mnist_dir_holds_cifar100", "cifar10_dir_holds_cifar100"])
def test_a_directory_prepared_for_another_dataset_is_named(tmp_path, tiny_cifar100_tfds, asked, differences):
    from zkd.data import integrity

    data_dir = tmp_path / "tfds"
    target = integrity.version_dir(data.DATASETS[asked], str(data_dir))  # e.g. <data_dir>/fashion_mnist/3.0.1
    shutil.copytree(tiny_cifar100_tfds / "cifar100" / "3.0.2", target)  # cifar100, copied to the wrong folder
    before = {f.name: f.read_bytes() for f in target.iterdir()}
    with pytest.raises(data.DatasetMismatchError) as err:
        data.load_arrays(asked, str(data_dir), "test")
    message = str(err.value)
    assert message.startswith(f"{target} does not hold the {asked!r} dataset that was asked for: its stored "
                              f"{differences}. "), message
    assert (f"Fix: move {target} to <data_dir>/cifar100/3.0.2 if that is what it holds, or delete it; "
            f"then prepare {asked}.") in message
    assert f"python -m zkd.data.prepare --dataset {asked} " in message
    assert {f.name: f.read_bytes() for f in target.iterdir()} == before  # nothing changed



def test_stored_metadata_comparison_for_streamed_datasets_and_damaged_metadata(tmp_path):
    from zkd.data import integrity

    expected = integrity.expected_metadata(data.DATASETS["imagenet2012"], "5.1.0")
    stored = {"name": "imagenet2012", "version": "5.1.0", "image_shape": (None, None, 3), "image_channels": 3,
              "num_classes": 1000}
    assert integrity.metadata_mismatches(expected, stored) == []  # any stored image size is fine for ImageNet
    gray = dict(stored, image_shape=(None, None, 1), image_channels=1)
    assert integrity.metadata_mismatches(expected, gray) == ["image channels 1 (expected 3)"]
    (tmp_path / "dataset_info.json").write_text('{"name": "cifar1')  # cut short
    with pytest.raises(data.DataCorruptError, match=f"the TFDS metadata in {tmp_path} is not valid JSON"):
        integrity.read_stored_metadata(tmp_path)


# ----------------------------------------------------------------------------- one writer per workdir


def test_a_second_launch_on_a_held_workdir_stops_naming_the_holder_and_writes_nothing(tmp_path, teacher_dir):
    from zkd import workdir as workdir_lib

    workdir = str(tmp_path / "run")
    os.makedirs(workdir)
    with workdir_lib.WorkdirHold(workdir):  # a live run (this process) holds it
        with mock_cifar100(), pytest.raises(workdir_lib.WorkdirBusyError) as err:
            train.train_and_evaluate(tiny_config("kd", True, teacher_dir, epochs=1), workdir)
        assert os.listdir(workdir) == ["zkd-hold.json"]  # nothing written
    message = str(err.value)
    assert f"workdir {workdir} is in use by another zkd run (host " in message
    assert f"pid {os.getpid()}, started " in message and "choose another --workdir" in message
    assert os.listdir(workdir) == []  # released


def test_a_stale_hold_is_taken_over_and_a_live_one_from_another_host_is_not(tmp_path):
    import json
    import socket
    import time

    from zkd import workdir as workdir_lib

    hold = tmp_path / "zkd-hold.json"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    records = {
        "dead pid on this host": dict(host=socket.gethostname(), pid=int(dead.stdout), pid_start="1"),
        "expired lease on another host": dict(host="elsewhere", pid=1, renewed=time.time() - 61, lease_seconds=60),
        "half-written": None,
    }
    for why, record in records.items():
        hold.write_text("{\"host\": " if record is None else json.dumps(record))
        with workdir_lib.WorkdirHold(str(tmp_path)):
            assert json.loads(hold.read_text())["pid"] == os.getpid(), why
        assert not hold.exists()
    hold.write_text(json.dumps(dict(host="elsewhere", pid=1, started="then", renewed=time.time(), lease_seconds=60)))
    with pytest.raises(workdir_lib.WorkdirBusyError, match="host elsewhere, pid 1, started then"):
        with workdir_lib.WorkdirHold(str(tmp_path)):
            pass
    assert json.loads(hold.read_text())["host"] == "elsewhere"  # the live holder's hold is left alone


def test_a_first_ctrl_c_asks_to_stop_and_a_second_aborts_at_once():
    import signal

    from zkd import preemption

    before = signal.getsignal(signal.SIGINT)  # Python's default_int_handler, or SIG_IGN under nohup
    with preemption.StopRequests() as stop:
        handler = signal.getsignal(signal.SIGINT)  # what Python runs on a SIGINT (called here synchronously)
        assert not stop.should_stop(1)
        handler(signal.SIGINT, None)
        assert stop.signal_name == "SIGINT" and stop.should_stop(2)
        with pytest.raises(KeyboardInterrupt, match="second Ctrl-C"):
            handler(signal.SIGINT, None)
    assert signal.getsignal(signal.SIGINT) is before  # restored


def test_tensorboard_plots_curves_not_bookkeeping(tmp_path):
    """An eval record's count and epoch stay in metrics.jsonl but are no TensorBoard curves; the
    event file written is read back with TensorFlow's own reader."""
    import tensorflow as tf

    writer = metrics_io.MetricWriter(str(tmp_path), tensorboard=True)
    writer.write(10, "eval", {"top1": 50.0, "loss": 1.5, "count": 64.0, "epoch": 1.0})
    writer.write(10, "train", {"loss": 2.0})
    writer.close()
    tags = set()
    for event_file in tf.io.gfile.glob(str(tmp_path / "tensorboard" / "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(event_file):
            tags.update(v.tag for v in event.summary.value)
    assert tags == {"eval/top1", "eval/loss", "train/loss"}
    (record,) = metrics_io.read_metrics(str(tmp_path), "eval")
    assert (record["count"], record["epoch"]) == (64.0, 1.0)
