"""The training loop, one for every run: a single run is a sweep of one student.

    train_and_evaluate(config, workdir) -> summary     one student (python -m zkd.main)
    zkd.sweep.train_sweep(config, workdir) -> result   every grid point of config.sweep

Both call ``fit``: build everything once (``zkd.engine.build``), then one loop. Phases, in
order: workdir and writers -> resume from the latest checkpoint -> the teacher, evaluated once
-> epochs of steps (metrics flushed every ``log_every_steps``, a non-finite value stops the run
naming the step) -> exact evaluation of every student each epoch -> one checkpoint save per
epoch -> summaries. Pure pieces live elsewhere (zkd.step, zkd.losses); this module owns the
workdir, time and I/O.

Workdir of a single run: ``config.json``, ``metrics.jsonl`` (kinds "train", "eval", "teacher"),
``tensorboard/``, ``checkpoints/`` (zkd.checkpoint), ``summary.json``. A sweep's workdir has
the same files for the sweep as a whole (its ``checkpoints/`` hold every student), and
``students/<point>/`` per grid point with the single run's files (config.json is that point's
single-run config) and a ``sweep_member.json`` that points at the sweep's checkpoints, plus
``sweep.json`` / ``sweep.md`` ranking the points.
"""

from __future__ import annotations

import json
import os
import time
from typing import Optional

import jax
import ml_collections
import numpy as np

from zkd import checkpoint, data, engine, grid, parallel, paths, recipes
from zkd.errors import ConfigError, NonFiniteError
from zkd.metrics_io import MetricWriter, ProgressBar
from zkd.preemption import Preempted, StopRequests
from zkd.workdir import WorkdirHold, make_writable, prepare_workdir, write_json

__all__ = ["train_and_evaluate", "fit", "evaluate", "ConfigError", "NonFiniteError", "DataError", "Preempted"]

DataError = data.DataError  # labels outside the class range; damaged or mismatched records

# Step metrics that are not loss terms; a non-finite report names the loss terms first.
DIAGNOSTICS = ("loss", "grad_norm", "param_norm", "accuracy", "agreement", "learning_rate",
               "logit_std_student", "logit_std_teacher", "ctkd_temperature")


# ----------------------------------------------------------------------------- evaluation


def evaluate(eval_step, variables, batches, mesh) -> tuple[list[dict], list[np.ndarray]]:
    """Exact evaluation over the test split: every example counted once (padded rows masked).

    ``eval_step`` gives one ``zkd.step.eval_sums`` (a model) or a tuple of them (N students).
    Returns a list of metrics dicts (one per model) and of predictions [examples] (-1 on padded
    rows), in the order of ``eval_step``'s outputs.
    """
    sums: list[dict] = []
    predictions: list[list] = []
    for local in batches:
        batch = parallel.global_batch(local, mesh)
        out = parallel.to_host(eval_step(variables, batch))
        outs = out if isinstance(out, (tuple, list)) else (out,)
        mask = parallel.to_host(batch["mask"])
        if not sums:
            sums, predictions = [{} for _ in outs], [[] for _ in outs]
        for j, o in enumerate(outs):
            o = dict(o)
            predictions[j].append(np.where(mask, o.pop("predictions"), -1))
            for k, v in o.items():
                sums[j][k] = sums[j].get(k, 0.0) + float(v)
    metrics = [{"top1": 100.0 * s["correct_top1"] / s["count"], "top5": 100.0 * s["correct_top5"] / s["count"],
                "loss": s["loss"] / s["count"], "logit_std": s["logit_std"] / s["count"], "count": s["count"]}
               for s in sums]
    return metrics, [np.concatenate(p) for p in predictions]


def agreement(student_predictions: np.ndarray, teacher_predictions: np.ndarray) -> float:
    """Top-1 agreement in % over the real (unpadded) examples."""
    valid = teacher_predictions >= 0
    return float(100.0 * np.mean(student_predictions[valid] == teacher_predictions[valid]))


def first_nonfinite(history: list[dict], first_step: int) -> Optional[str]:
    """'non-finite values at step S: term=value, ...' for the first step with a NaN/Inf metric."""
    for i, metrics in enumerate(history):
        bad = [name for name, value in metrics.items() if not np.all(np.isfinite(value))]
        if bad:
            bad.sort(key=lambda n: (n in DIAGNOSTICS, DIAGNOSTICS.index(n) if n in DIAGNOSTICS else 0, n))
            values = ", ".join(f"{n}={float(np.asarray(metrics[n]).ravel()[0])}" for n in bad)
            return f"non-finite values at step {first_step + i}: {values}"
    return None


# ----------------------------------------------------------------------------- the loop


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, allow_config_change: bool = False, *,
                       dataset=None, teacher=None) -> dict:
    """Train the configured student (with its frozen teacher), evaluating every epoch.

    Resumes from the latest complete checkpoint in ``workdir``; returns (and writes)
    ``summary.json``. A config whose ``sweep`` sets an axis is refused: see zkd.sweep.

    From Python (docs/data.md, docs/models.md):
      dataset: a ``zkd.data.DatasetInfo`` (``zkd.data.from_arrays(...)`` for arrays in memory) or a
        dataset name, instead of ``config.dataset`` (the workdir's config.json records its name).
      teacher: ``(module_or_apply_fn, variables)``, a teacher held in Python (a user's pretrained
        model, an ensemble), instead of ``config.teacher``'s checkpoint; never updated nor
        checkpointed, so a resumed run must be handed the same teacher again.
    """
    config, info = engine.with_dataset(config, dataset)
    engine.validate_config(config, info, teacher_given=teacher is not None)
    points = grid.single_point(config)
    run = engine.build(config, points, teacher=teacher, info=info)
    return fit(config, workdir, points, allow_config_change, run=run)["students"][0]


def _fresh_meta(n: int) -> dict:
    nan = float("nan")
    return {"epoch": 0, "train_seconds": 0.0, "train_images": 0,
            "students": [{"best_top1": -1.0, "best_epoch": 0, "last_top1": nan, "last_top5": nan, "agreement": nan}
                         for _ in range(n)]}


def _summary(config, meta: dict, j: int, wall_start: float) -> dict:
    s = meta["students"][j]
    summary = {
        "run": recipes.run_name(config), "best_top1": s["best_top1"], "best_epoch": s["best_epoch"],
        "last_top1": s["last_top1"], "last_top5": s["last_top5"], "agreement": s["agreement"],
        "epochs": meta["epoch"], "train_seconds": meta["train_seconds"],
        "images_per_second": meta["train_images"] / max(meta["train_seconds"], 1e-9),
        "wall_seconds_this_start": time.time() - wall_start,
        "paper_top1": config.paper_top1.logit_stand if config.logit_stand else config.paper_top1.baseline,
    }
    if len(meta["students"]) > 1:
        summary["trained_in_sweep_of"] = len(meta["students"])
    return summary


def fit(config: ml_collections.ConfigDict, workdir: str, points: list, allow_config_change: bool = False,
        run: Optional[engine.Run] = None) -> dict:
    """Train the students ``points`` (zkd.grid) of ``config`` in ``workdir``: build once, loop once.

    One point is a single run (its files in ``workdir``); several are a sweep (see the module
    docstring). Returns ``{"students": [summary of each point], "dirs": [its directory], "meta"}``.
    ``run``: an already built ``zkd.engine.Run`` of these points (default: built here).

    Raises ``zkd.preemption.Preempted`` after saving a checkpoint when asked to stop (SIGTERM,
    Ctrl-C); ``zkd.workdir.WorkdirBusyError`` when another live run holds ``workdir``.
    """
    run = run or engine.build(config, points)
    make_writable(workdir)
    with WorkdirHold(workdir), StopRequests() as stop:
        ckpts = checkpoint.TrainingCheckpoints(workdir, keep_every_steps=config.checkpoint_every_epochs
                                               * run.steps_per_epoch)
        try:
            return _fit(config, workdir, points, allow_config_change, run, stop, ckpts)
        except KeyboardInterrupt:  # a second Ctrl-C: abort at once
            raise
        except BaseException:  # a failed step or read: the checkpoints of earlier steps still complete
            ckpts.settle()
            raise


def _resume_point(meta: dict, spe: int) -> int:
    """The step a checkpoint's ``meta`` was saved at (epoch ends carry only the epoch)."""
    return int(meta.get("step", meta["epoch"] * spe))


def _fit(config, workdir: str, points: list, allow_config_change: bool, run: engine.Run, stop: StopRequests,
         ckpts: checkpoint.TrainingCheckpoints) -> dict:
    wall_start = time.time()
    sweep = len(points) > 1 or bool(points[0].name)
    n, spe = run.num_students, run.steps_per_epoch

    # --- workdir, writers
    prepare_workdir(config, workdir, allow_config_change)
    dirs = [paths.join(workdir, "students", p.name) for p in points] if sweep else [workdir]
    if sweep:
        for j, (p, d) in enumerate(zip(points, dirs)):
            prepare_workdir(p.config, d, allow_config_change)
            if jax.process_index() == 0:
                checkpoint.write_sweep_member(d, workdir, j, p.name)
        print(f"zkd sweep: {n} students ({', '.join(p.name for p in points)})", flush=True)
    tensorboard = config.get("tensorboard", True)
    writers = [MetricWriter(d, tensorboard) for d in dirs]
    all_writers = [MetricWriter(workdir, tensorboard), *writers] if sweep else writers

    # --- resume (at an epoch end, or mid-epoch after a step checkpoint or a preemption)
    every_steps = int(config.get("checkpoint_every_steps", 0))
    meta, state = _fresh_meta(n), run.state
    restored = ckpts.restore_latest(run.checkpointable(state))
    if restored is not None:
        saved, meta = restored
        state = run.restore(state, saved)
        if int(state.step) != _resume_point(meta, spe):
            raise ConfigError(f"checkpoint step {int(state.step)} does not match its epoch {meta['epoch']} x "
                              f"{spe} steps per epoch: the batch size or steps_per_epoch changed")
    start_step = _resume_point(meta, spe)
    meta.pop("step", None)  # only a mid-epoch checkpoint's own meta names its step
    partial = meta.pop("partial", None)  # the unfinished epoch of a mid-epoch checkpoint
    for w in all_writers:  # records written after that checkpoint (a run killed mid-epoch) are redone
        w.truncate_after(start_step)
    start_epoch = start_step // spe

    # --- the teacher, measured once
    teacher_predictions = None
    if run.teacher_eval_step is not None and start_epoch < config.num_epochs:
        (t_metrics,), (teacher_predictions,) = evaluate(run.teacher_eval_step, state.teacher_variables,
                                                        run.eval_batches(), run.mesh)
        if start_step == 0:  # a resumed run logged it at its first start
            for w in all_writers:
                w.write(0, "teacher", t_metrics)
        print(f"teacher {run.teacher_label}: top-1 {t_metrics['top1']:.2f}%  top-5 {t_metrics['top5']:.2f}%  "
              f"logit std {t_metrics['logit_std']:.3f}  ({int(t_metrics['count'])} test images)", flush=True)

    # --- the loop
    batches = run.train_batches(start_step)
    bar = ProgressBar(run.total_steps, config.batch_size, enabled=config.progress_bar)
    for epoch in range(start_epoch, config.num_epochs):
        epoch_start = time.perf_counter()
        history: list = []
        epoch_sums: list[dict] = [{} for _ in range(n)]
        seconds_before = 0.0
        if partial is not None:  # continue the epoch exactly where the checkpoint left it
            history, epoch_sums, seconds_before = _unpack_partial(partial)
            partial = None
        i = start_step - epoch * spe if epoch == start_epoch else 0
        while i < spe:
            if _whole_dispatch_fits(run.steps_per_dispatch, i, spe, epoch * spe + i, config.log_every_steps,
                                    every_steps):
                state, metrics = run.train_steps(state, next(batches))  # metrics stacked [k]
                taken = run.steps_per_dispatch
            else:
                state, metrics = run.train_step(state, next(batches))
                taken = 1
            i += taken
            history.append(metrics)
            step = epoch * spe + i - 1  # the last step taken
            if i % config.log_every_steps == 0 or i == spe:
                _flush_train_metrics(history, step - _steps_in(history) + 1, points, writers, epoch_sums, sweep)
                history = []
            bar.update(step + 1, epoch + 1)
            stopping = False
            for done in range(step + 2 - taken, step + 2):  # every step's number: multi-host sync points
                stopping = stop.should_stop(done) or stopping
            if i < spe and (stopping or (every_steps and (step + 1) % every_steps == 0)):
                seconds = seconds_before + time.perf_counter() - epoch_start
                meta["partial"] = _pack_partial(history, step, points, epoch_sums, seconds, sweep)
                meta["step"] = step + 1
                ckpts.save(step + 1, run.checkpointable(state), json.loads(json.dumps(meta)), None)
                del meta["partial"], meta["step"]
                if stopping:
                    _stop(stop, step + 1, workdir, ckpts, bar, all_writers)
        jax.block_until_ready(state)
        epoch_seconds = seconds_before + time.perf_counter() - epoch_start
        meta["train_seconds"] += epoch_seconds
        meta["train_images"] += spe * config.batch_size

        # --- evaluation of every student
        results, predictions = evaluate(run.eval_step, run.student_variables(state), run.eval_batches(), run.mesh)
        step_now = (epoch + 1) * spe
        for j, (record, m) in enumerate(zip(results, meta["students"])):
            if teacher_predictions is not None:
                record["agreement"] = agreement(predictions[j], teacher_predictions)
            record.update({f"train_{k}": v / spe for k, v in epoch_sums[j].items() if k.startswith("logit_std")})
            record["images_per_second"] = spe * config.batch_size / epoch_seconds
            record["epoch"] = epoch + 1
            writers[j].write(step_now, "eval", record)
            if record["top1"] > m["best_top1"]:
                m["best_top1"], m["best_epoch"] = record["top1"], epoch + 1
            m["last_top1"], m["last_top5"] = record["top1"], record["top5"]
            m["agreement"] = record.get("agreement", float("nan"))
        meta["epoch"] = epoch + 1
        ckpts.save(step_now, run.checkpointable(state), json.loads(json.dumps(meta)), [r["top1"] for r in results])
        if not bar.enabled:
            best = max(range(n), key=lambda j: results[j]["top1"])
            who = f"best student {points[best].name} " if sweep else "test top-1 "
            print(f"epoch {epoch + 1}/{config.num_epochs}: {who}{results[best]['top1']:.2f}% "
                  f"(best {meta['students'][best]['best_top1']:.2f}%), "
                  f"{spe * config.batch_size / epoch_seconds:.0f} img/s", flush=True)
        if stop.signal_name is not None and epoch + 1 < config.num_epochs:
            _stop(stop, step_now, workdir, ckpts, bar, all_writers)
    bar.close()
    ckpts.wait()
    ckpts.close()
    for w in all_writers:
        w.close()

    summaries = [_summary(p.config, meta, j, wall_start) for j, p in enumerate(points)]
    if jax.process_index() == 0:
        for d, s in zip(dirs, summaries):
            write_json(paths.join(d, "summary.json"), s)
    return {"students": summaries, "dirs": dirs, "meta": meta}


def _whole_dispatch_fits(k: int, i: int, spe: int, step: int, log_every: int, every_steps: int) -> bool:
    """Whether the k steps from the epoch's step ``i`` (global ``step``) run as one dispatch: k > 1
    and they end at or before the epoch's end, the next metrics flush and the next step
    checkpoint, so every boundary the loop acts on is still seen; otherwise one step."""
    if k == 1 or i + k > spe:
        return False
    if (i // log_every + 1) * log_every < i + k:
        return False
    return not every_steps or (step // every_steps + 1) * every_steps >= step + k


def _steps_in(history: list) -> int:
    """Steps held by ``history``: one per single step's metrics (scalars), k per dispatch of k
    (metrics stacked [k])."""
    return sum(1 if np.ndim(jax.tree.leaves(m)[0]) == 0 else int(np.shape(jax.tree.leaves(m)[0])[0])
               for m in history)


def _host_steps(history: list) -> list:
    """``history`` fetched to the host, one entry (a tuple of one dict per student) per step."""
    rows = []
    for m in parallel.to_host(history):
        if np.ndim(jax.tree.leaves(m)[0]) == 0:
            rows.append(m)
        else:
            rows.extend(jax.tree.map(lambda v, j=j: v[j], m) for j in range(np.shape(jax.tree.leaves(m)[0])[0]))
    return rows


def _stop(stop: StopRequests, step: int, workdir: str, ckpts, bar, writers) -> None:
    """The checkpoint of ``step`` is being written: finish it, close everything, raise Preempted."""
    bar.close()
    ckpts.wait()
    ckpts.close()
    for w in writers:
        w.close()
    raise Preempted(f"stopped on {stop.signal_name} after step {step}; its checkpoint is saved in "
                    f"{workdir}/checkpoints. Run the same command again to resume at step {step}.", step)


def _pack_partial(history: list, last_step: int, points: list, epoch_sums: list, seconds: float,
                  sweep: bool) -> dict:
    """The unfinished epoch as JSON: metrics not yet flushed (checked finite first: nothing of a
    non-finite step is saved), the epoch's sums so far and its seconds."""
    host = _host_steps(history)
    _check_finite(host, last_step - len(host) + 1, points, sweep)
    pending = [[{k: float(v) for k, v in m.items()} for m in step_metrics] for step_metrics in host]
    return {"pending": pending, "epoch_sums": epoch_sums, "seconds": seconds}


def _unpack_partial(partial: dict) -> tuple[list, list, float]:
    """``_pack_partial``'s inverse; metrics come back as the float32 values the step produced."""
    history = [tuple({k: np.float32(v) for k, v in m.items()} for m in step) for step in partial["pending"]]
    return history, [dict(s) for s in partial["epoch_sums"]], float(partial["seconds"])


def _check_finite(host: list, first_step: int, points: list, sweep: bool) -> None:
    """Stop on the first non-finite value of host metrics, naming the step (and the student)."""
    for j, point in enumerate(points):
        problem = first_nonfinite([m[j] for m in host], first_step)
        if problem and sweep:
            raise NonFiniteError(f"student {point.name}: {problem}: stopping the sweep before any checkpoint of "
                                 "it is written. Drop this grid point, lower the learning rate, or check the "
                                 "input data.")
        if problem:
            raise NonFiniteError(f"{problem}: stopping before any checkpoint of it is written. Lower the learning "
                                 "rate, check the input data, or the loss weights.")


def _flush_train_metrics(history: list, first_step: int, points: list, writers: list, epoch_sums: list,
                         sweep: bool) -> None:
    """Fetch buffered step metrics (a tuple of one dict per student each), stop on the first
    non-finite value naming the step (and the student in a sweep), log each student's mean."""
    host = _host_steps(history)
    _check_finite(host, first_step, points, sweep)
    for j, writer in enumerate(writers):
        rows = [m[j] for m in host]
        writer.write(first_step + len(rows), "train", {k: float(np.mean([r[k] for r in rows])) for k in rows[0]})
        for k in rows[0]:
            epoch_sums[j][k] = epoch_sums[j].get(k, 0.0) + float(np.sum([r[k] for r in rows]))
