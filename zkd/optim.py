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

import optax


def piecewise_epoch_schedule(
    base_lr: float, steps_per_epoch: int, milestones: Sequence[int], decay_rate: float = 0.1
) -> optax.Schedule:
    """lr(step) = base_lr * decay_rate ** #{m in milestones : m <= step // steps_per_epoch}.

    ``milestones`` are numbers of completed epochs (150 means: from the 151st epoch on); a
    milestone given twice decays twice. This is optax's ``piecewise_constant_schedule`` with its
    boundaries at ``m * steps_per_epoch`` (it scales from the boundary step on).
    """
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    scales: dict[int, float] = {}
    for m in milestones:
        scales[int(m) * steps_per_epoch] = scales.get(int(m) * steps_per_epoch, 1.0) * decay_rate
    return optax.piecewise_constant_schedule(base_lr, scales)


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
