"""The one tiny training configuration the tests train with: the ``tiny`` preset on a few
synthetic composers, a few dozen steps on the CPU. Each test overrides only what it needs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

TINY: dict[str, Any] = dict(
    loss="contrastive",
    preset="tiny",
    crop_seconds=10,
    batch_size=8,
    steps_per_epoch=15,
    max_steps=30,
    warmup_steps=5,
    lr=2e-3,
    val_pairs=100,
    split_fractions=(0.5, 0.25, 0.25),
    checkpoint_every_steps=1000,
    seed=0,
)


def tiny_config(data: str | Path = "", out: str | Path = "", **overrides: Any):
    """A :class:`TrainConfig` for a tiny run on the cache ``data`` into ``out`` (both may be
    left empty where the caller fills them in, as cross-validation does per fold)."""
    from harmonixr.train.config import TrainConfig

    return TrainConfig(**{**TINY, "data": str(data), "out": str(out), **overrides})


def train_tiny(data: str | Path, out: str | Path, **overrides: Any) -> Path:
    """Train :func:`tiny_config` and return the run directory."""
    from harmonixr.train.run import train

    return train(tiny_config(data, out, **overrides))
