"""Where metrics go: JSON lines, TensorBoard, and a console progress line. Process 0 writes.

The workdir may be a bucket (``gs://...``, zkd.paths). An object cannot be appended to, so
there ``metrics.jsonl`` is kept in memory and uploaded whole after each record (each upload
replaces the object at once: a reader sees every record up to some write); TensorBoard writes
its event file into a local temporary directory, and the file is uploaded to
``workdir/tensorboard/`` after each flush and at ``close``. A local workdir is appended to in
place.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import sys
import tempfile
import time
from typing import Optional

import jax

from zkd import paths


# Bookkeeping fields of a record (how many test images, which epoch): in metrics.jsonl, not plotted.
NOT_CURVES = ("count", "epoch")


class MetricWriter:
    """Appends ``{"step": s, "kind": k, **scalars}`` to ``workdir/metrics.jsonl`` and TensorBoard.

    Only process 0 writes; other processes get a writer that does nothing.
    """

    def __init__(self, workdir: str, tensorboard: bool = True):
        self._active = jax.process_index() == 0
        self._path = paths.join(workdir, "metrics.jsonl")
        self._remote = paths.is_remote(workdir)
        self._text: Optional[str] = None  # in a bucket: the object's content, uploaded whole
        self._tb = None
        self._tb_upload: Optional[tuple[str, str, dict]] = None  # (local dir, bucket dir, uploaded sizes)
        if self._active and tensorboard:
            from flax.metrics import tensorboard as flax_tb

            log_dir = paths.join(workdir, "tensorboard")
            if self._remote:
                local = tempfile.mkdtemp(prefix="zkd-tensorboard-")
                self._tb_upload, log_dir = (local, log_dir, {}), local
            self._tb = flax_tb.SummaryWriter(log_dir)

    def write(self, step: int, kind: str, scalars: dict) -> None:
        if not self._active:
            return
        record = {"step": int(step), "kind": kind}
        record.update({k: float(v) for k, v in scalars.items()})
        line = json.dumps(record, allow_nan=True) + "\n"
        if self._remote:
            self._text = self._read() + line
            paths.write_text_atomic(self._path, self._text)
        else:
            with open(self._path, "a") as f:
                f.write(line)
        if self._tb is not None:
            for k, v in scalars.items():
                if math.isfinite(float(v)) and k not in NOT_CURVES:
                    self._tb.scalar(f"{kind}/{k}", float(v), int(step))
            self._tb.flush()
            self._upload_tensorboard()

    def _read(self) -> str:
        """The file's content (in a bucket read once, then kept)."""
        if self._remote and self._text is not None:
            return self._text
        text = paths.read_text(self._path) if paths.exists(self._path) else ""
        if self._remote:
            self._text = text
        return text

    def _upload_tensorboard(self) -> None:
        if self._tb_upload is None:
            return
        local, remote, uploaded = self._tb_upload
        for name in sorted(os.listdir(local)):
            size = os.path.getsize(os.path.join(local, name))
            if uploaded.get(name) != size:
                paths.copy_file(os.path.join(local, name), paths.join(remote, name))
                uploaded[name] = size

    def truncate_after(self, step: int) -> int:
        """Drop records past ``step`` (left by a run killed after its last checkpoint), and the
        teacher record too when nothing was checkpointed (``step == 0``), so a resumed run's
        metrics.jsonl equals an uninterrupted one's. Returns how many records went."""
        if not self._active or not paths.exists(self._path):
            return 0
        lines = [line for line in io.StringIO(self._read()) if line.strip()]
        keep = []
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut by the kill
                continue
            if record["step"] <= step and not (step == 0 and record.get("kind") == "teacher"):
                keep.append(line if line.endswith("\n") else line + "\n")
        if len(keep) != len(lines):
            paths.write_text_atomic(self._path, "".join(keep))
            if self._remote:
                self._text = "".join(keep)
        return len(lines) - len(keep)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._tb_upload is not None:
            self._upload_tensorboard()
            shutil.rmtree(self._tb_upload[0], ignore_errors=True)
            self._tb_upload = None


def read_metrics(workdir: str, kind: Optional[str] = None) -> list[dict]:
    """The records of ``workdir/metrics.jsonl`` (of one ``kind`` if given)."""
    path = paths.join(workdir, "metrics.jsonl")
    if not paths.exists(path):
        return []
    records = [json.loads(line) for line in io.StringIO(paths.read_text(path)) if line.strip()]
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
