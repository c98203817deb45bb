"""Where metrics go: JSON lines, TensorBoard, and a console progress line. Process 0 writes."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Optional

import jax


class MetricWriter:
    """Appends ``{"step": s, "kind": k, **scalars}`` to ``workdir/metrics.jsonl`` and TensorBoard.

    Only process 0 writes; other processes get a writer that does nothing.
    """

    def __init__(self, workdir: str, tensorboard: bool = True):
        self._active = jax.process_index() == 0
        self._path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        if self._active and tensorboard:
            from flax.metrics import tensorboard as flax_tb

            self._tb = flax_tb.SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, kind: str, scalars: dict) -> None:
        if not self._active:
            return
        record = {"step": int(step), "kind": kind}
        record.update({k: float(v) for k, v in scalars.items()})
        with open(self._path, "a") as f:
            f.write(json.dumps(record, allow_nan=True) + "\n")
        if self._tb is not None:
            for k, v in scalars.items():
                if math.isfinite(float(v)):
                    self._tb.scalar(f"{kind}/{k}", float(v), int(step))
            self._tb.flush()

    def truncate_after(self, step: int) -> int:
        """Drop records past ``step`` (left by a run killed after its last checkpoint), and the
        teacher record too when nothing was checkpointed (``step == 0``), so a resumed run's
        metrics.jsonl equals an uninterrupted one's. Returns how many records went."""
        if not self._active or not os.path.exists(self._path):
            return 0
        with open(self._path) as f:
            lines = [line for line in f if line.strip()]
        keep = []
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut by the kill
                continue
            if record["step"] <= step and not (step == 0 and record.get("kind") == "teacher"):
                keep.append(line if line.endswith("\n") else line + "\n")
        if len(keep) != len(lines):
            tmp = self._path + ".tmp"
            with open(tmp, "w") as f:
                f.writelines(keep)
            os.replace(tmp, self._path)
        return len(lines) - len(keep)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(workdir: str, kind: Optional[str] = None) -> list[dict]:
    """The records of ``workdir/metrics.jsonl`` (of one ``kind`` if given)."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return [r for r in records if kind is None or r["kind"] == kind]


class ProgressBar:
    """A one-line console progress bar with images/s and ETA, shown only on a terminal."""

    def __init__(self, total_steps: int, images_per_step: int, enabled: bool = True):
        self.total = total_steps
        self.images_per_step = images_per_step
        self.enabled = enabled and jax.process_index() == 0 and sys.stderr.isatty()
        self._t0 = None
        self._s0 = 0

    def update(self, step: int, epoch: int, extra: str = "") -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if self._t0 is None:
            self._t0, self._s0 = now, step
            return
        done = step - self._s0
        rate = done / max(now - self._t0, 1e-9)
        eta = (self.total - step) / max(rate, 1e-9)
        frac = step / max(self.total, 1)
        bar = "#" * int(frac * 30)
        sys.stderr.write(
            f"\r[{bar:<30}] epoch {epoch} step {step}/{self.total} "
            f"{rate * self.images_per_step:8.0f} img/s  ETA {eta / 60:6.1f} min {extra}"
        )
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
