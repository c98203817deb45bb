"""Config validation: everything a config can get wrong, checked once, before anything is
built or written, each error naming the field, the value and what works.

``validate_config`` is what ``zkd.engine.build`` runs first; ``dataset_info`` and
``with_dataset`` resolve the dataset a config (or a Python caller) names.
"""

from __future__ import annotations

import math
from typing import Optional

import jax.numpy as jnp
import ml_collections

from zkd import data, methods, models, optim, recipes
from zkd import step as step_lib
from zkd.errors import ConfigError

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}  # config.dtype -> the models' computation dtype


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
    _validate_hparams(config, method)
    if config.optimizer.name not in optim.OPTIMIZERS:
        raise ConfigError(f"config.optimizer.name={config.optimizer.name!r}; valid: {', '.join(optim.OPTIMIZERS)}")
    if config.optimizer.schedule not in optim.SCHEDULES:
        raise ConfigError(f"config.optimizer.schedule={config.optimizer.schedule!r}; valid: "
                          f"{', '.join(optim.SCHEDULES)}")
    for role in ("student", "teacher"):
        if role == "teacher" and (not method.needs_teacher or teacher_given):
            continue
        sub = config[role]
        if sub.zoo not in models.ZOOS:
            raise ConfigError(f"config.{role}.zoo={sub.zoo!r}; valid: {', '.join(models.ZOOS)}")
        # A user's model (a factory, zoo "user") is checked when built (zkd.models.user), an
        # ensemble's architectures when its members load (zkd.teacher).
        if sub.factory or sub.zoo == models.USER_ZOO or (role == "teacher" and sub.ensemble):
            continue
        names = models.available(sub.zoo)
        if sub.name not in names:
            raise ConfigError(f"config.{role}.name={sub.name!r} is not a {sub.zoo} model; valid: {', '.join(names)}")
    if config.sweep.vectorize not in step_lib.VECTORIZE:
        raise ConfigError(f"config.sweep.vectorize={config.sweep.vectorize!r}; valid: {', '.join(step_lib.VECTORIZE)}")
    if config.device_resident_data:
        if method.views > 1:
            raise ConfigError(f"config.device_resident_data serves one view, not {method.name.upper()}'s two (the "
                              "strong view is a tf.data op)")
        if not info.in_memory:
            raise ConfigError(f"config.device_resident_data needs a small dataset, not {config.dataset!r}")
        if config.augmentation not in ("", data.pipeline.CROP_FLIP):
            raise ConfigError("device-resident data is augmented with the crop and flip in the step; "
                              f"config.augmentation={config.augmentation!r} needs the host pipeline "
                              "(config.device_resident_data=False)")
    steps_per_dispatch = config.steps_per_dispatch
    if not isinstance(steps_per_dispatch, int) or steps_per_dispatch < 1:
        raise ConfigError(f"config.steps_per_dispatch must be an integer >= 1, got {steps_per_dispatch!r}")
    if steps_per_dispatch > 1 and not config.device_resident_data:
        raise ConfigError(f"config.steps_per_dispatch={steps_per_dispatch} runs several steps in one program, which "
                          "gathers its batches from device-resident data: set config.device_resident_data=True "
                          "(in-memory datasets) or config.steps_per_dispatch=1")
    if config.teacher.logit_cache:
        why = (f"{method.name.upper()}'s two views (the strong view is not a crop/flip)" if method.views > 1 else
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


def _validate_hparams(config, method: methods.Method) -> None:
    """The method's numbers: finite, > 0 where the method says so (temperatures), else >= 0."""
    hp = methods.hparams_from_config(config, method)
    for field in methods.hparam_fields(method):
        value = getattr(hp, field.name)
        positive = field.metadata.get("positive", False)
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            raise ConfigError(f"config.loss.{field.name}={value!r} must be {'> 0' if positive else '>= 0'} and finite "
                              f"for method {config.method!r}")


def _validate_input_sizes(config, info: data.DatasetInfo, method: methods.Method) -> None:
    """The views: student / teacher input sizes, augmentation, KD head."""
    student_size, teacher_size = config.student_input_size, config.teacher_input_size
    augmentation = config.augmentation
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
        why = (f"{method.name.upper()}'s two views" if method.views > 1 else
               "device-resident data" if config.device_resident_data else
               "a teacher-logit cache" if config.teacher.logit_cache else
               f"{config.dataset} (a streamed dataset)" if not info.in_memory and (
                   student_size or augmentation != p.NONE) else "")
        if why:
            raise ConfigError(f"config.student_input_size / config.augmentation={augmentation!r} cannot serve {why}")
    img_size = student_options(config).get("img_size")
    if img_size is not None and student_size and img_size != student_size:
        raise ConfigError(f"config.student.options.img_size={img_size} but config.student_input_size={student_size}: "
                          "the student would not get the images it is built for; set both")
    kd_logits = config.loss.kd_logits
    if kd_logits and not method.distils_sown_logits:
        serving = [m for m in methods.available() if methods.get(m).distils_sown_logits]
        raise ConfigError(f"config.loss.kd_logits={kd_logits!r} serves methods {' and '.join(serving)}, "
                          f"not {config.method!r}")


def student_options(config) -> dict:
    """``config.student.options`` as keyword arguments of the student's factory (e.g. ``img_size``)."""
    options = config.student.options
    return dict(options.to_dict() if hasattr(options, "to_dict") else options)
