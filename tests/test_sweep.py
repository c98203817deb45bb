"""Sweeps (zkd.sweep): the grid, one teacher forward for N students, and every student equal to
its own single run (tiny models on synthetic CIFAR-100)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.train_fixtures import mock_cifar100, save_random_teacher, tiny_config
from zkd import checkpoint, metrics_io, models, optim, recipes, sweep, train
from zkd import step as step_lib


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    return save_random_teacher(str(tmp_path_factory.mktemp("teacher") / "resnet8"))


def sweep_config(method="kd", ls=True, teacher_checkpoint="", epochs=2, **axes):
    c = tiny_config(method, ls, teacher_checkpoint, epochs=epochs)
    for axis, values in axes.items():
        c.sweep[axis] = tuple(values)
    return c


def latest_params(workdir):
    ck = checkpoint.TrainingCheckpoints(workdir)
    step = ck.latest_step()
    import orbax.checkpoint as ocp

    restored = ck._latest.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    ck.close()
    return step, restored["state"]


# ----------------------------------------------------------------------------- the grid


def test_grid_is_the_cartesian_product_with_single_run_configs():
    c = sweep_config(temperature=(2, 3), kd_weight=(3, 6, 9))
    c.seed = 4
    points = sweep.grid_points(c)
    assert [p.name for p in points] == ["T2_kd3", "T2_kd6", "T2_kd9", "T3_kd3", "T3_kd6", "T3_kd9"]
    p = points[4]
    assert p.values == {"temperature": 3.0, "kd_weight": 6.0}
    assert p.config.loss.temperature == 3.0 and p.config.loss.kd_weight == 6.0
    assert p.config.data_seed == 4 and p.config.seed == 4  # the sweep's data stream
    assert recipes.swept_axes(p.config) == {}  # a single run
    with pytest.raises(AttributeError):
        p.config.num_epochz = 1  # locked like any config
    seeds = sweep.grid_points(sweep_config(seed=(0, 7), logit_stand=(0, 1)))
    assert [p.name for p in seeds] == ["ls0_seed0", "ls0_seed7", "ls1_seed0", "ls1_seed7"]  # SWEEP_AXES order
    assert seeds[1].config.seed == 7 and seeds[1].config.data_seed == 0 and seeds[1].config.logit_stand is False


@pytest.mark.parametrize("method, axes, match", [
    ("kd", {"dkd_beta": (4, 8)}, "no effect on method 'kd'"),
    ("dkd", {"kd_weight": (1, 2)}, "no effect on method 'dkd'"),
    ("kd", {"temperature": (2, 2)}, "repeats a value"),
    ("kd", {"temperature": (0, 2)}, "must be > 0"),
    ("kd", {"kd_weight": (-1, 2)}, ">= 0"),
    ("kd", {"logit_stand": (0, 2)}, "0/1"),
    ("kd", {"seed": (0.5,)}, "integers"),
])
def test_bad_grids_are_named(method, axes, match):
    with pytest.raises(train.ConfigError, match=match):
        sweep.grid_points(sweep_config(method, **axes))


def test_a_single_run_refuses_a_sweep_config(tmp_path):
    with pytest.raises(train.ConfigError, match="zkd.sweep.train_sweep"):
        train.train_and_evaluate(sweep_config(temperature=(2, 3)), str(tmp_path / "run"))


# ----------------------------------------------------------------------------- the step


def test_the_sweep_step_runs_the_teacher_once_for_all_students():
    c = sweep_config(temperature=(2, 3, 4))
    points = sweep.grid_points(c)
    student, teacher = models.build("resnet8", 100), models.build("resnet8", 100)
    t_vars = teacher.init(jax.random.key(1), jnp.zeros((1, 32, 32, 3)), train=False)
    calls = []

    def counting_apply(variables, images, train):
        calls.append(images.shape)
        return teacher.apply(variables, images, train=train)

    lr_fn, tx = optim.piecewise_epoch_schedule(0.05, 2, ()), optim.torch_sgd(optim.piecewise_epoch_schedule(0.05, 2, ()))
    state = sweep.create_sweep_state(points, student, (32, 32, 3), tx, teacher, t_vars)
    state = state.replace(teacher_apply_fn=counting_apply)
    step = sweep.make_sweep_step(sweep.sweep_settings(c, points, 2, lr_fn))
    batch = {"image": jnp.zeros((8, 32, 32, 3)), "label": jnp.arange(8, dtype=jnp.int32)}
    new_state, metrics = jax.jit(step)(state, batch, jax.random.key(0))
    assert calls == [(8, 32, 32, 3)]  # traced once, on the unbatched images
    assert metrics["kd"].shape == (3,) and np.all(np.isfinite(metrics["loss"]))
    assert new_state.students.step.tolist() == [1, 1, 1]
    # The teacher's variables are shared, not stacked.
    assert jax.tree.leaves(new_state.teacher_variables)[0].shape == jax.tree.leaves(t_vars)[0].shape


def test_vmapped_and_unrolled_students_take_the_same_step():
    c = sweep_config("dkd", temperature=(2, 4), logit_stand=(0, 1))
    points = sweep.grid_points(c)
    student, teacher = models.build("resnet8", 100), models.build("resnet8", 100)
    t_vars = teacher.init(jax.random.key(1), jnp.zeros((1, 32, 32, 3)), train=False)
    lr_fn = optim.piecewise_epoch_schedule(0.05, 2, ())
    state = sweep.create_sweep_state(points, student, (32, 32, 3), optim.torch_sgd(lr_fn), teacher, t_vars)
    settings = sweep.sweep_settings(c, points, 2, lr_fn)
    assert settings.logit_stand is None
    batch = {"image": jax.random.normal(jax.random.key(2), (8, 32, 32, 3)), "label": jnp.arange(8, dtype=jnp.int32)}
    out = {mode: jax.jit(sweep.make_sweep_step(settings, mode))(state, batch, jax.random.key(0))
           for mode in sweep.VECTORIZE}
    (a, ma), (b, mb) = out["unroll"], out["vmap"]
    for k in ma:
        np.testing.assert_allclose(ma[k], mb[k], rtol=1e-4, atol=1e-6, err_msg=k)
    # The parameter updates agree to float32 roundoff (grouped vs. plain convolutions sum in
    # another order): relative to the update's norm, per student.
    before = jax.tree.leaves(state.students.params)
    for i in range(len(points)):
        da = np.concatenate([np.ravel(x[i] - x0[i]) for x, x0 in zip(jax.tree.leaves(a.students.params), before)])
        db = np.concatenate([np.ravel(y[i] - x0[i]) for y, x0 in zip(jax.tree.leaves(b.students.params), before)])
        assert np.linalg.norm(da - db) <= 2e-3 * np.linalg.norm(db), np.linalg.norm(da - db) / np.linalg.norm(db)
    variables = {"params": a.students.params["student"], "batch_stats": a.students.batch_stats}
    eval_batch = dict(batch, mask=jnp.arange(8) < 6)
    sums = {mode: jax.jit(sweep.make_sweep_eval_step(student.apply, len(points), mode))(variables, eval_batch)
            for mode in sweep.VECTORIZE}
    single = step_lib.make_eval_step(student.apply)(sweep.student_slice(variables, 1), eval_batch)
    for k in single:
        np.testing.assert_allclose(sums["unroll"][k][1], single[k], rtol=1e-5, err_msg=k)
        np.testing.assert_allclose(sums["vmap"][k], sums["unroll"][k], rtol=1e-4, atol=1e-5, err_msg=k)
    with pytest.raises(train.ConfigError, match="valid: unroll, vmap"):
        sweep.make_sweep_step(settings, "pmap")


def test_mixed_logit_stand_selects_per_student():
    """A stack mixing LS on/off computes, for each student, the loss its own single run computes."""
    k = jax.random.split(jax.random.key(3), 3)
    z, v = jax.random.normal(k[0], (6, 10)) * 3, jax.random.normal(k[1], (6, 10)) * 5
    labels = jax.random.randint(k[2], (6,), 0, 10)
    base = step_lib.StepSettings("kd", 10, lambda s: 0.1, logit_stand=None, temperature=2.0, kd_weight=9.0)
    hp = step_lib.LossHParams(ce_weight=jnp.array([0.1, 0.1]), kd_weight=jnp.array([9.0, 9.0]),
                              temperature=jnp.array([2.0, 2.0]), dkd_alpha=jnp.ones(2), dkd_beta=jnp.ones(2),
                              logit_stand=jnp.array([True, False]))
    terms = jax.vmap(lambda h: step_lib.loss_terms(base, None, z, v, labels, 1.0, h))(hp)
    for i, ls in enumerate((True, False)):
        single = step_lib.StepSettings("kd", 10, lambda s: 0.1, logit_stand=ls, temperature=2.0, kd_weight=9.0,
                                       ce_weight=0.1)
        expected = step_lib.loss_terms(single, None, z, v, labels, 1.0)
        np.testing.assert_allclose(terms["kd"][i], expected["kd"], rtol=1e-6)
        np.testing.assert_allclose(terms["ce"][i], expected["ce"], rtol=1e-6)
    assert not np.isclose(terms["kd"][0], terms["kd"][1])


# ----------------------------------------------------------------------------- whole runs


def _assert_student_equals_single_run(student_dir, single_dir):
    step_a, a = latest_params(student_dir)
    step_b, b = latest_params(single_dir)
    assert step_a == step_b
    # float32 roundoff (vmapped convolutions sum in another order), grown over a few SGD steps:
    # every tensor within 1e-3 of its own scale; another seed or batch differs at order 1.
    for x, y in zip(jax.tree.leaves(a["params"]), jax.tree.leaves(b["params"])):
        x, y = np.asarray(x), np.asarray(y)
        assert np.max(np.abs(x - y)) <= 1e-3 * np.max(np.abs(y)) + 1e-7
    ea, eb = metrics_io.read_metrics(student_dir, "eval"), metrics_io.read_metrics(single_dir, "eval")
    assert [e["epoch"] for e in ea] == [e["epoch"] for e in eb]
    np.testing.assert_allclose([e["loss"] for e in ea], [e["loss"] for e in eb], rtol=1e-4)
    np.testing.assert_allclose([e["top1"] for e in ea], [e["top1"] for e in eb])
    ta, tb = metrics_io.read_metrics(student_dir, "train"), metrics_io.read_metrics(single_dir, "train")
    np.testing.assert_allclose([t["loss"] for t in ta], [t["loss"] for t in tb], rtol=1e-4)
    assert set(ta[0]) == set(tb[0])
    for term in {"ce", "kd", "dkd"} & set(tb[0]):
        np.testing.assert_allclose([t[term] for t in ta], [t[term] for t in tb], rtol=1e-4)


def test_each_student_of_a_kd_sweep_equals_its_single_run(tmp_path, teacher_dir):
    """T x LS grid (LS mixed, so selected per student): every student's parameters and metrics
    equal a separate single run of its config; the ranking and summaries are written."""
    c = sweep_config("kd", True, teacher_dir, temperature=(2, 4), logit_stand=(0, 1))
    workdir = str(tmp_path / "sweep")
    with mock_cifar100():
        result = sweep.train_sweep(c, workdir)
        singles = {p.name: train.train_and_evaluate(p.config, str(tmp_path / p.name)) for p in sweep.grid_points(c)}
    assert result["students"] == 4 and [p["name"] for p in result["points"]] == list(singles)
    for point in result["points"]:
        _assert_student_equals_single_run(point["workdir"], str(tmp_path / point["name"]))
        assert point["best_top1"] == pytest.approx(singles[point["name"]]["best_top1"])
        with open(os.path.join(point["workdir"], "config.json")) as f:
            assert json.load(f)["sweep"]["temperature"] == []
    with open(os.path.join(workdir, "sweep.json")) as f:
        saved = json.load(f)
    best = sorted(saved["points"], key=lambda p: (-p["best_top1"], -p["last_top1"]))
    rows = [line for line in open(os.path.join(workdir, "sweep.md")) if line.startswith("| 1 ")]
    assert rows and rows[0].rstrip().endswith(f"| {best[0]['name']} |")
    # Each student's directory is a complete run: its best checkpoint loads as a model.
    assert checkpoint.restore_best_student(result["points"][0]["workdir"]) is not None


def test_a_seed_axis_varies_initialisation_over_the_shared_data_stream(tmp_path, teacher_dir):
    c = sweep_config("dkd", True, teacher_dir, seed=(1, 2))
    c.loss.dkd_warmup_epochs = 1.0
    workdir = str(tmp_path / "sweep")
    with mock_cifar100():
        sweep.train_sweep(c, workdir)
        for p in sweep.grid_points(c):
            assert p.config.seed in (1, 2) and p.config.data_seed == 0
            train.train_and_evaluate(p.config, str(tmp_path / p.name))
    for name in ("seed1", "seed2"):
        _assert_student_equals_single_run(os.path.join(workdir, "students", name), str(tmp_path / name))
    a = metrics_io.read_metrics(os.path.join(workdir, "students", "seed1"), "train")
    b = metrics_io.read_metrics(os.path.join(workdir, "students", "seed2"), "train")
    assert a[0]["loss"] != b[0]["loss"]


def test_a_resumed_sweep_ends_where_an_uninterrupted_one_does(tmp_path, teacher_dir):
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    with mock_cifar100():
        sweep.train_sweep(sweep_config("kd", True, teacher_dir, epochs=2, kd_weight=(1, 5)), straight)
        sweep.train_sweep(sweep_config("kd", True, teacher_dir, epochs=1, kd_weight=(1, 5)), resumed)
        result = sweep.train_sweep(sweep_config("kd", True, teacher_dir, epochs=2, kd_weight=(1, 5)), resumed)
    assert result["epochs"] == 2
    for name in ("kd1", "kd5"):
        a, b = (os.path.join(d, "students", name) for d in (straight, resumed))
        _assert_student_equals_single_run(a, b)
        assert len(metrics_io.read_metrics(b, "eval")) == 2


def test_a_diverging_student_stops_the_sweep_naming_it(tmp_path, teacher_dir):
    c = sweep_config("kd", True, teacher_dir, temperature=(4, 1e-38))
    c.logit_stand = False
    workdir = str(tmp_path / "sweep")
    with mock_cifar100(), pytest.raises(train.NonFiniteError, match=r"student T1e-38: non-finite values at step 0"):
        sweep.train_sweep(c, workdir)
    assert checkpoint.TrainingCheckpoints(workdir).latest_step() is None


def test_the_zkd_command_trains_a_grid_given_on_the_command_line():
    """`--config.sweep.<axis>="(a, b)"` reaches zkd.sweep through the real entry point (train_sweep
    replaced by a probe in the child process)."""
    import subprocess
    import sys

    probe = (
        "import sys\n"
        "from zkd import main, sweep\n"
        "def probe(config, workdir, allow_config_change=False):\n"
        "    print('GRID', [p.name for p in sweep.grid_points(config)], workdir)\n"
        "    raise SystemExit(0)\n"
        "sweep.train_sweep = probe\n"
        "sys.argv = ['zkd', '--config=configs/cifar100.py:method=dkd', '--config.sweep.temperature=(2, 3)',\n"
        "            '--config.sweep.dkd_beta=(4, 8)']\n"
        "main.run()\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", probe], cwd=root, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "GRID ['T2_beta4', 'T2_beta8', 'T3_beta4', 'T3_beta8'] workdirs/cifar100/sweep_dkd/" in out.stdout
