"""Is a prepared TFDS directory the dataset it claims to be, and are its records whole?

Two faults a pipeline must name rather than pass through as a TensorFlow or TFDS error:

* a directory prepared for another dataset (``<data_dir>/cifar100/3.0.2`` holding Fashion-MNIST,
  or a copy of another version): ``check_prepared_directory`` compares the stored
  ``dataset_info.json`` / ``features.json`` (name, version, image shape, number of classes) with
  zkd's constants (``zkd.data.DATASETS``) before TFDS opens the directory, and raises
  ``DatasetMismatchError`` naming every field that differs;
* damaged record files (a copy cut short, flipped bytes): reading raises TensorFlow's
  DataLossError ("corrupted record at ..."), a cardinality error ("expected to contain 30
  elements but contained only 15") or a decode error; ``read_errors_named`` turns them into
  ``DataCorruptError`` naming the dataset, the split, the damaged file(s) when
  ``damaged_shards`` can find them cheaply, and the fix.

Both say how to fix it and never delete or rewrite anything themselves.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator

import tensorflow as tf
import tensorflow_datasets as tfds
from etils import epath

from zkd.data.info import DatasetInfo
from zkd.data.sources import prepare_instructions
from zkd.errors import ZkdError


class DataError(ZkdError, ValueError):
    """Data that cannot be right: labels outside the class range, damaged records, or a
    prepared directory of another dataset. The message names the problem and the fix."""


class DataCorruptError(DataError):
    """A prepared dataset's record files cannot be read back whole."""


class DatasetMismatchError(DataError):
    """A prepared directory holds another dataset (or version) than the one asked for."""


# ----------------------------------------------------------------------------- another dataset


def version_dir(info: DatasetInfo, data_dir: str | None) -> epath.Path:
    """``<data_dir>/<tfds name>/<version TFDS's code builds>``: where TFDS looks for ``info``."""
    root = epath.Path(data_dir or tfds.core.constants.DATA_DIR).expanduser()
    return root / info.tfds_name / str(tfds.builder_cls(info.tfds_name).VERSION)


def expected_metadata(info: DatasetInfo, version: str) -> dict:
    """The stored metadata a directory prepared for ``info`` has.

    In-memory datasets store images of exactly ``info.image_shape``; streamed ones (ImageNet)
    store images of any size, so only their channel count is compared.
    """
    image = {"image_shape": info.image_shape} if info.in_memory else {"image_channels": info.image_shape[2]}
    return {"name": info.tfds_name, "version": version, **image, "num_classes": info.num_classes}


def read_stored_metadata(directory: epath.Path) -> dict | None:
    """``{"name", "version", "image_shape", "image_channels", "num_classes"}`` from a prepared
    directory's ``dataset_info.json`` and ``features.json`` (a field is absent when the files
    lack it; a variable image dimension is None); None when there is no ``dataset_info.json``.

    Raises:
      DataCorruptError: a metadata file is not valid JSON.
    """
    info_path, features_path = directory / "dataset_info.json", directory / "features.json"
    if not info_path.exists():
        return None
    try:
        stored = json.loads(info_path.read_text())
        features = json.loads(features_path.read_text()) if features_path.exists() else {}
    except json.JSONDecodeError as err:
        raise DataCorruptError(
            f"the TFDS metadata in {directory} is not valid JSON ({err}): the prepared directory is damaged. "
            f"Delete {directory} and prepare the dataset again (python -m zkd.data.prepare ...)."
        ) from err
    out = {k: stored[k] for k in ("name", "version") if k in stored}
    fields = features.get("featuresDict", {}).get("features", {})
    dims = fields.get("image", {}).get("image", {}).get("shape", {}).get("dimensions")
    if dims is not None:
        out["image_shape"] = tuple(None if int(d) < 0 else int(d) for d in dims)
        out["image_channels"] = out["image_shape"][-1]
    num_classes = fields.get("label", {}).get("classLabel", {}).get("numClasses")
    if num_classes is not None:
        out["num_classes"] = int(num_classes)
    return out


_FIELDS = {"name": "name", "version": "version", "image_shape": "image shape",
           "image_channels": "image channels", "num_classes": "label classes"}


def metadata_mismatches(expected: dict, stored: dict) -> list[str]:
    """``"<field> <stored> (expected <expected>)"`` for every field of both that differs."""
    return [
        f"{label} {stored[k]!r} (expected {expected[k]!r})"
        for k, label in _FIELDS.items()
        if k in stored and k in expected and stored[k] != expected[k]
    ]


def check_prepared_directory(info: DatasetInfo, data_dir: str | None) -> None:
    """Refuse a prepared directory whose stored metadata is not ``info``'s (nothing is read or changed).

    No-op when the directory is not prepared (the caller's "not found" error follows).

    Raises:
      DatasetMismatchError: the name, version, image shape or class count differs; the message
        names each difference and how to fix it.
    """
    directory = version_dir(info, data_dir)
    stored = read_stored_metadata(directory)
    if stored is None:
        return
    differ = metadata_mismatches(expected_metadata(info, directory.name), stored)
    if not differ:
        return
    owner = stored.get("name", "another dataset")
    raise DatasetMismatchError(
        f"{directory} does not hold the {info.name!r} dataset that was asked for: its stored "
        f"{'; '.join(differ)}. It was prepared for {owner!r} (or another version) and copied or moved "
        f"here. Nothing was read or changed. Fix: move {directory} to "
        f"<data_dir>/{owner}/{stored.get('version', '<version>')} if that is what it holds, or delete it; "
        f"then prepare {info.name}. {prepare_instructions(info.name, str(directory.parent.parent))}"
    )


# ----------------------------------------------------------------------------- damaged records

# What TensorFlow raises on a damaged record file: a failed checksum (DataLossError), a file cut
# short (TFDS asserts each split's example count: FailedPreconditionError), or stored image
# bytes that do not decode (InvalidArgumentError naming the decode op).
_READ_ERRORS = (tf.errors.DataLossError, tf.errors.FailedPreconditionError, tf.errors.InvalidArgumentError)


def _is_damage(err: tf.errors.OpError) -> bool:
    if isinstance(err, tf.errors.InvalidArgumentError):
        return re.search(r"decod|jpeg|png|image data", err.message, re.IGNORECASE) is not None
    if isinstance(err, tf.errors.FailedPreconditionError):
        return "expected to contain" in err.message
    return True


def tf_reason(err: tf.errors.OpError) -> str:
    """TensorFlow's message without the op and function-node decorations."""
    text = re.sub(r"\{\{[^}]*\}\}\s*", "", err.message)
    text = re.sub(r"\s*\[\[.*$|\s*\[Op:[^\]]*\].*$", "", text, flags=re.DOTALL)
    text = text.strip()
    return text.splitlines()[0].rstrip(".") if text else type(err).__name__


def damaged_shards(builder: tfds.core.DatasetBuilder, tfds_split: str) -> list[str]:
    """``"<file>: <problem>"`` for each record file of the split that fails its checksums or holds
    fewer records than ``dataset_info.json`` lists (reads every record once, no decoding)."""
    split = builder.info.splits[tfds_split]
    problems = []
    for path, expected in zip(split.filepaths, split.shard_lengths):
        name = os.path.basename(os.fspath(path))
        if not epath.Path(path).exists():
            problems.append(f"{name}: missing")
            continue
        count = 0
        try:
            for records in tf.data.TFRecordDataset(os.fspath(path)).batch(4096):
                count += int(records.shape[0])
        except tf.errors.OpError as err:
            problems.append(f"{name}: {tf_reason(err)}")
            continue
        if count != expected:
            problems.append(f"{name}: {count} records, dataset_info.json lists {expected} (the file is cut short)")
    return problems


def corrupt_message(info: DatasetInfo, split: str, builder: tfds.core.DatasetBuilder,
                    err: tf.errors.OpError, damaged: list[str] | None) -> str:
    """The DataCorruptError message: what failed, which files (when known) and the fix."""
    directory = builder.data_dir
    if damaged:
        where = f" Damaged: {'; '.join(damaged)}."
    else:  # a streamed split is too large to scan for the damaged file here
        where = f" The damaged file is one of {info.tfds_name}-{info.tfds_split(split)}.* there."
    data_dir = os.path.dirname(os.path.dirname(os.fspath(directory)))
    return (
        f"the {info.name} {split} split in {directory} cannot be read: {tf_reason(err)}.{where} "
        "The prepared record files are damaged (a copy cut short, a full disk while preparing, or failing "
        f"storage). Fix: delete {directory} and prepare {info.name} again (or re-download it). "
        f"{prepare_instructions(info.name, data_dir)}"
    )


@contextlib.contextmanager
def read_errors_named(info: DatasetInfo, split: str, builder: tfds.core.DatasetBuilder, locate: bool):
    """Turn TensorFlow's errors for damaged records read inside the block into DataCorruptError.

    ``locate``: scan the split's files to name the damaged ones (cheap for in-memory datasets,
    not for ImageNet).
    """
    try:
        yield
    except _READ_ERRORS as err:
        if not _is_damage(err):
            raise
        damaged = damaged_shards(builder, info.tfds_split(split)) if locate else None
        raise DataCorruptError(corrupt_message(info, split, builder, err, damaged)) from err


def read_named(batches: Iterator, info: DatasetInfo, split: str, builder: tfds.core.DatasetBuilder,
               locate: bool = False) -> Iterator:
    """``batches`` with damaged-record errors raised as DataCorruptError (see ``read_errors_named``)."""
    with read_errors_named(info, split, builder, locate):
        yield from batches
