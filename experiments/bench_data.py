"""Training-input throughput of the CIFAR pipelines (host tf.data and device-resident JAX).

    python experiments/bench_data.py [--seconds 10] [--batch 64]

Data: synthetic CIFAR-shaped uint8 arrays (50,000 x 32 x 32 x 3), because real CIFAR cannot be
downloaded on the offline development machine. After ``load_arrays`` the host pipeline does
not look at the pixel values, so the figures hold for real CIFAR (loading the arrays from
TFDS is a one-off of a few seconds, not counted).

Host: ``zkd.data.pipeline.in_memory_train_batches`` (what ``train_batches`` runs for CIFAR):
sampler, gather, random crop from the zero-padded image, flip, normalize; and the MLKD two-view
variant (adds an independent crop/flip and RandAugment + Cutout). Device: the jitted
``device_train_batch`` (gather + crop + flip + normalize) on the default JAX backend.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from zkd import data  # noqa: E402
from zkd.data import pipeline  # noqa: E402


def host_rate(images, labels, batch, seconds, two_views):
    it = pipeline.in_memory_train_batches(
        data.DATASETS["cifar100"], images, labels, global_batch_size=batch, seed=0, two_views=two_views
    )
    for _ in range(20):  # warm-up: tracing, prefetch buffers
        next(it)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        next(it)
        n += 1
    return n * batch / (time.perf_counter() - start)


def device_rate(images, labels, batch, seconds):
    images, labels = jnp.asarray(images), jnp.asarray(labels)
    step = 0
    out = data.device_train_batch(0, step, images, labels, dataset="cifar100", global_batch_size=batch)
    jax.block_until_ready(out)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step += 1
        out = data.device_train_batch(0, step, images, labels, dataset="cifar100", global_batch_size=batch)
        n += 1
    jax.block_until_ready(out)
    return n * batch / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--batch", type=int, nargs="+", default=[64, 512])
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (50_000, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 100, 50_000).astype(np.int32)
    print(f"CPU cores: {os.cpu_count()}; JAX backend: {jax.default_backend()} ({jax.devices()[0].device_kind})")
    print("data: synthetic CIFAR-shaped uint8 arrays (real CIFAR is not available offline)")
    for batch in args.batch:
        print(f"batch {batch:4d}  host crop+flip          {host_rate(images, labels, batch, args.seconds, False):10,.0f} img/s")
        print(f"batch {batch:4d}  host MLKD two views     {host_rate(images, labels, batch, args.seconds, True):10,.0f} img/s")
        print(f"batch {batch:4d}  device gather+crop+flip {device_rate(images, labels, batch, args.seconds):10,.0f} img/s")


if __name__ == "__main__":
    main()
