"""Shared helpers for trainer tests: synthetic CIFAR-100 arrays, and a saved random teacher.

The trainer tests feed the real zkd.data pipelines from synthetic arrays (the TFDS read itself
is covered by tests/test_data_*.py on tfds.testing.mock_data; running orbax inside
mock_data's patched file functions with several devices breaks orbax's commit step).
"""

import contextlib
import dataclasses
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np

from zkd import checkpoint, data, models, recipes
from zkd.data import pipeline

N_MOCK = 64  # synthetic examples per split


def synthetic_split(info, split: str):
    """Deterministic uint8 images whose mean colour depends on the label (learnable), int32 labels."""
    n = info.split_size(split)
    rng = np.random.default_rng({"train": 0, "test": 1}[split])
    labels = (np.arange(n) % info.num_classes).astype(np.int32)
    rng.shuffle(labels)
    base = (labels[:, None, None, None] * 37 % 200).astype(np.int16)
    noise = rng.integers(0, 56, size=(n, *info.image_shape), dtype=np.int16)
    return (base + noise).astype(np.uint8), labels


@contextlib.contextmanager
def mock_dataset(name: str, num_examples: int):
    """Dataset ``name`` as ``num_examples`` synthetic images per split, through zkd's own pipelines."""
    info = dataclasses.replace(data.DATASETS[name], train_size=num_examples, test_size=num_examples)

    def load_arrays(dataset, data_dir=None, split="train"):
        assert data.get_info(dataset).name == name, dataset
        return synthetic_split(info, split)

    with mock.patch.dict(data.DATASETS, {name: info}), mock.patch.object(
        pipeline, "load_arrays", load_arrays
    ), mock.patch.object(data, "load_arrays", load_arrays):
        yield info


def mock_cifar100(num_examples: int = N_MOCK):
    """cifar100 as ``num_examples`` synthetic images per split."""
    return mock_dataset("cifar100", num_examples)


def save_random_teacher(directory, name: str = "resnet8", num_classes: int = 100, seed: int = 1) -> str:
    model = models.build(name, num_classes)
    variables = model.init(jax.random.key(seed), jnp.zeros((1, 32, 32, 3)), train=False)
    return checkpoint.save_variables(directory, variables, {"model": name, "num_classes": num_classes, "zoo": "cifar"})


def tiny_config(method="kd", logit_stand=True, teacher_checkpoint="", student="resnet8", teacher="resnet8",
                epochs=2, steps=2, batch=16, seed=0):
    if method == "ce":
        c = recipes.cifar_teacher(student, seed)
    else:
        c = recipes.cifar_distillation(method, teacher, student, logit_stand, seed, teacher_checkpoint)
    recipes.shrink_for_local_run(c)
    c.num_epochs, c.steps_per_epoch, c.batch_size = epochs, steps, batch
    c.eval_batch_size, c.max_eval_batches = 24, -1
    c.progress_bar = False
    return recipes.finalize(c)
