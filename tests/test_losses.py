"""Losses and the learning-rate schedule against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from harmonixr.model.losses import DynamicMarginContrastive, contrastive_loss, supcon_loss
from harmonixr.train.schedule import lr_factor


def test_contrastive_loss_by_hand():
    d = torch.tensor([0.5, 0.2, 1.5])
    y = torch.tensor([1.0, 0.0, 0.0])
    # same: 0.25; different at margin 1: (1-0.2)^2 = 0.64 and max(0, 1-1.5)^2 = 0
    assert contrastive_loss(d, y, 1.0).item() == pytest.approx((0.25 + 0.64 + 0.0) / 3)


def test_dynamic_margin_follows_the_formula():
    loss = DynamicMarginContrastive(momentum=0.5, floor=0.1, floor_growth=0.05, floor_max=0.2)
    assert loss.margin == pytest.approx(0.1)  # nothing seen yet: the floor
    d1, y1 = torch.tensor([0.2, 0.4, 1.0, 1.4]), torch.tensor([1.0, 1.0, 0.0, 0.0])
    first = loss(d1, y1)
    assert first.item() == pytest.approx(contrastive_loss(d1, y1, 0.1).item())
    # EMAs initialised with the first batch: same 0.3, different 1.2
    assert loss.margin == pytest.approx(max(0, 1.2 - 0.3) + 0.1)
    d2, y2 = torch.tensor([0.5, 0.6]), torch.tensor([1.0, 0.0])
    second = loss(d2, y2)
    assert second.item() == pytest.approx(contrastive_loss(d2, y2, 1.0).item())
    same, diff = 0.5 * 0.3 + 0.5 * 0.5, 0.5 * 1.2 + 0.5 * 0.6
    assert loss.margin == pytest.approx(max(0, diff - same) + 0.1)
    loss.start_epoch(1)
    assert loss.floor == pytest.approx(0.15)
    loss.start_epoch(10)
    assert loss.floor == pytest.approx(0.2)
    loss.eval()
    before = loss.margin
    loss(d1, y1)
    assert loss.margin == before  # validation never moves the margin


def test_supcon_by_hand():
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    t = 0.5
    # anchors 0 and 1: positive sim 1/t, the other (orthogonal) 0 → -log(e^2 / (e^2 + 1))
    want = -math.log(math.exp(2) / (math.exp(2) + 1))
    assert supcon_loss(z, labels, t).item() == pytest.approx(want, rel=1e-6)
    assert supcon_loss(z, torch.tensor([0, 1, 2]), t).item() == 0.0


def test_lr_schedule_points():
    assert lr_factor(0, 100, 1000, 0.05) == 0.0
    assert lr_factor(50, 100, 1000, 0.05) == pytest.approx(0.5)
    assert lr_factor(100, 100, 1000, 0.05) == pytest.approx(1.0)
    assert lr_factor(550, 100, 1000, 0.05) == pytest.approx(0.05 + 0.95 * 0.5)
    assert lr_factor(1000, 100, 1000, 0.05) == pytest.approx(0.05)
    assert lr_factor(5000, 100, 1000, 0.05) == pytest.approx(0.05)
