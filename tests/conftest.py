"""Test setup: several fake CPU devices, set before JAX is imported anywhere."""

import os

# Eight host devices so mesh / pmap / shard_map tests run on a CPU-only machine.
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent XLA compilation cache for the session: its xdist workers and the processes tests
# start (workers, the notebook's kernel, the command) share it, so a step that many tests build
# (same tiny model, same shapes) is compiled once. Keys hold the HLO, flags and versions: a hit is
# the executable the compiler would have produced.
import tempfile  # noqa: E402

os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), f"zkd-tests-xla-{os.getuid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# TensorFlow (tf.data only) must never grab an accelerator nor spam the log.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

# gs:// tests: a fake GCS server per session (per xdist worker) and a bucket per test.
from gcs_fixture import gcs_bucket, gcs_server  # noqa: E402, F401
# The real Fashion-MNIST, prepared once per session (tests/shared_data.py).
from shared_data import fashion_mnist_prepared  # noqa: E402, F401
