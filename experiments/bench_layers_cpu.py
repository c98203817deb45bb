"""Benchmark: the layers behind the CPU step's profile, XLA's defaults vs zkd's options vs PyTorch.

    python experiments/bench_layers_cpu.py [--iters 10]

For the 3x3 convolutions of the CIFAR ResNets (batch 64; the resnet20 widths 16/32/64 and the
resnet8x4 widths 64/128/256 at 32/16/8 pixels) and their training-mode BatchNorm: milliseconds of
the forward pass and of forward + backward (``jax.grad`` of ``sum(y^2)`` w.r.t. input and
weights), compiled (1) with XLA's CPU defaults, (2) with zkd's options (``zkd.xla_options``: no
YNNPACK convolutions), next to (3) PyTorch eager on the same tensors (NCHW, its default threads).
BatchNorm, all under zkd's options: ``flax.linen.BatchNorm`` (reductions),
``zkd.models.batchnorm.BatchNorm`` (per-example sums, then an exact fixed-point sum over the batch:
the same statistics on any device count, docs/parallelism.md) and, as the baseline it replaced,
the same module with each batch sum a product with a vector of ones (``ones[N] @ x[N, C]``, zkd's
formulation until 2026-12-07, whose rounding depended on the device count). Median of --iters calls after two warm-up calls. Findings:
docs/performance.md.
"""

import argparse
import contextlib
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from zkd import xla_options
from zkd.models import batchnorm
from zkd.models.batchnorm import BatchNorm

CONVS = [(64, 32, 16, 16), (64, 16, 32, 32), (64, 8, 64, 64), (64, 32, 64, 64), (64, 16, 128, 128), (64, 8, 256, 256)]


def median_ms(fn, iters):
    for _ in range(2):
        jax.block_until_ready(fn())
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))


def jax_conv_ms(x, w, options, iters):
    fwd = jax.jit(conv, compiler_options=options)
    grad = jax.jit(jax.grad(lambda x, w: jnp.sum(conv(x, w) ** 2), (0, 1)), compiler_options=options)
    return median_ms(lambda: fwd(x, w), iters), median_ms(lambda: grad(x, w), iters)


def torch_conv_ms(x, w, iters):
    import torch
    xt = torch.tensor(np.asarray(x).transpose(0, 3, 1, 2).copy(), requires_grad=True)
    wt = torch.tensor(np.asarray(w).transpose(3, 2, 0, 1).copy(), requires_grad=True)

    def fwd():
        with torch.no_grad():
            return torch.nn.functional.conv2d(xt, wt, padding=1)

    def both():
        xt.grad = wt.grad = None
        (torch.nn.functional.conv2d(xt, wt, padding=1) ** 2).sum().backward()

    return median_ms(fwd, iters), median_ms(both, iters)


def ones_product_sum(x):
    """The previous batch sum: ``ones[N] @ x[N, C]`` over all B x H x W positions, float32 [C]."""
    x2 = x.reshape(-1, x.shape[-1])
    return jnp.dot(jnp.ones((x2.shape[0],), x2.dtype), x2, precision=jax.lax.Precision.HIGHEST,
                   preferred_element_type=jnp.float32)


@contextlib.contextmanager
def ones_product_batchnorm():
    """zkd's BatchNorm traced with the previous batch sums (the module looks ``batch_sum`` up when traced)."""
    exact = batchnorm.batch_sum
    batchnorm.batch_sum = ones_product_sum
    try:
        yield
    finally:
        batchnorm.batch_sum = exact


def bn_ms(module, x, options, iters):
    variables = module.init(jax.random.key(0), x)

    def loss(params, x):
        y, _ = module.apply({"params": params, "batch_stats": variables["batch_stats"]}, x, mutable=["batch_stats"])
        return jnp.sum(jax.nn.relu(y) * x)

    grad = jax.jit(jax.grad(loss, (0, 1)), compiler_options=options)
    return median_ms(lambda: grad(variables["params"], x), iters)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=10)
    args = parser.parse_args()
    import torch
    os.environ.pop(xla_options.ENV, None)
    ours = xla_options.compiler_options()
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}, torch {torch.__version__} with "
          f"{torch.get_num_threads()} threads; zkd's options: {ours}; ms, median of {args.iters}")
    print(f"{'conv 3x3 (B, HW, Cin, Cout)':30s} {'fwd xla':>8s} {'fwd zkd':>8s} {'fwd torch':>9s} "
          f"{'f+b xla':>8s} {'f+b zkd':>8s} {'f+b torch':>9s}")
    rng = np.random.default_rng(0)
    for b, hw, cin, cout in CONVS:
        x = jnp.asarray(rng.standard_normal((b, hw, hw, cin)), jnp.float32)
        w = jnp.asarray(0.1 * rng.standard_normal((3, 3, cin, cout)), jnp.float32)
        fx, bx = jax_conv_ms(x, w, None, args.iters)
        fz, bz = jax_conv_ms(x, w, ours, args.iters)
        ft, bt = torch_conv_ms(x, w, args.iters)
        print(f"{str((b, hw, cin, cout)):30s} {fx:8.1f} {fz:8.1f} {ft:9.1f} {bx:8.1f} {bz:8.1f} {bt:9.1f}", flush=True)
    print(f"\n{'BatchNorm + ReLU fwd+bwd (B, HW, C)':36s} {'flax':>8s} {'zkd':>8s} {'ones-product (before)':>22s}")
    for b, hw, _, c in CONVS:
        x = jnp.asarray(rng.standard_normal((b, hw, hw, c)), jnp.float32)
        flax_bn = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5, use_fast_variance=False)
        zkd_bn = BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5)
        flax_ms, zkd_ms = bn_ms(flax_bn, x, ours, args.iters), bn_ms(zkd_bn, x, ours, args.iters)
        with ones_product_batchnorm():
            before_ms = bn_ms(zkd_bn, x, ours, args.iters)
        print(f"{str((b, hw, c)):36s} {flax_ms:8.2f} {zkd_ms:8.2f} {before_ms:22.2f}", flush=True)


if __name__ == "__main__":
    main()
