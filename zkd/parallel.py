"""Devices, meshes and shardings: the only module of zkd that knows about them.

One code path from one CPU to a TPU pod: ``jax.jit`` over a 1-D data-parallel mesh (axis
"data"). The train state is replicated, batches are sharded along their leading axis. Under
jit, the student's BatchNorm therefore normalizes over the *global* batch (what a single-GPU
CIFAR run does; XLA inserts the cross-device reductions), so results do not depend on the
number of devices.

Multi-host: ``initialize_distributed`` wraps ``jax.distributed.initialize``; every process
feeds its own slice of the global batch (``zkd.data`` yields them) and
``global_batch`` assembles the global ``jax.Array``.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from zkd import xla_options

DATA_AXIS = "data"


def initialize_distributed(
    coordinator_address: str = "", num_processes: int = 0, process_id: int = -1
) -> None:
    """Start multi-host JAX when asked to: by arguments, or by the environment variables
    ``ZKD_COORDINATOR_ADDRESS``, ``ZKD_NUM_PROCESSES``, ``ZKD_PROCESS_ID`` (explicit
    arguments win). Nothing happens when none is set (single process). On managed clusters
    (Cloud TPU, SLURM) set ``ZKD_DISTRIBUTED=auto`` to let JAX detect everything itself.
    """
    coordinator_address = coordinator_address or os.environ.get("ZKD_COORDINATOR_ADDRESS", "")
    num_processes = num_processes or int(os.environ.get("ZKD_NUM_PROCESSES", "0"))
    if process_id < 0:
        process_id = int(os.environ.get("ZKD_PROCESS_ID", "-1"))
    if os.environ.get("ZKD_DISTRIBUTED") == "auto":
        jax.distributed.initialize()
        return
    if not coordinator_address and num_processes <= 1:
        return
    if not coordinator_address or num_processes < 1 or process_id < 0:
        raise ValueError(
            "multi-host training needs all of coordinator_address, num_processes and process_id "
            f"(got {coordinator_address!r}, {num_processes}, {process_id}); set them by flag or "
            "ZKD_COORDINATOR_ADDRESS / ZKD_NUM_PROCESSES / ZKD_PROCESS_ID"
        )
    jax.distributed.initialize(
        coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
    )


def make_mesh(num_devices: Optional[int] = None) -> Mesh:
    """A 1-D data-parallel mesh over the first ``num_devices`` global devices (default: all)."""
    devices = jax.devices()
    n = len(devices) if num_devices is None else num_devices
    if not 1 <= n <= len(devices):
        raise ValueError(f"num_devices must be in [1, {len(devices)}], got {n}")
    return Mesh(np.asarray(devices[:n]), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(global_batch_size: int, mesh: Mesh, field: str = "batch_size") -> None:
    """Fail early, naming the config field, when the batch cannot be split over the devices."""
    n = mesh.devices.size
    if global_batch_size % n:
        raise ValueError(
            f"config.{field}={global_batch_size} is not divisible by the {n} devices of the mesh; "
            f"choose a multiple of {n} (e.g. {max(n, global_batch_size // n * n)})"
        )
    if global_batch_size % jax.process_count():
        raise ValueError(
            f"config.{field}={global_batch_size} is not divisible by the {jax.process_count()} processes"
        )


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
    """This process's part of a batch (numpy, leading axis = local examples) -> global arrays."""
    sharding = batch_sharded(mesh)
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local_batch.items()
    }


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Put a pytree, identical in every process, on every device of the mesh.

    Works across hosts: each process fills its own devices from its copy of the values.
    """
    sharding = replicated(mesh)

    def put(x):
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(put(jax.random.key_data(x)), impl=jax.random.key_impl(x))
        if isinstance(x, jax.Array) and x.sharding == sharding:
            return x
        value = np.asarray(x)
        return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])

    return jax.tree.map(put, tree)


def jit_train_step(train_step: Callable, mesh: Mesh, batch_replicated: bool = False) -> Callable:
    """jit ``train_step(state, batch) -> (state, metrics)``: state replicated and donated, batch
    sharded along its leading axis (or replicated, for device-resident datasets the step
    gathers from), state and metrics replicated."""
    rep = replicated(mesh)
    batch = rep if batch_replicated else batch_sharded(mesh)
    return jax.jit(train_step, in_shardings=(rep, batch), out_shardings=(rep, rep), donate_argnums=(0,),
                   compiler_options=xla_options.compiler_options(mesh.devices.flat))


def jit_eval_step(eval_step: Callable, mesh: Mesh) -> Callable:
    """jit ``eval_step(variables, batch)``: variables replicated, batch sharded along its
    leading axis. The outputs' shardings are left to the compiler (sums come out replicated,
    per-example outputs sharded like the batch); ``to_host`` fetches either."""
    return jax.jit(eval_step, in_shardings=(replicated(mesh), batch_sharded(mesh)),
                   compiler_options=xla_options.compiler_options(mesh.devices.flat))


def to_host(tree: Any) -> Any:
    """Fetch a (possibly multi-host, possibly sharded) pytree to numpy on every process."""
    from jax.experimental import multihost_utils

    if jax.process_count() > 1:
        return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))
    return jax.tree.map(np.asarray, tree)


def scanned_steps(run_step: Callable, k: int, mesh: Mesh) -> Callable:
    """``k`` consecutive calls of ``run_step(state, arrays)`` as one program: ``(state, metrics
    stacked [k])``. Each step gathers its own batch from ``state.step``, so the steps are those
    of k separate calls (to float32 roundoff: the program fuses differently).

    Unrolled on CPU, where XLA runs a while loop of training steps far slower per step
    (docs/performance.md); a loop elsewhere, compiled as fast as one step."""
    unroll = True if all(d.platform == "cpu" for d in mesh.devices.flat) else 1

    def run_steps(state, arrays):
        return jax.lax.scan(lambda s, _: run_step(s, arrays), state, None, length=k, unroll=unroll)

    return run_steps
