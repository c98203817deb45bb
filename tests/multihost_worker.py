"""One process of the multi-host test: a tiny KD+LS run on synthetic CIFAR-100.

    python tests/multihost_worker.py WORKDIR TEACHER_DIR PROCESS_ID NUM_PROCESSES PORT DEVICES_PER_PROCESS [SIGTERM_AT]

With NUM_PROCESSES > 1 it joins a jax.distributed cluster on 127.0.0.1:PORT (CPU collectives
over gloo); process 0 writes WORKDIR/summary.json as usual. With SIGTERM_AT = N the process
sends itself SIGTERM when the loop asks for its (N+1)-th batch (train or eval). zkd's named
errors end the process as the zkd command does (a preempted run: exit 75).
"""

import os
import signal
import sys

workdir, teacher_dir, pid, nproc, port, ndev = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:7])
sigterm_at = int(sys.argv[7]) if len(sys.argv) > 7 else -1
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={ndev}"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")
from zkd import parallel, train  # noqa: E402

if nproc > 1:
    parallel.initialize_distributed(f"127.0.0.1:{port}", nproc, pid)

from tests.train_fixtures import mock_cifar100, tiny_config  # noqa: E402
from zkd.errors import ZkdError  # noqa: E402

if sigterm_at >= 0:
    original_global_batch, calls = parallel.global_batch, [0]

    def global_batch_then_sigterm(*a, **k):
        calls[0] += 1
        if calls[0] == sigterm_at + 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return original_global_batch(*a, **k)

    parallel.global_batch = global_batch_then_sigterm

try:
    with mock_cifar100():
        train.train_and_evaluate(tiny_config("kd", True, teacher_dir, epochs=2, steps=3, batch=16), workdir)
except ZkdError as err:
    print(f"process {pid}: error ({type(err).__name__}): {err.message()}", flush=True)
    sys.exit(err.exit_code)
print(f"process {pid}: done", flush=True)
