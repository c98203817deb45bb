"""zkd's optimizers against torch.optim.SGD / AdamW on the same gradients, and the per-epoch schedules."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

from zkd import optim


def test_k_steps_equal_torch_sgd_on_the_same_gradients():
    rng = np.random.default_rng(0)
    shapes = {"kernel": (3, 4), "bias": (4,), "bn_scale": (4,)}
    params = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    grads = [{k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()} for _ in range(7)]
    steps_per_epoch, milestones = 2, (1, 3)  # lr changes inside the 7 steps

    torch_params = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    opt = torch.optim.SGD(list(torch_params.values()), lr=0.05, momentum=0.9, weight_decay=5e-4)
    tx = optim.torch_sgd(optim.piecewise_epoch_schedule(0.05, steps_per_epoch, milestones), 0.9, 5e-4)
    # the reference trainers set the lr per epoch
    lr_of_step = [0.05 * 0.1 ** sum(i // steps_per_epoch >= m for m in milestones) for i in range(len(grads))]
    _assert_same_steps(opt, torch_params, tx, params, grads, lr_of_step, rtol=1e-6, atol=1e-7)


def _assert_same_steps(opt, torch_params, tx, params, grads, lr_of_step, rtol, atol):
    """Step torch's ``opt`` (lr set per step) and optax's ``tx`` on the same gradients; compare."""
    jax_params = jax.tree.map(jnp.asarray, params)
    opt_state = tx.init(jax_params)
    for g, lr in zip(grads, lr_of_step):
        for group in opt.param_groups:
            group["lr"] = lr
        for k, p in torch_params.items():
            p.grad = torch.tensor(g[k])
        opt.step()
        updates, opt_state = tx.update(jax.tree.map(jnp.asarray, g), opt_state, jax_params)
        jax_params = optax.apply_updates(jax_params, updates)
    for k in params:
        np.testing.assert_allclose(jax_params[k], torch_params[k].detach().numpy(), rtol=rtol, atol=atol)


def test_piecewise_schedule_values():
    schedule = optim.piecewise_epoch_schedule(0.05, 10, (150, 180, 210))
    for epoch, want in [(0, 0.05), (149, 0.05), (150, 0.005), (179, 0.005), (180, 5e-4), (210, 5e-5), (239, 5e-5)]:
        np.testing.assert_allclose(float(schedule(epoch * 10)), want, rtol=1e-6)
        np.testing.assert_allclose(float(schedule(epoch * 10 + 9)), want, rtol=1e-6)


def test_warmup_cosine_schedule_is_timms_per_epoch_cosine():
    """The release's schedule (docs/paper.md §8): 20 epochs of warm-up from 1e-3 x 5e-4, cosine to
    5e-6 over 300 epochs, constant within an epoch; values from timm's formula written out by hand."""
    spe = 7
    schedule = optim.warmup_cosine_epoch_schedule(5e-4, spe, 300, warmup_epochs=20, warmup_factor=1e-3, min_lr=5e-6)
    w0 = 5e-7
    expected = {
        0: w0, 1: w0 + (5e-4 - w0) / 20, 19: w0 + 19 * (5e-4 - w0) / 20,
        20: 5e-6 + 0.5 * (5e-4 - 5e-6) * (1 + np.cos(np.pi * 20 / 300)),
        150: 5e-6 + 0.5 * (5e-4 - 5e-6), 299: 5e-6 + 0.5 * (5e-4 - 5e-6) * (1 + np.cos(np.pi * 299 / 300)),
        300: 5e-6, 301: 5e-6,
    }
    for epoch, want in expected.items():
        for step in (epoch * spe, epoch * spe + spe - 1):
            np.testing.assert_allclose(float(schedule(step)), want, rtol=1e-6)
    assert abs(expected[20] - 4.9459e-4) < 1e-8  # just below the peak: the cosine counts from epoch 0
    jitted = jax.jit(schedule)(jnp.arange(0, 300 * spe, 97))
    np.testing.assert_allclose(jitted, [float(schedule(int(s))) for s in range(0, 300 * spe, 97)], rtol=1e-6, atol=1e-10)


def test_transformer_decay_mask_follows_the_release_groups():
    params = {"student": {
        "cls_token": np.zeros((1, 1, 4)), "distill_token": np.zeros((1, 1, 4)), "pos_embed": np.zeros((1, 5, 4)),
        "pos_embed3": np.zeros((1, 5, 4)), "patch_embed": {"projection": {"kernel": np.zeros((2, 2, 3, 4)),
                                                                           "bias": np.zeros((4,))}},
        "norm": {"scale": np.zeros((4,)), "bias": np.zeros((4,))},
        "head": {"kernel": np.zeros((4, 10)), "bias": np.zeros((10,))},
    }}
    mask = optim.transformer_decay_mask(params)["student"]
    assert mask["patch_embed"]["projection"] == {"kernel": True, "bias": False}
    assert mask["head"] == {"kernel": True, "bias": False} and mask["norm"] == {"scale": False, "bias": False}
    assert not any(mask[k] for k in ("cls_token", "distill_token", "pos_embed", "pos_embed3"))


def test_k_steps_equal_torch_adamw_with_the_release_parameter_groups():
    rng = np.random.default_rng(1)
    shapes = {"kernel": (3, 4), "bias": (4,), "pos_embed": (1, 3, 4), "scale": (4,)}
    params = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    grads = [{k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()} for _ in range(6)]
    spe = 2
    lr_fn = optim.warmup_cosine_epoch_schedule(5e-3, spe, 5, warmup_epochs=1, warmup_factor=1e-3, min_lr=5e-5)
    torch_params = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    opt = torch.optim.AdamW([{"params": [torch_params["kernel"]], "weight_decay": 0.05},
                             {"params": [torch_params[k] for k in ("bias", "pos_embed", "scale")], "weight_decay": 0.0}],
                            lr=5e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05)
    lr_of_step = [float(lr_fn(i)) for i in range(len(grads))]
    _assert_same_steps(opt, torch_params, optim.torch_adamw(lr_fn, 0.05), params, grads, lr_of_step,
                       rtol=1e-5, atol=1e-6)


def test_default_optimizer_fields_reproduce_the_sgd_piecewise_optimizer():
    """Every existing config leaves optimizer.name / schedule at their defaults: the schedule and the
    updates are the explicit SGD + piecewise ones, bit for bit."""
    from zkd import recipes

    c = recipes.cifar_distillation("kd", "resnet32x4", "resnet8x4", True)
    assert (c.optimizer.name, c.optimizer.schedule) == ("sgd", "piecewise")
    lr_fn, tx = optim.make_optimizer(c, 10)
    want_lr = optim.piecewise_epoch_schedule(0.05, 10, (150, 180, 210), 0.1)
    want_tx = optim.torch_sgd(want_lr, 0.9, 5e-4)
    steps = jnp.array([0, 1499, 1500, 1800, 2100, 2399])
    np.testing.assert_array_equal(jax.vmap(lr_fn)(steps), jax.vmap(want_lr)(steps))
    params = {"w": jnp.arange(6.0).reshape(2, 3)}
    grads = {"w": jnp.ones((2, 3)) * 0.3}
    got, _ = tx.update(grads, tx.init(params), params)
    want, _ = want_tx.update(grads, want_tx.init(params), params)
    np.testing.assert_array_equal(got["w"], want["w"])
