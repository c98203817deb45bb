"""The pure train step: every method, devices, dtype, and every config traced on tiny shapes."""

import dataclasses
import functools
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zkd import data, engine, models, paper, parallel, recipes
from zkd.errors import ConfigError

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "..", "configs")


def _load_config(filename, arg):
    spec = importlib.util.spec_from_file_location(filename, os.path.join(CONFIG_DIR, filename))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def _build(config, image_shape=(16, 16, 3), num_classes=10, steps_per_epoch=5, mesh=None, abstract=False):
    """zkd.engine.build on tiny images, with a random teacher (only its shapes when ``abstract``):
    the run and its first settings."""
    info = dataclasses.replace(data.get_info(config.dataset), image_shape=image_shape, num_classes=num_classes,
                               train_size=steps_per_epoch * config.batch_size)
    teacher = None
    if config.method != "ce":
        if abstract:
            teacher = _abstract_teacher(config.teacher.name, config.teacher.zoo, config.dtype, num_classes,
                                        image_shape)
        else:
            model = models.build(config.teacher.name, num_classes, zoo=config.teacher.zoo,
                                 dtype=engine.DTYPES[config.dtype])
            # The "rbg" generator compiles this init several times faster than threefry.
            teacher = (model, jax.jit(functools.partial(model.init, train=False))(
                jax.random.key(7, impl="rbg"), jnp.zeros((1, *image_shape))))
    run = engine.build(config, teacher=teacher, info=info, mesh=mesh or parallel.make_mesh(1), abstract=abstract)
    return run, run.settings[0]


@functools.lru_cache(maxsize=None)
def _abstract_teacher(name, zoo, dtype, num_classes, image_shape):
    """(apply_fn, variables' shapes) of a random teacher, made once per architecture and dtype:
    many configs share a teacher. The teacher is handed to engine.build as its jitted apply
    function (``zkd.teacher.from_python``'s other form of a teacher), so JAX traces its forward
    once per input shape for all those configs, not twice per config (engine.build's check and
    the step); ShapeDtypeStructs are immutable."""
    model = models.build(name, num_classes, zoo=zoo, dtype=engine.DTYPES[dtype])
    shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(7),
                            jnp.zeros((1, *image_shape)))
    return jax.jit(model.apply, static_argnames="train"), shapes


def _step(run, state, batch):
    """One step of the run's only student: (state, that student's metrics)."""
    state, metrics = run.train_step(state, parallel.global_batch(batch, run.mesh))
    return state, metrics[0]


def _batch(settings, batch=8, image_shape=(16, 16, 3), num_classes=10, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((batch, *image_shape)).astype(np.float32)
    out = {"label": rng.integers(0, num_classes, batch).astype(np.int32)}
    if settings.two_views:
        out["image_weak"] = images
        out["image_strong"] = images[:, ::-1] + 0.1
    else:
        out["image"] = images
    return out


ALL_CONFIGS = (
    [("cifar100.py", f"method={r.method},teacher={r.teacher},student={r.student},ls={ls}")
     for r in paper.paper_rows() if r.dataset == "cifar100" for ls in (0, 1)]
    + [("cifar100_teacher.py", f"model={t}") for t in paper.CIFAR_TEACHERS]
    + [("imagenet.py", f"method={r.method},teacher={r.teacher},student={r.student},ls={ls}")
       for r in paper.paper_rows() if r.dataset == "imagenet2012" for ls in (0, 1)]
    + [("cifar100.py", "runlocal=1"), ("fashion_mnist.py", "")]
    + [("cifar100_vit.py", f"student={s},ls={ls},runlocal=1") for s in paper.VIT_STUDENTS for ls in (0, 1)]
    + [("cifar100_vit.py", "student=pit_tiny,method=ce,runlocal=1")]
)


@pytest.mark.parametrize("filename,arg", ALL_CONFIGS, ids=[f"{f}:{a}" for f, a in ALL_CONFIGS])
def test_every_config_builds_and_traces_one_step(filename, arg):
    config = _load_config(filename, arg)
    assert config.is_locked
    run, settings = _build(config, abstract=True)  # shapes only: tracing needs no initialised weights
    size = config.student_input_size  # the transformer students' view (the teacher's is resized in the step)
    batch = _batch(settings, image_shape=(size, size, 3) if size else (16, 16, 3))
    new_state, metrics = jax.eval_shape(run.train_step, run.state, batch)
    assert metrics[0]["loss"].shape == () and metrics[0]["loss"].dtype == jnp.float32
    assert jax.tree.structure(new_state.students) == jax.tree.structure(run.state.students)


def test_configs_carry_the_per_pair_settings_of_the_released_logs():
    c = _load_config("cifar100.py", "method=dkd,teacher=R56,student=R20,ls=1")
    assert (c.loss.temperature, c.loss.dkd_alpha, c.loss.dkd_beta) == (3, 18.0, 36.0)
    c = _load_config("cifar100.py", "method=dkd,teacher=R56,student=R20,ls=0")
    assert (c.loss.temperature, c.loss.dkd_alpha, c.loss.dkd_beta, c.loss.ce_weight) == (4.0, 1.0, 2.0, 1.0)
    c = _load_config("cifar100.py", "method=kd,teacher=resnet32x4,student=resnet8x4,ls=1")
    assert (c.loss.temperature, c.loss.kd_weight, c.loss.ce_weight) == (2, 9, 0.1)
    assert (c.paper_top1.baseline, c.paper_top1.logit_stand) == (73.33, 76.62)
    c = _load_config("cifar100.py", "method=kd,teacher=resnet32x4,student=resnet8x4,ls=0")
    assert (c.loss.temperature, c.loss.kd_weight) == (4.0, 0.9)
    c = _load_config("cifar100.py", "method=mlkd,teacher=resnet32x4,student=ShuffleV2,ls=1")
    assert (c.num_epochs, c.optimizer.learning_rate, c.loss.kd_weight) == (960, 0.01, 6)
    c = _load_config("imagenet.py", "teacher=ResNet50,student=MobileNetV1,ls=0")
    assert (c.loss.ce_weight, c.loss.kd_weight, c.loss.temperature, c.batch_size) == (0.5, 0.5, 1.0, 512)


def test_imagenet_configs_carry_table3_settings_and_numbers():
    def load(arg):
        c = _load_config("imagenet.py", arg)
        return c, c.loss, (c.batch_size, c.num_epochs, c.optimizer.learning_rate)

    c, l, solver = load("teacher=ResNet34,student=ResNet18,ls=1")  # today's arguments: method defaults to kd
    assert c.method == "kd" and (l.temperature, l.kd_weight, l.ce_weight) == (2, 9, 1.0) and solver == (512, 100, 0.2)
    assert tuple(c.optimizer.lr_milestones) == (30, 60, 90) and c.optimizer.weight_decay == 1e-4
    c, l, solver = load("method=dkd,teacher=R34,student=R18,ls=0")
    assert (l.temperature, l.ce_weight, l.dkd_alpha, l.dkd_beta, l.dkd_warmup_epochs) == (1, 1, 1, 0.5, 1)
    c, l, solver = load("method=dkd,teacher=ResNet34,student=ResNet18,ls=1")
    assert (l.temperature, l.ce_weight, l.dkd_alpha, l.dkd_beta) == (2, 1, 9, 4.5) and solver == (512, 100, 0.2)
    c, l, solver = load("method=dkd,teacher=ResNet50,student=MobileNetV1,ls=1")
    assert (l.dkd_alpha, l.dkd_beta) == (9, 18) and (c.paper_top1.baseline, c.paper_top1.logit_stand) == (72.05, 72.85)
    c, l, solver = load("method=mlkd,teacher=ResNet34,student=ResNet18,ls=0")
    assert (l.temperature, l.ce_weight, l.kd_weight) == (1, 0.5, 0.5) and solver == (512, 100, 0.1)
    c, l, solver = load("method=mlkd,teacher=ResNet50,student=MobileNetV1,ls=1")
    assert (l.temperature, l.ce_weight, l.kd_weight) == (2, 0.5, 9) and solver == (512, 100, 0.2)
    c, l, solver = load("method=ctkd,teacher=ResNet34,student=ResNet18,ls=0")
    assert (l.ce_weight, l.kd_weight) == (1, 2) and solver == (256, 120, 0.1)
    c, l, solver = load("method=ctkd,teacher=ResNet50,student=MobileNetV1,ls=1")
    assert (l.ce_weight, l.kd_weight) == (1, 9) and c.logit_stand and solver == (256, 120, 0.1)
    table3 = {(r.method, r.teacher, r.student): r.paper for r in paper.paper_rows() if r.dataset == "imagenet2012"}
    assert len(table3) == 8 and all(table3.values())
    assert table3["mlkd", "ResNet50", "MobileNetV1"] == (73.01, 73.22)
    assert table3["ctkd", "ResNet34", "ResNet18"] == (71.38, 71.81)
    with pytest.raises(ValueError, match="method must be one of"):
        _load_config("imagenet.py", "method=crd")
    with pytest.raises(ValueError, match="ImageNet pairs are"):
        _load_config("imagenet.py", "method=dkd,teacher=ResNet50,student=ResNet18")


def test_config_arguments_and_fields_are_checked():
    with pytest.raises(ValueError, match="unknown config argument 'lss'"):
        _load_config("cifar100.py", "lss=1")
    c = _load_config("cifar100.py", "")
    with pytest.raises(AttributeError, match="num_epochs"):
        c.num_epoch = 3  # locked: misspelled fields fail with the closest name


def test_the_generic_recipes_take_a_method_of_your_own():
    """A method without a row in zkd.paper (DIST, by reference): its own defaults and the recipe's
    solver; the paper-only recipes (ImageNet, the transformers) still name their methods."""
    c = _load_config("fashion_mnist.py", "method=experiments.methods.dist:DIST,ls=1,epochs=10,temperature=3")
    assert c.method == "experiments.methods.dist:DIST" and c.logit_stand and c.teacher.name == "resnet20"
    assert (c.loss.temperature, c.loss.ce_weight, c.loss.dist_beta, c.loss.dist_gamma) == (3, 1, 1, 1)
    assert (c.num_epochs, c.batch_size, tuple(c.optimizer.lr_milestones)) == (10, 128, (6, 8))
    c = _load_config("cifar100.py", "method=dist,teacher=R32x4,student=ShuffleV2,ls=1")
    assert (c.num_epochs, c.optimizer.learning_rate, c.loss.temperature, c.loss.dist_beta) == (240, 0.01, 4, 1)
    assert (c.paper_top1.baseline, c.paper_top1.logit_stand) == (-1, -1) and c.teacher.name == "resnet32x4"
    c = _load_config("your_data.py", "dataset=tfds:x,method=dist,model=resnet8,batch_size=32")
    assert c.method == "dist" and c.batch_size == 32 and c.loss.dist_gamma == 1
    for filename in ("imagenet.py", "cifar100_vit.py"):
        with pytest.raises(ValueError, match="method must be"):
            _load_config(filename, "method=dist")
    with pytest.raises(ConfigError, match="config.method='crd'; valid: ce, kd"):
        _load_config("cifar100.py", "method=crd")


@pytest.mark.parametrize("method", ["ce", "kd", "dkd", "mlkd", "ctkd"])
@pytest.mark.parametrize("ls", [False, True])
def test_each_method_steps_with_finite_metrics(method, ls):
    if method == "ce" and ls:
        pytest.skip("LS does not apply to cross-entropy")
    c = recipes.cifar_distillation(method, "resnet8", "resnet8", ls) if method != "ce" else recipes.cifar_teacher("resnet8")
    # One step per epoch and batches of 8 on one device, as the tests below that train resnet8:
    # the same step compiles to the same program, compiled once in the session's persistent
    # compilation cache (tests/conftest.py). Step 2 is in epoch 2 (CTKD's lambda is then not 0).
    run, settings = _build(c, steps_per_epoch=1)
    state = run.state
    for i in range(2):
        state, metrics = _step(run, state, _batch(settings, seed=i))
    assert int(state.step) == 2
    for name, value in metrics.items():
        assert np.isfinite(float(value)), name
    expected = {"ce": {"ce"}, "kd": {"ce", "kd"}, "dkd": {"ce", "dkd"}, "ctkd": {"ce", "kd", "ctkd_temperature"},
                "mlkd": {"ce", "mlkd_kd_weak", "mlkd_kd_strong", "mlkd_cc_weak", "mlkd_bc_weak"}}[method]
    assert expected <= set(metrics)
    if method != "ce":
        # The teacher never changes.
        assert "agreement" in metrics and "logit_std_teacher" in metrics


def test_teacher_is_frozen_and_ctkd_temperature_is_trained():
    c = recipes.cifar_distillation("ctkd", "resnet8", "resnet8", True)
    run, settings = _build(c, steps_per_epoch=1)  # epoch >= 2: lambda != 0 (the step of [True-ctkd] above)
    state = run.state
    teacher_before = jax.tree.map(np.asarray, state.teacher_variables)
    for i in range(3):
        state, _ = _step(run, state, _batch(settings, seed=i))
    jax.tree.map(np.testing.assert_array_equal, teacher_before, jax.tree.map(np.asarray, state.teacher_variables))
    assert float(state.students[0].params["ctkd"]["p"]) != 1.0


def test_dkd_warmup_scales_the_loss_by_epoch():
    c = recipes.cifar_distillation("dkd", "resnet8", "resnet8", False)
    run, settings = _build(c, steps_per_epoch=1)  # the step of [False-dkd] above
    state10 = run.state.replace(students=(run.state.students[0].replace(step=jnp.asarray(9, jnp.int32)),))
    state10 = parallel.replicate(jax.tree.map(jnp.copy, state10), run.mesh)  # the step donates its state
    _, m1 = _step(run, run.state, _batch(settings))
    _, m10 = _step(run, state10, _batch(settings))  # epoch 10 -> factor 0.5
    np.testing.assert_allclose(float(m10["dkd"]), 10 * float(m1["dkd"]), rtol=1e-5)


def test_bfloat16_computation_keeps_float32_parameters_and_losses():
    c = recipes.cifar_distillation("kd", "resnet8", "resnet8", True)
    with c.unlocked():
        c.dtype = "bfloat16"
    run, settings = _build(c)
    state, metrics = _step(run, run.state, _batch(settings))
    s = state.students[0]
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(s.params))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(s.batch_stats))
    assert metrics["loss"].dtype == jnp.float32 and np.isfinite(float(metrics["loss"]))
