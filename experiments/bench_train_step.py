"""Benchmark: images/s of the full distillation step, zkd (JAX) next to PyTorch, same models, same machine.

    python experiments/bench_train_step.py [--pairs resnet32x4:resnet8x4,resnet56:resnet20] [--batches 64,512]

The step: teacher forward (eval mode), student forward + backward on CE 0.1 + KD 9 with logit
standardization (tau 2), SGD momentum update. zkd's step is the compiled train step of
``zkd.engine.build`` for the recipe's config (what ``zkd.main`` runs, on one device, float32
unless --dtype bfloat16; a randomly initialised teacher, synthetic CIFAR-shaped data); PyTorch's
is the same computation written plainly with the PyTorch reference models of
tests/torch_reference (eager, channels-first, float32). On CPU zkd is timed twice: compiled with
XLA's own CPU defaults (``[xla]``, what zkd did before zkd.xla_options) and with zkd's options
(``[zkd]``, the default). Reported: median of --iters timed steps after --warmup steps (compile
excluded), timed in interleaved rounds (one step of each contestant per round), the ratio of
zkd's default to PyTorch, and a projection of a 240-epoch CIFAR-100 run (50,000 images per
epoch) from zkd's figure. ``--profile`` adds each zkd step's time by XLA operation kind.
Results and findings: experiments/results/bench_train_step.md, docs/performance.md.
"""

import argparse
import importlib.util
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from zkd import data, engine, models, parallel, recipes, xla_options

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def zkd_step(teacher, student, batch, warmup, dtype, preset):
    """A closure running one compiled zkd step (blocking), built with ``ZKD_XLA_CPU_OPTIONS=preset``."""
    os.environ[xla_options.ENV] = preset
    config = recipes.cifar_distillation("kd", teacher, student, True)
    config.dtype, config.batch_size, config.num_devices = dtype, batch, 1
    info = data.get_info(config.dataset)
    t_model = models.build(teacher, info.num_classes, dtype=engine.DTYPES[dtype])
    t_vars = t_model.init(jax.random.key(1), jnp.zeros((1, *info.image_shape)), train=False)
    run = engine.build(config, teacher=(t_model, t_vars), info=info)
    rng = np.random.default_rng(0)
    batch_data = parallel.global_batch({
        "image": rng.standard_normal((batch, *info.image_shape)).astype(np.float32),
        "label": rng.integers(0, info.num_classes, batch).astype(np.int32),
    }, run.mesh)
    state = [run.state]

    def step():
        state[0], metrics = run.train_step(state[0], batch_data)
        jax.block_until_ready(metrics)

    for _ in range(warmup):
        step()
    return step


def profile(step, steps: int = 3, top: int = 12) -> str:
    """The compiled step's time by XLA operation kind (jax.profiler trace, fusions grouped by name
    without their numeric suffix), per step; the table printed by --profile."""
    import collections
    import glob
    import gzip
    import json
    import re
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp, create_perfetto_trace=True):
            for _ in range(steps):
                step()
        events = json.load(gzip.open(glob.glob(f"{tmp}/**/*.trace.json.gz", recursive=True)[0]))
    events = events["traceEvents"] if isinstance(events, dict) else events
    kinds = collections.Counter()
    for e in events:
        name = e.get("name", "")
        if e.get("ph") == "X" and not name.startswith(("$", "ThunkExecutor", "PjitFunction", "CommonPjRt")):
            kinds[re.sub(r"[.\d]+$", "", name)] += e["dur"]
    return "\n".join(f"    {us / steps / 1e3:8.1f} ms/step  {kind}" for kind, us in kinds.most_common(top))


def torch_reference(name):
    """tests/torch_reference/<name>.py, loaded by its path (tests/ is not an installed package)."""
    spec = importlib.util.spec_from_file_location(f"torch_reference_{name}",
                                                  os.path.join(REPO, "tests", "torch_reference", f"{name}.py"))
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def torch_step(teacher, student, batch, warmup):
    """A closure running one PyTorch step of the same computation."""
    import torch

    def build(name):
        if name.startswith("wrn"):
            return torch_reference("wrn").wrn(name, 100)
        return torch_reference("resnets").cifar_resnet(name, 100)

    torch.manual_seed(0)
    t_model, s_model = build(teacher).eval(), build(student).train()
    opt = torch.optim.SGD(s_model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(batch, 3, 32, 32)
    y = torch.randint(0, 100, (batch,))

    kd_step = torch_reference("kd_step").kd_ls_step

    def step():
        kd_step(t_model, s_model, opt, x, y)

    for _ in range(warmup):
        step()
    return step


def interleaved_images_per_second(steps: dict, batch: int, iters: int) -> dict:
    """img/s of each step (median of ``iters`` timed calls), timed in rounds, one call of each per
    round, so that a slow spell of a shared machine hits every contestant alike."""
    times = {name: [] for name in steps}
    for _ in range(iters):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {name: batch / float(np.median(t)) for name, t in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", default="resnet32x4:resnet8x4,resnet56:resnet20")
    parser.add_argument("--batches", default="64,512")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--presets", default="xla,zkd",
                        help="zkd.xla_options presets to time side by side (CPU only; one on accelerators)")
    parser.add_argument("--no_torch", action="store_true", help="skip the PyTorch reference")
    parser.add_argument("--profile", action="store_true", help="also print each zkd step's time by XLA operation")
    args = parser.parse_args()
    device = jax.devices()[0]
    presets = args.presets.split(",") if device.platform == "cpu" else ["zkd"]
    print(f"zkd on {jax.default_backend()} ({device.device_kind}, {jax.device_count()} device(s)), dtype {args.dtype}, "
          f"jax {jax.__version__}; PyTorch eager float32 on CPU with {os.cpu_count()} cores, "
          f"{'not run' if args.no_torch else 'torch ' + __import__('torch').__version__}; "
          f"timed in interleaved rounds, median of {args.iters}")
    heads = [f"zkd[{p}] img/s" for p in presets]
    print(f"{'teacher -> student':26s} {'batch':>5s} " + " ".join(f"{h:>16s}" for h in heads)
          + f" {'torch img/s':>12s} {'zkd/torch':>9s} {'240-ep CIFAR run (h, zkd)':>26s}")
    for pair in args.pairs.split(","):
        teacher, student = pair.split(":")
        for batch in map(int, args.batches.split(",")):
            steps = {p: zkd_step(teacher, student, batch, args.warmup, args.dtype, p) for p in presets}
            if not args.no_torch:
                steps["torch"] = torch_step(teacher, student, batch, args.warmup)
            ips = interleaved_images_per_second(steps, batch, args.iters)
            ours, theirs = ips[presets[-1]], ips.get("torch", float("nan"))
            hours = 240 * 50_000 / ours / 3600
            print(f"{teacher + ' -> ' + student:26s} {batch:5d} " + " ".join(f"{ips[p]:16.0f}" for p in presets)
                  + f" {theirs:12.0f} {ours / theirs:9.2f} {hours:26.1f}", flush=True)
            if args.profile:
                for p in presets:
                    print(f"  profile of zkd[{p}], {teacher} -> {student}, batch {batch}:")
                    print(profile(steps[p]), flush=True)


if __name__ == "__main__":
    main()
