"""The crop augmentations of training, in one place: each maps a batch of model inputs
``(B, 1, 12, 6, L)`` in [0, 1] to one of the same shape, and :func:`augment` applies those the
training config switches on (``TrainConfig``: ``time_stretch``, ``velocity_gain``,
``velocity_curve``, ``onset_jitter`` / ``key_gain``, ``noise_sigma``), in that order."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from harmonixr.train.config import TrainConfig


def augment(
    x: torch.Tensor, lengths: torch.Tensor, config: TrainConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """The configured augmentations of a training batch: time stretch (lengths follow),
    velocity gain, velocity curve, humanising (onset jitter, key gain), multiplicative noise;
    each only when its setting is above 0."""
    c = config
    if c.time_stretch > 0:
        x, lengths = time_stretch(x, lengths, c.time_stretch)
    if c.velocity_gain > 0:
        x = velocity_gain(x, c.velocity_gain)
    if c.velocity_curve > 0:
        x = velocity_curve(x, c.velocity_curve)
    if c.onset_jitter > 0 or c.key_gain > 0:
        x = humanise(x, c.onset_jitter, c.key_gain)
    x = multiplicative_noise(x, c.noise_sigma)
    return x, lengths


def multiplicative_noise(x: torch.Tensor, sigma: float, generator=None) -> torch.Tensor:
    """Scale each sounding cell by (1 + σ·N(0, 1)), clipped to [0, 1]; silence stays silent."""
    if sigma <= 0:
        return x
    noise = torch.randn(x.shape, device=x.device, generator=generator, dtype=x.dtype)
    return (x * (1 + sigma * noise)).clamp_(0.0, 1.0)


def _log_uniform(n: int, a: float, device: torch.device) -> torch.Tensor:
    return torch.exp((torch.rand(n, device=device) * 2 - 1) * a)


def velocity_gain(x: torch.Tensor, a: float) -> torch.Tensor:
    """Each crop's values × g, log g ~ U(−a, a), clipped to [0, 1]: a recording's or a piano's
    loudness calibration is not the composer's."""
    g = _log_uniform(x.shape[0], a, x.device).view(-1, *([1] * (x.dim() - 1)))
    return (x * g).clamp_(0.0, 1.0)


def velocity_curve(x: torch.Tensor, a: float) -> torch.Tensor:
    """Each crop's values v → v^γ, log γ ~ U(−a, a): a notation program's fixed velocity
    levels and a piano's touch curve map loudness differently; the composer does not."""
    g = _log_uniform(x.shape[0], a, x.device).view(-1, *([1] * (x.dim() - 1)))
    return torch.where(x > 0, x.clamp(min=1e-6) ** g, x)


def humanise(x: torch.Tensor, jitter: int, gain: float) -> torch.Tensor:
    """Score renditions sit on the metrical grid at one velocity; performances do not. Each
    of a crop's 72 keys ``(B, 1, 12, 6, L)`` is shifted in time by an integer number of frames
    drawn from [−jitter, jitter] (frames shifted in from outside are silent) and scaled by a
    gain, log g ~ U(−gain, gain), clipped to [0, 1]. Chords lose their perfect alignment and
    voices their uniform level, so neither can tell a score from a performance."""
    b, _, p, o, n = x.shape
    out = x
    if jitter > 0:
        shift = torch.randint(-jitter, jitter + 1, (b, 1, p, o, 1), device=x.device)
        frames = torch.arange(n, device=x.device).view(1, 1, 1, 1, n)
        src = frames - shift
        inside = (src >= 0) & (src < n)
        out = out.gather(-1, src.clamp(0, n - 1)) * inside.to(x.dtype)
    if gain > 0:
        g = torch.exp((torch.rand((b, 1, p, o, 1), device=x.device) * 2 - 1) * gain)
        out = (out * g).clamp(0.0, 1.0)
    return out


def time_stretch(
    x: torch.Tensor, lengths: torch.Tensor, a: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each crop ``(B, 1, 12, 6, L)`` resampled in time by f, log f ~ U(−a, a) (f > 1 slower),
    nearest-frame, then cut or zero-padded back to L frames; lengths follow."""
    b, n = x.shape[0], x.shape[-1]
    f = _log_uniform(b, a, x.device)
    valid = lengths.to(x.device).clamp(min=1)
    new_len = (valid.float() * f).round().long().clamp_(1, n)
    frames = torch.arange(n, device=x.device, dtype=torch.float32)
    src = (frames[None, :] / f[:, None]).long()
    src = torch.minimum(src, (valid - 1)[:, None])  # (B, n)
    out = x.gather(-1, src.view(b, 1, 1, 1, n).expand_as(x))
    keep = frames[None, :] < new_len[:, None]
    out = out * keep.view(b, 1, 1, 1, n).to(out.dtype)
    return out, new_len.to(lengths.dtype)
