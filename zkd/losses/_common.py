"""Input checks and reductions shared by the losses.

Checks run at trace time on shapes and dtypes. Values (label range, temperature sign) are
checked eagerly when they are concrete; under ``jit`` they are traced, and a bad value turns
the loss into NaN instead, so a trainer's non-finite check stops the run (never a silent
wrong number).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

REDUCTIONS = ("mean", "sum", "none")


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def compute_dtype(dtype) -> jnp.dtype:
    """float32, or float64 when the input already is (x64 mode)."""
    return jnp.promote_types(dtype, jnp.float32)


def as_logits(x, name: str) -> jax.Array:
    """Validate logits [B, K] of a real floating dtype and return them in float32 (or wider)."""
    if not hasattr(x, "dtype"):
        x = jnp.asarray(x)
    dtype = jnp.dtype(x.dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        kind = "complex" if jnp.issubdtype(dtype, jnp.complexfloating) else str(dtype)
        raise TypeError(
            f"{name} must be real floating-point logits, got dtype {kind}; "
            f"cast with {name}.astype(jnp.float32)"
        )
    if x.ndim != 2:
        raise ValueError(
            f"{name} must have shape [batch, num_classes], got shape {tuple(x.shape)}; "
            "use jax.vmap for extra leading axes"
        )
    if x.shape[-1] < 2:
        raise ValueError(f"{name} needs at least 2 classes, got shape {tuple(x.shape)}")
    return jnp.asarray(x, compute_dtype(dtype))


def as_logit_pair(student, teacher, student_name="student_logits", teacher_name="teacher_logits"):
    """Validated float32 (student, teacher) logits of the same shape [B, K]."""
    s = as_logits(student, student_name)
    t = as_logits(teacher, teacher_name)
    if s.shape != t.shape:
        raise ValueError(
            f"{student_name} has shape {tuple(s.shape)} but {teacher_name} has shape "
            f"{tuple(t.shape)}; both must be [batch, num_classes] with the same sizes"
        )
    dtype = jnp.promote_types(s.dtype, t.dtype)
    return s.astype(dtype), t.astype(dtype)


def as_labels(labels, batch_size: int, num_classes: int, name: str = "labels") -> jax.Array:
    """Validate integer class indices of shape [B] in [0, K)."""
    if not hasattr(labels, "dtype"):
        labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"{name} must be integer class indices, got dtype {labels.dtype}")
    if tuple(labels.shape) != (batch_size,):
        raise ValueError(
            f"{name} must have shape [batch] = ({batch_size},), got {tuple(labels.shape)}"
        )
    if _is_concrete(labels):
        values = np.asarray(labels)
        bad = values[(values < 0) | (values >= num_classes)]
        if bad.size:
            raise ValueError(
                f"{name} must lie in [0, {num_classes}) (num_classes from the logits), "
                f"got {bad[:5].tolist()}"
            )
    return jnp.asarray(labels, jnp.int32)


def labels_valid(labels: jax.Array, num_classes: int) -> jax.Array:
    """bool [B]: which labels are in range (used to poison traced out-of-range labels with NaN)."""
    return (labels >= 0) & (labels < num_classes)


def as_scalar(value, name: str, dtype, *, positive: bool = False, nonnegative: bool = False):
    """A scalar hyper-parameter (Python number or 0-d array, possibly traced) in ``dtype``."""
    if not hasattr(value, "dtype"):
        value = jnp.asarray(value)
    if jnp.issubdtype(value.dtype, jnp.complexfloating):
        raise TypeError(f"{name} must be real, got dtype {value.dtype}")
    if value.ndim != 0:
        raise ValueError(
            f"{name} must be a scalar, got shape {tuple(value.shape)}; "
            "use jax.vmap to evaluate a grid of values"
        )
    if _is_concrete(value):
        v = float(np.asarray(value))
        if not np.isfinite(v):
            raise ValueError(f"{name} must be finite, got {v}")
        if positive and v <= 0:
            raise ValueError(f"{name} must be > 0, got {v}")
        if nonnegative and v < 0:
            raise ValueError(f"{name} must be >= 0, got {v}")
    return jnp.asarray(value, dtype)


def poison_unless(condition, x):
    """x where ``condition`` holds, NaN elsewhere (broadcasting); a no-op when all hold."""
    return jnp.where(condition, x, jnp.nan)


def reduce(per_example: jax.Array, reduction: str) -> jax.Array:
    """Reduce a per-example loss [B]: "mean" (over the batch), "sum" or "none" ([B])."""
    if reduction == "mean":
        return jnp.mean(per_example)
    if reduction == "sum":
        return jnp.sum(per_example)
    if reduction == "none":
        return per_example
    raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
