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
    lengths (frames) of each crop; output L2-normalised ``(B, embed_dim)``. With
    ``config.stats_dim`` it has a second input, the whole-piece statistics of
    ``model/stats.py`` ``(B, stats_dim)``, fused with the pooled tokens before the head."""

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
        if c.stats_dim:
            # the statistics branch: whole-piece statistics (standardised by the training
            # side's mean and spread, kept with the weights) and the pooled ViT tokens each
            # become ``stats_hidden`` numbers, concatenated before the head
            h = c.stats_hidden
            self.register_buffer("stats_mean", torch.zeros(c.stats_dim))
            self.register_buffer("stats_std", torch.ones(c.stats_dim))
            self.stats_net = nn.Sequential(
                nn.Linear(c.stats_dim, h), nn.GELU(), nn.Dropout(c.dropout), nn.Linear(h, h)
            )
            self.vit_net = nn.Sequential(nn.LayerNorm(c.d_model), nn.Linear(c.d_model, h))
            self.head = nn.Sequential(
                nn.GELU(),
                nn.Dropout(c.dropout),
                nn.Linear(2 * h, h),
                nn.GELU(),
                nn.Linear(h, c.embed_dim),
            )
        else:
            self.head = nn.Sequential(
                nn.Linear(c.d_model, c.d_model),
                nn.GELU(),
                nn.Dropout(c.dropout),
                nn.Linear(c.d_model, c.embed_dim),
            )

    @property
    def has_stats(self) -> bool:
        """Whether the model takes whole-piece statistics beside the tensor."""
        return bool(self.config.stats_dim)

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

    def pooled(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """The ViT's mean token ``(B, d_model)``: what the head reads (and what a whole piece
        averages over its windows before a statistics model's head)."""
        tokens, valid = self.forward_features(x, lengths)
        return self.pool(tokens, valid)

    def forward_head(
        self,
        pooled: torch.Tensor,
        stats: torch.Tensor | None = None,
        keep_vit: torch.Tensor | None = None,
        keep_stats: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """L2-normalised embeddings from pooled tokens and, for a statistics model, the
        statistics (``None``: the branch is left out, as when it is dropped in training).
        ``keep_vit`` / ``keep_stats``: ``(B,)`` masks, 0 where a branch is dropped."""
        if not self.has_stats:
            if stats is not None:
                raise ValueError("this model has no statistics branch (stats_dim = 0)")
            return F.normalize(self.head(pooled).float(), dim=-1)
        v = self.vit_net(pooled)
        if self.config.stats_branches == "stats":
            v = torch.zeros_like(v)
        elif keep_vit is not None:
            v = v * keep_vit.to(v.dtype)[:, None]
        if stats is None or self.config.stats_branches == "vit":
            s = torch.zeros_like(v)
        else:
            if stats.shape[-1] != self.config.stats_dim:
                raise ValueError(
                    f"expected {self.config.stats_dim} statistics per piece, got {stats.shape[-1]}"
                )
            z = (stats.to(v.dtype) - self.stats_mean) / self.stats_std
            s = self.stats_net(z)
            if keep_stats is not None:
                s = s * keep_stats.to(s.dtype)[:, None]
        return F.normalize(self.head(torch.cat((v, s), dim=-1)).float(), dim=-1)

    def forward(
        self,
        x: torch.Tensor,
        lengths: torch.Tensor | None = None,
        stats: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.forward_head(self.pooled(x, lengths), stats)
