"""Orbax checkpoints: the one module that knows the orbax API.

It owns two kinds: a model's variables (a teacher, a converted PyTorch file) and a training
run's checkpoints (``TrainingCheckpoints``: every student's state in ``<workdir>/checkpoints``,
one orbax manager), and reading a run's best student back (``restore_best_student``).

A variables checkpoint is a directory holding

    variables/      orbax StandardCheckpointer output of ``{"params": ..., "batch_stats": ...}``
    metadata.json   what built them, e.g. ``{"model": "resnet32x4", "zoo": "cifar",
                    "num_classes": 100}``

``python -m zkd.convert`` writes one from a PyTorch checkpoint; a training config names such a
directory as its teacher and restores it with ``restore_variables``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import shutil
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from zkd import paths
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
    directory = paths.absolute(directory)
    if paths.exists(directory):
        raise FileExistsError(
            f"refusing to overwrite {directory}: it exists already; choose a new directory "
            "or delete it yourself")
    metadata_text = json.dumps(metadata, indent=2, sort_keys=True)
    paths.makedirs(directory)
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(paths.join(directory, _VARIABLES), variables)
        paths.write_text_atomic(paths.join(directory, _METADATA), metadata_text + "\n")
    except BaseException:
        paths.rmtree(directory, ignore_errors=True)  # ours: created above; no half checkpoint
        raise
    return directory


def restore_variables(directory: str | os.PathLike) -> tuple[Any, dict]:
    """``(variables, metadata)`` saved by ``save_variables`` in ``directory``.

    The variables come back as they were saved (same tree, shapes and dtypes), as NumPy arrays
    on the host; put them on devices as the caller needs.

    Raises:
      FileNotFoundError: ``directory`` is not a variables checkpoint (naming what is missing).
    """
    directory = paths.absolute(directory)
    for part in (_VARIABLES, _METADATA):
        if not paths.exists(paths.join(directory, part)):
            raise FileNotFoundError(
                f"{directory} is not a zkd variables checkpoint: {part} is missing "
                "(write one with `python -m zkd.convert` or zkd.checkpoint.save_variables)")
    with paths.open(paths.join(directory, _METADATA)) as f:
        metadata = json.load(f)
    return _restore_to_host(paths.join(directory, _VARIABLES)), metadata


def _host_restore_args(tree: Any) -> Any:
    """Restore arguments that read every array of a saved pytree (its metadata ``tree``) as a host
    NumPy array. Without them orbax restores each array with the sharding it was saved with,
    which names the devices of the run that wrote it: another process's, or devices that do not
    exist here."""
    return jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)


def _restore_to_host(path: str) -> Any:
    """A saved pytree as host NumPy arrays, whatever devices wrote it (multi-host safe)."""
    with ocp.PyTreeCheckpointer() as checkpointer:
        tree = checkpointer.metadata(path).item_metadata.tree
        return checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=_host_restore_args(tree)))


# ----------------------------------------------------------------------------- training runs
# A run's workdir holds one orbax CheckpointManager of its students (never the teacher):
#   checkpoints/<step>/  items "state" ({"students": [step, params, batch_stats, opt_state of each]}),
#                        "meta" (JSON: epoch, per-student best accuracy, ...) and orbax's "metrics"
#                        ({"top1": [one test top-1 per student]})
# One write per save; orbax's preservation policies decide what stays: the latest, one every
# `keep_every_steps` steps, and for each student the step of its best test top-1 (BestOfEach).
# Orbax writes into a temporary directory and renames it when complete, so an interrupted save
# is never read back. Saves are asynchronous: a write that fails (a full disk) surfaces at the
# next save or wait, as CheckpointWriteError naming the directory, the cause and the complete
# checkpoint that a restart resumes from.
# A student of a sweep (students/<point>/) holds a `sweep_member.json` pointing at the sweep's
# checkpoints and its index there; `restore_best_student` follows it.

_CHECKPOINTS, _OLD_BEST = "checkpoints", "best"
_SWEEP_MEMBER = "sweep_member.json"


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
    """What failed while writing a checkpoint into ``directory`` (a run's ``checkpoints/``), and
    how to go on; ``resume_step`` is the run's latest complete checkpoint."""
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
    never touched; a temporary directory is never read back by orbax anyway. (In a bucket orbax
    writes no temporary directories: a step counts once its commit marker exists.)"""
    if paths.is_remote(directory):
        return
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


def _first_best(checkpoints, j: int):
    """The first of ``checkpoints`` (with metrics) holding the highest top-1 of student ``j``."""
    best = None
    for info in checkpoints:
        if info.metrics is None or not info.metrics.get("top1"):  # a mid-epoch checkpoint: not evaluated
            continue
        value = info.metrics["top1"][j]
        if best is None or value > best.metrics["top1"][j]:
            best = info
    return best


@dataclasses.dataclass
class BestOfEach(ocp.checkpoint_managers.PreservationPolicy):
    """Orbax preservation policy: keep, for each student, the checkpoint of its best test top-1
    (the earliest one on ties), read from the checkpoint's metrics ``{"top1": [N floats]}``."""

    def should_preserve(self, checkpoints, *, context) -> list[bool]:
        keep = set()
        with_metrics = [c for c in checkpoints if c.metrics is not None and c.metrics.get("top1")]
        for j in range(len(with_metrics[0].metrics["top1"]) if with_metrics else 0):
            keep.add(_first_best(with_metrics, j).step)
        return [c.step in keep for c in checkpoints]


def _manager(directory: str, keep_every_steps: int | None = None, for_reading: bool = False) -> ocp.CheckpointManager:
    policies = [ocp.checkpoint_managers.LatestN(1), BestOfEach()]
    if keep_every_steps:
        policies.append(ocp.checkpoint_managers.EveryNSteps(keep_every_steps))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
        # best_fn makes orbax store the metrics; BestOfEach reads them.
        best_fn=lambda metrics: metrics["top1"][0] if metrics.get("top1") else float("-inf"),
        best_mode="max", create=not for_reading, cleanup_tmp_directories=not for_reading,
    )
    if for_reading:
        return _reading_manager(directory, options)
    return ocp.CheckpointManager(directory, options=options, item_names=("state", "meta"))


def _reading_manager(directory: str, options: ocp.CheckpointManagerOptions) -> ocp.CheckpointManager:
    """A manager that knows its items' handlers before any restore, so that their metadata can
    be read (``_restore_state_to_host``)."""
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    registry.add("state", ocp.args.PyTreeRestore, ocp.PyTreeCheckpointHandler)
    registry.add("meta", ocp.args.JsonRestore, ocp.JsonCheckpointHandler)
    return ocp.CheckpointManager(directory, options=options, handler_registry=registry)


def _restore_state_to_host(manager: ocp.CheckpointManager, step: int) -> Any:
    """Item "state" of ``step`` (of a ``_reading_manager``) as host NumPy arrays, whatever devices
    wrote it: every process of a multi-host run can read it."""
    restore_args = _host_restore_args(manager.item_metadata(step)["state"].tree)
    args = ocp.args.Composite(state=ocp.args.PyTreeRestore(restore_args=restore_args))
    return manager.restore(step, args=args)["state"]


class TrainingCheckpoints:
    """The checkpoints of a training run in ``workdir/checkpoints``: one manager, one write per save.

    After a CheckpointWriteError the object is closed: the run stops, and a restart makes a new one.
    """

    def __init__(self, workdir: str, keep_every_steps: int | None = None):
        self._manager = _manager(paths.join(paths.absolute(workdir), _CHECKPOINTS), keep_every_steps)

    @contextlib.contextmanager
    def _named_write_errors(self):
        """Turn an OSError of an orbax save or wait into CheckpointWriteError."""
        try:
            yield
        except CheckpointWriteError:
            raise
        except Exception as err:
            cause = _os_error(err)
            if cause is None:
                raise
            directory = os.fspath(self._manager.directory)
            steps = _complete_steps(directory)  # where a restart resumes from
            error = CheckpointWriteError(write_error_message(directory, cause, max(steps) if steps else None))
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
        with contextlib.suppress(Exception):
            self._manager.close()
        _remove_unfinished_steps(os.fspath(self._manager.directory))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def best_steps(self) -> list[int]:
        """For each student, the step of its best test top-1 among the kept checkpoints."""
        infos = [_StepInfo(s, self._manager.metrics(s)) for s in sorted(self._manager.all_steps())]
        with_metrics = [i for i in infos if i.metrics is not None and i.metrics.get("top1")]
        n = len(with_metrics[-1].metrics["top1"]) if with_metrics else 0
        return [_first_best(with_metrics, j).step for j in range(n)]

    def restore_latest(self, abstract_state: Any) -> tuple[Any, dict] | None:
        """(state, meta) of the latest complete checkpoint, or None when there is none.

        ``abstract_state``: the state's tree (arrays or ShapeDtypeStructs with shardings) to
        restore into.
        """
        step = self._manager.latest_step()
        if step is None:
            return None
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()),
        )
        return restored["state"], dict(restored["meta"])

    def save(self, step: int, state: Any, meta: dict, top1: list[float] | None) -> None:
        """Save ``state`` and ``meta`` at ``step`` with each student's test ``top1`` (which the
        best-checkpoint policy ranks; None for a checkpoint taken mid-epoch, without an
        evaluation: kept only while it is the latest); asynchronous, one write.

        Raises:
          CheckpointWriteError: this save, or an earlier one still in flight, could not be
            written (the message names the directory, the cause and the step kept).
        """
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        with self._named_write_errors():
            self._manager.save(step, args=args, metrics={"top1": [float(t) for t in top1 or ()]}, force=True)

    def wait(self) -> None:
        """Block until every save is on disk; raises CheckpointWriteError as ``save`` does."""
        with self._named_write_errors():
            self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()

    def settle(self) -> None:
        """After the run failed: let the saves in flight (of complete, earlier steps) finish, then
        close. Never raises, and may follow ``close``."""
        with contextlib.suppress(Exception):
            self._manager.wait_until_finished()
        with contextlib.suppress(Exception):
            self._manager.close()


@dataclasses.dataclass
class _StepInfo:
    step: int
    metrics: Any


def _student_variables(state: dict) -> dict:
    return {
        "params": jax.tree.map(np.asarray, state["params"]["student"]),
        "batch_stats": jax.tree.map(np.asarray, state["batch_stats"]),
    }


def restore_best_student(workdir: str) -> dict | None:
    """``{"params", "batch_stats"}`` (host numpy) of the student of run ``workdir`` at its best
    test top-1, or None when the run has no complete checkpoint.

    ``workdir`` may be a single run, or one student directory of a sweep (its
    ``sweep_member.json`` names the sweep's checkpoints and the student's index there).
    A run in the older layout (its best checkpoint in a separate ``best/`` folder) is read too.
    """
    workdir = paths.absolute(workdir)
    index = 0
    member = paths.join(workdir, _SWEEP_MEMBER)
    if paths.exists(member):
        with paths.open(member) as f:
            pointer = json.load(f)
        workdir, index = paths.normjoin(workdir, pointer["sweep_workdir"]), pointer["index"]
    old_best = paths.join(workdir, _OLD_BEST)
    if paths.isdir(old_best):
        return _restore_old_best(old_best)
    directory = paths.join(workdir, _CHECKPOINTS)
    if not paths.isdir(directory):
        return None
    manager = _manager(directory, for_reading=True)
    try:
        infos = [_StepInfo(s, manager.metrics(s)) for s in sorted(manager.all_steps())]
        best = _first_best([i for i in infos if i.metrics is not None], index) if infos else None
        if best is None:
            return None
        state = _restore_state_to_host(manager, best.step)
    finally:
        manager.close()
    return _student_variables(state["students"][index])


def write_sweep_member(student_dir: str, sweep_workdir: str, index: int, name: str) -> None:
    """Point the student directory of a sweep at the sweep's checkpoints (see restore_best_student)."""
    text = json.dumps({"sweep_workdir": paths.relpath(sweep_workdir, student_dir), "index": index,
                       "name": name}, indent=2)
    paths.write_text_atomic(paths.join(student_dir, _SWEEP_MEMBER), text + "\n")


def _restore_old_best(directory: str) -> dict | None:
    manager = _reading_manager(directory, ocp.CheckpointManagerOptions(create=False))
    try:
        step = manager.latest_step()
        if step is None:
            return None
        state = _restore_state_to_host(manager, step)
    finally:
        manager.close()
    return _student_variables(state)
