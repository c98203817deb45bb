"""The trainer end to end on mock CIFAR-100 with tiny models: outputs, resume, exact evaluation,
config safety, trace-once, and devices."""

import json
import os

import flax.linen as nn
import jax
import numpy as np
import pytest

from tests.train_fixtures import N_MOCK, mock_cifar100, save_random_teacher, tiny_config
from zkd import checkpoint, data, metrics_io, models, train
from zkd import step as step_lib


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    return save_random_teacher(str(tmp_path_factory.mktemp("teacher") / "resnet8"))


def _params(workdir):
    return checkpoint.restore_best_student(workdir)


def test_kd_ls_run_writes_everything_and_evaluates_exactly(tmp_path, teacher_dir):
    workdir = str(tmp_path / "run")
    with mock_cifar100():
        summary = train.train_and_evaluate(tiny_config("kd", True, teacher_dir), workdir)
    for name in ("config.json", "metrics.jsonl", "summary.json", "checkpoints", "tensorboard"):
        assert os.path.exists(os.path.join(workdir, name)), name
    evals = metrics_io.read_metrics(workdir, "eval")
    assert [e["epoch"] for e in evals] == [1, 2]
    assert all(e["count"] == N_MOCK for e in evals)  # every test image exactly once
    teacher = metrics_io.read_metrics(workdir, "teacher")
    assert len(teacher) == 1 and teacher[0]["count"] == N_MOCK
    trains = metrics_io.read_metrics(workdir, "train")
    for key in ("ce", "kd", "loss", "accuracy", "learning_rate", "grad_norm", "param_norm", "agreement",
                "logit_std_student", "logit_std_teacher"):
        assert key in trains[0], key
    assert summary["epochs"] == 2
    assert summary["best_top1"] == max(e["top1"] for e in evals)
    assert summary["last_top1"] == evals[-1]["top1"]
    with open(os.path.join(workdir, "summary.json")) as f:
        assert json.load(f)["best_top1"] == summary["best_top1"]
    assert 0 <= summary["agreement"] <= 100 and "agreement" in evals[-1]


def test_resume_continues_to_the_same_parameters(tmp_path, teacher_dir, capsys):
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    with mock_cifar100():
        train.train_and_evaluate(tiny_config("dkd", True, teacher_dir, epochs=3), straight)
        train.train_and_evaluate(tiny_config("dkd", True, teacher_dir, epochs=1), resumed)
        capsys.readouterr()
        summary = train.train_and_evaluate(tiny_config("dkd", True, teacher_dir, epochs=3), resumed)
        assert f"zkd: resuming at step 2 of 6 (epoch 2 of 3) from {resumed}" in capsys.readouterr().out
        again = train.train_and_evaluate(tiny_config("dkd", True, teacher_dir, epochs=3), resumed)
        assert f"zkd: {resumed} is already complete (6 steps, 3 epochs): nothing to train" in capsys.readouterr().out
    assert summary["epochs"] == 3 and again["best_top1"] == summary["best_top1"]
    a = checkpoint.TrainingCheckpoints(straight).latest_step()
    b = checkpoint.TrainingCheckpoints(resumed).latest_step()
    assert a == b == 6
    ea = metrics_io.read_metrics(straight, "eval")
    eb = metrics_io.read_metrics(resumed, "eval")
    np.testing.assert_allclose([e["loss"] for e in ea], [e["loss"] for e in eb], rtol=1e-5)


def test_refuses_to_resume_a_workdir_of_another_run(tmp_path, teacher_dir):
    workdir = str(tmp_path / "run")
    with mock_cifar100():
        train.train_and_evaluate(tiny_config("kd", True, teacher_dir, epochs=1), workdir)
        with pytest.raises(train.ConfigError, match="holds a different run.*logit_stand"):
            train.train_and_evaluate(tiny_config("kd", False, teacher_dir, epochs=1), workdir)


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("method", "fitnet", "config.method='fitnet'; valid: ce, kd, dkd, mlkd, ctkd"),
        ("dataset", "svhn", "config.dataset='svhn'; valid"),
        ("student.name", "resnet9", "config.student.name='resnet9' is not a cifar model; valid: .*resnet8"),
        ("batch_size", 10, "batch_size=10 is not divisible by the 8 devices"),
    ],
)
def test_bad_config_values_fail_before_training(tmp_path, teacher_dir, field, value, match):
    c = tiny_config("kd", True, teacher_dir)
    with c.unlocked():
        section, _, key = field.rpartition(".")
        (c[section] if section else c)[key] = value
    with mock_cifar100(), pytest.raises(ValueError, match=match):
        train.train_and_evaluate(c, str(tmp_path / "run"))


def test_a_start_that_fails_before_its_first_step_leaves_the_workdir_as_it_found_it(tmp_path, teacher_dir):
    """CIFAR-100 not prepared in data_dir: the teacher's evaluation cannot read it. A workdir the
    start created is removed, one that held a file of the user's keeps just that file, and the
    corrected command then trains in the same workdir (it used to be refused as another run's)."""
    c = tiny_config("kd", True, teacher_dir, epochs=1)
    with c.unlocked():
        c.data_dir = str(tmp_path / "not_prepared")
    os.makedirs(c.data_dir)
    fresh, kept = tmp_path / "fresh", tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    for workdir in (fresh, kept):
        with pytest.raises(data.DataNotFoundError, match="not prepared"):
            train.train_and_evaluate(c, str(workdir))
    assert not fresh.exists() and sorted(os.listdir(kept)) == ["notes.txt"]
    with mock_cifar100():
        train.train_and_evaluate(tiny_config("kd", True, teacher_dir, epochs=1), str(fresh))
    assert (fresh / "summary.json").exists()


def test_teacher_of_another_architecture_is_named(tmp_path, teacher_dir):
    c = tiny_config("kd", True, teacher_dir, teacher="resnet14")
    with mock_cifar100(), pytest.raises(ValueError, match="resnet8.*resnet14|resnet14.*resnet8"):
        train.train_and_evaluate(c, str(tmp_path / "run"))


def test_the_compiled_step_traces_once_per_run(tmp_path, teacher_dir, monkeypatch):
    traces = []
    make = step_lib.make_run_step

    def counting_make(settings, vectorize="unroll"):
        inner = make(settings, vectorize)

        def step(state, batch):
            traces.append(1)
            return inner(state, batch)

        return step

    monkeypatch.setattr(step_lib, "make_run_step", counting_make)
    with mock_cifar100():
        train.train_and_evaluate(tiny_config("kd", True, teacher_dir, epochs=2, steps=3), str(tmp_path / "run"))
    assert len(traces) == 1


def _fit_counting_dispatches(config, workdir, stop_after_dispatches=-1):
    """``train.fit`` of ``config``; returns how many multi-step dispatches ran. With
    ``stop_after_dispatches`` = n, SIGTERM arrives during the (n+1)-th call of either step."""
    import dataclasses
    import signal

    from zkd import engine, grid

    points = grid.single_point(config)
    run = engine.build(config, points)
    calls = {"multi": 0, "all": 0}

    def counted(fn, multi):
        def call(state, batch):
            if calls["all"] == stop_after_dispatches:
                signal.raise_signal(signal.SIGTERM)  # train.StopRequests takes it; the loop saves and stops
            calls["all"] += 1
            calls["multi"] += multi
            return fn(state, batch)
        return call

    run = dataclasses.replace(run, train_step=counted(run.train_step, 0),
                              train_steps=run.train_steps and counted(run.train_steps, 1))
    train.fit(config, workdir, points, run=run)
    return calls["multi"]


def test_several_steps_per_dispatch_take_the_single_steps(tmp_path, teacher_dir):
    """config.steps_per_dispatch = 3 with device-resident data: whole dispatches where no boundary
    falls inside them (metrics flush every 4 steps, step checkpoint every 5, epochs of 7), single
    steps elsewhere; the same parameters, metrics and checkpoints as one step per dispatch, and a
    SIGTERM between dispatches resumes to the same end."""
    def config(k):
        c = tiny_config("kd", True, teacher_dir, epochs=2, steps=7)
        c.device_resident_data, c.steps_per_dispatch = True, k
        c.log_every_steps, c.checkpoint_every_steps = 4, 5
        c.tensorboard = False  # and no event files (a machine without TensorFlow's writer)
        return c

    one, three, resumed = (str(tmp_path / name) for name in ("one", "three", "resumed"))
    with mock_cifar100(128):
        assert _fit_counting_dispatches(config(1), one) == 0
        # epoch 1 (steps 0-6): [0-2] 3 4 5 6 (4-6 would cross the checkpoint after step 5, 5-7 the
        # epoch's end); epoch 2 (steps 7-13): [7-9] 10 [11-13] (10-12 would cross the flush at 11).
        assert _fit_counting_dispatches(config(3), three) == 3
        with pytest.raises(train.Preempted, match="after step 10"):
            _fit_counting_dispatches(config(3), resumed, stop_after_dispatches=5)  # during [7-9]
        assert _fit_counting_dispatches(config(3), resumed) == 1  # from step 10: 10 [11-13]
    for other in (three, resumed):
        # A loop body compiles to other fusions than the lone step: float32 roundoff (~2e-6 in the
        # weights after 3 steps), which this fast-moving tiny run (loss 8.2 -> 1.4 in 3 steps)
        # amplifies to ~5e-3 of a small tensor's scale by step 14 (its metrics to ~1e-3);
        # another batch or a lost step changes the flushed losses by percents.
        for a, b in zip(jax.tree.leaves(_params(one)), jax.tree.leaves(_params(other))):
            a, b = np.asarray(a), np.asarray(b)
            assert np.max(np.abs(a - b)) <= 2e-2 * np.max(np.abs(a)) + 1e-7
        for kind in ("train", "eval"):
            ma, mb = metrics_io.read_metrics(one, kind), metrics_io.read_metrics(other, kind)
            assert [m["step"] for m in ma] == [m["step"] for m in mb]
            for x, y in zip(ma, mb):
                for key in x:
                    if key not in ("kind", "images_per_second") and isinstance(x[key], float):
                        np.testing.assert_allclose(x[key], y[key], rtol=5e-3, atol=1e-5, err_msg=f"{kind} {key}")
    assert sorted(os.listdir(os.path.join(one, "checkpoints"))) == sorted(os.listdir(os.path.join(three, "checkpoints")))
    assert not any(os.path.exists(os.path.join(d, "tensorboard")) for d in (one, three, resumed))


def test_a_mid_epoch_stop_flushes_its_metrics_and_its_checkpoint_holds_no_half_epoch(tmp_path, teacher_dir):
    """A stop inside a log window (log_every_steps 2, epochs of 3 steps: stopped after step 4, the
    window holding step 3) flushes that window as a train record at step 4 before it saves, and the
    checkpoint's meta holds cumulative counters only. The restart folds the record back into its
    window and ends at the uninterrupted run: the same records (float32 roundoff) and parameters
    (bit for bit). So does a restart from a checkpoint written before the flat loop (meta "step"
    and "partial", the window's metrics in meta and not in metrics.jsonl)."""
    def config():
        c = tiny_config("kd", True, teacher_dir, epochs=2, steps=3)
        c.log_every_steps = 2
        return c

    straight, resumed, older = (str(tmp_path / name) for name in ("straight", "resumed", "older"))
    with mock_cifar100():
        train.train_and_evaluate(config(), straight)
        for workdir in (resumed, older):
            with pytest.raises(train.Preempted, match="after step 4"):
                _fit_counting_dispatches(config(), workdir, stop_after_dispatches=3)  # SIGTERM during step 3
    ck = checkpoint.TrainingCheckpoints(resumed)
    assert ck.latest_step() == 4
    _, meta = ck.restore_latest(None)
    ck.close()
    assert set(meta) == {"epoch", "steps_per_epoch", "train_seconds", "train_images", "students"}, meta
    assert meta["epoch"] == 1 and meta["train_images"] == 4 * 16 and meta["train_seconds"] > 0
    assert [t["step"] for t in metrics_io.read_metrics(straight, "train")] == [2, 3, 5, 6]
    trains = metrics_io.read_metrics(resumed, "train")
    assert [t["step"] for t in trains] == [2, 3, 4]  # step 3's metrics, flushed before the save
    assert all(np.isfinite(v) for v in trains[-1].values() if isinstance(v, float))

    # The same stop as an older zkd saved it: step 3's metrics pending in meta, not logged.
    with open(os.path.join(older, "metrics.jsonl")) as f:
        lines = f.read().splitlines(keepends=True)
    assert json.loads(lines[-1])["step"] == 4
    with open(os.path.join(older, "metrics.jsonl"), "w") as f:
        f.writelines(lines[:-1])
    pending = {k: v for k, v in json.loads(lines[-1]).items() if k not in ("step", "kind")}
    meta_file = os.path.join(older, "checkpoints", "4", "meta", "metadata")
    with open(meta_file) as f:
        meta = json.load(f)
    del meta["steps_per_epoch"]
    meta.update(step=4, train_images=3 * 16, partial={"pending": [[pending]], "epoch_sums": [{}], "seconds": 1.0})
    with open(meta_file, "w") as f:
        json.dump(meta, f)

    with mock_cifar100():
        for workdir in (resumed, older):
            summary = train.train_and_evaluate(config(), workdir)
            assert summary["epochs"] == 2
            ck = checkpoint.TrainingCheckpoints(workdir)
            _, meta = ck.restore_latest(None)
            ck.close()
            assert set(meta) == {"epoch", "steps_per_epoch", "train_seconds", "train_images", "students"}, meta
            assert meta["train_images"] == 6 * 16
            ma, mb = metrics_io.read_metrics(straight), metrics_io.read_metrics(workdir)
            assert [(m["kind"], m["step"]) for m in ma] == [(m["kind"], m["step"]) for m in mb]
            for x, y in zip(ma, mb):
                assert set(x) == set(y)
                for key in x:
                    if key != "images_per_second" and isinstance(x[key], float):
                        np.testing.assert_allclose(y[key], x[key], rtol=1e-6, err_msg=f"{x['kind']} {x['step']} {key}")
            jax.tree.map(np.testing.assert_array_equal, _params(straight), _params(workdir))


def test_a_run_checkpointed_on_8_devices_resumes_on_4_to_the_same_result(tmp_path, teacher_dir, monkeypatch):
    """config.num_devices may change on resume (zkd.workdir.RESUMABLE_CHANGES): a run preempted
    mid-epoch on 8 devices, its checkpoint restored onto a 4-device mesh, ends where the
    uninterrupted 8-device run ends (metrics and parameters within float32 roundoff)."""
    from zkd import parallel

    meshes, make_mesh = [], parallel.make_mesh
    monkeypatch.setattr(parallel, "make_mesh", lambda n=None: meshes.append(n) or make_mesh(n))

    def config(devices):
        c = tiny_config("kd", True, teacher_dir, epochs=2, steps=3)
        c.num_devices = devices
        return c

    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    with mock_cifar100():
        train.train_and_evaluate(config(8), straight)
        with pytest.raises(train.Preempted, match="after step 5"):
            _fit_counting_dispatches(config(8), resumed, stop_after_dispatches=4)  # in epoch 2 (steps 3-5)
        assert checkpoint.TrainingCheckpoints(resumed).latest_step() == 5
        train.train_and_evaluate(config(4), resumed)
    assert meshes == [8, 8, 4]
    ma, mb = metrics_io.read_metrics(straight), metrics_io.read_metrics(resumed)
    assert [(m["kind"], m["step"]) for m in ma] == [(m["kind"], m["step"]) for m in mb]
    for x, y in zip(ma, mb):
        assert set(x) == set(y)
        for key in x:
            if key != "images_per_second" and isinstance(x[key], float):
                np.testing.assert_allclose(y[key], x[key], rtol=1e-5, atol=1e-7,
                                           err_msg=f"{x['kind']} {x['step']} {key}")
    for a, b in zip(jax.tree.leaves(_params(straight)), jax.tree.leaves(_params(resumed))):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)


def test_a_single_run_is_one_point_and_a_sweep_says_so(tmp_path, teacher_dir):
    """Whether fit trains a sweep is its explicit ``sweep`` argument, never read from the points."""
    from zkd import grid

    c = tiny_config("kd", True, teacher_dir)
    c.sweep.kd_weight = (1.0, 5.0)
    with pytest.raises(ValueError, match="a single run trains one grid point, not 2: pass sweep=True"):
        train.fit(c, str(tmp_path / "run"), grid.grid_points(c))
    assert not os.path.exists(tmp_path / "run")  # refused before anything was written


def test_several_steps_per_dispatch_need_device_resident_data(tmp_path, teacher_dir):
    c = tiny_config("kd", True, teacher_dir)
    c.steps_per_dispatch = 4
    with mock_cifar100(), pytest.raises(ValueError, match="config.device_resident_data=True"):
        train.train_and_evaluate(c, str(tmp_path / "run"))
    c.device_resident_data, c.steps_per_dispatch = True, 0
    with mock_cifar100(), pytest.raises(ValueError, match="steps_per_dispatch must be an integer >= 1"):
        train.train_and_evaluate(c, str(tmp_path / "run"))


# ----------------------------------------------------------------------------- randomness


class DropoutNet(nn.Module):
    """A tiny student with dropout: its training step draws from the "dropout" stream."""

    num_classes: int = 100

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(nn.Dense(32)(x.reshape((x.shape[0], -1))))
        x = nn.Dropout(0.5, deterministic=not train)(x)
        return nn.Dense(self.num_classes)(x)


if "dropout_net_test" not in models.available("cifar"):
    models.register("dropout_net_test")(lambda num_classes, dtype=None: DropoutNet(num_classes))


def test_the_step_key_is_folded_from_the_seed_and_the_step():
    """Dropout masks are a function of the run's key and the step number: the same state, batch
    and step give the same update, another step number another one."""
    import dataclasses

    import jax
    import jax.numpy as jnp

    from zkd import data, engine, parallel

    info = dataclasses.replace(data.get_info("cifar100"), train_size=32, test_size=32)
    batch = {"image": np.random.default_rng(0).standard_normal((16, 32, 32, 3)).astype(np.float32),
             "label": np.arange(16, dtype=np.int32)}

    def grad_norm(seed, step):
        c = tiny_config("ce", student="dropout_net_test", seed=seed)
        run = engine.build(c, info=info, mesh=parallel.make_mesh(1))
        state = run.state.replace(students=(run.state.students[0].replace(step=jnp.asarray(step, jnp.int32)),))
        state = parallel.replicate(jax.tree.map(jnp.copy, state), run.mesh)
        return float(run.train_step(state, parallel.global_batch(batch, run.mesh))[1][0]["grad_norm"])

    assert grad_norm(0, 3) == grad_norm(0, 3)
    assert grad_norm(0, 3) != grad_norm(0, 4)


def test_a_model_with_dropout_resumes_to_the_same_parameters(tmp_path):
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    config = lambda epochs: tiny_config("ce", student="dropout_net_test", epochs=epochs, steps=2)  # noqa: E731
    with mock_cifar100():
        train.train_and_evaluate(config(2), straight)
        train.train_and_evaluate(config(1), resumed)
        train.train_and_evaluate(config(2), resumed)
    a, b = checkpoint.restore_best_student(straight), checkpoint.restore_best_student(resumed)
    np.testing.assert_equal(a, b)
    ta, tb = metrics_io.read_metrics(straight, "train"), metrics_io.read_metrics(resumed, "train")
    assert [t["loss"] for t in ta] == [t["loss"] for t in tb]


def test_teacher_from_a_zkd_run_and_from_a_pytorch_file(tmp_path):
    import torch

    from tests.torch_reference import resnets
    from zkd import convert

    teacher_run = str(tmp_path / "teacher_run")
    with mock_cifar100():
        train.train_and_evaluate(tiny_config("ce", student="resnet8", epochs=1), teacher_run)
        summary = train.train_and_evaluate(tiny_config("kd", True, teacher_run, epochs=1), str(tmp_path / "from_run"))
    assert summary["epochs"] == 1

    def refuse(constant):
        raise ValueError(f"{constant} is not strict JSON")

    teacher_summary = json.loads(open(os.path.join(teacher_run, "summary.json")).read(), parse_constant=refuse)
    assert teacher_summary["agreement"] is None  # a teacher run has no teacher to agree with: null, not NaN
    teacher_top1 = metrics_io.read_metrics(str(tmp_path / "from_run"), "teacher")[0]["top1"]
    assert teacher_top1 == metrics_io.read_metrics(teacher_run, "eval")[0]["top1"]  # the best checkpoint

    torch.manual_seed(0)
    pth = str(tmp_path / "ckpt_epoch_240.pth")
    torch.save({"model": resnets.cifar_resnet("resnet8", 100).state_dict(), "epoch": 240}, pth)
    with mock_cifar100():
        summary = train.train_and_evaluate(tiny_config("kd", False, pth, epochs=1), str(tmp_path / "from_pth"))
    assert summary["epochs"] == 1
    assert convert.from_torch_checkpoint(pth, "resnet8", 100)["params"]  # the same file, converted
