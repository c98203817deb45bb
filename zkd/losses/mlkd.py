"""Multi-level logit distillation (Jin et al., CVPR 2023), as released and as corrected.

MLKD distils on two augmented views of each image (weak and strong) at several temperatures,
with three levels of alignment: instance (KD), batch (sample-similarity Gram matrix P P^T) and
class (class-correlation Gram matrix P^T P). Cross-entropy on both views is the caller's.

``mode="released"`` (default) reproduces the code that produced the published numbers,
quirks included (docs/paper.md §3):

(a) the confidence masks multiply losses that are already batch means, so they act as the
    scalar factors ``mean(mask)`` (~0.5), not as per-sample masks;
(b) the strong-view KD sum uses the *weak*-view logits for its T=2 and T=6 terms;
(c) only the weak-view class and batch terms enter the loss.

``mode="paper"`` corrects all three: per-sample (per-class) masks, strong logits for every
strong term, and the strong-view class and batch terms added.

Masks, from the teacher's weak-view probabilities at temperature 1: a sample is kept when its
max probability is <= the batch median; a class when its summed probability over the batch is
<= the median over classes (``np.percentile(., 50)`` semantics: linear interpolation).
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from zkd.losses import _common
from zkd.losses.kd import kl_per_example, tempered_log_softmax
from zkd.losses.standardize import DEFAULT_DDOF, DEFAULT_EPS

MODES = ("released", "paper")
# The temperature set: the configured T first, then the fixed ones of the release.
EXTRA_TEMPERATURES = (3.0, 5.0, 2.0, 6.0)


def _batch_mean(x: jax.Array, axis_name) -> jax.Array:
    """Mean over the (global, with ``axis_name``) batch of x [B]."""
    m = jnp.mean(x)
    return m if axis_name is None else jax.lax.pmean(m, axis_name)


def _gather_batch(x: jax.Array, axis_name) -> jax.Array:
    """The global batch [B_global, ...] from the local [B, ...] (identity without axis_name).

    Built with a psum of per-device slots rather than ``all_gather`` so the result is
    replicated (device-invariant) under ``shard_map``'s replication checks as well as ``pmap``.
    """
    if axis_name is None:
        return x
    num_devices = jax.lax.axis_size(axis_name)
    slots = jnp.zeros((num_devices,) + x.shape, x.dtype)
    slots = jax.lax.dynamic_update_index_in_dim(slots, x, jax.lax.axis_index(axis_name), axis=0)
    return jax.lax.psum(slots, axis_name).reshape((num_devices * x.shape[0],) + x.shape[1:])


def _median(x: jax.Array) -> jax.Array:
    return jnp.percentile(x, 50.0, method="linear")


def confidence_masks(teacher_weak: jax.Array, axis_name=None) -> tuple[jax.Array, jax.Array]:
    """(sample mask [B] float, class mask [K] float) from teacher weak-view logits [B, K]."""
    probs = jax.nn.softmax(jax.lax.stop_gradient(teacher_weak), axis=-1)
    confidence = jnp.max(probs, axis=-1)
    threshold = _median(_gather_batch(confidence, axis_name))
    sample_mask = (confidence <= threshold).astype(probs.dtype)
    class_confidence = jnp.sum(probs, axis=0)
    if axis_name is not None:
        class_confidence = jax.lax.psum(class_confidence, axis_name)
    class_mask = (class_confidence <= _median(class_confidence)).astype(probs.dtype)
    return sample_mask, class_mask


def _instance_kd(student, teacher, t, logit_stand, eps, ddof) -> jax.Array:
    """Per-example T^2 KL [B] (LS applies here only)."""
    log_p_s, log_p_t = tempered_log_softmax(student, teacher, t, logit_stand, eps, ddof)
    return kl_per_example(log_p_t, log_p_s) * t**2


def _gram_sq_diffs(student, teacher, t, axis_name):
    """Squared differences of the batch Gram [B_g, B_g] and class Gram [K, K] matrices.

    Returns (batch_sq [B_g, B_g], class_sq [K, K], B_global). Probabilities at temperature t.
    """
    p_s = jax.nn.softmax(student / t, axis=-1)
    p_t = jax.nn.softmax(jax.lax.stop_gradient(teacher) / t, axis=-1)
    hi = jax.lax.Precision.HIGHEST
    class_s = jnp.matmul(p_s.T, p_s, precision=hi)
    class_t = jnp.matmul(p_t.T, p_t, precision=hi)
    if axis_name is not None:
        class_s = jax.lax.psum(class_s, axis_name)
        class_t = jax.lax.psum(class_t, axis_name)
    g_s, g_t = _gather_batch(p_s, axis_name), _gather_batch(p_t, axis_name)
    batch_s = jnp.matmul(g_s, g_s.T, precision=hi)
    batch_t = jnp.matmul(g_t, g_t.T, precision=hi)
    return (batch_t - batch_s) ** 2, (class_t - class_s) ** 2, g_s.shape[0]


def mlkd_loss(
    student_weak: jax.Array,
    student_strong: jax.Array,
    teacher_weak: jax.Array,
    teacher_strong: jax.Array,
    temperature,
    kd_weight,
    logit_stand: bool = False,
    *,
    mode: str = "released",
    axis_name: Optional[str] = None,
    eps: float = DEFAULT_EPS,
    ddof: int = DEFAULT_DDOF,
) -> dict[str, jax.Array]:
    """MLKD's distillation terms (everything but cross-entropy), each times ``kd_weight``.

    Args:
      student_weak, student_strong: student logits on the weak / strong view, [B, K].
      teacher_weak, teacher_strong: teacher logits on the same views, [B, K]; no gradient.
      temperature: the configured T > 0; the terms sum over T and 3, 5, 2, 6 (with LS the
        paper's base temperature 2, so 2 counts twice, as released).
      kd_weight: multiplies every term.
      logit_stand: z-score the logits of the instance-level KD terms (only those, as released).
      mode: "released" (default, quirks kept) or "paper" (corrected), see the module docstring.
      axis_name: under ``pmap``/``shard_map``, the mapped batch axis: masks, batch means and
        Gram matrices are then computed over the global batch. None: the local batch.
      eps, ddof: of ``standardize``.

    Returns:
      dict of float32 scalars whose sum is the distillation loss: "kd_weak", "kd_strong",
      "cc_weak", "bc_weak", and in "paper" mode also "cc_strong", "bc_strong".
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    sw, tw = _common.as_logit_pair(student_weak, teacher_weak, "student_weak", "teacher_weak")
    ss, ts = _common.as_logit_pair(student_strong, teacher_strong, "student_strong", "teacher_strong")
    if sw.shape != ss.shape:
        raise ValueError(
            f"student_weak has shape {tuple(sw.shape)} but student_strong has shape "
            f"{tuple(ss.shape)}; both views must hold the same batch"
        )
    dtype = jnp.promote_types(sw.dtype, ss.dtype)
    sw, tw, ss, ts = (x.astype(dtype) for x in (sw, tw, ss, ts))
    tw, ts = jax.lax.stop_gradient(tw), jax.lax.stop_gradient(ts)
    base_t = _common.as_scalar(temperature, "temperature", dtype, positive=True)
    weight = _common.as_scalar(kd_weight, "kd_weight", dtype, nonnegative=True)
    temperatures = (base_t,) + tuple(jnp.asarray(t, dtype) for t in EXTRA_TEMPERATURES)
    num_classes = sw.shape[-1]

    sample_mask, class_mask = confidence_masks(tw, axis_name)
    released = mode == "released"
    mask_fraction = _batch_mean(sample_mask, axis_name)
    class_mask_fraction = jnp.mean(class_mask)

    def kd(student, teacher, t, masked):
        per_example = _instance_kd(student, teacher, t, logit_stand, eps, ddof)
        if not masked:
            return _batch_mean(per_example, axis_name)
        if released:
            return _batch_mean(per_example, axis_name) * mask_fraction
        return _batch_mean(per_example * sample_mask, axis_name)

    def gram_terms(student, teacher, t):
        batch_sq, class_sq, global_batch = _gram_sq_diffs(student, teacher, t, axis_name)
        if released:
            bc = jnp.sum(batch_sq) / global_batch * mask_fraction
            cc = jnp.sum(class_sq) / num_classes * class_mask_fraction
        else:
            # Column j of the batch Gram belongs to sample j (rows alike: it is symmetric).
            bc = jnp.sum(batch_sq * _gather_batch(sample_mask, axis_name)[None, :]) / global_batch
            cc = jnp.sum(class_sq * class_mask[None, :]) / num_classes
        return bc, cc

    terms = {"kd_weak": 0.0, "kd_strong": 0.0, "cc_weak": 0.0, "bc_weak": 0.0}
    if not released:
        terms.update(cc_strong=0.0, bc_strong=0.0)
    for i, t in enumerate(temperatures):
        terms["kd_weak"] += kd(sw, tw, t, masked=True)
        # Quirk (b): the release's strong sum takes its 4th and 5th terms (T=2, 6) on weak logits.
        strong_view = (sw, tw) if (released and i >= 3) else (ss, ts)
        terms["kd_strong"] += kd(*strong_view, t, masked=False)
        bc, cc = gram_terms(sw, tw, t)
        terms["bc_weak"] += bc
        terms["cc_weak"] += cc
        if not released:
            bc, cc = gram_terms(ss, ts, t)
            terms["bc_strong"] += bc
            terms["cc_strong"] += cc
    return {name: weight * value for name, value in terms.items()}
