"""Sweeps (zkd.sweep): the grid, one teacher forward for N students, and every student equal to
its own single run (tiny models on synthetic CIFAR-100)."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from tests.train_fixtures import mock_cifar100, save_random_teacher, tiny_config
from zkd import checkpoint, data, engine, methods, metrics_io, models, parallel, recipes, sweep, train
from zkd import step as step_lib


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    return save_random_teacher(str(tmp_path_factory.mktemp("teacher") / "resnet8"))


def sweep_config(method="kd", ls=True, teacher_checkpoint="", epochs=2, **axes):
    c = tiny_config(method, ls, teacher_checkpoint, epochs=epochs)
    for axis, values in axes.items():
        c.sweep[axis] = tuple(values)
    return c


def latest_students(workdir):
    """(step, [each student's saved state]) of the latest checkpoint of the run in ``workdir``."""
    ck = checkpoint.TrainingCheckpoints(workdir)
    try:
        step = ck.latest_step()
        state, _ = ck.restore_latest(None)
    finally:
        ck.close()
    return step, state["students"]


def tiny_build(c, teacher=None):
    """engine.build on a tiny CIFAR-100 (64 examples) with a random resnet8 teacher."""
    if teacher is None:
        model = models.build("resnet8", 100)
        teacher = (model, model.init(jax.random.key(1), jnp.zeros((1, 32, 32, 3)), train=False))
    info = dataclasses.replace(data.get_info("cifar100"), train_size=64, test_size=64)
    return engine.build(c, teacher=teacher, info=info, mesh=parallel.make_mesh(1))


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
    assert [p.name for p in seeds] == ["ls0_seed0", "ls0_seed7", "ls1_seed0", "ls1_seed7"]  # the method's axis order (zkd.methods.axes)
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


def test_a_zip_sweep_reads_the_axes_side_by_side():
    c = sweep_config(temperature=(4, 2), kd_weight=(0.9, 9), logit_stand=(0, 1), ce_weight=(0.1, 0.1))
    c.sweep.mode = "zip"
    points = sweep.grid_points(c)
    assert [p.name for p in points] == ["T4_kd0.9_ce0.1_ls0", "T2_kd9_ce0.1_ls1"]
    kd, ls = (p.config for p in points)
    assert (kd.loss.temperature, kd.loss.kd_weight, kd.logit_stand) == (4.0, 0.9, False)
    assert (ls.loss.temperature, ls.loss.kd_weight, ls.logit_stand) == (2.0, 9.0, True)
    assert recipes.swept_axes(kd) == {} and kd.data_seed == ls.data_seed == c.seed
    assert recipes.run_name(c).endswith("/temperature-kd_weight-ce_weight-logit_stand_zip")
    c.sweep.mode = "product"
    assert recipes.run_name(c).endswith("/temperature-kd_weight-ce_weight-logit_stand")
    with pytest.raises(train.ConfigError, match="repeats a value"):  # ce_weight (0.1, 0.1) as a product
        sweep.grid_points(c)


@pytest.mark.parametrize("axes, match", [
    ({"temperature": (4, 2), "kd_weight": (1, 2, 3)}, r"same length; got temperature: 2, kd_weight: 3"),
    ({"temperature": (4, 4), "kd_weight": (1, 1)}, r"same student twice: \{'temperature': 4.0, 'kd_weight': 1.0\}"),
    ({"temperature": (4, 0)}, "must be > 0"),
])
def test_bad_zip_sweeps_are_named(axes, match):
    c = sweep_config(**axes)
    c.sweep.mode = "zip"
    with pytest.raises(train.ConfigError, match=match):
        sweep.grid_points(c)
    c.sweep.mode = "diagonal"
    with pytest.raises(train.ConfigError, match="sweep.mode='diagonal'; valid: product, zip"):
        sweep.grid_points(c)


def test_a_single_run_refuses_a_sweep_config(tmp_path):
    with pytest.raises(train.ConfigError, match="zkd.sweep.train_sweep"):
        train.train_and_evaluate(sweep_config(temperature=(2, 3)), str(tmp_path / "run"))


# ----------------------------------------------------------------------------- the step


def test_the_run_step_runs_the_teacher_once_for_all_students():
    c = sweep_config(temperature=(2, 3, 4))
    run = tiny_build(c)
    calls = []

    def counting_apply(variables, images, train):
        calls.append(images.shape)
        return run.teacher.apply(variables, images, train=train)

    state = run.state.replace(teacher_apply_fn=counting_apply)
    step = jax.jit(step_lib.make_run_step(run.settings))
    batch = {"image": jnp.zeros((8, 32, 32, 3)), "label": jnp.arange(8, dtype=jnp.int32)}
    new_state, metrics = step(state, batch)
    assert calls == [(8, 32, 32, 3)]  # traced once, for three students
    assert len(metrics) == 3 and all(np.isfinite(m["loss"]) for m in metrics)
    assert [int(s.step) for s in new_state.students] == [1, 1, 1]
    assert [s.hparams.temperature for s in run.settings] == [2.0, 3.0, 4.0]
    # The teacher's variables are shared, not one copy per student.
    assert jax.tree.leaves(new_state.teacher_variables)[0].shape == jax.tree.leaves(run.teacher_variables)[0].shape


def test_vmapped_and_unrolled_students_take_the_same_step():
    c = sweep_config("dkd", temperature=(2, 4), logit_stand=(0, 1))
    run = tiny_build(c)
    assert [s.logit_stand for s in run.settings] == [False, True, False, True]
    batch = {"image": jax.random.normal(jax.random.key(2), (8, 32, 32, 3)), "label": jnp.arange(8, dtype=jnp.int32)}
    before = jax.tree.map(np.asarray, run.state.students)
    out = {mode: jax.jit(step_lib.make_run_step(run.settings, mode))(run.state, batch) for mode in step_lib.VECTORIZE}
    (a, ma), (b, mb) = out["unroll"], out["vmap"]
    for i in range(len(run.points)):
        for k in ma[i]:
            np.testing.assert_allclose(ma[i][k], mb[i][k], rtol=1e-4, atol=1e-6, err_msg=k)
        # The parameter updates agree to float32 roundoff (grouped vs. plain convolutions sum in
        # another order): relative to the update's norm, per student.
        x0 = jax.tree.leaves(before[i].params)
        da = np.concatenate([np.ravel(x - y) for x, y in zip(jax.tree.leaves(a.students[i].params), x0)])
        db = np.concatenate([np.ravel(x - y) for x, y in zip(jax.tree.leaves(b.students[i].params), x0)])
        assert np.linalg.norm(da - db) <= 2e-3 * np.linalg.norm(db), np.linalg.norm(da - db) / np.linalg.norm(db)
    variables = engine.Run.student_variables(a)
    eval_batch = dict(batch, mask=jnp.arange(8) < 6)
    sums = {mode: jax.jit(step_lib.make_run_eval_step(run.student.apply, len(run.points), mode))(variables, eval_batch)
            for mode in step_lib.VECTORIZE}
    single = jax.jit(step_lib.make_eval_step(run.student.apply))(variables[1], eval_batch)
    for k in single:
        np.testing.assert_allclose(sums["unroll"][1][k], single[k], rtol=1e-5, err_msg=k)
        for i in range(len(run.points)):
            np.testing.assert_allclose(sums["vmap"][i][k], sums["unroll"][i][k], rtol=1e-4, atol=1e-5, err_msg=k)
    with pytest.raises(ValueError, match="valid: unroll, vmap"):
        step_lib.make_run_step(run.settings, "pmap")


def test_mixed_logit_stand_selects_per_student():
    """A stack mixing LS on/off computes, for each student, the loss its own single run computes."""
    k = jax.random.split(jax.random.key(3), 3)
    z, v = jax.random.normal(k[0], (6, 10)) * 3, jax.random.normal(k[1], (6, 10)) * 5
    labels = jax.random.randint(k[2], (6,), 0, 10)
    base = step_lib.StepSettings("kd", 10, lambda s: 0.1, logit_stand=None)
    hp = methods.KD.HParams(ce_weight=jnp.array([0.1, 0.1]), kd_weight=jnp.array([9.0, 9.0]),
                            temperature=jnp.array([2.0, 2.0]))
    flags = jnp.array([True, False])
    terms = jax.vmap(lambda h, ls: step_lib.loss_terms(base, None, z, v, labels, 1.0, h, logit_stand=ls))(hp, flags)
    for i, ls in enumerate((True, False)):
        single = step_lib.StepSettings("kd", 10, lambda s: 0.1, logit_stand=ls,
                                       hparams=methods.KD.HParams(temperature=2.0, kd_weight=9.0, ce_weight=0.1))
        expected = step_lib.loss_terms(single, None, z, v, labels, 1.0)
        np.testing.assert_allclose(terms["kd"][i], expected["kd"], rtol=1e-6)
        np.testing.assert_allclose(terms["ce"][i], expected["ce"], rtol=1e-6)
    assert not np.isclose(terms["kd"][0], terms["kd"][1])


# ----------------------------------------------------------------------------- whole runs


def _assert_student_equals_single_run(student_dir, single_dir, index=0, exact=False):
    """The sweep's student ``index`` (its directory and its part of the sweep's checkpoint) took
    the trajectory of the single run in ``single_dir``: bit for bit (``exact``, one student: the
    same compiled step) or to float32 roundoff (several students in one compiled step)."""
    sweep_dir = os.path.dirname(os.path.dirname(student_dir))
    step_a, a = latest_students(sweep_dir)
    step_b, b = latest_students(single_dir)
    assert step_a == step_b
    for x, y in zip(jax.tree.leaves(a[index]["params"]), jax.tree.leaves(b[0]["params"])):
        x, y = np.asarray(x), np.asarray(y)
        if exact:
            np.testing.assert_array_equal(x, y)
        else:  # every tensor within 1e-3 of its own scale; another seed or batch differs at order 1
            assert np.max(np.abs(x - y)) <= 1e-3 * np.max(np.abs(y)) + 1e-7
    rtol = 0 if exact else 1e-4
    for kind, keys in (("eval", ("loss", "top1", "epoch")), ("train", None)):
        ea, eb = metrics_io.read_metrics(student_dir, kind), metrics_io.read_metrics(single_dir, kind)
        assert len(ea) == len(eb) and set(ea[0]) == set(eb[0])
        for k in keys or [k for k in eb[0] if k not in ("step", "kind")]:
            np.testing.assert_allclose([e[k] for e in ea], [e[k] for e in eb], rtol=rtol, err_msg=f"{kind} {k}")


# Every option of a single run, in a sweep of one point (which must then be that very run).
FEATURES = {
    "kd_ls": dict(method="kd"),
    "device_resident_data": dict(method="kd", device_resident_data=True),
    "mlkd_two_views": dict(method="mlkd"),
    "ctkd_learned_temperature": dict(method="ctkd"),
    "bfloat16": dict(method="kd", dtype="bfloat16"),
}


@pytest.mark.parametrize("feature", list(FEATURES))
def test_a_sweep_of_one_point_is_the_single_run(tmp_path, teacher_dir, feature):
    """Bit for bit: the sweep's one student took exactly the single run's steps; its directory has
    the single run's files, and the sweep's checkpoint serves it as a teacher."""
    options = dict(FEATURES[feature])
    single = tiny_config(options.pop("method"), True, teacher_dir, epochs=2)
    for field, value in options.items():
        single[field] = value
    single.data_seed = recipes.data_seed(single)  # as a grid point states it
    swept = ml_collections.ConfigDict(single.to_dict())
    swept.sweep.ce_weight = (single.loss.ce_weight,)  # one grid point: the same run
    swept = recipes.finalize(swept)
    with mock_cifar100():
        summary = train.train_and_evaluate(single, str(tmp_path / "single"))
        result = sweep.train_sweep(swept, str(tmp_path / "sweep"))
    point = result["points"][0]
    _assert_student_equals_single_run(point["workdir"], str(tmp_path / "single"), exact=True)
    assert point["best_top1"] == summary["best_top1"] and point["last_top1"] == summary["last_top1"]
    single_files = set(os.listdir(tmp_path / "single"))
    assert {"config.json", "metrics.jsonl", "summary.json", "tensorboard", "checkpoints"} <= single_files
    assert single_files - {"checkpoints"} | {"sweep_member.json"} == set(os.listdir(point["workdir"]))
    assert {"config.json", "metrics.jsonl", "tensorboard", "checkpoints", "students", "sweep.json", "sweep.md"} \
        <= set(os.listdir(tmp_path / "sweep"))
    with open(os.path.join(point["workdir"], "config.json")) as f:
        assert json.load(f) == json.loads(single.to_json())  # the point's config is the single run's
    a, b = checkpoint.restore_best_student(point["workdir"]), checkpoint.restore_best_student(str(tmp_path / "single"))
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_students_of_a_seed_sweep_equal_their_single_runs(tmp_path, teacher_dir):
    """Two students in one compiled step (the seed axis varies the initialisation over the
    sweep's one data stream): each follows its own single run; the ranking is written."""
    c = sweep_config("dkd", True, teacher_dir, seed=(1, 2))
    c.loss.dkd_warmup_epochs = 1.0
    workdir = str(tmp_path / "sweep")
    with mock_cifar100():
        result = sweep.train_sweep(c, workdir)
        for p in sweep.grid_points(c):
            assert p.config.seed in (1, 2) and p.config.data_seed == 0
            train.train_and_evaluate(p.config, str(tmp_path / p.name))
    for i, name in enumerate(("seed1", "seed2")):
        _assert_student_equals_single_run(os.path.join(workdir, "students", name), str(tmp_path / name), index=i)
    a = metrics_io.read_metrics(os.path.join(workdir, "students", "seed1"), "train")
    b = metrics_io.read_metrics(os.path.join(workdir, "students", "seed2"), "train")
    assert a[0]["loss"] != b[0]["loss"]
    with open(os.path.join(workdir, "sweep.json")) as f:
        saved = json.load(f)
    best = sorted(saved["points"], key=lambda p: (-p["best_top1"], -p["last_top1"]))
    rows = [line for line in open(os.path.join(workdir, "sweep.md")) if line.startswith("| 1 ")]
    assert rows and rows[0].rstrip().endswith(f"| {best[0]['name']} |")
    assert result["students"] == 2


def test_students_of_a_zip_sweep_equal_their_single_runs(tmp_path, teacher_dir):
    """KD and KD+LS at their own settings (temperature, weight and LS all differ) in one compiled
    step: each follows its own single run."""
    c = sweep_config("kd", False, teacher_dir, temperature=(4, 2), kd_weight=(0.9, 9), logit_stand=(0, 1))
    c.sweep.mode = "zip"
    workdir = str(tmp_path / "sweep")
    points = sweep.grid_points(c)
    with mock_cifar100():
        sweep.train_sweep(c, workdir)
        for p in points:
            train.train_and_evaluate(p.config, str(tmp_path / p.name))
    for i, p in enumerate(points):
        _assert_student_equals_single_run(os.path.join(workdir, "students", p.name), str(tmp_path / p.name), index=i)


def test_a_resumed_sweep_ends_where_an_uninterrupted_one_does(tmp_path, teacher_dir):
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    with mock_cifar100():
        sweep.train_sweep(sweep_config("kd", True, teacher_dir, epochs=2, kd_weight=(1, 5)), straight)
        sweep.train_sweep(sweep_config("kd", True, teacher_dir, epochs=1, kd_weight=(1, 5)), resumed)
        result = sweep.train_sweep(sweep_config("kd", True, teacher_dir, epochs=2, kd_weight=(1, 5)), resumed)
    assert result["epochs"] == 2
    (step_a, a), (step_b, b) = latest_students(straight), latest_students(resumed)
    assert step_a == step_b
    jax.tree.map(np.testing.assert_array_equal, a, b)
    for name in ("kd1", "kd5"):
        a, b = (os.path.join(d, "students", name) for d in (straight, resumed))
        ea, eb = metrics_io.read_metrics(a, "eval"), metrics_io.read_metrics(b, "eval")
        assert [e["loss"] for e in ea] == [e["loss"] for e in eb]
        assert len(metrics_io.read_metrics(b, "eval")) == 2


def test_a_diverging_student_stops_the_sweep_naming_it(tmp_path, teacher_dir):
    c = sweep_config("kd", True, teacher_dir, temperature=(4, 1e-38))
    c.logit_stand = False
    workdir = str(tmp_path / "sweep")
    with mock_cifar100(), pytest.raises(train.NonFiniteError, match=r"student T1e-38: non-finite values at step 0"):
        sweep.train_sweep(c, workdir)
    assert checkpoint.TrainingCheckpoints(workdir).latest_step() is None


@pytest.mark.parametrize("flags, expected", [
    (["--config=configs/cifar100.py:method=dkd", "--config.sweep.temperature=(2, 3)", "--config.sweep.dkd_beta=(4, 8)"],
     "GRID ['T2_beta4', 'T2_beta8', 'T3_beta4', 'T3_beta8'] workdirs/cifar100/sweep_dkd/"),
    (["--config=configs/cifar100.py:method=kd", "--config.sweep.mode=zip", "--config.sweep.temperature=(4, 2)",
      "--config.sweep.kd_weight=(0.9, 9)", "--config.sweep.logit_stand=(0, 1)"],
     "GRID ['T4_kd0.9_ls0', 'T2_kd9_ls1'] workdirs/cifar100/sweep_kd/resnet32x4-resnet8x4/"
     "temperature-kd_weight-logit_stand_zip"),
])
def test_the_zkd_command_trains_a_grid_given_on_the_command_line(flags, expected):
    """`--config.sweep.<axis>="(a, b)"` (and `--config.sweep.mode=zip`) reach zkd.sweep through the
    real entry point (train_sweep replaced by a probe in the child process)."""
    import subprocess
    import sys

    probe = (
        "import sys\n"
        "from zkd import main, sweep\n"
        "def probe(config, workdir, allow_config_change=False):\n"
        "    print('GRID', [p.name for p in sweep.grid_points(config)], workdir)\n"
        "    raise SystemExit(0)\n"
        "sweep.train_sweep = probe\n"
        f"sys.argv = ['zkd', *{flags!r}]\n"
        "main.run()\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", probe], cwd=root, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert expected in out.stdout
