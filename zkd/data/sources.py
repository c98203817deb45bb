"""Where each dataset's original files come from, and readers for the local copies.

Used by ``zkd.data.prepare`` (offline preparation) and by the pipelines' "data missing"
error, which says exactly what to download and which command prepares it.
"""

from __future__ import annotations

import dataclasses
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np

from zkd.errors import ZkdError


class DataNotFoundError(ZkdError, FileNotFoundError):
    """A dataset (or its source files) is missing; the message says how to get it."""


_PREPARE = "python -m zkd.data.prepare --dataset {name} --source {source} --data_dir {data_dir}"

_WHERE = {
    "fashion_mnist": (
        "/usr/share/datasets/fashion-mnist",
        "the four IDX files train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
        "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz: on Debian/Ubuntu "
        "`apt-get install dataset-fashion-mnist` puts them in /usr/share/datasets/fashion-mnist; "
        "elsewhere download them from https://github.com/zalandoresearch/fashion-mnist",
    ),
    "cifar100": (
        "/path/to/cifar-100-python.tar.gz",
        "cifar-100-python.tar.gz (or cifar-100-binary.tar.gz) from https://www.cs.toronto.edu/~kriz/cifar.html",
    ),
    "cifar10": (
        "/path/to/cifar-10-python.tar.gz",
        "cifar-10-python.tar.gz (or cifar-10-binary.tar.gz) from https://www.cs.toronto.edu/~kriz/cifar.html",
    ),
    "imagenet2012": (
        "/path/to/dir_with_ILSVRC2012_tars",
        "ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar (from https://image-net.org, after registering) "
        "in one directory",
    ),
}


def prepare_instructions(name: str, data_dir: str | None) -> str:
    """What to get and the command that prepares dataset ``name`` in ``data_dir``."""
    if name not in _WHERE:  # a user's dataset: "tfds:NAME"
        tfds_name = name.split(":", 1)[1] if name.startswith("tfds:") else name
        return (
            f"With network access: `tfds build {tfds_name} --data_dir {data_dir or 'DATA_DIR'}` (then copy the "
            f"directory here); a folder of class sub-folders of images: `python -m zkd.data.prepare --folder DIR "
            f"--name {tfds_name} --data_dir {data_dir or 'DATA_DIR'}`."
        )
    example_source, what = _WHERE[name]
    command = _PREPARE.format(name=name, source=example_source, data_dir=data_dir or "DATA_DIR")
    return (
        f"Get {what}; then run:\n  {command}\n"
        f"(with network access, `tfds build {name} --data_dir {data_dir or 'DATA_DIR'}` works too)."
    )


def how_to_prepare(name: str, data_dir: str | None) -> str:
    """The message of a missing dataset: what to get and the command that prepares it."""
    return f"TFDS dataset {name!r} is not prepared in data_dir={data_dir}. {prepare_instructions(name, data_dir)}"


# ----------------------------------------------------------------------------- Fashion-MNIST

FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


def fashion_mnist_files(source: str | Path) -> dict[str, Path]:
    """Maps each TFDS download file name to the local file (``.gz`` or already decompressed)."""
    source = Path(source)
    found, missing = {}, []
    for name in FASHION_MNIST_FILES:
        for candidate in (source / name, source / name[: -len(".gz")]):
            if candidate.is_file():
                found[name] = candidate
                break
        else:
            missing.append(name)
    if missing:
        raise DataNotFoundError(
            f"{source} lacks {', '.join(missing)}. Need {_WHERE['fashion_mnist'][1]}."
        )
    return found


# ----------------------------------------------------------------------------- CIFAR


@dataclasses.dataclass(frozen=True)
class CifarLayout:
    """The python-pickle and binary archive layouts of one CIFAR dataset."""

    python_prefix: str
    python_files: dict[str, tuple[str, ...]]  # split -> pickle files
    python_meta: str
    label_keys: tuple[str, ...]  # pickle keys, in the binary record's order
    names_keys: tuple[str, ...]  # meta keys of the label names, same order
    binary_prefix: str
    binary_files: dict[str, tuple[str, ...]]  # split -> binary files
    names_files: tuple[str, ...]  # label-name text files, same order

    @property
    def binary_markers(self) -> tuple[str, ...]:
        return tuple(f"{self.binary_prefix}/{f}" for files in self.binary_files.values() for f in files)


CIFAR_LAYOUTS = {
    "cifar100": CifarLayout(
        python_prefix="cifar-100-python",
        python_files={"train": ("train",), "test": ("test",)},
        python_meta="meta",
        label_keys=("coarse_labels", "fine_labels"),
        names_keys=("coarse_label_names", "fine_label_names"),
        binary_prefix="cifar-100-binary",
        binary_files={"train": ("train.bin",), "test": ("test.bin",)},
        names_files=("coarse_label_names.txt", "fine_label_names.txt"),
    ),
    "cifar10": CifarLayout(
        python_prefix="cifar-10-batches-py",
        python_files={"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
        python_meta="batches.meta",
        label_keys=("labels",),
        names_keys=("label_names",),
        binary_prefix="cifar-10-batches-bin",
        binary_files={"train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)), "test": ("test_batch.bin",)},
        names_files=("batches.meta.txt",),
    ),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Loads the CIFAR pickles (dicts of lists, bytes and numpy arrays) and nothing else."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR pickle")
        return super().find_class(module, name)


def load_cifar_pickle(data: bytes) -> dict[str, object]:
    """One CIFAR python-format pickle -> dict with str keys (the files use bytes keys)."""
    raw = _ArrayUnpickler(io.BytesIO(data), encoding="bytes").load()
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in raw.items()}


def cifar_binary_records(batch: dict[str, object], label_keys: tuple[str, ...]) -> bytes:
    """A python-format batch -> the binary format: per image its label bytes then 3072 pixel bytes."""
    data = np.asarray(batch["data"], np.uint8)
    if data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"CIFAR 'data' must be [N, 3072] uint8, got {data.shape}")
    labels = [np.asarray(batch[k], np.int64) for k in label_keys]
    for k, lab in zip(label_keys, labels):
        if lab.shape != (data.shape[0],) or lab.min() < 0 or lab.max() > 255:
            raise ValueError(f"CIFAR labels {k!r} must be [N] in [0, 255]")
    return np.concatenate([np.stack(labels, axis=1).astype(np.uint8), data], axis=1).tobytes()


def _read_members(source: Path, prefix: str, names) -> dict[str, bytes]:
    """Reads ``prefix/name`` for each name from a tar archive or a directory."""
    if source.is_dir():
        root = source if (source / names[0]).exists() else source / prefix
        return {n: (root / n).read_bytes() for n in names}
    with tarfile.open(source) as tar:
        return {n: tar.extractfile(f"{prefix}/{n}").read() for n in names}


def _tar_names(source: Path) -> set[str]:
    with tarfile.open(source) as tar:
        return set(tar.getnames())


def cifar_source_kind(name: str, source: str | Path) -> str:
    """"binary" or "python": which official CIFAR format ``source`` (archive or directory) holds."""
    layout, source = CIFAR_LAYOUTS[name], Path(source)
    if source.is_dir():
        for kind, prefix, first in (
            ("binary", layout.binary_prefix, layout.binary_files["train"][0]),
            ("python", layout.python_prefix, layout.python_files["train"][0]),
        ):
            if (source / prefix / first).is_file() or (source.name == prefix and (source / first).is_file()):
                return kind
    elif source.is_file() and tarfile.is_tarfile(source):
        members = _tar_names(source)
        if set(layout.binary_markers) <= members:
            return "binary"
        if f"{layout.python_prefix}/{layout.python_files['train'][0]}" in members:
            return "python"
    raise DataNotFoundError(
        f"{source} is neither the python nor the binary {name} archive (or its extracted directory). "
        f"Need {_WHERE[name][1]}."
    )


def write_cifar_binary(name: str, source: str | Path, out_dir: str | Path) -> Path:
    """Converts the python-format CIFAR archive/directory into the binary layout under ``out_dir``.

    Returns:
      ``out_dir`` (it then holds ``<binary prefix>/`` with the .bin and label-name files that
      TFDS's builder reads).
    """
    layout, source, out_dir = CIFAR_LAYOUTS[name], Path(source), Path(out_dir)
    target = out_dir / layout.binary_prefix
    target.mkdir(parents=True, exist_ok=True)
    meta = load_cifar_pickle(_read_members(source, layout.python_prefix, [layout.python_meta])[layout.python_meta])
    for key, fname in zip(layout.names_keys, layout.names_files):
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[key]]
        (target / fname).write_text("\n".join(names) + "\n")
    for split, py_files in layout.python_files.items():
        blobs = _read_members(source, layout.python_prefix, list(py_files))
        # The official layouts pair python batches and binary files one to one.
        for py_file, bin_file in zip(py_files, layout.binary_files[split], strict=True):
            records = cifar_binary_records(load_cifar_pickle(blobs[py_file]), layout.label_keys)
            (target / bin_file).write_bytes(records)
    return out_dir


# ----------------------------------------------------------------------------- ImageNet

IMAGENET_FILES = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")


def check_imagenet_source(source: str | Path) -> Path:
    source = Path(source)
    missing = [f for f in IMAGENET_FILES if not (source / f).is_file()]
    if missing:
        raise DataNotFoundError(f"{source} lacks {', '.join(missing)}. Need {_WHERE['imagenet2012'][1]}.")
    return source
