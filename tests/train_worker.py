"""A training process for the preemption tests: a tiny KD+LS run on synthetic CIFAR-100.

    python tests/train_worker.py WORKDIR TEACHER_DIR [--die_after_batches N | --die_in_checkpoint N
        | --signal_after_batches N --signal SIGTERM|SIGINT] [--checkpoint_every_steps K] [--sweep] [--seed S]
    python tests/train_worker.py WORKDIR TEACHER_DIR --then_sweep SWEEP_WORKDIR

--die_after_batches N: SIGKILL itself when the loop asks for its (N+1)-th batch (train or eval): mid-epoch.
--die_in_checkpoint N: SIGKILL itself while the N-th checkpoint is being written (orbax saves
asynchronously; the kill lands mid-write).
--signal_after_batches N: send itself --signal when the loop asks for its (N+1)-th batch.
--sweep: train a two-point sweep (kd_weight 1 and 5) instead of the single run.
--then_sweep SWEEP_WORKDIR: after the single run in WORKDIR, train that sweep in SWEEP_WORKDIR, in
the same process (no fault flags: the uninterrupted runs the tests compare with, one start for both).
zkd's named errors end the process as the zkd command does: message on stderr, their exit code.
"""

import argparse
import os
import signal
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

parser = argparse.ArgumentParser()
parser.add_argument("workdir")
parser.add_argument("teacher")
parser.add_argument("--die_after_batches", type=int, default=-1)
parser.add_argument("--die_in_checkpoint", type=int, default=-1)
parser.add_argument("--signal_after_batches", type=int, default=-1)
parser.add_argument("--signal", default="SIGTERM")
parser.add_argument("--checkpoint_every_steps", type=int, default=0)
parser.add_argument("--sweep", action="store_true")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--then_sweep", default="")
args = parser.parse_args()
faults = (args.die_after_batches, args.die_in_checkpoint, args.signal_after_batches)
if args.then_sweep and (args.sweep or max(faults) >= 0):
    parser.error("--then_sweep trains two uninterrupted runs: no --sweep, no fault")

from tests.train_fixtures import mock_cifar100, tiny_config  # noqa: E402
from zkd import checkpoint, parallel, sweep, train  # noqa: E402
from zkd.errors import ZkdError  # noqa: E402


def die():
    os.kill(os.getpid(), signal.SIGKILL)


def after_batches(n, action):
    """Run ``action`` when the loop asks for its (n+1)-th batch (global_batch: train and eval)."""
    original_global_batch = parallel.global_batch
    calls = {"n": 0}

    def global_batch_then(*a, **k):
        calls["n"] += 1
        if calls["n"] == n + 1:
            action()
        return original_global_batch(*a, **k)

    parallel.global_batch = global_batch_then


if args.die_after_batches >= 0:
    after_batches(args.die_after_batches, die)
if args.signal_after_batches >= 0:
    after_batches(args.signal_after_batches, lambda: os.kill(os.getpid(), getattr(signal, args.signal)))

if args.die_in_checkpoint >= 0:
    original_save = checkpoint.TrainingCheckpoints.save
    saves = {"n": 0}

    def save_then_die(self, step, state, meta, top1):
        saves["n"] += 1
        original_save(self, step, state, meta, top1)  # asynchronous: still writing
        if saves["n"] == args.die_in_checkpoint:
            die()

    checkpoint.TrainingCheckpoints.save = save_then_die

def make_config(sweep_run: bool):
    config = tiny_config("kd", True, args.teacher, epochs=3, steps=3, seed=args.seed)
    config.log_every_steps = 2  # a mid-epoch stop then leaves metrics not yet logged, which must carry over
    config.checkpoint_every_steps = args.checkpoint_every_steps
    if sweep_run:
        config.sweep.kd_weight = (1.0, 5.0)
    return config


def train_one(sweep_run: bool, workdir: str):
    if sweep_run:
        result = sweep.train_sweep(make_config(True), workdir)
        print("done", result["points"][0]["best_top1"], flush=True)
    else:
        summary = train.train_and_evaluate(make_config(False), workdir)
        print("done", summary["best_top1"], flush=True)


try:
    with mock_cifar100():
        train_one(args.sweep, args.workdir)
        if args.then_sweep:
            train_one(True, args.then_sweep)
except ZkdError as err:
    print(f"error ({type(err).__name__}): {err.message()}", file=sys.stderr, flush=True)
    sys.exit(err.exit_code)
