"""One process of the multi-host teacher test: load every teacher source, save what came back.

    python tests/multihost_teacher_worker.py SOURCES_JSON OUT_DIR PROCESS_ID NUM_PROCESSES PORT DEVICES_PER_PROCESS

SOURCES_JSON: ``{"num_classes": N, "input_shape": [H, W, C], "sources": {label: config.teacher}}``,
each ``config.teacher`` a dict of name, zoo, checkpoint, ensemble. With NUM_PROCESSES > 1 the
process joins a jax.distributed cluster on 127.0.0.1:PORT. For each source it calls
``zkd.teacher.load_teacher`` as the trainer does on every process, and writes
OUT_DIR/<process>-<label>.npz (the variables, flattened by key path) and OUT_DIR/<process>.json
(for each label, whether every array is a host array or lives on this process's own devices).
No training. A source that fails to load ends the process at once with status 1.
"""

import json
import os
import sys
import traceback

sources_json, out_dir, pid, nproc, port, ndev = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:7])
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={ndev}"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from zkd import parallel, teacher  # noqa: E402

if nproc > 1:
    parallel.initialize_distributed(f"127.0.0.1:{port}", nproc, pid)
assert jax.process_count() == nproc and len(jax.local_devices()) == ndev, (jax.process_count(), jax.local_devices())

with open(sources_json) as f:
    spec = json.load(f)
sources = spec["sources"]
local = set(jax.local_devices())
placed_here = {}
for label, teacher_config in sources.items():
    try:
        _, variables = teacher.load_teacher(ml_collections.ConfigDict(teacher_config), spec["num_classes"],
                                            tuple(spec["input_shape"]))
    except BaseException:  # end now: a normal exit would wait for the other process at JAX's shutdown barrier
        print(f"process {pid}: loading {label!r} failed", flush=True)
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    leaves = jax.tree_util.tree_flatten_with_path(variables)[0]
    placed_here[label] = all(isinstance(x, np.ndarray) or (isinstance(x, jax.Array) and x.devices() <= local)
                             for _, x in leaves)
    np.savez(os.path.join(out_dir, f"{pid}-{label}.npz"),
             **{jax.tree_util.keystr(p): np.asarray(x) for p, x in leaves})
with open(os.path.join(out_dir, f"{pid}.json"), "w") as f:
    json.dump(placed_here, f)
print(f"process {pid}: loaded {len(sources)} teachers", flush=True)
