"""Wraparound 3-D convolution on the (pitch class, octave, time) grid, and a residual block.

The 72 notes F1…E7 lie on a helix: pitch class 11 (E) of octave o is a semitone below pitch
class 0 (F) of octave o+1. ``mode="helix"`` pads the pitch-class axis with the neighbouring
octave's pitch classes (zeros beyond the range), so that with pitch stride 1 a semitone
transposition commutes with the convolution away from the range's ends. ``"circular"`` wraps
within one octave (the original project's choice) and ``"zeros"`` pads with zeros.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from harmonixr.model.config import WRAP_MODES


def _triple(v: int | tuple[int, int, int]) -> tuple[int, int, int]:
    if isinstance(v, int):
        return (v, v, v)
    if len(v) != 3:
        raise ValueError(f"expected an int or three ints, got {v!r}")
    return (int(v[0]), int(v[1]), int(v[2]))


def wrap_pitch(x: torch.Tensor, pad: int, mode: str) -> torch.Tensor:
    """Pad axis 2 (pitch class) of ``(B, C, P, O, T)`` by ``pad`` on each side."""
    if pad == 0:
        return x
    n_pc = x.shape[2]
    if pad > n_pc:
        raise ValueError(f"pitch padding {pad} exceeds the {n_pc} pitch classes")
    if mode == "zeros":
        return F.pad(x, (0, 0, 0, 0, pad, pad))
    low, high = x[:, :, n_pc - pad :], x[:, :, :pad]
    if mode == "helix":
        # below pitch class 0 of octave o: the top of octave o-1; above 11: the bottom of o+1
        low = F.pad(low, (0, 0, 1, 0))[:, :, :, :-1]
        high = F.pad(high, (0, 0, 0, 1))[:, :, :, 1:]
    return torch.cat((low, x, high), dim=2)


class WraparoundConv3d(nn.Module):
    """``Conv3d`` on ``(B, C, 12, 6, T)`` whose pitch-class padding follows ``mode``.

    ``padding`` is the pad on each axis (an int or a triple for pitch class, octave, time);
    octave and time always pad with zeros. Kernel 3 with padding 1 keeps ``(12, 6, T)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int, int],
        stride: int | tuple[int, int, int] = 1,
        padding: int | tuple[int, int, int] = 0,
        mode: str = "helix",
        bias: bool = True,
    ) -> None:
        super().__init__()
        if mode not in WRAP_MODES:
            raise ValueError(f"mode must be one of {WRAP_MODES}, got {mode!r}")
        self.mode = mode
        self.padding = _triple(padding)
        self.conv = nn.Conv3d(
            in_channels, out_channels, _triple(kernel_size), stride=_triple(stride), bias=bias
        )

    @property
    def weight(self) -> torch.Tensor:
        return self.conv.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p_pc, p_oct, p_t = self.padding
        x = wrap_pitch(x, p_pc, self.mode)
        if p_oct or p_t:
            x = F.pad(x, (p_t, p_t, p_oct, p_oct))
        return self.conv(x)

    def extra_repr(self) -> str:
        return f"mode={self.mode}, padding={self.padding}"


class MaskedBatchNorm3d(nn.BatchNorm3d):
    """``BatchNorm3d`` whose batch statistics (train mode) count only valid time frames.

    ``mask`` is ``(B, 1, 1, 1, T)`` boolean, True on frames of music. Padding frames then change
    neither the normalisation of the others nor the running statistics, so a padded crop
    computes and learns what the crop alone would. Same parameters and buffers as
    ``BatchNorm3d`` (checkpoints load either way); without a mask, or in eval mode, it is
    ``BatchNorm3d``."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        use_batch = self.training or not self.track_running_stats
        if mask is None or not use_batch:
            return super().forward(x)
        w = mask.to(torch.float32).expand(x.shape[0], 1, *x.shape[2:])
        count = w.sum()  # valid positions per channel
        xf = x.float()
        dims = (0, 2, 3, 4)
        mean = (xf * w).sum(dims) / count
        centred = xf - mean.view(1, -1, 1, 1, 1)
        # biased, as BatchNorm normalises with; the running estimate keeps the unbiased one
        var = (centred.pow(2) * w).sum(dims) / count
        if self.training and self.track_running_stats:
            self._update_running(mean.detach(), var.detach() * count / (count - 1).clamp(min=1))
        out = centred * torch.rsqrt(var + self.eps).view(1, -1, 1, 1, 1)
        if self.affine:
            out = out * self.weight.view(1, -1, 1, 1, 1) + self.bias.view(1, -1, 1, 1, 1)
        return out.to(x.dtype)

    @torch.no_grad()
    def _update_running(self, mean: torch.Tensor, unbiased_var: torch.Tensor) -> None:
        self.num_batches_tracked.add_(1)
        # momentum None: a cumulative moving average, as BatchNorm does (reads the count
        # back from the device only then)
        momentum = self.momentum
        factor = momentum if momentum is not None else 1.0 / float(self.num_batches_tracked)
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
        self.running_var.lerp_(unbiased_var.to(self.running_var.dtype), factor)


class ResidualBlock(nn.Module):
    """Two wraparound convs (norm, GELU) with a skip around them; a 1×1×1 projection where the
    channel count changes. ``mask`` (B, 1, 1, 1, T) zeroes padding frames after each conv so
    that padding behaves exactly like the convolution's own zero padding, and keeps them out of
    every batch norm's statistics."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int = 3, mode: str = "helix"):
        super().__init__()
        pad = kernel // 2
        self.conv1 = WraparoundConv3d(
            in_channels, out_channels, kernel, padding=pad, mode=mode, bias=False
        )
        self.norm1 = MaskedBatchNorm3d(out_channels)
        self.conv2 = WraparoundConv3d(
            out_channels, out_channels, kernel, padding=pad, mode=mode, bias=False
        )
        self.norm2 = MaskedBatchNorm3d(out_channels)
        self.skip: nn.Module = nn.Identity()
        if in_channels != out_channels:
            self.skip = nn.Sequential(
                nn.Conv3d(in_channels, out_channels, 1, bias=False), MaskedBatchNorm3d(out_channels)
            )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h = F.gelu(self.norm1(self.conv1(x), mask))
        if mask is not None:
            h = h * mask
        h = self.norm2(self.conv2(h), mask)
        skip = x
        if isinstance(self.skip, nn.Sequential):
            conv, norm = self.skip
            skip = norm(conv(x), mask)
        out = F.gelu(h + skip)
        if mask is not None:
            out = out * mask
        return out
