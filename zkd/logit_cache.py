"""Teacher-logit cache: the frozen teacher's logits for every crop/flip variant of a training set.

With the CIFAR augmentation (a crop at one of (2 pad + 1)^2 offsets of the zero-padded image,
times a horizontal flip) an eval-mode teacher is a deterministic function of
(example, dy, dx, flip): V = 2 (2 pad + 1)^2 variants per example (162 for pad 4). The cache
holds all of them, computed once, so a student trains at student-only cost:

    python -m zkd.logit_cache --teacher workdirs/cifar100/ce/resnet32x4/seed0 \\
        --teacher_name resnet32x4 --dataset cifar100 --output caches/cifar100-resnet32x4

(``--teacher`` is anything ``config.teacher.checkpoint`` accepts: a ``python -m zkd.convert``
directory, a PyTorch ``.pth``, or a zkd run's workdir; ``--data_dir`` as for training.)

A cache is a directory holding

    logits.npy   float16 [N, V, K]  (np.lib.format, memory-mapped when read): row
                 ``[index, variant_index(dy, dx, flip, pad)]`` holds the teacher's logits of
                 example ``index`` of the training split (``zkd.data.load_arrays`` order)
                 cropped at (dy, dx) of its pad-zero-padded copy and flipped where ``flip``
    meta.json    {"format_version", "hash", "teacher_name", "dataset", "num_examples",
                  "num_variants", "num_classes", "pad", "image_shape", "dtype",
                  "build_seconds", "zkd_version"}

``hash`` (``content_hash``) covers the teacher's variables, the uint8 images and labels, the
dataset's pad and normalization and the format version; a reader names the hash it expects,
so a cache of another teacher or other data is refused (``StaleCacheError``), never used. A
build writes into ``<directory>.tmp-<pid>`` and renames it when complete, so an interrupted
build never looks like a cache.

In a bucket (``gs://...``, zkd.paths): a build writes into a local temporary directory, then
uploads ``logits.npy`` and, last, ``meta.json`` (each upload appears whole): a directory
without ``meta.json`` is not a cache, and one holding only ``logits.npy`` (an interrupted
upload) is overwritten by the next build. An object cannot be memory-mapped, so ``open``
downloads ``logits.npy`` once into a local directory named by the cache's ``meta.json``
(``$ZKD_CACHE_DIR``, default ``~/.cache/zkd``, then ``logit_caches/<sha256 of meta.json>/``)
and maps that copy; a later run of the same cache reuses it.

Training with it (the trainer's side): read the stream with ``augmentation_params=True``
(``zkd.data.train_batches``), then ``attach_teacher_logits(batches, cache)`` replaces the
augmentation parameters with ``"teacher_logits"`` float32 [b, K], which ``zkd.step`` uses in
place of a teacher forward pass. One view only: MLKD's strong view (RandAugment) and ImageNet's
random-resized crops are not a finite set of variants.

Precision: the logits are computed in float32 (matmul precision "highest", so a GPU's TF32 does
not round them) and stored as float16: relative error <= 2^-11 for |logit| >= 2^-14, absolute
<= 2^-25 below; a logit beyond float16's range (65504) fails the build.
"""

from __future__ import annotations

import errno
import functools
import glob
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import zkd
from zkd import paths, xla_options
from zkd.data import device
from zkd.data.info import DatasetInfo, get_info
from zkd.data.pipeline import AUGMENTATION_PARAMS
from zkd.errors import ZkdError

FORMAT_VERSION = 1
LOGITS_FILE = "logits.npy"
META_FILE = "meta.json"
DEFAULT_BATCH_SIZE = 2048  # teacher forward passes (variant images) per device call


class StaleCacheError(ZkdError, ValueError):
    """The cache on disk was built for another teacher, other data or another format version."""


class CacheNotFoundError(ZkdError, FileNotFoundError):
    """No complete cache at the directory (never built, or the build was interrupted)."""


class CacheExistsError(ZkdError, FileExistsError):
    """A build would overwrite a complete cache of other content, or a directory that is not a cache."""


# ----------------------------------------------------------------------------- variants


def num_variants(pad: int) -> int:
    """V = 2 (2 pad + 1)^2: crop offsets (dy, dx) in [0, 2 pad]^2, times flip."""
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    return 2 * (2 * pad + 1) ** 2


def variant_index(dy, dx, flip, pad: int) -> np.ndarray:
    """The variant v = (dy (2 pad + 1) + dx) 2 + flip of crop offsets and flips.

    Args:
      dy, dx: int [...] crop offsets in [0, 2 pad] (the top-left corner of the crop in the
        pad-zero-padded image, as ``zkd.data.transforms.crop_flip_from_uniform`` draws them).
      flip: bool [...] (or 0/1), mirror left-right.
      pad: the dataset's padding (``DatasetInfo.pad``).

    Returns:
      int32 [...] in [0, num_variants(pad)).

    Raises:
      ValueError: an offset outside [0, 2 pad] or a flip other than 0/1.
    """
    n = 2 * pad + 1
    dy, dx, flip = np.asarray(dy), np.asarray(dx), np.asarray(flip)
    for name, x, hi in (("dy", dy, n - 1), ("dx", dx, n - 1), ("flip", flip, 1)):
        if x.size and (np.min(x) < 0 or np.max(x) > hi):
            raise ValueError(f"{name} must be in [0, {hi}] for pad {pad}; got values in [{np.min(x)}, {np.max(x)}]")
    return ((dy.astype(np.int32) * n + dx.astype(np.int32)) * 2 + flip.astype(np.int32)).astype(np.int32)


def variant_params(v, pad: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inverse of ``variant_index``: int [...] -> (dy int32 [...], dx int32 [...], flip bool [...])."""
    v = np.asarray(v)
    if v.size and (np.min(v) < 0 or np.max(v) >= num_variants(pad)):
        raise ValueError(f"variant must be in [0, {num_variants(pad)}) for pad {pad}; got [{np.min(v)}, {np.max(v)}]")
    offset, flip = np.divmod(v.astype(np.int32), 2)
    dy, dx = np.divmod(offset, 2 * pad + 1)
    return dy.astype(np.int32), dx.astype(np.int32), flip.astype(bool)


# ----------------------------------------------------------------------------- content hash


def content_hash(teacher_name: str, teacher_variables: Any, images: np.ndarray, labels: np.ndarray,
                 dataset: str | DatasetInfo) -> str:
    """sha256 (hex) of everything a cache's values depend on.

    Covers: the format version; the teacher's name; every leaf of ``teacher_variables`` in
    JAX's canonical tree order (sorted dict keys) as (path, dtype, shape, bytes); the uint8
    images [N, H, W, C] and labels [N] (as int32); the dataset's name, pad and normalization
    mean / std. Any changed weight, pixel or label gives another hash. One pass over the bytes,
    cheap next to training, so every run that opens a cache recomputes it.
    """
    info = get_info(dataset)
    images, labels = _check_arrays(images, labels, info)
    h = hashlib.sha256()

    def put(tag: str, payload: bytes | np.ndarray) -> None:  # length-prefixed: fields never run together
        if isinstance(payload, np.ndarray):  # its raw bytes, without a copy when contiguous
            payload = memoryview(np.ascontiguousarray(payload).reshape(-1).view(np.uint8))
        h.update(tag.encode() + b"\0" + len(payload).to_bytes(8, "little"))
        h.update(payload)

    header = {"format_version": FORMAT_VERSION, "teacher_name": teacher_name, "dataset": info.name,
              "pad": info.pad, "mean": list(info.mean), "std": list(info.std)}
    put("header", json.dumps(header, sort_keys=True).encode())
    leaves, _ = jax.tree_util.tree_flatten_with_path(teacher_variables)
    for path, leaf in leaves:
        leaf = np.ascontiguousarray(np.asarray(leaf))
        put("leaf", json.dumps([jax.tree_util.keystr(path), str(leaf.dtype), list(leaf.shape)]).encode())
        put("value", leaf)
    put("images", json.dumps(list(images.shape)).encode())
    put("image_bytes", images)
    put("labels", labels.astype(np.int32))
    return h.hexdigest()


def _check_arrays(images, labels, info: DatasetInfo) -> tuple[np.ndarray, np.ndarray]:
    images = np.ascontiguousarray(images)
    labels = np.asarray(labels)
    if images.dtype != np.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != tuple(info.image_shape):
        raise ValueError(f"images must be uint8 [N, {', '.join(map(str, info.image_shape))}] for {info.name} "
                         f"(as zkd.data.load_arrays returns them); got {images.dtype} {list(images.shape)}")
    if labels.shape != images.shape[:1] or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be int [{images.shape[0]}]; got {labels.dtype} {list(labels.shape)}")
    return images, labels


# ----------------------------------------------------------------------------- building


def make_variant_logits_fn(teacher_apply_fn: Callable, dataset: str | DatasetInfo) -> Callable:
    """A jitted ``fn(variables, images) -> logits`` over every variant of a chunk of examples.

    Args of ``fn``:
      variables: the teacher's variables (float32).
      images: uint8 [e, H, W, C], raw training images.

    Returns of ``fn``: float32 [e, V, K]; ``[i, v]`` is the eval-mode teacher on image i padded,
    cropped and flipped as variant v (``zkd.data.device.pad_crop_flip``) and normalized
    (``zkd.data.device.device_normalize``): the training pipeline's semantics. Float32 math,
    matmul precision "highest".
    """
    info = get_info(dataset)
    if not info.in_memory:
        raise ValueError(f"a teacher-logit cache needs an in-memory dataset with crop/flip augmentation; "
                         f"{info.name} streams random-resized crops, which cannot be enumerated")
    dy, dx, flip = variant_params(np.arange(num_variants(info.pad)), info.pad)
    v = dy.shape[0]

    @functools.partial(jax.jit, compiler_options=xla_options.compiler_options())
    def fn(variables, images):
        e = images.shape[0]
        x = jnp.repeat(images, v, axis=0)  # [e V, H, W, C], example-major
        x = device.pad_crop_flip(x, jnp.tile(dy, e), jnp.tile(dx, e), jnp.tile(flip, e), info.pad)
        with jax.default_matmul_precision("highest"):
            logits = teacher_apply_fn(variables, device.device_normalize(x, info), train=False)
        return logits.astype(jnp.float32).reshape(e, v, -1)

    return fn


def build_cache(
    directory: str | os.PathLike,
    teacher_apply_fn: Callable,
    teacher_variables: Any,
    teacher_name: str,
    images: np.ndarray,
    labels: np.ndarray,
    dataset: str | DatasetInfo,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = True,
) -> dict:
    """Computes and writes the cache of ``teacher`` over every variant of ``images``.

    Args:
      directory: the cache directory to create.
      teacher_apply_fn: the teacher module's ``apply`` (built with float32 compute, the
        ``zkd.models.build`` default); called as ``apply(variables, x, train=False)``.
      teacher_variables: its ``{"params", "batch_stats"}``; floating leaves are cast to float32.
      teacher_name: the architecture's name (recorded and hashed).
      images: uint8 [N, H, W, C], the training split as ``zkd.data.load_arrays`` returns it.
      labels: int [N] (hashed only: they identify the data).
      dataset: name or ``DatasetInfo`` (pad and normalization).
      batch_size: teacher forward passes per device call, rounded down to whole examples
        (a multiple of V, at least V, at most N V). One device (JAX's default) computes.
      progress: print progress lines on stdout (about every 10 s).

    Returns:
      the cache's ``meta.json`` as a dict. When ``directory`` already holds a complete cache
      with the same hash nothing is computed and its meta is returned.

    Raises:
      CacheExistsError: ``directory`` holds a cache of other content, or is not a cache.
    ``directory`` may be in a bucket (``gs://...``): see the module's docstring.
      ValueError: bad arrays, a dataset without crop/flip augmentation, or a teacher logit
        that is not finite in float16.
      Whatever the teacher raises; an interrupted build leaves no complete-looking cache.
    """
    directory = paths.absolute(directory)
    info = get_info(dataset)
    images, labels = _check_arrays(images, labels, info)
    fn = make_variant_logits_fn(teacher_apply_fn, info)  # validates the dataset
    digest = content_hash(teacher_name, teacher_variables, images, labels, info)
    existing = _existing_cache(directory, digest)
    if existing is not None:
        if progress:
            print(f"logit cache {directory} is up to date (hash {digest[:12]})", flush=True)
        return existing

    n, v = images.shape[0], num_variants(info.pad)
    if n == 0:
        raise ValueError("no images to cache")
    per_call = min(n, max(1, int(batch_size) // v))  # examples per device call
    variables = jax.tree.map(
        lambda x: jnp.asarray(x, jnp.float32) if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating) else jnp.asarray(x),
        teacher_variables)
    remote = paths.is_remote(directory)
    if remote:  # built locally, then uploaded (_upload)
        tmp = tempfile.mkdtemp(prefix="zkd-logit-cache-")
    else:
        tmp = f"{directory}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)  # a leftover of an earlier process with our pid
        os.makedirs(tmp)
    start_time = last_print = time.perf_counter()
    try:
        logits = None  # float16 [n, v, K] memmap, created when K is known

        def write(first: int, count: int, result: jax.Array) -> None:
            nonlocal logits, last_print
            values = np.asarray(result)[:count]  # waits for the device
            if logits is None:
                logits = np.lib.format.open_memmap(
                    os.path.join(tmp, LOGITS_FILE), mode="w+", dtype=np.float16, shape=(n, v, values.shape[-1]))
            half = values.astype(np.float16)
            if not np.all(np.isfinite(half)):
                bad = first + int(np.argwhere(~np.isfinite(half))[0][0])
                raise ValueError(f"the teacher's logits of example {bad} are not finite in float16 (|logit| > "
                                 f"65504, or NaN/inf in float32: max |logit| {np.nanmax(np.abs(values)):.4g}); "
                                 "check the teacher checkpoint")
            logits[first:first + count] = half
            now, done = time.perf_counter(), first + count
            if progress and (now - last_print >= 10.0 or done == n):
                rate = done * v / (now - start_time)
                print(f"logit cache: {done:,}/{n:,} examples ({done * v:,}/{n * v:,} teacher forwards), "
                      f"{rate:,.0f} images/s, {(n - done) * v / rate / 60:.1f} min left", flush=True)
                last_print = now

        pending = None  # one device call in flight while the host writes the previous one
        for start in range(0, n, per_call):
            chunk = images[start:start + per_call]
            rows = chunk.shape[0]
            if rows < per_call:  # one compiled shape: pad the last chunk, drop its padding rows
                chunk = np.concatenate([chunk, np.zeros((per_call - rows, *chunk.shape[1:]), np.uint8)])
            current = (start, rows, fn(variables, chunk))
            if pending is not None:
                write(*pending)
            pending = current
        write(*pending)
        logits.flush()
        num_classes = int(logits.shape[-1])
        del logits
        meta = {
            "format_version": FORMAT_VERSION,
            "hash": digest,
            "teacher_name": teacher_name,
            "dataset": info.name,
            "num_examples": int(n),
            "num_variants": int(v),
            "num_classes": num_classes,
            "pad": int(info.pad),
            "image_shape": list(info.image_shape),
            "dtype": "float16",
            "build_seconds": round(time.perf_counter() - start_time, 3),
            "zkd_version": zkd.__version__,
        }
        with open(os.path.join(tmp, META_FILE), "w") as f:
            json.dump(meta, f, indent=2, sort_keys=True)
            f.write("\n")
        if remote:
            _upload(tmp, directory, digest)
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            _publish(tmp, directory, digest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # ours: created above
        raise
    if progress:
        print(f"logit cache {directory}: {n:,} x {v} x {num_classes} float16 "
              f"({n * v * num_classes * 2 / 1e9:.2f} GB) in {meta['build_seconds']:.1f} s, hash {digest}", flush=True)
    return _read_meta(directory)


def _publish(tmp: str, directory: str, digest: str) -> None:
    """Rename the finished ``tmp`` to ``directory`` (replacing at most an empty directory)."""
    try:
        os.rename(tmp, directory)
    except OSError as err:
        if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
        if _existing_cache(directory, digest) is None:  # raises if another content appeared meanwhile
            raise CacheExistsError(f"{directory} appeared during the build and is not a logit cache") from None
        shutil.rmtree(tmp, ignore_errors=True)  # a concurrent build of the same content won


def _upload(tmp: str, directory: str, digest: str) -> None:
    """Upload the finished local ``tmp`` into the bucket ``directory``: ``meta.json`` last."""
    if _existing_cache(directory, digest) is not None:  # a concurrent build of the same content won
        return
    paths.copy_file(os.path.join(tmp, LOGITS_FILE), paths.join(directory, LOGITS_FILE))
    paths.copy_file(os.path.join(tmp, META_FILE), paths.join(directory, META_FILE))


def _existing_cache(directory: str, digest: str) -> dict | None:
    """The meta of a complete cache of ``digest`` at ``directory``; None when there is nothing to keep."""
    if not paths.exists(directory):
        return None
    if not paths.isdir(directory):
        raise CacheExistsError(f"{directory} exists and is not a directory; choose another --output")
    if not paths.exists(paths.join(directory, META_FILE)):
        # In a bucket a lone logits.npy is an interrupted upload (_upload): overwritten.
        leftover = {LOGITS_FILE} if paths.is_remote(directory) else set()
        if set(paths.listdir(directory)) - leftover:
            raise CacheExistsError(f"{directory} exists, is not empty, and is not a logit cache (no {META_FILE}); "
                                   "choose another --output or delete it yourself")
        return None
    meta = _read_meta(directory)
    if meta.get("hash") != digest:
        raise CacheExistsError(
            f"refusing to overwrite the logit cache in {directory}: it holds hash {meta.get('hash')} "
            f"({meta.get('teacher_name')} on {meta.get('dataset')}), this build's is {digest}. "
            "Choose another directory, or delete the old cache yourself (rm -r) if it is no longer needed")
    return meta


def _read_meta(directory: str) -> dict:
    return json.loads(paths.read_text(paths.join(directory, META_FILE)))


def local_copy_root() -> str:
    """Where caches read from a bucket are copied to be memory-mapped: ``$ZKD_CACHE_DIR``,
    default ``~/.cache/zkd``."""
    return os.environ.get("ZKD_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "zkd")


def _local_logits(directory: str, meta: dict) -> str:
    """A local file holding the cache's ``logits.npy``: itself, or for a cache in a bucket a copy
    downloaded once into ``local_copy_root()/logit_caches/<sha256 of its meta>/``."""
    source = paths.join(directory, LOGITS_FILE)
    if not paths.is_remote(directory):
        return source
    key = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:32]
    local_dir = os.path.join(local_copy_root(), "logit_caches", key)
    local = os.path.join(local_dir, LOGITS_FILE)
    if not os.path.exists(local):  # copy_file renames a complete download into place
        os.makedirs(local_dir, exist_ok=True)
        paths.copy_file(source, local)
    return local


# ----------------------------------------------------------------------------- reading


def build_command(output: str, teacher: str = "<teacher checkpoint>", teacher_name: str = "<teacher name>",
                  dataset: str = "<dataset>", data_dir: str | None = None) -> str:
    """The shell command that builds a cache (for error messages and logs)."""
    cmd = (f"python -m zkd.logit_cache --teacher {teacher} --teacher_name {teacher_name} "
           f"--dataset {dataset} --output {output}")
    return cmd + (f" --data_dir {data_dir}" if data_dir else "")


class TeacherLogitCache:
    """A complete cache, memory-mapped read-only.

    Attributes:
      directory: absolute path, or the bucket URL.
      logits: float16 [N, V, K] read-only memmap.
      meta: the cache's ``meta.json``.
    """

    def __init__(self, directory: str, logits: np.ndarray, meta: dict):
        self.directory, self.logits, self.meta = directory, logits, meta

    @classmethod
    def open(cls, directory: str | os.PathLike, expected_hash: str, rebuild_command: str | None = None
             ) -> "TeacherLogitCache":
        """Opens the cache at ``directory`` if it holds ``expected_hash`` (``content_hash``).

        ``rebuild_command``: the command that (re)builds it, quoted in errors (default: a
        template from ``build_command``). A cache in a bucket is downloaded once and the local
        copy memory-mapped (see the module's docstring).

        Raises:
          CacheNotFoundError: no complete cache there (names an interrupted build's leftover).
          StaleCacheError: the cache holds another hash (or format version): both hashes and
            the rebuild command.
          ValueError: ``logits.npy`` does not match ``meta.json`` (a damaged cache).
        """
        directory = paths.absolute(directory)
        command = rebuild_command or build_command(directory)
        meta_path = paths.join(directory, META_FILE)
        if not paths.exists(meta_path):
            leftovers = [] if paths.is_remote(directory) else sorted(glob.glob(glob.escape(directory) + ".tmp-*"))
            why = (f"an interrupted build left {', '.join(leftovers)} (delete it); " if leftovers else "")
            what = "is not a complete logit cache" if paths.isdir(directory) else "does not exist"
            raise CacheNotFoundError(f"teacher-logit cache {directory} {what} ({META_FILE} missing); "
                                     f"{why}build it with: {command}")
        meta = _read_meta(directory)
        if meta.get("hash") != expected_hash or meta.get("format_version") != FORMAT_VERSION:
            raise StaleCacheError(
                f"teacher-logit cache {directory} is stale: it was built for hash {meta.get('hash')} "
                f"(format {meta.get('format_version')}, {meta.get('teacher_name')} on {meta.get('dataset')}), but "
                f"the current teacher and data hash to {expected_hash} (format {FORMAT_VERSION}). The teacher's "
                f"weights, the images or the zkd format changed. Rebuild it into a new directory (or delete this "
                f"one first): {command}")
        logits = np.load(_local_logits(directory, meta), mmap_mode="r")
        want = (meta["num_examples"], meta["num_variants"], meta["num_classes"])
        if logits.shape != want or logits.dtype != np.float16:
            raise ValueError(f"teacher-logit cache {directory} is damaged: {LOGITS_FILE} is {logits.dtype} "
                             f"{list(logits.shape)}, {META_FILE} says float16 {list(want)}; rebuild it: {command}")
        return cls(directory, logits, meta)

    @property
    def num_examples(self) -> int:
        return int(self.meta["num_examples"])

    @property
    def num_classes(self) -> int:
        return int(self.meta["num_classes"])

    @property
    def pad(self) -> int:
        return int(self.meta["pad"])

    def lookup(self, index, dy, dx, flip) -> np.ndarray:
        """The cached teacher logits of examples ``index`` under crops (dy, dx) and flips.

        Args:
          index: int [b], rows of the training split; dy, dx: int [b] in [0, 2 pad]; flip: bool [b]
            (the "index", "crop_dy", "crop_dx", "flip" of an ``augmentation_params`` batch).

        Returns:
          float16 [b, K] (a copy, read from the memory map).
        """
        index = np.asarray(index)
        if index.size and (np.min(index) < 0 or np.max(index) >= self.num_examples):
            raise ValueError(f"index must be in [0, {self.num_examples}) for the cache in {self.directory}; "
                             f"got values in [{np.min(index)}, {np.max(index)}]")
        return np.asarray(self.logits[index, variant_index(dy, dx, flip, self.pad)])


def attach_teacher_logits(batches: Iterable[dict], cache: TeacherLogitCache) -> Iterator[dict]:
    """Serves the teacher from the cache: a training stream with its teacher logits.

    Args:
      batches: batches of ``zkd.data.train_batches(..., augmentation_params=True)``: "image",
        "label", "index", "crop_dy", "crop_dx", "flip" (b rows each).
      cache: an open ``TeacherLogitCache`` of the same training split.

    Yields:
      each batch without the augmentation parameters, plus ``"teacher_logits"`` float32 [b, K].

    Raises:
      ValueError: a batch without the augmentation parameters.
    """
    for batch in batches:
        missing = [k for k in AUGMENTATION_PARAMS if k not in batch]
        if missing:
            raise ValueError(f"batch lacks {missing}: read the training stream with augmentation_params=True "
                             "to serve teacher logits from the cache")
        out = {k: x for k, x in batch.items() if k not in AUGMENTATION_PARAMS}
        out["teacher_logits"] = cache.lookup(
            batch["index"], batch["crop_dy"], batch["crop_dx"], batch["flip"]).astype(np.float32)
        yield out


# ----------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    """``python -m zkd.logit_cache --teacher PATH --teacher_name NAME --dataset D --output DIR``."""
    import argparse

    import ml_collections

    parser = argparse.ArgumentParser(
        prog="python -m zkd.logit_cache",
        description="Precompute a frozen teacher's logits for every crop/flip variant of a CIFAR / "
                    "Fashion-MNIST training split (float16, memory-mapped when training).")
    parser.add_argument("--teacher", required=True,
                        help="teacher checkpoint: a zkd.convert directory, a PyTorch .pth, or a zkd run's workdir")
    parser.add_argument("--teacher_name", required=True, help="architecture, e.g. resnet32x4")
    parser.add_argument("--teacher_zoo", default="cifar", choices=("cifar", "imagenet"))
    parser.add_argument("--dataset", default="cifar100",
                        help="cifar100, cifar10, fashion_mnist, or tfds:NAME (an in-memory dataset of yours)")
    parser.add_argument("--data_dir", default=None, help="TFDS data directory (default: TFDS's)")
    parser.add_argument("--output", required=True, help="cache directory to create")
    parser.add_argument("--batch_size", type=int, default=DEFAULT_BATCH_SIZE,
                        help="teacher forward passes per device call")
    args = parser.parse_args(argv)

    from zkd import data
    from zkd.teacher import TeacherError, load_teacher

    try:
        info = data.resolve(args.dataset, args.data_dir)
        teacher_config = ml_collections.ConfigDict(dict(name=args.teacher_name, zoo=args.teacher_zoo,
                                                        checkpoint=args.teacher))
        model, variables = load_teacher(teacher_config, info.num_classes, info.image_shape)
        images, labels = data.load_arrays(info, args.data_dir, "train")
        meta = build_cache(args.output, model.apply, variables, args.teacher_name, images, labels, info,
                           batch_size=args.batch_size)
    except (TeacherError, data.DataNotFoundError, CacheExistsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"cache {paths.absolute(args.output)}, hash {meta['hash']}: serve it with "
          "zkd.logit_cache.TeacherLogitCache.open(directory, hash) and attach_teacher_logits")
    return 0


if __name__ == "__main__":
    sys.exit(main())
