"""Hinton knowledge distillation, with optional logit standardization."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from zkd.losses import _common
from zkd.losses.standardize import DEFAULT_DDOF, DEFAULT_EPS, shifted_standardized_over_temperature


def kl_per_example(log_p_teacher: jax.Array, log_p_student: jax.Array) -> jax.Array:
    """KL(teacher || student) summed over the last axis, from log-probabilities: [B, K] -> [B].

    Terms with zero teacher probability contribute exactly 0 (``torch.kl_div``'s convention).
    """
    p_teacher = jnp.exp(log_p_teacher)
    # `== 0`, not `> 0`: a NaN teacher probability must poison the loss, not vanish.
    terms = jnp.where(p_teacher == 0, 0.0, p_teacher * (log_p_teacher - log_p_student))
    return jnp.sum(terms, axis=-1)


def tempered_logits(student, teacher, temperature, logit_stand: bool, eps: float, ddof: int):
    """(student / T, teacher / T), z-scored first when ``logit_stand``; teacher gets no gradient.

    With ``logit_stand`` the values are the z-scores over T minus their per-sample maximum:
    equal up to a per-sample shift, which every softmax downstream ignores.
    """
    teacher = jax.lax.stop_gradient(teacher)
    if logit_stand:
        return (
            shifted_standardized_over_temperature(student, temperature, eps, ddof),
            shifted_standardized_over_temperature(teacher, temperature, eps, ddof),
        )
    return student / temperature, teacher / temperature


def tempered_log_softmax(student, teacher, temperature, logit_stand: bool, eps: float, ddof: int):
    """log softmax of ``tempered_logits`` for (student, teacher), [B, K] each."""
    s, v = tempered_logits(student, teacher, temperature, logit_stand, eps, ddof)
    if logit_stand:  # already max-shifted: skip log_softmax's own max pass
        return (
            s - jnp.log(jnp.sum(jnp.exp(s), axis=-1, keepdims=True)),
            v - jnp.log(jnp.sum(jnp.exp(v), axis=-1, keepdims=True)),
        )
    return jax.nn.log_softmax(s, axis=-1), jax.nn.log_softmax(v, axis=-1)


def kd_loss(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    temperature,
    logit_stand: bool = False,
    *,
    reduction: str = "mean",
    eps: float = DEFAULT_EPS,
    ddof: int = DEFAULT_DDOF,
) -> jax.Array:
    """``T^2 * KL(softmax(v/T) || softmax(z/T))``, summed over classes, averaged over the batch.

    With ``logit_stand`` both logits are first z-scored per sample (``standardize``), so ``T``
    acts as the base temperature of Sun et al.; this equals the released code for both settings.

    Args:
      student_logits: z, [B, K] floating (any dtype; computed in float32).
      teacher_logits: v, [B, K]; no gradient reaches it.
      temperature: T > 0, a Python number or 0-d array (may be traced, e.g. CTKD's learned
        temperature or a ``vmap``ped grid); gradients flow into it through both 1/T and T^2.
      logit_stand: z-score both logits before the softmax.
      reduction: "mean" (over the batch, as released), "sum", or "none" for the per-example
        loss [B] (to mask padded examples).
      eps, ddof: of ``standardize``.

    Returns:
      float32 scalar (or [B] with ``reduction="none"``).
    """
    _common.check_reduction(reduction)
    student, teacher = _common.as_logit_pair(student_logits, teacher_logits)
    t = _common.as_scalar(temperature, "temperature", student.dtype, positive=True)
    log_p_s, log_p_t = tempered_log_softmax(student, teacher, t, logit_stand, eps, ddof)
    per_example = kl_per_example(log_p_t, log_p_s) * t**2
    per_example = _common.poison_unless(t > 0, per_example)
    return _common.reduce(per_example, reduction)
