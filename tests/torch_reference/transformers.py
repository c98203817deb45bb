"""PyTorch vision transformers written for zkd's tests: the four students of the release's
``tiny-transformers/`` folder (docs/paper.md §8) at their CIFAR-100 sizes.

Written from the architecture description of ``tiny-transformers/pycls/models/transformers/``
({deit,t2t_vit,pit,pvt}.py, common.py) and the ``*_c100_KD_ours.yaml`` configs; the module
attribute names are the release's, so these models' state dicts have the keys the release's
checkpoints have. Facts they reproduce:

- every LayerNorm has eps 1e-6 (``TRANSFORMER.LN_EPS``); GELU is the exact (erf) one;
- DeiT-Tiny: patch 16 conv, hidden 192, 12 layers of 3 heads with a qkv bias, MLP ratio 4. Under
  the KD config (``DISTILLATION.ENABLE_LOGIT: True``) it has a distillation token and
  ``distill_head`` beside the class token and ``head``: training returns the class head's
  logits (``distill_logits`` keeps the other head's), evaluation the mean of both heads;
- T2T-ViT-7: three soft splits (kernels 7, 3, 3; strides 4, 2, 2; paddings 2, 1, 1), two
  single-head Performer layers of width 64 between them (random features ``w``, 32 x 64, fixed:
  ``requires_grad=False``; keys, queries, values split from ``qkv_transform`` in that order;
  the values added to the projected output), a linear projection to 256, a fixed sinusoidal
  position table (``requires_grad=False``), 7 layers of 4 heads without a qkv bias, MLP ratio 2;
- PiT-Tiny: a 16x16 conv of stride 8 (27x27 tokens at 224) plus a learned [1, 64, 27, 27]
  position map, three stages (64, 128, 256 wide; 2, 6, 4 layers; 2, 4, 8 heads; qkv bias; MLP
  ratio 4) joined by a depthwise 3x3 conv of stride 2 that doubles the channels (the class token
  through a Linear); the drop-path rate of global layer i is 0.1 * i / 12;
- PVT-Tiny: four stages (patches 4, 2, 2, 2; widths 64, 128, 320, 512; 2 layers each; heads 1,
  2, 5, 8; MLP ratios 8, 8, 4, 4; keys and values from a conv of stride 8, 4, 2, 1 over the
  tokens followed by a LayerNorm), each a conv patch embedding with a LayerNorm and a learned
  position table; the class token joins in the last stage only.

Drop-path rates elsewhere grow linearly from 0 to ``drop_path_rate`` over the layers. Images are
NCHW; every model takes exactly ``img_size`` x ``img_size`` inputs.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

LN_EPS = 1e-6


def norm(width: int) -> nn.LayerNorm:
    return nn.LayerNorm(width, eps=LN_EPS)


class DropPath(nn.Module):
    """Stochastic depth: in training, zero a whole sample's branch with probability ``p`` and
    scale the kept ones by 1 / (1 - p)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        keep = 1.0 - self.p
        mask = torch.bernoulli(torch.full((x.shape[0],) + (1,) * (x.dim() - 1), keep,
                                          device=x.device, dtype=x.dtype))
        return x * mask / keep


def linear_rates(rate: float, n: int) -> list[float]:
    """``torch.linspace(0, rate, n)`` as floats."""
    return torch.linspace(0, rate, n).tolist()


class Attention(nn.Module):
    """Multi-head self-attention: one ``qkv_transform`` Linear, heads laid out as
    (3, heads, head_dim) in its output, softmax(q k^T / sqrt(head_dim)) v, ``projection``."""

    def __init__(self, width: int, heads: int, qkv_bias: bool):
        super().__init__()
        self.heads = heads
        self.qkv_transform = nn.Linear(width, 3 * width, bias=qkv_bias)
        self.projection = nn.Linear(width, width)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv_transform(x).reshape(b, n, 3, self.heads, c // self.heads).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [b, heads, n, d]
        weights = torch.softmax((q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5, dim=-1)
        return self.projection((weights @ v).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class EncoderLayer(nn.Module):
    """Pre-norm layer: x + drop(attn(norm1 x)), then x + drop(mlp(norm2 x))."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, qkv_bias: bool, drop_path: float):
        super().__init__()
        self.norm1 = norm(width)
        self.attn = Attention(width, heads, qkv_bias)
        self.drop_path = DropPath(drop_path)
        self.norm2 = norm(width)
        self.mlp = Mlp(width, int(width * mlp_ratio))

    def forward(self, x):
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def tokens_of(feature_map):
    """[b, c, h, w] -> [b, h * w, c] (row-major positions)."""
    return feature_map.flatten(2).transpose(1, 2)


def map_of(tokens, h: int, w: int):
    """[b, h * w, c] -> [b, c, h, w]."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h, w)


# ------------------------------------------------------------------------------------ DeiT

class PatchProjection(nn.Module):
    def __init__(self, in_channels: int, width: int, patch: int):
        super().__init__()
        self.projection = nn.Conv2d(in_channels, width, patch, patch)

    def forward(self, x):
        return tokens_of(self.projection(x))


class DeiT(nn.Module):
    def __init__(self, num_classes: int = 100, img_size: int = 224, patch_size: int = 16,
                 width: int = 192, depth: int = 12, heads: int = 3, mlp_ratio: float = 4.0,
                 drop_path_rate: float = 0.1, distill_token: bool = True, in_channels: int = 3):
        super().__init__()
        n_tokens = 2 if distill_token else 1
        self.cls_token = nn.Parameter(0.02 * torch.randn(1, 1, width))
        self.patch_embed = PatchProjection(in_channels, width, patch_size)
        n_patches = (img_size // patch_size) ** 2
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, n_patches + n_tokens, width))
        self.layers = nn.ModuleList(
            EncoderLayer(width, heads, mlp_ratio, True, r)
            for r in linear_rates(drop_path_rate, depth))
        self.norm = norm(width)
        self.head = nn.Linear(width, num_classes)
        self.distill_logits = None
        if distill_token:
            self.distill_token = nn.Parameter(0.02 * torch.randn(1, 1, width))
            self.distill_head = nn.Linear(width, num_classes)
        else:
            self.distill_token = self.distill_head = None

    def forward(self, x):
        x = self.patch_embed(x)
        b = x.shape[0]
        extra = [self.cls_token.expand(b, -1, -1)]
        if self.distill_token is not None:
            extra.append(self.distill_token.expand(b, -1, -1))
        x = torch.cat(extra + [x], dim=1) + self.pos_embed
        for layer in self.layers:
            x = layer(x)
        x = self.norm(x)
        logits = self.head(x[:, 0])
        if self.distill_head is None:
            return logits
        self.distill_logits = self.distill_head(x[:, 1])
        return logits if self.training else (logits + self.distill_logits) / 2


# ------------------------------------------------------------------------------- T2T-ViT

class PerformerAttention(nn.Module):
    """Single-head linear attention with m = width / 2 fixed positive random features ``w``;
    the values skip around it (the input width differs from the output width)."""

    def __init__(self, in_width: int, width: int, kernel_ratio: float = 0.5):
        super().__init__()
        self.width = width
        self.qkv_transform = nn.Linear(in_width, 3 * width)
        self.projection = nn.Linear(width, width)
        m = int(width * kernel_ratio)
        self.w = nn.Parameter(nn.init.orthogonal_(torch.empty(m, width)) * math.sqrt(m),
                              requires_grad=False)

    def features(self, x):
        """phi(x) = exp(w x - |x|^2 / 2) / sqrt(m): [b, n, width] -> [b, n, m]."""
        m = self.w.shape[0]
        return torch.exp(x @ self.w.t() - 0.5 * (x * x).sum(-1, keepdim=True)) / math.sqrt(m)

    def forward(self, x):
        k, q, v = self.qkv_transform(x).split(self.width, dim=-1)
        kf, qf = self.features(k), self.features(q)
        normaliser = (qf @ kf.sum(1).unsqueeze(-1))  # [b, n, 1]
        context = kf.transpose(1, 2) @ v  # [b, m, width]
        y = (qf @ context) / (normaliser + 1e-8)
        return v + self.projection(y)


class PerformerLayer(nn.Module):
    def __init__(self, in_width: int, width: int):
        super().__init__()
        self.norm1 = norm(in_width)
        self.attn = PerformerAttention(in_width, width)
        self.norm2 = norm(width)
        self.mlp = Mlp(width, width)

    def forward(self, x):
        x = self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Token2Token(nn.Module):
    def __init__(self, in_channels: int, width: int, token_width: int = 64,
                 kernels=(7, 3, 3), strides=(4, 2, 2), paddings=(2, 1, 1)):
        super().__init__()
        self.soft_split0 = nn.Unfold(kernels[0], stride=strides[0], padding=paddings[0])
        self.soft_split = nn.ModuleList(
            nn.Unfold(k, stride=s, padding=p)
            for k, s, p in zip(kernels[1:], strides[1:], paddings[1:]))
        widths = [in_channels * kernels[0] ** 2] + [token_width * k ** 2 for k in kernels[1:]]
        self.attention = nn.ModuleList(PerformerLayer(w, token_width) for w in widths[:-1])
        self.projection = nn.Linear(widths[-1], width)

    def forward(self, x):
        x = self.soft_split0(x).transpose(1, 2)
        for attention, split in zip(self.attention, self.soft_split):
            x = attention(x)
            side = math.isqrt(x.shape[1])
            x = split(map_of(x, side, side)).transpose(1, 2)
        return self.projection(x)


def sinusoid_table(n: int, width: int) -> torch.Tensor:
    """[1, n, width]: sin of pos / 10000^(2 (j // 2) / width) at even j, cos at odd j."""
    pos = np.arange(n)[:, None]
    j = np.arange(width)[None, :]
    angle = pos / np.power(10000, 2 * (j // 2) / width)
    table = np.where(j % 2 == 0, np.sin(angle), np.cos(angle))
    return torch.tensor(table, dtype=torch.float32)[None]


class T2TViT(nn.Module):
    def __init__(self, num_classes: int = 100, img_size: int = 224, width: int = 256,
                 depth: int = 7, heads: int = 4, mlp_ratio: float = 2.0,
                 drop_path_rate: float = 0.1, in_channels: int = 3):
        super().__init__()
        self.cls_token = nn.Parameter(0.02 * torch.randn(1, 1, width))
        self.t2t_module = Token2Token(in_channels, width)
        n_patches = (img_size // 16) ** 2
        self.pos_embed = nn.Parameter(sinusoid_table(n_patches + 1, width), requires_grad=False)
        self.layers = nn.ModuleList(
            EncoderLayer(width, heads, mlp_ratio, False, r)
            for r in linear_rates(drop_path_rate, depth))
        self.norm = norm(width)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        x = self.t2t_module(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for layer in self.layers:
            x = layer(x)
        return self.head(self.norm(x)[:, 0])


# ----------------------------------------------------------------------------------- PiT

class ConvEmbedding(nn.Module):
    def __init__(self, in_channels: int, width: int, patch: int, stride: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, width, patch, stride)

    def forward(self, x):
        return self.conv(x)


class PiTStage(nn.Module):
    """The layers of one stage over [class token(s); tokens of the h x w map]."""

    def __init__(self, width: int, depth: int, heads: int, mlp_ratio: float, rates):
        super().__init__()
        self.blocks = nn.ModuleList(EncoderLayer(width, heads, mlp_ratio, True, r) for r in rates)

    def forward(self, x, cls_tokens):
        h, w = x.shape[2:]
        n_cls = cls_tokens.shape[1]
        x = torch.cat([cls_tokens, tokens_of(x)], dim=1)
        for block in self.blocks:
            x = block(x)
        return map_of(x[:, n_cls:], h, w), x[:, :n_cls]


class HeadPooling(nn.Module):
    """Halve the map with a depthwise-multiplier 3x3 conv of stride 2; widen the class token."""

    def __init__(self, width: int, out_width: int, stride: int = 2):
        super().__init__()
        self.conv = nn.Conv2d(width, out_width, stride + 1, stride, stride // 2, groups=width)
        self.fc = nn.Linear(width, out_width)

    def forward(self, x, cls_tokens):
        return self.conv(x), self.fc(cls_tokens)


class PiT(nn.Module):
    def __init__(self, num_classes: int = 100, img_size: int = 224, patch_size: int = 16,
                 stride: int = 8, widths=(64, 128, 256), depths=(2, 6, 4), heads=(2, 4, 8),
                 mlp_ratio: float = 4.0, drop_path_rate: float = 0.1, in_channels: int = 3):
        super().__init__()
        side = (img_size - patch_size) // stride + 1
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, widths[0], side, side))
        self.patch_embed = ConvEmbedding(in_channels, widths[0], patch_size, stride)
        self.cls_token = nn.Parameter(0.02 * torch.randn(1, 1, widths[0]))
        total, start = sum(depths), 0
        self.transformers = nn.ModuleList()
        self.pools = nn.ModuleList()
        for s, depth in enumerate(depths):
            rates = [drop_path_rate * i / total for i in range(start, start + depth)]
            start += depth
            self.transformers.append(PiTStage(widths[s], depth, heads[s], mlp_ratio, rates))
            if s + 1 < len(depths):
                self.pools.append(HeadPooling(widths[s], widths[s + 1]))
        self.norm = norm(widths[-1])
        self.head = nn.Linear(widths[-1], num_classes)

    def forward(self, x):
        x = self.patch_embed(x) + self.pos_embed
        cls_tokens = self.cls_token.expand(x.shape[0], -1, -1)
        for s, stage in enumerate(self.transformers):
            x, cls_tokens = stage(x, cls_tokens)
            if s < len(self.pools):
                x, cls_tokens = self.pools[s](x, cls_tokens)
        return self.head(self.norm(cls_tokens)[:, 0])


# ----------------------------------------------------------------------------------- PVT

class PVTPatchEmbed(nn.Module):
    def __init__(self, in_channels: int, width: int, patch: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, width, patch, patch)
        self.norm = norm(width)

    def forward(self, x):
        x = self.proj(x)
        return self.norm(tokens_of(x)), x.shape[2:]


class SpatialReductionAttention(nn.Module):
    """Queries from every token; keys and values from the map shrunk by a conv of stride
    ``sr`` (then a LayerNorm) when sr > 1."""

    def __init__(self, width: int, heads: int, sr: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.proj = nn.Linear(width, width)
        self.sr_ratio = sr
        if sr > 1:
            self.sr = nn.Conv2d(width, width, sr, sr)
            self.norm = norm(width)

    def forward(self, x, h: int, w: int):
        b, n, c = x.shape
        d = c // self.heads
        q = self.q(x).reshape(b, n, self.heads, d).transpose(1, 2)
        source = x
        if self.sr_ratio > 1:
            source = self.norm(tokens_of(self.sr(map_of(x, h, w))))
        k, v = self.kv(source).reshape(b, -1, 2, self.heads, d).unbind(2)
        k, v = k.transpose(1, 2), v.transpose(1, 2)
        weights = torch.softmax((q @ k.transpose(-2, -1)) * d ** -0.5, dim=-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(b, n, c))


class PVTBlock(EncoderLayer):
    """``EncoderLayer`` with spatial-reduction attention, which needs the map's size."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, sr: int, drop_path: float):
        super().__init__(width, heads, mlp_ratio, True, drop_path)
        self.attn = SpatialReductionAttention(width, heads, sr)

    def forward(self, x, h: int, w: int):
        x = x + self.drop_path(self.attn(self.norm1(x), h, w))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PVT(nn.Module):
    def __init__(self, num_classes: int = 100, img_size: int = 224, patches=(4, 2, 2, 2),
                 widths=(64, 128, 320, 512), depths=(2, 2, 2, 2), heads=(1, 2, 5, 8),
                 mlp_ratios=(8, 8, 4, 4), sr_ratios=(8, 4, 2, 1), drop_path_rate: float = 0.1,
                 in_channels: int = 3):
        super().__init__()
        self.num_stages = len(widths)
        rates = iter(linear_rates(drop_path_rate, sum(depths)))
        side, cin = img_size, in_channels
        for i in range(self.num_stages):
            side //= patches[i]
            last = i == self.num_stages - 1
            setattr(self, f"patch_embed{i + 1}", PVTPatchEmbed(cin, widths[i], patches[i]))
            setattr(self, f"pos_embed{i + 1}",
                    nn.Parameter(0.02 * torch.randn(1, side * side + last, widths[i])))
            setattr(self, f"block{i + 1}", nn.ModuleList(
                PVTBlock(widths[i], heads[i], mlp_ratios[i], sr_ratios[i], next(rates))
                for _ in range(depths[i])))
            cin = widths[i]
        self.norm = norm(widths[-1])
        self.cls_token = nn.Parameter(0.02 * torch.randn(1, 1, widths[-1]))
        self.head = nn.Linear(widths[-1], num_classes)

    def forward(self, x):
        for i in range(1, self.num_stages + 1):
            x, (h, w) = getattr(self, f"patch_embed{i}")(x)
            if i == self.num_stages:
                x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
            x = x + getattr(self, f"pos_embed{i}")
            for block in getattr(self, f"block{i}"):
                x = block(x, h, w)
            if i < self.num_stages:
                x = map_of(x, h, w)
        return self.head(self.norm(x)[:, 0])


def trainable_parameters(model: nn.Module) -> int:
    """What the release's ``complexity()`` counts: parameters with ``requires_grad``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
