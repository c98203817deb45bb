"""The training loop: ``train_and_evaluate(config, workdir)``.

Phases, in order: config checks and workdir -> mesh -> data -> models and teacher -> state and
optimizer -> resume -> compiled steps -> teacher evaluation -> loop (train, evaluate every
epoch, checkpoint) -> summary. Pure pieces live elsewhere (zkd.step, zkd.optim, zkd.losses);
this module is the stateful shell.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from typing import Callable, Iterable, Iterator, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from zkd import checkpoint, data, models, optim, parallel, recipes
from zkd import state as state_lib
from zkd import step as step_lib
from zkd.metrics_io import MetricWriter, ProgressBar
from zkd.teacher import load_teacher

# Config fields a resumed run may change (they do not change what is computed).
RESUMABLE_CHANGES = frozenset({
    "num_epochs", "log_every_steps", "progress_bar", "checkpoint_every_epochs", "data_dir",
    "num_devices", "teacher.checkpoint", "eval_batch_size",
})
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class ConfigError(ValueError):
    """A config value that cannot work, named with the valid choices."""


# ----------------------------------------------------------------------------- config checks


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Fail before any work on values that cannot work, naming the field and the choices."""
    if config.method not in step_lib.METHODS:
        raise ConfigError(f"config.method={config.method!r}; valid: {', '.join(step_lib.METHODS)}")
    if config.dataset not in data.DATASETS:
        raise ConfigError(f"config.dataset={config.dataset!r}; valid: {', '.join(sorted(data.DATASETS))}")
    if config.dtype not in DTYPES:
        raise ConfigError(f"config.dtype={config.dtype!r}; valid: {', '.join(DTYPES)}")
    for role in ("student", "teacher"):
        if role == "teacher" and config.method == "ce":
            continue
        sub = config[role]
        if sub.zoo not in models.ZOOS:
            raise ConfigError(f"config.{role}.zoo={sub.zoo!r}; valid: {', '.join(models.ZOOS)}")
        names = models.available(sub.zoo)
        if sub.name not in names:
            raise ConfigError(f"config.{role}.name={sub.name!r} is not a {sub.zoo} model; valid: {', '.join(names)}")
    if config.loss.mlkd_mode not in ("released", "paper"):
        raise ConfigError(f"config.loss.mlkd_mode={config.loss.mlkd_mode!r}; valid: released, paper")
    if config.device_resident_data:
        if config.method == "mlkd":
            raise ConfigError("config.device_resident_data does not support MLKD (its strong view is a tf.data op)")
        if not data.DATASETS[config.dataset].in_memory:
            raise ConfigError(f"config.device_resident_data needs a small dataset, not {config.dataset!r}")
    if config.teacher.get("logit_cache", ""):
        why = ("MLKD's two views (its strong view is not a crop/flip)" if config.method == "mlkd" else
               "a method without a teacher" if config.method == "ce" else
               "device-resident data" if config.device_resident_data else
               f"{config.dataset} (not an in-memory, crop/flip-augmented dataset)"
               if not data.DATASETS[config.dataset].in_memory else "")
        if why:
            raise ConfigError(f"config.teacher.logit_cache cannot serve {why}; set it to ''")
    for field in ("num_epochs", "batch_size", "eval_batch_size"):
        if config[field] < 1:
            raise ConfigError(f"config.{field} must be >= 1, got {config[field]}")


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
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(config.to_json(indent=2) + "\n")
        os.replace(tmp, path)


# ----------------------------------------------------------------------------- helpers


def data_seed(config) -> int:
    """The seed of the data order and augmentation: ``config.data_seed``, or ``config.seed`` when -1."""
    seed = config.get("data_seed", -1)
    return int(config.seed if seed < 0 else seed)


def steps_per_epoch_of(config) -> int:
    """Training steps per epoch: the split over the global batch, capped by ``config.steps_per_epoch``."""
    steps = data.steps_per_epoch(config.dataset, config.batch_size)
    return min(steps, config.steps_per_epoch) if config.steps_per_epoch > 0 else steps


def make_optimizer(config, steps_per_epoch: int):
    """``(learning_rate_fn, tx)``: the piecewise epoch schedule and PyTorch-style SGD of ``config.optimizer``."""
    o = config.optimizer
    lr_fn = optim.piecewise_epoch_schedule(o.learning_rate, steps_per_epoch, tuple(o.lr_milestones), o.lr_decay)
    return lr_fn, optim.torch_sgd(lr_fn, o.momentum, o.weight_decay)


def step_settings(config, steps_per_epoch: int, learning_rate_fn) -> step_lib.StepSettings:
    l = config.loss
    return step_lib.StepSettings(
        method=config.method, steps_per_epoch=steps_per_epoch, learning_rate_fn=learning_rate_fn,
        logit_stand=bool(config.logit_stand), ce_weight=float(l.ce_weight), kd_weight=float(l.kd_weight),
        temperature=float(l.temperature), dkd_alpha=float(l.dkd_alpha), dkd_beta=float(l.dkd_beta),
        dkd_warmup_epochs=float(l.dkd_warmup_epochs), mlkd_mode=l.mlkd_mode,
    )


def training_stream(config, info, teacher_variables, start_step: int, two_views: bool) -> Iterator[dict]:
    """This process's training batches from ``start_step`` (zkd.data), with the teacher's
    logits from ``config.teacher.logit_cache`` when one is set (then the step skips the teacher).

    The cache is opened only if its content hash matches this teacher's weights and this
    training split (zkd.logit_cache.StaleCacheError otherwise, with the rebuild command).
    """
    kwargs = dict(global_batch_size=config.batch_size, seed=data_seed(config), start_step=start_step,
                  two_views=two_views)
    path = config.teacher.get("logit_cache", "")
    if not path:
        return data.train_batches(config.dataset, data_dir=config.data_dir or None, **kwargs)
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


# Step metrics that are not loss terms; a non-finite report names the loss terms first.
DIAGNOSTICS = ("loss", "grad_norm", "param_norm", "accuracy", "agreement", "learning_rate",
               "logit_std_student", "logit_std_teacher", "ctkd_temperature")


def _first_nonfinite(history: list[dict], first_step: int) -> Optional[str]:
    """'step S: term=value, ...' for the first step with a NaN/Inf metric, loss terms first."""
    for i, metrics in enumerate(history):
        bad = [name for name, value in metrics.items() if not np.all(np.isfinite(value))]
        if bad:
            bad.sort(key=lambda n: (n in DIAGNOSTICS, DIAGNOSTICS.index(n) if n in DIAGNOSTICS else 0, n))
            values = ", ".join(f"{n}={float(np.asarray(metrics[n]).ravel()[0])}" for n in bad)
            return f"non-finite values at step {first_step + i}: {values}"
    return None


# Labels outside the class range (check_labels); zkd.data raises its subclasses for damaged
# records (DataCorruptError) and a directory of another dataset (DatasetMismatchError).
DataError = data.DataError


def check_labels(batch: dict, num_classes: int, step: int) -> dict:
    """Host-side check of a batch's labels (cheap, before they reach the device)."""
    labels = np.asarray(batch["label"])
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.size:
        raise DataError(
            f"training batch of step {step} has labels {sorted(set(bad.tolist()))[:5]} outside [0, {num_classes}): "
            "the dataset does not match config.dataset's classes, or its records are corrupt; re-prepare it "
            "(python -m zkd.data.prepare ...)"
        )
    return batch


class NonFiniteError(FloatingPointError):
    """A train step produced NaN/Inf; the run stops before writing anything from it."""


def make_eval_source(config, info) -> Callable[[], Iterable[dict]]:
    """A function returning this process's evaluation batches, in a fixed order.

    Small (in-memory) datasets are decoded and normalized once and kept on the host, so the
    per-epoch evaluation does not re-read the split; large ones are streamed every time.
    """

    def read():
        batches = data.eval_batches(
            config.dataset, data_dir=config.data_dir or None, split="test",
            global_batch_size=config.eval_batch_size,
        )
        return itertools.islice(batches, config.max_eval_batches) if config.max_eval_batches >= 0 else batches

    if not info.in_memory:
        return read
    cached = list(read())
    return lambda: cached


def evaluate(eval_step, variables, eval_source, mesh) -> tuple[dict, list[np.ndarray]]:
    """Exact evaluation over the test split: every example counted once (padded rows masked).

    Returns (metrics, predictions): floats, or lists of N floats for a stack of N students
    (zkd.sweep); predictions per batch, [B] or [N, B], -1 on padded rows.
    """
    sums: dict[str, np.ndarray] = {}
    predictions = []
    for local in eval_source():
        batch = parallel.global_batch(local, mesh)
        out = parallel.to_host(eval_step(variables, batch))
        mask = parallel.to_host(batch["mask"])
        predictions.append(np.where(mask, out.pop("predictions"), -1))
        for k, v in out.items():
            sums[k] = sums.get(k, 0.0) + np.asarray(v, np.float64)
    n = sums["count"]
    metrics = {
        "top1": 100.0 * sums["correct_top1"] / n,
        "top5": 100.0 * sums["correct_top5"] / n,
        "loss": sums["loss"] / n,
        "logit_std": sums["logit_std"] / n,
        "count": n,
    }
    return {k: np.asarray(v).tolist() for k, v in metrics.items()}, predictions


def _agreement(student_preds, teacher_preds):
    """Top-1 agreement in %: a float, or a list per student for predictions [N, B]."""
    s, t = np.concatenate(student_preds, axis=-1), np.concatenate(teacher_preds, axis=-1)
    valid = t >= 0
    return (100.0 * np.mean(s[..., valid] == t[valid], axis=-1)).tolist()


# ----------------------------------------------------------------------------- the loop


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, allow_config_change: bool = False) -> dict:
    """Train the configured student (with its frozen teacher), evaluating every epoch.

    Resumes from the latest complete checkpoint in ``workdir``. Writes ``config.json``,
    ``metrics.jsonl`` (kinds "train", "eval", "teacher"), TensorBoard events, checkpoints and a
    final ``summary.json``, which is also returned.
    """
    wall_start = time.time()
    # --- config and workdir
    validate_config(config)
    if recipes.swept_axes(config):
        raise ConfigError(f"config.sweep sets {', '.join(recipes.swept_axes(config))}: a grid trains with "
                          "zkd.sweep.train_sweep (the zkd command chooses it); clear config.sweep for one run")
    info = data.get_info(config.dataset)
    mesh = parallel.make_mesh(None if config.num_devices < 0 else config.num_devices)
    parallel.check_batch_size(config.batch_size, mesh, "batch_size")
    parallel.check_batch_size(config.eval_batch_size, mesh, "eval_batch_size")
    prepare_workdir(config, workdir, allow_config_change)
    writer = MetricWriter(workdir)
    dtype = DTYPES[config.dtype]

    # --- models
    student = models.build(config.student.name, info.num_classes, zoo=config.student.zoo, dtype=dtype)
    settings_needs_teacher = config.method != "ce"
    teacher, teacher_variables = (None, None)
    if settings_needs_teacher:
        teacher, teacher_variables = load_teacher(config.teacher, info.num_classes, info.image_shape, dtype)

    # --- optimizer and state
    steps_per_epoch = steps_per_epoch_of(config)
    total_steps = steps_per_epoch * config.num_epochs
    lr_fn, tx = make_optimizer(config, steps_per_epoch)
    rng = jax.random.key(config.seed)
    init_rng, train_rng = jax.random.split(rng)
    state = state_lib.create_train_state(
        init_rng, student, info.image_shape, tx, teacher, teacher_variables, ctkd=config.method == "ctkd"
    )

    # --- resume
    ckpts = checkpoint.TrainingCheckpoints(workdir, keep_every_steps=config.checkpoint_every_epochs * steps_per_epoch)
    meta = {"epoch": 0, "best_top1": -1.0, "best_epoch": 0, "train_seconds": 0.0, "train_images": 0}
    restored = ckpts.restore_latest(state_lib.checkpointable(state))
    if restored is not None:
        saved_state, meta = restored
        state = state_lib.restore_checkpointable(state, saved_state)
        if int(state.step) != meta["epoch"] * steps_per_epoch:
            raise ConfigError(
                f"checkpoint step {int(state.step)} does not match epoch {meta['epoch']} x "
                f"{steps_per_epoch} steps per epoch: the batch size or steps_per_epoch changed"
            )
    # Records written after the checkpoint we resume from (a run killed mid-epoch) are redone.
    writer.truncate_after(meta["epoch"] * steps_per_epoch)
    state = parallel.replicate(state, mesh)
    start_epoch = meta["epoch"]

    # --- compiled steps
    settings = step_settings(config, steps_per_epoch, lr_fn)
    train_step = step_lib.make_train_step(settings)
    if config.device_resident_data:
        train_step, device_data = _device_resident(train_step, config, info, mesh)
    p_train_step = parallel.jit_train_step(train_step, mesh, batch_replicated=config.device_resident_data)
    p_eval_step = parallel.jit_eval_step(step_lib.make_eval_step(student.apply), mesh)
    train_rng = parallel.replicate(train_rng, mesh)
    eval_source = make_eval_source(config, info)

    # --- teacher, measured once
    teacher_preds = None
    if teacher is not None and start_epoch < config.num_epochs:
        t_eval = parallel.jit_eval_step(step_lib.make_eval_step(teacher.apply), mesh)
        t_metrics, teacher_preds = evaluate(t_eval, state.teacher_variables, eval_source, mesh)
        if start_epoch == 0:  # a resumed run logged it at its first start
            writer.write(0, "teacher", t_metrics)
        print(f"teacher {config.teacher.name}: top-1 {t_metrics['top1']:.2f}%  top-5 {t_metrics['top5']:.2f}%  "
              f"logit std {t_metrics['logit_std']:.3f}  ({int(t_metrics['count'])} test images)", flush=True)

    # --- loop
    batches = None
    if not config.device_resident_data:
        batches = training_stream(config, info, teacher_variables, start_epoch * steps_per_epoch, settings.two_views)
    bar = ProgressBar(total_steps, config.batch_size, enabled=config.progress_bar)
    for epoch in range(start_epoch, config.num_epochs):
        epoch_start = time.perf_counter()
        history: list[dict] = []
        epoch_sums: dict[str, float] = {}
        first_step = epoch * steps_per_epoch
        for i in range(steps_per_epoch):
            step = first_step + i
            if batches is not None:
                batch = parallel.global_batch(check_labels(next(batches), info.num_classes, step), mesh)
            else:
                batch = device_data
            state, metrics = p_train_step(state, batch, train_rng)
            history.append(metrics)
            if (i + 1) % config.log_every_steps == 0 or i + 1 == steps_per_epoch:
                _flush_train_metrics(history, step - len(history) + 1, writer, epoch_sums)
                history = []
            bar.update(step + 1, epoch + 1)
        jax.block_until_ready(state)
        epoch_seconds = time.perf_counter() - epoch_start
        meta["train_seconds"] += epoch_seconds
        meta["train_images"] += steps_per_epoch * config.batch_size

        # --- evaluation
        variables = {"params": state.params["student"], "batch_stats": state.batch_stats}
        eval_metrics, student_preds = evaluate(p_eval_step, variables, eval_source, mesh)
        if teacher_preds is not None:
            eval_metrics["agreement"] = _agreement(student_preds, teacher_preds)
        for k, v in epoch_sums.items():
            if k.startswith("logit_std"):
                eval_metrics[f"train_{k}"] = v / steps_per_epoch
        eval_metrics["images_per_second"] = steps_per_epoch * config.batch_size / epoch_seconds
        eval_metrics["epoch"] = epoch + 1
        step_now = (epoch + 1) * steps_per_epoch
        writer.write(step_now, "eval", eval_metrics)
        is_best = eval_metrics["top1"] > meta["best_top1"]
        if is_best:
            meta["best_top1"], meta["best_epoch"] = eval_metrics["top1"], epoch + 1
        meta["epoch"] = epoch + 1
        meta["last_top1"], meta["last_top5"] = eval_metrics["top1"], eval_metrics["top5"]
        meta["agreement"] = eval_metrics.get("agreement", float("nan"))
        ckpts.save(step_now, state_lib.checkpointable(state), dict(meta), is_best)
        if not bar.enabled:
            print(f"epoch {epoch + 1}/{config.num_epochs}: test top-1 {eval_metrics['top1']:.2f}% "
                  f"(best {meta['best_top1']:.2f}%), {eval_metrics['images_per_second']:.0f} img/s", flush=True)
    bar.close()
    ckpts.wait()
    ckpts.close()
    writer.close()

    summary = {
        "run": recipes.run_name(config),
        "best_top1": meta["best_top1"],
        "best_epoch": meta["best_epoch"],
        "last_top1": meta.get("last_top1", float("nan")),
        "last_top5": meta.get("last_top5", float("nan")),
        "agreement": meta.get("agreement", float("nan")),
        "epochs": meta["epoch"],
        "train_seconds": meta["train_seconds"],
        "images_per_second": meta["train_images"] / max(meta["train_seconds"], 1e-9),
        "wall_seconds_this_start": time.time() - wall_start,
        "paper_top1": config.paper_top1.logit_stand if config.logit_stand else config.paper_top1.baseline,
    }
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
    return summary


def _flush_train_metrics(history: list[dict], first_step: int, writer: MetricWriter, epoch_sums: dict) -> None:
    """Fetch buffered step metrics, stop on the first non-finite value, log their mean."""
    host = parallel.to_host(history)
    problem = _first_nonfinite(host, first_step)
    if problem:
        raise NonFiniteError(
            f"{problem}: stopping before any checkpoint of it is written. Lower the learning rate, "
            "check the input data, or the loss weights."
        )
    mean = {k: float(np.mean([m[k] for m in host])) for k in host[0]}
    writer.write(first_step + len(host), "train", mean)
    for k in host[0]:
        epoch_sums[k] = epoch_sums.get(k, 0.0) + float(np.sum([m[k] for m in host]))


def _device_resident(train_step, config, info, mesh):
    """Wrap ``train_step`` so it gathers and augments its batch from device-resident uint8 arrays."""
    images, labels = data.load_arrays(config.dataset, config.data_dir or None, "train")
    device_data = parallel.replicate({"images": images, "labels": labels}, mesh)
    sharding = parallel.batch_sharded(mesh)

    def step_from_device_data(state, arrays, rng):
        batch = data.device_train_batch(
            data_seed(config), state.step, arrays["images"], arrays["labels"],
            dataset=info.name, global_batch_size=config.batch_size,
        )
        batch = jax.lax.with_sharding_constraint(batch, sharding)
        return train_step(state, batch, rng)

    return step_from_device_data, device_data
