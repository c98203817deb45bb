"""The build phase: a config in, everything a run needs out, built once.

``build(config)`` checks the config, then makes the mesh, the student and the frozen teacher,
the optimizer and its schedule, the state of N >= 1 students (a single run is one; a sweep is
one per grid point, zkd.grid), the compiled train and eval steps, and the data streams. The
trainer's loop (zkd.train) runs what it returns; so do the benchmarks, the studies and the tests
that need a step, so none of them rebuilds it by hand.

Nothing here writes to disk or keeps time: that is the loop's job.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Callable, Iterable, Iterator, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from zkd import data, grid, methods, models, optim, parallel, recipes
from zkd import state as state_lib
from zkd import step as step_lib
from zkd.errors import ConfigError
from zkd import teacher as teacher_lib

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


# ----------------------------------------------------------------------------- config pieces


def dataset_info(config: ml_collections.ConfigDict) -> data.DatasetInfo:
    """The ``DatasetInfo`` of ``config.dataset`` (a built-in name, "tfds:NAME" with ``config.data``'s
    splits, size and statistics; zkd.data.catalog).

    Raises ConfigError for an unknown name; the data errors of zkd.data.catalog otherwise."""
    if config.dataset.startswith("arrays:"):
        raise ConfigError(f"config.dataset={config.dataset!r} names arrays held in memory: pass them to the "
                          "trainer (zkd.train.train_and_evaluate(config, workdir, dataset=zkd.data.from_arrays(...)))")
    try:
        return data.resolve_config(config)
    except data.UnknownDatasetError as err:
        raise ConfigError(f"config.dataset={config.dataset!r}; valid: {', '.join(sorted(data.DATASETS))}, or "
                          "'tfds:NAME' for any TFDS dataset (an image folder: python -m zkd.data.prepare --folder)"
                          ) from err


def with_dataset(config: ml_collections.ConfigDict, dataset) -> tuple[ml_collections.ConfigDict, Optional[data.DatasetInfo]]:
    """``(config, info)`` for a dataset handed to the trainer from Python.

    ``dataset``: None (``config.dataset``'s), a name (built in or "tfds:NAME"), or a
    ``zkd.data.DatasetInfo`` (arrays in memory from ``zkd.data.from_arrays``, or resolved). The
    config returned is a copy whose ``dataset`` names it (config.json records it), the caller's
    config is not changed; ``info`` is None when the config alone describes the dataset.
    """
    if dataset is None:
        return config, None
    if not isinstance(dataset, (str, data.DatasetInfo)):
        raise ConfigError(f"dataset must be a name or a zkd.data.DatasetInfo (zkd.data.from_arrays(...)), got "
                          f"{type(dataset).__name__}")
    name = dataset if isinstance(dataset, str) else dataset.name
    if config.dataset == name:
        copy = config
    else:
        copy = ml_collections.ConfigDict(config.to_dict())
        copy.dataset = name
        copy = recipes.finalize(copy)
    return copy, None if isinstance(dataset, str) else dataset


def validate_config(config: ml_collections.ConfigDict, info: Optional[data.DatasetInfo] = None, *,
                    teacher_given: bool = False) -> None:
    """Fail before any work on values that cannot work, naming the field and the choices.

    ``info``: the dataset's, when the caller has it (arrays in memory); default ``dataset_info``.
    ``teacher_given``: the teacher comes from Python (``build(teacher=...)``), not ``config.teacher``."""
    method = methods.from_config(config)  # the method's own checks too
    if method.views not in (1, 2):
        raise ConfigError(f"method {config.method!r} asks for {method.views} views; the data pipelines give 1 or 2")
    info = dataset_info(config) if info is None else info
    if config.dtype not in DTYPES:
        raise ConfigError(f"config.dtype={config.dtype!r}; valid: {', '.join(DTYPES)}")
    for role in ("student", "teacher"):
        if role == "teacher" and (not method.needs_teacher or teacher_given):
            continue
        sub = config[role]
        if sub.zoo not in models.ZOOS:
            raise ConfigError(f"config.{role}.zoo={sub.zoo!r}; valid: {', '.join(models.ZOOS)}")
        # A user's model (a factory, zoo "user") is checked when built (zkd.models.user), an
        # ensemble's architectures when its members load (zkd.teacher).
        if sub.get("factory", "") or sub.zoo == models.USER_ZOO or (role == "teacher" and sub.get("ensemble", ())):
            continue
        names = models.available(sub.zoo)
        if sub.name not in names:
            raise ConfigError(f"config.{role}.name={sub.name!r} is not a {sub.zoo} model; valid: {', '.join(names)}")
    if config.sweep.vectorize not in step_lib.VECTORIZE:
        raise ConfigError(f"config.sweep.vectorize={config.sweep.vectorize!r}; valid: {', '.join(step_lib.VECTORIZE)}")
    if config.device_resident_data:
        if method.views > 1:
            raise ConfigError(f"config.device_resident_data serves one view; method {config.method!r} sees two "
                              "(the strong view is a tf.data op)")
        if not info.in_memory:
            raise ConfigError(f"config.device_resident_data needs a small dataset, not {config.dataset!r}")
        if config.get("augmentation", "") not in ("", data.pipeline.CROP_FLIP):
            raise ConfigError("device-resident data is augmented with the crop and flip in the step; "
                              f"config.augmentation={config.augmentation!r} needs the host pipeline "
                              "(config.device_resident_data=False)")
    steps_per_dispatch = config.get("steps_per_dispatch", 1)
    if not isinstance(steps_per_dispatch, int) or steps_per_dispatch < 1:
        raise ConfigError(f"config.steps_per_dispatch must be an integer >= 1, got {steps_per_dispatch!r}")
    if steps_per_dispatch > 1 and not config.device_resident_data:
        raise ConfigError(f"config.steps_per_dispatch={steps_per_dispatch} runs several steps in one program, which "
                          "gathers its batches from device-resident data: set config.device_resident_data=True "
                          "(in-memory datasets) or config.steps_per_dispatch=1")
    if config.teacher.get("logit_cache", ""):
        why = (f"method {config.method!r}'s two views (the strong view is not a crop/flip)" if method.views > 1 else
               "a method without a teacher" if not method.needs_teacher else
               "device-resident data" if config.device_resident_data else
               f"{config.dataset} (not an in-memory, crop/flip-augmented dataset)"
               if not info.in_memory else
               "a dataset of arrays in memory" if info.source == "arrays" else "")
        if why:
            raise ConfigError(f"config.teacher.logit_cache cannot serve {why}; set it to ''")
    for field in ("num_epochs", "batch_size", "eval_batch_size"):
        if config[field] < 1:
            raise ConfigError(f"config.{field} must be >= 1, got {config[field]}")
    _validate_input_sizes(config, info, method)


def _validate_input_sizes(config, info: data.DatasetInfo, method: methods.Method) -> None:
    """The views: student / teacher input sizes, augmentation, KD head."""
    student_size, teacher_size = config.get("student_input_size", 0), config.get("teacher_input_size", 0)
    augmentation = config.get("augmentation", "")
    p = data.pipeline
    if augmentation not in p.AUGMENTATIONS:
        raise ConfigError(f"config.augmentation={augmentation!r}; valid: {', '.join(map(repr, p.AUGMENTATIONS))}")
    if student_size < 0 or teacher_size < 0:
        raise ConfigError(f"config.student_input_size / teacher_input_size must be >= 0 (0: the dataset's size), "
                          f"got {student_size} / {teacher_size}")
    if augmentation == p.CROP_FLIP and not info.in_memory:
        raise ConfigError(f"config.augmentation='crop_flip' serves in-memory datasets; {config.dataset} is streamed "
                          "(its default '' is the random-resized crop; 'none' turns augmentation off)")
    own_view = augmentation in ("", p.CROP_FLIP) or (not info.in_memory and augmentation == p.RRC)
    if student_size or not own_view:
        why = (f"method {config.method!r}'s two views" if method.views > 1 else
               "device-resident data" if config.device_resident_data else
               "a teacher-logit cache" if config.teacher.get("logit_cache", "") else
               f"{config.dataset} (a streamed dataset)" if not info.in_memory and (
                   student_size or augmentation != p.NONE) else "")
        if why:
            raise ConfigError(f"config.student_input_size / config.augmentation={augmentation!r} cannot serve {why}")
    img_size = student_options(config).get("img_size")
    if img_size is not None and student_size and img_size != student_size:
        raise ConfigError(f"config.student.options.img_size={img_size} but config.student_input_size={student_size}: "
                          "the student would not get the images it is built for; set both")
    kd_logits = config.loss.get("kd_logits", "")
    if kd_logits and not method.distils_sown_logits:
        serving = [m for m in methods.available() if methods.get(m).distils_sown_logits]
        raise ConfigError(f"config.loss.kd_logits={kd_logits!r} serves methods {' and '.join(serving)}, "
                          f"not {config.method!r}")


def student_options(config) -> dict:
    """``config.student.options`` as keyword arguments of the student's factory (e.g. ``img_size``)."""
    options = config.student.get("options", None)
    return {} if options is None else dict(options.to_dict() if hasattr(options, "to_dict") else options)


def student_image_shape(config, info: data.DatasetInfo) -> tuple:
    """(H, W, C) the student sees: ``config.student_input_size`` squared, or the dataset's shape."""
    size = config.get("student_input_size", 0)
    return (size, size, info.image_shape[2]) if size else tuple(info.image_shape)


def teacher_image_shape(config, info: data.DatasetInfo) -> tuple:
    """(H, W, C) the teacher sees: ``config.teacher_input_size`` squared, or the student's view."""
    size = config.get("teacher_input_size", 0)
    return (size, size, info.image_shape[2]) if size else student_image_shape(config, info)


def steps_per_epoch_of(config, info: Optional[data.DatasetInfo] = None) -> int:
    """Training steps per epoch: the split over the global batch, capped by ``config.steps_per_epoch``."""
    try:
        steps = data.steps_per_epoch(config.dataset if info is None else info, config.batch_size)
    except ValueError as err:
        raise ConfigError(f"config.batch_size: {err}") from err
    return min(steps, config.steps_per_epoch) if config.steps_per_epoch > 0 else steps


OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("piecewise", "cosine")


def make_optimizer(config, steps_per_epoch: int):
    """``(learning_rate_fn, tx)``: the per-epoch schedule and the PyTorch-style optimizer of
    ``config.optimizer`` (zkd.optim). ``name``: "sgd" (SGD with momentum and coupled weight decay,
    the CNN recipes) or "adamw" (AdamW without decay on biases, norms, tokens and position
    embeddings, the transformer recipe); ``schedule``: "piecewise" (x ``lr_decay`` at each of
    ``lr_milestones``) or "cosine" (``warmup_epochs`` of linear warm-up from ``warmup_factor``,
    then cosine to ``min_lr`` at ``config.num_epochs``)."""
    o = config.optimizer
    name, schedule = o.get("name", "sgd"), o.get("schedule", "piecewise")
    if schedule == "piecewise":
        lr_fn = optim.piecewise_epoch_schedule(o.learning_rate, steps_per_epoch, tuple(o.lr_milestones), o.lr_decay)
    elif schedule == "cosine":
        lr_fn = optim.warmup_cosine_epoch_schedule(o.learning_rate, steps_per_epoch, config.num_epochs,
                                                   o.warmup_epochs, o.warmup_factor, o.min_lr)
    else:
        raise ConfigError(f"config.optimizer.schedule={schedule!r}; valid: {', '.join(SCHEDULES)}")
    if name == "sgd":
        return lr_fn, optim.torch_sgd(lr_fn, o.momentum, o.weight_decay)
    if name == "adamw":
        return lr_fn, optim.torch_adamw(lr_fn, o.weight_decay, o.b1, o.b2, o.eps)
    raise ConfigError(f"config.optimizer.name={name!r}; valid: {', '.join(OPTIMIZERS)}")


def step_settings(config, steps_per_epoch: int, learning_rate_fn) -> step_lib.StepSettings:
    """The static settings of one student's step, from its (single-run) config."""
    method = methods.from_config(config)
    return step_lib.StepSettings(
        method=method, steps_per_epoch=steps_per_epoch, learning_rate_fn=learning_rate_fn,
        logit_stand=bool(config.logit_stand) and method.uses_logit_stand,
        hparams=methods.hparams_from_config(config, method),
        teacher_input_size=int(config.teacher_input_size), kd_logits=config.loss.kd_logits,
    )


def check_labels(batch: dict, num_classes: int, step: int) -> dict:
    """Host-side check of a batch's labels (cheap, before they reach the device)."""
    labels = np.asarray(batch["label"])
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.size:
        raise data.DataError(
            f"training batch of step {step} has labels {sorted(set(bad.tolist()))[:5]} outside [0, {num_classes}): "
            "the dataset does not match config.dataset's classes, or its records are corrupt; re-prepare it "
            "(python -m zkd.data.prepare ...)"
        )
    return batch


# ----------------------------------------------------------------------------- the built run


@dataclasses.dataclass
class Run:
    """Everything a run needs, built by ``build``; the loop (zkd.train) only runs it.

    ``state`` is a ``zkd.state.RunState`` on the mesh (replicated); ``train_step(state, batch)
    -> (state, metrics)`` is compiled with the state donated, metrics a tuple of N dicts of
    scalars; ``eval_step(variables, batch)`` gives a tuple of N ``zkd.step.eval_sums``;
    ``teacher_eval_step`` the teacher's (None without a teacher). With
    ``config.steps_per_dispatch`` = k > 1 (device-resident data), ``train_steps(state, arrays)``
    runs k consecutive steps in one compiled program (``lax.scan``): the same steps as k calls
    of ``train_step``, its metrics stacked along a leading axis [k].
    """

    config: ml_collections.ConfigDict
    points: list
    info: Any
    mesh: Mesh
    student: Any
    teacher: Any
    teacher_variables: Any
    steps_per_epoch: int
    learning_rate_fn: Callable
    tx: Any
    settings: tuple
    state: state_lib.RunState
    train_step: Callable
    eval_step: Callable
    teacher_eval_step: Optional[Callable]
    device_data: Any = None
    teacher_label: str = ""  # how logs name the teacher
    train_steps: Optional[Callable] = None  # steps_per_dispatch steps in one program (device-resident data)
    steps_per_dispatch: int = 1
    _eval_cache: Optional[list] = None

    @property
    def num_students(self) -> int:
        return len(self.points)

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.config.num_epochs

    def train_batches(self, start_step: int) -> Iterator[dict]:
        """Global training batches from ``start_step`` on, ready for ``train_step`` (labels
        checked; the teacher's logits attached when ``config.teacher.logit_cache`` is set;
        the device-resident arrays, which the step gathers from, for device-resident data)."""
        if self.device_data is not None:
            return itertools.repeat(self.device_data)
        local = _local_train_stream(self.config, self.info, self.teacher_variables, start_step,
                                    self.settings[0].two_views)
        return (parallel.global_batch(check_labels(b, self.info.num_classes, step), self.mesh)
                for step, b in enumerate(local, start_step))

    def eval_batches(self) -> Iterable[dict]:
        """This process's evaluation batches (host numpy, with "mask"), in a fixed order. Small
        (in-memory) datasets are decoded and normalized once and kept; large ones streamed."""
        if self._eval_cache is not None:
            return self._eval_cache
        c = self.config
        batches = data.eval_batches(self.info, data_dir=c.data_dir or None, split="test",
                                    global_batch_size=c.eval_batch_size, image_size=c.get("student_input_size", 0))
        if c.max_eval_batches >= 0:
            batches = itertools.islice(batches, c.max_eval_batches)
        if not self.info.in_memory:
            return batches
        self._eval_cache = list(batches)
        return self._eval_cache

    @staticmethod
    def student_variables(state: state_lib.RunState) -> tuple:
        """Each student's ``{"params", "batch_stats"}``, as the eval step takes them."""
        return tuple({"params": s.params["student"], "batch_stats": s.batch_stats} for s in state.students)

    @staticmethod
    def checkpointable(state: state_lib.RunState) -> dict:
        """What a checkpoint holds: every student's step, parameters, statistics and optimizer
        state; never the teacher (reloaded from the config) nor the keys (derived from seeds)."""
        return {"students": [state_lib.checkpointable(s) for s in state.students]}

    @staticmethod
    def restore(state: state_lib.RunState, saved: dict) -> state_lib.RunState:
        return state.replace(students=tuple(state_lib.restore_checkpointable(s, r)
                                            for s, r in zip(state.students, saved["students"])))


def _local_train_stream(config, info, teacher_variables, start_step: int, two_views: bool) -> Iterator[dict]:
    """This process's training batches from ``start_step`` (zkd.data), with the teacher's
    logits from ``config.teacher.logit_cache`` when one is set (then the step skips the teacher).

    The cache is opened only if its content hash matches this teacher's weights and this
    training split (zkd.logit_cache.StaleCacheError otherwise, with the rebuild command).
    """
    kwargs = dict(global_batch_size=config.batch_size, seed=recipes.data_seed(config), start_step=start_step,
                  two_views=two_views)
    path = config.teacher.get("logit_cache", "")
    if not path:
        return data.train_batches(info, data_dir=config.data_dir or None,
                                  image_size=config.get("student_input_size", 0),
                                  augmentation=config.get("augmentation", ""), **kwargs)
    from zkd import logit_cache
    from zkd.data import pipeline

    images, labels = data.load_arrays(info, config.data_dir or None, "train")
    digest = logit_cache.content_hash(config.teacher.name, teacher_variables, images, labels, info)
    command = logit_cache.build_command(path, config.teacher.checkpoint, config.teacher.name, config.dataset,
                                        config.data_dir or None)
    cache = logit_cache.TeacherLogitCache.open(path, digest, command)
    stream = pipeline.in_memory_train_batches(info, images, labels, process_index=jax.process_index(),
                                              process_count=jax.process_count(), augmentation_params=True, **kwargs)
    return logit_cache.attach_teacher_logits(stream, cache)


def _device_resident(run_step, config, info, mesh):
    """Wrap ``run_step`` so it gathers and augments its batch from device-resident uint8 arrays."""
    images, labels = data.load_arrays(info, config.data_dir or None, "train")
    device_data = parallel.replicate({"images": images, "labels": labels}, mesh)
    sharding = parallel.batch_sharded(mesh)
    seed = recipes.data_seed(config)

    def step_from_device_data(state, arrays):
        batch = data.device_train_batch(seed, state.step, arrays["images"], arrays["labels"],
                                        dataset=info, global_batch_size=config.batch_size)
        return run_step(state, jax.lax.with_sharding_constraint(batch, sharding))

    return step_from_device_data, device_data


def _scanned(run_step, k: int, mesh: Mesh):
    """``k`` consecutive calls of ``run_step(state, arrays)`` as one program: ``(state, metrics
    stacked [k])``. Each step gathers its own batch from ``state.step``, so the steps are those
    of k separate calls (to float32 roundoff: the program fuses differently).

    On CPU the k steps are unrolled: XLA:CPU ran the same steps as a while loop ~10x slower per
    step (resnet8 -> resnet8, batch 16: 300 against 22-25 ms; docs/performance.md); elsewhere a
    loop, whose compile time is that of one step."""
    unroll = True if all(d.platform == "cpu" for d in mesh.devices.flat) else 1

    def run_steps(state, arrays):
        return jax.lax.scan(lambda s, _: run_step(s, arrays), state, None, length=k, unroll=unroll)

    return run_steps


def build(config: ml_collections.ConfigDict, points: Optional[list] = None, *,
          teacher: Optional[tuple] = None, mesh: Optional[Mesh] = None, info: Optional[data.DatasetInfo] = None,
          abstract: bool = False) -> Run:
    """Build the run ``config`` describes.

    Args:
      config: a finalized config (configs/*.py, zkd.recipes).
      points: the students (zkd.grid.GridPoint); default ``zkd.grid.points_of(config)``: the
        grid of ``config.sweep``, or the single run's one point.
      teacher: ``(module_or_apply_fn, variables)`` to use instead of loading ``config.teacher``'s
        checkpoint (a user's pretrained model, an ensemble, a benchmark's random teacher;
        ``zkd.teacher.from_python`` checks its logits' shape); never updated nor checkpointed.
      mesh: default ``zkd.parallel.make_mesh`` over ``config.num_devices``.
      info: the dataset's ``zkd.data.DatasetInfo`` (classes, image shape, sizes): arrays in memory
        (``zkd.data.from_arrays``), or a benchmark's shrunk copy; default ``dataset_info(config)``.
        Nothing is read until a stream is.
      abstract: build the state as shapes and dtypes only (``jax.ShapeDtypeStruct``; no
        initialisation, nothing on the devices): enough to trace the step with
        ``jax.eval_shape(run.train_step, run.state, batch)``, e.g. to check a config in
        milliseconds. ``teacher`` variables may then be shapes too.

    Raises ConfigError (and the data / teacher errors of zkd.errors) naming what cannot work.
    """
    info = dataset_info(config) if info is None else info
    validate_config(config, info, teacher_given=teacher is not None)
    points = grid.points_of(config) if points is None else list(points)
    if mesh is None:
        try:
            mesh = parallel.make_mesh(None if config.num_devices < 0 else config.num_devices)
        except ValueError as err:
            raise ConfigError(f"config.num_devices: {err}") from err
    for field in ("batch_size", "eval_batch_size"):
        try:
            parallel.check_batch_size(config[field], mesh, field)
        except ValueError as err:
            raise ConfigError(str(err)) from err
    dtype = DTYPES[config.dtype]

    student_shape = student_image_shape(config, info)
    student = models.build_model(config.student, info.num_classes, dtype, "student", input_shape=student_shape)
    method = methods.from_config(config)
    teacher_model, teacher_variables = None, None
    if method.needs_teacher:
        teacher_shape = teacher_image_shape(config, info)
        teacher_model, teacher_variables = (
            teacher_lib.from_python(teacher, info.num_classes, teacher_shape) if teacher is not None
            else teacher_lib.load_teacher(config.teacher, info.num_classes, teacher_shape, dtype))

    steps_per_epoch = steps_per_epoch_of(config, info)
    lr_fn, tx = make_optimizer(config, steps_per_epoch)
    students, keys = [], []
    for p in points:
        init_key, train_key = jax.random.split(jax.random.key(p.config.seed))

        def create(key):
            extra = method.init_params()
            return state_lib.create_train_state(key, student, student_shape, tx,
                                                method_params={method.name: extra} if extra else None)

        students.append(jax.eval_shape(create, init_key) if abstract else create(init_key))
        keys.append(train_key)
    state = state_lib.RunState(tuple(students), tuple(keys), teacher_variables,
                               None if teacher_model is None else teacher_model.apply)
    if not abstract:
        state = parallel.replicate(state, mesh)

    settings = tuple(step_settings(p.config, steps_per_epoch, lr_fn) for p in points)
    vectorize = config.sweep.vectorize
    run_step = step_lib.make_run_step(settings, vectorize)
    device_data = None
    if config.device_resident_data:
        run_step, device_data = _device_resident(run_step, config, info, mesh)
    train_step = parallel.jit_train_step(run_step, mesh, batch_replicated=device_data is not None)
    k = config.get("steps_per_dispatch", 1)
    train_steps = None if k == 1 else parallel.jit_train_step(_scanned(run_step, k, mesh), mesh,
                                                              batch_replicated=True)
    eval_step = parallel.jit_eval_step(step_lib.make_run_eval_step(student.apply, len(points), vectorize), mesh)
    teacher_eval = None if teacher_model is None else parallel.jit_eval_step(
        step_lib.make_eval_step(teacher_model.apply, config.get("teacher_input_size", 0)), mesh)
    t = config.teacher
    label = ("(given in Python)" if teacher is not None else
             f"ensemble of {len(t.get('ensemble', ()))}" if t.get("ensemble", ()) else
             t.get("factory", "") or t.name)
    return Run(config, points, info, mesh, student, teacher_model, teacher_variables, steps_per_epoch, lr_fn, tx,
               settings, state, train_step, eval_step, teacher_eval, device_data, label, train_steps, k)
