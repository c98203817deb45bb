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

from zkd import checkpoint, data, engine, grid, parallel, recipes
from zkd.errors import ConfigError, NonFiniteError
from zkd.metrics_io import MetricWriter, ProgressBar

__all__ = ["train_and_evaluate", "fit", "prepare_workdir", "evaluate", "ConfigError", "NonFiniteError",
           "DataError"]

DataError = data.DataError  # labels outside the class range; damaged or mismatched records

# Config fields a resumed run may change (they do not change what is computed).
RESUMABLE_CHANGES = frozenset({
    "num_epochs", "log_every_steps", "progress_bar", "checkpoint_every_epochs", "data_dir",
    "num_devices", "teacher.checkpoint", "eval_batch_size",
})
# Step metrics that are not loss terms; a non-finite report names the loss terms first.
DIAGNOSTICS = ("loss", "grad_norm", "param_norm", "accuracy", "agreement", "learning_rate",
               "logit_std_student", "logit_std_teacher", "ctkd_temperature")


# ----------------------------------------------------------------------------- workdir


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = list(v) if isinstance(v, tuple) else v
    return out


def prepare_workdir(config: ml_collections.ConfigDict, workdir: str, allow_config_change: bool = False) -> None:
    """Create ``workdir`` and write ``config.json``; refuse to resume a run with another config."""
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f".write_test.{jax.process_index()}.{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as err:
        raise ConfigError(f"workdir {workdir!r} is not writable ({err}); choose another --workdir") from err
    path = os.path.join(workdir, "config.json")
    current = json.loads(config.to_json())
    if os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        a, b = _flatten(saved), _flatten(current)
        # A field added to zkd after the run started is no change while it holds its default.
        defaults = _flatten(json.loads(recipes.base_config().to_json()))
        added_at_default = {k for k in set(b) - set(a) if k in defaults and b[k] == defaults[k]}
        differ = sorted(k for k in set(a) | set(b)
                        if a.get(k) != b.get(k) and k not in RESUMABLE_CHANGES and k not in added_at_default)
        if differ and not allow_config_change:
            details = "; ".join(f"{k}: {a.get(k)!r} in the workdir vs {b.get(k)!r} now" for k in differ[:8])
            raise ConfigError(
                f"workdir {workdir} holds a different run ({details}). Use another --workdir, or pass "
                "--allow_config_change to resume it with the new config."
            )
    if jax.process_index() == 0:
        _write_json(path, current)


def _write_json(path: str, value) -> None:
    """Write ``value`` as JSON through a temporary file and a rename (never half a file)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, allow_config_change: bool = False) -> dict:
    """Train the configured student (with its frozen teacher), evaluating every epoch.

    Resumes from the latest complete checkpoint in ``workdir``; returns (and writes)
    ``summary.json``. A config whose ``sweep`` sets an axis is refused: see zkd.sweep.
    """
    engine.validate_config(config)
    return fit(config, workdir, grid.single_point(config), allow_config_change)["students"][0]


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
    docstring). Returns ``{"students": [summary of each point], "dirs": [its directory]}``.
    ``run``: an already built ``zkd.engine.Run`` of these points (default: built here).
    """
    wall_start = time.time()
    sweep = len(points) > 1 or bool(points[0].name)
    run = run or engine.build(config, points)
    n, spe = run.num_students, run.steps_per_epoch

    # --- workdir, writers
    prepare_workdir(config, workdir, allow_config_change)
    dirs = [os.path.join(workdir, "students", p.name) for p in points] if sweep else [workdir]
    if sweep:
        for j, (p, d) in enumerate(zip(points, dirs)):
            prepare_workdir(p.config, d, allow_config_change)
            if jax.process_index() == 0:
                checkpoint.write_sweep_member(d, workdir, j, p.name)
        print(f"zkd sweep: {n} students ({', '.join(p.name for p in points)})", flush=True)
    writers = [MetricWriter(d) for d in dirs]
    all_writers = [MetricWriter(workdir), *writers] if sweep else writers

    # --- resume
    ckpts = checkpoint.TrainingCheckpoints(workdir, keep_every_steps=config.checkpoint_every_epochs * spe)
    meta, state = _fresh_meta(n), run.state
    restored = ckpts.restore_latest(run.checkpointable(state))
    if restored is not None:
        saved, meta = restored
        state = run.restore(state, saved)
        if int(state.step) != meta["epoch"] * spe:
            raise ConfigError(f"checkpoint step {int(state.step)} does not match epoch {meta['epoch']} x "
                              f"{spe} steps per epoch: the batch size or steps_per_epoch changed")
    for w in all_writers:  # records written after that checkpoint (a run killed mid-epoch) are redone
        w.truncate_after(meta["epoch"] * spe)
    start_epoch = meta["epoch"]

    # --- the teacher, measured once
    teacher_predictions = None
    if run.teacher_eval_step is not None and start_epoch < config.num_epochs:
        (t_metrics,), (teacher_predictions,) = evaluate(run.teacher_eval_step, state.teacher_variables,
                                                        run.eval_batches(), run.mesh)
        if start_epoch == 0:  # a resumed run logged it at its first start
            for w in all_writers:
                w.write(0, "teacher", t_metrics)
        print(f"teacher {config.teacher.name}: top-1 {t_metrics['top1']:.2f}%  top-5 {t_metrics['top5']:.2f}%  "
              f"logit std {t_metrics['logit_std']:.3f}  ({int(t_metrics['count'])} test images)", flush=True)

    # --- the loop
    batches = run.train_batches(start_epoch * spe)
    bar = ProgressBar(run.total_steps, config.batch_size, enabled=config.progress_bar)
    for epoch in range(start_epoch, config.num_epochs):
        epoch_start = time.perf_counter()
        history: list = []
        epoch_sums: list[dict] = [{} for _ in range(n)]
        for i in range(spe):
            step = epoch * spe + i
            state, metrics = run.train_step(state, next(batches))
            history.append(metrics)
            if (i + 1) % config.log_every_steps == 0 or i + 1 == spe:
                _flush_train_metrics(history, step - len(history) + 1, points, writers, epoch_sums, sweep)
                history = []
            bar.update(step + 1, epoch + 1)
        jax.block_until_ready(state)
        epoch_seconds = time.perf_counter() - epoch_start
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
    bar.close()
    ckpts.wait()
    ckpts.close()
    for w in all_writers:
        w.close()

    summaries = [_summary(p.config, meta, j, wall_start) for j, p in enumerate(points)]
    if jax.process_index() == 0:
        for d, s in zip(dirs, summaries):
            _write_json(os.path.join(d, "summary.json"), s)
    return {"students": summaries, "dirs": dirs, "meta": meta}


def _flush_train_metrics(history: list, first_step: int, points: list, writers: list, epoch_sums: list,
                         sweep: bool) -> None:
    """Fetch buffered step metrics (a tuple of one dict per student each), stop on the first
    non-finite value naming the step (and the student in a sweep), log each student's mean."""
    host = parallel.to_host(history)
    for j, point in enumerate(points):
        problem = first_nonfinite([m[j] for m in host], first_step)
        if problem and sweep:
            raise NonFiniteError(f"student {point.name}: {problem}: stopping the sweep before any checkpoint of "
                                 "it is written. Drop this grid point, lower the learning rate, or check the "
                                 "input data.")
        if problem:
            raise NonFiniteError(f"{problem}: stopping before any checkpoint of it is written. Lower the learning "
                                 "rate, check the input data, or the loss weights.")
    for j, writer in enumerate(writers):
        rows = [m[j] for m in host]
        writer.write(first_step + len(rows), "train", {k: float(np.mean([r[k] for r in rows])) for k in rows[0]})
        for k in rows[0]:
            epoch_sums[j][k] = epoch_sums[j].get(k, 0.0) + float(np.sum([r[k] for r in rows]))
