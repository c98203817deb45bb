"""Benchmark: speed and compiled memory of every CIFAR architecture, and one distillation step.

    python experiments/bench_models.py [--batch 64] [--repeats 5] [--models resnet8,vgg13]
                                       [--output experiments/results/bench_models.md]

For each architecture of ``zkd.models.available("cifar")`` (100 classes, NHWC 32x32x3 images):
  - fwd:      jitted eval-mode forward (BN running statistics);
  - fwd+bwd:  jitted train-mode forward + backward (cross-entropy, gradient w.r.t. the params,
              BN statistics updated);
  - peak memory of each compiled program from ``compiled.memory_analysis()`` (arguments +
    outputs + temporaries - aliased, as XLA's buffer assignment planned them; see
    ``peak_bytes``) and its compile time.
Times are the median of ``--repeats`` calls after compilation, wall clock, on whatever backend
JAX picks (this CPU unless a GPU is visible). Then, for resnet32x4 -> resnet8x4: the teacher's
eval forward alone, and the full step (teacher forward, student forward/backward with
0.1 * CE + 9 * KD with logit standardization at tau 2, SGD-momentum update).
Weights are random (speed does not depend on their values).
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from zkd import losses, models


def random_variables(model, images, seed: int = 0) -> dict:
    """Variables shaped like ``model.init`` without running the (slow to compile) initialisers:
    He-scaled normal kernels, zero biases, unit BN scale and variance."""
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), images, train=False))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = str(getattr(path[-1], "key", path[-1]))
        if name == "kernel":
            fan_in = int(np.prod(leaf.shape[:-1]))
            return jnp.asarray(rng.standard_normal(leaf.shape, np.float32) * np.sqrt(2.0 / fan_in))
        if name in ("scale", "var"):
            return jnp.ones(leaf.shape, leaf.dtype)
        return jnp.zeros(leaf.shape, leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def compile_and_time(fn, args, repeats: int) -> dict:
    """Compile ``jax.jit(fn)`` for ``args``; median seconds per call, peak bytes, compile seconds."""
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - start
    jax.block_until_ready(compiled(*args))  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - start)
    return {"seconds": float(np.median(times)), "peak_bytes": peak_bytes(compiled),
            "compile_s": compile_s}


def peak_bytes(compiled) -> int:
    """Peak memory XLA planned for a compiled program.

    ``memory_analysis()`` reports argument, output, alias and temp sizes, and
    ``peak_memory_in_bytes``; on the CPU backend the latter counts only arguments + outputs,
    so take arguments + outputs + temporaries - aliased (temporaries are the buffer-assigned
    scratch space, already reused across the program), or the reported peak if larger.
    """
    m = compiled.memory_analysis()
    if m is None:  # backends without the analysis
        return 0
    planned = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
               - m.alias_size_in_bytes)
    return int(max(planned, getattr(m, "peak_memory_in_bytes", 0)))


def forward_fn(model):
    def forward(variables, images):
        return model.apply(variables, images, train=False)
    return forward


def train_loss_fn(model):
    """(params, batch_stats, images, labels) -> (CE loss, new batch_stats)."""
    def loss(params, batch_stats, images, labels):
        logits, updates = model.apply({"params": params, "batch_stats": batch_stats}, images,
                                      train=True, mutable=["batch_stats"])
        return losses.cross_entropy(logits, labels), updates["batch_stats"]
    return loss


def forward_backward_fn(model):
    return jax.value_and_grad(train_loss_fn(model), has_aux=True)


def bench_architecture(name: str, images, labels, repeats: int) -> dict:
    model = models.build(name, num_classes=100)
    variables = random_variables(model, images)
    fwd = compile_and_time(forward_fn(model), (variables, images), repeats)
    step = compile_and_time(forward_backward_fn(model),
                            (variables["params"], variables["batch_stats"], images, labels), repeats)
    return {"params": models.count_params(variables["params"]), "fwd": fwd, "fwd_bwd": step}


def bench_distillation(teacher_name: str, student_name: str, images, labels, repeats: int) -> dict:
    """Teacher eval forward alone, and a full KD+LS train step of the student."""
    teacher = models.build(teacher_name, num_classes=100)
    student = models.build(student_name, num_classes=100)
    t_vars = random_variables(teacher, images, seed=1)
    s_vars = random_variables(student, images, seed=2)
    optimizer = optax.sgd(0.05, momentum=0.9)
    opt_state = optimizer.init(s_vars["params"])

    def step(params, batch_stats, opt_state, t_vars, images, labels):
        teacher_logits = jax.lax.stop_gradient(teacher.apply(t_vars, images, train=False))

        def loss(params):
            logits, updates = student.apply({"params": params, "batch_stats": batch_stats}, images,
                                            train=True, mutable=["batch_stats"])
            total = (0.1 * losses.cross_entropy(logits, labels)
                     + 9.0 * losses.kd_loss(logits, teacher_logits, 2.0, logit_stand=True))
            return total, updates["batch_stats"]

        (value, batch_stats), grads = jax.value_and_grad(loss, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), batch_stats, opt_state, value

    teacher_fwd = compile_and_time(forward_fn(teacher), (t_vars, images), repeats)
    full = compile_and_time(
        step, (s_vars["params"], s_vars["batch_stats"], opt_state, t_vars, images, labels), repeats)
    return {"teacher_fwd": teacher_fwd, "step": full}


def _mib(n: int) -> str:
    return f"{n / 2**20:8.1f}"


def format_table(rows: dict, batch: int) -> list[str]:
    lines = [
        "| model | params | fwd ms | fwd+bwd ms | fwd peak MiB | fwd+bwd peak MiB | compile s (fwd / fwd+bwd) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['params']:,} | {r['fwd']['seconds'] * 1e3:.1f} | "
            f"{r['fwd_bwd']['seconds'] * 1e3:.1f} | {_mib(r['fwd']['peak_bytes']).strip()} | "
            f"{_mib(r['fwd_bwd']['peak_bytes']).strip()} | "
            f"{r['fwd']['compile_s']:.1f} / {r['fwd_bwd']['compile_s']:.1f} |")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--models", default="", help="comma-separated subset (default: all)")
    parser.add_argument("--skip_distillation", action="store_true")
    parser.add_argument("--output", default="", help="also write the tables (markdown) here")
    args = parser.parse_args(argv)

    names = args.models.split(",") if args.models else models.available("cifar")
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.standard_normal((args.batch, 32, 32, 3), np.float32))
    labels = jnp.asarray(rng.integers(0, 100, args.batch))
    device = jax.devices()[0]
    header = (f"CIFAR zoo, batch {args.batch}, 32x32x3, 100 classes, float32, backend "
              f"{jax.default_backend()} ({device.device_kind}, {os.cpu_count()} CPUs visible), "
              f"median of {args.repeats} after compilation")
    print(header, flush=True)
    rows = {}
    for name in names:
        rows[name] = bench_architecture(name, images, labels, args.repeats)
        r = rows[name]
        print(f"  {name:12s} fwd {r['fwd']['seconds'] * 1e3:9.1f} ms  fwd+bwd "
              f"{r['fwd_bwd']['seconds'] * 1e3:9.1f} ms  peak {_mib(r['fwd']['peak_bytes'])} / "
              f"{_mib(r['fwd_bwd']['peak_bytes'])} MiB", flush=True)
    lines = [header, ""] + format_table(rows, args.batch)
    if not args.skip_distillation:
        kd = bench_distillation("resnet32x4", "resnet8x4", images, labels, args.repeats)
        lines += [
            "",
            f"resnet32x4 -> resnet8x4, batch {args.batch}: teacher eval forward "
            f"{kd['teacher_fwd']['seconds'] * 1e3:.1f} ms (peak {_mib(kd['teacher_fwd']['peak_bytes']).strip()} MiB); "
            f"full KD+LS step (teacher fwd + student fwd/bwd + SGD) "
            f"{kd['step']['seconds'] * 1e3:.1f} ms (peak {_mib(kd['step']['peak_bytes']).strip()} MiB, "
            f"compile {kd['step']['compile_s']:.1f} s)",
        ]
    print("\n".join(lines))
    if args.output:
        with open(args.output, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
