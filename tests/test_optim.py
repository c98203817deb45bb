"""zkd's optimizer against torch.optim.SGD on the same gradients, and the per-epoch schedule."""

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
    jax_params = jax.tree.map(jnp.asarray, params)
    opt_state = tx.init(jax_params)
    for i, g in enumerate(grads):
        epoch = i // steps_per_epoch
        for group in opt.param_groups:  # the reference trainers set the lr per epoch
            group["lr"] = 0.05 * 0.1 ** sum(epoch >= m for m in milestones)
        for k, p in torch_params.items():
            p.grad = torch.tensor(g[k])
        opt.step()
        updates, opt_state = tx.update(jax.tree.map(jnp.asarray, g), opt_state, jax_params)
        jax_params = optax.apply_updates(jax_params, updates)
    for k in shapes:
        np.testing.assert_allclose(jax_params[k], torch_params[k].detach().numpy(), rtol=1e-6, atol=1e-7)


def test_piecewise_schedule_values():
    schedule = optim.piecewise_epoch_schedule(0.05, 10, (150, 180, 210))
    for epoch, want in [(0, 0.05), (149, 0.05), (150, 0.005), (179, 0.005), (180, 5e-4), (210, 5e-5), (239, 5e-5)]:
        np.testing.assert_allclose(float(schedule(epoch * 10)), want, rtol=1e-6)
        np.testing.assert_allclose(float(schedule(epoch * 10 + 9)), want, rtol=1e-6)
