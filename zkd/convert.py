"""PyTorch state dicts -> Flax variables. The only module of zkd that knows PyTorch names.

The Flax models mirror the PyTorch module trees (see ``zkd.models``), so conversion is generic:
a Flax leaf at path ``(m1, ..., mk, leaf)`` in collection ``params`` or ``batch_stats`` comes
from the PyTorch key ``"m1.....mk.<torch leaf>"`` with

    =================  ==================  ==========================================
    Flax collection    Flax leaf           PyTorch leaf (layout change)
    =================  ==================  ==========================================
    params             kernel (4-D, HWIO)  weight (OIHW), transposed (2, 3, 1, 0)
    params             kernel (2-D, IO)    weight (OI), transposed
    params             scale               weight (BatchNorm)
    params             bias                bias
    batch_stats        mean                running_mean
    batch_stats        var                 running_var
    =================  ==================  ==========================================

``num_batches_tracked`` buffers carry no information for inference and are ignored.
torch is imported only when a file has to be read.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

_IGNORED_SUFFIXES = ("num_batches_tracked",)


class CheckpointMismatchError(ValueError):
    """A state dict does not fit the architecture: missing, unexpected or mis-shaped entries."""


def _torch_key(collection: str, path: tuple[str, ...]) -> tuple[str, Any]:
    """(torch key, layout transform) for a Flax leaf path."""
    *modules, leaf = path
    prefix = ".".join(modules)
    if collection == "batch_stats":
        name = {"mean": "running_mean", "var": "running_var"}[leaf]
        return f"{prefix}.{name}", None
    if leaf == "kernel":
        return f"{prefix}.weight", "kernel"
    if leaf == "scale":
        return f"{prefix}.weight", None
    if leaf == "bias":
        return f"{prefix}.bias", None
    raise KeyError(f"no PyTorch counterpart known for Flax leaf {'/'.join(path)}")


def _to_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch.Tensor, without importing torch
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _kernel_from_torch(weight: np.ndarray) -> np.ndarray:
    if weight.ndim == 4:  # OIHW -> HWIO (grouped convs: O, I/groups, H, W -> H, W, I/groups, O)
        return weight.transpose(2, 3, 1, 0)
    if weight.ndim == 2:  # Linear: (out, in) -> (in, out)
        return weight.T
    raise ValueError(f"cannot convert a {weight.ndim}-D weight to a Flax kernel")


def state_dict_to_variables(state_dict: Mapping[str, Any], template: Mapping[str, Any]) -> dict:
    """Fill ``template`` (Flax variables or their ShapeDtypeStructs) from a PyTorch ``state_dict``.

    Args:
      state_dict: PyTorch parameter and buffer names -> tensors or arrays.
      template: ``{"params": ..., "batch_stats": ...}`` of the target model, e.g. from
        ``jax.eval_shape(model.init, ...)``; only shapes are used.

    Returns:
      ``{"params": ..., "batch_stats": ...}`` of float32 NumPy-backed jax arrays.

    Raises:
      CheckpointMismatchError: listing every missing, unexpected and mis-shaped entry by name.
    """
    remaining = {
        k: v for k, v in state_dict.items() if not k.endswith(_IGNORED_SUFFIXES)
    }
    missing, misshaped = [], []
    out: dict = {}
    for collection in ("params", "batch_stats"):
        if collection not in template:
            continue
        flat = jax.tree_util.tree_flatten_with_path(template[collection])[0]
        leaves = []
        for key_path, leaf in flat:
            path = tuple(str(getattr(k, "key", k)) for k in key_path)
            torch_key, transform = _torch_key(collection, path)
            if torch_key not in remaining:
                missing.append(torch_key)
                leaves.append(None)
                continue
            value = _to_numpy(remaining.pop(torch_key)).astype(np.float32)
            if transform == "kernel":
                try:
                    value = _kernel_from_torch(value)
                except ValueError:
                    pass  # reported as mis-shaped below
            if tuple(value.shape) != tuple(leaf.shape):
                misshaped.append(
                    f"{torch_key}: checkpoint {tuple(value.shape)} vs model {tuple(leaf.shape)}"
                )
            leaves.append(jnp.asarray(value))
        treedef = jax.tree_util.tree_structure(template[collection])
        out[collection] = (None, treedef, leaves)
    unexpected = sorted(remaining)
    if missing or unexpected or misshaped:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)}: " + ", ".join(missing))
        if unexpected:
            parts.append(f"unexpected {len(unexpected)}: " + ", ".join(unexpected))
        if misshaped:
            parts.append(f"mis-shaped {len(misshaped)}: " + "; ".join(misshaped))
        raise CheckpointMismatchError(
            "the checkpoint does not match the model: " + " | ".join(parts)
            + ". Check the architecture name and num_classes the checkpoint was trained with."
        )
    return {c: jax.tree_util.tree_unflatten(td, lv) for c, (_, td, lv) in out.items()}
