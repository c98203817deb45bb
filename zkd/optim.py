"""Optimizers and learning-rate schedules with PyTorch semantics, as the reference trainers use.

The CNN recipes (``config.optimizer.name="sgd"``, ``schedule="piecewise"``, the default):

``torch.optim.SGD(params, lr, momentum=0.9, weight_decay=wd)`` (no Nesterov, no dampening):

    g   = grad + wd * param          # coupled weight decay, on every parameter (BN and biases too)
    buf = momentum * buf + g         # buf starts at 0, so the first buf is g (torch clones g)
    param = param - lr * buf

The learning rate is set per epoch: ``base_lr * decay_rate ** (number of milestones <= epoch)``
with epochs counted from 0 inside the schedule (the reference trainers adjust the rate at the
start of epochs 150, 180, 210 counted from 1, i.e. after 150 complete epochs).

The transformer students of the release's ``tiny-transformers/`` (docs/paper.md §8;
``name="adamw"``, ``schedule="cosine"``): ``torch.optim.AdamW`` with the parameter groups of
``tiny-transformers/pycls/core/optimizer.py`` (no weight decay on 1-D parameters, biases,
``cls_token``, ``pos_embed*``, ``distill_token``: ``transformer_decay_mask``), and timm's
``CosineLRScheduler`` stepped once per epoch (``scheduler.step(epoch + 1)`` after each epoch
in ``pycls/core/trainer.py``): ``warmup_cosine_epoch_schedule``.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import optax

from zkd.errors import ConfigError

# Parameters whose name contains one of these are not decayed (tiny-transformers/pycls/core/optimizer.py).
NO_DECAY_NAMES = ("cls_token", "pos_embed", "distill_token")


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


def warmup_cosine_epoch_schedule(
    base_lr: float, steps_per_epoch: int, num_epochs: int, warmup_epochs: int = 0, warmup_factor: float = 1e-3,
    min_lr: float = 0.0,
) -> optax.Schedule:
    """timm's ``CosineLRScheduler(t_initial=num_epochs, lr_min=min_lr, warmup_t=warmup_epochs,
    warmup_lr_init=warmup_factor * base_lr)`` stepped per epoch (defaults: no warm-up prefix, one cycle).

    With e = step // steps_per_epoch (the epoch, from 0) and w0 = warmup_factor * base_lr::

        e <  warmup_epochs:  lr = w0 + e * (base_lr - w0) / warmup_epochs
        e >= warmup_epochs:  lr = min_lr + (base_lr - min_lr) * (1 + cos(pi * e / num_epochs)) / 2
        e >= num_epochs:     lr = min_lr

    The cosine counts epochs from 0, not from the end of the warm-up (timm's ``warmup_prefix=False``).
    """
    if steps_per_epoch < 1 or num_epochs < 1:
        raise ValueError(f"steps_per_epoch and num_epochs must be >= 1, got {steps_per_epoch}, {num_epochs}")
    if warmup_epochs < 0:
        raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
    w0 = warmup_factor * base_lr

    def schedule(step):
        epoch = (jnp.asarray(step) // steps_per_epoch).astype(jnp.float32)
        cosine = min_lr + 0.5 * (base_lr - min_lr) * (1.0 + jnp.cos(math.pi * epoch / num_epochs))
        lr = jnp.where(epoch >= num_epochs, min_lr, cosine)
        if warmup_epochs > 0:
            lr = jnp.where(epoch < warmup_epochs, w0 + epoch * ((base_lr - w0) / warmup_epochs), lr)
        return lr

    return schedule


def _path_names(path) -> list[str]:
    return [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]


def transformer_decay_mask(params):
    """True where the release's optimizer decays a parameter: at least 2-D, not named ``bias``,
    no ``NO_DECAY_NAMES`` in its name (LayerNorm scales, biases, class / distillation tokens and
    position embeddings are not decayed; the head follows the same rule)."""

    def decays(path, leaf):
        names = _path_names(path)
        if jnp.ndim(leaf) < 2 or (names and names[-1] == "bias"):
            return False
        return not any(word in name for name in names for word in NO_DECAY_NAMES)

    return jax.tree_util.tree_map_with_path(decays, params)


def torch_adamw(
    learning_rate: optax.ScalarOrSchedule, weight_decay: float = 0.05, b1: float = 0.9, b2: float = 0.999,
    eps: float = 1e-8, mask=transformer_decay_mask,
) -> optax.GradientTransformation:
    """``torch.optim.AdamW(groups, lr, betas=(b1, b2), eps, weight_decay)`` with decay only where
    ``mask(params)`` is True (default: the release's groups, ``transformer_decay_mask``).

    Torch decays first (``p *= 1 - lr * wd``) then takes the Adam step from the bias-corrected
    moments; optax's ``adamw`` adds ``wd * p`` to the Adam direction before scaling by ``-lr``:
    the same update.
    """
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    return optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=mask)


# ----------------------------------------------------------------------------- from a config


OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("piecewise", "cosine")


def make_optimizer(config, steps_per_epoch: int):
    """``(learning_rate_fn, tx)``: the per-epoch schedule and the PyTorch-style optimizer of
    ``config.optimizer``. ``name``: "sgd" (SGD with momentum and coupled weight decay,
    the CNN recipes) or "adamw" (AdamW without decay on biases, norms, tokens and position
    embeddings, the transformer recipe); ``schedule``: "piecewise" (x ``lr_decay`` at each of
    ``lr_milestones``) or "cosine" (``warmup_epochs`` of linear warm-up from ``warmup_factor``,
    then cosine to ``min_lr`` at ``config.num_epochs``)."""
    o = config.optimizer
    name, schedule = o.name, o.schedule
    if schedule == "piecewise":
        lr_fn = piecewise_epoch_schedule(o.learning_rate, steps_per_epoch, tuple(o.lr_milestones), o.lr_decay)
    elif schedule == "cosine":
        lr_fn = warmup_cosine_epoch_schedule(o.learning_rate, steps_per_epoch, config.num_epochs,
                                           o.warmup_epochs, o.warmup_factor, o.min_lr)
    else:
        raise ConfigError(f"config.optimizer.schedule={schedule!r}; valid: {', '.join(SCHEDULES)}")
    if name == "sgd":
        return lr_fn, torch_sgd(lr_fn, o.momentum, o.weight_decay)
    if name == "adamw":
        return lr_fn, torch_adamw(lr_fn, o.weight_decay, o.b1, o.b2, o.eps)
    raise ConfigError(f"config.optimizer.name={name!r}; valid: {', '.join(OPTIMIZERS)}")
