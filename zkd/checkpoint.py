"""Orbax I/O for model variables: the one module that knows the orbax API.

A variables checkpoint is a directory holding

    variables/      orbax StandardCheckpointer output of ``{"params": ..., "batch_stats": ...}``
    metadata.json   what built them, e.g. ``{"model": "resnet32x4", "zoo": "cifar",
                    "num_classes": 100}``

``python -m zkd.convert`` writes one from a PyTorch checkpoint; a training config names such a
directory as its teacher and restores it with ``restore_variables``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from zkd.errors import ZkdError

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
    return _restore_to_host(os.path.join(directory, _VARIABLES)), metadata


def _restore_to_host(path: str) -> Any:
    """A saved pytree as host NumPy arrays, whatever devices wrote it (multi-host safe)."""
    with ocp.PyTreeCheckpointer() as checkpointer:
        tree = checkpointer.metadata(path).item_metadata.tree
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
        return checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=restore_args))


# ----------------------------------------------------------------------------- training runs
# A run's workdir holds two orbax CheckpointManagers of the student (never the teacher):
#   checkpoints/<step>/  the latest one, plus one every `keep_every_steps` steps
#   best/<step>/         the one with the best test accuracy so far
# each with items "state" (step, params, batch_stats, opt_state) and "meta" (JSON: epoch,
# best accuracy, ...). Orbax writes into a temporary directory and renames it when complete,
# so an interrupted save is never read back. Saves are asynchronous: a write that fails (a
# full disk) surfaces at the next save or wait, as CheckpointWriteError naming the directory,
# the cause and the complete checkpoint that a restart resumes from.

_LATEST, _BEST = "checkpoints", "best"


class CheckpointWriteError(ZkdError, OSError):
    """A training checkpoint could not be written (full disk, I/O error, ...).

    ``errno`` is the underlying error's; the earlier complete checkpoints are left as they were.
    """


def _os_error(err: BaseException) -> OSError | None:
    """The OSError behind ``err`` (itself, or in its cause / context chain), if any."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def write_error_message(directory: str, err: OSError, resume_step: int | None) -> str:
    """What failed while writing a checkpoint into ``directory`` (a run's ``checkpoints/`` or
    ``best/``), and how to go on; ``resume_step`` is the run's latest complete checkpoint."""
    what, fix = {
        errno.ENOSPC: ("no space left on the disk", "Free space on that disk"),
        errno.EDQUOT: ("the disk quota is used up", "Free space within the quota"),
    }.get(err.errno, ("the write failed", "Check that the disk is writable and healthy"))
    kept = (f"the latest complete checkpoint, step {resume_step}, is intact" if resume_step is not None
            else "there is no complete checkpoint yet, so a restart begins at step 0")
    workdir = os.path.dirname(directory)
    return (
        f"cannot write a checkpoint in {directory}: {what} ({err}). The run stops here; {kept}. "
        f"{fix}, or move {workdir} to a disk with room and pass that path as --workdir, then run the "
        "same command again to resume."
    )


def _complete_steps(directory: str) -> list[int]:
    try:
        return ocp.utils.checkpoint_steps(directory)
    except OSError:
        return []


def _tree_snapshot(paths: list[str]) -> set:
    snapshot = set()
    for top in paths:
        for root, _, files in os.walk(top):
            for name in files:
                with contextlib.suppress(OSError):
                    st = os.stat(os.path.join(root, name))
                    snapshot.add((root, name, st.st_size, st.st_mtime_ns))
    return snapshot


def _remove_unfinished_steps(directory: str, settle_seconds: float = 0.5, timeout_seconds: float = 30.0) -> None:
    """Delete orbax's temporary step directories in ``directory`` once nothing writes into them
    (unchanged for ``settle_seconds``, waiting at most ``timeout_seconds``). Complete steps are
    never touched; a temporary directory is never read back by orbax anyway."""
    def unfinished():
        with contextlib.suppress(OSError):
            return [os.path.join(directory, n) for n in os.listdir(directory) if ".orbax-checkpoint-tmp" in n]
        return []

    deadline = time.monotonic() + timeout_seconds
    before = _tree_snapshot(unfinished())
    while time.monotonic() < deadline:
        time.sleep(settle_seconds)
        now = _tree_snapshot(unfinished())
        if now == before:
            break
        before = now
    for path in unfinished():
        shutil.rmtree(path, ignore_errors=True)


def _manager(directory: str, max_to_keep: int, keep_period: int | None = None) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, keep_period=keep_period, create=True, cleanup_tmp_directories=True
    )
    return ocp.CheckpointManager(directory, options=options, item_names=("state", "meta"))


class TrainingCheckpoints:
    """Latest / periodic / best checkpoints of a training run in ``workdir``.

    After a CheckpointWriteError the object is closed: the run stops, and a restart makes a new one.
    """

    def __init__(self, workdir: str, keep_every_steps: int | None = None):
        workdir = os.path.abspath(workdir)
        self._latest = _manager(os.path.join(workdir, _LATEST), max_to_keep=1, keep_period=keep_every_steps)
        self._best = _manager(os.path.join(workdir, _BEST), max_to_keep=1)

    @contextlib.contextmanager
    def _named_write_errors(self, manager: ocp.CheckpointManager):
        """Turn an OSError of an orbax save or wait of ``manager`` into CheckpointWriteError."""
        try:
            yield
        except CheckpointWriteError:
            raise
        except Exception as err:
            cause = _os_error(err)
            if cause is None:
                raise
            steps = _complete_steps(os.fspath(self._latest.directory))  # where a restart resumes from
            message = write_error_message(os.fspath(manager.directory), cause, max(steps) if steps else None)
            error = CheckpointWriteError(message)
            error.errno = cause.errno
            self._close_after_failure()
            raise error from err

    def _close_after_failure(self) -> None:
        """Stop orbax's background threads after a failed write, and remove the failed step's
        temporary directories; the run ends with the error.

        When one item of a save fails, the other items' array writes (tensorstore) can go on in
        the background; they are let finish before their temporary directory is removed, so a
        restart in the same process never meets a half-written step.
        """
        for manager in (self._latest, self._best):
            with contextlib.suppress(Exception):
                manager.close()
            _remove_unfinished_steps(os.fspath(manager.directory))

    def latest_step(self) -> int | None:
        return self._latest.latest_step()

    def restore_latest(self, abstract_state: Any) -> tuple[Any, dict] | None:
        """(state, meta) of the latest complete checkpoint, or None when there is none.

        ``abstract_state``: the state's tree (arrays or ShapeDtypeStructs with shardings) to
        restore into.
        """
        step = self._latest.latest_step()
        if step is None:
            return None
        restored = self._latest.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()),
        )
        return restored["state"], dict(restored["meta"])

    def save(self, step: int, state: Any, meta: dict, is_best: bool) -> None:
        """Save the latest checkpoint (and the best one when ``is_best``); asynchronous.

        Raises:
          CheckpointWriteError: this save, or an earlier one still in flight, could not be
            written (the message names the directory, the cause and the step kept).
        """
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        with self._named_write_errors(self._latest):
            self._latest.save(step, args=args, force=True)
        if is_best:
            # One save in flight at a time: two concurrent orbax saves of the same arrays race.
            with self._named_write_errors(self._latest):
                self._latest.wait_until_finished()
            args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
            with self._named_write_errors(self._best):
                self._best.save(step, args=args, force=True)

    def wait(self) -> None:
        """Block until every save is on disk; raises CheckpointWriteError as ``save`` does."""
        for manager in (self._latest, self._best):
            with self._named_write_errors(manager):
                manager.wait_until_finished()

    def close(self) -> None:
        self._latest.close()
        self._best.close()


def restore_best_student(workdir: str) -> dict | None:
    """``{"params", "batch_stats"}`` of the student in a run's best checkpoint (host numpy), or None."""
    directory = os.path.join(os.path.abspath(workdir), _BEST)
    if not os.path.isdir(directory):
        return None
    manager = _manager(directory, max_to_keep=1)
    try:
        step = manager.latest_step()
        if step is None:
            return None
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    finally:
        manager.close()
    state = restored["state"]
    return {
        "params": jax.tree.map(np.asarray, state["params"]["student"]),
        "batch_stats": jax.tree.map(np.asarray, state["batch_stats"]),
    }
