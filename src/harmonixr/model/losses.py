"""Contrastive losses on L2-normalised embeddings.

- :func:`contrastive_loss`: ``y·d² + (1−y)·max(0, m − d)²`` averaged over pairs (y = 1: same
  composer), d the Euclidean distance of the two embeddings (0…2).
- :class:`DynamicMarginContrastive`: the same with the original project's moving margin,
  ``m = max(0, EMA(d | different) − EMA(d | same)) + floor``; the floor may grow each epoch.
- :func:`supcon_loss`: supervised contrastive loss over a batch (Khosla et al., 2020).
"""

from __future__ import annotations

import torch
from torch import nn


def pair_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).pow(2).sum(-1).clamp_min(1e-12).sqrt()


def contrastive_loss(
    d: torch.Tensor, y: torch.Tensor, margin: float | torch.Tensor
) -> torch.Tensor:
    y = y.to(d.dtype)
    return (y * d.pow(2) + (1 - y) * torch.relu(margin - d).pow(2)).mean()


class DynamicMarginContrastive(nn.Module):
    """Contrastive loss whose margin follows the running distances of the two kinds of pair.

    Each training call uses the margin from the EMAs *before* this batch, then updates them:
    ``ema ← momentum·ema + (1−momentum)·mean(d)`` per kind present in the batch (the first batch
    initialises them). ``start_epoch(e)`` sets ``floor = min(floor_max, floor0 + e·floor_growth)``.
    """

    def __init__(
        self,
        momentum: float = 0.9,
        floor: float = 0.2,
        floor_growth: float = 0.0,
        floor_max: float = 1.0,
    ) -> None:
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.momentum = momentum
        self.floor0, self.floor_growth, self.floor_max = floor, floor_growth, floor_max
        self.floor = floor
        self.register_buffer("ema_same", torch.tensor(float("nan")))
        self.register_buffer("ema_diff", torch.tensor(float("nan")))

    def start_epoch(self, epoch: int) -> None:
        self.floor = min(self.floor_max, self.floor0 + epoch * self.floor_growth)

    @property
    def margin(self) -> float:
        if torch.isnan(self.ema_same) or torch.isnan(self.ema_diff):
            return float(self.floor)
        return max(0.0, float(self.ema_diff - self.ema_same)) + self.floor

    @torch.no_grad()
    def _update(self, d: torch.Tensor, y: torch.Tensor) -> None:
        for buf, sel in ((self.ema_same, y > 0.5), (self.ema_diff, y <= 0.5)):
            if bool(sel.any()):
                mean = d[sel].float().mean()
                if torch.isnan(buf):
                    buf.copy_(mean)
                else:
                    buf.mul_(self.momentum).add_((1 - self.momentum) * mean)

    def forward(self, d: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        margin = self.margin
        loss = contrastive_loss(d, y, margin)
        if self.training:
            self._update(d.detach(), y)
        return loss


def supcon_loss(z: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Mean over anchors with at least one positive of
    ``−1/|P(i)| Σ_{p∈P(i)} log( exp(z_i·z_p/τ) / Σ_{a≠i} exp(z_i·z_a/τ) )``: :func:`group_supcon`
    with every piece its own group."""
    return group_supcon(z, labels, torch.arange(len(z), device=z.device), temperature)


def group_supcon(
    z: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Supervised contrastive loss (see :func:`supcon_loss`) in which two pieces of one group
    are neither positive nor negative (their shared music must not be what makes them close):
    positives are the same label in another group, the denominator runs over other groups."""
    same_group = groups[:, None] == groups[None, :]
    # the loss masks out "self"; masking same-group pairs the same way means pushing their
    # similarity to −∞ in the denominator and never counting them as positives
    eye = torch.eye(len(z), dtype=torch.bool, device=z.device)
    far = (same_group & ~eye).float() * 1e4
    zz = z.float()
    sim = zz @ zz.T / temperature - far
    sim = sim.masked_fill(eye, float("-inf"))
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    pos = (labels[:, None] == labels[None, :]) & ~same_group
    n_pos = pos.sum(1)
    has = n_pos > 0
    if not bool(has.any()):
        return z.sum() * 0.0
    per_anchor = -(log_prob.masked_fill(~pos, 0.0)).sum(1)[has] / n_pos[has]
    return per_anchor.mean()
