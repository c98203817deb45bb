"""Optimizer and learning-rate schedule with PyTorch SGD semantics, as the reference trainers use.

``torch.optim.SGD(params, lr, momentum=0.9, weight_decay=wd)`` (no Nesterov, no dampening):

    g   = grad + wd * param          # coupled weight decay, on every parameter (BN and biases too)
    buf = momentum * buf + g         # buf starts at 0, so the first buf is g (torch clones g)
    param = param - lr * buf

The learning rate is set per epoch: ``base_lr * decay_rate ** (number of milestones <= epoch)``
with epochs counted from 0 inside the schedule (the reference trainers adjust the rate at the
start of epochs 150, 180, 210 counted from 1, i.e. after 150 complete epochs).
"""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
import optax


def piecewise_epoch_schedule(
    base_lr: float, steps_per_epoch: int, milestones: Sequence[int], decay_rate: float = 0.1
) -> optax.Schedule:
    """lr(step) = base_lr * decay_rate ** #{m in milestones : m <= step // steps_per_epoch}.

    ``milestones`` are numbers of completed epochs (150 means: from the 151st epoch on).
    """
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    boundaries = jnp.asarray(sorted(milestones), jnp.int32) if milestones else jnp.zeros((0,), jnp.int32)

    def schedule(step):
        epoch = jnp.asarray(step, jnp.int32) // steps_per_epoch
        passed = jnp.sum(epoch >= boundaries)
        return base_lr * jnp.asarray(decay_rate, jnp.float32) ** passed

    return schedule


def torch_sgd(
    learning_rate: optax.ScalarOrSchedule, momentum: float = 0.9, weight_decay: float = 5e-4
) -> optax.GradientTransformation:
    """``torch.optim.SGD(lr, momentum, weight_decay)`` semantics (no Nesterov, no dampening)."""
    if momentum < 0 or weight_decay < 0:
        raise ValueError(f"momentum and weight_decay must be >= 0, got {momentum}, {weight_decay}")
    return optax.chain(
        optax.add_decayed_weights(weight_decay),
        optax.trace(decay=momentum, nesterov=False),
        optax.scale_by_learning_rate(learning_rate),
    )
