"""A tiny trained run with its index, on two learnable synthetic composers (built once per
session by the ``search_run`` fixture in conftest.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from midi_factory import synthetic_corpus


def make_tiny_run(root: Path) -> Path:
    from harmonixr.data.cache import preprocess
    from harmonixr.search.index import build_index
    from harmonixr.train.config import TrainConfig
    from harmonixr.train.run import train

    synthetic_corpus(root / "midi", n_per=10, seconds=20)
    preprocess(root / "midi", root / "cache", workers=1)
    config = TrainConfig(
        loss="contrastive",
        data=str(root / "cache"),
        out=str(root / "run"),
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
    run = train(config)
    shutil.rmtree(run / "checkpoints")
    shutil.rmtree(run / "tb")
    build_index(run, root / "cache")
    return run


def split_paths(run: Path, side: str) -> list[str]:
    return json.loads((run / "split.json").read_text())[side]


def composer_of(path: str) -> str:
    return Path(path).parent.name  # synthetic_corpus: one folder per composer
