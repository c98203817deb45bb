"""The same numbers on any device count: BatchNorm's batch sums, every model family's training
gradient with the batch sharded over 2 and 8 devices against one device, and training steps on
1 vs 4 devices measured against the size of their updates (docs/parallelism.md)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from tests.test_step import _batch, _build, _step
from zkd import models, parallel, recipes, xla_options
from zkd.models.batchnorm import _limb_bits, batch_sum


# Float64 programs: the CPU backend compiles them without its expensive LLVM passes (a mobile
# network's gradient otherwise takes ~30 s to compile, three times per family).
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _sharded(fn, n, *, replicated_args=0, compiler_options=None):
    """``fn`` jitted over an n-device mesh as the trainer compiles it (zkd's CPU options unless
    ``compiler_options``): the first ``replicated_args`` arguments replicated, the rest sharded
    along their leading axis."""
    mesh = parallel.make_mesh(n)

    def call(*args):
        shardings = tuple(parallel.replicated(mesh) if i < replicated_args else parallel.batch_sharded(mesh)
                          for i in range(len(args)))
        jitted = jax.jit(fn, in_shardings=shardings, out_shardings=parallel.replicated(mesh),
                         compiler_options=compiler_options or xla_options.compiler_options(mesh.devices.flat))
        return jax.tree.map(np.asarray, jitted(*args))

    return call


# ----------------------------------------------------------------------------- batch_sum

def _rows(seed, shape, scale=1.0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * scale
    x[:, ..., 0] *= 1e6          # a channel with a large common offset and spread
    x[:, ..., 1] += 3.0
    x[:, ..., 2] = 0.0           # an all-zero channel
    return x.astype(np.float32)


def test_batch_sum_is_within_an_ulp_of_the_exact_sum():
    x = _rows(0, (16, 5, 5, 6))
    got = np.asarray(jax.jit(batch_sum)(x))
    per_example = x.reshape(16, -1, 6).astype(np.float32).sum(1, dtype=np.float32)  # float32, as zkd
    exact = per_example.astype(np.float64).sum(0)
    np.testing.assert_allclose(got, exact, rtol=2.5e-7, atol=0)
    assert got[2] == 0.0
    # and close to the float64 sum of all positions (the per-example float32 sums' own rounding)
    np.testing.assert_allclose(got, x.astype(np.float64).sum((0, 1, 2)), rtol=1e-6, atol=1e-3)


def test_batch_sum_gives_the_same_bits_in_any_batch_order_and_on_any_device_count():
    x = _rows(1, (16, 4, 4, 6))
    reference = np.asarray(jax.jit(batch_sum)(x))
    for permutation in (np.arange(16)[::-1], np.random.default_rng(2).permutation(16)):
        np.testing.assert_array_equal(np.asarray(jax.jit(batch_sum)(x[permutation])), reference)
    for n in (2, 8):
        np.testing.assert_array_equal(_sharded(batch_sum, n)(x), reference)


def test_batch_sum_of_a_non_finite_channel_is_nan_and_float64_stays_float64():
    x = _rows(3, (8, 2, 2, 4))
    x[3, 1, 0, 1] = np.inf
    x[5, 0, 0, 3] = np.nan
    got = np.asarray(jax.jit(batch_sum)(x))
    assert np.isnan(got[1]) and np.isnan(got[3]) and np.isfinite(got[[0, 2]]).all()
    with jax.enable_x64(True):
        x64 = np.random.default_rng(4).standard_normal((8, 3, 3, 2))
        got = jax.jit(batch_sum)(jnp.asarray(x64))
        assert got.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(got), x64.sum((0, 1, 2)), rtol=1e-13)


@pytest.mark.parametrize("batch", [1, 64, 65, 4096, 1 << 16])
def test_batch_sum_limbs_cannot_overflow_int32(batch):
    bits = _limb_bits(batch)
    assert batch * 2 ** bits < 2 ** 31 and bits >= 14
    x = np.full((batch, 1), -1.0, np.float32)  # every per-example sum at the scale's extreme
    np.testing.assert_allclose(np.asarray(jax.jit(batch_sum)(x)), [-float(batch)])


# ----------------------------------------------------------------------------- model gradients
# (name, zoo, build options, image side).
FAMILIES = {
    "cifar_resnet": ("resnet8", "cifar", {}, 32),
    "cifar_resnet_wide": ("resnet8x4", "cifar", {}, 8),
    "wrn": ("wrn_16_1", "cifar", {}, 8),
    "vgg": ("vgg8", "cifar", {}, 8),
    "cifar_resnet18": ("ResNet18", "cifar", {}, 8),
    "mobilenet_v2": ("MobileNetV2", "cifar", {}, 8),
    "shufflenet_v1": ("ShuffleV1", "cifar", {}, 8),
    "shufflenet_v2": ("ShuffleV2", "cifar", {}, 8),
    "imagenet_resnet": ("ResNet18", "imagenet", {}, 8),
    "imagenet_mobilenet_v1": ("MobileNetV1", "imagenet", {}, 8),
    "imagenet_mobilenet_v2": ("MobileNetV2", "imagenet", {}, 8),
    "deit": ("deit_tiny", "vit", {"img_size": 32}, 32),
    "t2t_vit": ("t2t_vit_7", "vit", {"img_size": 32}, 32),
    "pit": ("pit_tiny", "vit", {"img_size": 32}, 32),
    "pvt": ("pvt_tiny", "vit", {"img_size": 32}, 32),
}
# Float32 is compared where roundoff stays roundoff: the transformers (GELU, softmax, LayerNorm:
# no kinks) and resnet8, the network the device-count bug was reported on (4.5e-2 before zkd's
# batch sums, 2e-6 now). A ReLU network otherwise amplifies float32 roundoff layer by layer (the
# thin mobile ones at initialisation to ~1e-4 in their last layers) until some ReLU input lies
# within it of zero; its mask then flips under any change of summation order (XLA's per-example
# kernels are not always the same bits at another local batch size), with zkd's BatchNorm as with
# flax's, and the gradient differs by that one term (vgg8 at 10 classes: 4.7e-4). Those families
# are compared in float64, where the same computation has ~1e-16 roundoff and no mask flips: any
# dependence on the device count beyond roundoff (statistics per device, a wrong all-reduce, a
# sharding-dependent grouped convolution) shows there. docs/parallelism.md.
FLOAT32 = {"cifar_resnet", "deit", "t2t_vit", "pit", "pvt"}
TOLERANCE = {np.float32: 2e-5, np.float64: 1e-9}


def _training_gradient(model):
    def grad(variables, images, labels):
        def loss(params):
            logits, _ = model.apply({**variables, "params": params}, images, train=True,
                                    mutable=["batch_stats"], rngs={"dropout": jax.random.key(3)})
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return jax.grad(loss)(variables["params"])
    return grad


def _worst_relative_difference(reference, other):
    """Largest per-leaf max |difference| / max |reference leaf|; a leaf whose gradient is
    (near) zero is measured against 1e-3 of the largest leaf instead."""
    leaves, others = jax.tree.leaves(reference), jax.tree.leaves(other)
    largest = max(np.abs(a).max() for a in leaves)
    return max(np.abs(a - b).max() / max(np.abs(a).max(), 1e-3 * largest) for a, b in zip(leaves, others))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_sharded_training_gradient_equals_the_one_device_gradient(family):
    name, zoo, build_options, side = FAMILIES[family]
    dtype = np.float32 if family in FLOAT32 else np.float64
    batch = 16 if dtype == np.float32 else 8  # 8 and 2 (float64: 4 and 1) examples per device
    options = None if dtype == np.float32 else FAST_COMPILE
    with jax.enable_x64(dtype == np.float64):
        model = models.build(name, 10, zoo=zoo, **build_options)
        rng = np.random.default_rng(0)
        images = rng.standard_normal((batch, side, side, 3)).astype(dtype)
        labels = rng.integers(0, 10, batch).astype(np.int32)
        variables = jax.jit(functools.partial(model.init, train=False))(jax.random.key(2), images[:1].astype(np.float32))
        variables = jax.tree.map(lambda a: np.asarray(a, dtype), dict(variables))
        grad = _training_gradient(model)
        one = _sharded(grad, 1, replicated_args=1, compiler_options=options)(variables, images, labels)
        for n in (2, 8):
            other = _sharded(grad, n, replicated_args=1, compiler_options=options)(variables, images, labels)
            worst = _worst_relative_difference(one, other)
            assert worst < TOLERANCE[dtype], f"{family} on {n} devices: {worst:.2e}"


# ----------------------------------------------------------------------------- training steps

def test_four_devices_take_the_one_device_steps_relative_to_their_size():
    """Three KD+LS steps of resnet8 from the same state on the same global batches: the parameter
    updates on 4 devices equal those on one to ~1e-5 of the update (before zkd's batch sums, 1.4%)."""
    c = recipes.cifar_distillation("kd", "resnet8", "resnet8", True)
    results = []
    for n in (1, 4):
        run, settings = _build(c, steps_per_epoch=1, mesh=parallel.make_mesh(n))
        start = jax.tree.map(np.asarray, run.state.students[0].params)
        state = run.state
        for i in range(3):
            state, m = _step(run, state, _batch(settings, batch=8, seed=i))  # 2 examples per device
        s = state.students[0]
        update = jax.tree.map(lambda a, b: np.asarray(a) - b, s.params, start)
        results.append((update, jax.tree.map(np.asarray, s.batch_stats), float(m["loss"])))
    (u1, b1, l1), (u4, b4, l4) = results
    worst = _worst_relative_difference(u1, u4)
    assert worst < 1e-4, f"updates on 4 devices differ by {worst:.2e} of their size"
    np.testing.assert_allclose(l4, l1, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7), b1, b4)
