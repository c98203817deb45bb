"""Benchmark: images/s of the full distillation step, zkd (JAX) next to PyTorch, same models, same machine.

    python experiments/bench_train_step.py [--pairs resnet32x4:resnet8x4,resnet56:resnet20] [--batches 64,512]

The step: teacher forward (eval mode), student forward + backward on CE 0.1 + KD 9 with logit
standardization (tau 2), SGD momentum update. zkd's step is the compiled train step of
``zkd.engine.build`` for the recipe's config (what ``zkd.main`` runs, on one device, float32
unless --dtype bfloat16; a randomly initialised teacher, synthetic CIFAR-shaped data); PyTorch's
is the same computation written plainly with the PyTorch reference models of
tests/torch_reference (eager, channels-first, float32). Reported: median of --iters timed steps
after --warmup steps (compile excluded), and a projection of a 240-epoch CIFAR-100 run (50,000
images per epoch) from the zkd figure.
"""

import argparse
import importlib.util
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from zkd import data, engine, models, parallel, recipes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def zkd_images_per_second(teacher, student, batch, iters, warmup, dtype):
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
    state = run.state
    for _ in range(warmup):
        state, _ = run.train_step(state, batch_data)
    jax.block_until_ready(state)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        state, metrics = run.train_step(state, batch_data)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    return batch / float(np.median(times))


def torch_reference(name):
    """tests/torch_reference/<name>.py, loaded by its path (tests/ is not an installed package)."""
    spec = importlib.util.spec_from_file_location(f"torch_reference_{name}",
                                                  os.path.join(REPO, "tests", "torch_reference", f"{name}.py"))
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def torch_images_per_second(teacher, student, batch, iters, warmup):
    import torch
    import torch.nn.functional as F

    def build(name):
        if name.startswith("wrn"):
            return torch_reference("wrn").wrn(name, 100)
        return torch_reference("resnets").cifar_resnet(name, 100)

    torch.manual_seed(0)
    t_model, s_model = build(teacher).eval(), build(student).train()
    opt = torch.optim.SGD(s_model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(batch, 3, 32, 32)
    y = torch.randint(0, 100, (batch,))

    def z(v):
        return (v - v.mean(-1, keepdim=True)) / (1e-7 + v.std(-1, keepdim=True))

    def step():
        with torch.no_grad():
            vt = t_model(x)
        vs = s_model(x)
        kd = F.kl_div(F.log_softmax(z(vs) / 2, 1), F.softmax(z(vt) / 2, 1), reduction="none").sum(1).mean() * 4
        loss = 0.1 * F.cross_entropy(vs, y) + 9 * kd
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return batch / float(np.median(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", default="resnet32x4:resnet8x4,resnet56:resnet20")
    parser.add_argument("--batches", default="64,512")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--no_torch", action="store_true", help="skip the PyTorch reference")
    args = parser.parse_args()
    device = jax.devices()[0]
    print(f"zkd on {jax.default_backend()} ({device.device_kind}, {jax.device_count()} device(s)), dtype {args.dtype}; "
          f"PyTorch eager float32 on CPU with {os.cpu_count()} cores")
    print(f"{'teacher -> student':26s} {'batch':>5s} {'zkd img/s':>10s} {'torch img/s':>12s} {'ratio':>6s} "
          f"{'240-ep CIFAR run (h, zkd)':>26s}")
    for pair in args.pairs.split(","):
        teacher, student = pair.split(":")
        for batch in map(int, args.batches.split(",")):
            ours = zkd_images_per_second(teacher, student, batch, args.iters, args.warmup, args.dtype)
            theirs = float("nan") if args.no_torch else torch_images_per_second(teacher, student, batch, args.iters, args.warmup)
            hours = 240 * 50_000 / ours / 3600
            print(f"{teacher + ' -> ' + student:26s} {batch:5d} {ours:10.0f} {theirs:12.0f} {ours / theirs:6.2f} {hours:26.1f}",
                  flush=True)


if __name__ == "__main__":
    main()
