"""The "vit" zoo (docs/paper.md §8): the release's four transformer students.

- Parameter counts at the release's size (224x224, 100 classes), from ``jax.eval_shape`` of
  ``init`` (nothing runs), equal to the PyTorch references' (``tests/torch_reference/
  transformers.py``, written from the release's architecture description) counted as the
  release's ``complexity()`` counts: parameters with ``requires_grad``.
- Logits equal to the references' (eval mode, state dict converted by ``zkd.convert``, max error
  below 1e-4 of the largest logit) on small images with fewer layers (``SHALLOW``; widths, heads
  and stems as released); DeiT's training output and distillation head too. (At the full depths,
  at these sizes and at 224x224, the errors were at most 1.1e-6 when last checked by hand; too
  slow to compile for every run.)
- ``torch.nn.Unfold``'s layout for T2T-ViT's soft split, exactly.
- Stochastic depth: from the ``"dropout"`` stream, only in training, at the release's rates.
- Image sizes a model cannot take raise ``ImageSizeError`` naming the size and the fix.
- bfloat16 computation with float32 parameters and logits.
"""

from __future__ import annotations

import functools

import flax.errors
import flax.linen as nn
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import zkd.convert
import zkd.models
from torch_reference import transformers as ref
from zkd.errors import ZkdError
from zkd.models.vit import DropPath, ImageSizeError, PerformerAttention, sinusoid_table, soft_split

REFERENCES = {"deit_tiny": ref.DeiT, "t2t_vit_7": ref.T2TViT, "pit_tiny": ref.PiT,
              "pvt_tiny": ref.PVT}

# Parameters at 224x224 and 100 classes. Counted on the PyTorch references, the count the
# release's ``BaseTransformerModel.complexity()`` logs (``requires_grad`` parameters), and
# checked below against both the reference and the Flax model. Cross-check with the papers (their
# counts are at 1000 classes, i.e. + 900 * (width + 1) per head): DeiT-Ti 5,717,416 (timm's
# count; the distilled DeiT-Ti, 5,910,800, is the KD config's two-head model), T2T-ViT-7 4.26M
# (paper: 4.3M), PiT-Ti 4.85M (4.9M), PVT-Tiny 13.23M (13.2M).
COUNTS = {"deit_tiny": 5_563_400, "t2t_vit_7": 4_024_394, "pit_tiny": 4_615_972,
          "pvt_tiny": 12_767_588}
DEIT_WITHOUT_DISTILL_TOKEN = 5_543_716
# T2T-ViT's requires_grad=False tensors: two Performer feature matrices w (32 x 64) and the
# sinusoidal table of 197 positions x 256.
T2T_FIXED = 2 * 32 * 64 + 197 * 256
WIDTHS = {"deit_tiny": 192, "t2t_vit_7": 256, "pit_tiny": 256, "pvt_tiny": 512}

# Small images where the architectures still do everything they do at 224: DeiT 3x3 patches;
# T2T 12x12 -> 6x6 -> 3x3 tokens; PiT 5x5 -> 3x3 -> 2x2 maps; PVT 16, 8, 4, 2 maps, each
# spatial-reduction conv leaving a 2x2 map of keys.
SMALL = {"deit_tiny": 48, "t2t_vit_7": 48, "pit_tiny": 48, "pvt_tiny": 64}
# Forward passes run fewer layers per stage than released (every width, head count, stem and
# stage is the release's; the full depths are checked by the counts and the drop-path rates
# without running): compiling the full depths takes most of a minute on a 2-core machine. Two
# layers where the first one's drop-path rate is 0 (linear from 0), so one layer draws.
SHALLOW = {"deit_tiny": {"depth": 2}, "t2t_vit_7": {"depth": 2}, "pit_tiny": {"depths": (1, 1, 1)},
           "pvt_tiny": {"depths": (1, 1, 1, 1)}}
NUM_CLASSES = 10


def randomize(torch_model: torch.nn.Module, seed: int = 0) -> None:
    """Random LayerNorm affine parameters and large raw tensors (tokens, position tables), so a
    swapped scale/bias or a wrongly laid-out position map shows in the logits."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in torch_model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.copy_(0.6 + 0.8 * torch.rand(module.weight.shape, generator=gen))
                module.bias.copy_(0.2 * torch.randn(module.bias.shape, generator=gen))
        for name, p in torch_model.named_parameters():
            if "." not in name and p.requires_grad:  # cls_token, pos_embed*, distill_token
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))


def converted(name: str, img_size: int, **options):
    """(torch reference in eval mode, Flax model, converted variables): the ``SHALLOW`` variant,
    ``NUM_CLASSES`` classes, drop-path rate 0 on both sides."""
    options = {**SHALLOW[name], **options}
    torch.manual_seed(0)
    torch_model = REFERENCES[name](num_classes=NUM_CLASSES, img_size=img_size,
                                   drop_path_rate=0.0, **options)
    randomize(torch_model)
    torch_model.eval()
    model = zkd.models.build(name, NUM_CLASSES, zoo="vit", img_size=img_size,
                             drop_path_rate=0.0, **options)
    template = jax.eval_shape(lambda: model.init(
        jax.random.key(0), jnp.zeros((1, img_size, img_size, 3)), train=False))
    variables = zkd.convert.state_dict_to_variables(torch_model.state_dict(), template)
    return torch_model, model, variables


def images(batch: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, size, size, 3)).astype(np.float32)


def torch_logits(torch_model, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch_model(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()


def relative_error(actual, expected) -> float:
    expected = np.asarray(expected)
    return float(np.max(np.abs(np.asarray(actual) - expected)) / np.max(np.abs(expected)))


def test_the_vit_zoo_lists_the_four_students():
    assert zkd.models.available("vit") == ["deit_tiny", "pit_tiny", "pvt_tiny", "t2t_vit_7"]
    assert not set(zkd.models.available("vit")) & set(zkd.models.available("cifar"))


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_param_count_at_the_release_size(name):
    model = zkd.models.build(name, 100, zoo="vit")
    shapes = jax.eval_shape(lambda: model.init(
        jax.random.key(0), jnp.zeros((1, 224, 224, 3)), train=False))
    assert zkd.models.count_params(shapes["params"]) == COUNTS[name]
    fixed = zkd.models.count_params(shapes.get("batch_stats", {}))
    assert fixed == (T2T_FIXED if name == "t2t_vit_7" else 0)
    assert {x.dtype for x in jax.tree.leaves(shapes)} == {jnp.dtype(jnp.float32)}

    torch.manual_seed(0)
    torch_model = REFERENCES[name](num_classes=100)
    assert ref.trainable_parameters(torch_model) == COUNTS[name]
    assert sum(p.numel() for p in torch_model.parameters()) == COUNTS[name] + fixed
    # Every key and shape of the full-size state dict has its place in the Flax model.
    zkd.convert.state_dict_to_variables(torch_model.state_dict(), shapes)
    # Each head is width x K + K, so at 1000 classes (the papers' tables):
    at_1000 = COUNTS[name] + 900 * (WIDTHS[name] + 1) * (2 if name == "deit_tiny" else 1)
    assert ref.trainable_parameters(REFERENCES[name](num_classes=1000)) == at_1000


def test_deit_without_the_distillation_token():
    model = zkd.models.build("deit_tiny", 100, zoo="vit", distill_token=False)
    shapes = jax.eval_shape(lambda: model.init(
        jax.random.key(0), jnp.zeros((1, 224, 224, 3)), train=False))
    assert zkd.models.count_params(shapes["params"]) == DEIT_WITHOUT_DISTILL_TOKEN
    assert ref.trainable_parameters(ref.DeiT(distill_token=False)) == DEIT_WITHOUT_DISTILL_TOKEN
    # The papers' DeiT-Ti at 1000 classes.
    assert DEIT_WITHOUT_DISTILL_TOKEN + 900 * 193 == 5_717_416


BATCH = 32


@functools.lru_cache(maxsize=None)
def prepared(name: str):
    """(torch reference, converted variables, images, ``run``) of the ``SHALLOW`` variant at
    ``SMALL`` size, shared by the parity and drop-path tests so each model compiles once.
    ``run(variables, x, key)`` -> (training logits, their sown intermediates, evaluation logits)
    at the release's drop-path rate 0.1 (the evaluation ignores it)."""
    size = SMALL[name]
    torch_model, _, variables = converted(name, size)
    model = zkd.models.build(name, NUM_CLASSES, zoo="vit", img_size=size, **SHALLOW[name])

    @jax.jit
    def run(variables, x, key):
        trained, found = model.apply(variables, x, train=True, rngs={"dropout": key},
                                     mutable=["intermediates", "batch_stats"])
        return trained, found, model.apply(variables, x, train=False)

    return torch_model, variables, images(BATCH, size), run


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_logits_match_torch(name):
    torch_model, variables, x, run = prepared(name)
    expected = torch_logits(torch_model, x)
    logits = run(variables, x, jax.random.key(0))[2]
    assert logits.shape == (BATCH, NUM_CLASSES) and logits.dtype == jnp.float32
    assert np.all(np.isfinite(expected)) and np.max(np.abs(expected)) > 0.1
    assert relative_error(logits, expected) < 1e-4


def test_deit_training_output_and_distillation_head_match_torch():
    """Training: the class head's logits; the distillation head's are sown; evaluation: their
    mean (the KD config's two-token DeiT)."""
    torch_model, model, variables = converted("deit_tiny", 32)
    x = images(2, 32, seed=1)
    torch_model.train()  # drop-path rate 0: training differs only in the output
    expected_train = torch_logits(torch_model, x)
    expected_distill = torch_model.distill_logits.detach().numpy()
    train_logits, found = model.apply(variables, x, train=True, mutable=["intermediates"])
    distill = found["intermediates"]["distill_logits"][0]
    assert relative_error(train_logits, expected_train) < 1e-4
    assert relative_error(distill, expected_distill) < 1e-4
    eval_logits = model.apply(variables, x, train=False)
    np.testing.assert_allclose(eval_logits, (train_logits + distill) / 2, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kernel,stride,padding,size", [(7, 4, 2, 48), (3, 2, 1, 12), (3, 2, 1, 7)])
def test_soft_split_is_torch_unfold(kernel, stride, padding, size):
    x = np.random.default_rng(size).standard_normal((2, size, size, 5)).astype(np.float32)
    expected = torch.nn.functional.unfold(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()),
                                          kernel, padding=padding, stride=stride).numpy()
    out = np.asarray(soft_split(jnp.asarray(x), kernel, stride, padding))
    b, h, w, f = out.shape
    np.testing.assert_array_equal(out.reshape(b, h * w, f).transpose(0, 2, 1), expected)
    # It only copies values, in bfloat16 too.
    half = soft_split(jnp.asarray(x, jnp.bfloat16), kernel, stride, padding)
    assert half.dtype == jnp.bfloat16
    np.testing.assert_array_equal(half, out.astype(jnp.bfloat16))


def test_t2t_fixed_tensors_are_initialised_as_released():
    """The Performer's random features: orthogonal rows of norm sqrt(32); the position table:
    the sinusoids, for (S / 16)^2 + 1 positions; both in ``batch_stats``."""
    variables = jax.jit(PerformerAttention(64).init)(jax.random.key(3), jnp.zeros((1, 4, 147)))
    w = np.asarray(variables["batch_stats"]["w"])
    assert w.shape == (32, 64)
    np.testing.assert_allclose(w @ w.T, 32 * np.eye(32), atol=1e-4)
    np.testing.assert_array_equal(sinusoid_table(197, 256), ref.sinusoid_table(197, 256).numpy())
    model = zkd.models.build("t2t_vit_7", 100, zoo="vit", img_size=32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                                               train=False))
    assert shapes["batch_stats"]["pos_embed"].shape == (1, 5, 256)


def test_release_checkpoint_converts_at_full_size():
    """A full-size state dict with T2T-ViT's fixed tensors, in a pycls checkpoint's layout (the
    release's ``pycls/core/checkpoint.py``: "model_state" beside the epoch, errors, optimizer
    state and the config dump), through ``from_torch_checkpoint``."""
    torch.manual_seed(0)
    torch_model = ref.T2TViT(num_classes=100)
    state = torch_model.state_dict()
    pycls_file = {"epoch": 299, "test_err": 21.57, "ema_err": 100.0, "model_state": state,
                  "ema_state": state, "optimizer_state": {}, "cfg": "MODEL:\n  TYPE: T2TViT\n"}
    variables = zkd.convert.from_torch_checkpoint(pycls_file, "t2t_vit_7", 100, zoo="vit")
    performer = variables["batch_stats"]["t2t_module"]["attention"]["1"]["attn"]
    np.testing.assert_array_equal(performer["w"], state["t2t_module.attention.1.attn.w"].numpy())
    np.testing.assert_array_equal(variables["batch_stats"]["pos_embed"], state["pos_embed"].numpy())
    qkv = variables["params"]["layers"]["6"]["attn"]["qkv_transform"]
    np.testing.assert_array_equal(qkv["kernel"],
                                  state["layers.6.attn.qkv_transform.weight"].numpy().T)
    # A single-token DeiT checkpoint does not fit the KD config's two-token DeiT.
    with pytest.raises(zkd.convert.CheckpointMismatchError, match="distill_token"):
        zkd.convert.from_torch_checkpoint(ref.DeiT(distill_token=False).state_dict(),
                                          "deit_tiny", 100, zoo="vit")


def test_drop_path_module():
    """Each sample's branch is dropped with probability ``rate``, kept ones scaled by
    1 / (1 - rate); the same key gives the same mask, another key another; identity in eval."""
    layer = DropPath(0.1)
    x = jnp.ones((20_000, 3, 2))
    out = layer.apply({}, x, train=True, rngs={"dropout": jax.random.key(0)})
    per_sample = np.asarray(out[:, 0, 0])
    assert np.all(out == out[:, :1, :1])  # whole samples
    dropped = np.mean(per_sample == 0)
    assert abs(dropped - 0.1) < 5 * np.sqrt(0.1 * 0.9 / 20_000)
    np.testing.assert_allclose(per_sample[per_sample != 0], 1 / 0.9, rtol=1e-6)
    again = layer.apply({}, x, train=True, rngs={"dropout": jax.random.key(0)})
    other = layer.apply({}, x, train=True, rngs={"dropout": jax.random.key(1)})
    np.testing.assert_array_equal(out, again)
    assert not np.array_equal(out, other)
    np.testing.assert_array_equal(layer.apply({}, x, train=False), x)
    with pytest.raises(flax.errors.InvalidRngError):
        layer.apply({}, x, train=True)


def release_drop_rates(name: str) -> list[float]:
    """The release's drop-path rate of each drop site in call order (two per layer) at
    DROP_PATH_RATE 0.1: linear from 0 to 0.1 over the layers; PiT's 0.1 * i / 12."""
    if name == "pit_tiny":
        per_layer = [0.1 * i / 12 for i in range(12)]
    else:
        per_layer = torch.linspace(0, 0.1, {"deit_tiny": 12, "t2t_vit_7": 7, "pvt_tiny": 8}[name])
    return [float(r) for r in per_layer for _ in range(2)]


def drop_sites(model, size: int) -> list[float]:
    """The rate of every ``DropPath`` a training forward pass calls, in order (traced only)."""
    rates = []

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, DropPath) and context.method_name == "__call__":
            rates.append(context.module.rate)
        return next_fun(*args, **kwargs)

    x = jnp.zeros((1, size, size, 3))
    shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)
    with nn.intercept_methods(record):
        jax.eval_shape(functools.partial(model.apply, train=True, mutable=["batch_stats"]),
                       shapes, x, rngs={"dropout": jax.random.key(0)})
    return rates


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_drop_path_rates_are_the_releases(name):
    model = zkd.models.build(name, NUM_CLASSES, zoo="vit", img_size=SMALL[name])
    np.testing.assert_allclose(drop_sites(model, SMALL[name]), release_drop_rates(name),
                               rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_drop_path_in_the_models(name):
    """Training draws from the "dropout" stream: the same key gives the same logits, another
    key others; evaluation does not depend on the key."""
    _, variables, x, run = prepared(name)
    a, found, evaluated = run(variables, x, jax.random.key(1))
    b, _, _ = run(variables, x, jax.random.key(1))
    c, _, evaluated_c = run(variables, x, jax.random.key(2))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    np.testing.assert_array_equal(evaluated, evaluated_c)
    # Nothing trains in batch_stats (T2T-ViT's fixed tensors come back unchanged).
    jax.tree.map(np.testing.assert_array_equal, found.get("batch_stats", {}),
                 variables.get("batch_stats", {}))

    # Every drop site with a positive rate drew one mask per sample; the number of dropped
    # branches is plausible for the rates (within 5 standard deviations).
    masks = [m for m in jax.tree.leaves(found["intermediates"]) if m.dtype == jnp.bool_]
    model = zkd.models.build(name, NUM_CLASSES, zoo="vit", img_size=SMALL[name], **SHALLOW[name])
    rates = [r for r in drop_sites(model, SMALL[name]) if r > 0]
    assert len(masks) == len(rates) and all(m.shape == (BATCH,) for m in masks)
    dropped = sum(int(np.sum(~np.asarray(m))) for m in masks)
    mean = BATCH * sum(rates)
    std = np.sqrt(BATCH * sum(r * (1 - r) for r in rates))
    assert 0 < dropped and abs(dropped - mean) < 5 * std, (dropped, mean, std)


@pytest.mark.parametrize("name,size,multiple", [("deit_tiny", 200, 16), ("t2t_vit_7", 40, 16),
                                                ("pit_tiny", 36, 8), ("pvt_tiny", 48, 32)])
def test_an_image_size_the_patches_cannot_tile_is_a_named_error(name, size, multiple):
    with pytest.raises(ImageSizeError, match=f"image size {size} is not a positive multiple "
                                             f"of {multiple}.*img_size") as err:
        zkd.models.build(name, 100, zoo="vit", img_size=size)
    assert isinstance(err.value, ValueError) and isinstance(err.value, ZkdError)


def test_images_of_another_size_than_img_size_are_a_named_error():
    model = zkd.models.build("pvt_tiny", 100, zoo="vit", img_size=32)
    with pytest.raises(ImageSizeError, match="got 64x64 images but the model was built for "
                                             "img_size=32.*resize the images to 32x32"):
        jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)),
                                          train=False))
    with pytest.raises(ValueError, match="NHWC"):
        jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((32, 32, 3)), train=False))


def test_bfloat16_computation_keeps_float32_parameters_and_logits():
    torch_model, _, variables = converted("deit_tiny", 32)
    model = zkd.models.build("deit_tiny", NUM_CLASSES, zoo="vit", img_size=32, dtype=jnp.bfloat16,
                             **SHALLOW["deit_tiny"])
    x = images(2, 32)
    fresh = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                                              train=False))
    assert {v.dtype for v in jax.tree.leaves(fresh)} == {jnp.dtype(jnp.float32)}
    apply = functools.partial(model.apply, train=False)
    products = []

    def collect(jaxpr):
        for e in jaxpr.eqns:
            if e.primitive.name in ("dot_general", "conv_general_dilated"):
                products.append(e)
        for sub in jax.extend.core.subjaxprs(jaxpr):
            collect(sub)

    collect(jax.make_jaxpr(apply)(variables, x).jaxpr)
    operand_dtypes = {v.aval.dtype for e in products for v in e.invars}
    assert products and operand_dtypes == {jnp.dtype(jnp.bfloat16)}
    logits = jax.jit(apply)(variables, x)
    assert logits.dtype == jnp.float32
    assert relative_error(logits, torch_logits(torch_model, x)) < 5e-2
