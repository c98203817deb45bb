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
``--steps_per_dispatch 1,10`` also times zkd on device-resident synthetic CIFAR-size data (50,000
uint8 images on the device, the batch gathered and augmented inside the step) with 1 and 10 steps
compiled into one dispatch (``config.steps_per_dispatch``), in the same rounds.
``--components`` also times the step's two parts alone, in the same interleaved rounds: the
teacher's forward pass (eval mode) and the student's training step on cross-entropy alone
(forward, backward, SGD update), zkd's compiled as zkd compiles them, PyTorch's as above; it says
which part of the step the gap to PyTorch sits in (with --profile, each part's profile too).
``--batchnorm_baseline`` also times zkd's default step with the BatchNorm batch sums it used until
2026-12-07 (products with a ones vector, whose rounding depended on the device count;
docs/parallelism.md), in the same rounds.
Against the hardware: each step's FLOP/s (XLA's count of zkd's compiled step, per image, times the
img/s; PyTorch's step does the same computation) as a share of what one large matrix product
attains on the device, and of ``--peak_tflops`` when given (the data sheet's peak for --dtype).
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


def random_teacher(name: str, info, dtype: str) -> tuple:
    """``(module, variables)`` of teacher ``name``, randomly initialised for ``info``'s images."""
    model = models.build(name, info.num_classes, dtype=engine.DTYPES[dtype])
    return model, model.init(jax.random.key(1), jnp.zeros((1, *info.image_shape)), train=False)


def zkd_step(teacher, student, batch, warmup, dtype, preset):
    """A closure running one compiled zkd step (blocking), built with ``ZKD_XLA_CPU_OPTIONS=preset``."""
    os.environ[xla_options.ENV] = preset
    config = recipes.cifar_distillation("kd", teacher, student, True)
    info = data.get_info(config.dataset)
    t_model, t_vars = random_teacher(teacher, info, dtype)
    step = compiled_step(config, info, batch, dtype, teacher=(t_model, t_vars))
    for _ in range(warmup):
        step()
    return step


def resident_step(teacher, student, batch, warmup, dtype, preset, k, info):
    """A closure running one dispatch of ``k`` compiled zkd steps (blocking) on device-resident
    data (``config.device_resident_data``: the batch gathered and augmented inside the step from
    ``info``'s uint8 arrays; ``config.steps_per_dispatch = k``); ``.images`` = k x batch."""
    os.environ[xla_options.ENV] = preset
    config = recipes.cifar_distillation("kd", teacher, student, True)
    config.dtype, config.batch_size, config.num_devices = dtype, batch, 1
    config.device_resident_data, config.steps_per_dispatch = True, k
    t_model, t_vars = random_teacher(teacher, info, dtype)
    run = engine.build(config, teacher=(t_model, t_vars), info=info)
    program = run.train_steps or run.train_step
    state = [run.state]

    def step():
        state[0], metrics = program(state[0], run.device_data)
        jax.block_until_ready(metrics)

    step.images = k * batch
    for _ in range(warmup):
        step()
    return step


def compiled_step(config, info, batch, dtype, teacher=None):
    """A blocking closure running ``config``'s compiled train step (``zkd.engine.build``, one
    device) on one synthetic batch of ``batch`` images, the state carried from call to call."""
    config.dtype, config.batch_size, config.num_devices = dtype, batch, 1
    run = engine.build(config, teacher=teacher, info=info)
    rng = np.random.default_rng(0)
    batch_data = parallel.global_batch({
        "image": rng.standard_normal((batch, *info.image_shape)).astype(np.float32),
        "label": rng.integers(0, info.num_classes, batch).astype(np.int32),
    }, run.mesh)
    state = [run.state]

    def step():
        state[0], metrics = run.train_step(state[0], batch_data)
        jax.block_until_ready(metrics)

    step.flops = flops(run.train_step.lower(run.state, batch_data))
    return step


def flops(lowered) -> float:
    """XLA's count of a lowered program's floating-point operations (a multiply-add is 2; a
    convolution's taps on zero padding are not counted)."""
    cost = lowered.cost_analysis()
    return float((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"])


def matmul_rate(dtype: str, n: int, calls: int = 5) -> float:
    """FLOP/s of one n x n x n matrix product in ``dtype`` compiled by XLA with zkd's options, the
    best of ``calls``: what this device attains on the most favourable dense kernel, the yardstick
    the step's FLOP/s are set against."""
    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), engine.DTYPES[dtype])
    product = jax.jit(lambda x, y: x @ y, compiler_options=xla_options.compiler_options())
    jax.block_until_ready(product(a, a))
    best = float("inf")
    for _ in range(calls):
        start = time.perf_counter()
        jax.block_until_ready(product(a, a))
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best


def rate_line(gflop_per_image: float, ips: dict, contestants: list, matmul: float, matmul_label: str,
              peak_tflops: float = 0.0) -> str:
    """The step's FLOP/s per contestant, as a fraction of the matrix product's rate (and of a
    given peak); the same FLOP count serves PyTorch's step (same models, same computation)."""
    names = [c if c == "torch" else f"zkd[{c}]" for c in contestants]
    rates = [gflop_per_image * ips[c] for c in contestants]
    line = (f"  XLA counts {gflop_per_image:.3f} GFLOP per image: " + ", ".join(
        f"{n} {r:,.0f} GFLOP/s" for n, r in zip(names, rates)) + " = " + " / ".join(
        f"{100 * r / (matmul / 1e9):.0f}%" for r in rates) + f" of {matmul_label} ({matmul / 1e9:,.0f} GFLOP/s)")
    if peak_tflops > 0:
        line += "; " + " / ".join(f"{100 * r / (1e3 * peak_tflops):.1f}%" for r in rates) + \
            f" of the {peak_tflops:g} TFLOP/s peak given"
    return line


def zkd_parts(teacher, student, batch, warmup, dtype, preset):
    """``{"teacher forward": fn, "student step": fn}``: zkd's teacher forward pass (eval mode,
    jitted with zkd's compiler options) and the compiled train step of the student trained on
    cross-entropy alone (``recipes.cifar_teacher(student)``), each a blocking closure."""
    os.environ[xla_options.ENV] = preset
    info = data.get_info("cifar100")
    t_model, t_vars = random_teacher(teacher, info, dtype)
    forward = jax.jit(lambda v, x: t_model.apply(v, x, train=False), compiler_options=xla_options.compiler_options())
    x = jnp.asarray(np.random.default_rng(0).standard_normal((batch, *info.image_shape)), jnp.float32)

    def teacher_forward():
        jax.block_until_ready(forward(t_vars, x))

    parts = {"teacher forward": teacher_forward,
             "student step": compiled_step(recipes.cifar_teacher(student), info, batch, dtype)}
    for _ in range(warmup):
        for part in parts.values():
            part()
    return parts


def torch_parts(teacher, student, batch, warmup):
    """PyTorch's counterparts of ``zkd_parts``: the teacher under ``no_grad`` in eval mode, the
    student's cross-entropy SGD step."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    t_model, s_model = build_torch(teacher).eval(), build_torch(student).train()
    opt = torch.optim.SGD(s_model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(batch, 3, 32, 32)
    y = torch.randint(0, 100, (batch,))

    def teacher_forward():
        with torch.no_grad():
            t_model(x)

    def student_step():
        loss = F.cross_entropy(s_model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(warmup):
        teacher_forward()
        student_step()
    return {"teacher forward": teacher_forward, "student step": student_step}


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


def build_torch(name):
    """The PyTorch reference model ``name`` of the CIFAR zoo (100 classes)."""
    resnets = torch_reference("resnets")
    if name in resnets.CIFAR_RESNETS:
        return resnets.cifar_resnet(name, 100)
    if name in resnets.FOUR_STAGE:
        return resnets.four_stage_resnet(name, 100, imagenet=False)
    if name.startswith("wrn"):
        return torch_reference("wrn").wrn(name, 100)
    if name in torch_reference("vgg").CONFIGS:
        return torch_reference("vgg").vgg(name, 100)
    mobile = {"MobileNetV2": ("mobilenets", "cifar_mobilenet_v2"), "ShuffleV1": ("shufflenets", "shuffle_v1"),
              "ShuffleV2": ("shufflenets", "shuffle_v2")}
    if name in mobile:
        module, builder = mobile[name]
        return getattr(torch_reference(module), builder)(100)
    raise SystemExit(f"no PyTorch reference model for {name!r} in tests/torch_reference (the CIFAR zoo: resnets, "
                     f"wrn_*, vgg*, MobileNetV2, ShuffleV1/V2); rerun with --no_torch to time zkd alone")


def torch_step(teacher, student, batch, warmup):
    """A closure running one PyTorch step of the same computation."""
    import torch

    torch.manual_seed(0)
    t_model, s_model = build_torch(teacher).eval(), build_torch(student).train()
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
    return {name: getattr(steps[name], "images", batch) / float(np.median(t)) for name, t in times.items()}


def parts_table(ips: dict, contestants: list, batch: int) -> str:
    """The --components table: ms per call of each part alone and of the whole step, per
    contestant, and PyTorch's time over zkd's default (> 1: zkd is faster)."""
    ms = {key: 1000 * batch / value for key, value in ips.items()}
    ours = [c for c in contestants if c != "torch"][-1]
    names = [c if c == "torch" else f"zkd[{c}]" for c in contestants]
    lines = [f"  {'part (ms per call, same rounds)':34s}" + "".join(f"{n:>10s}" for n in names)
             + ("  torch/zkd" if "torch" in contestants else "")]
    for label, part in (("teacher forward", "teacher forward"), ("student step (CE)", "student step"),
                        ("distillation step", None)):
        row = {c: ms[c if part is None else (c, part)] for c in contestants}
        ratio = f"{row['torch'] / row[ours]:11.2f}" if "torch" in row else ""
        lines.append(f"  {label:34s}" + "".join(f"{row[c]:10.0f}" for c in contestants) + ratio)
    return "\n".join(lines)


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
    parser.add_argument("--components", action="store_true",
                        help="also time the step's parts alone: teacher forward, student step on CE")
    parser.add_argument("--matmul_size", type=int, default=0,
                        help="n of the n^3 matrix product the step's FLOP/s are set against (0: 2048 on CPU, 8192 else)")
    parser.add_argument("--steps_per_dispatch", default="",
                        help="also time zkd on device-resident synthetic CIFAR-size data with these steps per "
                             "dispatch (comma-separated, e.g. 1,10; config.steps_per_dispatch), default preset")
    parser.add_argument("--batchnorm_baseline", action="store_true",
                        help="also time the default step with BatchNorm's previous (ones-vector product) sums")
    parser.add_argument("--peak_tflops", type=float, default=0.0,
                        help="the device's peak TFLOP/s in --dtype (its data sheet's), to report the step's share of it")
    args = parser.parse_args()
    device = jax.devices()[0]
    n = args.matmul_size or (2048 if device.platform == "cpu" else 8192)
    matmul, matmul_label = matmul_rate(args.dtype, n), f"a {n}^3 {args.dtype} matrix product on this device"
    presets = args.presets.split(",") if device.platform == "cpu" else ["zkd"]
    print(f"zkd on {jax.default_backend()} ({device.device_kind}, {jax.device_count()} device(s)), dtype {args.dtype}, "
          f"jax {jax.__version__}; PyTorch eager float32 on CPU with {os.cpu_count()} cores, "
          f"{'not run' if args.no_torch else 'torch ' + __import__('torch').__version__}; "
          f"timed in interleaved rounds, median of {args.iters}")
    heads = [f"zkd[{p}] img/s" for p in presets]
    print(f"{'teacher -> student':26s} {'batch':>5s} " + " ".join(f"{h:>16s}" for h in heads)
          + f" {'torch img/s':>12s} {'zkd/torch':>9s} {'240-ep CIFAR run (h, zkd)':>26s}")
    resident = [int(k) for k in args.steps_per_dispatch.split(",") if k]
    cifar_sized = data.synthetic("cifar100") if resident else None
    for pair in args.pairs.split(","):
        teacher, student = pair.split(":")
        for batch in map(int, args.batches.split(",")):
            steps = {p: zkd_step(teacher, student, batch, args.warmup, args.dtype, p) for p in presets}
            for k in resident:
                steps[("resident", k)] = resident_step(teacher, student, batch, args.warmup, args.dtype,
                                                       presets[-1], k, cifar_sized)
            if args.batchnorm_baseline:
                from bench_layers_cpu import ones_product_batchnorm  # experiments/, this script's folder

                with ones_product_batchnorm():  # traced during the warm-up steps
                    steps[("ones-BN",)] = zkd_step(teacher, student, batch, args.warmup, args.dtype, presets[-1])
            if not args.no_torch:
                steps["torch"] = torch_step(teacher, student, batch, args.warmup)
            contestants = [c for c in steps if not isinstance(c, tuple)]
            if args.components:
                for name in contestants:
                    parts = (torch_parts(teacher, student, batch, args.warmup) if name == "torch" else
                             zkd_parts(teacher, student, batch, args.warmup, args.dtype, name))
                    steps.update({(name, part): fn for part, fn in parts.items()})
            ips = interleaved_images_per_second(steps, batch, args.iters)
            ours, theirs = ips[presets[-1]], ips.get("torch", float("nan"))
            hours = 240 * 50_000 / ours / 3600
            print(f"{teacher + ' -> ' + student:26s} {batch:5d} " + " ".join(f"{ips[p]:16.0f}" for p in presets)
                  + f" {theirs:12.0f} {ours / theirs:9.2f} {hours:26.1f}", flush=True)
            print(rate_line(steps[presets[-1]].flops / batch / 1e9, ips, contestants, matmul, matmul_label,
                            args.peak_tflops), flush=True)
            if resident:
                print(f"  zkd[{presets[-1]}] on device-resident data (augmented in the step), steps per dispatch: "
                      + ", ".join(f"x{k} {ips[('resident', k)]:.0f} img/s" for k in resident), flush=True)
            if args.batchnorm_baseline:
                print(f"  zkd[{presets[-1]}] with BatchNorm's previous ones-vector sums: "
                      f"{ips[('ones-BN',)]:.0f} img/s (current sums {ours:.0f})", flush=True)
            if args.components:
                print(parts_table(ips, contestants, batch), flush=True)
            if args.profile:
                for p in presets:
                    print(f"  profile of zkd[{p}], {teacher} -> {student}, batch {batch}:")
                    print(profile(steps[p]), flush=True)
                    for part in ("teacher forward", "student step") if args.components else ():
                        print(f"  profile of zkd[{p}], {part} alone:")
                        print(profile(steps[(p, part)]), flush=True)


if __name__ == "__main__":
    main()
