"""The mobile zoo (CIFAR MobileNetV2 / ShuffleV1 / ShuffleV2, ImageNet MobileNetV1 / V2):
parameter counts (docs/paper.md §5, torchvision), logits equal to independent PyTorch references
with random BN statistics on several input sizes, channel shuffle semantics, training-mode BN,
bfloat16 computation with float32 state."""

from __future__ import annotations

import functools

import flax.errors
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import zkd.convert
import zkd.models
from model_equivalence import (assert_torch_flax_equal, one_torch_thread, param_count,  # noqa: F401
                               randomize_batchnorm, torch_to_flax)
from torch_reference.mobilenets import (cifar_mobilenet_v2, imagenet_mobilenet_v1,
                                        torchvision_mobilenet_v2)
from torch_reference.shufflenets import shuffle, shuffle_v1, shuffle_v2
from zkd.models.shufflenet import channel_shuffle

TORCH_CIFAR = {"MobileNetV2": cifar_mobilenet_v2, "ShuffleV1": shuffle_v1, "ShuffleV2": shuffle_v2}
TORCH_IMAGENET = {"MobileNetV1": imagenet_mobilenet_v1, "MobileNetV2": torchvision_mobilenet_v2}

# docs/paper.md §5 at 100 classes; ImageNet at 1000 classes (torchvision's MobileNetV2 count).
CIFAR_COUNTS = {"MobileNetV2": 812_836, "ShuffleV1": 949_258, "ShuffleV2": 1_355_528}
IMAGENET_COUNTS = {"MobileNetV1": 4_231_976, "MobileNetV2": 3_504_872}


def torch_logits_of(torch_model: torch.nn.Module, images: np.ndarray, train: bool) -> np.ndarray:
    """PyTorch logits [B, K] of NHWC ``images``, in training or evaluation mode."""
    torch_model.train(train)
    with torch.no_grad():
        return torch_model(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()


def converted_cifar(name: str, shape):
    """(torch model with random BN state, Flax model, its converted variables, NHWC images)."""
    torch.manual_seed(0)
    torch_model = TORCH_CIFAR[name](10)
    randomize_batchnorm(torch_model)
    model, variables = torch_to_flax(torch_model, name, 10, "cifar", shape)
    images = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    return torch_model, model, variables, images


@pytest.mark.parametrize("name", sorted(CIFAR_COUNTS))
def test_cifar_param_count(name):
    assert name in zkd.models.available("cifar")
    assert param_count(name, 100, "cifar", (1, 32, 32, 3)) == CIFAR_COUNTS[name]
    torch.manual_seed(0)
    assert sum(p.numel() for p in TORCH_CIFAR[name](100).parameters()) == CIFAR_COUNTS[name]


@pytest.mark.parametrize("name", sorted(IMAGENET_COUNTS))
def test_imagenet_param_count(name):
    assert name in zkd.models.available("imagenet")
    assert param_count(name, 1000, "imagenet", (1, 64, 64, 3)) == IMAGENET_COUNTS[name]


@pytest.mark.parametrize("name", sorted(TORCH_CIFAR))
def test_cifar_logits_match_torch(name):
    # CIFAR 32x32 RGB, then Fashion-MNIST 28x28 grayscale (resolutions 14, 7, 4, 2 inside).
    torch.manual_seed(0)
    assert_torch_flax_equal(TORCH_CIFAR[name](10), name, 10, "cifar", [(2, 32, 32, 3)], jit=True)
    assert_torch_flax_equal(TORCH_CIFAR[name](10, in_channels=1), name, 10, "cifar",
                            [(1, 28, 28, 1)], seed=1, jit=True)


@pytest.mark.parametrize("name", sorted(TORCH_IMAGENET))
def test_imagenet_logits_match_torch(name):
    torch.manual_seed(0)
    assert_torch_flax_equal(TORCH_IMAGENET[name](12), name, 12, "imagenet",
                            [(1, 64, 64, 3), (1, 96, 96, 3)], jit=True)


@pytest.mark.parametrize("groups", [1, 2, 3])
def test_channel_shuffle_matches_torch_nchw(groups):
    x = np.random.default_rng(groups).standard_normal((2, 3, 4, 12)).astype(np.float32)
    expected = shuffle(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), groups).numpy()
    np.testing.assert_array_equal(np.asarray(channel_shuffle(x, groups)),
                                  expected.transpose(0, 2, 3, 1))
    with pytest.raises(ValueError, match="cannot shuffle 12 channels into 5 groups"):
        channel_shuffle(x, 5)


@pytest.mark.parametrize("name", ["MobileNetV2", "ShuffleV2"])
def test_training_forward_matches_torch_and_updates_batch_stats(name):
    """Train mode: batch statistics normalise; every running mean moves as PyTorch's does."""
    torch_model, model, variables, images = converted_cifar(name, (4, 32, 32, 3))

    logits, updates = jax.jit(functools.partial(model.apply, train=True, mutable=["batch_stats"]))(
        variables, images)
    torch_logits = torch_logits_of(torch_model, images, train=True)
    np.testing.assert_allclose(np.asarray(logits), torch_logits,
                               atol=1e-4 * np.max(np.abs(torch_logits)))

    old, new = variables["batch_stats"], updates["batch_stats"]
    assert jax.tree.structure(new) == jax.tree.structure(old)
    assert all(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(old), jax.tree.leaves(new)))
    # PyTorch's updated running statistics, converted by name, equal Flax's. Means exactly;
    # variances up to PyTorch's unbiased factor n/(n-1) on the new part, n = B*H*W of the layer
    # (between 4*16*16 and 4*2*2 here), one factor per layer (see zkd.models.layers).
    expected = zkd.convert.state_dict_to_variables(torch_model.state_dict(), variables)
    expected = dict(jax.tree_util.tree_flatten_with_path(expected["batch_stats"])[0])
    previous = dict(jax.tree_util.tree_flatten_with_path(old)[0])
    for path, value in jax.tree_util.tree_flatten_with_path(new)[0]:
        if path[-1].key == "mean":
            np.testing.assert_allclose(value, expected[path], rtol=1e-4, atol=1e-5,
                                       err_msg=str(path))
        else:
            ratio = (expected[path] - 0.9 * previous[path]) / (value - 0.9 * previous[path])
            np.testing.assert_allclose(ratio, ratio[0], rtol=1e-3, err_msg=str(path))
            assert 1 < ratio[0] <= 16 / 15 + 1e-3, (path, ratio[0])


def conv_dtypes(jaxpr) -> set:
    """Operand dtypes of every convolution in ``jaxpr``, nested jaxprs included."""
    found = set()
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "conv_general_dilated":
            found |= {v.aval.dtype for v in eqn.invars}
    for sub in jax.extend.core.subjaxprs(jaxpr):
        found |= conv_dtypes(sub)
    return found


@pytest.mark.parametrize("name", ["MobileNetV2", "ShuffleV1"])
def test_bfloat16_computation_keeps_float32_state(name):
    torch_model, _, variables, images = converted_cifar(name, (2, 32, 32, 3))
    model = zkd.models.build(name, 10, dtype=jnp.bfloat16)

    # Every convolution computes in bfloat16, in evaluation and in training.
    for train in (False, True):
        jaxpr = jax.make_jaxpr(functools.partial(model.apply, train=train,
                                                 mutable=["batch_stats"]))(variables, images)
        assert conv_dtypes(jaxpr.jaxpr) == {jnp.dtype(jnp.bfloat16)}
    # Parameters and statistics stay float32, from init and after a training step.
    fresh = jax.eval_shape(lambda: model.init(
        jax.random.key(0), jnp.zeros((1, 32, 32, 3), jnp.bfloat16), train=False))
    assert {x.dtype for x in jax.tree.leaves(fresh)} == {jnp.dtype(jnp.float32)}
    _, updates = jax.eval_shape(functools.partial(model.apply, train=True,
                                                  mutable=["batch_stats"]), variables, images)
    assert {x.dtype for x in jax.tree.leaves(updates)} == {jnp.dtype(jnp.float32)}
    # Logits come back in float32 (the losses need the range) and close to PyTorch's float32.
    logits = jax.jit(functools.partial(model.apply, train=False))(variables, images)
    assert logits.dtype == jnp.float32
    torch_logits = torch_logits_of(torch_model, images, train=False)
    assert np.max(np.abs(logits - torch_logits)) / np.max(np.abs(torch_logits)) < 5e-2


def test_imagenet_mobilenet_v2_dropout_only_in_training():
    model = zkd.models.build("MobileNetV2", 5, zoo="imagenet", dropout_rate=0.5)
    images = jnp.ones((2, 16, 16, 3))
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), images, train=False))
    variables = jax.tree.map(lambda s: jnp.full(s.shape, 0.5, s.dtype), shapes)
    with pytest.raises(flax.errors.InvalidRngError):
        jax.eval_shape(functools.partial(model.apply, train=True, mutable=["batch_stats"]),
                       variables, images)

    @jax.jit
    def run(variables, key):
        evaluated = model.apply(variables, images, train=False)
        trained, _ = model.apply(variables, images, train=True, mutable=["batch_stats"],
                                 rngs={"dropout": key})
        return evaluated, trained

    evaluated, trained = run(variables, jax.random.key(1))
    # Constant weights: without dropout every logit is the same; dropout makes them differ.
    assert evaluated.shape == trained.shape == (2, 5)
    np.testing.assert_allclose(evaluated, evaluated[0, 0], rtol=1e-6)
    assert float(jnp.std(trained)) > 0


@pytest.mark.parametrize("name", sorted(CIFAR_COUNTS))
def test_rejects_non_image_input(name):
    model = zkd.models.build(name, 10)
    with pytest.raises(ValueError, match="NHWC"):
        model.init(jax.random.key(0), jnp.zeros((32, 32, 3)), train=False)


# ----------------------------------------------------------------------------- grouped convolutions


@pytest.mark.parametrize("shape,kernel,stride,padding,groups,features,use_bias", [
    ((2, 9, 9, 6), 3, 1, 1, 6, 6, False),    # depthwise (MobileNetV2, ShuffleNets)
    ((2, 9, 9, 6), 3, 2, 1, 6, 6, True),     # depthwise, stride 2, odd size
    ((2, 5, 5, 12), 1, 1, 0, 3, 9, False),   # 1x1 grouped (ShuffleV1)
    ((2, 7, 7, 8), 3, 2, 1, 2, 4, False),    # any other grouping: XLA's convolution
])
def test_grouped_conv_matches_xla_grouped_convolution(shape, kernel, stride, padding, groups, features, use_bias):
    """zkd.models.layers.GroupedConv (the CPU formulation) against lax.conv_general_dilated with
    feature_group_count (values and gradients) and against flax's nn.Conv (same variables, same
    initial values from the same key)."""
    from zkd.models import layers

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    module = layers.conv(features, kernel, stride, padding, groups=groups, use_bias=use_bias, name="c")
    reference = flax.linen.Conv(features, (kernel, kernel), strides=(stride, stride),
                                padding=((padding, padding),) * 2, feature_group_count=groups, use_bias=use_bias,
                                kernel_init=layers.conv_init, name="c")
    ours, theirs = module.init(jax.random.key(3), x), reference.init(jax.random.key(3), x)
    assert jax.tree.structure(ours) == jax.tree.structure(theirs)
    jax.tree.map(np.testing.assert_array_equal, ours, theirs)
    variables = jax.tree.map(lambda v: v + 0.1 * jnp.asarray(rng.standard_normal(v.shape), jnp.float32), ours)

    def loss(apply, v, x):
        return jnp.sum(jnp.sin(apply(v, x)))

    np.testing.assert_allclose(module.apply(variables, x), reference.apply(variables, x), rtol=1e-5, atol=1e-5)
    ours_grad = jax.grad(lambda v, x: loss(module.apply, v, x), argnums=(0, 1))(variables, x)
    theirs_grad = jax.grad(lambda v, x: loss(reference.apply, v, x), argnums=(0, 1))(variables, x)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), ours_grad, theirs_grad)


def test_grouped_conv_refuses_channels_that_do_not_split():
    from zkd.models import layers

    with pytest.raises(ValueError, match="do not split into 4 groups"):
        layers.conv(8, 1, groups=4, name="c").init(jax.random.key(0), jnp.zeros((1, 3, 3, 6)))
