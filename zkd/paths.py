"""Paths a user gives zkd: local files, or objects in a bucket (``gs://bucket/dir``).

The one module that knows path backends. Every helper takes a ``str`` or ``os.PathLike``; a
local path goes through ``os`` / ``open``, a URL (``gs://``, and etils'
other schemes, untested) through ``etils.epath``, as orbax and TFDS do.

Backend: for ``gs://`` etils.epath uses fsspec's ``gcsfs``, not TensorFlow's ``tf.io.gfile``:
``zkd/__init__.py`` sets ``EPATH_USE_TF=false`` unless the environment sets it. TensorFlow's
GCS filesystem has its endpoints compiled in (``https://www.googleapis.com/storage/v1/``),
so it cannot be pointed at an emulator and tested; gcsfs honours ``STORAGE_EMULATOR_HOST``.
Orbax's array data go through tensorstore, which reads ``TENSORSTORE_GCS_HTTP_URL``. What
still goes through TensorFlow's own filesystem is TFDS's record reading and writing (a
``data_dir`` in a bucket): untested against an emulator. ``tests/gcs_fixture.py`` lists the
variables that point every client at a local fake server.

Atomic writes: ``write_text_atomic`` and ``copy_file`` never leave half a file. Locally they
write a temporary file beside the target and rename it (``os.replace``); in a bucket one
object is uploaded and becomes visible whole when the upload completes (GCS replaces an
object atomically), so a reader sees the old object or the new one. A bucket has no
directories, no rename of a tree and no append: a directory exists while it holds an object.
Listings are not cached (gcsfs's ``use_listings_cache=False``), so what another process or
client wrote is seen at once.
"""

from __future__ import annotations

import builtins
import os
import posixpath
import shutil
from typing import IO

import fsspec.config
from etils import epath

# gcsfs caches directory listings forever by default: an object written by another process,
# by tensorstore or by another gcsfs instance would stay invisible. zkd lists rarely: no cache.
fsspec.config.conf.setdefault("gcs", {}).setdefault("use_listings_cache", False)

PathLike = str | os.PathLike

_URL_PREFIXES = ("gs://", "s3://", "az://", "hf://")
_CHUNK = 8 << 20  # bytes per read when copying


def is_remote(p: PathLike) -> bool:
    """True for a URL (``gs://...``), False for a local path."""
    return os.fspath(p).startswith(_URL_PREFIXES)


def path(p: PathLike) -> epath.Path:
    """``p`` as an ``etils.epath.Path`` (pathlib's interface for local paths and URLs)."""
    return epath.Path(os.fspath(p))


def join(p: PathLike, *parts: str) -> str:
    """``os.path.join`` for local paths; ``/``-joined for a URL."""
    if is_remote(p):
        return os.fspath(path(p).joinpath(*parts))
    return os.path.join(os.fspath(p), *parts)


def _split_url(p: PathLike) -> tuple[str, str]:
    """("gs://", "bucket/dir") of a URL."""
    scheme, rest = os.fspath(p).split("://", 1)
    return scheme + "://", rest


def normjoin(base: PathLike, relative: str) -> str:
    """``relative`` (``..`` allowed) resolved against ``base``: ``os.path.normpath(os.path.join(...))``
    locally; in a bucket the same on the URL's path (``os.path.normpath`` would turn ``gs://``
    into ``gs:/``)."""
    if is_remote(base):
        scheme, rest = _split_url(base)
        return scheme + posixpath.normpath(posixpath.join(rest, relative))
    return os.path.normpath(os.path.join(os.fspath(base), relative))


def relpath(p: PathLike, start: PathLike) -> str:
    """``os.path.relpath``; for two URLs of one bucket the relative path between them."""
    if is_remote(p) or is_remote(start):
        (scheme, rest), (start_scheme, start_rest) = _split_url(p), _split_url(start)
        if scheme != start_scheme or rest.split("/")[0] != start_rest.split("/")[0]:
            raise ValueError(f"no relative path from {start} to {p}")
        return posixpath.relpath("/" + rest, "/" + start_rest)
    return os.path.relpath(p, start)


def absolute(p: PathLike) -> str:
    """``os.path.abspath`` of a local path; a URL unchanged (without a trailing ``/``)."""
    if is_remote(p):
        return os.fspath(path(p))
    return os.path.abspath(os.fspath(p))


def exists(p: PathLike) -> bool:
    return path(p).exists() if is_remote(p) else os.path.exists(p)


def isdir(p: PathLike) -> bool:
    """A local directory; in a bucket, a prefix that holds at least one object."""
    return path(p).is_dir() if is_remote(p) else os.path.isdir(p)


def isfile(p: PathLike) -> bool:
    return path(p).is_file() if is_remote(p) else os.path.isfile(p)


def makedirs(p: PathLike, exist_ok: bool = True) -> None:
    """``os.makedirs``; in a bucket nothing to create (a directory is implied by its objects)."""
    if is_remote(p):
        path(p).mkdir(parents=True, exist_ok=exist_ok)
    else:
        os.makedirs(p, exist_ok=exist_ok)


def listdir(p: PathLike) -> list[str]:
    """The names directly inside ``p``."""
    if is_remote(p):
        return sorted(child.name for child in path(p).iterdir())
    return os.listdir(p)


def open(p: PathLike, mode: str = "r") -> IO:  # noqa: A001 (the module's file opener)
    """Open a file: ``open`` locally; in a bucket modes "r", "w" and "rb", "wb" (no append:
    an object is written whole, when the file is closed)."""
    if is_remote(p):
        return path(p).open(mode)
    return builtins.open(p, mode)


def read_text(p: PathLike) -> str:
    with open(p) as f:
        return f.read()


def write_text_atomic(p: PathLike, text: str) -> None:
    """Write ``text`` to ``p`` so that a reader sees the old content or the new one, never part:
    locally a temporary file and ``os.replace``; in a bucket one object upload."""
    if is_remote(p):
        with open(p, "w") as f:
            f.write(text)
        return
    tmp = f"{os.fspath(p)}.tmp.{os.getpid()}"
    try:
        with builtins.open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, p)
    except BaseException:
        _remove_quietly(tmp)
        raise


def create_exclusive(p: PathLike, text: str) -> bool:
    """Create the file ``p`` holding ``text`` unless it exists (then False): of two concurrent
    callers one wins. Locally ``O_CREAT | O_EXCL``; in a bucket an upload on the condition that
    no object of that name exists (``ifGenerationMatch=0``)."""
    if is_remote(p):
        import fsspec.core  # etils.epath has no exclusive mode; its gcsfs file system has

        fs, name = fsspec.core.url_to_fs(os.fspath(p))
        try:
            fs.pipe_file(name, text.encode(), mode="create")
        except FileExistsError:
            return False
        return True
    try:
        fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return True


def copy_file(src: PathLike, dst: PathLike) -> None:
    """Copy one file, local or remote either side; ``dst`` appears whole (see ``write_text_atomic``)."""
    if is_remote(dst):
        with open(src, "rb") as fin, open(dst, "wb") as fout:
            shutil.copyfileobj(fin, fout, _CHUNK)
        return
    tmp = f"{os.fspath(dst)}.tmp.{os.getpid()}"
    try:
        with open(src, "rb") as fin, builtins.open(tmp, "wb") as fout:
            shutil.copyfileobj(fin, fout, _CHUNK)
        os.replace(tmp, dst)
    except BaseException:
        _remove_quietly(tmp)
        raise


def remove(p: PathLike) -> None:
    """Delete one file (FileNotFoundError if there is none)."""
    if is_remote(p):
        path(p).unlink()
    else:
        os.remove(p)


def rmtree(p: PathLike, ignore_errors: bool = False) -> None:
    """Delete a directory and everything in it (``ignore_errors``: as ``shutil.rmtree``'s)."""
    if not is_remote(p):
        shutil.rmtree(p, ignore_errors=ignore_errors)
        return
    try:
        path(p).rmtree()
    except OSError:
        if not ignore_errors:
            raise


def _remove_quietly(p: str) -> None:
    try:
        os.remove(p)
    except OSError:
        pass
