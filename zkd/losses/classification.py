"""Cross-entropy and accuracy on raw logits, in float32."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from zkd.losses import _common


def cross_entropy(logits: jax.Array, labels: jax.Array, reduction: str = "mean") -> jax.Array:
    """Softmax cross-entropy with integer labels (``torch.nn.functional.cross_entropy``).

    Args:
      logits: [B, K] floating logits (any dtype, computed in float32).
      labels: [B] integer class indices in [0, K). Out-of-range traced labels give NaN.
      reduction: "mean" over the batch, "sum", or "none" for the per-example loss [B].
    """
    _common.check_reduction(reduction)
    x = _common.as_logits(logits, "logits")
    labels = _common.as_labels(labels, x.shape[0], x.shape[1])
    log_probs = jax.nn.log_softmax(x, axis=-1)
    nll = -jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]
    nll = _common.poison_unless(_common.labels_valid(labels, x.shape[1]), nll)
    return _common.reduce(nll, reduction)


def correct_top_k(logits: jax.Array, labels: jax.Array, k: int = 1) -> jax.Array:
    """bool [B]: whether the label is among the k largest logits (ties broken by index)."""
    x = _common.as_logits(logits, "logits")
    labels = _common.as_labels(labels, x.shape[0], x.shape[1])
    _, top = jax.lax.top_k(x, k)
    return jnp.any(top == labels[:, None], axis=-1)
