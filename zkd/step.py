"""Pure train and eval steps of N >= 1 students sharing one frozen teacher.

``make_train_step(settings)`` returns ``train_step(state, batch, key) -> (state, metrics)``; the
loss is the sum of the terms of ``settings.method`` (a ``zkd.methods.Method``: its own module
says what it computes). The step owns what every method shares: the views of the batch the
method asks for, the student in train mode (BatchNorm statistics of the batch, running
statistics updated; one forward pass per view), the teacher in eval mode behind
``stop_gradient`` (or its precomputed logits from zkd.logit_cache), the epoch counted from 1
(``state.step // steps_per_epoch + 1``, as the released trainers count it), logit
standardization on, off or per student, the optimizer update and the metrics.

The method's numeric hyper-parameters (``Method.HParams``) travel as a pytree, so one compiled
step can serve many students: ``make_run_step`` runs the teacher once per batch and then the
update of every student of a ``RunState`` (a single run is one student; a sweep is N), written
out one after the other or batched with ``jax.vmap``.

Input sizes: with ``StepSettings.teacher_input_size`` > 0 the teacher sees each view resized
bilinearly to that size (the transformer students see CIFAR at 224, their teacher at 32;
docs/paper.md §8). With ``StepSettings.kd_logits`` a method that ``distils_sown_logits``
distils into the logits the student sows under that name (DeiT's distillation head).

Randomness: each student has a key (from its seed); the step folds in the step number and
hands it to the model as its ``"dropout"`` stream, so a resumed run draws exactly what an
uninterrupted one draws.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from zkd import losses, methods
from zkd.state import RunState, TrainState


@dataclasses.dataclass(frozen=True)
class StepSettings:
    """Static settings of one student's train step (hashable, so the step traces once).

    ``method``: a ``zkd.methods.Method`` instance, or a registered name (its default options).
    ``hparams``: the method's ``HParams`` (None: their defaults). ``logit_stand`` None means
    "per student" (a sweep mixing LS on and off): the step computes the terms both ways and
    selects with each student's flag (``make_run_step``).
    """

    method: Any
    steps_per_epoch: int
    learning_rate_fn: Callable[[jax.Array], jax.Array]
    logit_stand: bool | None = False
    hparams: Any = None
    teacher_input_size: int = 0  # > 0: the teacher sees each view resized to this square size
    kd_logits: str = ""  # "": distil into the student's output; else into its sown intermediates/<kd_logits>

    def __post_init__(self):
        if isinstance(self.method, str):
            object.__setattr__(self, "method", methods.get(self.method)())
        if not isinstance(self.method, methods.Method):
            raise TypeError(f"StepSettings.method must be a zkd.methods.Method or its name, got {self.method!r}")
        if self.hparams is None:
            object.__setattr__(self, "hparams", self.method.HParams())
        if self.steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {self.steps_per_epoch}")
        if self.kd_logits and not self.method.distils_sown_logits:
            raise ValueError(f"kd_logits={self.kd_logits!r} serves methods that distil into sown logits "
                             f"(distils_sown_logits), not {self.method.name!r}")

    @property
    def needs_teacher(self) -> bool:
        return self.method.needs_teacher

    @property
    def two_views(self) -> bool:
        return self.method.views == 2


def _per_sample_std(logits: jax.Array) -> jax.Array:
    """Mean over the batch of each sample's logit std over classes (ddof=1, as the paper's Fig. 5)."""
    return jnp.mean(jnp.std(logits.astype(jnp.float32), axis=-1, ddof=1))


def loss_terms(settings: StepSettings, params, student_logits, teacher_logits, labels, epoch,
               hparams=None, kd_student_logits=None, logit_stand=None) -> dict:
    """The method's named loss terms (float32 scalars) whose sum is the training loss.

    ``student_logits`` / ``teacher_logits``: [B, K] arrays, or a tuple per view for a method of
    several views (teacher None without one). ``params``: the method's learned parameters
    (``params[method.name]`` of the state) or None. ``hparams``: default ``settings.hparams``.
    ``kd_student_logits``: [B, K] the distillation term uses instead of the first view.
    ``logit_stand``: the per-student flag (a bool array) when ``settings.logit_stand`` is None.
    """
    method = settings.method
    hp = settings.hparams if hparams is None else hparams
    student = tuple(student_logits) if isinstance(student_logits, (tuple, list)) else (student_logits,)
    teacher = (None if teacher_logits is None else
               tuple(teacher_logits) if isinstance(teacher_logits, (tuple, list)) else (teacher_logits,))
    x = methods.Inputs(student=student, teacher=teacher, labels=labels, epoch=epoch,
                       params={} if params is None else params.get(method.name, {}),
                       distill=student[0] if kd_student_logits is None else kd_student_logits)
    if settings.logit_stand is not None or not method.uses_logit_stand:
        return method.loss_terms(hp, bool(settings.logit_stand), x)
    with_ls, without = method.loss_terms(hp, True, x), method.loss_terms(hp, False, x)
    return jax.tree.map(lambda a, b: jnp.where(logit_stand, a, b), with_ls, without)


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
            raise ValueError(f"precomputed teacher_logits serve one view; method {settings.method.name!r} sees "
                             f"{settings.method.views} views and needs the teacher")
        return (jax.lax.stop_gradient(batch["teacher_logits"].astype(jnp.float32)),)
    if teacher_apply_fn is None:
        raise ValueError(f"method {settings.method.name!r} needs a teacher: the state has none and the batch "
                         "carries no teacher_logits")
    size = settings.teacher_input_size
    return tuple(jax.lax.stop_gradient(
        teacher_apply_fn(teacher_variables, resize_images(v, size), train=False).astype(jnp.float32))
        for v in _views(settings, batch))


def student_update(settings: StepSettings, state: TrainState, hparams, batch: dict, teacher,
                   rng: jax.Array | None = None, logit_stand=None):
    """One optimizer step of one student given the teacher's logits: ``(state, metrics)``.

    ``hparams``: the method's ``HParams``. ``teacher``: tuple of float32 [B, K] per view
    (``teacher_logits_of_batch``) or None. ``rng``: this step's key, the model's ``"dropout"``
    stream (None: a model without randomness). ``logit_stand``: this student's LS flag (a bool
    array) when ``settings.logit_stand`` is None. ``state.teacher_variables`` is not read, so the
    students of a ``RunState`` need not carry it. Pure; ``jax.vmap`` over ``state``, ``hparams``,
    ``rng`` and ``logit_stand`` steps many students on one batch.
    """
    s = settings
    labels = batch["label"]
    views = _views(s, batch)
    epoch = (state.step // s.steps_per_epoch + 1).astype(jnp.float32)

    mutable = ["batch_stats", "intermediates"] if s.kd_logits else ["batch_stats"]

    def loss_fn(params):
        batch_stats = state.batch_stats
        student, kd_student = [], None
        for v, images in enumerate(views):  # one forward pass per view, each updating the running statistics
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
        terms = loss_terms(s, params, tuple(student), teacher, labels, epoch, hparams, kd_student, logit_stand)
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
    metrics.update(s.method.metrics(state.params.get(s.method.name, {})))
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

    ``batch``: {"image": [B, H, W, C], "label": int32 [B]}, or for a method of two views
    {"image_weak", "image_strong", "label"}; optionally "teacher_logits" [B, K] (then the
    teacher is not run). ``key``: the student's key; the step number is folded in (``step_key``).
    Metrics: every loss term, "loss", "accuracy", "learning_rate", "grad_norm", "param_norm",
    "agreement" (student-teacher top-1), "logit_std_student" / "logit_std_teacher", and the
    method's own (``Method.metrics``).
    """
    s = settings

    def train_step(state: TrainState, batch: dict, key: jax.Array):
        teacher = teacher_logits_of_batch(s, state.teacher_apply_fn, state.teacher_variables, batch)
        return student_update(s, state, s.hparams, batch, teacher, step_key(key, state.step))

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
        hparams = _stack([jax.tree.map(jnp.asarray, s.hparams) for s in settings])
        ls_flags = jnp.asarray([bool(s.logit_stand) for s in settings])

    def run_step(state: RunState, batch: dict):
        teacher = teacher_logits_of_batch(first, state.teacher_apply_fn, state.teacher_variables, batch)
        keys = [step_key(k, s.step) for k, s in zip(state.keys, state.students)]
        if vectorize == "vmap" and n > 1:
            def update(student, hp, key, ls):
                return student_update(shared, student, hp, batch, teacher, key, ls)

            students, metrics = jax.vmap(update)(_stack(state.students), hparams, jnp.stack(keys), ls_flags)
            students, metrics = _unstack(students, n), _unstack(metrics, n)
        else:
            outs = [student_update(s, student, s.hparams, batch, teacher, key)
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
