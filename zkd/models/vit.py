"""The vision-transformer students of the release's ``tiny-transformers/`` folder (docs/paper.md
§8), zoo "vit": ``deit_tiny``, ``t2t_vit_7``, ``pit_tiny``, ``pvt_tiny``.

They are CIFAR-100 students, but they see CIFAR images upsampled to 224x224 (the release's
``MODEL.IMG_SIZE``), so they live in their own zoo rather than in "cifar", whose models take the
native 32x32 images at any size. Each takes one fixed square size, ``img_size`` (default 224),
because its position embeddings are sized for it::

    model = zkd.models.build("deit_tiny", 100, zoo="vit")              # img_size=224
    small = zkd.models.build("pit_tiny", 100, zoo="vit", img_size=32)   # tests

Architectures, as the release's ``pycls/models/transformers/`` files build them under the
``*_c100_KD_ours.yaml`` configs (LayerNorm eps 1e-6, exact GELU, dropout and attention dropout 0,
drop-path 0.1):

    deit_tiny   16x16 patches, width 192, 12 layers of 3 heads (qkv bias), MLP ratio 4. The KD
                config enables ``DISTILLATION.ENABLE_LOGIT``, which gives DeiT a distillation
                token and a ``distill_head`` next to the class token and ``head`` (option
                ``distill_token``, default True): training returns the class head's logits,
                evaluation the mean of both heads; both modes ``sow`` the distillation head's
                logits as ``intermediates/distill_logits`` (the release distils into that head).
    t2t_vit_7   tokens-to-token stem: soft splits of kernels (7, 3, 3), strides (4, 2, 2),
                paddings (2, 1, 1) with a single-head Performer layer of width 64 after each of
                the first two, then a Linear to width 256; a fixed sinusoidal position table; 7
                layers of 4 heads (no qkv bias), MLP ratio 2.
    pit_tiny    16x16 conv of stride 8 (27x27 tokens at 224) plus a learned position map; stages
                of widths (64, 128, 256), depths (2, 6, 4), heads (2, 4, 8), MLP ratio 4, joined
                by a depthwise 3x3 stride-2 conv that doubles the channels (the class token
                through a Linear). Drop-path rate of global layer i: 0.1 * i / 12.
    pvt_tiny    four stages: conv patch embeddings (4, 2, 2, 2) with a LayerNorm, widths (64, 128,
                320, 512), 2 layers each, heads (1, 2, 5, 8), MLP ratios (8, 8, 4, 4), keys and
                values from the tokens shrunk by a conv of stride (8, 4, 2, 1) and a LayerNorm;
                a learned position table per stage; the class token joins in the last stage.

The release's T2T-ViT, PiT and PVT files, as stored, have one head and set no
``distill_logits`` (which the release's ``distill.py`` distils into), although their released KD
logs show a distillation loss: whatever the runs used there is not in the repository, so these
three models have the class head only. The release's PVT interpolates its position tables for
images of another size than ``img_size``; here every model takes ``img_size`` only.

Parameter counts at 224x224 and 100 classes (``tests/test_models_transformers.py``): deit_tiny
5,563,400 (5,543,716 without the distillation token), t2t_vit_7 4,024,394 (plus 54,528 fixed
values in ``batch_stats``), pit_tiny 4,615,972, pvt_tiny 12,767,588.

PyTorch names (see ``zkd.models``): modules mirror the release's attribute names; the raw
``nn.Parameter`` tensors (``cls_token``, ``pos_embed``, ...) are Flax params of the same name and
the same layout as in PyTorch (PiT's position map is [1, C, H, W]). T2T-ViT's two tensors that
the release keeps fixed (``requires_grad=False``: the Performer's random features ``w`` and the
sinusoidal ``pos_embed``) live in the ``batch_stats`` collection, zkd's collection of state that
is not trained: they are carried, checkpointed and converted, never updated, and not counted as
parameters (as the release's ``complexity()`` does not count them).

Randomness: stochastic depth (``DropPath``) draws from the ``"dropout"`` rng stream, only when
``train=True``. Options every model takes: ``img_size``, ``drop_path_rate``, ``dtype``
(computation dtype; parameters float32; logits float32).
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from zkd.errors import ZkdError
from zkd.models import register
from zkd.models.layers import Dtype, classifier_output
from zkd.models.mobilenet import TORCH_DEFAULT_CONV_INIT, check_images

LN_EPS = 1e-6  # the release's TRANSFORMER.LN_EPS, every LayerNorm

# timm's trunc_normal_(std=.02) truncates at +-2 in absolute value, i.e. +-100 standard
# deviations: a plain normal.
_NORMAL_002 = nn.initializers.normal(0.02)


class ImageSizeError(ZkdError, ValueError):
    """An image size a vision transformer cannot take: not a multiple of its patch grid, or not
    the ``img_size`` the model was built for."""


def _torch_default_bias_init(fan_in: int):
    """PyTorch's default Linear / Conv2d bias, U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def linear(features: int, fan_in: int, init_style: str, *, dtype: Optional[Dtype], name: str,
           use_bias: bool = True) -> nn.Dense:
    """``nn.Linear(fan_in, features, bias=use_bias)`` initialised as the release does:
    ``"normal"`` N(0, 0.02^2) weights and zero bias (DeiT, T2T-ViT, PVT), ``"torch"`` PyTorch's
    default (PiT), ``"zeros"`` (DeiT's heads). ``[..., fan_in] -> [..., features]``."""
    if init_style == "normal":
        kernel_init, bias_init = _NORMAL_002, nn.initializers.zeros
    elif init_style == "torch":
        kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
        bias_init = _torch_default_bias_init(fan_in)
    elif init_style == "zeros":
        kernel_init = bias_init = nn.initializers.zeros
    else:
        raise ValueError(f"unknown Linear init_style {init_style!r}")
    return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
                    kernel_init=kernel_init, bias_init=bias_init, name=name)


def conv(features: int, kernel: int, stride: int, padding: int, fan_in: int, *,
         dtype: Optional[Dtype], name: str, groups: int = 1) -> nn.Conv:
    """``nn.Conv2d(.., features, kernel, stride, padding, groups=groups)`` with a bias and
    PyTorch's default initialisation (none of the four releases re-initialises its convs).
    ``fan_in`` = input channels / groups * kernel^2."""
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                   padding=((padding, padding), (padding, padding)), feature_group_count=groups,
                   use_bias=True, dtype=dtype, param_dtype=jnp.float32,
                   kernel_init=TORCH_DEFAULT_CONV_INIT,
                   bias_init=_torch_default_bias_init(fan_in), name=name)


def layer_norm(*, dtype: Optional[Dtype], name: str) -> nn.LayerNorm:
    """``nn.LayerNorm(width, eps=1e-6)``: statistics in float32 whatever ``dtype``."""
    return nn.LayerNorm(epsilon=LN_EPS, dtype=dtype, param_dtype=jnp.float32,
                        use_fast_variance=False, name=name)


def _cast(x: jax.Array, dtype: Optional[Dtype]) -> jax.Array:
    return x if dtype is None else x.astype(dtype)


def _check_input(model: str, x: jax.Array, img_size: int) -> None:
    check_images(x)
    if x.shape[1:3] != (img_size, img_size):
        raise ImageSizeError(
            f"{model}: got {x.shape[1]}x{x.shape[2]} images but the model was built for "
            f"img_size={img_size} (its position embeddings are sized for {img_size}x{img_size}); "
            f"resize the images to {img_size}x{img_size} (the release upsamples CIFAR to 224) "
            f"or build the model with img_size={x.shape[1]}")


def _check_img_size(model: str, img_size: int, multiple: int, what: str) -> None:
    if not isinstance(img_size, int) or img_size < multiple or img_size % multiple:
        below = (img_size // multiple) * multiple if isinstance(img_size, int) else 0
        hint = f"{below} or {below + multiple}" if below >= multiple else f"{multiple}"
        raise ImageSizeError(
            f"{model}: image size {img_size!r} is not a positive multiple of {multiple} ({what}); "
            f"build it with an img_size that is, e.g. {hint}")


class ModuleList(nn.Module):
    """``torch.nn.ModuleList``: child i is named ``str(i)``; ``self(i, *args)`` runs it. Called
    one child at a time, so a parent can interleave two lists (PiT's stages and pools).
    ``factories`` are called with ``name=``."""

    factories: Sequence[Callable[..., nn.Module]]

    @nn.compact
    def __call__(self, index: int, *args, **kwargs):
        return self.factories[index](name=str(index))(*args, **kwargs)


class DropPath(nn.Module):
    """Stochastic depth (timm's ``DropPath``): when ``train``, each sample's branch is zeroed
    with probability ``rate`` and the kept ones scaled by 1 / (1 - rate); the identity
    otherwise. Draws from the ``"dropout"`` stream and sows each sample's keep mask [B] as
    ``intermediates/kept`` (recorded only when that collection is mutable).
    ``[B, ...] -> [B, ...]``."""

    rate: float

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if not train or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = jax.random.bernoulli(self.make_rng("dropout"), keep, (x.shape[0],))
        self.sow("intermediates", "kept", mask)
        scale = jnp.where(mask, 1.0 / keep, 0.0).astype(x.dtype)
        return x * scale.reshape((-1,) + (1,) * (x.ndim - 1))


def attend(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """softmax(q k^T / sqrt(d)) v per head, the softmax in float32.
    q [B, N, H, d], k and v [B, M, H, d] -> [B, N, H, d]."""
    scores = jnp.einsum("bnhd,bmhd->bhnm", q, k) * (q.shape[-1] ** -0.5)
    weights = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(v.dtype)
    return jnp.einsum("bhnm,bmhd->bnhd", weights, v)


class MultiheadAttention(nn.Module):
    """The release's ``MultiheadAttention`` (width in = width out): ``qkv_transform`` laid out as
    (3, heads, head_dim), ``projection``. ``[B, N, C] -> [B, N, C]``."""

    num_heads: int
    qkv_bias: bool
    init_style: str
    dtype: Optional[Dtype] = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, n, c = x.shape
        qkv = linear(3 * c, c, self.init_style, use_bias=self.qkv_bias, dtype=self.dtype,
                     name="qkv_transform")(x)
        qkv = qkv.reshape(b, n, 3, self.num_heads, c // self.num_heads)
        out = attend(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]).reshape(b, n, c)
        return linear(c, c, self.init_style, dtype=self.dtype, name="projection")(out)


class Mlp(nn.Module):
    """``fc1``, exact GELU, ``fc2``: ``[..., C] -> [..., C]``."""

    hidden: int
    init_style: str
    dtype: Optional[Dtype] = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        x = linear(self.hidden, c, self.init_style, dtype=self.dtype, name="fc1")(x)
        x = nn.gelu(x, approximate=False)
        return linear(c, self.hidden, self.init_style, dtype=self.dtype, name="fc2")(x)


class TransformerLayer(nn.Module):
    """The release's pre-norm ``TransformerLayer`` (DeiT, T2T-ViT, PiT):
    x + drop(attn(norm1 x)), then x + drop(mlp(norm2 x)). ``[B, N, C] -> [B, N, C]``."""

    num_heads: int
    mlp_ratio: float
    qkv_bias: bool
    drop_path: float
    init_style: str
    dtype: Optional[Dtype] = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        c = x.shape[-1]
        drop = DropPath(self.drop_path, name="drop_path")
        y = layer_norm(dtype=self.dtype, name="norm1")(x)
        y = MultiheadAttention(self.num_heads, self.qkv_bias, self.init_style, self.dtype,
                               name="attn")(y)
        x = x + drop(y, train)
        y = layer_norm(dtype=self.dtype, name="norm2")(x)
        y = Mlp(int(c * self.mlp_ratio), self.init_style, self.dtype, name="mlp")(y)
        return x + drop(y, train)


def encoder_layers(rates: Sequence[float], num_heads: int, mlp_ratio: float, qkv_bias: bool,
                   init_style: str, dtype: Optional[Dtype]) -> tuple:
    """Factories of ``TransformerLayer``s, one per drop-path rate."""
    return tuple(functools.partial(TransformerLayer, num_heads=num_heads, mlp_ratio=mlp_ratio,
                                   qkv_bias=qkv_bias, drop_path=float(r), init_style=init_style,
                                   dtype=dtype)
                 for r in rates)


def linear_rates(rate: float, n: int) -> np.ndarray:
    """Drop-path rates growing linearly from 0 to ``rate`` over ``n`` layers
    (``torch.linspace(0, rate, n)``, float32 as there)."""
    return np.linspace(0.0, rate, n, dtype=np.float32)


def _tokens(x: jax.Array) -> jax.Array:
    """[B, H, W, C] -> [B, H * W, C] (row-major positions, as PyTorch's flatten(2))."""
    return x.reshape(x.shape[0], -1, x.shape[-1])


def _prepend(tokens: Sequence[jax.Array], x: jax.Array) -> jax.Array:
    """[B, N, C] with the [1, 1, C] ``tokens`` (broadcast over the batch) in front."""
    b, _, c = x.shape
    return jnp.concatenate([jnp.broadcast_to(_cast(t, x.dtype), (b, 1, c)) for t in tokens]
                           + [x], axis=1)


# ------------------------------------------------------------------------------------ DeiT

class ConvEmbedding(nn.Module):
    """A patch x patch conv of stride ``stride`` without padding, named ``conv_name``: DeiT's
    ``patch_embed.projection`` (stride = patch), PiT's ``patch_embed.conv`` (overlapping).
    ``[B, S, S, C] -> [B, (S - patch) / stride + 1, ..., features]``."""

    features: int
    patch: int
    stride: int
    conv_name: str
    dtype: Optional[Dtype] = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return conv(self.features, self.patch, self.stride, 0, x.shape[-1] * self.patch ** 2,
                    dtype=self.dtype, name=self.conv_name)(x)


class DeiT(nn.Module):
    """DeiT (Touvron et al. 2021) as the release builds it: NHWC [B, S, S, C] -> logits [B, K].

    With ``distill_token`` (the KD config's ``ENABLE_LOGIT``), training returns ``head``'s
    logits and evaluation the mean of ``head`` and ``distill_head``; both sow the distillation
    head's logits as ``intermediates/distill_logits``.
    """

    num_classes: int = 100
    img_size: int = 224
    patch_size: int = 16
    hidden_dim: int = 192
    depth: int = 12
    num_heads: int = 3
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.1
    distill_token: bool = True
    dtype: Optional[Dtype] = None

    def __post_init__(self):
        _check_img_size("DeiT", self.img_size, self.patch_size,
                        f"the patch size {self.patch_size}")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        _check_input("DeiT", x, self.img_size)
        d = self.hidden_dim
        x = _tokens(ConvEmbedding(d, self.patch_size, self.patch_size, "projection", self.dtype,
                                  name="patch_embed")(x))
        tokens = [self.param("cls_token", _NORMAL_002, (1, 1, d))]
        if self.distill_token:
            tokens.append(self.param("distill_token", _NORMAL_002, (1, 1, d)))
        x = _prepend(tokens, x)
        x = x + _cast(self.param("pos_embed", _NORMAL_002, (1, x.shape[1], d)), x.dtype)
        layers = ModuleList(encoder_layers(linear_rates(self.drop_path_rate, self.depth),
                                           self.num_heads, self.mlp_ratio, True, "normal",
                                           self.dtype), name="layers")
        for i in range(self.depth):
            x = layers(i, x, train)
        x = layer_norm(dtype=self.dtype, name="norm")(x)
        logits = linear(self.num_classes, d, "zeros", dtype=self.dtype, name="head")(x[:, 0])
        logits = classifier_output(logits)
        if not self.distill_token:
            return logits
        distill = classifier_output(
            linear(self.num_classes, d, "zeros", dtype=self.dtype, name="distill_head")(x[:, 1]))
        self.sow("intermediates", "distill_logits", distill)
        return logits if train else (logits + distill) / 2


# ------------------------------------------------------------------------------- T2T-ViT

def soft_split(x: jax.Array, kernel: int, stride: int, padding: int) -> jax.Array:
    """``torch.nn.Unfold`` in NHWC: every kernel x kernel window (zero padding ``padding``,
    stride ``stride``) flattened channel-major, (C, kh, kw), as PyTorch orders it.
    [B, H, W, C] -> [B, H', W', C * kernel^2]. Exact in any dtype: a convolution with one-hot
    filters at the highest precision only copies values."""
    return jax.lax.conv_general_dilated_patches(
        x, (kernel, kernel), (stride, stride), ((padding, padding), (padding, padding)),
        dimension_numbers=("NHWC", "OIHW", "NHWC"), precision=jax.lax.Precision.HIGHEST)


def sinusoid_table(n: int, width: int) -> np.ndarray:
    """[1, n, width] float32: sin(p / 10000^(2 (j // 2) / width)) at even j, cos at odd j."""
    pos = np.arange(n, dtype=np.float64)[:, None]
    j = np.arange(width)[None, :]
    angle = pos / np.power(10000.0, 2 * (j // 2) / width)
    return np.where(j % 2 == 0, np.sin(angle), np.cos(angle)).astype(np.float32)[None]


class PerformerAttention(nn.Module):
    """T2T-ViT's single-head Performer attention (Choromanski et al. 2021) of width
    ``features``, with ``m = features * kernel_ratio`` fixed random features ``w`` [m, features]
    (orthogonal rows of norm sqrt(m); ``batch_stats``, never trained). Keys, queries and values
    are split from ``qkv_transform`` in that order; the values are added to the projected
    output. Feature maps and products in float32, as released. ``[B, N, C] -> [B, N, features]``.
    """

    features: int
    kernel_ratio: float = 0.5
    dtype: Optional[Dtype] = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        m = int(self.features * self.kernel_ratio)
        w = self.variable(
            "batch_stats", "w",
            lambda: nn.initializers.orthogonal()(self.make_rng("params"), (m, self.features))
            * math.sqrt(m)).value
        kqv = linear(3 * self.features, x.shape[-1], "normal", dtype=self.dtype,
                     name="qkv_transform")(x)
        k, q, v = jnp.split(kqv.astype(jnp.float32), 3, axis=-1)

        def features(t):  # exp(w t - |t|^2 / 2) / sqrt(m): [B, N, C] -> [B, N, m]
            return jnp.exp(t @ w.T - 0.5 * jnp.sum(t * t, axis=-1, keepdims=True)) / math.sqrt(m)

        kf, qf = features(k), features(q)
        normaliser = jnp.einsum("bnm,bm->bn", qf, jnp.sum(kf, axis=1))[..., None]
        context = jnp.einsum("bnm,bnc->bmc", kf, v)
        y = jnp.einsum("bnm,bmc->bnc", qf, context) / (normaliser + 1e-8)
        y = linear(self.features, self.features, "normal", dtype=self.dtype,
                   name="projection")(_cast(y, self.dtype))
        return _cast(v, y.dtype) + y


class PerformerLayer(nn.Module):
    """x = attn(norm1 x) (the width changes, so no residual), then x + mlp(norm2 x); no
    drop-path. ``[B, N, C] -> [B, N, features]``."""

    features: int
    dtype: Optional[Dtype] = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = layer_norm(dtype=self.dtype, name="norm1")(x)
        x = PerformerAttention(self.features, dtype=self.dtype, name="attn")(x)
        y = layer_norm(dtype=self.dtype, name="norm2")(x)
        return x + Mlp(self.features, "normal", self.dtype, name="mlp")(y)


class Token2Token(nn.Module):
    """The tokens-to-token stem (``t2t_module``): soft split, then for each further kernel a
    Performer layer (``attention.<i>``) on the tokens and a soft split of their map; finally
    ``projection`` to ``features``. ``[B, S, S, C] -> [B, (S / prod(strides))^2, features]``."""

    features: int
    token_dim: int = 64
    kernels: Sequence[int] = (7, 3, 3)
    strides: Sequence[int] = (4, 2, 2)
    paddings: Sequence[int] = (2, 1, 1)
    dtype: Optional[Dtype] = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = soft_split(x, self.kernels[0], self.strides[0], self.paddings[0])
        attention = ModuleList(tuple(
            functools.partial(PerformerLayer, self.token_dim, self.dtype)
            for _ in self.kernels[1:]), name="attention")
        for i in range(1, len(self.kernels)):
            b, h, w, c = x.shape
            x = attention(i - 1, x.reshape(b, h * w, c)).reshape(b, h, w, self.token_dim)
            x = soft_split(x, self.kernels[i], self.strides[i], self.paddings[i])
        x = _tokens(x)
        return linear(self.features, x.shape[-1], "normal", dtype=self.dtype,
                      name="projection")(x)


class T2TViT(nn.Module):
    """T2T-ViT (Yuan et al. 2021) as the release builds it: NHWC [B, S, S, C] -> logits [B, K]."""

    num_classes: int = 100
    img_size: int = 224
    hidden_dim: int = 256
    depth: int = 7
    num_heads: int = 4
    mlp_ratio: float = 2.0
    token_dim: int = 64
    drop_path_rate: float = 0.1
    dtype: Optional[Dtype] = None

    # Kernels (7, 3, 3), strides (4, 2, 2), paddings (2, 1, 1): an S x S image gives
    # (S / 16)^2 tokens exactly when 16 divides S.
    STRIDE = 16

    def __post_init__(self):
        _check_img_size("T2T-ViT", self.img_size, self.STRIDE,
                        "the tokens-to-token strides 4 x 2 x 2")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        _check_input("T2T-ViT", x, self.img_size)
        d = self.hidden_dim
        x = Token2Token(d, self.token_dim, dtype=self.dtype, name="t2t_module")(x)
        x = _prepend([self.param("cls_token", _NORMAL_002, (1, 1, d))], x)
        table = self.variable("batch_stats", "pos_embed",
                              lambda: jnp.asarray(sinusoid_table(x.shape[1], d))).value
        x = x + _cast(table, x.dtype)
        layers = ModuleList(encoder_layers(linear_rates(self.drop_path_rate, self.depth),
                                           self.num_heads, self.mlp_ratio, False, "normal",
                                           self.dtype), name="layers")
        for i in range(self.depth):
            x = layers(i, x, train)
        x = layer_norm(dtype=self.dtype, name="norm")(x)
        return classifier_output(linear(self.num_classes, d, "normal", dtype=self.dtype,
                                        name="head")(x[:, 0]))


# ----------------------------------------------------------------------------------- PiT

class PiTStage(nn.Module):
    """One stage (``transformers.<s>``): its ``blocks`` over [class token; tokens of the map].
    (map [B, h, w, C], cls [B, 1, C]) -> the same shapes."""

    rates: Sequence[float]
    num_heads: int
    mlp_ratio: float
    dtype: Optional[Dtype] = None

    @nn.compact
    def __call__(self, x: jax.Array, cls_tokens: jax.Array, train: bool = False):
        b, h, w, c = x.shape
        n_cls = cls_tokens.shape[1]
        x = jnp.concatenate([cls_tokens, _tokens(x)], axis=1)
        blocks = ModuleList(encoder_layers(self.rates, self.num_heads, self.mlp_ratio, True,
                                           "torch", self.dtype), name="blocks")
        for i in range(len(self.rates)):
            x = blocks(i, x, train)
        return x[:, n_cls:].reshape(b, h, w, c), x[:, :n_cls]


class HeadPooling(nn.Module):
    """``pools.<s>``: ``conv``, a 3x3 stride-2 conv with one group per input channel (each
    channel gives features / C outputs), and ``fc`` on the class token.
    (map [B, h, w, C], cls [B, 1, C]) -> ([B, ceil(h/2), ceil(w/2), F], [B, 1, F])."""

    features: int
    stride: int = 2
    dtype: Optional[Dtype] = None

    @nn.compact
    def __call__(self, x: jax.Array, cls_tokens: jax.Array):
        c = x.shape[-1]
        k = self.stride + 1
        x = conv(self.features, k, self.stride, self.stride // 2, k * k, groups=c,
                 dtype=self.dtype, name="conv")(x)
        return x, linear(self.features, c, "torch", dtype=self.dtype, name="fc")(cls_tokens)


class PiT(nn.Module):
    """PiT (Heo et al. 2021) as the release builds it: NHWC [B, S, S, C] -> logits [B, K]."""

    num_classes: int = 100
    img_size: int = 224
    patch_size: int = 16
    stride: int = 8
    hidden_dims: Sequence[int] = (64, 128, 256)
    depths: Sequence[int] = (2, 6, 4)
    num_heads: Sequence[int] = (2, 4, 8)
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.1
    dtype: Optional[Dtype] = None

    def __post_init__(self):
        _check_img_size("PiT", self.img_size, self.stride,
                        f"the patch stride {self.stride}, so that {self.patch_size}x"
                        f"{self.patch_size} patches tile the image")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        _check_input("PiT", x, self.img_size)
        dims = tuple(self.hidden_dims)
        x = ConvEmbedding(dims[0], self.patch_size, self.stride, "conv", self.dtype,
                          name="patch_embed")(x)
        side = x.shape[1]
        pos = self.param("pos_embed", _NORMAL_002, (1, dims[0], side, side))  # PyTorch's NCHW
        x = x + _cast(pos.transpose(0, 2, 3, 1), x.dtype)
        cls_tokens = jnp.broadcast_to(
            _cast(self.param("cls_token", _NORMAL_002, (1, 1, dims[0])), x.dtype),
            (x.shape[0], 1, dims[0]))
        total, start, stages = sum(self.depths), 0, []
        for s, depth in enumerate(self.depths):
            rates = tuple(self.drop_path_rate * i / total for i in range(start, start + depth))
            start += depth
            stages.append(functools.partial(PiTStage, rates, self.num_heads[s], self.mlp_ratio,
                                            self.dtype))
        transformers = ModuleList(tuple(stages), name="transformers")
        pools = ModuleList(tuple(functools.partial(HeadPooling, dims[s + 1], dtype=self.dtype)
                                 for s in range(len(dims) - 1)), name="pools")
        for s in range(len(dims)):
            x, cls_tokens = transformers(s, x, cls_tokens, train)
            if s + 1 < len(dims):
                x, cls_tokens = pools(s, x, cls_tokens)
        cls_tokens = layer_norm(dtype=self.dtype, name="norm")(cls_tokens)
        return classifier_output(linear(self.num_classes, dims[-1], "torch", dtype=self.dtype,
                                        name="head")(cls_tokens[:, 0]))


# ----------------------------------------------------------------------------------- PVT

class PVTPatchEmbed(nn.Module):
    """``patch_embed<i>``: ``proj`` (patch x patch conv, stride patch) then ``norm`` over the
    tokens. ``[B, H, W, C] -> ([B, H/p * W/p, D], (H/p, W/p))``."""

    features: int
    patch: int
    dtype: Optional[Dtype] = None

    @nn.compact
    def __call__(self, x: jax.Array):
        x = conv(self.features, self.patch, self.patch, 0, x.shape[-1] * self.patch ** 2,
                 dtype=self.dtype, name="proj")(x)
        return layer_norm(dtype=self.dtype, name="norm")(_tokens(x)), x.shape[1:3]


class SpatialReductionAttention(nn.Module):
    """PVT's attention: queries ``q`` from every token; keys and values ``kv`` (laid out as
    (2, heads, head_dim)) from the h x w map shrunk by ``sr`` (a conv of kernel and stride
    ``sr_ratio``) and ``norm`` when sr_ratio > 1; ``proj``. ``[B, N, C] -> [B, N, C]``, N = h w
    (+1 for the class token of the last stage, where sr_ratio is 1)."""

    num_heads: int
    sr_ratio: int
    dtype: Optional[Dtype] = None

    @nn.compact
    def __call__(self, x: jax.Array, h: int, w: int) -> jax.Array:
        b, n, c = x.shape
        d = c // self.num_heads
        q = linear(c, c, "normal", dtype=self.dtype, name="q")(x).reshape(b, n, self.num_heads, d)
        source = x
        if self.sr_ratio > 1:
            r = self.sr_ratio
            source = conv(c, r, r, 0, c * r * r, dtype=self.dtype, name="sr")(x.reshape(b, h, w, c))
            source = layer_norm(dtype=self.dtype, name="norm")(_tokens(source))
        kv = linear(2 * c, c, "normal", dtype=self.dtype, name="kv")(source)
        kv = kv.reshape(b, -1, 2, self.num_heads, d)
        out = attend(q, kv[:, :, 0], kv[:, :, 1]).reshape(b, n, c)
        return linear(c, c, "normal", dtype=self.dtype, name="proj")(out)


class PVTBlock(nn.Module):
    """``block<i>.<j>``: x + drop(attn(norm1 x)), then x + drop(mlp(norm2 x))."""

    num_heads: int
    mlp_ratio: float
    sr_ratio: int
    drop_path: float
    dtype: Optional[Dtype] = None

    @nn.compact
    def __call__(self, x: jax.Array, h: int, w: int, train: bool = False) -> jax.Array:
        drop = DropPath(self.drop_path, name="drop_path")
        y = layer_norm(dtype=self.dtype, name="norm1")(x)
        y = SpatialReductionAttention(self.num_heads, self.sr_ratio, self.dtype,
                                      name="attn")(y, h, w)
        x = x + drop(y, train)
        y = layer_norm(dtype=self.dtype, name="norm2")(x)
        y = Mlp(int(x.shape[-1] * self.mlp_ratio), "normal", self.dtype, name="mlp")(y)
        return x + drop(y, train)


class PVT(nn.Module):
    """PVT (Wang et al. 2021) as the release builds it: NHWC [B, S, S, C] -> logits [B, K]."""

    num_classes: int = 100
    img_size: int = 224
    patch_sizes: Sequence[int] = (4, 2, 2, 2)
    hidden_dims: Sequence[int] = (64, 128, 320, 512)
    depths: Sequence[int] = (2, 2, 2, 2)
    num_heads: Sequence[int] = (1, 2, 5, 8)
    mlp_ratios: Sequence[float] = (8, 8, 4, 4)
    sr_ratios: Sequence[int] = (8, 4, 2, 1)
    drop_path_rate: float = 0.1
    dtype: Optional[Dtype] = None

    def __post_init__(self):
        multiple = int(np.prod(self.patch_sizes))
        _check_img_size("PVT", self.img_size, multiple,
                        "the product of the stage patch sizes "
                        + " x ".join(str(p) for p in self.patch_sizes))
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        _check_input("PVT", x, self.img_size)
        rates = iter(linear_rates(self.drop_path_rate, sum(self.depths)))
        stages, grid = len(self.hidden_dims), None
        for i in range(stages):
            c = self.hidden_dims[i]
            if grid is not None:  # the previous stage's tokens back to their map
                x = x.reshape(x.shape[0], *grid, x.shape[-1])
            x, grid = PVTPatchEmbed(c, self.patch_sizes[i], self.dtype,
                                    name=f"patch_embed{i + 1}")(x)
            if i == stages - 1:
                x = _prepend([self.param("cls_token", _NORMAL_002, (1, 1, c))], x)
            x = x + _cast(self.param(f"pos_embed{i + 1}", _NORMAL_002, (1, x.shape[1], c)),
                          x.dtype)
            blocks = ModuleList(tuple(
                functools.partial(PVTBlock, self.num_heads[i], self.mlp_ratios[i],
                                  self.sr_ratios[i], float(next(rates)), self.dtype)
                for _ in range(self.depths[i])), name=f"block{i + 1}")
            for j in range(self.depths[i]):
                x = blocks(j, x, *grid, train)
        x = layer_norm(dtype=self.dtype, name="norm")(x)
        return classifier_output(linear(self.num_classes, x.shape[-1], "normal",
                                        dtype=self.dtype, name="head")(x[:, 0]))


def _factory(cls):
    def build(num_classes: int, **options) -> nn.Module:
        return cls(num_classes=num_classes, **options)

    return build


for _name, _cls in (("deit_tiny", DeiT), ("t2t_vit_7", T2TViT), ("pit_tiny", PiT),
                    ("pvt_tiny", PVT)):
    register(_name, zoo="vit")(_factory(_cls))
