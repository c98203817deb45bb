"""Pure, jit/grad/vmap/pmap/shard_map-safe distillation losses. Never imports Flax.

Every loss computes in float32 whatever the input dtype and equals the released PyTorch code
of Sun et al. (CVPR 2024) for the same logits, with and without logit standardization.

- ``standardize(logits, eps=1e-7, ddof=1)``: per-sample z-score over the class axis.
- ``kd_loss(student, teacher, temperature, logit_stand=False, *, reduction="mean")``
- ``dkd_loss(student, teacher, labels, alpha, beta, temperature, logit_stand=False, *, reduction)``
  and ``dkd_terms`` (per-example TCKD, NCKD), ``dkd_warmup``.
- ``mlkd_loss(student_weak, student_strong, teacher_weak, teacher_strong, temperature, kd_weight,
  logit_stand=False, *, mode="released", axis_name=None)`` -> dict of named terms.
- CTKD: ``gradient_reversal``, ``ctkd_temperature``, ``ctkd_lambda``, ``init_temperature_param``.
- ``cross_entropy``, ``correct_top_k`` on raw logits.

``reduction="none"`` gives per-example losses [B] so callers can mask padded examples.
Temperatures and weights may be traced scalars (``jax.vmap`` over a hyper-parameter grid).
"""

from zkd.losses.classification import correct_top_k, cross_entropy
from zkd.losses.ctkd import ctkd_lambda, ctkd_temperature, gradient_reversal, init_temperature_param
from zkd.losses.dkd import dkd_loss, dkd_terms, dkd_warmup
from zkd.losses.kd import kd_loss
from zkd.losses.mlkd import mlkd_loss
from zkd.losses.standardize import standardize

__all__ = [
    "standardize",
    "kd_loss",
    "dkd_loss",
    "dkd_terms",
    "dkd_warmup",
    "mlkd_loss",
    "gradient_reversal",
    "ctkd_temperature",
    "ctkd_lambda",
    "init_temperature_param",
    "cross_entropy",
    "correct_top_k",
]
