"""Pure train and eval steps, built from a config.

``make_train_step(settings)`` returns ``train_step(state, batch, rng) -> (state, metrics)`` for

    =======  ============================================================================
    method   loss (student logits z, teacher logits v, labels y; LS = logit standardization)
    =======  ============================================================================
    ce       ce_weight * CE(z, y)                              (teachers, plain students)
    kd       ce_weight * CE + kd_weight * kd_loss(z, v, T, LS)
    dkd      ce_weight * CE + min(epoch / warmup, 1) * dkd_loss(z, v, y, alpha, beta, T, LS)
    mlkd     ce_weight * (CE(z_weak) + CE(z_strong)) + sum(mlkd_loss(..., T, kd_weight, LS))
    ctkd     ce_weight * CE + kd_weight * kd_loss(z, v, T_learned, LS),
             T_learned = ctkd_temperature(p, ctkd_lambda(epoch))
    =======  ============================================================================

Epochs are counted from 1 inside the step (``state.step // steps_per_epoch + 1``), as the
reference trainers count them for DKD's warm-up and CTKD's lambda. The teacher runs in eval
mode behind ``stop_gradient``; the student in train mode (BatchNorm statistics of the batch,
running statistics updated; MLKD's two views are two forward passes, as released).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from zkd import losses
from zkd.state import TrainState

METHODS = ("ce", "kd", "dkd", "mlkd", "ctkd")


@dataclasses.dataclass(frozen=True)
class StepSettings:
    """Static settings of the train step (hashable, so the step traces once)."""

    method: str
    steps_per_epoch: int
    learning_rate_fn: Callable[[jax.Array], jax.Array]
    logit_stand: bool = False
    ce_weight: float = 1.0
    kd_weight: float = 1.0
    temperature: float = 4.0
    dkd_alpha: float = 1.0
    dkd_beta: float = 8.0
    dkd_warmup_epochs: float = 20.0
    mlkd_mode: str = "released"

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {self.steps_per_epoch}")

    @property
    def needs_teacher(self) -> bool:
        return self.method != "ce"

    @property
    def two_views(self) -> bool:
        return self.method == "mlkd"


def _per_sample_std(logits: jax.Array) -> jax.Array:
    """Mean over the batch of each sample's logit std over classes (ddof=1, as the paper's Fig. 5)."""
    return jnp.mean(jnp.std(logits.astype(jnp.float32), axis=-1, ddof=1))


def _teacher_logits(state: TrainState, images: jax.Array) -> jax.Array:
    logits = state.teacher_apply_fn(state.teacher_variables, images, train=False)
    return jax.lax.stop_gradient(logits.astype(jnp.float32))


def loss_terms(settings: StepSettings, params, student_logits, teacher_logits, labels, epoch) -> dict:
    """The named loss terms (float32 scalars) whose sum is the training loss.

    ``student_logits`` / ``teacher_logits`` are [B, K] arrays, or (weak, strong) pairs for MLKD.
    """
    s = settings
    if s.method == "mlkd":
        (zw, zs), (vw, vs) = student_logits, teacher_logits
        terms = {"ce": s.ce_weight * (losses.cross_entropy(zw, labels) + losses.cross_entropy(zs, labels))}
        mlkd = losses.mlkd_loss(zw, zs, vw, vs, s.temperature, s.kd_weight, s.logit_stand, mode=s.mlkd_mode)
        terms.update({f"mlkd_{name}": value for name, value in mlkd.items()})
        return terms
    terms = {"ce": s.ce_weight * losses.cross_entropy(student_logits, labels)}
    if s.method == "kd":
        terms["kd"] = s.kd_weight * losses.kd_loss(student_logits, teacher_logits, s.temperature, s.logit_stand)
    elif s.method == "dkd":
        warmup = losses.dkd_warmup(epoch, s.dkd_warmup_epochs)
        terms["dkd"] = warmup * losses.dkd_loss(
            student_logits, teacher_logits, labels, s.dkd_alpha, s.dkd_beta, s.temperature, s.logit_stand
        )
    elif s.method == "ctkd":
        temperature = losses.ctkd_temperature(params["ctkd"]["p"], losses.ctkd_lambda(epoch))
        terms["kd"] = s.kd_weight * losses.kd_loss(student_logits, teacher_logits, temperature, s.logit_stand)
    return terms


def make_train_step(settings: StepSettings) -> Callable[[TrainState, dict, jax.Array], tuple[TrainState, dict]]:
    """``train_step(state, batch, rng) -> (state, metrics)``, pure; jit it (see zkd.parallel).

    ``batch``: {"image": [B, H, W, C], "label": int32 [B]}, or for MLKD
    {"image_weak", "image_strong", "label"}. ``rng`` is unused by the built-in methods (no
    dropout) and kept for methods and models that need randomness; callers fold in the step.
    Metrics: every loss term, "loss", "accuracy", "learning_rate", "grad_norm", "param_norm",
    "agreement" (student-teacher top-1), "logit_std_student" / "logit_std_teacher", and
    "ctkd_temperature" for CTKD.
    """
    s = settings

    def train_step(state: TrainState, batch: dict, rng: jax.Array):
        del rng
        labels = batch["label"]
        views = (batch["image_weak"], batch["image_strong"]) if s.two_views else (batch["image"],)
        epoch = (state.step // s.steps_per_epoch + 1).astype(jnp.float32)
        teacher = tuple(_teacher_logits(state, v) for v in views) if s.needs_teacher else None

        def loss_fn(params):
            batch_stats = state.batch_stats
            student = []
            for images in views:  # MLKD: two forward passes, each updating the running statistics
                logits, updates = state.apply_fn(
                    {"params": params["student"], "batch_stats": batch_stats},
                    images,
                    train=True,
                    mutable=["batch_stats"],
                )
                batch_stats = updates["batch_stats"]
                student.append(logits.astype(jnp.float32))
            student_logits = tuple(student) if s.two_views else student[0]
            teacher_logits = None if teacher is None else (teacher if s.two_views else teacher[0])
            terms = loss_terms(s, params, student_logits, teacher_logits, labels, epoch)
            total = sum(terms.values())
            return total, (terms, student[0], batch_stats)

        (loss, (terms, logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)

        metrics = dict(terms)
        metrics["loss"] = loss
        metrics["accuracy"] = jnp.mean(losses.correct_top_k(logits, labels, 1).astype(jnp.float32))
        metrics["learning_rate"] = jnp.asarray(s.learning_rate_fn(state.step), jnp.float32)
        metrics["grad_norm"] = optax.tree.norm(grads)
        metrics["param_norm"] = optax.tree.norm(new_state.params)
        metrics["logit_std_student"] = _per_sample_std(logits)
        if teacher is not None:
            metrics["agreement"] = jnp.mean((jnp.argmax(logits, -1) == jnp.argmax(teacher[0], -1)).astype(jnp.float32))
            metrics["logit_std_teacher"] = _per_sample_std(teacher[0])
        if s.method == "ctkd":
            metrics["ctkd_temperature"] = losses.ctkd_temperature(state.params["ctkd"]["p"], 0.0)
        return new_state, metrics

    return train_step


def eval_sums(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> dict:
    """Masked sums for exact evaluation: padded rows (mask False) count nowhere.

    Returns float32 sums "count", "correct_top1", "correct_top5", "loss", "logit_std" and
    int32 "predictions" [B] (top-1 class per row, for student-teacher agreement).
    """
    logits = logits.astype(jnp.float32)
    mask_f = mask.astype(jnp.float32)
    k5 = min(5, logits.shape[-1])
    return {
        "count": jnp.sum(mask_f),
        "correct_top1": jnp.sum(losses.correct_top_k(logits, labels, 1) * mask_f),
        "correct_top5": jnp.sum(losses.correct_top_k(logits, labels, k5) * mask_f),
        "loss": jnp.sum(losses.cross_entropy(logits, labels, reduction="none") * mask_f),
        "logit_std": jnp.sum(jnp.std(logits, axis=-1, ddof=1) * mask_f),
        "predictions": jnp.argmax(logits, axis=-1).astype(jnp.int32),
    }


def make_eval_step(apply_fn: Callable[..., Any]) -> Callable[[Any, dict], dict]:
    """``eval_step(variables, batch) -> eval_sums`` for a model in eval mode (student or teacher)."""

    def eval_step(variables, batch):
        logits = apply_fn(variables, batch["image"], train=False)
        return eval_sums(logits, batch["label"], batch["mask"])

    return eval_step
