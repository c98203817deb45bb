"""Stopping a run on request: SIGTERM (preemption, maintenance) and Ctrl-C.

Inside ``StopRequests`` a SIGTERM, or a first SIGINT, does not kill the run: it asks it to stop.
The loop (zkd.train) then finishes the step in flight, saves a checkpoint at that step, flushes
its metrics and raises ``Preempted``, which the ``zkd`` command turns into a one-line message
and exit status ``EXIT_CODE`` (75, EX_TEMPFAIL: "try again"). Running the same command again
resumes at that step, mid-epoch included, and ends as the uninterrupted run would have. A
second SIGINT aborts at once (KeyboardInterrupt).

Multi-host: every process must stop at the same step. A process that receives the signal
tells the others through the JAX coordination service (``jax.distributed``): each step, every
process asks ``multihost_utils.reached_preemption_sync_point(step)``, which answers True on all
processes at the same step once any of them was signalled. In a multi-process run SIGTERM is
left to JAX's own handler (it feeds that service); a first SIGINT is forwarded to it as SIGTERM.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Optional

import jax

from zkd.errors import ZkdError

EXIT_CODE = 75


class Preempted(ZkdError):
    """The run stopped on request after saving a checkpoint at ``step``; rerun to resume."""

    exit_code = EXIT_CODE

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


class StopRequests:
    """Context manager: turn SIGTERM / a first SIGINT into a request the loop polls.

    Outside the main thread (where Python cannot install handlers) it installs nothing and
    only ``request`` asks for a stop.
    """

    def __init__(self):
        self.signal_name: Optional[str] = None
        self._old: dict = {}
        self._multi = jax.process_count() > 1

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is not threading.main_thread():
            return self
        signals = (signal.SIGINT,) if self._multi else (signal.SIGTERM, signal.SIGINT)
        for sig in signals:
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old = {}

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.signal_name == "SIGINT":
            raise KeyboardInterrupt("second Ctrl-C: aborted without saving")
        self.signal_name = signal.Signals(signum).name
        if self._multi and signum == signal.SIGINT:
            os.kill(os.getpid(), signal.SIGTERM)  # JAX's handler tells the other processes

    def request(self, name: str = "request") -> None:
        """Ask for a stop as a signal would (e.g. from a callback or a test)."""
        self.signal_name = name

    def should_stop(self, step: int) -> bool:
        """Whether to stop after ``step`` steps; the same answer on every process."""
        if not self._multi:
            return self.signal_name is not None
        from jax.experimental import multihost_utils

        try:
            stop = multihost_utils.reached_preemption_sync_point(step)
        except RuntimeError:  # no preemption service (not started by jax.distributed)
            return False
        if stop and self.signal_name is None:
            self.signal_name = "SIGTERM"
        return stop
