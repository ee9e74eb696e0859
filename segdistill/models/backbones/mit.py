"""Mix Transformer (MiT), the hierarchical encoder of SegFormer, as mmsegmentation's ``MixVisionTransformer``.

Four stages; each is an overlapping patch embedding (a strided conv + LayerNorm), ``num_layers[i]``
transformer blocks and a final LayerNorm, and outputs an NCHW map at stride 4, 8, 16 or 32. A block is
pre-norm: ``x + attn(norm1(x))`` then ``x + ffn(norm2(x))``, where

- the attention is "efficient" self-attention: queries at full resolution, keys and values from the
  map shrunk by a ``sr_ratio`` x ``sr_ratio`` strided conv + LayerNorm (stage 4 has ``sr_ratio`` 1
  and no ``sr``/``norm``);
- the feed-forward is Mix-FFN: 1x1 conv, 3x3 depthwise conv (the only positional information the
  network has), GELU, 1x1 conv;
- both residual branches pass through stochastic depth (``DropPath``), whose rate grows linearly
  from 0 to ``drop_path_rate`` over all blocks; it is the identity in eval mode.

Parameter names follow mmseg exactly, so released mmseg SegFormer checkpoints and mmseg's ImageNet
``mit_b0.pth`` ... ``mit_b5.pth`` (backbone only, converted by mmseg's ``mit2mmseg.py``) load strictly:
``layers.{stage}.0`` is the patch embedding, ``layers.{stage}.1.{block}`` the blocks,
``layers.{stage}.2`` the stage norm, and the attention keeps torch ``nn.MultiheadAttention``'s names
(``attn.attn.in_proj_weight`` holding q, k, v stacked, ``attn.attn.out_proj``) because mmcv wraps it.
The attention itself is computed here with ``scaled_dot_product_attention`` (same function).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

#: mmseg's ``MixVisionTransformer`` defaults shared by every MiT size (B0-B5).
PATCH_SIZES = (7, 3, 3, 3)
STRIDES = (4, 2, 2, 2)
SR_RATIOS = (8, 4, 2, 1)
LN_EPS = 1e-6  # mmseg's norm_cfg for MiT: dict(type="LN", eps=1e-6)


def nlc_to_nchw(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """``(N, H*W, C)`` tokens -> ``(N, C, H, W)`` map."""
    n, _, c = x.shape
    return x.transpose(1, 2).reshape(n, c, hw[0], hw[1])


def nchw_to_nlc(x: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W)`` map -> ``(N, H*W, C)`` tokens."""
    return x.flatten(2).transpose(1, 2)


class DropPath(nn.Module):
    """Stochastic depth (mmcv's ``DropPath``): in training, zero a whole sample's branch with probability
    ``drop_prob`` and scale the kept ones by ``1 / (1 - drop_prob)``; the identity in eval mode."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device)
        return x / keep * (mask + keep).floor()

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.4f}"


class PatchEmbed(nn.Module):
    """Overlapping patch embedding: ``projection`` conv (kernel ``patch_size``, padding ``patch_size // 2``),
    flattened to tokens, then ``norm``. Returns the tokens and the map's ``(H, W)``."""

    def __init__(self, in_channels: int, embed_dims: int, patch_size: int, stride: int) -> None:
        super().__init__()
        self.projection = nn.Conv2d(in_channels, embed_dims, patch_size, stride=stride, padding=patch_size // 2)
        self.norm = nn.LayerNorm(embed_dims, eps=LN_EPS)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.projection(x)
        hw = (x.shape[2], x.shape[3])
        return self.norm(nchw_to_nlc(x)), hw


class MultiheadAttention(nn.Module):
    """``nn.MultiheadAttention``'s parameters (``in_proj_weight`` = [Wq; Wk; Wv], ``in_proj_bias``,
    ``out_proj``) on batch-first tokens, computed with ``scaled_dot_product_attention``."""

    def __init__(self, embed_dims: int, num_heads: int, attn_drop: float = 0.0, bias: bool = True) -> None:
        super().__init__()
        if embed_dims % num_heads:
            raise ValueError(f"embed_dims {embed_dims} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.attn_drop = attn_drop
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dims, embed_dims))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * embed_dims)) if bias else None
        self.out_proj = nn.Linear(embed_dims, embed_dims, bias=bias)
        # torch's own init of these parameters (xavier for the packed projection, zero biases).
        nn.init.xavier_uniform_(self.in_proj_weight)
        if self.out_proj.bias is not None:
            nn.init.zeros_(self.out_proj.bias)

    def forward(self, query: torch.Tensor, key_value: torch.Tensor) -> torch.Tensor:
        n, lq, c = query.shape
        w, b = self.in_proj_weight, self.in_proj_bias
        w_q, w_kv = w[:c], w[c:]
        b_q, b_kv = (b[:c], b[c:]) if b is not None else (None, None)
        heads, d = self.num_heads, c // self.num_heads
        q = F.linear(query, w_q, b_q).reshape(n, lq, heads, d).transpose(1, 2)
        k, v = F.linear(key_value, w_kv, b_kv).reshape(n, -1, 2, heads, d).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.out_proj(out.transpose(1, 2).reshape(n, lq, c))


class EfficientMultiheadAttention(nn.Module):
    """Self-attention whose keys/values come from the map reduced ``sr_ratio`` times per side (``sr`` conv
    + ``norm``); returns ``identity + drop_path(proj_drop(attn))`` like mmseg."""

    def __init__(self, embed_dims: int, num_heads: int, sr_ratio: int, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, drop_path: float = 0.0, qkv_bias: bool = True) -> None:
        super().__init__()
        self.attn = MultiheadAttention(embed_dims, num_heads, attn_drop, bias=qkv_bias)
        self.proj_drop = nn.Dropout(proj_drop)
        self.dropout_layer = DropPath(drop_path)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(embed_dims, embed_dims, sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(embed_dims, eps=LN_EPS)

    def forward(self, x: torch.Tensor, hw: tuple[int, int], identity: torch.Tensor) -> torch.Tensor:
        kv = x
        if self.sr_ratio > 1:
            kv = self.norm(nchw_to_nlc(self.sr(nlc_to_nchw(x, hw))))
        return identity + self.dropout_layer(self.proj_drop(self.attn(x, kv)))


class MixFFN(nn.Module):
    """Mix-FFN: 1x1 conv -> 3x3 depthwise conv -> GELU -> 1x1 conv on the token map (``layers`` 0, 1, 4
    hold the weights, as in mmseg); returns ``identity + drop_path(ffn)``."""

    def __init__(self, embed_dims: int, feedforward_channels: int, ffn_drop: float = 0.0,
                 drop_path: float = 0.0) -> None:
        super().__init__()
        hidden = feedforward_channels
        self.layers = nn.Sequential(
            nn.Conv2d(embed_dims, hidden, 1),
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden),
            nn.GELU(),
            nn.Dropout(ffn_drop),
            nn.Conv2d(hidden, embed_dims, 1),
            nn.Dropout(ffn_drop),
        )
        self.dropout_layer = DropPath(drop_path)

    def forward(self, x: torch.Tensor, hw: tuple[int, int], identity: torch.Tensor) -> torch.Tensor:
        return identity + self.dropout_layer(nchw_to_nlc(self.layers(nlc_to_nchw(x, hw))))


class TransformerEncoderLayer(nn.Module):
    """One MiT block: ``x + attn(norm1(x))``, then ``x + ffn(norm2(x))`` (pre-norm)."""

    def __init__(self, embed_dims: int, num_heads: int, feedforward_channels: int, sr_ratio: int,
                 drop_rate: float = 0.0, attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 qkv_bias: bool = True) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(embed_dims, eps=LN_EPS)
        self.attn = EfficientMultiheadAttention(embed_dims, num_heads, sr_ratio, attn_drop=attn_drop_rate,
                                                proj_drop=drop_rate, drop_path=drop_path_rate, qkv_bias=qkv_bias)
        self.norm2 = nn.LayerNorm(embed_dims, eps=LN_EPS)
        self.ffn = MixFFN(embed_dims, feedforward_channels, ffn_drop=drop_rate, drop_path=drop_path_rate)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        x = self.attn(self.norm1(x), hw, identity=x)
        return self.ffn(self.norm2(x), hw, identity=x)


class MiTStage(nn.ModuleList):
    """``[patch_embed, blocks, norm]`` as a ModuleList, so the keys are mmseg's ``layers.{i}.0/1/2``."""

    def __init__(self, patch_embed: PatchEmbed, blocks: Sequence[TransformerEncoderLayer], norm: nn.LayerNorm) -> None:
        super().__init__([patch_embed, nn.ModuleList(blocks), norm])

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        patch_embed, blocks, norm = self[0], cast(nn.ModuleList, self[1]), self[2]
        tokens, hw = patch_embed(x)
        for block in blocks:
            tokens = block(tokens, hw)
        return nlc_to_nchw(norm(tokens), hw)


class MixVisionTransformer(nn.Module):
    """mmseg's ``MixVisionTransformer``. Stage ``i`` has width ``embed_dims * num_heads[i]`` (head size
    ``embed_dims``), ``num_layers[i]`` blocks and spatial reduction ``sr_ratios[i]``.

    ``forward`` returns the four stage outputs (strides 4, 8, 16, 32), ``out_channels`` their widths.
    mmseg's sizes: B0 ``embed_dims=32, num_layers=(2, 2, 2, 2)``; B1 64, (2, 2, 2, 2); B2 64, (3, 4, 6, 3);
    B3 64, (3, 4, 18, 3); B4 64, (3, 8, 27, 3); B5 64, (3, 6, 40, 3); all with ``num_heads=(1, 2, 5, 8)``.
    """

    def __init__(self, in_channels: int = 3, embed_dims: int = 64, num_layers: Sequence[int] = (3, 4, 6, 3),
                 num_heads: Sequence[int] = (1, 2, 4, 8), patch_sizes: Sequence[int] = PATCH_SIZES,
                 strides: Sequence[int] = STRIDES, sr_ratios: Sequence[int] = SR_RATIOS, mlp_ratio: int = 4,
                 qkv_bias: bool = True, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0) -> None:
        super().__init__()
        num_stages = len(num_layers)
        if not num_stages == len(num_heads) == len(patch_sizes) == len(strides) == len(sr_ratios):
            raise ValueError("num_layers, num_heads, patch_sizes, strides and sr_ratios need one entry per stage")
        # Stochastic depth grows linearly over all blocks of all stages (mmseg's float32 torch.linspace;
        # on the CPU explicitly, so that building under torch.device("meta") works).
        dpr = torch.linspace(0, drop_path_rate, sum(num_layers), device="cpu").tolist()
        self.out_channels: list[int] = []
        self.layers = nn.ModuleList()
        cur = 0
        for i, n in enumerate(num_layers):
            dims = embed_dims * num_heads[i]
            blocks = [TransformerEncoderLayer(dims, num_heads[i], mlp_ratio * dims, sr_ratios[i], drop_rate=drop_rate,
                                              attn_drop_rate=attn_drop_rate, drop_path_rate=dpr[cur + j],
                                              qkv_bias=qkv_bias) for j in range(n)]
            self.layers.append(MiTStage(PatchEmbed(in_channels, dims, patch_sizes[i], strides[i]), blocks,
                                        nn.LayerNorm(dims, eps=LN_EPS)))
            self.out_channels.append(dims)
            in_channels = dims
            cur += n
        self.init_weights()

    def init_weights(self) -> None:
        """mmseg's from-scratch init (overwritten when ImageNet weights are loaded): truncated normal
        (std 0.02) for linear layers, LayerNorm as identity, convs N(0, sqrt(2 / fan_out)), zero biases.
        ``in_proj_weight`` keeps torch's xavier init, as it is no ``nn.Linear``."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, std=math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for stage in self.layers:
            x = stage(x)
            outs.append(x)
        return outs
