"""Benchmark: a hyper-parameter grid trained as one sweep (zkd.sweep) vs. as separate runs.

    python experiments/bench_sweep.py [--teacher resnet32x4 --student resnet8x4 --batch 64 --iters 5]

The grid is the authors' advice for a new pair, reduced to 9 points: base temperature
{2, 3, 4} x KD weight {3, 6, 9}, KD with logit standardization (CE 0.1). A separate run costs
one jitted ``zkd.step`` train step per batch (teacher forward + student update); the sweep
costs one ``zkd.sweep`` step per batch (one teacher forward, the 9 student updates under
``jax.vmap``). Reported: median step times over --iters steps after --warmup (compile
excluded, compile time printed separately), and the ratio

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
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

from zkd import models, recipes, sweep, train  # noqa: E402
from zkd import state as state_lib  # noqa: E402
from zkd import step as step_lib  # noqa: E402


def timed(step, state, batch, iters, warmup):
    """(median seconds per step, compile + first step seconds, final state)."""
    key = jax.random.key(0)
    start = time.perf_counter()
    state, metrics = step(state, batch, key)
    jax.block_until_ready(metrics)
    first = time.perf_counter() - start
    for _ in range(warmup):
        state, metrics = step(state, batch, key)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        state, metrics = step(state, batch, key)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    return float(np.median(times)), first, metrics


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
    parser.add_argument("--vectorize", default="vmap,unroll", help="sweep step variants to time (zkd.sweep.VECTORIZE)")
    parser.add_argument("--cached", action="store_true",
                        help="also time the sweep fed cached teacher logits (zkd.logit_cache; no teacher forward)")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()

    config = recipes.cifar_distillation("kd", args.teacher, args.student, True)
    with config.unlocked():
        config.dtype = args.dtype
        config.loss.ce_weight = 0.1
        config.sweep.temperature = tuple(float(t) for t in args.temperatures.split(","))
        config.sweep.kd_weight = tuple(float(w) for w in args.kd_weights.split(","))
    points = sweep.grid_points(config)
    n = len(points)
    dt = train.DTYPES[args.dtype]
    s_model, t_model = models.build(args.student, 100, dtype=dt), models.build(args.teacher, 100, dtype=dt)
    t_vars = t_model.init(jax.random.key(1), jnp.zeros((1, 32, 32, 3)), train=False)
    steps_per_epoch = 50_000 // args.batch
    lr_fn, tx = train.make_optimizer(config, steps_per_epoch)
    rng = np.random.default_rng(0)
    batch = {"image": jnp.asarray(rng.standard_normal((args.batch, 32, 32, 3)), jnp.float32),
             "label": jnp.asarray(rng.integers(0, 100, args.batch), jnp.int32)}

    # One separate run (grid point 0; every point costs the same).
    single_state = state_lib.create_train_state(jax.random.key(0), s_model, (32, 32, 3), tx, t_model,
                                                jax.tree.map(jnp.copy, t_vars))
    single_step = jax.jit(step_lib.make_train_step(train.step_settings(points[0].config, steps_per_epoch, lr_fn)),
                          donate_argnums=(0,))
    t_single, c_single, _ = timed(single_step, single_state, batch, args.iters, args.warmup)

    # The sweep.
    t_vars = jax.tree.map(jnp.copy, t_vars)  # the single run's step donated its copy
    sweep_state = sweep.create_sweep_state(points, s_model, (32, 32, 3), tx, t_model, t_vars)
    settings = sweep.sweep_settings(config, points, steps_per_epoch, lr_fn)
    results = {}
    for mode in args.vectorize.split(","):
        state = jax.tree.map(jnp.copy, sweep_state)
        sweep_step = jax.jit(sweep.make_sweep_step(settings, mode), donate_argnums=(0,))
        results[mode] = timed(sweep_step, state, batch, args.iters, args.warmup)
        assert np.all(np.isfinite(np.asarray(results[mode][2]["loss"]))), results[mode][2]["loss"]

    best = min(results, key=lambda m: results[m][0])
    cached = None
    if args.cached:  # the sweep fed teacher logits (zkd.logit_cache): no teacher forward at all
        state = jax.tree.map(jnp.copy, sweep_state)
        logits = jnp.asarray(rng.standard_normal((args.batch, 100)), jnp.float32)
        sweep_step = jax.jit(sweep.make_sweep_step(settings, best), donate_argnums=(0,))
        cached = timed(sweep_step, state, dict(batch, teacher_logits=logits), args.iters, args.warmup)
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
