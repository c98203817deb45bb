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
    params             any other name      the same name (a raw ``nn.Parameter``), as is
    batch_stats        mean                running_mean
    batch_stats        var                 running_var
    batch_stats        any other name      the same name (a buffer or a ``requires_grad=False``
                                           parameter), as is
    =================  ==================  ==========================================

A raw tensor (a transformer's ``cls_token``, ``pos_embed``, ...) keeps PyTorch's name and layout
in Flax, so ``pos_embed`` at the root is the PyTorch key ``"pos_embed"``.

``num_batches_tracked`` buffers carry no information for inference and are ignored.
torch is imported only when a file has to be read.

Files: ``from_torch_checkpoint(path_or_state_dict, name, num_classes, zoo)`` reads official
mdistiller/CRD teacher files (``{"model": state_dict, ...}``), the pycls files of the release's
``tiny-transformers/`` students (``{"model_state": state_dict, ...}``, e.g. ``model.pyth``) and
torchvision state dicts. The command ::

    python -m zkd.convert --checkpoint resnet32x4_vanilla/ckpt_epoch_240.pth \\
        --model resnet32x4 --num_classes 100 --output teachers/resnet32x4

writes an orbax variables directory (``zkd.checkpoint``) a training config can name as its
teacher, and prints the parameter count. ``--checkpoint`` and ``--output`` may be in a bucket
(``gs://...``, zkd.paths).
"""

from __future__ import annotations

import io
import os
import sys
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from zkd import paths
from zkd.errors import ZkdError

_IGNORED_SUFFIXES = ("num_batches_tracked",)


class CheckpointMismatchError(ZkdError, ValueError):
    """A state dict does not fit the architecture: missing, unexpected or mis-shaped entries."""


def _torch_key(collection: str, path: tuple[str, ...]) -> tuple[str, Any]:
    """(torch key, layout transform) for a Flax leaf path."""
    *modules, leaf = path
    prefix = ".".join(modules)
    if collection == "batch_stats":
        renamed = {"mean": "running_mean", "var": "running_var"}
        if leaf in renamed:
            return f"{prefix}.{renamed[leaf]}", None
        return ".".join(path), None  # a buffer / fixed parameter of the same name
    if leaf == "kernel":
        return f"{prefix}.weight", "kernel"
    if leaf == "scale":
        return f"{prefix}.weight", None
    if leaf == "bias":
        return f"{prefix}.bias", None
    return ".".join(path), None  # a raw nn.Parameter of the same name and layout


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


def _torch_shape(flax_shape: tuple, transform) -> tuple:
    """The PyTorch shape of a Flax leaf (inverse of ``_kernel_from_torch``)."""
    if transform == "kernel" and len(flax_shape) == 4:
        return tuple(flax_shape[i] for i in (3, 2, 0, 1))
    if transform == "kernel" and len(flax_shape) == 2:
        return flax_shape[::-1]
    return flax_shape


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
            torch_shape = tuple(value.shape)
            if transform == "kernel":
                try:
                    value = _kernel_from_torch(value)
                except ValueError:
                    pass  # reported as mis-shaped below
            if tuple(value.shape) != tuple(leaf.shape):
                misshaped.append(  # both in PyTorch's layout, as the user knows the file
                    f"{torch_key}: checkpoint {torch_shape} vs model "
                    f"{_torch_shape(tuple(leaf.shape), transform)}"
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


class CheckpointFileError(ZkdError, ValueError):
    """A PyTorch checkpoint file cannot be read (missing, truncated, corrupt, or not a state dict)."""


def _strip_data_parallel(state_dict: Mapping[str, Any]) -> dict:
    """Drop the "module." prefix ``nn.DataParallel`` / DDP put on every key."""
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return {k[len("module."):]: v for k, v in state_dict.items()}
    return dict(state_dict)


def _load_torch_file(path: str, weights_only: bool):
    import torch  # only conversion needs torch

    if not paths.isfile(path):
        raise CheckpointFileError(f"PyTorch checkpoint {path} does not exist or is not a file")
    source = path
    if paths.is_remote(path):  # torch.load reads a file object: the whole object, in memory
        with paths.open(path, "rb") as f:
            source = io.BytesIO(f.read())
    try:
        return torch.load(source, map_location="cpu", weights_only=weights_only)
    except Exception as err:  # torch raises RuntimeError, EOFError, UnpicklingError, ...
        hint = ""
        if weights_only and "weights_only" in str(err):
            hint = (" The file holds Python objects beyond tensors; if you trust its source, "
                    "pass weights_only=False (--unsafe_pickle).")
        raise CheckpointFileError(
            f"cannot read PyTorch checkpoint {path} (truncated or corrupt?): "
            f"{type(err).__name__}: {err}.{hint}") from err


def extract_state_dict(checkpoint: Mapping[str, Any], source: str = "the checkpoint") -> dict:
    """The state dict inside a loaded checkpoint: its "model" (mdistiller/CRD teachers),
    "model_state" (pycls, the release's transformers) or "state_dict" entry, or the mapping
    itself when it maps names to tensors (torchvision);
    a DataParallel "module." prefix is removed."""
    if not isinstance(checkpoint, Mapping):
        raise CheckpointFileError(
            f"{source} holds a {type(checkpoint).__name__}, not a state dict or a dict with a "
            "'model' entry")
    for key in ("model", "model_state", "state_dict"):
        if isinstance(checkpoint.get(key), Mapping):
            checkpoint = checkpoint[key]
            break
    not_arrays = [k for k, v in checkpoint.items() if not hasattr(v, "shape")]
    if not checkpoint or not_arrays:
        raise CheckpointFileError(
            f"{source} is neither a state dict nor a dict with a 'model' / 'model_state' / "
            "'state_dict' entry; "
            f"its top-level keys: {', '.join(map(str, list(checkpoint)[:20])) or '(none)'}")
    return _strip_data_parallel(checkpoint)


def from_torch_checkpoint(path_or_state_dict, name: str, num_classes: int, zoo: str = "cifar",
                          *, in_channels: int = 3, weights_only: bool = True) -> dict:
    """Flax variables of ``zkd.models.build(name, num_classes, zoo)`` from a PyTorch checkpoint.

    Args:
      path_or_state_dict: a path to a ``torch.save``d file, or the loaded object: an official
        mdistiller/CRD teacher (a dict whose "model" entry is the state dict, e.g.
        ``resnet32x4_vanilla/ckpt_epoch_240.pth``), a pycls file (its "model_state" entry;
        the release's transformer students, zoo "vit"), or a plain state dict (torchvision).
        Keys prefixed "module." (DataParallel) are accepted.
      name, num_classes, zoo: the architecture the weights belong to.
      in_channels: image channels the checkpoint's first conv expects.
      weights_only: passed to ``torch.load``; keep True unless you trust the file's source.

    Returns:
      ``{"params": ..., "batch_stats": ...}``, float32.

    Raises:
      CheckpointFileError: the file is missing, truncated, corrupt or holds no state dict
        (the message names the file).
      CheckpointMismatchError: the weights do not fit the architecture (every missing,
        unexpected and mis-shaped key is named).
    """
    from zkd import models

    if isinstance(path_or_state_dict, (str, os.PathLike)):
        source = os.fspath(path_or_state_dict)
        checkpoint = _load_torch_file(source, weights_only)
    else:
        source, checkpoint = "the given state dict", path_or_state_dict
    state_dict = extract_state_dict(checkpoint, source)
    model = models.build(name, num_classes=num_classes, zoo=zoo)
    size = getattr(model, "img_size", 32)  # the "vit" zoo's models take one image size
    template = jax.eval_shape(lambda: model.init(
        jax.random.key(0), jnp.zeros((1, size, size, in_channels), jnp.float32), train=False))
    try:
        return state_dict_to_variables(state_dict, template)
    except CheckpointMismatchError as err:
        raise CheckpointMismatchError(
            f"{source} does not fit {zoo} model {name!r} with {num_classes} classes: {err}") from None


def main(argv=None) -> int:
    """``python -m zkd.convert --checkpoint PATH --model NAME --num_classes 100 --output DIR``."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m zkd.convert",
        description="Convert a PyTorch checkpoint (mdistiller/CRD teacher or torchvision state "
                    "dict) into an orbax variables directory a zkd config can name as teacher.")
    parser.add_argument("--checkpoint", required=True, help="torch.save'd file")
    parser.add_argument("--model", required=True, help="zkd architecture name, e.g. resnet32x4")
    parser.add_argument("--num_classes", type=int, required=True)
    parser.add_argument("--zoo", default="cifar", choices=("cifar", "imagenet", "vit"))
    parser.add_argument("--in_channels", type=int, default=3)
    parser.add_argument("--output", required=True, help="new directory to write (never overwritten)")
    parser.add_argument("--unsafe_pickle", action="store_true",
                        help="torch.load(weights_only=False): only for files you trust")
    args = parser.parse_args(argv)

    from zkd import checkpoint, models

    if paths.exists(args.output):
        parser.error(f"--output {args.output} exists already; choose a new directory")
    try:
        variables = from_torch_checkpoint(
            args.checkpoint, args.model, args.num_classes, args.zoo,
            in_channels=args.in_channels, weights_only=not args.unsafe_pickle)
    except (CheckpointFileError, CheckpointMismatchError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    metadata = {"model": args.model, "zoo": args.zoo, "num_classes": args.num_classes,
                "in_channels": args.in_channels,
                "source": paths.absolute(args.checkpoint)}
    out = checkpoint.save_variables(args.output, variables, metadata)
    n = models.count_params(variables["params"])
    print(f"{args.model} ({args.zoo}, {args.num_classes} classes): {n:,} parameters -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
