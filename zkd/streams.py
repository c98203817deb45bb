"""The data a run reads: its training stream (the host pipeline, with the teacher's logits from a
logit cache when one is set, or the split held on the devices) and its evaluation batches.

Which stream serves a config is decided here; the pipelines themselves are zkd.data's.
"""

from __future__ import annotations

import itertools
from typing import Iterable, Iterator

import jax
import numpy as np

from zkd import data, parallel, recipes


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


def local_train_stream(config, info, teacher_variables, start_step: int, two_views: bool) -> Iterator[dict]:
    """This process's training batches from ``start_step`` (zkd.data), with the teacher's
    logits from ``config.teacher.logit_cache`` when one is set (then the step skips the teacher).

    The cache is opened only if its content hash matches this teacher's weights and this
    training split (zkd.logit_cache.StaleCacheError otherwise, with the rebuild command).
    """
    kwargs = dict(global_batch_size=config.batch_size, seed=recipes.data_seed(config), start_step=start_step,
                  two_views=two_views)
    path = config.teacher.logit_cache
    if not path:
        return data.train_batches(info, data_dir=config.data_dir or None,
                                  image_size=config.student_input_size, augmentation=config.augmentation,
                                  **kwargs)
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


def device_resident(run_step, config, info, mesh):
    """``(step, arrays)``: ``run_step`` wrapped to gather and augment its batch from the training
    split held on the devices as uint8 ``arrays`` (replicated), by its step number."""
    images, labels = data.load_arrays(info, config.data_dir or None, "train")
    device_data = parallel.replicate({"images": images, "labels": labels}, mesh)
    sharding = parallel.batch_sharded(mesh)
    seed = recipes.data_seed(config)

    def step_from_device_data(state, arrays):
        batch = data.device_train_batch(seed, state.step, arrays["images"], arrays["labels"],
                                        dataset=info, global_batch_size=config.batch_size)
        return run_step(state, jax.lax.with_sharding_constraint(batch, sharding))

    return step_from_device_data, device_data


def eval_batches(config, info) -> Iterable[dict]:
    """This process's evaluation batches (host numpy, with "mask"), in a fixed order; the first
    ``config.max_eval_batches`` when that is >= 0 (smoke runs)."""
    batches = data.eval_batches(info, data_dir=config.data_dir or None, split="test",
                                global_batch_size=config.eval_batch_size, image_size=config.student_input_size)
    if config.max_eval_batches >= 0:
        batches = itertools.islice(batches, config.max_eval_batches)
    return batches
