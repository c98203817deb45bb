"""The compiled distillation step against PyTorch: same weights, same batch, two SGD steps.

The step zkd runs (``engine.build``'s ``train_step``, compiled with zkd's XLA options: on CPU,
``zkd.xla_options``) is compared with the same computation written plainly in PyTorch (the
reference models of tests/torch_reference, the released KD+LS loss, torch.optim.SGD): teacher
forward in eval mode, student forward and backward in train mode (BatchNorm on batch statistics),
0.1 CE + 9 KD with logit standardization at base temperature 2, SGD with momentum 0.9 and coupled
weight decay 5e-4. Two steps, so the momentum buffer is exercised. Also: XLA's own CPU defaults
(``ZKD_XLA_CPU_OPTIONS=xla``) give the same step up to float32 roundoff.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import zkd.convert
from model_equivalence import one_torch_thread, randomize_batchnorm  # noqa: F401
from torch_reference.kd_step import kd_ls_step
from torch_reference.resnets import cifar_resnet
from zkd import data, engine, models, parallel, recipes, xla_options

NUM_CLASSES, SHAPE, BATCH = 10, (16, 16, 3), 8


def _flax_variables(torch_model, name):
    model = models.build(name, NUM_CLASSES)
    template = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *SHAPE)), train=False))
    return model, zkd.convert.state_dict_to_variables(torch_model.state_dict(), template)


def _torch_models():
    torch.manual_seed(0)
    teacher, student = cifar_resnet("resnet14", NUM_CLASSES), cifar_resnet("resnet8", NUM_CLASSES)
    randomize_batchnorm(teacher)
    return teacher.eval(), student.train()


def _batches():
    rng = np.random.default_rng(0)
    return [{"image": rng.standard_normal((BATCH, *SHAPE)).astype(np.float32),
             "label": rng.integers(0, NUM_CLASSES, BATCH).astype(np.int32)} for _ in range(2)]


def _zkd_steps(batches, preset, monkeypatch):
    """Student params after each step of zkd's compiled step, and the learning rates it used."""
    monkeypatch.setenv(xla_options.ENV, preset)
    t_torch, s_torch = _torch_models()
    config = recipes.cifar_distillation("kd", "resnet14", "resnet8", True)
    config.batch_size, config.num_devices = BATCH, 1
    info = dataclasses.replace(data.get_info(config.dataset), image_shape=SHAPE, num_classes=NUM_CLASSES,
                               train_size=10 * BATCH)
    run = engine.build(config, teacher=_flax_variables(t_torch, "resnet14"), info=info)
    _, s_vars = _flax_variables(s_torch, "resnet8")
    student = run.state.students[0]
    start = {**student.params, "student": s_vars["params"]}  # the student's weights are params["student"]
    state = run.state.replace(students=(student.replace(
        params=start, batch_stats=s_vars["batch_stats"], opt_state=student.tx.init(start)),))
    state = parallel.replicate(state, run.mesh)
    params, lrs = [], []
    for batch in batches:
        state, metrics = run.train_step(state, parallel.global_batch(batch, run.mesh))
        params.append(jax.tree.map(np.asarray, state.students[0].params["student"]))
        lrs.append(float(metrics[0]["learning_rate"]))
    return params, lrs


def _torch_steps(batches, lrs):
    """The reference step in PyTorch: the student's state dict after each step."""
    teacher, student = _torch_models()
    opt = torch.optim.SGD(student.parameters(), lr=lrs[0], momentum=0.9, weight_decay=5e-4)
    states = []
    for batch, lr in zip(batches, lrs):
        for group in opt.param_groups:
            group["lr"] = lr
        x = torch.from_numpy(batch["image"].transpose(0, 3, 1, 2).copy())
        kd_ls_step(teacher, student, opt, x, torch.from_numpy(batch["label"]).long())
        states.append({k: v.detach().numpy().copy() for k, v in student.state_dict().items()})
    return states


@pytest.mark.parametrize("preset", ["zkd", "xla"])
def test_two_compiled_steps_equal_pytorchs(preset, monkeypatch):
    batches = _batches()
    params, lrs = _zkd_steps(batches, preset, monkeypatch)
    assert lrs[0] > 0
    states = _torch_steps(batches, lrs)
    template = jax.eval_shape(lambda: models.build("resnet8", NUM_CLASSES).init(
        jax.random.key(0), jnp.zeros((1, *SHAPE)), train=False))
    for step, (ours, theirs) in enumerate(zip(params, states)):
        expected = zkd.convert.state_dict_to_variables(
            {k: torch.from_numpy(v) for k, v in theirs.items()}, template)["params"]
        flat_ours = jax.tree_util.tree_leaves_with_path(ours)
        flat_theirs = dict(jax.tree_util.tree_leaves_with_path(expected))
        for path, value in flat_ours:
            ref = np.asarray(flat_theirs[path])
            # float32 roundoff of a forward/backward through 8 layers: |diff| small against the update's size
            np.testing.assert_allclose(value, ref, rtol=1e-4, atol=2e-5,
                                       err_msg=f"step {step + 1}, {jax.tree_util.keystr(path)} ({preset} options)")
