"""Benchmark: what the teacher-logit cache (zkd.logit_cache) saves, and when its build pays back.

    python experiments/bench_logit_cache.py [--teacher resnet32x4 --student resnet8x4] [--batch 64]
        [--steps 20] [--build_images 3888] [--epochs 240] [--write]

Measured on whatever device JAX picks (random teacher weights, 100 classes, synthetic CIFAR-shaped
data; the timings do not depend on the values):
(a) the KD+LS train step with the teacher's forward pass: the compiled step of
    ``zkd.engine.build`` for the recipe's config (method "kd", logit_stand=True; one device,
    state donated), what the trainer runs;
(b) the same step fed cached teacher logits: the batch carries ``"teacher_logits"``, so the step
    skips the teacher (which the state still holds, unused, as in a run with
    ``config.teacher.logit_cache``) and runs the student only; plus the host-side cache lookup
    per batch (fancy indexing into a float16 memmap already in the page cache, cast to float32);
(c) the cache build's teacher throughput: ``zkd.logit_cache.make_variant_logits_fn`` (the
    function ``build_cache`` runs) over --build_images variant images after one compiling
    call, extrapolated to CIFAR's 50,000 x 162 variants, plus the content hash of the teacher
    and 50,000 images (paid at every training start).
Payback = build time / (time saved per step x steps of an --epochs run at --batch,
50,000 // batch steps per epoch). Step times are medians of --steps timed steps after --warmup.
"""

import argparse
import datetime
import math
import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from zkd import engine, logit_cache, models, parallel, recipes
from zkd.data import DATASETS

INFO = DATASETS["cifar100"]
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "bench_logit_cache.md")


def median_seconds(fn, steps: int, warmup: int) -> float:
    """Median wall time of ``fn()`` (which blocks on its result) over ``steps`` calls after ``warmup``."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def step_times(teacher: str, student: str, batch: int, steps: int, warmup: int):
    """(seconds per step with the teacher forward, seconds per step with given teacher logits)."""
    config = recipes.cifar_distillation("kd", teacher, student, True)
    config.batch_size, config.num_devices = batch, 1
    t_model = models.build(teacher, INFO.num_classes)
    t_vars = t_model.init(jax.random.key(1), jnp.zeros((1, *INFO.image_shape)), train=False)
    # The step donates its state, teacher included: give it a copy of the variables the build timing reuses.
    run = engine.build(config, teacher=(t_model, jax.tree.map(jnp.copy, t_vars)), info=INFO)
    rng = np.random.default_rng(0)
    data = {
        "image": rng.standard_normal((batch, *INFO.image_shape)).astype(np.float32),
        "label": rng.integers(0, INFO.num_classes, batch).astype(np.int32),
    }
    cached = dict(data, teacher_logits=np.asarray(t_model.apply(t_vars, data["image"], train=False), np.float32))
    holder = [run.state]  # the step donates its state: each call takes the last one's
    results = []
    for batch_data in (parallel.global_batch(data, run.mesh), parallel.global_batch(cached, run.mesh)):

        def one_step():
            holder[0], metrics = run.train_step(holder[0], batch_data)
            jax.block_until_ready(metrics)

        results.append(median_seconds(one_step, steps, warmup))
    return results[0], results[1], t_model, t_vars


def lookup_seconds(batch: int, steps: int, num_classes: int) -> float:
    """Host time of one batch's cache lookup (float16 memmap, page cache warm) and float32 cast."""
    n = 2000  # 65 MB of float16; the lookup's cost does not depend on N once the pages are cached
    v = logit_cache.num_variants(INFO.pad)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, logit_cache.LOGITS_FILE)
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, v, num_classes))
        out[:] = np.random.default_rng(0).standard_normal((n, v, num_classes)).astype(np.float16)
        out.flush()
        del out
        meta = {"num_examples": n, "num_variants": v, "num_classes": num_classes, "pad": INFO.pad}
        cache = logit_cache.TeacherLogitCache(tmp, np.load(path, mmap_mode="r"), meta)
        rng = np.random.default_rng(1)
        hi = 2 * INFO.pad + 1

        def one():
            cache.lookup(rng.integers(0, n, batch), rng.integers(0, hi, batch), rng.integers(0, hi, batch),
                         rng.random(batch) < 0.5).astype(np.float32)

        return median_seconds(one, max(steps, 20), 3)


def build_throughput(t_model, t_vars, build_images: int, build_batch: int):
    """(variant images per second after compilation, compile + first call seconds, images timed)."""
    v = logit_cache.num_variants(INFO.pad)
    per_call = max(1, build_batch // v)
    fn = logit_cache.make_variant_logits_fn(t_model.apply, INFO)
    chunk = jnp.asarray(np.random.default_rng(2).integers(0, 256, (per_call, *INFO.image_shape)), jnp.uint8)
    start = time.perf_counter()
    jax.block_until_ready(fn(t_vars, chunk))
    first = time.perf_counter() - start
    calls = max(1, math.ceil(build_images / (per_call * v)))
    start = time.perf_counter()
    for _ in range(calls):
        out = fn(t_vars, chunk)
    np.asarray(out)  # the build copies every result to the host
    elapsed = time.perf_counter() - start
    return calls * per_call * v / elapsed, first, calls * per_call * v


def hash_seconds(t_vars) -> float:
    images = np.random.default_rng(3).integers(0, 256, (INFO.train_size, *INFO.image_shape), dtype=np.uint8)
    labels = np.zeros(INFO.train_size, np.int32)
    start = time.perf_counter()
    logit_cache.content_hash("teacher", t_vars, images, labels, INFO)
    return time.perf_counter() - start


def hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 360 else f"{seconds:.1f} s"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="resnet32x4")
    parser.add_argument("--student", default="resnet8x4")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="timed train steps (median)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--build_images", type=int, default=3888, help="variant images timed for the build")
    parser.add_argument("--build_batch", type=int, default=logit_cache.DEFAULT_BATCH_SIZE,
                        help="variant images per device call of the build (build_cache's batch_size)")
    parser.add_argument("--epochs", type=int, default=240)
    parser.add_argument("--write", action="store_true", help=f"write the table to {os.path.relpath(RESULTS)}")
    args = parser.parse_args()

    device = jax.devices()[0]
    where = f"{jax.default_backend()} ({device.device_kind}), jax {jax.__version__}"
    print(f"timing on {where} ...", flush=True)
    with_teacher, cached_step, t_model, t_vars = step_times(args.teacher, args.student, args.batch, args.steps,
                                                            args.warmup)
    lookup = lookup_seconds(args.batch, args.steps, INFO.num_classes)
    throughput, first_call, timed = build_throughput(t_model, t_vars, args.build_images, args.build_batch)
    hashing = hash_seconds(t_vars)

    variants = INFO.train_size * logit_cache.num_variants(INFO.pad)
    build = variants / throughput + first_call
    with_cache = cached_step + lookup
    run_steps = args.epochs * (INFO.train_size // args.batch)
    saved_per_run = (with_teacher - with_cache) * run_steps
    payback = build / saved_per_run if saved_per_run > 0 else float("inf")
    gb = variants * INFO.num_classes * 2 / 1e9

    pair = f"{args.teacher} -> {args.student}"
    rows = [
        ("step with the teacher forward (a)", f"{with_teacher * 1e3:.1f} ms"),
        ("step fed cached logits (b)", f"{cached_step * 1e3:.1f} ms"),
        ("cache lookup per batch, host (b)", f"{lookup * 1e3:.2f} ms"),
        ("speed-up per step, lookup included", f"{with_teacher / with_cache:.2f}x"),
        ("teacher throughput over variants (c)", f"{throughput:,.0f} images/s (timed on {timed:,} variant images)"),
        ("compile + first build call (c)", f"{first_call:.1f} s"),
        (f"cache build, 50,000 x 162 = {variants:,} forwards (c)",
         f"{hours(build)} (extrapolated from the {timed:,} timed)"),
        ("cache size (float16)", f"{gb:.2f} GB"),
        ("content hash, teacher + 50,000 images (per start)", f"{hashing:.2f} s"),
        (f"one {args.epochs}-epoch run ({run_steps:,} steps): teacher / cache",
         f"{hours(with_teacher * run_steps)} / {hours(with_cache * run_steps)}"),
        ("time saved per run", hours(saved_per_run)),
        ("student runs to pay back the build", f"{payback:.2f}"),
    ]
    table = [f"| {pair}, batch {args.batch}, KD+LS | {where} |", "| --- | --- |"]
    table += [f"| {name} | {value} |" for name, value in rows]
    text = "\n".join(table)
    print(text)
    if args.write:
        command = "python experiments/bench_logit_cache.py " + " ".join(sys.argv[1:])
        with open(RESULTS, "w") as f:
            f.write(f"# Teacher-logit cache: step time with and without, build time, payback\n\n"
                    f"Command: `{command}` ({datetime.date.today().isoformat()}, {os.cpu_count()} CPU cores "
                    f"visible).\n\n{text}\n")
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
