"""Hyper-parameter sweeps: N students trained in one run, at the cost of one teacher.

The released code answers "which temperature and KD weight for my pair?" with one full run per
grid point, the teacher's forward pass included each time. Here a grid is one run:

    zkd --config=configs/cifar100.py:method=kd,teacher=resnet32x4,student=resnet8x4,ls=1 \\
        --config.sweep.temperature="(2, 3)" --config.sweep.kd_weight="(3, 6, 9, 12, 15)"

Every non-empty axis of ``config.sweep`` (temperature, kd_weight, ce_weight, dkd_alpha, dkd_beta,
logit_stand, seed) is swept over its Cartesian product. The students are stacked along a
leading axis; one compiled step runs the teacher once on the batch (or takes its logits from
``config.teacher.logit_cache``) and then the student update (``zkd.step.student_update``) of every
student, each with its own ``LossHParams``: written out per student (``sweep.vectorize="unroll"``,
the default) or batched with ``jax.vmap`` (``"vmap"``; slower where measured, see
``make_sweep_step``). The state is replicated and the batch sharded over the mesh as in a single run.

Each grid point is the single run whose config is ``point.config``: same data stream
(``data_seed`` is the sweep's), same initialisation (``seed``), same hyper-parameters; its
trajectory equals that run's (tests/test_sweep.py). A ``seed`` axis therefore varies the
students' initialisation over one shared data order.

Workdir layout:

    config.json, metrics.jsonl       the sweep's config; the teacher's evaluation
    checkpoints/                     the stacked students (what a restart resumes from)
    students/<point>/                one complete zkd run directory per grid point: config.json
                                     (its single-run config), metrics.jsonl, checkpoints/, best/,
                                     summary.json -- usable as a teacher or by logit_stats.py
    sweep.json, sweep.md             the grid ranked by best test top-1
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import time
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from zkd import checkpoint, data, models, parallel, recipes
from zkd import state as state_lib
from zkd import step as step_lib
from zkd import train
from zkd.metrics_io import MetricWriter, ProgressBar
from zkd.teacher import load_teacher

# Which axes change what each method computes (an axis a method ignores is refused).
AXES_OF_METHOD = {
    "ce": ("ce_weight", "seed"),
    "kd": ("temperature", "kd_weight", "ce_weight", "logit_stand", "seed"),
    "dkd": ("temperature", "ce_weight", "dkd_alpha", "dkd_beta", "logit_stand", "seed"),
    "mlkd": ("temperature", "kd_weight", "ce_weight", "logit_stand", "seed"),
    "ctkd": ("kd_weight", "ce_weight", "logit_stand", "seed"),
}
_LABEL = {"temperature": "T", "kd_weight": "kd", "ce_weight": "ce", "dkd_alpha": "alpha", "dkd_beta": "beta",
          "logit_stand": "ls", "seed": "seed"}
_LOSS_FIELDS = ("temperature", "kd_weight", "ce_weight", "dkd_alpha", "dkd_beta")


# ----------------------------------------------------------------------------- the grid


@dataclasses.dataclass(frozen=True)
class GridPoint:
    """One student of a sweep: ``values`` of the swept axes, and the equivalent single-run config."""

    name: str
    values: dict
    config: ml_collections.ConfigDict


def _checked_value(axis: str, value: Any):
    if axis == "logit_stand":
        if value not in (0, 1, True, False):
            raise train.ConfigError(f"config.sweep.logit_stand values must be 0/1 or booleans, got {value!r}")
        return bool(value)
    if axis == "seed":
        if isinstance(value, bool) or int(value) != value or value < 0:
            raise train.ConfigError(f"config.sweep.seed values must be integers >= 0, got {value!r}")
        return int(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise train.ConfigError(f"config.sweep.{axis} values must be finite numbers, got {value!r}")
    if axis == "temperature" and value <= 0:
        raise train.ConfigError(f"config.sweep.temperature values must be > 0, got {value!r}")
    if value < 0:
        raise train.ConfigError(f"config.sweep.{axis} values must be >= 0, got {value!r}")
    return float(value)


def _fmt(value) -> str:
    if isinstance(value, bool):
        return str(int(value))
    return f"{value:g}"


def grid_points(config: ml_collections.ConfigDict) -> list[GridPoint]:
    """The Cartesian product of the swept axes, in axis order (the last axis varies fastest).

    Raises ConfigError for an axis the method ignores, a bad value, or a repeated value.
    """
    axes = recipes.swept_axes(config)
    if not axes:
        raise train.ConfigError("config.sweep has no non-empty axis: nothing to sweep (train a single run)")
    allowed = AXES_OF_METHOD[config.method]
    for axis, values in axes.items():
        if axis not in allowed:
            raise train.ConfigError(
                f"config.sweep.{axis} has no effect on method {config.method!r}; it sweeps {', '.join(allowed)}")
        checked = [_checked_value(axis, v) for v in values]
        if len(set(checked)) != len(checked):
            raise train.ConfigError(f"config.sweep.{axis}={values!r} repeats a value")
    seed_of_data = train.data_seed(config)
    points = []
    for combo in itertools.product(*axes.values()):
        values = {axis: _checked_value(axis, v) for axis, v in zip(axes, combo)}
        c = ml_collections.ConfigDict(config.to_dict())  # an unlocked copy
        for axis in axes:
            c.sweep[axis] = ()
        c.data_seed = seed_of_data
        for axis, v in values.items():
            if axis in _LOSS_FIELDS:
                c.loss[axis] = v
            else:
                c[axis] = v
        name = "_".join(f"{_LABEL[axis]}{_fmt(v)}" for axis, v in values.items())
        points.append(GridPoint(name, values, recipes.finalize(c)))
    return points


# ----------------------------------------------------------------------------- state and step


@flax.struct.dataclass
class SweepState:
    """N students stacked along a leading axis, their hyper-parameters, and the shared teacher.

    ``students``: a ``TrainState`` whose every array leaf is [N, ...] (no teacher inside);
    ``hparams``: ``LossHParams`` of float32 [N] (``logit_stand`` bool [N]).
    """

    students: state_lib.TrainState
    hparams: step_lib.LossHParams
    teacher_variables: Any = None
    teacher_apply_fn: Any = flax.struct.field(pytree_node=False, default=None)


def stacked_hparams(points: list[GridPoint]) -> step_lib.LossHParams:
    """Each point's loss hyper-parameters, stacked: float32 [N] (``logit_stand`` bool [N])."""
    def column(field):
        if field == "logit_stand":
            return jnp.asarray([bool(p.config.logit_stand) for p in points])
        return jnp.asarray([float(p.config.loss[field]) for p in points], jnp.float32)

    return step_lib.LossHParams(**{f: column(f) for f in step_lib.HPARAM_FIELDS})


def create_sweep_state(points: list[GridPoint], student_model, input_shape, tx, teacher_model=None,
                       teacher_variables=None) -> SweepState:
    """Each student initialised exactly as its single run would be (from its own seed), stacked."""
    ctkd = points[0].config.method == "ctkd"
    states = []
    for p in points:
        init_rng, _ = jax.random.split(jax.random.key(p.config.seed))  # as zkd.train does
        states.append(state_lib.create_train_state(init_rng, student_model, input_shape, tx, ctkd=ctkd))
    students = jax.tree.map(lambda *xs: jnp.stack(xs), *states)
    return SweepState(students, stacked_hparams(points), teacher_variables,
                      None if teacher_model is None else teacher_model.apply)


def sweep_settings(config, points: list[GridPoint], steps_per_epoch: int, learning_rate_fn) -> step_lib.StepSettings:
    """The static step settings: LS static when all students agree, per student (None) otherwise."""
    settings = train.step_settings(config, steps_per_epoch, learning_rate_fn)
    flags = {bool(p.config.logit_stand) for p in points}
    return dataclasses.replace(settings, logit_stand=flags.pop() if len(flags) == 1 else None)


VECTORIZE = ("unroll", "vmap")


def resolve_vectorize(vectorize: str) -> str:
    """``vectorize`` checked against ``VECTORIZE``."""
    if vectorize not in VECTORIZE:
        raise train.ConfigError(f"config.sweep.vectorize={vectorize!r}; valid: {', '.join(VECTORIZE)}")
    return vectorize


def make_sweep_step(settings: step_lib.StepSettings, vectorize: str = "unroll"):
    """``sweep_step(state, batch, rng) -> (state, metrics)``: one teacher forward on ``batch``,
    then every student's update; metrics are float32 [N] each.

    ``vectorize``: "unroll" writes one update per student into the compiled step (compile
    time grows with N); "vmap" batches the updates into one computation with ``jax.vmap``
    (convolutions with per-student weights become grouped convolutions). Same numbers either
    way. Measured for 9 resnet8x4 students of resnet32x4 (experiments/results/bench_sweep.md),
    "vmap" is slower on both backends: ~3x nine separate runs on a 2-core CPU (XLA's CPU
    grouped convolutions), 0.88 / 1.48 of nine runs at batch 64 / 256 on an H200, against
    0.56 / 0.52 unrolled. Hence the default.
    """
    vectorize = resolve_vectorize(vectorize)

    def sweep_step(state: SweepState, batch: dict, rng: jax.Array):
        del rng
        teacher = step_lib.teacher_logits_of_batch(settings, state.teacher_apply_fn, state.teacher_variables, batch)

        def update(student, hparams):
            return step_lib.student_update(settings, student, hparams, batch, teacher)

        if vectorize == "vmap":
            students, metrics = jax.vmap(update)(state.students, state.hparams)
        else:
            n = state.hparams.temperature.shape[0]
            outs = [update(student_slice(state.students, i), student_slice(state.hparams, i)) for i in range(n)]
            students, metrics = jax.tree.map(lambda *xs: jnp.stack(xs), *outs)
        return state.replace(students=students), metrics

    return sweep_step


def make_sweep_eval_step(apply_fn, num_students: int, vectorize: str = "unroll"):
    """``eval_step(stacked_variables, batch)``: every student's ``eval_sums``, each [N] (and
    "predictions" [N, B]); students unrolled or vmapped as in ``make_sweep_step``."""
    one = step_lib.make_eval_step(apply_fn)
    if resolve_vectorize(vectorize) == "vmap":
        return jax.vmap(one, in_axes=(0, None))

    def eval_step(variables, batch):
        outs = [one(student_slice(variables, i), batch) for i in range(num_students)]
        return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)

    return eval_step


def student_slice(tree: Any, i: int) -> Any:
    """Student ``i`` of a stacked (host) pytree."""
    return jax.tree.map(lambda x: x[i], tree)


# ----------------------------------------------------------------------------- the run


def _student_summary(config, meta: dict, i: int, wall_start: float) -> dict:
    return {
        "run": recipes.run_name(config),
        "best_top1": meta["best_top1"][i],
        "best_epoch": meta["best_epoch"][i],
        "last_top1": meta["last_top1"][i],
        "last_top5": meta["last_top5"][i],
        "agreement": meta["agreement"][i],
        "epochs": meta["epoch"],
        "train_seconds": meta["train_seconds"],
        "images_per_second": meta["train_images"] / max(meta["train_seconds"], 1e-9),
        "wall_seconds_this_start": time.time() - wall_start,
        "paper_top1": config.paper_top1.logit_stand if config.logit_stand else config.paper_top1.baseline,
        "trained_in_sweep_of": len(meta["best_top1"]),
    }


def ranking_table(points: list[GridPoint], summaries: list[dict]) -> str:
    """Markdown: the grid points ranked by best test top-1 (ties: last top-1)."""
    axes = list(points[0].values)
    order = sorted(range(len(points)), key=lambda i: (-summaries[i]["best_top1"], -summaries[i]["last_top1"]))
    head = ["rank", *axes, "best top-1", "best epoch", "last top-1", "agreement", "point"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for rank, i in enumerate(order, 1):
        s = summaries[i]
        cells = [str(rank), *(_fmt(points[i].values[a]) for a in axes), f"{s['best_top1']:.2f}", str(s["best_epoch"]),
                 f"{s['last_top1']:.2f}", f"{s['agreement']:.2f}", points[i].name]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _check_finite(host: list[dict], first_step: int, points: list[GridPoint]) -> None:
    for i, point in enumerate(points):
        problem = train._first_nonfinite([student_slice(m, i) for m in host], first_step)
        if problem:
            raise train.NonFiniteError(
                f"student {point.name}: {problem}: stopping the sweep before any checkpoint of it is written. "
                "Drop this grid point, lower the learning rate, or check the input data."
            )


def train_sweep(config: ml_collections.ConfigDict, workdir: str, allow_config_change: bool = False) -> dict:
    """Train every grid point of ``config.sweep`` at once; returns ``{"points": [...], "table": str}``.

    Resumes from the stacked checkpoint in ``workdir``. See the module docstring for the layout.
    """
    wall_start = time.time()
    # --- config, grid and workdirs
    train.validate_config(config)
    points = grid_points(config)
    resolve_vectorize(config.sweep.vectorize)
    info = data.get_info(config.dataset)
    mesh = parallel.make_mesh(None if config.num_devices < 0 else config.num_devices)
    parallel.check_batch_size(config.batch_size, mesh, "batch_size")
    parallel.check_batch_size(config.eval_batch_size, mesh, "eval_batch_size")
    train.prepare_workdir(config, workdir, allow_config_change)
    student_dirs = [os.path.join(workdir, "students", p.name) for p in points]
    for p, d in zip(points, student_dirs):
        train.prepare_workdir(p.config, d, allow_config_change)
    writer = MetricWriter(workdir)
    writers = [MetricWriter(d) for d in student_dirs]
    dtype = train.DTYPES[config.dtype]
    n = len(points)
    print(f"zkd sweep: {n} students ({', '.join(p.name for p in points)})", flush=True)

    # --- models, optimizer, state
    student = models.build(config.student.name, info.num_classes, zoo=config.student.zoo, dtype=dtype)
    teacher, teacher_variables = (None, None)
    if config.method != "ce":
        teacher, teacher_variables = load_teacher(config.teacher, info.num_classes, info.image_shape, dtype)
    steps_per_epoch = train.steps_per_epoch_of(config)
    lr_fn, tx = train.make_optimizer(config, steps_per_epoch)
    state = create_sweep_state(points, student, info.image_shape, tx, teacher, teacher_variables)

    # --- resume (from the stacked checkpoint: all students at one step)
    keep_every = config.checkpoint_every_epochs * steps_per_epoch
    stacked_ckpts = checkpoint.TrainingCheckpoints(workdir, keep_every_steps=keep_every)
    student_ckpts = [checkpoint.TrainingCheckpoints(d, keep_every_steps=keep_every) for d in student_dirs]
    nan = [float("nan")] * n
    meta = {"epoch": 0, "best_top1": [-1.0] * n, "best_epoch": [0] * n, "train_seconds": 0.0, "train_images": 0,
            "last_top1": nan, "last_top5": nan, "agreement": nan}
    restored = stacked_ckpts.restore_latest(state_lib.checkpointable(state.students))
    if restored is not None:
        saved, meta = restored
        state = state.replace(students=state_lib.restore_checkpointable(state.students, saved))
        if int(state.students.step[0]) != meta["epoch"] * steps_per_epoch:
            raise train.ConfigError(f"checkpoint step {int(state.students.step[0])} does not match epoch "
                                    f"{meta['epoch']} x {steps_per_epoch} steps: the batch size changed")
    for w in (writer, *writers):
        w.truncate_after(meta["epoch"] * steps_per_epoch)
    state = parallel.replicate(state, mesh)
    start_epoch = meta["epoch"]

    # --- compiled steps
    settings = sweep_settings(config, points, steps_per_epoch, lr_fn)
    p_sweep_step = parallel.jit_train_step(make_sweep_step(settings, config.sweep.vectorize), mesh)
    p_eval = parallel.jit_eval_step(make_sweep_eval_step(student.apply, n, config.sweep.vectorize), mesh,
                                    stacked=True)
    train_rng = parallel.replicate(jax.random.split(jax.random.key(config.seed))[1], mesh)
    eval_source = train.make_eval_source(config, info)

    # --- teacher, measured once
    teacher_preds = None
    if teacher is not None and start_epoch < config.num_epochs:
        t_eval = parallel.jit_eval_step(step_lib.make_eval_step(teacher.apply), mesh)
        t_metrics, teacher_preds = train.evaluate(t_eval, state.teacher_variables, eval_source, mesh)
        if start_epoch == 0:
            for w in (writer, *writers):
                w.write(0, "teacher", t_metrics)
        print(f"teacher {config.teacher.name}: top-1 {t_metrics['top1']:.2f}%", flush=True)

    # --- loop
    batches = train.training_stream(config, info, teacher_variables, start_epoch * steps_per_epoch,
                                    settings.two_views)
    bar = ProgressBar(steps_per_epoch * config.num_epochs, config.batch_size, enabled=config.progress_bar)
    for epoch in range(start_epoch, config.num_epochs):
        epoch_start = time.perf_counter()
        history: list[dict] = []
        epoch_sums: dict[str, np.ndarray] = {}
        first_step = epoch * steps_per_epoch
        for i in range(steps_per_epoch):
            step = first_step + i
            batch = parallel.global_batch(train.check_labels(next(batches), info.num_classes, step), mesh)
            state, metrics = p_sweep_step(state, batch, train_rng)
            history.append(metrics)
            if (i + 1) % config.log_every_steps == 0 or i + 1 == steps_per_epoch:
                host = parallel.to_host(history)
                _check_finite(host, step - len(history) + 1, points)
                values = {k: np.stack([m[k] for m in host]) for k in host[0]}  # each [steps, N]
                for k, v in values.items():
                    epoch_sums[k] = epoch_sums.get(k, 0.0) + v.sum(0)
                for j, w in enumerate(writers):
                    w.write(step + 1, "train", {k: float(v[:, j].mean()) for k, v in values.items()})
                history = []
            bar.update(step + 1, epoch + 1)
        jax.block_until_ready(state)
        epoch_seconds = time.perf_counter() - epoch_start
        meta["train_seconds"] += epoch_seconds
        meta["train_images"] += steps_per_epoch * config.batch_size

        # --- evaluation of every student
        variables = {"params": state.students.params["student"], "batch_stats": state.students.batch_stats}
        eval_metrics, student_preds = train.evaluate(p_eval, variables, eval_source, mesh)
        if teacher_preds is not None:
            eval_metrics["agreement"] = train._agreement(student_preds, teacher_preds)
        step_now = (epoch + 1) * steps_per_epoch
        for j, w in enumerate(writers):
            record = {k: v[j] for k, v in eval_metrics.items() if isinstance(v, list)}
            record["count"] = eval_metrics["count"] if not isinstance(eval_metrics["count"], list) \
                else eval_metrics["count"][j]
            for k, v in epoch_sums.items():
                if k.startswith("logit_std"):
                    record[f"train_{k}"] = float(v[j]) / steps_per_epoch
            record["images_per_second"] = steps_per_epoch * config.batch_size / epoch_seconds
            record["epoch"] = epoch + 1
            w.write(step_now, "eval", record)
        top1 = eval_metrics["top1"]
        is_best = [top1[j] > meta["best_top1"][j] for j in range(n)]
        for j in range(n):
            if is_best[j]:
                meta["best_top1"][j], meta["best_epoch"][j] = top1[j], epoch + 1
        meta["epoch"] = epoch + 1
        meta["last_top1"], meta["last_top5"] = top1, eval_metrics["top5"]
        meta["agreement"] = eval_metrics.get("agreement", [float("nan")] * n)

        # --- checkpoints: the stacked one first (complete before any student's), then each student's
        saved = parallel.to_host(state_lib.checkpointable(state.students))
        stacked_ckpts.save(step_now, saved, json.loads(json.dumps(meta)), is_best=False)
        stacked_ckpts.wait()
        for j, ck in enumerate(student_ckpts):
            student_meta = {"epoch": epoch + 1, "best_top1": meta["best_top1"][j], "best_epoch": meta["best_epoch"][j],
                            "train_seconds": meta["train_seconds"], "train_images": meta["train_images"],
                            "last_top1": top1[j], "last_top5": meta["last_top5"][j], "agreement": meta["agreement"][j]}
            ck.save(step_now, student_slice(saved, j), student_meta, is_best[j])  # async; overlaps training
        if not bar.enabled:
            best = max(range(n), key=lambda j: top1[j])
            print(f"epoch {epoch + 1}/{config.num_epochs}: best student {points[best].name} {top1[best]:.2f}%, "
                  f"{steps_per_epoch * config.batch_size / epoch_seconds:.0f} img/s ({n} students)", flush=True)
    bar.close()
    for ck in (stacked_ckpts, *student_ckpts):
        ck.wait()
        ck.close()
    for w in (writer, *writers):
        w.close()

    # --- summaries and the ranking
    summaries = [_student_summary(p.config, meta, j, wall_start) for j, p in enumerate(points)]
    table = ranking_table(points, summaries)
    result = {"run": recipes.run_name(config), "students": n, "epochs": meta["epoch"],
              "train_seconds": meta["train_seconds"],
              "images_per_second": meta["train_images"] / max(meta["train_seconds"], 1e-9),
              "points": [{"name": p.name, "values": p.values, "workdir": d, **s}
                         for p, d, s in zip(points, student_dirs, summaries)]}
    if jax.process_index() == 0:
        for d, s in zip(student_dirs, summaries):
            with open(os.path.join(d, "summary.json"), "w") as f:
                json.dump(s, f, indent=2)
        with open(os.path.join(workdir, "sweep.json"), "w") as f:
            json.dump(result, f, indent=2)
        with open(os.path.join(workdir, "sweep.md"), "w") as f:
            f.write(f"# {result['run']}: {n} students, {meta['epoch']} epochs\n\n{table}")
    result["table"] = table
    return result
