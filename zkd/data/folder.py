"""A folder of class sub-folders of images, prepared offline into a TFDS dataset.

    python -m zkd.data.prepare --folder DIR --name my_data --data_dir ~/tensorflow_datasets [--test_fraction 0.1]

then train with ``--config.dataset=tfds:my_data`` (zkd.data.catalog). Two layouts:

* with splits (ImageNet's): ``DIR/<split>/<class>/<image>``, e.g. ``train/`` and ``val/`` (any
  split names; "val" is stored as "validation");
* flat: ``DIR/<class>/<image>``: one "train" split, and with ``test_fraction`` > 0 a "test"
  split holding that fraction of every class (files in sorted order, spread evenly over it).

Classes are the sub-folder names in sorted order (label i = the i-th name, the same in every
split). Images: anything TensorFlow decodes (JPEG, PNG, GIF, BMP), stored losslessly as PNG with
1 channel if every image is grayscale, else 3 (grayscale images are repeated over RGB, an alpha
channel is dropped). Files and folders whose names start with "." are ignored; any other file
that is not an image is an error, as is a folder with one class, an empty class, splits with
different classes or an image that does not decode: everything is checked before anything is
written, and the dataset is written to a temporary directory and moved into place whole.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from zkd import paths
from zkd.data.integrity import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp")
SPLIT_ALIASES = {"val": "validation", "valid": "validation"}
VERSION = "1.0.0"


class FolderError(DataError):
    """An image folder that cannot become a dataset as it is; the message names the files and the fix."""


def _visible(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if not p.name.startswith("."))


def _class_files(split_dir: Path, where: str) -> dict[str, list[Path]]:
    """class name -> sorted image files of one split directory (validated)."""
    entries = _visible(split_dir)
    stray = [p.name for p in entries if not p.is_dir()]
    if stray:
        raise FolderError(f"{where} holds files outside any class folder ({', '.join(stray[:5])}); move them into "
                          "their class's folder or remove them")
    classes = {}
    for class_dir in entries:
        files = _visible(class_dir)
        others = [p.name for p in files if p.is_dir() or p.suffix.lower() not in IMAGE_SUFFIXES]
        if others:
            raise FolderError(f"{class_dir} holds entries that are not images ({', '.join(others[:5])}; images end "
                              f"in {', '.join(IMAGE_SUFFIXES)}); remove or convert them")
        if not files:
            raise FolderError(f"class folder {class_dir} is empty: add its images or remove the folder")
        classes[class_dir.name] = files
    if len(classes) < 2:
        raise FolderError(f"{where} has {len(classes)} class folder{'s' if len(classes) != 1 else ''} "
                          f"({', '.join(classes) or 'none'}); a classification dataset needs at least 2 "
                          "(layout: DIR/<class>/<image> or DIR/<split>/<class>/<image>)")
    return classes


def scan(source: str | Path, test_fraction: float = 0.0) -> tuple[list[str], dict[str, list[tuple[Path, int]]]]:
    """The classes and every split's (file, label) list of an image folder, validated; nothing read.

    Returns:
      (class names sorted, {split name: [(path, label), ...] in class then file order}).

    Raises:
      FolderError: see the module docstring.
    """
    source = Path(source).expanduser()
    if not source.is_dir():
        raise FolderError(f"--folder {source} is not a directory")
    if not 0.0 <= test_fraction < 1.0:
        raise FolderError(f"--test_fraction must be in [0, 1), got {test_fraction}")
    top = _visible(source)
    dirs = [p for p in top if p.is_dir()]
    nested = dirs and all(any(q.is_dir() for q in _visible(d)) for d in dirs)
    if nested:  # DIR/<split>/<class>/<image>
        if test_fraction:
            raise FolderError(f"{source} already has splits ({', '.join(d.name for d in dirs)}); --test_fraction "
                              "serves a flat DIR/<class>/<image> folder")
        per_split = {SPLIT_ALIASES.get(d.name, d.name): _class_files(d, str(d)) for d in dirs}
        names = {s: sorted(c) for s, c in per_split.items()}
        first = next(iter(names))
        for s, n in names.items():
            if n != names[first]:
                only = sorted(set(names[first]) ^ set(n))
                raise FolderError(f"splits {first!r} and {s!r} have different classes (e.g. {', '.join(only[:5])}); "
                                  "every split needs the same class folders")
        classes = names[first]
        splits = {s: [(f, classes.index(c)) for c in classes for f in per_split[s][c]] for s in per_split}
        return classes, splits
    per_class = _class_files(source, str(source))
    classes = sorted(per_class)
    splits: dict[str, list] = {"train": []}
    if test_fraction:
        splits["test"] = []
    for label, c in enumerate(classes):
        files = per_class[c]
        for i, f in enumerate(files):  # every 1/fraction-th file of the class is held out
            held = test_fraction and int((i + 1) * test_fraction) > int(i * test_fraction)
            splits["test" if held else "train"].append((f, label))
    if test_fraction:
        small = [c for label, c in enumerate(classes) if not any(lb == label for _, lb in splits["test"])]
        if small:
            raise FolderError(f"--test_fraction {test_fraction} holds out no image of {', '.join(small[:5])} (too few "
                              "images); raise the fraction or add images")
    return classes, splits


def _decode_all(splits) -> tuple[int, set]:
    """Decode every image once (TensorFlow): returns the channel count to store and the sizes seen.

    Raises FolderError naming every file that does not decode."""
    import tensorflow as tf

    bad, sizes, gray_only = [], set(), True
    for files in splits.values():
        for f, _ in files:
            try:
                image = tf.io.decode_image(f.read_bytes(), expand_animations=False)
            except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError) as err:
                bad.append(f"{f} ({str(err).splitlines()[0][:80]})")
                continue
            sizes.add(tuple(image.shape[:2]))
            gray_only &= image.shape[2] in (1, 2)
    if bad:
        raise FolderError(f"{len(bad)} image{'s' if len(bad) > 1 else ''} do not decode: {'; '.join(bad[:5])}. "
                          "Remove or re-save them")
    return (1 if gray_only else 3), sizes


def prepare_folder(source: str | Path, name: str, data_dir: str | Path, *, test_fraction: float = 0.0,
                   overwrite: bool = False) -> dict:
    """Writes the image folder ``source`` as TFDS dataset ``name`` (version 1.0.0) in ``data_dir``.

    Returns:
      {"dataset": "tfds:<name>", "path", "classes", "image_channels", "image_sizes" (the sizes
      seen, up to 5), "splits": {split: examples}}.

    Raises:
      FolderError: a bad folder (nothing is written); also when the dataset exists and
        ``overwrite`` is False.
    """
    import tensorflow as tf
    import tensorflow_datasets as tfds

    if not name or not name.replace("_", "").isalnum() or not name[0].isalpha() or name != name.lower():
        raise FolderError(f"--name {name!r}: use lower-case letters, digits and '_', starting with a letter")
    try:
        tfds.builder_cls(name)
        raise FolderError(f"--name {name!r} is a dataset of TFDS's catalog; choose another name")
    except tfds.core.registered.DatasetNotFoundError:
        pass
    classes, splits = scan(source, test_fraction)
    channels, sizes = _decode_all(splits)
    root = paths.path(data_dir).expanduser()
    target = root / name / VERSION
    if target.exists():
        if not overwrite:
            raise FolderError(f"{target} exists; pass --overwrite to replace it")
    shape = next(iter(sizes)) + (channels,) if len(sizes) == 1 else (None, None, channels)
    features = tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=shape, encoding_format="png"),
        "label": tfds.features.ClassLabel(names=classes),
        "file_name": tfds.features.Text(),
    })

    def examples(files):
        for i, (f, label) in enumerate(files):
            image = tf.io.decode_image(f.read_bytes(), expand_animations=False).numpy()
            if image.shape[2] == 2 or image.shape[2] == 4:  # drop alpha
                image = image[..., : image.shape[2] - 1]
            if channels == 3 and image.shape[2] == 1:
                image = np.repeat(image, 3, axis=2)
            yield i, {"image": image, "label": label, "file_name": os.path.relpath(f, source)}

    with tempfile.TemporaryDirectory(prefix="zkd-folder-") as tmp:
        tfds.dataset_builders.store_as_tfds_dataset(
            name=name, version=VERSION, features=features, data_dir=tmp,  # TFDS mixes the classes (by key hash)
            split_datasets={s: examples(files) for s, files in splits.items()},
            description=f"Image folder {Path(source).expanduser()} prepared by zkd.data.prepare.",
        )
        if target.exists():
            paths.rmtree(str(target))
        built = Path(tmp) / name / VERSION
        if paths.is_remote(str(target)):  # a bucket: file by file, dataset_info.json (which TFDS reads first) last
            files = sorted(built.rglob("*"), key=lambda f: f.name == "dataset_info.json")
            for f in files:
                if f.is_file():
                    paths.copy_file(str(f), paths.join(str(target), str(f.relative_to(built))))
        else:
            paths.makedirs(str(target.parent))
            shutil.move(str(built), str(target))
    return {"dataset": f"tfds:{name}", "path": str(target), "classes": classes, "image_channels": channels,
            "image_sizes": sorted(sizes)[:5], "splits": {s: len(f) for s, f in splits.items()}}
