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

The numeric hyper-parameters of the loss travel as a ``LossHParams`` pytree, so one compiled
step can serve many students at once: ``make_run_step`` runs the teacher once per batch and
then the update of every student of a ``RunState`` (a single run is one student; a sweep is
N), each with its own settings and hyper-parameters, written out one after the other or
batched with ``jax.vmap``. A batch may carry precomputed ``"teacher_logits"``
(zkd.logit_cache); the step then skips the teacher's forward pass.

Input sizes: with ``StepSettings.teacher_input_size`` > 0 the teacher sees each view resized
bilinearly to that size inside the step (``resize_images``; the transformer students see CIFAR
upsampled to 224 and the teacher the same image at 32, docs/paper.md §8). With
``StepSettings.kd_logits`` the KD term distils into the logits the student sows under that
name (``intermediates/<name>``: DeiT's distillation head) while CE stays on its output.

Randomness: each student has a key (from its seed); the step folds in the step number and
hands it to the model as its ``"dropout"`` stream (dropout, stochastic depth), so a resumed
run draws exactly what an uninterrupted one draws. Models without randomness ignore it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax

from zkd import losses
from zkd.state import RunState, TrainState

METHODS = ("ce", "kd", "dkd", "mlkd", "ctkd")


@flax.struct.dataclass
class LossHParams:
    """The loss's numeric hyper-parameters as a pytree: Python floats (a single run; folded
    into the compiled step as constants) or float32 arrays, [N] for N stacked students.

    ``logit_stand`` is a bool (array) too; the step reads it from here only when
    ``StepSettings.logit_stand`` is None (students that differ in LS).
    """

    ce_weight: Any = 1.0
    kd_weight: Any = 1.0
    temperature: Any = 4.0
    dkd_alpha: Any = 1.0
    dkd_beta: Any = 8.0
    logit_stand: Any = False


HPARAM_FIELDS = tuple(f.name for f in dataclasses.fields(LossHParams))


@dataclasses.dataclass(frozen=True)
class StepSettings:
    """Static settings of the train step (hashable, so the step traces once).

    ``logit_stand`` None means "per student" (a sweep mixing LS on and off): the step then
    computes the KD terms both ways and selects with the student's ``LossHParams.logit_stand``.
    """

    method: str
    steps_per_epoch: int
    learning_rate_fn: Callable[[jax.Array], jax.Array]
    logit_stand: bool | None = False
    ce_weight: float = 1.0
    kd_weight: float = 1.0
    temperature: float = 4.0
    dkd_alpha: float = 1.0
    dkd_beta: float = 8.0
    dkd_warmup_epochs: float = 20.0
    mlkd_mode: str = "released"
    teacher_input_size: int = 0  # > 0: the teacher sees each view resized to this square size
    kd_logits: str = ""  # "": KD on the student's output; else on its sown intermediates/<kd_logits>

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {self.steps_per_epoch}")
        if self.kd_logits and self.method not in ("kd", "ctkd"):
            raise ValueError(f"kd_logits={self.kd_logits!r} serves methods kd and ctkd, not {self.method!r}")

    @property
    def needs_teacher(self) -> bool:
        return self.method != "ce"

    @property
    def two_views(self) -> bool:
        return self.method == "mlkd"

    def hparams(self) -> LossHParams:
        """This run's hyper-parameters as static Python values."""
        return LossHParams(self.ce_weight, self.kd_weight, self.temperature, self.dkd_alpha, self.dkd_beta,
                           bool(self.logit_stand))


def _per_sample_std(logits: jax.Array) -> jax.Array:
    """Mean over the batch of each sample's logit std over classes (ddof=1, as the paper's Fig. 5)."""
    return jnp.mean(jnp.std(logits.astype(jnp.float32), axis=-1, ddof=1))


def _with_ls(settings: StepSettings, hp: LossHParams, loss: Callable[[bool], Any]):
    """``loss(logit_stand)`` with the static LS flag, or both ways selected per student."""
    if settings.logit_stand is not None:
        return loss(bool(settings.logit_stand))
    with_ls, without = loss(True), loss(False)
    return jax.tree.map(lambda a, b: jnp.where(hp.logit_stand, a, b), with_ls, without)


def loss_terms(settings: StepSettings, params, student_logits, teacher_logits, labels, epoch,
               hparams: LossHParams | None = None, kd_student_logits=None) -> dict:
    """The named loss terms (float32 scalars) whose sum is the training loss.

    ``student_logits`` / ``teacher_logits`` are [B, K] arrays, or (weak, strong) pairs for MLKD.
    ``hparams``: the numeric hyper-parameters (default: ``settings.hparams()``).
    ``kd_student_logits``: [B, K] the KD term distils into instead of ``student_logits`` (KD and
    CTKD; DeiT's distillation head), CE staying on ``student_logits``.
    """
    s = settings
    hp = s.hparams() if hparams is None else hparams
    kd_student = student_logits if kd_student_logits is None else kd_student_logits
    if s.method == "mlkd":
        (zw, zs), (vw, vs) = student_logits, teacher_logits
        terms = {"ce": hp.ce_weight * (losses.cross_entropy(zw, labels) + losses.cross_entropy(zs, labels))}
        mlkd = _with_ls(s, hp, lambda ls: losses.mlkd_loss(zw, zs, vw, vs, hp.temperature, hp.kd_weight, ls,
                                                           mode=s.mlkd_mode))
        terms.update({f"mlkd_{name}": value for name, value in mlkd.items()})
        return terms
    terms = {"ce": hp.ce_weight * losses.cross_entropy(student_logits, labels)}
    if s.method == "kd":
        kd = _with_ls(s, hp, lambda ls: losses.kd_loss(kd_student, teacher_logits, hp.temperature, ls))
        terms["kd"] = hp.kd_weight * kd
    elif s.method == "dkd":
        warmup = losses.dkd_warmup(epoch, s.dkd_warmup_epochs)
        terms["dkd"] = warmup * _with_ls(s, hp, lambda ls: losses.dkd_loss(
            student_logits, teacher_logits, labels, hp.dkd_alpha, hp.dkd_beta, hp.temperature, ls))
    elif s.method == "ctkd":
        temperature = losses.ctkd_temperature(params["ctkd"]["p"], losses.ctkd_lambda(epoch))
        kd = _with_ls(s, hp, lambda ls: losses.kd_loss(kd_student, teacher_logits, temperature, ls))
        terms["kd"] = hp.kd_weight * kd
    return terms


def _views(settings: StepSettings, batch: dict) -> tuple:
    return (batch["image_weak"], batch["image_strong"]) if settings.two_views else (batch["image"],)


def resize_images(images: jax.Array, size: int) -> jax.Array:
    """[B, H, W, C] -> [B, size, size, C], bilinear without antialiasing: PyTorch's
    ``F.interpolate(x, size, mode="bilinear", align_corners=False)``, which the release applies
    before its teacher (tiny-transformers/pycls/models/distill.py). Unchanged at that size already."""
    if size <= 0 or images.shape[1:3] == (size, size):
        return images
    shape = (images.shape[0], size, size, images.shape[3])
    return jax.image.resize(images, shape, method="bilinear", antialias=False).astype(images.dtype)


def teacher_logits_of_batch(settings: StepSettings, teacher_apply_fn, teacher_variables, batch: dict):
    """The teacher's float32 logits for each view of ``batch`` (a tuple), or None without a teacher.
    Each view is resized to ``settings.teacher_input_size`` first when that is > 0.

    Precomputed ``batch["teacher_logits"]`` (a [B, K] array, e.g. float16 from
    zkd.logit_cache; single-view methods only) is used as given, cast to float32.
    """
    if not settings.needs_teacher:
        return None
    if "teacher_logits" in batch:
        if settings.two_views:
            raise ValueError("precomputed teacher_logits serve one view; MLKD's two views need the teacher")
        return (jax.lax.stop_gradient(batch["teacher_logits"].astype(jnp.float32)),)
    if teacher_apply_fn is None:
        raise ValueError(f"method {settings.method!r} needs a teacher: the state has none and the batch "
                         "carries no teacher_logits")
    size = settings.teacher_input_size
    return tuple(jax.lax.stop_gradient(
        teacher_apply_fn(teacher_variables, resize_images(v, size), train=False).astype(jnp.float32))
        for v in _views(settings, batch))


def student_update(settings: StepSettings, state: TrainState, hparams: LossHParams, batch: dict, teacher,
                   rng: jax.Array | None = None):
    """One optimizer step of one student given the teacher's logits: ``(state, metrics)``.

    ``teacher``: tuple of float32 [B, K] per view (``teacher_logits_of_batch``) or None.
    ``rng``: this step's key, the model's ``"dropout"`` stream (None: a model without randomness).
    ``state.teacher_variables`` is not read, so the students of a ``RunState`` need not carry it.
    Pure; ``jax.vmap`` over ``state``, ``hparams`` and ``rng`` steps many students on one batch.
    """
    s = settings
    labels = batch["label"]
    views = _views(s, batch)
    epoch = (state.step // s.steps_per_epoch + 1).astype(jnp.float32)

    mutable = ["batch_stats", "intermediates"] if s.kd_logits else ["batch_stats"]

    def loss_fn(params):
        batch_stats = state.batch_stats
        student, kd_student = [], None
        for v, images in enumerate(views):  # MLKD: two forward passes, each updating the running statistics
            rngs = None if rng is None else {"dropout": jax.random.fold_in(rng, v) if v else rng}
            logits, updates = state.apply_fn(
                {"params": params["student"], "batch_stats": batch_stats},
                images,
                train=True,
                mutable=mutable,
                rngs=rngs,
            )
            batch_stats = updates["batch_stats"]
            student.append(logits.astype(jnp.float32))
            if s.kd_logits:
                kd_student = sown_logits(updates, s.kd_logits)
        student_logits = tuple(student) if s.two_views else student[0]
        teacher_logits = None if teacher is None else (teacher if s.two_views else teacher[0])
        terms = loss_terms(s, params, student_logits, teacher_logits, labels, epoch, hparams, kd_student)
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


def sown_logits(updates: dict, name: str) -> jax.Array:
    """The float32 logits a model sowed as ``intermediates/<name>`` (e.g. DeiT's ``distill_logits``)."""
    sown = updates.get("intermediates", {}).get(name)
    if sown is None:
        raise ValueError(f"the student sows no intermediates/{name} (config.loss.kd_logits); "
                         "only DeiT with its distillation token sows distill_logits")
    return sown[0].astype(jnp.float32)


def step_key(key: jax.Array, step: jax.Array) -> jax.Array:
    """The key of training step ``step`` for a student whose key is ``key``: a pure function of
    both, so a run resumed at ``step`` draws what the uninterrupted run drew."""
    return jax.random.fold_in(key, step)


def make_train_step(settings: StepSettings) -> Callable[[TrainState, dict, jax.Array], tuple[TrainState, dict]]:
    """``train_step(state, batch, key) -> (state, metrics)`` of one student with its teacher in
    ``state`` (``zkd.state.create_train_state``); pure; jit it. The trainer uses the N-student
    ``make_run_step``; this one is for users who keep a single ``TrainState``.

    ``batch``: {"image": [B, H, W, C], "label": int32 [B]}, or for MLKD
    {"image_weak", "image_strong", "label"}; optionally "teacher_logits" [B, K] (then the
    teacher is not run). ``key``: the student's key; the step number is folded in (``step_key``).
    Metrics: every loss term, "loss", "accuracy", "learning_rate", "grad_norm", "param_norm",
    "agreement" (student-teacher top-1), "logit_std_student" / "logit_std_teacher", and
    "ctkd_temperature" for CTKD.
    """
    s = settings

    def train_step(state: TrainState, batch: dict, key: jax.Array):
        teacher = teacher_logits_of_batch(s, state.teacher_apply_fn, state.teacher_variables, batch)
        return student_update(s, state, s.hparams(), batch, teacher, step_key(key, state.step))

    return train_step


VECTORIZE = ("unroll", "vmap")


def _stack(trees):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _unstack(tree, n: int) -> tuple:
    return tuple(jax.tree.map(lambda x: x[i], tree) for i in range(n))


def check_vectorize(vectorize: str) -> str:
    if vectorize not in VECTORIZE:
        raise ValueError(f"vectorize={vectorize!r}; valid: {', '.join(VECTORIZE)}")
    return vectorize


def make_run_step(settings: tuple[StepSettings, ...], vectorize: str = "unroll"):
    """``run_step(state, batch) -> (state, metrics)`` for a ``RunState`` of N students.

    ``settings``: one ``StepSettings`` per student (they may differ in their loss values and
    in ``logit_stand``; method, epochs and schedule are shared). The teacher runs once on the
    batch; then each student takes its optimizer step with its own key (``step_key``).
    ``metrics``: a tuple of N dicts of float32 scalars (see ``make_train_step``).

    ``vectorize``: "unroll" writes one update per student into the compiled step (each with its
    hyper-parameters as constants: N = 1 is exactly a single student's step); "vmap" stacks the
    students inside the step and batches their updates with ``jax.vmap`` (convolutions with
    per-student weights then become grouped convolutions: slower on the CPU and GPU measured in
    experiments/results/bench_sweep.md, hence not the default).
    """
    check_vectorize(vectorize)
    settings = tuple(settings)
    first = settings[0]
    n = len(settings)
    if vectorize == "vmap" and n > 1:
        flags = {bool(s.logit_stand) for s in settings}
        shared = dataclasses.replace(first, logit_stand=flags.pop() if len(flags) == 1 else None)
        hparams = _stack([jax.tree.map(jnp.asarray, s.hparams()) for s in settings])

    def run_step(state: RunState, batch: dict):
        teacher = teacher_logits_of_batch(first, state.teacher_apply_fn, state.teacher_variables, batch)
        keys = [step_key(k, s.step) for k, s in zip(state.keys, state.students)]
        if vectorize == "vmap" and n > 1:
            def update(student, hp, key):
                return student_update(shared, student, hp, batch, teacher, key)

            students, metrics = jax.vmap(update)(_stack(state.students), hparams, jnp.stack(keys))
            students, metrics = _unstack(students, n), _unstack(metrics, n)
        else:
            outs = [student_update(s, student, s.hparams(), batch, teacher, key)
                    for s, student, key in zip(settings, state.students, keys)]
            students, metrics = tuple(o[0] for o in outs), tuple(o[1] for o in outs)
        return state.replace(students=students), metrics

    return run_step


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


def make_eval_step(apply_fn: Callable[..., Any], input_size: int = 0) -> Callable[[Any, dict], dict]:
    """``eval_step(variables, batch) -> eval_sums`` for a model in eval mode (student or teacher);
    ``input_size`` > 0 resizes the images first (``resize_images``; the teacher of a student
    that sees another size)."""

    def eval_step(variables, batch):
        logits = apply_fn(variables, resize_images(batch["image"], input_size), train=False)
        return eval_sums(logits, batch["label"], batch["mask"])

    return eval_step


def make_run_eval_step(apply_fn: Callable[..., Any], num_students: int, vectorize: str = "unroll"):
    """``eval_step(variables, batch) -> tuple of N eval_sums`` for a tuple of N students'
    ``{"params", "batch_stats"}``, unrolled or vmapped as in ``make_run_step``."""
    one = make_eval_step(apply_fn)
    if check_vectorize(vectorize) == "vmap" and num_students > 1:
        def eval_step(variables, batch):
            return _unstack(jax.vmap(one, in_axes=(0, None))(_stack(variables), batch), num_students)
    else:
        def eval_step(variables, batch):
            return tuple(one(v, batch) for v in variables)
    return eval_step
