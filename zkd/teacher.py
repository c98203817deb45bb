"""Loading the frozen teacher a config names: converted checkpoint, PyTorch file, or zkd run.

``config.teacher.checkpoint`` may be
- a directory written by ``python -m zkd.convert`` (``metadata.json`` + ``variables/``);
- a PyTorch file (``.pth``/``.pt``/``.tar``), official mdistiller teacher or torchvision
  weights, converted on the fly (needs torch);
- the workdir of a zkd teacher run (``config.json`` + ``best/``): its best checkpoint.
Any of them may be in a bucket (``gs://...``, zkd.paths).
Whatever the source, the variables are checked against the architecture the config names
(tree, shapes, num_classes) before training starts.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from zkd import checkpoint, models, paths
from zkd.errors import ZkdError

_TORCH_SUFFIXES = (".pth", ".pt", ".tar", ".pkl", ".bin")


class TeacherError(ZkdError, ValueError):
    """The teacher a config names cannot be loaded or does not match the configured model."""


def _check_against_model(variables, model, name, num_classes, input_shape, source):
    template = jax.eval_shape(lambda r, x: model.init(r, x, train=False), jax.random.key(0), jnp.zeros((1, *input_shape)))
    want = {c: template[c] for c in ("params", "batch_stats") if c in template}
    got = {c: variables.get(c, {}) for c in want}
    flat_want = {jax.tree_util.keystr(p): x.shape for p, x in jax.tree_util.tree_flatten_with_path(want)[0]}
    flat_got = {jax.tree_util.keystr(p): np.shape(x) for p, x in jax.tree_util.tree_flatten_with_path(got)[0]}
    missing = sorted(set(flat_want) - set(flat_got))
    unexpected = sorted(set(flat_got) - set(flat_want))
    misshaped = [f"{k}: {flat_got[k]} vs {flat_want[k]}" for k in sorted(set(flat_want) & set(flat_got))
                 if tuple(flat_got[k]) != tuple(flat_want[k])]
    if missing or unexpected or misshaped:
        raise TeacherError(
            f"teacher checkpoint {source} does not fit config.teacher.name={name!r} with "
            f"{num_classes} classes: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}, "
            f"mis-shaped {misshaped[:5]}{'...' if len(misshaped) > 5 else ''}. "
            "Name the architecture and dataset the checkpoint was trained for."
        )
    return {c: jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), got[c]) for c in want}


def load_teacher(teacher_config, num_classes: int, input_shape: tuple, dtype=jnp.float32):
    """(Linen module, variables) of the teacher ``teacher_config`` (name, zoo, checkpoint)."""
    name, zoo, path = teacher_config.name, teacher_config.zoo, teacher_config.checkpoint
    if not name:
        raise TeacherError("config.teacher.name is empty; name the teacher's architecture")
    model = models.build(name, num_classes, zoo=zoo, dtype=dtype)
    if not path:
        raise TeacherError(
            f"config.teacher.checkpoint is empty: point it at a converted checkpoint (python -m "
            f"zkd.convert), a PyTorch .pth of {name}, or the workdir of a zkd run that trained {name} "
            "(configs/cifar100_teacher.py)"
        )
    path = os.path.expanduser(path)
    if not paths.exists(path):
        raise TeacherError(f"config.teacher.checkpoint={path!r} does not exist")
    is_dir = paths.isdir(path)
    if is_dir and paths.exists(paths.join(path, "config.json")):
        variables = _from_zkd_run(path, name, num_classes)
    elif is_dir:
        variables, meta = checkpoint.restore_variables(path)
        for key, want in (("model", name), ("num_classes", num_classes)):
            if key in meta and meta[key] != want:
                raise TeacherError(
                    f"teacher checkpoint {path} holds {key}={meta[key]!r}, but the config asks for {want!r}"
                )
    elif path.endswith(_TORCH_SUFFIXES):
        from zkd import convert

        variables = convert.from_torch_checkpoint(path, name, num_classes, zoo=zoo)
    else:
        raise TeacherError(
            f"config.teacher.checkpoint={path!r} is neither a directory nor a PyTorch file ({_TORCH_SUFFIXES})"
        )
    return model, _check_against_model(variables, model, name, num_classes, input_shape, path)


def _from_zkd_run(workdir: str, name: str, num_classes: int):
    run_config = json.loads(paths.read_text(paths.join(workdir, "config.json")))
    trained = run_config.get("student", {}).get("name")
    if trained != name:
        raise TeacherError(
            f"the zkd run in {workdir} trained {trained!r}, but config.teacher.name is {name!r}"
        )
    saved = checkpoint.restore_best_student(workdir)
    if saved is None:
        raise TeacherError(f"the zkd run in {workdir} has no complete checkpoint yet")
    return saved
