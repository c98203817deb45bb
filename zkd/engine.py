"""The build phase: a config in, everything a run needs out, built once.

``build(config)`` validates the config (zkd.validate), then makes the mesh, the student and the
frozen teacher, the optimizer (zkd.optim), the state of N >= 1 students (a single run is one; a
sweep is one per grid point, zkd.grid), the compiled train and eval steps (zkd.step, over the
method of zkd.methods) and the data streams (zkd.streams). The loop (zkd.train) runs the
``Run`` it returns; so do the benchmarks, the studies and the tests that need a step.

Nothing here writes to disk or keeps time: that is the loop's job.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Callable, Iterable, Iterator, Optional

import jax
import ml_collections
from jax.sharding import Mesh

from zkd import data, grid, methods, models, parallel, streams
from zkd import state as state_lib
from zkd import step as step_lib
from zkd import teacher as teacher_lib
from zkd.errors import ConfigError
from zkd.optim import make_optimizer  # noqa: F401  (kept importable from here)
from zkd.streams import check_labels  # noqa: F401  (kept importable from here)
from zkd.validate import DTYPES, dataset_info, student_options, validate_config, with_dataset  # noqa: F401


def student_image_shape(config, info: data.DatasetInfo) -> tuple:
    """(H, W, C) the student sees: ``config.student_input_size`` squared, or the dataset's shape."""
    size = config.student_input_size
    return (size, size, info.image_shape[2]) if size else tuple(info.image_shape)


def teacher_image_shape(config, info: data.DatasetInfo) -> tuple:
    """(H, W, C) the teacher sees: ``config.teacher_input_size`` squared, or the student's view."""
    size = config.teacher_input_size
    return (size, size, info.image_shape[2]) if size else student_image_shape(config, info)


def steps_per_epoch_of(config, info: Optional[data.DatasetInfo] = None) -> int:
    """Training steps per epoch: the split over the global batch, capped by ``config.steps_per_epoch``."""
    try:
        steps = data.steps_per_epoch(config.dataset if info is None else info, config.batch_size)
    except ValueError as err:
        raise ConfigError(f"config.batch_size: {err}") from err
    return min(steps, config.steps_per_epoch) if config.steps_per_epoch > 0 else steps


def step_settings(config, steps_per_epoch: int, learning_rate_fn) -> step_lib.StepSettings:
    """The static settings of one student's step, from its (single-run) config."""
    method = methods.from_config(config)
    return step_lib.StepSettings(
        method=method, steps_per_epoch=steps_per_epoch, learning_rate_fn=learning_rate_fn,
        logit_stand=bool(config.logit_stand) and method.uses_logit_stand,
        hparams=methods.hparams_from_config(config, method),
        teacher_input_size=int(config.teacher_input_size), kd_logits=config.loss.kd_logits,
    )


# ----------------------------------------------------------------------------- the built run


@dataclasses.dataclass(kw_only=True)
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
    method: methods.Method
    student: Any
    teacher: Any
    teacher_variables: Any
    teacher_label: str  # how logs name the teacher
    steps_per_epoch: int
    learning_rate_fn: Callable
    tx: Any
    settings: tuple
    state: state_lib.RunState
    train_step: Callable
    eval_step: Callable
    teacher_eval_step: Optional[Callable]
    device_data: Any = None  # the training split on the devices (config.device_resident_data)
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
        local = streams.local_train_stream(self.config, self.info, self.teacher_variables, start_step,
                                           self.method.views == 2)
        return (parallel.global_batch(check_labels(b, self.info.num_classes, step), self.mesh)
                for step, b in enumerate(local, start_step))

    def eval_batches(self) -> Iterable[dict]:
        """This process's evaluation batches (host numpy, with "mask"), in a fixed order; an
        in-memory dataset's are decoded and normalized once and kept, a large one's streamed."""
        if self._eval_cache is not None:
            return self._eval_cache
        batches = streams.eval_batches(self.config, self.info)
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
    method = methods.from_config(config)

    student_shape = student_image_shape(config, info)
    student = models.build_model(config.student, info.num_classes, dtype, "student", input_shape=student_shape)
    teacher_model, teacher_variables = None, None
    if method.needs_teacher:
        teacher_shape = teacher_image_shape(config, info)
        teacher_model, teacher_variables = (
            teacher_lib.from_python(teacher, info.num_classes, teacher_shape) if teacher is not None
            else teacher_lib.load_teacher(config.teacher, info.num_classes, teacher_shape, dtype))

    steps_per_epoch = steps_per_epoch_of(config, info)
    lr_fn, tx = make_optimizer(config, steps_per_epoch)
    extra = method.init_params()  # a method's own learned parameters sit beside the student's

    def create(key):
        return state_lib.create_train_state(key, student, student_shape, tx,
                                            method_params={method.name: extra} if extra else None)

    students, keys = [], []
    for p in points:
        init_key, train_key = jax.random.split(jax.random.key(p.config.seed))
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
        run_step, device_data = streams.device_resident(run_step, config, info, mesh)
    k = config.steps_per_dispatch
    t = config.teacher
    return Run(
        config=config, points=points, info=info, mesh=mesh, method=method,
        student=student, teacher=teacher_model, teacher_variables=teacher_variables,
        teacher_label=("(given in Python)" if teacher is not None else
                       f"ensemble of {len(t.ensemble)}" if t.ensemble else t.factory or t.name),
        steps_per_epoch=steps_per_epoch, learning_rate_fn=lr_fn, tx=tx, settings=settings, state=state,
        train_step=parallel.jit_train_step(run_step, mesh, batch_replicated=device_data is not None),
        eval_step=parallel.jit_eval_step(step_lib.make_run_eval_step(student.apply, len(points), vectorize), mesh),
        teacher_eval_step=None if teacher_model is None else parallel.jit_eval_step(
            step_lib.make_eval_step(teacher_model.apply, config.teacher_input_size), mesh),
        device_data=device_data,
        train_steps=None if k == 1 else parallel.jit_train_step(parallel.scanned_steps(run_step, k, mesh), mesh,
                                                                batch_replicated=True),
        steps_per_dispatch=k,
    )
