"""Orbax I/O for model variables: the one module that knows the orbax API.

A variables checkpoint is a directory holding

    variables/      orbax StandardCheckpointer output of ``{"params": ..., "batch_stats": ...}``
    metadata.json   what built them, e.g. ``{"model": "resnet32x4", "zoo": "cifar",
                    "num_classes": 100}``

``python -m zkd.convert`` writes one from a PyTorch checkpoint; a training config names such a
directory as its teacher and restores it with ``restore_variables``.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

_VARIABLES = "variables"
_METADATA = "metadata.json"


def save_variables(directory: str | os.PathLike, variables: Any, metadata: dict) -> str:
    """Write ``variables`` (a pytree of arrays) and JSON-serialisable ``metadata`` to a new
    ``directory``; returns its absolute path.

    Raises:
      FileExistsError: ``directory`` exists already (checkpoints are never overwritten).
      TypeError: ``metadata`` is not JSON-serialisable.
    """
    directory = os.path.abspath(os.fspath(directory))
    if os.path.exists(directory):
        raise FileExistsError(
            f"refusing to overwrite {directory}: it exists already; choose a new directory "
            "or delete it yourself")
    metadata_text = json.dumps(metadata, indent=2, sort_keys=True)
    os.makedirs(directory)
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(os.path.join(directory, _VARIABLES), variables)
        with open(os.path.join(directory, _METADATA), "w") as f:
            f.write(metadata_text + "\n")
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)  # ours: created above; no half checkpoint
        raise
    return directory


def restore_variables(directory: str | os.PathLike) -> tuple[Any, dict]:
    """``(variables, metadata)`` saved by ``save_variables`` in ``directory``.

    The variables come back as they were saved (same tree, shapes and dtypes), as NumPy arrays
    on the host; put them on devices as the caller needs.

    Raises:
      FileNotFoundError: ``directory`` is not a variables checkpoint (naming what is missing).
    """
    directory = os.path.abspath(os.fspath(directory))
    for part in (_VARIABLES, _METADATA):
        if not os.path.exists(os.path.join(directory, part)):
            raise FileNotFoundError(
                f"{directory} is not a zkd variables checkpoint: {part} is missing "
                "(write one with `python -m zkd.convert` or zkd.checkpoint.save_variables)")
    with open(os.path.join(directory, _METADATA)) as f:
        metadata = json.load(f)
    with ocp.StandardCheckpointer() as checkpointer:
        variables = checkpointer.restore(os.path.join(directory, _VARIABLES))
    return jax.tree.map(np.asarray, variables), metadata
