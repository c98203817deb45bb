"""Decoupled knowledge distillation (Zhao et al., CVPR 2022), with optional standardization."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from zkd.losses import _common
from zkd.losses.kd import kl_per_example, tempered_logits
from zkd.losses.standardize import DEFAULT_DDOF, DEFAULT_EPS, centered_standardized_over_temperature


def _decoupled_log_probs(x: jax.Array, is_target: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The two distributions DKD compares, from tempered logits ``x`` [B, K] (any per-sample shift).

    Returns ``(binary, log_q, q)``: ``binary`` [B, 2] = log (p_target, p_non_target) of
    softmax(x); ``log_q`` [B, K] = log softmax of x over the non-target classes (-inf at the
    target) and ``q`` its probabilities (0 at the target).

    One max and one exp-sum over the non-target logits serve all three: their log-sum-exp
    ``lse_o`` normalises ``q``, and the full log-normaliser is ``logaddexp(lse_o, x_target)``,
    so nothing is subtracted from a sum of probabilities (no cancellation when the target
    dominates) and every exponent is <= 0 (finite for any finite logits).
    """
    x_target = jnp.sum(jnp.where(is_target, x, 0.0), axis=-1, keepdims=True)
    others = jnp.where(is_target, -jnp.inf, x)
    # The result is invariant to this shift: no gradient through it, as in log_softmax.
    shift = jax.lax.stop_gradient(jnp.max(others, axis=-1, keepdims=True))
    e = jnp.exp(others - shift)
    z = jnp.sum(e, axis=-1, keepdims=True)
    lse_o = shift + jnp.log(z)
    lse = jnp.logaddexp(lse_o, x_target)
    binary = jnp.concatenate([x_target - lse, lse_o - lse], axis=-1)
    return binary, others - lse_o, e / z


def dkd_terms(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    labels: jax.Array,
    temperature,
    logit_stand: bool = False,
    *,
    eps: float = DEFAULT_EPS,
    ddof: int = DEFAULT_DDOF,
) -> tuple[jax.Array, jax.Array]:
    """Per-example (TCKD, NCKD), each [B] float32 and already multiplied by T^2.

    TCKD is the KL between the binary (target, non-target) distributions of teacher and
    student; NCKD the KL between their distributions over the non-target classes only.
    The released code removes the target by subtracting 1000 from its logit and takes the log
    of summed probabilities (inf/NaN for large logits); here the target is excluded exactly and
    everything stays in log space, which gives the same numbers wherever the released code is
    finite (|logit / T| well below 1000) and finite values everywhere else.
    """
    student, teacher = _common.as_logit_pair(student_logits, teacher_logits)
    batch, num_classes = student.shape
    labels = _common.as_labels(labels, batch, num_classes)
    t = _common.as_scalar(temperature, "temperature", student.dtype, positive=True)
    if logit_stand:  # _decoupled_log_probs shifts by its own maximum: no max-shift pass here
        s = centered_standardized_over_temperature(student, t, eps, ddof)
        v = centered_standardized_over_temperature(jax.lax.stop_gradient(teacher), t, eps, ddof)
    else:
        s, v = tempered_logits(student, teacher, t, False, eps, ddof)
    is_target = jax.nn.one_hot(labels, num_classes, dtype=jnp.bool_)

    binary_s, log_q_s, _ = _decoupled_log_probs(s, is_target)
    binary_t, log_q_t, q_t = _decoupled_log_probs(v, is_target)
    tckd = kl_per_example(binary_t, binary_s)
    # KL over the non-target classes, reusing q_t. The target's log-ratio (-inf - -inf) is zeroed
    # before the product: left NaN, it reached the gradients (0 * NaN: in the temperature, say).
    # Zero teacher probabilities add exactly 0 (torch.kl_div); a NaN one still poisons the loss.
    ratio = jnp.where(is_target, 0.0, log_q_t - log_q_s)
    nckd = jnp.sum(jnp.where(q_t == 0, 0.0, q_t * ratio), axis=-1)

    valid = _common.labels_valid(labels, num_classes) & (t > 0)
    scale = t**2
    return (
        _common.poison_unless(valid, tckd * scale),
        _common.poison_unless(valid, nckd * scale),
    )


def dkd_loss(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    labels: jax.Array,
    alpha,
    beta,
    temperature,
    logit_stand: bool = False,
    *,
    reduction: str = "mean",
    eps: float = DEFAULT_EPS,
    ddof: int = DEFAULT_DDOF,
) -> jax.Array:
    """``alpha * TCKD + beta * NCKD`` (each times T^2), summed over classes, mean over the batch.

    Equals the released DKD for both settings of ``logit_stand`` (with LS the paper multiplies
    alpha and beta by the KD weight; pass the products). The warm-up factor
    ``min(epoch / warmup, 1)`` is the caller's (see ``dkd_warmup``).

    Args:
      student_logits, teacher_logits: [B, K] floating; the teacher gets no gradient.
      labels: [B] integer targets in [0, K).
      alpha, beta: weights of TCKD and NCKD (scalars; may be traced).
      temperature: T > 0 (scalar; may be traced).
      logit_stand: z-score both logits first.
      reduction: "mean", "sum" or "none" ([B]).

    Returns:
      float32 scalar, or [B] with ``reduction="none"``.
    """
    _common.check_reduction(reduction)
    tckd, nckd = dkd_terms(
        student_logits, teacher_logits, labels, temperature, logit_stand, eps=eps, ddof=ddof
    )
    alpha = _common.as_scalar(alpha, "alpha", tckd.dtype, nonnegative=True)
    beta = _common.as_scalar(beta, "beta", tckd.dtype, nonnegative=True)
    return _common.reduce(alpha * tckd + beta * nckd, reduction)


def dkd_warmup(epoch, warmup_epochs: float = 20.0) -> jax.Array:
    """DKD's warm-up factor ``min(epoch / warmup_epochs, 1)``, epochs counted from 1 as released."""
    epoch = jnp.asarray(epoch, jnp.float32)
    return jnp.minimum(epoch / warmup_epochs, 1.0)
