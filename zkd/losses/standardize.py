"""Z-score logit standardization, the core of Sun et al. (CVPR 2024)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from zkd.losses._common import compute_dtype

DEFAULT_EPS = 1e-7
DEFAULT_DDOF = 1  # the released code uses torch.std (unbiased); see docs/paper.md §1


def standardize(logits: jax.Array, eps: float = DEFAULT_EPS, ddof: int = DEFAULT_DDOF) -> jax.Array:
    """Z-score each sample's logits over the last axis: ``(x - mean(x)) / (eps + std(x))``.

    The mean and std run over the class axis of each sample separately (never over the
    batch). ``ddof=1`` (unbiased std, ``torch.std``) is what the released code uses and what
    produced the published numbers; ``ddof=0`` is the population std of the paper's
    Algorithm 1. The result is zero-mean, has std ``1/(1 + eps/std)`` ~ 1 (with the same ddof),
    keeps the ranking of the logits and is bounded by ``(K-1)/sqrt(K)`` in absolute value for
    ``ddof=1``.

    Gradients flow through the mean and the std. Constant logits (std 0) map to zeros with
    finite gradients.

    Args:
      logits: [..., K] real floating array, any dtype; computed in float32 (or float64 input).
      eps: added to the std (not the variance), 1e-7 as released.
      ddof: delta degrees of freedom of the std; needs ``K > ddof``.

    Returns:
      [..., K] standardized logits in float32 (float64 for float64 input).
    """
    if not hasattr(logits, "dtype"):
        logits = jnp.asarray(logits)
    if not jnp.issubdtype(logits.dtype, jnp.floating):
        raise TypeError(
            f"logits must be real floating-point, got dtype {logits.dtype}; "
            "cast with logits.astype(jnp.float32)"
        )
    if logits.ndim < 1:
        raise ValueError("logits must have a class axis (the last axis), got a scalar")
    _, centered, std = _centered_and_std(logits, ddof)
    return centered / (eps + std)


def _centered_and_std(
    logits: jax.Array, ddof: int, mean_gradient: bool = True
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(x in float32, x - mean [..., K], std [..., 1]), with finite gradients at std 0.

    ``mean_gradient=False`` stops the gradient through the mean: exact whenever the consumer
    is invariant to a per-sample shift (any softmax), and one reduction cheaper backward.
    """
    num_classes = logits.shape[-1]
    if num_classes <= ddof:
        raise ValueError(
            f"standardize needs more classes than ddof: got {num_classes} classes with ddof={ddof}"
        )
    x = logits.astype(compute_dtype(logits.dtype))
    mean = jnp.mean(x, axis=-1, keepdims=True)
    centered = x - (mean if mean_gradient else jax.lax.stop_gradient(mean))
    var = jnp.sum(centered * centered, axis=-1, keepdims=True) / (num_classes - ddof)
    # sqrt has an infinite derivative at 0; the double `where` keeps gradients finite for
    # constant logits (where `centered` is 0 and the std's gradient is irrelevant).
    positive = var > 0
    std = jnp.where(positive, jnp.sqrt(jnp.where(positive, var, 1.0)), 0.0)
    return x, centered, std


def shifted_standardized_over_temperature(
    logits: jax.Array, temperature: jax.Array, eps: float = DEFAULT_EPS, ddof: int = DEFAULT_DDOF
) -> jax.Array:
    """``standardize(logits) / temperature`` minus its per-sample maximum (so the maximum is 0).

    The losses' hot path: every consumer is a softmax, which ignores a per-sample shift, so the
    z-score's centring is replaced by the max-subtraction a softmax needs anyway (one pass over
    the logits fewer, and no cancellation for large offsets). The gradient is that of the
    z-score in front of a softmax: nothing flows through the mean or the max, exactly as the
    shift-invariance implies.
    """
    x, centered, std = _centered_and_std(logits, ddof, mean_gradient=False)
    x_max = jax.lax.stop_gradient(jnp.max(x, axis=-1, keepdims=True))
    return (x - x_max) * (1.0 / ((eps + std) * temperature))


def centered_standardized_over_temperature(
    logits: jax.Array, temperature: jax.Array, eps: float = DEFAULT_EPS, ddof: int = DEFAULT_DDOF
) -> jax.Array:
    """``standardize(logits) / temperature`` with no gradient through the mean: for consumers
    that are invariant to a per-sample shift and take their own maximum (DKD's non-target
    max), which then need neither the z-score's mean gradient nor a max-shift pass here."""
    _, centered, std = _centered_and_std(logits, ddof, mean_gradient=False)
    return centered * (1.0 / ((eps + std) * temperature))
