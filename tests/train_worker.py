"""A training process for the preemption tests: a tiny KD+LS run on synthetic CIFAR-100.

    python tests/train_worker.py WORKDIR TEACHER_DIR [--die_after_batches N | --die_in_checkpoint N] [--seed S]

--die_after_batches N: SIGKILL itself when the loop asks for its (N+1)-th batch (train or eval): mid-epoch.
--die_in_checkpoint N: SIGKILL itself while the N-th checkpoint is being written (orbax saves
asynchronously; the kill lands mid-write).
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
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()

from tests.train_fixtures import mock_cifar100, tiny_config  # noqa: E402
from zkd import checkpoint, parallel, train  # noqa: E402


def die():
    os.kill(os.getpid(), signal.SIGKILL)


if args.die_after_batches >= 0:
    original_global_batch = parallel.global_batch
    calls = {"n": 0}

    def global_batch_then_die(*a, **k):
        calls["n"] += 1
        if calls["n"] > args.die_after_batches:
            die()
        return original_global_batch(*a, **k)

    train.parallel.global_batch = global_batch_then_die  # the loop fetches one batch per step

if args.die_in_checkpoint >= 0:
    original_save = checkpoint.TrainingCheckpoints.save
    saves = {"n": 0}

    def save_then_die(self, step, state, meta, top1):
        saves["n"] += 1
        original_save(self, step, state, meta, top1)  # asynchronous: still writing
        if saves["n"] == args.die_in_checkpoint:
            die()

    checkpoint.TrainingCheckpoints.save = save_then_die

with mock_cifar100():
    summary = train.train_and_evaluate(tiny_config("kd", True, args.teacher, epochs=3, steps=3, seed=args.seed), args.workdir)
print("done", summary["best_top1"], flush=True)
