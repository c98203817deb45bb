"""Benchmark: a hyper-parameter grid trained as one sweep (zkd.sweep) vs. as separate runs.

    python experiments/bench_sweep.py [--teacher resnet32x4 --student resnet8x4 --batch 64 --iters 5]

The grid is the authors' advice for a new pair, reduced to 9 points: base temperature
{2, 3, 4} x KD weight {3, 6, 9}, KD with logit standardization (CE 0.1). A separate run costs
one step of the run ``zkd.engine.build`` makes for a single config (teacher forward + student
update); the sweep costs one step of the run it makes for the config with
``config.sweep.temperature`` / ``config.sweep.kd_weight`` set (one teacher forward, the 9
student updates, unrolled or under ``jax.vmap``: ``config.sweep.vectorize``, each mode of
--vectorize timed). Both use a randomly initialised teacher on one device. Reported: median
step times over --iters steps after --warmup (compile excluded, compile time printed
separately), and the ratio

    sweep step / (9 x single-run step)

which is the cost of the sweep relative to nine separate runs over the same number of steps
(per-run start-up and the teacher's one evaluation are not counted; they favour the sweep
further). ``--cached`` adds the sweep fed teacher logits from a cache (zkd.logit_cache), which
removes the teacher's forward pass too (the cache's build cost: experiments/bench_logit_cache.py).
Synthetic data on the device: no input pipeline in the timing. ``--write`` writes
the table to experiments/results/bench_sweep.md (appending a section per device).
"""

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from zkd import data, engine, grid, models, parallel, recipes
from zkd import step as step_lib

HERE = os.path.dirname(os.path.abspath(__file__))


def timed(step, state, batch, iters, warmup):
    """(median seconds per step, compile + first step seconds, last metrics, final state)."""
    start = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    first = time.perf_counter() - start
    for _ in range(warmup):
        state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    return float(np.median(times)), first, metrics, state


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="resnet32x4")
    parser.add_argument("--student", default="resnet8x4")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--temperatures", default="2,3,4")
    parser.add_argument("--kd_weights", default="3,6,9")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--vectorize", default="vmap,unroll",
                        help=f"sweep step variants to time (config.sweep.vectorize: {', '.join(step_lib.VECTORIZE)})")
    parser.add_argument("--cached", action="store_true",
                        help="also time the sweep fed cached teacher logits (zkd.logit_cache; no teacher forward)")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    modes = args.vectorize.split(",")
    for mode in modes:
        step_lib.check_vectorize(mode)

    config = recipes.cifar_distillation("kd", args.teacher, args.student, True)
    config.dtype, config.batch_size, config.num_devices = args.dtype, args.batch, 1
    config.loss.ce_weight = 0.1
    config.sweep.temperature = tuple(float(t) for t in args.temperatures.split(","))
    config.sweep.kd_weight = tuple(float(w) for w in args.kd_weights.split(","))
    points = grid.grid_points(config)
    n = len(points)
    info = data.get_info(config.dataset)
    t_model = models.build(args.teacher, info.num_classes, dtype=engine.DTYPES[args.dtype])
    t_vars = t_model.init(jax.random.key(1), jnp.zeros((1, *info.image_shape)), train=False)
    rng = np.random.default_rng(0)
    host_batch = {"image": rng.standard_normal((args.batch, *info.image_shape)).astype(np.float32),
                  "label": rng.integers(0, info.num_classes, args.batch).astype(np.int32)}

    def build(c):  # the step donates its state, teacher included: each run gets its own copy
        run = engine.build(c, teacher=(t_model, jax.tree.map(jnp.copy, t_vars)), info=info)
        return run, parallel.global_batch(host_batch, run.mesh)

    # One separate run: grid point 0's single-run config (every point costs the same).
    single, batch = build(points[0].config)
    assert single.num_students == 1
    t_single, c_single, _, _ = timed(single.train_step, single.state, batch, args.iters, args.warmup)

    # The sweep, one build per vectorize mode.
    results, finals = {}, {}
    for mode in modes:
        c = config.copy_and_resolve_references()
        c.sweep.vectorize = mode
        run, batch = build(c)
        assert run.num_students == n
        t, first, metrics, finals[mode] = timed(run.train_step, run.state, batch, args.iters, args.warmup)
        results[mode] = (t, first, run)
        losses = [float(m["loss"]) for m in metrics]
        assert np.all(np.isfinite(losses)), losses

    best = min(results, key=lambda m: results[m][0])
    cached = None
    if args.cached:  # the sweep fed teacher logits (zkd.logit_cache): no teacher forward at all
        run = results[best][2]
        logits = rng.standard_normal((args.batch, info.num_classes)).astype(np.float32)
        batch = parallel.global_batch(dict(host_batch, teacher_logits=logits), run.mesh)
        cached = timed(run.train_step, finals[best], batch, args.iters, args.warmup)
    ratio = results[best][0] / (n * t_single)
    device = jax.devices()[0]
    where = f"{jax.default_backend()} ({device.device_kind}), {args.dtype}, batch {args.batch}"
    lines = [
        f"### {args.teacher} -> {args.student}, {n}-point grid (T {args.temperatures} x KD weight "
        f"{args.kd_weights}, LS), {where}",
        "",
        "| | step (ms, median) | compile + 1st step (s) | student-images/s |",
        "|---|---|---|---|",
        f"| one run | {1e3 * t_single:.1f} | {c_single:.1f} | {args.batch / t_single:.0f} |",
        f"| {n} separate runs | {1e3 * n * t_single:.1f} | {n * c_single:.1f} | {args.batch / t_single:.0f} |",
        *(f"| one sweep of {n}, vectorize={m} | {1e3 * t:.1f} | {c:.1f} | {n * args.batch / t:.0f} |"
          for m, (t, c, _) in results.items()),
        *([f"| one sweep of {n}, vectorize={best}, teacher logits from a cache | {1e3 * cached[0]:.1f} | "
           f"{cached[1]:.1f} | {n * args.batch / cached[0]:.0f} |"] if cached else []),
        "",
        *([f"sweep with cached teacher logits / {n} separate runs = {cached[0] / (n * t_single):.2f}", ""]
          if cached else []),
        f"**sweep (vectorize={best}) / {n} separate runs = {ratio:.2f}** (per step; `python "
        f"experiments/bench_sweep.py --teacher {args.teacher} --student {args.student} --batch {args.batch} "
        f"--iters {args.iters} --dtype {args.dtype}`)",
        "",
    ]
    print("\n".join(lines), flush=True)
    if args.write:
        path = os.path.join(HERE, "results", "bench_sweep.md")
        new = not os.path.exists(path)
        with open(path, "a") as f:
            if new:
                f.write("# Sweeps vs separate runs (experiments/bench_sweep.py)\n\n")
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
