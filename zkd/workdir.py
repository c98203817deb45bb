"""A run's working directory: its config check, and the hold that keeps it to one writer.

``prepare_workdir`` creates the directory and writes ``config.json``, refusing a directory that
holds another run. ``WorkdirHold`` makes a run the only writer of its workdir for its lifetime:
a second launch on a held workdir stops at once with ``WorkdirBusyError`` naming the holder
(host, pid, start time) and writes nothing.

The hold is the file ``<workdir>/zkd-hold.json`` (process 0 of a run holds it), on a local disk
or in a bucket alike (zkd.paths):

- It is created exclusively (``O_CREAT | O_EXCL`` locally; in a bucket an upload conditioned on
  no object of that name existing, ``ifGenerationMatch=0``): of two launches one wins.
- It names the holder's host, pid, the pid's start time (so a reused pid is not mistaken for
  the holder) and a lease the holder renews every ``lease_seconds / 4`` from a thread.
- It is released when the run ends, by any exception included. After a ``kill -9`` or a crash
  it stays, but it is stale and the next launch takes it over: at once on the same host (the
  holder's pid is gone), and once the lease has expired (``lease_seconds`` without renewal)
  from another host sharing the directory.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import socket
import threading
import time
from typing import Optional

import jax
import ml_collections

from zkd import paths, recipes
from zkd.errors import ConfigError, ZkdError

HOLD_FILE = "zkd-hold.json"
LEASE_SECONDS = 60.0

# Config fields a resumed run may change (they do not change what is computed).
RESUMABLE_CHANGES = frozenset({
    "num_epochs", "log_every_steps", "progress_bar", "checkpoint_every_epochs", "checkpoint_every_steps",
    "data_dir", "num_devices", "teacher.checkpoint", "eval_batch_size", "steps_per_dispatch",
    "tensorboard",
})


class WorkdirBusyError(ZkdError, RuntimeError):
    """Another live run holds the workdir; nothing was written."""


# ----------------------------------------------------------------------------- config.json


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = list(v) if isinstance(v, tuple) else v
    return out


def write_json(path: str, value) -> None:
    """Write ``value`` as strict JSON, never half a file (zkd.paths.write_text_atomic: a temporary
    file and a rename locally, one whole object in a bucket). A NaN or infinity (a teacher run's
    agreement, say) is written as null: other tools' JSON readers refuse NaN."""
    paths.write_text_atomic(path, json.dumps(_finite_or_null(value), indent=2, allow_nan=False) + "\n")


def _finite_or_null(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(v) for v in value]
    return value


def make_writable(workdir: str) -> None:
    """Create ``workdir``; ConfigError naming it when it cannot be created or written."""
    try:
        paths.makedirs(workdir)
        probe = paths.join(workdir, f".write_test.{jax.process_index()}.{os.getpid()}")
        with paths.open(probe, "w") as f:
            f.write("ok")
        paths.remove(probe)
    except OSError as err:
        raise ConfigError(f"workdir {workdir!r} is not writable ({err}); choose another --workdir") from err


def prepare_workdir(config: ml_collections.ConfigDict, workdir: str, allow_config_change: bool = False) -> None:
    """Create ``workdir`` and write ``config.json``; refuse to resume a run with another config."""
    make_writable(workdir)
    path = paths.join(workdir, "config.json")
    current = json.loads(config.to_json())
    if paths.exists(path):
        with paths.open(path) as f:
            saved = json.load(f)
        a, b = _flatten(saved), _flatten(current)
        # A field added to zkd after the run started is no change while it holds its default.
        defaults = _flatten(json.loads(recipes.base_config().to_json()))
        added_at_default = {k for k in set(b) - set(a) if k in defaults and b[k] == defaults[k]}
        differ = sorted(k for k in set(a) | set(b)
                        if a.get(k) != b.get(k) and k not in RESUMABLE_CHANGES and k not in added_at_default)
        if differ and not allow_config_change:
            details = "; ".join(f"{k}: {a.get(k)!r} in the workdir vs {b.get(k)!r} now" for k in differ[:8])
            raise ConfigError(
                f"workdir {workdir} holds a different run ({details}). Use another --workdir, or pass "
                "--allow_config_change to resume it with the new config."
            )
    if jax.process_index() == 0:
        write_json(path, current)


# ----------------------------------------------------------------------------- the hold


def _pid_start(pid: int) -> Optional[str]:
    """The start time of process ``pid`` (clock ticks since boot, from /proc), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, start: Optional[str]) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    now = _pid_start(pid)
    return start is None or now is None or now == start


class WorkdirHold:
    """Context manager: hold ``workdir`` for one run (process 0; other processes hold nothing)."""

    def __init__(self, workdir: str, lease_seconds: float = LEASE_SECONDS):
        self.path = paths.join(workdir, HOLD_FILE)
        self.workdir = workdir
        self.lease_seconds = lease_seconds
        self._record: Optional[dict] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def __enter__(self) -> "WorkdirHold":
        if jax.process_index() != 0:
            return self
        self._record = {
            "host": socket.gethostname(), "pid": os.getpid(), "pid_start": _pid_start(os.getpid()),
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "renewed": time.time(), "lease_seconds": self.lease_seconds,
        }
        for _ in range(3):
            if self._create():
                break
            holder = self._read()
            if holder is not None and not self._stale(holder):
                raise WorkdirBusyError(
                    f"workdir {self.workdir} is in use by another zkd run (host {holder.get('host')}, pid "
                    f"{holder.get('pid')}, started {holder.get('started')}): nothing was written. Wait for that "
                    "run to end, stop it, or choose another --workdir. (A run that died leaves a stale hold, which "
                    f"the next launch takes over: at once on the same host, after {holder.get('lease_seconds')} s "
                    f"from another; {self.path} is the hold.)")
            self._remove_if(holder)  # stale (or vanished meanwhile): take it over
        else:
            raise WorkdirBusyError(f"could not take the hold {self.path}: it keeps changing; is another launch "
                                   "racing for this workdir?")
        self._thread = threading.Thread(target=self._renew, name="zkd-workdir-hold", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._record is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._remove_if(self._record, mine=True)
        self._record = None

    # --- internals
    def _create(self) -> bool:
        return paths.create_exclusive(self.path, json.dumps(self._record))

    def _read(self) -> Optional[dict]:
        try:
            with paths.open(self.path) as f:
                return json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # half-written by a holder that died while writing: stale

    def _stale(self, holder: dict) -> bool:
        if not holder:
            return True
        if holder.get("host") == socket.gethostname():
            return not _alive(int(holder.get("pid", -1)), holder.get("pid_start"))
        return time.time() - float(holder.get("renewed", 0)) > float(holder.get("lease_seconds", LEASE_SECONDS))

    def _remove_if(self, holder: Optional[dict], mine: bool = False) -> None:
        current = self._read()
        same = current is not None and (current == holder or (mine and current.get("pid") == os.getpid()
                                                              and current.get("host") == socket.gethostname()))
        if same or (current == {} and holder == {}):
            try:
                paths.remove(self.path)
            except FileNotFoundError:
                pass

    def _renew(self) -> None:
        while not self._stop.wait(self.lease_seconds / 4):
            self._record["renewed"] = time.time()
            try:
                write_json(self.path, self._record)
            except OSError:
                pass  # the next renewal tries again; the run itself goes on
