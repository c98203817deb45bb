"""Two processes on loopback (jax.distributed, CPU collectives), preempted mid-epoch and resumed,
follow the one-process trajectory."""

import os
import re
import socket
import subprocess
import sys

import numpy as np

from tests.train_fixtures import save_random_teacher
from zkd import metrics_io

WORKER = os.path.join(os.path.dirname(__file__), "multihost_worker.py")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(workdir, teacher, pid, nproc, port, ndev, sigterm_at=-1):
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    return subprocess.Popen(
        [sys.executable, WORKER, workdir, teacher, str(pid), str(nproc), str(port), str(ndev), str(sigterm_at)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )


def _run_both(tmp_path, teacher, sigterm_at=-1):
    port = _free_port()
    procs = [_launch(str(tmp_path / "multi"), teacher, pid, 2, port, 2, sigterm_at) for pid in (0, 1)]
    return procs, [p.communicate(timeout=600)[0] for p in procs]


def test_two_processes_preempted_and_resumed_match_one_process(tmp_path):
    """Both processes get SIGTERM in the middle of epoch 2 (the batch of step 3): they agree on one
    step through JAX's coordination service, save it, exit 75; rerun, they end as one process."""
    teacher = save_random_teacher(str(tmp_path / "teacher"))
    single = _launch(str(tmp_path / "single"), teacher, 0, 1, 0, 4)
    out, _ = single.communicate(timeout=600)
    assert single.returncode == 0, out[-3000:]
    procs, outs = _run_both(tmp_path, teacher, sigterm_at=9)
    steps = set()
    for p, o in zip(procs, outs):
        assert p.returncode == 75, o[-3000:]
        steps.add(re.search(r"stopped on SIGTERM after step (\d+)", o).group(1))
    assert len(steps) == 1 and 3 < int(steps.pop()) < 6, outs  # the same step, inside epoch 2
    procs, outs = _run_both(tmp_path, teacher)
    for p, o in zip(procs, outs):
        assert p.returncode == 0, o[-3000:]
    one = metrics_io.read_metrics(str(tmp_path / "single"))
    two = metrics_io.read_metrics(str(tmp_path / "multi"))
    assert [r["kind"] for r in one] == [r["kind"] for r in two]
    for a, b in zip(one, two):
        for key in ("loss", "top1", "count", "grad_norm", "param_norm", "agreement"):
            if key in a:
                np.testing.assert_allclose(b[key], a[key], rtol=2e-4, err_msg=f"{a['kind']} step {a['step']} {key}")
    assert [r["count"] for r in two if r["kind"] == "eval"] == [64.0, 64.0]
