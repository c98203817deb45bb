"""Benchmark: loss + gradient time of KD (with / without standardization) and DKD under jit.

    python experiments/bench_losses.py [--batch 512] [--classes 1000] [--repeats 200]

Prints the median time per call of ``jax.value_and_grad`` w.r.t. the student logits, and the
overhead standardization adds to KD (the target is at most 20%). Times are wall-clock on
whatever backend JAX picks (CPU here); compile time is excluded.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from zkd import losses


def _median_seconds(cases: dict, args, repeats: int) -> dict:
    """Median wall time per case; cases interleaved round by round so load drift hits all alike."""
    for fn in cases.values():
        jax.block_until_ready(fn(*args))  # compile
    times = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()

    key_s, key_t, key_y = jax.random.split(jax.random.key(0), 3)
    shape = (args.batch, args.classes)
    student = jax.random.normal(key_s, shape, jnp.float32)
    teacher = 3.0 * jax.random.normal(key_t, shape, jnp.float32)
    labels = jax.random.randint(key_y, (args.batch,), 0, args.classes)

    cases = {
        "KD": jax.jit(jax.value_and_grad(lambda s, t, y: losses.kd_loss(s, t, 4.0))),
        "KD + LS": jax.jit(jax.value_and_grad(lambda s, t, y: losses.kd_loss(s, t, 2.0, logit_stand=True))),
        "DKD": jax.jit(jax.value_and_grad(lambda s, t, y: losses.dkd_loss(s, t, y, 1.0, 8.0, 4.0))),
        "DKD + LS": jax.jit(
            jax.value_and_grad(lambda s, t, y: losses.dkd_loss(s, t, y, 9.0, 18.0, 2.0, logit_stand=True))
        ),
    }
    print(f"loss + gradient, B={args.batch}, K={args.classes}, backend={jax.default_backend()}, "
          f"device={jax.devices()[0].device_kind}, median of {args.repeats}")
    results = _median_seconds(cases, (student, teacher, labels), args.repeats)
    for name, seconds in results.items():
        print(f"  {name:10s} {seconds * 1e3:8.3f} ms")
    for base in ("KD", "DKD"):
        overhead = results[f"{base} + LS"] / results[base] - 1.0
        print(f"  standardization overhead on {base}: {overhead * 100:+.1f}% (target <= +20%)")


if __name__ == "__main__":
    main()
