"""Offline preparation of TFDS datasets from files a user already has.

    python -m zkd.data.prepare --dataset fashion_mnist --source /usr/share/datasets/fashion-mnist --data_dir DIR
    python -m zkd.data.prepare --dataset cifar100 --source cifar-100-python.tar.gz --data_dir DIR
    python -m zkd.data.prepare --dataset imagenet2012 --source DIR_WITH_ILSVRC2012_TARS --data_dir DIR
    python -m zkd.data.prepare --folder DIR_OF_CLASS_FOLDERS --name my_data --data_dir DIR [--test_fraction 0.1]

The last one writes a folder of class sub-folders of images as TFDS dataset ``my_data``, read with
``--config.dataset=tfds:my_data`` (zkd.data.folder).

Afterwards ``tfds.load(name, data_dir=DIR)`` (and every zkd pipeline) reads the dataset with
no network. ``DIR`` may be in a bucket (``gs://...``): TFDS writes and reads it itself (its
records through TensorFlow's GCS filesystem, see zkd.paths).

How: TFDS's own builder prepares the dataset (so the stored examples, ids, splits and
metadata are what ``tfds build`` would write); only its download step is pointed at the local
files. For Fashion-MNIST and CIFAR that is a download manager whose "downloads" are the local
files (their checksums are not compared with TFDS's registered ones: the Debian
Fashion-MNIST ``.gz`` files are recompressed copies; the decoded content is checked instead).
A python-format CIFAR archive is first rewritten in the binary format that TFDS's builder
reads (same bytes per image, same labels, same order). ImageNet uses TFDS's manual-download
flow (``manual_dir``). After preparing, ``verify`` decodes the splits and checks counts,
shapes and (for balanced datasets) the per-class histogram against zkd's constants.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from zkd import paths
from zkd.data import sources
from zkd.data.info import DATASETS, get_info
from zkd.data.pipeline import load_arrays

_DOWNLOAD_NAME = {"cifar100": "cifar-100-binary.tar.gz", "cifar10": "cifar-10-binary.tar.gz"}


class LocalDownloadManager(tfds.download.DownloadManager):
    """A TFDS download manager that serves each URL from a local file or directory.

    ``local_files`` maps the URL's last path component to a local path. A file is extracted
    by TFDS's extractor (``.gz``, ``.tar.gz``, ...) when the builder asks for extraction; a
    directory is returned as the already-extracted download.
    """

    def __init__(self, *, local_files: dict[str, Path], **kwargs):
        super().__init__(**kwargs)
        self._local_files = {k: epath.Path(v) for k, v in local_files.items()}

    def _local(self, url: str) -> epath.Path:
        name = str(url).rstrip("/").rsplit("/", 1)[-1]
        if name not in self._local_files:
            raise sources.DataNotFoundError(f"no local file for {url} (have {sorted(self._local_files)})")
        return self._local_files[name]

    def download(self, url_or_urls):
        return _map_nested(self._local, url_or_urls)

    def download_and_extract(self, url_or_urls):
        def one(url):
            path = self._local(url)
            return path if path.is_dir() else self.extract(path)

        return _map_nested(one, url_or_urls)


def _map_nested(fn, x):
    if isinstance(x, dict):
        return {k: _map_nested(fn, v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_map_nested(fn, v) for v in x)
    return fn(x)


def _local_files(name: str, source: Path, work: Path) -> dict[str, Path]:
    """URL file name -> local path for the builder's download step."""
    if name == "fashion_mnist":
        return sources.fashion_mnist_files(source)
    layout = sources.CIFAR_LAYOUTS[name]
    kind = sources.cifar_source_kind(name, source)
    if kind == "python":
        return {_DOWNLOAD_NAME[name]: sources.write_cifar_binary(name, source, work / "converted")}
    if source.is_dir():  # TFDS reads <download>/<binary prefix>/...
        return {_DOWNLOAD_NAME[name]: source.parent if source.name == layout.binary_prefix else source}
    return {_DOWNLOAD_NAME[name]: source}


def prepare(dataset: str, source: str | Path, data_dir: str | Path, *, overwrite: bool = False, check: bool = True) -> dict:
    """Prepares ``dataset`` in ``data_dir`` from local ``source`` files, then verifies it.

    Args:
      dataset: "fashion_mnist", "cifar100", "cifar10" or "imagenet2012".
      source: Fashion-MNIST: the directory of the four IDX files (``.gz`` or not); CIFAR:
        the python or binary archive, or its extracted directory; ImageNet: the directory
        holding ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar.
      data_dir: the TFDS data directory to write (``DIR/<name>/<version>/``), local or
        ``gs://...``.
      overwrite: re-prepare even if the dataset is already there.
      check: run ``verify`` (off only for synthetic test archives of non-standard size).

    Returns:
      ``verify``'s summary (with ``check``), else {"dataset", "path"}.

    Raises:
      DataNotFoundError: the source files are missing or not recognised.
    """
    info = get_info(dataset)
    source, data_dir = Path(source).expanduser(), paths.path(data_dir).expanduser()
    if not source.exists():
        raise sources.DataNotFoundError(f"source {source} does not exist.\n{sources.how_to_prepare(info.name, str(data_dir))}")
    builder = tfds.builder(info.tfds_name, data_dir=str(data_dir))
    with tempfile.TemporaryDirectory(prefix="zkd-prepare-") as tmp:
        work = Path(tmp)
        if info.name == "imagenet2012":
            config = tfds.download.DownloadConfig(
                manual_dir=str(sources.check_imagenet_source(source)), try_download_gcs=False
            )
        else:
            local = _local_files(info.name, source, work)
            config = tfds.download.DownloadConfig(try_download_gcs=False)

            def make_download_manager(download_dir, download_config):
                del download_dir, download_config
                return LocalDownloadManager(
                    local_files=local,
                    download_dir=work / "downloads",
                    extract_dir=work / "extracted",
                    dataset_name=builder.name,
                )

            # TFDS has no public hook for the download manager; the builder builds it here.
            builder._make_download_manager = make_download_manager  # noqa: SLF001
        if overwrite and builder.is_prepared():
            paths.rmtree(builder.data_dir)
        builder.download_and_prepare(download_dir=str(work / "downloads"), download_config=config)
    if check:
        return verify(info.name, data_dir)
    return {"dataset": info.name, "path": str(builder.data_dir)}


def verify(dataset: str, data_dir: str | Path) -> dict:
    """Checks a prepared dataset against zkd's constants; returns a summary.

    Split sizes always; for in-memory datasets the decoded images' shape and dtype and,
    when balanced, every class's count.

    Raises:
      ValueError: a mismatch (named in the message).
    """
    info = get_info(dataset)
    builder = tfds.builder(info.tfds_name, data_dir=str(data_dir))
    summary = {"dataset": info.name, "path": str(builder.data_dir), "splits": {}}
    for split in ("train", "test"):
        expected = info.split_size(split)
        stored = builder.info.splits[info.tfds_split(split)].num_examples
        if stored != expected:
            raise ValueError(f"{info.name} {split}: {stored} examples stored, expected {expected}")
        entry = {"num_examples": stored}
        if info.in_memory:
            images, labels = load_arrays(info, str(data_dir), split)  # checks count and shape
            hist = np.bincount(labels, minlength=info.num_classes)
            if info.balanced and not np.all(hist == expected // info.num_classes):
                raise ValueError(f"{info.name} {split}: class counts {hist.tolist()}, expected {expected // info.num_classes} each")
            entry.update(image_shape=list(images.shape[1:]), dtype=str(images.dtype), label_histogram=hist.tolist())
        summary["splits"][split] = entry
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zkd.data.prepare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=sorted(DATASETS), help="a built-in dataset (with --source)")
    parser.add_argument("--source", help="local archive / directory of the original files")
    parser.add_argument("--folder", help="a folder of class sub-folders of images (with --name)")
    parser.add_argument("--name", help="the TFDS name to give the folder's dataset (then dataset=tfds:NAME)")
    parser.add_argument("--test_fraction", type=float, default=0.0,
                        help="flat folders: hold out this fraction of every class as the test split")
    parser.add_argument("--data_dir", required=True, help="TFDS data directory to write")
    parser.add_argument("--overwrite", action="store_true", help="re-prepare an existing dataset")
    args = parser.parse_args(argv)
    if bool(args.folder) == bool(args.dataset):
        parser.error("give either --dataset with --source, or --folder with --name")
    if args.dataset and not args.source:
        parser.error("--dataset needs --source")
    if args.folder and not args.name:
        parser.error("--folder needs --name")
    from zkd.data import folder

    try:
        if args.folder:
            summary = folder.prepare_folder(args.folder, args.name, args.data_dir, test_fraction=args.test_fraction,
                                            overwrite=args.overwrite)
        else:
            summary = prepare(args.dataset, args.source, args.data_dir, overwrite=args.overwrite)
    except (sources.DataNotFoundError, folder.FolderError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
