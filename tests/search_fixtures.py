"""A tiny trained run with its index, on two learnable synthetic composers (built once per
session by the ``search_run`` fixture in conftest.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from midi_factory import synthetic_corpus
from tiny_runs import train_tiny


def make_tiny_run(root: Path) -> Path:
    from harmonixr.data.cache import preprocess
    from harmonixr.search.index import build_index

    synthetic_corpus(root / "midi", n_per=10, seconds=20)
    preprocess(root / "midi", root / "cache", workers=1)
    run = train_tiny(root / "cache", root / "run")
    shutil.rmtree(run / "checkpoints")
    shutil.rmtree(run / "tb")
    build_index(run, root / "cache")
    return run


def split_paths(run: Path, side: str) -> list[str]:
    return json.loads((run / "split.json").read_text())[side]


def composer_of(path: str) -> str:
    return Path(path).parent.name  # synthetic_corpus: one folder per composer
