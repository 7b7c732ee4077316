"""SiaViT's encoder: wraparound conv stack → per-frame tokens → transformer → embedding."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from harmonixr.model.config import ModelConfig
from harmonixr.model.layers import MaskedBatchNorm3d, ResidualBlock, WraparoundConv3d


def sinusoidal_positions(
    n: int, dim: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    pos = torch.arange(n, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(
        torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim)
    )
    table = torch.zeros(n, dim, device=device)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return table.to(dtype)


def _ceil_div(lengths: torch.Tensor, k: int) -> torch.Tensor:
    """Frames left after a stride or pool of ``k`` (ceil mode)."""
    return torch.div(lengths + k - 1, k, rounding_mode="floor")


def _time_mask(lengths: torch.Tensor | None, n: int) -> torch.Tensor | None:
    """(B, 1, 1, 1, n) boolean mask of valid frames, or None when every frame is valid."""
    if lengths is None or bool((lengths >= n).all()):
        return None
    valid = torch.arange(n, device=lengths.device)[None, :] < lengths[:, None]
    return valid[:, None, None, None, :]


class SiaViT(nn.Module):
    """The shared encoder of the Siamese pair. Input ``(B, 1, 12, 6, L)`` in [0, 1] and the true
    lengths (frames) of each crop; output L2-normalised ``(B, embed_dim)``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = c = config
        k, ts = c.kernel, c.stem_time_stride
        self.stem = WraparoundConv3d(
            c.in_channels,
            c.stem_channels,
            (k, k, ts),
            stride=(1, 1, ts),
            padding=(k // 2, k // 2, 0),
            mode=c.wrap,
            bias=False,
        )
        self.stem_norm = MaskedBatchNorm3d(c.stem_channels)
        blocks, channels = [], c.stem_channels
        for out in c.stages:
            blocks.append(ResidualBlock(channels, out, k, c.wrap))
            channels = out
        self.blocks = nn.ModuleList(blocks)
        self.conv_dropout = nn.Dropout(c.conv_dropout)
        pc, octv = c.grid_after_pools()
        self.proj = nn.Linear(channels * pc * octv, c.d_model)
        layer = nn.TransformerEncoderLayer(
            c.d_model,
            c.n_heads,
            c.d_ff,
            c.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.transformer = nn.TransformerEncoder(layer, c.n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(c.d_model)
        self.head = nn.Sequential(
            nn.Linear(c.d_model, c.d_model),
            nn.GELU(),
            nn.Dropout(c.dropout),
            nn.Linear(c.d_model, c.embed_dim),
        )

    def forward_features(
        self, x: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Tokens ``(B, T', d_model)`` and their validity ``(B, T')`` (None: all valid)."""
        c = self.config
        ts = c.stem_time_stride
        extra = (-x.shape[-1]) % ts
        if extra:
            x = F.pad(x, (0, extra))
        if lengths is not None:
            lengths = _ceil_div(lengths, ts).clamp(min=1)
        h = self.stem(x)
        mask = _time_mask(lengths, h.shape[-1])
        h = F.gelu(self.stem_norm(h, mask))
        h, lengths, mask = self._downsample(h, c.stem_pool, lengths, mask)
        for block, pool in zip(self.blocks, c.pools, strict=True):
            h = block(h, mask)
            h, lengths, mask = self._downsample(h, pool, lengths, mask)
            h = self.conv_dropout(h)
        b, ch, pc, octv, t = h.shape
        tokens = h.permute(0, 4, 1, 2, 3).reshape(b, t, ch * pc * octv)
        tokens = self.proj(tokens)
        tokens = tokens + sinusoidal_positions(t, c.d_model, tokens.device, tokens.dtype)
        valid = None if mask is None else mask[:, 0, 0, 0, :]
        tokens = self.transformer(tokens, src_key_padding_mask=None if valid is None else ~valid)
        return self.norm(tokens), valid

    @staticmethod
    def _downsample(
        h: torch.Tensor,
        pool: tuple[int, int, int],
        lengths: torch.Tensor | None,
        mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Max-pool (ceil mode) where padding frames never win; lengths and mask follow."""
        if mask is not None:
            h = h.masked_fill(~mask, float("-inf"))
        if pool != (1, 1, 1):
            h = F.max_pool3d(h, pool, pool, ceil_mode=True)
        if lengths is not None:
            lengths = _ceil_div(lengths, pool[2])
        mask = _time_mask(lengths, h.shape[-1])
        if mask is not None:
            h = torch.where(mask, h, torch.zeros((), dtype=h.dtype, device=h.device))
        return h, lengths, mask

    @staticmethod
    def pool(tokens: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        """Mean over valid tokens."""
        if valid is None:
            return tokens.mean(dim=1)
        w = valid.to(tokens.dtype)[:, :, None]
        return (tokens * w).sum(dim=1) / w.sum(dim=1).clamp(min=1.0)

    def forward_head(self, pooled: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(pooled).float(), dim=-1)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        tokens, valid = self.forward_features(x, lengths)
        return self.forward_head(self.pool(tokens, valid))
