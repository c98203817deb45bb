"""The training loop, one for every run: a single run is a sweep of one student.

    train_and_evaluate(config, workdir) -> summary     one student (python -m zkd.main)
    zkd.sweep.train_sweep(config, workdir) -> result   every grid point of config.sweep

Both call ``fit``: build everything once (``zkd.engine.build``), resume from the latest
checkpoint, evaluate the teacher once, then one flat loop over steps. After each step (or each
dispatch of ``steps_per_dispatch`` steps, which never straddles a boundary below) come
independent periodic actions: flush the step metrics (every ``log_every_steps`` of an epoch, at
its end and before every save; a non-finite value stops the run naming the step), evaluate every
student exactly (epoch end), save a checkpoint (epoch end, every ``checkpoint_every_steps``, on a
stop request) and stop when asked (SIGTERM, Ctrl-C: zkd.preemption). Since metrics are flushed
before a save, a checkpoint holds the students and cumulative counters, nothing of an unfinished
epoch. Pure pieces live elsewhere (zkd.step, zkd.losses); this module owns the workdir, time and
I/O.

Workdir of a single run: ``config.json``, ``metrics.jsonl`` (kinds "train", "eval", "teacher";
each train record is the mean over the steps since the previous one), ``tensorboard/``,
``checkpoints/`` (zkd.checkpoint), ``summary.json``. A sweep's workdir has the same files for
the sweep as a whole (its ``checkpoints/`` hold every student), and ``students/<point>/`` per
grid point with the single run's files (config.json is that point's single-run config) and a
``sweep_member.json`` that points at the sweep's checkpoints, plus ``sweep.json`` / ``sweep.md``
ranking the points.
"""

from __future__ import annotations

import json
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
               "logit_std_student", "logit_std_teacher")


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
    points = grid.single_point(config)
    run = engine.build(config, points, teacher=teacher, info=info)  # validates the config first
    return fit(config, workdir, points, allow_config_change, run=run, sweep=False)["students"][0]


def fit(config: ml_collections.ConfigDict, workdir: str, points: list, allow_config_change: bool = False,
        run: Optional[engine.Run] = None, *, sweep: bool = False) -> dict:
    """Train the students ``points`` (zkd.grid) of ``config`` in ``workdir``: build once, loop once.

    ``sweep``: False for a single run (one point, its files in ``workdir``), True for a sweep (the
    layout of the module docstring, even for one point). Returns ``{"students": [summary of each
    point], "dirs": [its directory], "meta"}``. ``run``: an already built ``zkd.engine.Run`` of
    these points (default: built here).

    Raises ``zkd.preemption.Preempted`` after saving a checkpoint when asked to stop (SIGTERM,
    Ctrl-C); ``zkd.workdir.WorkdirBusyError`` when another live run holds ``workdir``. A start
    that fails before its first step (data not prepared, a teacher that does not load, Ctrl-C
    while compiling) leaves ``workdir`` as it found it (``_WorkdirSnapshot``), so the corrected
    command can use it.
    """
    if not sweep and len(points) != 1:
        raise ValueError(f"a single run trains one grid point, not {len(points)}: pass sweep=True")
    run = run or engine.build(config, points)
    snapshot = _WorkdirSnapshot(workdir)
    started: list = []  # becomes [True] once the first step is dispatched
    make_writable(workdir)
    try:
        with WorkdirHold(workdir), StopRequests() as stop:
            ckpts = checkpoint.TrainingCheckpoints(workdir, keep_every_steps=config.checkpoint_every_epochs
                                                   * run.steps_per_epoch)
            try:
                return _fit(config, workdir, points, allow_config_change, run, stop, ckpts, sweep, started)
            except KeyboardInterrupt:  # a second Ctrl-C: abort at once
                raise
            except BaseException:  # a failed step or read: the checkpoints of earlier steps still complete
                ckpts.settle()
                raise
    except BaseException:
        if not started and jax.process_index() == 0:
            snapshot.restore()  # nothing of this start is worth keeping
        raise


class _WorkdirSnapshot:
    """What ``workdir`` held before a start (its entries and its config.json), to put back."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.entries = set(paths.listdir(workdir)) if paths.isdir(workdir) else None
        config_path = paths.join(workdir, "config.json")
        self.config_json = paths.read_text(config_path) if self.entries and "config.json" in self.entries else None

    def restore(self) -> None:
        if self.entries is None:
            paths.rmtree(self.workdir, ignore_errors=True)
            return
        for name in set(paths.listdir(self.workdir)) - self.entries:
            entry = paths.join(self.workdir, name)
            if paths.isdir(entry):
                paths.rmtree(entry, ignore_errors=True)
            else:
                paths.remove(entry)
        if self.config_json is not None:
            paths.write_text_atomic(paths.join(self.workdir, "config.json"), self.config_json)


def _fit(config, workdir: str, points: list, allow_config_change: bool, run: engine.Run, stop: StopRequests,
         ckpts: checkpoint.TrainingCheckpoints, sweep: bool, started: list) -> dict:
    wall_start = time.time()
    n, spe, total, batch_size = run.num_students, run.steps_per_epoch, run.total_steps, config.batch_size
    log_every, every_steps = config.log_every_steps, config.checkpoint_every_steps

    def flush_due(step: int) -> bool:
        """Whether a log window ends after ``step`` steps: every log_every_steps of an epoch, at
        its end, and at every step checkpoint."""
        return step % spe % log_every == 0 or bool(every_steps) and step % every_steps == 0

    # --- workdir, writers
    prepare_workdir(config, workdir, allow_config_change)
    dirs = [paths.join(workdir, "students", p.name) for p in points] if sweep else [workdir]
    if sweep:
        for j, (p, d) in enumerate(zip(points, dirs)):
            prepare_workdir(p.config, d, allow_config_change)
            if jax.process_index() == 0:
                checkpoint.write_sweep_member(d, workdir, j, p.name)
        print(f"zkd sweep: {n} students ({', '.join(p.name for p in points)})", flush=True)
    tensorboard = config.tensorboard
    writers = [MetricWriter(d, tensorboard) for d in dirs]
    all_writers = [MetricWriter(workdir, tensorboard), *writers] if sweep else writers

    # --- resume from the latest checkpoint: an epoch end, or mid-epoch (a step checkpoint, a stop)
    meta, state = _fresh_meta(n, spe), run.state
    restored = ckpts.restore_latest(run.checkpointable(state))
    if restored is not None:
        saved, meta = restored
        state = run.restore(state, saved)
    start_step = int(state.step)
    older = "steps_per_epoch" not in meta  # saved before the flat loop: only a mid-epoch one names its step
    expected = meta.pop("step", meta["epoch"] * spe) if older else start_step
    if meta.setdefault("steps_per_epoch", spe) != spe or start_step // spe != meta["epoch"] or start_step != expected:
        raise ConfigError(f"checkpoint step {start_step} does not match its epoch {meta['epoch']} x "
                          f"{spe} steps per epoch: the batch size or steps_per_epoch changed")
    if restored is not None and start_step < total:
        print(f"zkd: resuming at step {start_step} of {total} (epoch {start_step // spe + 1} of "
              f"{config.num_epochs}) from {workdir}", flush=True)
    elif restored is not None:
        print(f"zkd: {workdir} is already complete ({total} steps, {config.num_epochs} epochs): nothing to train",
              flush=True)
    carried = [None] * n  # per student: (means, steps) of the start of a log window that a stop cut short
    partial = meta.pop("partial", None)  # an older mid-epoch checkpoint's unfinished epoch
    if partial is not None:
        meta["train_seconds"] += partial["seconds"]
        meta["train_images"] += start_step % spe * batch_size
        pending = partial["pending"]  # per step, one dict of metrics per student
        if pending:
            carried = [({k: float(np.mean(np.float32([p[j][k] for p in pending]))) for k in pending[0][j]},
                        len(pending)) for j in range(n)]
    elif not flush_due(start_step):
        carried = [_reopen_window(d, start_step) for d in dirs]
    for w in all_writers:  # records written after that checkpoint (a run killed mid-epoch) are redone
        w.truncate_after(start_step)

    # --- the teacher, measured once
    teacher_predictions = None
    if run.teacher_eval_step is not None and start_step < total:
        (t_metrics,), (teacher_predictions,) = evaluate(run.teacher_eval_step, state.teacher_variables,
                                                        run.eval_batches(), run.mesh)
        if start_step == 0:  # a resumed run logged it at its first start
            for w in all_writers:
                w.write(0, "teacher", t_metrics)
        print(f"teacher {run.teacher_label}: top-1 {t_metrics['top1']:.2f}%  top-5 {t_metrics['top5']:.2f}%  "
              f"logit std {t_metrics['logit_std']:.3f}  ({int(t_metrics['count'])} test images)", flush=True)

    # --- the loop: one step (or one dispatch of k steps), then each periodic action on its own condition
    batches = run.train_batches(start_step)
    bar = ProgressBar(total, batch_size, enabled=config.progress_bar)
    window, window_start = [], start_step  # step metrics not yet logged, on the devices
    clock = epoch_clock = time.perf_counter()  # since the training time last went into meta; this epoch's start
    counted = epoch_first = step = start_step
    while step < total:
        k = run.steps_per_dispatch
        if k > 1 and not any(flush_due(s) for s in range(step + 1, step + k)):  # no boundary inside the dispatch
            state, metrics = run.train_steps(state, next(batches))  # metrics stacked [k]
        else:
            k, (state, metrics) = 1, run.train_step(state, next(batches))
        started[:] = [True]
        window.append(metrics)
        step += k
        epoch, epoch_end = -(-step // spe), step % spe == 0  # the epoch (from 1) that the step ends in
        bar.update(step, epoch)
        stopping = any([stop.should_stop(s) for s in range(step - k + 1, step + 1)])  # each a multi-host sync point
        saving = epoch_end or stopping or bool(every_steps) and step % every_steps == 0

        if saving or flush_due(step):  # before every save: a checkpoint holds no unlogged step
            _flush(window, window_start, carried, points, writers, sweep)
            window, window_start, carried = [], step, [None] * n

        if saving:  # meta, which the checkpoint holds, counts the training up to this step
            jax.block_until_ready(state)
            now = time.perf_counter()
            meta["train_seconds"] += now - clock
            meta["train_images"] += (step - counted) * batch_size
            clock, counted = now, step

        if epoch_end:  # exact evaluation of every student
            images_per_second = (step - epoch_first) * batch_size / (now - epoch_clock)
            results, predictions = evaluate(run.eval_step, run.student_variables(state), run.eval_batches(), run.mesh)
            for j, (record, m) in enumerate(zip(results, meta["students"])):
                if teacher_predictions is not None:
                    record["agreement"] = agreement(predictions[j], teacher_predictions)
                record["images_per_second"] = images_per_second
                record["epoch"] = epoch
                writers[j].write(step, "eval", record)
                if record["top1"] > m["best_top1"]:
                    m["best_top1"], m["best_epoch"] = record["top1"], epoch
                m["last_top1"], m["last_top5"] = record["top1"], record["top5"]
                m["agreement"] = record.get("agreement", float("nan"))
            meta["epoch"] = epoch
            if not bar.enabled:
                best = max(range(n), key=lambda j: results[j]["top1"])
                who = f"best student {points[best].name} " if sweep else "test top-1 "
                print(f"epoch {epoch}/{config.num_epochs}: {who}{results[best]['top1']:.2f}% "
                      f"(best {meta['students'][best]['best_top1']:.2f}%), {images_per_second:.0f} img/s", flush=True)
            stopping = stopping or stop.signal_name is not None  # a request that came during the evaluation

        if saving:
            ckpts.save(step, run.checkpointable(state), json.loads(json.dumps(meta)),
                       [r["top1"] for r in results] if epoch_end else None)  # mid-epoch: not evaluated
        if epoch_end:  # the next epoch's time starts after its predecessor's evaluation and save
            clock = epoch_clock = time.perf_counter()
            epoch_first = step
        if stopping and step < total:
            break
    bar.close()
    ckpts.wait()
    ckpts.close()
    for w in all_writers:
        w.close()
    if step < total:
        raise Preempted(f"stopped on {stop.signal_name} after step {step}; its checkpoint is saved in "
                        f"{workdir}/checkpoints. Run the same command again to resume at step {step}.", step)

    summaries = [_summary(p.config, meta, j, wall_start) for j, p in enumerate(points)]
    if jax.process_index() == 0:
        for d, s in zip(dirs, summaries):
            write_json(paths.join(d, "summary.json"), s)
    return {"students": summaries, "dirs": dirs, "meta": meta}


def _fresh_meta(n: int, steps_per_epoch: int) -> dict:
    """A checkpoint's meta: cumulative counters and each student's best and last accuracy."""
    nan = float("nan")
    return {"epoch": 0, "steps_per_epoch": steps_per_epoch, "train_seconds": 0.0, "train_images": 0,
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


def _flush(window: list, first_step: int, carried: list, points: list, writers: list, sweep: bool) -> None:
    """Log each student's mean of the step metrics in ``window`` (per step a tuple of one dict per
    student; stacked [k] for a dispatch of k steps), from step ``first_step`` on, after checking
    every value: the first non-finite one stops the run naming its step (and the student in a
    sweep). ``carried[j]``: (means, steps) logged for this window by a run stopped inside it,
    folded in so that the record is the mean over the whole window."""
    rows = []
    for metrics in parallel.to_host(window):
        shape = np.shape(jax.tree.leaves(metrics)[0])
        rows += [jax.tree.map(lambda v, i=i: v[i], metrics) for i in range(shape[0])] if shape else [metrics]
    for j, point in enumerate(points):
        problem = first_nonfinite([r[j] for r in rows], first_step)
        if problem and sweep:
            raise NonFiniteError(f"student {point.name}: {problem}: stopping the sweep before any checkpoint of "
                                 "it is written. Drop this grid point, lower the learning rate, or check the "
                                 "input data.")
        if problem:
            raise NonFiniteError(f"{problem}: stopping before any checkpoint of it is written. Lower the learning "
                                 "rate, check the input data, or the loss weights.")
    for j, writer in enumerate(writers):
        steps = [r[j] for r in rows]
        record = {k: float(np.mean([s[k] for s in steps])) for k in steps[0]}
        if carried[j] is not None:
            before, count = carried[j]
            record = {k: (before[k] * count + sum(float(s[k]) for s in steps)) / (count + len(steps))
                      for k in record}
        writer.write(first_step + len(steps), "train", record)


def _reopen_window(directory: str, step: int) -> Optional[tuple[dict, int]]:
    """Take back the train record that a run stopped after ``step`` steps (inside a log window)
    wrote before its save: ``(means, steps it covers)``, removed from ``directory``'s
    metrics.jsonl so that the window's flush logs the whole window, as an uninterrupted run does.
    None when there is none; on processes other than 0, which write no metrics, always."""
    path = paths.join(directory, "metrics.jsonl")
    if jax.process_index() != 0 or not paths.exists(path):
        return None
    lines = paths.read_text(path).splitlines(keepends=True)
    window_start, found = 0, None
    for index, line in enumerate(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill: truncate_after drops it
            continue
        if record.get("kind") == "train" and record["step"] < step:
            window_start = max(window_start, record["step"])
        elif record.get("kind") == "train" and record["step"] == step:
            found = index, record
    if found is None:
        return None
    index, record = found
    paths.write_text_atomic(path, "".join(lines[:index] + lines[index + 1:]))
    return {k: v for k, v in record.items() if k not in ("step", "kind")}, step - window_start
