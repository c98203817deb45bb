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


def persist_this_process_programs():
    """Let a process other than 0 write the persistent compilation cache entries of the programs
    that run on its own devices only.

    JAX writes cache entries from process 0 only. On CPU a program's key holds its devices, so
    the programs process 1 runs on its own devices (the models' op-by-op initialization: about
    120 of them) are never written and are compiled again at every start of process 1 (about
    30 s of CPU, the longest part of its start, which process 0 waits for). Programs over the
    devices of both processes are left to process 0, as JAX does. A hit is the executable the
    compiler would have produced: what the processes run is unchanged. Without these JAX
    internals (another JAX version) nothing is changed.
    """
    import threading
    import warnings

    import numpy as np

    try:
        from jax._src import compilation_cache, compiler
        original_compile, original_write = compiler.compile_or_get_cached, compiler._cache_write
        compilation_cache.put_executable_and_time  # noqa: B018 (present)
    except (ImportError, AttributeError):
        return
    own = threading.local()

    def compile_or_get_cached(*args, **kwargs):  # (backend, computation, devices, ...)
        devices = args[2] if len(args) > 2 else kwargs.get("devices")
        own.devices = devices is not None and all(d.process_index == jax.process_index() for d in np.ravel(devices))
        try:
            return original_compile(*args, **kwargs)
        finally:
            own.devices = False

    def cache_write(*args, **kwargs):
        if not getattr(own, "devices", False) or len(args) != 6 or kwargs:
            return original_write(*args, **kwargs)
        cache_key, compile_time_secs, module_name, backend, executable, host_callbacks = args
        if host_callbacks or compile_time_secs < jax.config.jax_persistent_cache_min_compile_time_secs:
            return original_write(*args)
        try:
            compilation_cache.put_executable_and_time(cache_key, module_name, executable, backend,
                                                      int(compile_time_secs))
        except Exception as err:  # as JAX does: a cache that cannot be written is no error
            warnings.warn(f"Error writing persistent compilation cache entry for {module_name!r}: {err!r}")

    compiler.compile_or_get_cached, compiler._cache_write = compile_or_get_cached, cache_write


if nproc > 1:
    parallel.initialize_distributed(f"127.0.0.1:{port}", nproc, pid)
    if pid != 0:
        persist_this_process_programs()

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
