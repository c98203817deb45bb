"""A distillation method of the user's own, from outside zkd (experiments/methods/dist.py):
registered and resolved like a built-in one, equal to its authors' formula, and trained by the
zkd command in a sweep with LS on and off, killed and resumed to the uninterrupted result."""

import dataclasses
import json
import os
import subprocess
import sys

import flax.struct
import jax
import numpy as np
import pytest

import zkd.methods
from experiments.methods import dist
from tests.test_multihost import SHAPES, shapes_teacher_run  # noqa: F401  (the shared TFDS set and teacher)
from tests.test_step import _batch, _build, _step
from zkd import grid, metrics_io, parallel, recipes, step
from zkd.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- the authors' formula


def _dist_numpy(z, v, t, beta, gamma, logit_stand):
    """DIST as its authors' release computes it (hunto/DIST_KD: softmax at T, 1 - mean Pearson
    over rows and over columns, each times T^2), in float64; with LS both logits z-scored first
    (mean and unbiased std over classes, std + 1e-7, as Sun et al.'s release)."""
    z, v = z.astype(np.float64), v.astype(np.float64)
    if logit_stand:
        z = (z - z.mean(1, keepdims=True)) / (1e-7 + z.std(1, ddof=1, keepdims=True))
        v = (v - v.mean(1, keepdims=True)) / (1e-7 + v.std(1, ddof=1, keepdims=True))

    def softmax(x):
        e = np.exp(x - x.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    def pearson(a, b):
        a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
        return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-8)

    p, q = softmax(z / t), softmax(v / t)
    inter = t ** 2 * (1 - pearson(p, q).mean())
    intra = t ** 2 * (1 - pearson(p.T, q.T).mean())
    return {"inter": beta * inter, "intra": gamma * intra}


@pytest.mark.parametrize("logit_stand", [False, True])
def test_dist_equals_its_authors_formula(logit_stand):
    rng = np.random.default_rng(0)
    z, v = rng.standard_normal((16, 10)) * 3, rng.standard_normal((16, 10)) * 5
    labels = rng.integers(0, 10, 16)
    hp = dist.DIST.HParams(temperature=4.0, ce_weight=0.5, dist_beta=2.0, dist_gamma=3.0)
    settings = step.StepSettings("dist", 1, lambda s: 0.1, logit_stand, hp)
    terms = step.loss_terms(settings, None, z.astype(np.float32), v.astype(np.float32), labels, 1.0)
    want = _dist_numpy(z, v, 4.0, 2.0, 3.0, logit_stand)
    np.testing.assert_allclose(terms["dist_inter"], want["inter"], rtol=2e-5)
    np.testing.assert_allclose(terms["dist_intra"], want["intra"], rtol=2e-5)
    shifted = z - z.max(1, keepdims=True)
    ce = -(shifted[np.arange(16), labels] - np.log(np.exp(shifted).sum(1))).mean()
    np.testing.assert_allclose(terms["ce"], 0.5 * ce, rtol=1e-5)


# ----------------------------------------------------------------------------- the registry


def test_a_registered_method_is_a_config_field_and_sweep_axis_like_a_built_in():
    c = recipes.base_config()
    assert (c.loss.dist_beta, c.loss.dist_gamma) == (1.0, 1.0) and "dist_beta" in c.sweep
    assert zkd.methods.axes("dist") == ("temperature", "ce_weight", "dist_beta", "dist_gamma", "logit_stand", "seed")
    assert zkd.methods.get("experiments.methods.dist:DIST") is dist.DIST is zkd.methods.get("dist")
    with c.unlocked():
        c.method, c.teacher.name = "dist", "resnet8"
        c.sweep.dist_beta, c.sweep.logit_stand = (1, 2), (0, 1)
    points = grid.grid_points(c)
    assert [p.name for p in points] == ["beta1_ls0", "beta1_ls1", "beta2_ls0", "beta2_ls1"]
    assert [(p.config.loss.dist_beta, p.config.logit_stand) for p in points] == [(1, 0), (1, 1), (2, 0), (2, 1)]
    with c.unlocked():
        c.sweep.kd_weight = (1.0, 2.0)
    with pytest.raises(ConfigError, match="config.sweep.kd_weight has no effect on method 'dist'; it sweeps "
                                          "temperature, ce_weight, dist_beta, dist_gamma, logit_stand, seed"):
        grid.grid_points(c)
    with c.unlocked():
        c.sweep.kd_weight, c.sweep.temperature = (), (0.0, 2.0)
    with pytest.raises(ConfigError, match="config.sweep.temperature values must be > 0"):
        grid.grid_points(c)


def test_registry_errors_name_the_fix():
    with pytest.raises(zkd.methods.UnknownMethodError, match="did you mean 'dkd'"):
        zkd.methods.get("dkdd")
    with pytest.raises(zkd.methods.UnknownMethodError, match="cannot import 'no_such_pkg.mod'"):
        zkd.methods.get("no_such_pkg.mod:Cls")
    with pytest.raises(zkd.methods.UnknownMethodError, match="has no 'DISTT'; did you mean 'DIST'"):
        zkd.methods.get("experiments.methods.dist:DISTT")
    with pytest.raises(ValueError, match="method 'kd' is already registered"):
        @zkd.methods.register("kd")
        @dataclasses.dataclass(frozen=True)
        class Other(zkd.methods.Method):  # noqa: F811
            pass
    with pytest.raises(ValueError, match="config.loss.temperature = 4.0"):  # one config field, one default
        @zkd.methods.register("hot_kd")
        @dataclasses.dataclass(frozen=True)
        class Hot(zkd.methods.Method):
            @flax.struct.dataclass
            class HParams:
                temperature: float = zkd.methods.hparam(8.0)
    assert "hot_kd" not in zkd.methods.available()


def test_a_method_registered_without_the_dataclass_decorator_is_made_one():
    class Plain(zkd.methods.Method):
        scale: float = 2.0

        def loss_terms(self, hp, logit_stand, x):
            return {"ce": self.scale * x.labels.sum()}

    cls = zkd.methods.register("plain_for_test")(Plain)
    try:
        assert dataclasses.is_dataclass(cls) and cls(scale=3.0).scale == 3.0 and cls.name == "plain_for_test"
        with pytest.raises(dataclasses.FrozenInstanceError):
            cls().scale = 1.0
        assert recipes.base_config().loss.scale == 2.0  # its option is a config field
    finally:
        zkd.methods.unregister("plain_for_test")
    assert "scale" not in recipes.base_config().loss


# ----------------------------------------------------------------------------- everywhere a built-in goes


def _dist_config(**loss):
    c = recipes.cifar_distillation("kd", "resnet8", "resnet8", True)
    with c.unlocked():
        c.method = "dist"
        for k, v in loss.items():
            c.loss[k] = v
    return c


def test_a_user_method_steps_on_cached_logits_in_bfloat16_and_on_several_devices():
    """One config, the trainer's compiled step: the teacher-logit cache's batches (the teacher's
    logits in the batch) give the teacher's own step; bfloat16 keeps float32 losses; 4 devices
    give the one-device step to float32 roundoff."""
    c = _dist_config(dist_beta=2.0, dist_gamma=2.0)
    run, settings = _build(c, steps_per_epoch=1)
    batch = _batch(settings)
    teacher = step.teacher_logits_of_batch(settings, run.state.teacher_apply_fn, run.state.teacher_variables,
                                           jax.tree.map(np.asarray, batch))[0]
    _, m = _step(run, run.state, batch)  # donates the state
    assert {"ce", "dist_inter", "dist_intra", "agreement"} <= set(m)
    cached, _ = _build(c, steps_per_epoch=1)
    _, m_cached = _step(cached, cached.state, {**batch, "teacher_logits": np.asarray(teacher)})
    for k in m:
        np.testing.assert_allclose(float(m_cached[k]), float(m[k]), rtol=1e-6, err_msg=k)
    four, _ = _build(c, steps_per_epoch=1, mesh=parallel.make_mesh(4))
    _, m4 = _step(four, four.state, batch)
    for k in ("loss", "dist_inter", "dist_intra", "grad_norm"):
        np.testing.assert_allclose(float(m4[k]), float(m[k]), rtol=2e-5, err_msg=k)
    with c.unlocked():
        c.dtype = "bfloat16"
    half, _ = _build(c, steps_per_epoch=1)
    state, m16 = _step(half, half.state, batch)
    assert m16["dist_inter"].dtype == np.float32 and np.isfinite(float(m16["loss"]))
    assert all(x.dtype == np.float32 for x in jax.tree.leaves(state.students[0].params))


USER_CONFIG = """
import experiments.methods.dist  # registers "dist" before the config is built
from zkd import recipes


def get_config():
    c = recipes.your_data("tfds:{shapes}", "kd", "resnet8", "resnet8", True, epochs=2, batch_size=16,
                          data_dir="{data_dir}", teacher_checkpoint="{teacher_run}")
    c.method, c.loss.dist_beta, c.sweep.logit_stand = "dist", 2.0, (0, 1)
    return recipes.finalize(c)
"""


def _command(workdir, data_dir, teacher_run, kill_after=-1, config_file=""):
    """The zkd command training DIST, named by reference on the command line or, with
    ``config_file``, by a user's config file that imports it."""
    by_reference = [
        f"--config=configs/your_data.py:dataset=tfds:{SHAPES},data_dir={data_dir},method=kd,ls=1,model=resnet8,"
        f"teacher=resnet8,teacher_checkpoint={teacher_run},epochs=2,batch_size=16",
        "--config.method=experiments.methods.dist:DIST", "--config.loss.dist_beta=2", "--config.sweep.logit_stand=(0, 1)"]
    argv = [*([f"--config={config_file}"] if config_file else by_reference), "--config.eval_batch_size=12",
            "--config.optimizer.lr_milestones=(1,)", "--config.log_every_steps=1", "--config.checkpoint_every_steps=2",
            "--config.progress_bar=False", "--config.tensorboard=False", "--config.num_devices=1", f"--workdir={workdir}"]
    head = ([sys.executable, "-m", "zkd.main"] if kill_after < 0 else
            [sys.executable, os.path.join(ROOT, "tests", "zkd_main_killed.py"), str(kill_after)])
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
    return subprocess.run(head + argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def test_the_command_trains_a_user_method_sweep_with_ls_on_and_off_killed_and_resumed(tmp_path,
                                                                                    shapes_teacher_run):  # noqa: F811
    """DIST, a module outside zkd, swept over LS by the zkd command: once from a user's config file
    that imports it, once named on the command line (``--config.method=experiments.methods.dist:DIST``)
    and SIGKILLed in epoch 2 (after the step-2 checkpoint, 3 steps per epoch), then resumed: both
    end with the same evaluations, student by student."""
    data_dir, teacher_run = shapes_teacher_run
    whole, killed = str(tmp_path / "whole"), str(tmp_path / "killed")
    config_file = tmp_path / "my_config.py"
    config_file.write_text(USER_CONFIG.format(shapes=SHAPES, data_dir=data_dir, teacher_run=teacher_run))
    done = _command(whole, data_dir, teacher_run, config_file=str(config_file))  # a user's config file
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 students ranked by best top-1" in done.stdout
    died = _command(killed, data_dir, teacher_run, kill_after=5)  # teacher eval, 3 steps, eval, step 4
    assert died.returncode == -9, died.stderr[-3000:]
    assert not os.path.exists(os.path.join(killed, "sweep.json"))
    resumed = _command(killed, data_dir, teacher_run)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for point in ("ls0", "ls1"):
        a, b = (metrics_io.read_metrics(os.path.join(d, "students", point), "eval") for d in (whole, killed))
        assert len(a) == 2 and [r["step"] for r in a] == [r["step"] for r in b]
        for ra, rb in zip(a, b):
            for k in ("top1", "top5", "loss", "agreement"):
                assert ra[k] == rb[k], (point, ra["step"], k)
        configs = [json.load(open(os.path.join(d, "students", point, "config.json"))) for d in (whole, killed)]
        assert configs[0]["method"] == "dist" and configs[1]["method"] == "experiments.methods.dist:DIST"
        assert configs[0]["loss"] == configs[1]["loss"] and configs[0]["loss"]["dist_beta"] == 2
    ls0, ls1 = (metrics_io.read_metrics(os.path.join(whole, "students", p), "eval")[-1]["loss"] for p in ("ls0", "ls1"))
    assert ls0 != ls1  # LS changed the students
    for root, _, files in os.walk(os.path.join(ROOT, "zkd")):
        for name in files:
            if name.endswith(".py"):
                text = open(os.path.join(root, name)).read()
                assert "experiments.methods" not in text and "dist_beta" not in text, name


def test_the_contract_example_of_docs_methods_md_registers_and_steps():
    import re

    text = open(os.path.join(ROOT, "docs", "methods.md")).read()
    code = re.findall(r"```python\n(.*?)```", text, flags=re.S)[0]
    namespace = {}
    exec(compile(code, "docs/methods.md", "exec"), namespace)
    try:
        assert zkd.methods.get("my_kd") is namespace["MyKD"]
        c = _dist_config()
        with c.unlocked():
            c.method = "my_kd"
        run, settings = _build(c, steps_per_epoch=1)
        _, m = _step(run, run.state, _batch(settings))
        assert {"ce", "kd"} <= set(m) and np.isfinite(float(m["loss"]))
        assert float(m["kd"]) > 0
    finally:
        zkd.methods.unregister("my_kd")
