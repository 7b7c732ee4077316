"""What the pictures show: a cache's pieces (or one side of a run's split) and their
whole-piece embeddings, kept on disk while the weights and the pieces stay the same."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harmonixr._files import atomic_write
from harmonixr.train.rundir import Run

SPLITS = ("all", "train", "val", "test")


@dataclass(frozen=True)
class Corpus:
    """The pieces a map shows (rows of a cache, in cache order)."""

    paths: list[str]
    composers: list[str]
    titles: list[str]
    tensors: list[np.ndarray]


def map_corpus(run: Run, data: str | Path, split: str = "all") -> Corpus:
    """The cache's usable pieces, or those of one side of the run's split."""
    from harmonixr.data.cache import TensorCache

    if split not in SPLITS:
        raise ValueError(f"--split must be one of {SPLITS}, got {split!r}")
    with TensorCache(data) as cache:
        rows = cache.pieces()
        if not rows:
            raise ValueError(f"{data}: the cache holds no usable pieces")
        run.check_tensors(cache.config, data)
        if split != "all":
            rows = [rows[i] for i in run.split(rows)[split]]
            if not rows:
                raise ValueError(f"{run.split_path}: the {split} side is empty")
        tensors = [cache.load(r) for r in rows]
    return Corpus(
        [r.path for r in rows],
        [r.composer for r in rows],
        [r.title or Path(r.path).stem for r in rows],
        tensors,
    )


def cached_embeddings(
    path: Path, key: str, paths: list[str], compute: Any
) -> tuple[np.ndarray, bool]:
    """Embeddings stored at ``path`` if they were made from the same weights (``key``) and the
    same pieces, else ``compute()`` (and store them). Returns (embeddings, reused)."""
    if path.is_file():
        with np.load(path, allow_pickle=False) as f:
            if str(f["key"]) == key and f["paths"].tolist() == paths:
                return f["z"].astype(np.float32), True
    z = np.asarray(compute(), np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"z": z, "key": np.array(key), "paths": np.array(paths, dtype=str)}
    atomic_write(path, lambda tmp: np.savez(tmp, **arrays))
    return z, False
