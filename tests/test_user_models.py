"""Your own models: registration from outside the package, factories named in a config, the
contract check, dtype passing, ensemble teachers and teachers given in Python.

Tiny modules on 8x8x3 images; two runs of two steps go through the trainer.
"""

import importlib
import json
import sys
import textwrap
import uuid

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from zkd import checkpoint, data, engine, models, recipes, teacher, train
from zkd.errors import ZkdError
from zkd.models import user

SHAPE = (8, 8, 3)
K = 3

USER_MODULE = '''
import flax.linen as nn
import zkd.models


class TinyNet(nn.Module):
    num_classes: int
    width: int = 4
    dtype: object = None

    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.Dense(self.width, dtype=self.dtype)(x.reshape((x.shape[0], -1)))
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype)(x)
        x = nn.Dropout(0.5, deterministic=not train)(nn.relu(x))
        return nn.Dense(self.num_classes, dtype=self.dtype)(x)


def make_net(num_classes, width=4, dtype=None):
    return TinyNet(num_classes=num_classes, width=width, dtype=dtype)


def make_net_without_dtype(num_classes, width=4):
    return TinyNet(num_classes=num_classes, width=width)


def make_nothing(num_classes):
    return {"num_classes": num_classes}


class Factories:
    @staticmethod
    def create(num_classes, **options):
        return TinyNet(num_classes=num_classes, **options)


NOT_A_FACTORY = 3


@zkd.models.register("REGISTERED_NAME", zoo="user")
def registered_net(num_classes, width=4, dtype=None):
    return TinyNet(num_classes=num_classes, width=width, dtype=dtype)
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A module outside the package (in tmp_path, put on sys.path) that registers a model in the
    zoo "user"; its registrations are removed afterwards."""
    name = f"zkd_test_user_models_{uuid.uuid4().hex[:8]}"
    registered = f"tiny_user_net_{uuid.uuid4().hex[:6]}"
    (tmp_path / f"{name}.py").write_text(USER_MODULE.replace("REGISTERED_NAME", registered))
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(models.available("user"))
    module = importlib.import_module(name)
    module.registered = registered
    yield module
    for added in set(models.available("user")) - before:
        models.unregister(added, zoo="user")
    sys.modules.pop(name, None)


def model_config(**fields):
    base = {"name": "", "zoo": "cifar", "options": {}, "factory": ""}
    base.update(fields)
    return ml_collections.ConfigDict(base)


def images(seed=0, batch=2):
    return jnp.asarray(np.random.default_rng(seed).standard_normal((batch, *SHAPE)), jnp.float32)


def init(module, seed=0):
    return module.init({"params": jax.random.key(seed), "dropout": jax.random.key(seed + 1)},
                       jnp.zeros((1, *SHAPE)), train=False)


# ----------------------------------------------------------------------------- registration


def test_a_model_registered_outside_the_package_builds_from_a_config(user_module):
    name = user_module.registered
    assert name in models.available("user")
    model = models.build_model(model_config(name=name, zoo="user", options={"width": 7}), K,
                               jnp.float32, role="student", input_shape=SHAPE)
    assert isinstance(model, user_module.TinyNet) and model.width == 7 and model.dtype is None
    logits = model.apply(init(model), images(), train=False)
    assert logits.shape == (2, K)


def test_registering_again_the_same_factory_is_silent_another_one_is_an_error(user_module):
    name = user_module.registered
    factory = user_module.registered_net
    assert models.register(name, zoo="user")(factory) is factory  # the same object again
    importlib.reload(user_module)  # a re-import redefines the same function: replaced, no error
    assert name in models.available("user")
    with pytest.raises(ValueError, match="already registered"):
        models.register(name, zoo="user")(lambda num_classes: user_module.TinyNet(num_classes))
    with pytest.raises(ValueError, match="already registered"):  # the paper's zoos are guarded too
        models.register("resnet8", zoo="cifar")(user_module.make_net)


def test_an_unregistered_user_name_says_to_import_its_module():
    with pytest.raises(user.ModelFactoryError, match="Import the module") as err:
        models.build_model(model_config(name="no_such_user_net", zoo="user"), K, jnp.float32, "student")
    assert "config.student.name='no_such_user_net'" in str(err.value)


def test_build_model_of_a_paper_zoo_model_is_models_build():
    a = models.build_model(model_config(name="resnet8", zoo="cifar"), K, jnp.bfloat16, "student")
    b = models.build("resnet8", K, zoo="cifar", dtype=jnp.bfloat16)
    assert a == b


# ----------------------------------------------------------------------------- factories


def test_a_factory_named_in_the_config_gets_num_classes_and_the_options(user_module):
    spec = f"{user_module.__name__}:make_net"
    model = models.build_model(model_config(factory=spec, options={"width": 5}), K, jnp.float32,
                               "student", input_shape=SHAPE)
    assert isinstance(model, user_module.TinyNet)
    assert (model.num_classes, model.width, model.dtype) == (K, 5, None)  # float32: no dtype passed
    dotted = user.import_factory(f"{user_module.__name__}:Factories.create", "here")
    assert dotted is user_module.Factories.create


@pytest.mark.parametrize("spec, message", [
    ("no_colon_here", "not of the form 'package.module:function'"),
    ("pkg.mod:", "not of the form"),
    (":make_net", "not of the form"),
])
def test_a_factory_spec_without_module_and_function_is_named(spec, message):
    with pytest.raises(user.ModelFactoryError, match=message) as err:
        user.import_factory(spec, f"config.student.factory={spec!r}")
    assert f"config.student.factory={spec!r}" in str(err.value)


def test_a_missing_module_says_pythonpath():
    with pytest.raises(user.ModelFactoryError, match="PYTHONPATH") as err:
        user.import_factory("zkd_no_such_module_xyz:make_net", "config.student.factory=...")
    assert "zkd_no_such_module_xyz" in str(err.value)
    assert isinstance(err.value.__cause__, ImportError)
    assert isinstance(err.value, ZkdError) and isinstance(err.value, ValueError)


def test_a_missing_attribute_suggests_close_names(user_module):
    with pytest.raises(user.ModelFactoryError, match="has no attribute 'make_nte'") as err:
        user.import_factory(f"{user_module.__name__}:make_nte", "config.student.factory=...")
    assert "Did you mean 'make_net'" in str(err.value)


def test_a_factory_that_is_not_callable_is_named(user_module):
    with pytest.raises(user.ModelFactoryError, match="is a int, not callable"):
        user.import_factory(f"{user_module.__name__}:NOT_A_FACTORY", "config.student.factory=...")


def test_a_factory_that_returns_no_module_is_named(user_module):
    with pytest.raises(user.ModelFactoryError, match="returned a dict, not a flax.linen.Module"):
        user.build_user_model(f"{user_module.__name__}:make_nothing", K, {}, jnp.float32, "where")


def test_options_the_factory_does_not_take_are_named(user_module):
    spec = f"{user_module.__name__}:make_net"
    with pytest.raises(user.ModelFactoryError, match="config.teacher.options") as err:
        models.build_model(model_config(factory=spec, options={"depth": 3}), K, jnp.float32, "teacher")
    assert "depth" in str(err.value)


# ----------------------------------------------------------------------------- dtype


def test_bfloat16_reaches_a_factory_that_takes_dtype(user_module):
    model = user.build_user_model(user_module.make_net, K, {}, jnp.bfloat16, "where")
    assert model.dtype == jnp.bfloat16
    out = model.apply(init(model), images(), train=False)
    assert out.dtype == jnp.bfloat16  # the computation dtype really is the one passed


def test_a_factory_without_dtype_works_in_float32_and_is_an_error_in_bfloat16(user_module):
    spec = f"{user_module.__name__}:make_net_without_dtype"
    assert isinstance(user.build_user_model(spec, K, {}, jnp.float32, "where"), user_module.TinyNet)
    with pytest.raises(user.ModelFactoryError, match="takes no dtype") as err:
        user.build_user_model(spec, K, {}, jnp.bfloat16, f"config.student.factory={spec!r}")
    assert "bfloat16" in str(err.value) and "dtype=None" in str(err.value)


# ----------------------------------------------------------------------------- the contract


class ReturnsTuple(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool):
        logits = nn.Dense(K)(x.reshape((x.shape[0], -1)))
        return logits, x


class WrongClasses(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool):
        return nn.Dense(K + 2)(x.reshape((x.shape[0], -1)))


class ExtraCollection(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool):
        count = self.variable("cache", "count", lambda: jnp.zeros((), jnp.int32))
        count.value += 1
        return nn.Dense(K)(x.reshape((x.shape[0], -1)))


class RandomAtEval(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool):
        return nn.Dropout(0.5, deterministic=False)(nn.Dense(K)(x.reshape((x.shape[0], -1))))


class OtherRngStream(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.Dense(K)(x.reshape((x.shape[0], -1)))
        if train:
            x = x * jax.random.bernoulli(self.make_rng("drop_path"), 0.9, x.shape)
        return x


class Good(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.BatchNorm(use_running_average=not train)(nn.Dense(4)(x.reshape((x.shape[0], -1))))
        return nn.Dense(K)(nn.Dropout(0.5, deterministic=not train)(x))


def test_a_module_meeting_the_contract_passes_as_student_and_teacher():
    user.check_module(Good(), SHAPE, K, where="w", role="student")
    user.check_module(Good(), SHAPE, K, where="w", role="teacher")


@pytest.mark.parametrize("module, role, message", [
    (ReturnsTuple(), "teacher", "returned a tuple of 2 items; it must return ONE array"),
    (WrongClasses(), "student", r"shape \(2, 5\), expected \(2, 3\)"),
    (ExtraCollection(), "student", r"collections \['cache'\] besides params/batch_stats"),
    (RandomAtEval(), "teacher", "train=False must be deterministic"),
    (OtherRngStream(), "student", 'needs PRNG for "drop_path".* one rng stream, \'dropout\''),
])
def test_contract_violations_are_named(module, role, message):
    where = "config.student.factory='m:f'"
    with pytest.raises(user.ModelContractError, match=message) as err:
        user.check_module(module, SHAPE, K, where=where, role=role)
    assert where in str(err.value) and f"({role})" in str(err.value)
    assert isinstance(err.value, ZkdError) and isinstance(err.value, ValueError)


def test_an_exception_inside_the_module_is_kept_as_the_cause():
    class Broken(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool):
            raise RuntimeError("my layer is broken\nsecond line")

    with pytest.raises(user.ModelContractError, match="RuntimeError: my layer is broken") as err:
        user.check_module(Broken(), SHAPE, K, where="w")
    assert isinstance(err.value.__cause__, RuntimeError)
    assert "second line" not in str(err.value)


def test_a_teacher_may_skip_the_train_mode_a_student_may_not():
    user.check_module(OtherRngStream(), SHAPE, K, where="w", role="teacher")  # eval mode is fine


# ----------------------------------------------------------------------------- ensembles


def zoo_teacher(name, seed):
    module = models.build(name, K, zoo="cifar")
    variables = init(module, seed)
    # non-trivial running statistics, so that a mix-up of members' batch_stats would show
    stats = jax.tree.map(lambda s: s + 0.1 * (seed + 1), variables["batch_stats"])
    return module, {"params": variables["params"], "batch_stats": stats}


def test_the_ensemble_is_the_mean_of_its_members_logits():
    members = [zoo_teacher("resnet8", 0), zoo_teacher("resnet14", 1),
               (Good(), {"params": init(Good(), 2)["params"],
                         "batch_stats": init(Good(), 2)["batch_stats"]})]
    module, variables = teacher.ensemble(members)
    x = images(3)
    want = np.mean([np.asarray(m.apply(v, x, train=False), np.float64) for m, v in members], axis=0)
    got = module.apply(variables, x, train=False)
    assert got.dtype == jnp.float32 and got.shape == (2, K)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
    # the layout is what the module's own init makes: params/batch_stats per member name
    template = jax.eval_shape(lambda: init(module))
    assert jax.tree.structure(template) == jax.tree.structure(variables)
    assert sorted(variables["params"]) == [teacher.member_name(i) for i in range(3)]


def test_an_ensemble_of_one_module_instance_twice_keeps_two_sets_of_variables():
    module = models.build("resnet8", K, zoo="cifar")
    (_, a), (_, b) = zoo_teacher("resnet8", 0), zoo_teacher("resnet8", 5)
    ens, variables = teacher.ensemble([(module, a), (module, b)])
    x = images(4)
    want = (np.asarray(module.apply(a, x, train=False)) + np.asarray(module.apply(b, x, train=False))) / 2
    np.testing.assert_allclose(np.asarray(ens.apply(variables, x, train=False)), want, rtol=1e-5, atol=1e-5)


def teacher_config(**fields):
    base = {"name": "resnet8", "zoo": "cifar", "checkpoint": "", "logit_cache": "", "factory": "",
            "options": {}, "ensemble": ()}
    base.update(fields)
    return ml_collections.ConfigDict(base)


def save(tmp_path, name, module_and_variables, meta_name):
    _, variables = module_and_variables
    host = jax.tree.map(np.asarray, variables)
    return checkpoint.save_variables(str(tmp_path / name), host,
                                     {"model": meta_name, "zoo": "cifar", "num_classes": K})


def test_an_ensemble_from_the_config_loads_each_member_from_disk(tmp_path):
    t1, t2 = zoo_teacher("resnet8", 0), zoo_teacher("resnet14", 1)
    p1, p2 = save(tmp_path, "t1", t1, "resnet8"), save(tmp_path, "t2", t2, "resnet14")
    config = teacher_config(ensemble=(p1, f"resnet14@{p2}"))
    module, variables = teacher.load_teacher(config, K, SHAPE)
    assert isinstance(module, teacher.EnsembleTeacher)
    x = images(5)
    want = np.mean([np.asarray(m.apply(v, x, train=False)) for m, v in (t1, t2)], axis=0)
    np.testing.assert_allclose(np.asarray(module.apply(variables, x, train=False)), want, rtol=1e-5, atol=1e-5)
    # a member whose checkpoint is of another architecture is refused like a single teacher
    with pytest.raises(teacher.TeacherError, match="holds model='resnet14', but the config asks for 'resnet8'"):
        teacher.load_teacher(teacher_config(ensemble=(p1, p2)), K, SHAPE)


def test_ensemble_errors_one_member_and_checkpoint_with_ensemble(tmp_path):
    p1 = save(tmp_path, "t1", zoo_teacher("resnet8", 0), "resnet8")
    with pytest.raises(teacher.TeacherError, match="use config.teacher.checkpoint"):
        teacher.load_teacher(teacher_config(ensemble=(p1,)), K, SHAPE)
    with pytest.raises(teacher.TeacherError, match="both set"):
        teacher.load_teacher(teacher_config(checkpoint=p1, ensemble=(p1, p1)), K, SHAPE)
    with pytest.raises(teacher.TeacherError, match=r"config.teacher.ensemble\[1\]='/no/such/dir' does not exist"):
        teacher.load_teacher(teacher_config(ensemble=(p1, "resnet8@/no/such/dir")), K, SHAPE)


def test_parse_ensemble_entry():
    assert teacher.parse_ensemble_entry("workdirs/t1") == ("", "workdirs/t1")
    assert teacher.parse_ensemble_entry("resnet110@workdirs/t2") == ("resnet110", "workdirs/t2")
    assert teacher.parse_ensemble_entry("gs://b/x@y") == ("", "gs://b/x@y")


def test_the_single_teacher_path_is_unchanged_and_a_factory_teacher_loads(tmp_path, user_module):
    p1 = save(tmp_path, "t1", zoo_teacher("resnet8", 0), "resnet8")
    module, variables = teacher.load_teacher(teacher_config(checkpoint=p1), K, SHAPE)
    assert module == models.build("resnet8", K, zoo="cifar", dtype=jnp.float32)
    # a user's factory as the teacher: its checkpoint is checked against the factory's model
    net = user_module.make_net(K, width=6)
    saved = checkpoint.save_variables(str(tmp_path / "mine"), jax.tree.map(np.asarray, init(net)),
                                      {"model": "mine", "num_classes": K})
    spec = f"{user_module.__name__}:make_net"
    config = teacher_config(name="", factory=spec, options={"width": 6}, checkpoint=saved)
    module, variables = teacher.load_teacher(config, K, SHAPE)
    assert module.width == 6
    np.testing.assert_allclose(np.asarray(module.apply(variables, images(), train=False)),
                               np.asarray(net.apply(init(net), images(), train=False)), rtol=1e-6)
    with pytest.raises(teacher.TeacherError, match=f"does not fit config.teacher.factory={spec!r}"):
        teacher.load_teacher(teacher_config(name="", factory=spec, options={"width": 5}, checkpoint=saved),
                             K, SHAPE)


# ----------------------------------------------------------------------------- teachers from Python


def test_from_python_with_a_module():
    module, variables = zoo_teacher("resnet8", 0)
    half = jax.tree.map(lambda x: x.astype(jnp.bfloat16), variables)
    obj, out = teacher.from_python((module, half), K, SHAPE)
    assert obj is module
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(out))


def test_from_python_with_a_bare_apply_fn():
    w = jnp.asarray(np.random.default_rng(0).standard_normal((int(np.prod(SHAPE)), K)), jnp.float32)

    def apply_fn(variables, x, train=False):
        return x.reshape((x.shape[0], -1)) @ variables["params"]["w"] + variables["step"]

    obj, variables = teacher.from_python((apply_fn, {"params": {"w": w}, "step": np.int32(3)}), K, SHAPE)
    assert obj.apply is apply_fn  # what RunState.teacher_apply_fn gets: the function itself
    assert variables["step"].dtype == np.int32  # integer leaves are left alone
    x = images()
    np.testing.assert_allclose(np.asarray(obj.apply(variables, x, train=False)),
                               np.asarray(x).reshape(2, -1) @ np.asarray(w) + 3, rtol=1e-5)


def test_from_python_names_a_wrong_output_shape():
    def apply_fn(variables, x, train=False):
        return jnp.zeros((x.shape[0], K + 1))

    with pytest.raises(teacher.TeacherError, match=r"shape \(2, 4\); expected .*\(2, 3\)"):
        teacher.from_python((apply_fn, {}), K, SHAPE)
    with pytest.raises(teacher.TeacherError, match="pair"):
        teacher.from_python(apply_fn, K, SHAPE)


def test_the_contract_is_exported_and_documented():
    assert "train: bool" in user.CONTRACT and '"dropout"' in user.CONTRACT
    assert user.CONTRACT in user.__doc__
    doc = textwrap.dedent(models.register.__doc__)
    assert 'zoo="user"' in doc


# ----------------------------------------------------------------------------- through the trainer


def tiny_arrays(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 255, (24, *SHAPE), dtype=np.uint8)
    y = np.arange(24) % K
    return data.from_arrays((x[:16], y[:16]), (x[16:], y[16:]), name="tiny")


def trainer_config(**teacher_fields):
    c = recipes.your_data("cifar100", "kd", "unused", logit_stand=True, epochs=1, batch_size=8)
    c.steps_per_epoch, c.eval_batch_size, c.progress_bar, c.log_every_steps = 2, 8, False, 1
    c.optimizer.lr_milestones = (1,)
    for k, v in teacher_fields.items():
        c.teacher[k] = v
    return recipes.finalize(c)


def test_a_factory_student_distils_from_an_ensemble_teacher_through_the_trainer(tmp_path, user_module):
    t1, t2 = zoo_teacher("resnet8", 0), zoo_teacher("resnet14", 1)
    p1, p2 = save(tmp_path, "t1", t1, "resnet8"), save(tmp_path, "t2", t2, "resnet14")
    c = trainer_config(name="resnet8", ensemble=(p1, f"resnet14@{p2}"))
    c.student.factory = f"{user_module.__name__}:make_net"
    c.student.options.width = 6
    summary = train.train_and_evaluate(c, str(tmp_path / "wd"), dataset=tiny_arrays())
    assert summary["epochs"] == 1 and np.isfinite(summary["last_top1"])
    rows = [json.loads(r) for r in (tmp_path / "wd" / "metrics.jsonl").read_text().splitlines()]
    (t_row,) = [r for r in rows if r["kind"] == "teacher"]
    # The teacher evaluated is the ensemble: its top-1 is the mean-logit prediction's, computed here.
    info = tiny_arrays()
    x_test, y_test = info.arrays["test"]
    x = (x_test / 255.0 - np.array(info.mean)) / np.array(info.std)
    logits = np.mean([np.asarray(m.apply(v, jnp.asarray(x, jnp.float32), train=False)) for m, v in (t1, t2)], 0)
    assert t_row["top1"] == pytest.approx(100.0 * np.mean(logits.argmax(1) == y_test))
    # The student is the factory's (width 6); the checkpoint holds the student only.
    saved = checkpoint.restore_best_student(str(tmp_path / "wd"))
    assert saved["params"]["Dense_0"]["kernel"].shape == (int(np.prod(SHAPE)), 6)


def test_a_python_teacher_is_used_never_updated_nor_checkpointed(tmp_path):
    module, variables = zoo_teacher("resnet8", 3)
    calls = []

    def apply_fn(v, x, train=False):
        calls.append(x.shape)
        return module.apply(v, x, train=False)

    before = jax.tree.map(np.array, variables)
    c = trainer_config(name="", checkpoint="")
    c.student.name = "resnet8"
    train.train_and_evaluate(c, str(tmp_path / "wd"), dataset=tiny_arrays(1), teacher=(apply_fn, variables))
    assert calls  # traced into the step and the teacher's evaluation
    jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.asarray, variables))
    run = engine.build(engine.with_dataset(c, tiny_arrays(1))[0], teacher=(apply_fn, variables),
                       info=tiny_arrays(1), abstract=True)
    assert list(run.checkpointable(run.state)) == ["students"]  # what a checkpoint holds
    assert set(run.checkpointable(run.state)["students"][0]) & {"teacher", "teacher_variables"} == set()
    rows = [json.loads(r) for r in (tmp_path / "wd" / "metrics.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in rows].count("teacher") == 1
