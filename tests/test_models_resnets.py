"""The ResNet-family zoo (CIFAR ResNets, WRN, VGG, CIFAR ResNet18/50, ImageNet ResNets):
parameter counts (docs/paper.md §5, torchvision), logits equal to independent PyTorch references
with random BN statistics on several input sizes, bfloat16 computation, training-mode BN."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import zkd.models
from model_equivalence import (assert_torch_flax_equal, one_torch_thread, param_count,  # noqa: F401
                               randomize_batchnorm, torch_to_flax)
from torch_reference.resnets import CIFAR_RESNETS, cifar_resnet, four_stage_resnet
from torch_reference.vgg import vgg
from torch_reference.wrn import wrn

# docs/paper.md §5 (100 classes) and torchvision (1000 classes).
CIFAR_COUNTS = {
    "resnet8": 83_892, "resnet14": 181_108, "resnet20": 278_324, "resnet32": 472_756,
    "resnet44": 667_188, "resnet56": 861_620, "resnet110": 1_736_564, "resnet8x4": 1_233_540,
    "resnet32x4": 7_433_860, "wrn_16_1": 180_916, "wrn_16_2": 703_284, "wrn_40_1": 569_780,
    "wrn_40_2": 2_255_156, "vgg8": 3_965_028, "vgg11": 9_277_284, "vgg13": 9_462_180,
    "vgg16": 14_774_436, "vgg19": 20_086_692, "ResNet18": 11_220_132, "ResNet50": 23_705_252,
}
LARGE = {"resnet110", "vgg16", "vgg19", "ResNet18", "ResNet50"}  # batch 1 keeps the tests fast
FOUR_STAGE = {"ResNet18", "ResNet50"}
IMAGENET_COUNTS = {"ResNet18": 11_689_512, "ResNet34": 21_797_672, "ResNet50": 25_557_032}


def torch_cifar(name: str, num_classes: int, in_channels: int) -> torch.nn.Module:
    if name in CIFAR_RESNETS:
        return cifar_resnet(name, num_classes, in_channels)
    if name.startswith("wrn_"):
        return wrn(name, num_classes, in_channels)
    if name.startswith("vgg"):
        return vgg(name, num_classes, in_channels)
    return four_stage_resnet(name, num_classes, imagenet=False, in_channels=in_channels)


@pytest.mark.parametrize("name", sorted(CIFAR_COUNTS))
def test_cifar_param_count(name):
    assert name in zkd.models.available("cifar")
    assert param_count(name, 100, "cifar", (1, 32, 32, 3)) == CIFAR_COUNTS[name]


@pytest.mark.parametrize("name", sorted(IMAGENET_COUNTS))
def test_imagenet_param_count(name):
    assert name in zkd.models.available("imagenet")
    assert param_count(name, 1000, "imagenet", (1, 64, 64, 3)) == IMAGENET_COUNTS[name]


@pytest.mark.parametrize("name", sorted(CIFAR_COUNTS))
def test_cifar_logits_match_torch(name):
    # 32x32 RGB (CIFAR) and an odd size, then 28x28 grayscale (Fashion-MNIST), 10 classes.
    batch = 1 if name in LARGE else 2
    rgb = [(batch, 32, 32, 3), (1, 20, 36, 3)]
    if name == "vgg8":
        rgb.append((1, 64, 64, 3))  # the reference's extra pooling after block 3
    jit = name in FOUR_STAGE  # compiled whole: no other model shares their layers' shapes
    assert_torch_flax_equal(torch_cifar(name, 10, 3), name, 10, "cifar", rgb, jit=jit)
    assert_torch_flax_equal(torch_cifar(name, 10, 1), name, 10, "cifar", [(1, 28, 28, 1)], seed=1, jit=jit)


@pytest.mark.parametrize("name", sorted(IMAGENET_COUNTS))
def test_imagenet_logits_match_torch(name):
    torch_model = four_stage_resnet(name, 12, imagenet=True)
    assert_torch_flax_equal(torch_model, name, 12, "imagenet", [(1, 64, 64, 3), (1, 96, 80, 3)])


def test_bfloat16_computation_keeps_float32_state():
    torch_model = cifar_resnet("resnet8", 10)
    randomize_batchnorm(torch_model)
    _, variables = torch_to_flax(torch_model, "resnet8", 10, "cifar", (2, 16, 16, 3))
    images = np.random.default_rng(0).standard_normal((2, 16, 16, 3)).astype(np.float32)
    f32 = jax.jit(zkd.models.build("resnet8", 10).apply)(variables, images)
    bf16_model = zkd.models.build("resnet8", 10, dtype=jnp.bfloat16)
    bf16 = jax.jit(bf16_model.apply)(variables, images)
    assert bf16.dtype == jnp.float32  # logits are handed to the losses in float32
    scale = float(jnp.max(jnp.abs(f32)))
    assert float(jnp.max(jnp.abs(bf16 - f32))) / scale < 5e-2
    # Initialised in bfloat16 computation, the state is float32.
    fresh = jax.eval_shape(lambda: bf16_model.init(
        jax.random.key(0), jnp.zeros((1, 32, 32, 3), jnp.bfloat16), train=False))
    assert {x.dtype for x in jax.tree.leaves(fresh)} == {jnp.dtype(jnp.float32)}
    train_apply = jax.jit(lambda v, x: bf16_model.apply(v, x, train=True, mutable=["batch_stats"]))
    _, updates = train_apply(variables, images)
    assert {x.dtype for x in jax.tree.leaves(updates)} == {jnp.dtype(jnp.float32)}


@pytest.mark.parametrize("name", ["resnet8", "wrn_16_1", "vgg8", "ResNet18"])
def test_training_forward_matches_torch_and_updates_batch_stats(name):
    """Train-mode BN: batch statistics normalise, running stats move with PyTorch's momentum."""
    torch_model = torch_cifar(name, 10, 3)
    randomize_batchnorm(torch_model)
    model, variables = torch_to_flax(torch_model, name, 10, "cifar", (4, 16, 16, 3))
    images = np.random.default_rng(0).standard_normal((4, 16, 16, 3)).astype(np.float32)

    logits, updates = model.apply(variables, images, train=True, mutable=["batch_stats"])
    torch_model.train()
    with torch.no_grad():
        torch_logits = torch_model(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()
    scale = np.max(np.abs(torch_logits))
    np.testing.assert_allclose(np.asarray(logits), torch_logits, atol=1e-4 * scale)

    old = variables["batch_stats"]
    new = updates["batch_stats"]
    assert jax.tree.structure(new) == jax.tree.structure(old)
    assert all(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(old), jax.tree.leaves(new)))
    # The first BN sees the stem conv over B*H*W = 4*16*16 values per channel. PyTorch keeps the
    # unbiased variance, Flax the biased one (see zkd.models.layers): undo that factor.
    path = FIRST_BN[name.split("_")[0].rstrip("0123456789")]
    torch_bn = torch_model.get_submodule(".".join(path))
    old_stats, new_stats = old, new
    for key in path:
        old_stats, new_stats = old_stats[key], new_stats[key]
    np.testing.assert_allclose(new_stats["mean"], torch_bn.running_mean.numpy(), rtol=1e-5, atol=1e-6)
    n = 4 * 16 * 16
    batch_var = (np.asarray(new_stats["var"]) - 0.9 * np.asarray(old_stats["var"])) / 0.1
    np.testing.assert_allclose(0.9 * np.asarray(old_stats["var"]) + 0.1 * batch_var * n / (n - 1),
                               torch_bn.running_var.numpy(), rtol=1e-4)


# Path of the first BatchNorm of each family, in both trees.
FIRST_BN = {"resnet": ("bn1",), "ResNet": ("bn1",), "vgg": ("block0", "1"),
            "wrn": ("block1", "layer", "0", "bn1")}


def test_initialisation_follows_pytorch():
    """Kaiming-normal (fan_out) convs, BN scale 1 / bias 0, PyTorch's uniform Linear, finite
    logits straight after init (what training from scratch, e.g. a teacher, starts from)."""
    model = zkd.models.build("resnet8", num_classes=100)
    images = jnp.zeros((1, 16, 16, 1))
    # The "rbg" generator compiles several times faster than threefry here.
    variables = jax.jit(lambda k: model.init(k, images, train=False))(jax.random.key(0, impl="rbg"))
    params = variables["params"]
    kernel = np.asarray(params["layer3"]["0"]["conv2"]["kernel"])  # 3x3, 64 -> 64
    assert abs(kernel.std() / np.sqrt(2.0 / (9 * 64)) - 1) < 0.03
    assert abs(kernel.mean()) < 1e-3
    np.testing.assert_array_equal(params["bn1"]["scale"], 1.0)
    np.testing.assert_array_equal(params["bn1"]["bias"], 0.0)
    np.testing.assert_array_equal(variables["batch_stats"]["bn1"]["var"], 1.0)
    bound = 1 / np.sqrt(64)
    for leaf in (params["fc"]["kernel"], params["fc"]["bias"]):
        assert np.all(np.abs(leaf) <= bound) and np.abs(leaf).max() > 0.9 * bound
    logits = model.apply(variables, np.ones((2, 16, 16, 1), np.float32), train=False)
    assert logits.shape == (2, 100) and bool(jnp.all(jnp.isfinite(logits)))
