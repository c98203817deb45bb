"""Benchmark: loss + gradient time of KD and DKD, with and without standardization, under jit.

    python experiments/bench_losses.py [--batch 64,512,8192] [--classes 1000] [--repeats 200]

Prints the median time per call of ``jax.value_and_grad`` w.r.t. the student logits for each
batch size, the overhead standardization adds to KD (target <= 20%) and to DKD (#16 asks <= 5% on
a GPU), and, side by side in the same run, DKD in its previous formulation (three log-softmaxes
per logit set, kept below as the baseline) against ``zkd.losses.dkd_loss`` (one max and one
exp-sum over the non-target logits per set). Times are wall-clock on whatever backend JAX picks;
compile time is excluded.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from zkd import losses
from zkd.losses import _common
from zkd.losses.kd import kl_per_example, tempered_logits


def dkd_log_softmax_form(student, teacher, labels, alpha, beta, temperature, logit_stand=False):
    """The baseline: zkd's DKD before 2026-12-02 (same numbers to float32 roundoff): log-softmax
    of all classes, log-sum-exp of its non-target part, and a log-softmax of the non-target logits."""
    student, teacher = _common.as_logit_pair(student, teacher)
    s, v = tempered_logits(student, teacher, temperature, logit_stand, 1e-7, 1)
    is_target = jax.nn.one_hot(labels, s.shape[-1], dtype=jnp.bool_)

    def binary(log_p):
        return jnp.stack([jnp.sum(jnp.where(is_target, log_p, 0.0), axis=-1),
                          jax.nn.logsumexp(jnp.where(is_target, -jnp.inf, log_p), axis=-1)], axis=-1)

    tckd = kl_per_example(binary(jax.nn.log_softmax(v)), binary(jax.nn.log_softmax(s)))
    nckd = kl_per_example(jax.nn.log_softmax(jnp.where(is_target, -jnp.inf, v)),
                          jax.nn.log_softmax(jnp.where(is_target, -jnp.inf, s)))
    return jnp.mean((alpha * tckd + beta * nckd) * temperature**2)


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
    parser.add_argument("--batch", default="512", help="batch sizes, comma-separated")
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()

    def grad_of(loss):
        return jax.jit(jax.value_and_grad(loss))

    cases = {
        "KD": grad_of(lambda s, t, y: losses.kd_loss(s, t, 4.0)),
        "KD + LS": grad_of(lambda s, t, y: losses.kd_loss(s, t, 2.0, logit_stand=True)),
        "DKD": grad_of(lambda s, t, y: losses.dkd_loss(s, t, y, 1.0, 8.0, 4.0)),
        "DKD + LS": grad_of(lambda s, t, y: losses.dkd_loss(s, t, y, 9.0, 18.0, 2.0, logit_stand=True)),
        "DKD, baseline": grad_of(lambda s, t, y: dkd_log_softmax_form(s, t, y, 1.0, 8.0, 4.0)),
        "DKD + LS, baseline": grad_of(lambda s, t, y: dkd_log_softmax_form(s, t, y, 9.0, 18.0, 2.0, True)),
    }
    print(f"loss + gradient, K={args.classes}, backend={jax.default_backend()}, "
          f"device={jax.devices()[0].device_kind}, jax {jax.__version__}, median of {args.repeats} (ms)")
    for batch in (int(b) for b in args.batch.split(",")):
        key_s, key_t, key_y = jax.random.split(jax.random.key(0), 3)
        shape = (batch, args.classes)
        student = jax.random.normal(key_s, shape, jnp.float32)
        teacher = 3.0 * jax.random.normal(key_t, shape, jnp.float32)
        labels = jax.random.randint(key_y, (batch,), 0, args.classes)
        r = _median_seconds(cases, (student, teacher, labels), args.repeats)
        print(f"B={batch}: " + ", ".join(f"{name} {seconds * 1e3:.3f}" for name, seconds in r.items()))
        print(f"  standardization overhead: on KD {100 * (r['KD + LS'] / r['KD'] - 1):+.1f}% (target <= +20%), "
              f"on DKD {100 * (r['DKD + LS'] / r['DKD'] - 1):+.1f}% (#16: <= +5% on a GPU); "
              f"DKD vs baseline {r['DKD, baseline'] / r['DKD']:.2f}x faster, "
              f"DKD + LS {r['DKD + LS, baseline'] / r['DKD + LS']:.2f}x", flush=True)


if __name__ == "__main__":
    main()
