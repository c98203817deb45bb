"""Curriculum temperature KD (Li et al., AAAI 2023), global variant.

A learnable scalar ``p`` sets the temperature ``T = 1 + 20 * sigmoid(GRL(p))``. The gradient
reversal layer GRL is the identity forward and multiplies the gradient by ``lambda`` backward;
``lambda`` follows a cosine from 0 to -1 over the first 10 epochs, then stays -1, so the
temperature is trained to *increase* the distillation loss (an adversarial curriculum).
``p`` is trained by the student's optimizer (weight decay included). With logit
standardization the learned temperature replaces the base temperature after z-scoring::

    t = ctkd_temperature(p, ctkd_lambda(epoch))
    loss = kd_loss(student, teacher, t, logit_stand=True)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

T_MIN = 1.0
T_RANGE = 20.0
LAMBDA_START, LAMBDA_END, LAMBDA_EPOCHS = 0.0, -1.0, 10.0


@jax.custom_vjp
def gradient_reversal(x: jax.Array, lambda_: jax.Array) -> jax.Array:
    """Identity forward; the backward pass multiplies the incoming gradient by ``lambda_``.

    ``lambda_`` (a scalar, may be traced) gets a zero gradient.
    """
    return x


def _grl_fwd(x, lambda_):
    return x, lambda_


def _grl_bwd(lambda_, g):
    return (jnp.asarray(lambda_, g.dtype) * g, jnp.zeros_like(lambda_))


gradient_reversal.defvjp(_grl_fwd, _grl_bwd)


def ctkd_temperature(p: jax.Array, lambda_) -> jax.Array:
    """The global learnable temperature ``1 + 20 * sigmoid(GRL(p, lambda_))``, float32 scalar.

    Args:
      p: the learnable scalar (initialised at 1, see ``init_temperature_param``).
      lambda_: the gradient-reversal factor, from ``ctkd_lambda``.
    """
    p = jnp.asarray(p, jnp.float32)
    lambda_ = jnp.asarray(lambda_, jnp.float32)
    if p.ndim != 0:
        raise ValueError(f"p must be a scalar (the global temperature), got shape {p.shape}")
    return T_MIN + T_RANGE * jax.nn.sigmoid(gradient_reversal(p, lambda_))


def init_temperature_param() -> jax.Array:
    """The released initial value of ``p``: 1.0."""
    return jnp.asarray(1.0, jnp.float32)


def ctkd_lambda(
    epoch,
    decay_epochs: float = LAMBDA_EPOCHS,
    start: float = LAMBDA_START,
    end: float = LAMBDA_END,
) -> jax.Array:
    """The cosine lambda schedule: ``start`` at epoch 0 to ``end`` at ``decay_epochs``, then flat.

    ``end + (start - end) * (1 + cos(pi * min(epoch, decay_epochs) / decay_epochs)) / 2``,
    with negative epochs clamped to 0. ``epoch`` may be a traced number.
    """
    e = jnp.clip(jnp.asarray(epoch, jnp.float32), 0.0, decay_epochs)
    return end + (start - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * e / decay_epochs))
