"""The inputs of the second training stage (``train/piece_head.py``), each computed once: the
statistics of cached pieces (kept in the cache folder) and the pooled tokens of every window of
a piece by a run's encoder (kept in the run folder), and the whole pieces and excerpts the head
trains on."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harmonixr._files import atomic_write
from harmonixr.data.cache import CachedPiece, TensorCache
from harmonixr.model.embed import piece_windows, pool_features, window_features
from harmonixr.model.encoder import SiaViT
from harmonixr.model.stats import STATS_DIM, STATS_VERSION, piece_stats
from harmonixr.train.piece_augment import perform
from harmonixr.train.rundir import Run

FEATURES = "head-features.npz"


# ---------------------------------------------------------------- statistics, cached


def cached_stats(cache: TensorCache, rows: Sequence[CachedPiece]) -> np.ndarray:
    """``(N, STATS_DIM)`` statistics of the rows' whole tensors, kept in the cache folder
    (``stats-v<STATS_VERSION>.npz``, by tensor file) so that they are computed once."""
    path = cache.root / f"stats-v{STATS_VERSION}.npz"
    known: dict[str, np.ndarray] = {}
    if path.is_file():
        try:
            with np.load(path) as fh:
                known = {k: fh[k] for k in fh.files}
        except (OSError, ValueError):  # a damaged file is recomputed, not trusted
            known = {}
    out = np.zeros((len(rows), STATS_DIM), np.float32)
    added = False
    for i, r in enumerate(rows):
        key = Path(r.tensor or "").stem
        vec = known.get(key)
        if vec is None or vec.shape != (STATS_DIM,):
            vec = piece_stats(cache.load(r))
            known[key] = vec
            added = True
        out[i] = vec
    if added:
        atomic_write(path, lambda tmp: np.savez(open(tmp, "wb"), **known))  # noqa: SIM115
    return out


# ---------------------------------------------------------------- the pieces' inputs


@dataclass
class Views:
    """Inputs of the head: one row per view (a whole piece or an excerpt of it)."""

    features: np.ndarray  # (V, d_model) mean pooled token
    stats: np.ndarray  # (V, STATS_DIM)
    piece: np.ndarray  # (V,) index into the side's pieces
    whole: np.ndarray  # (V,) bool


def _excerpts(n_windows: int, count: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """``count`` random spans [a, b) of 30–80 % of a piece's windows (none for one window)."""
    if n_windows < 2:
        return []
    out = []
    for _ in range(count):
        length = max(1, round(n_windows * rng.uniform(0.3, 0.8)))
        a = int(rng.integers(0, n_windows - length + 1))
        out.append((a, a + length))
    return out


def build_views(
    tensors: Sequence[np.ndarray],
    window_feats: np.ndarray,
    windows: Sequence[Any],
    whole_stats: np.ndarray,
    excerpts: int,
    rng: np.random.Generator,
    performed: int = 0,
) -> Views:
    """Whole pieces, ``excerpts`` random excerpts of each with their own statistics, and
    ``performed`` renditions of each played otherwise (``train/piece_augment.perform``): the
    whole piece's ViT tokens beside the statistics of the rendition."""
    feats, stats, piece, whole = [], [], [], []
    whole_feats = pool_features(window_feats, windows, len(tensors))
    owner = np.array([w.piece for w in windows])
    first = np.searchsorted(owner, np.arange(len(tensors)))
    counts = np.bincount(owner, minlength=len(tensors))
    for i in range(len(tensors)):
        feats.append(whole_feats[i])
        stats.append(whole_stats[i])
        piece.append(i)
        whole.append(True)
        for a, b in _excerpts(int(counts[i]), excerpts, rng):
            ws = [windows[first[i] + k] for k in range(a, b)]
            local = np.arange(first[i] + a, first[i] + b)
            w = np.array([x.valid for x in ws], np.float64)
            feats.append((window_feats[local] * w[:, None]).sum(0) / w.sum())
            start, end = ws[0].start, ws[-1].start + ws[-1].valid
            stats.append(piece_stats(tensors[i][start:end]))
            piece.append(i)
            whole.append(False)
        for _ in range(performed):
            feats.append(whole_feats[i])
            stats.append(piece_stats(perform(tensors[i], rng)))
            piece.append(i)
            whole.append(False)
    return Views(
        np.asarray(feats, np.float32),
        np.asarray(stats, np.float32),
        np.asarray(piece, np.int64),
        np.asarray(whole, bool),
    )


def window_features_cached(
    run: Run, encoder: SiaViT, tensors: Sequence[np.ndarray], keys: Sequence[str]
) -> tuple[np.ndarray, list[Any]]:
    """Every window's pooled token (windows of the run's crop and hop), read back from
    ``RUN/head-features.npz`` for pieces (named by ``keys``, e.g. content hashes) that the same
    weights already read, so a killed run resumes and the arms of an ablation and its scoring
    share the cost; new pieces are computed and added."""
    windows = piece_windows(tensors, run.crop_frames, run.hop_frames)
    path = run.root / FEATURES
    sha = run.weights_sha256()
    known: dict[str, np.ndarray] = {}
    if path.is_file():
        try:
            with np.load(path) as fh:
                if str(fh["weights"]) == sha:
                    bounds = np.concatenate(([0], np.cumsum(fh["counts"])))
                    feats = fh["features"]
                    known = {
                        str(k): feats[bounds[i] : bounds[i + 1]] for i, k in enumerate(fh["keys"])
                    }
        except (OSError, ValueError, KeyError):  # damaged or foreign: recomputed
            known = {}
    counts = np.bincount([w.piece for w in windows], minlength=len(tensors))
    todo = [i for i, k in enumerate(keys) if k not in known or len(known[k]) != counts[i]]
    if todo:
        sub = [tensors[i] for i in todo]
        sub_windows = piece_windows(sub, run.crop_frames, run.hop_frames)
        fresh = window_features(encoder, sub, sub_windows, run.crop_frames)
        owner = np.array([w.piece for w in sub_windows])
        for j, i in enumerate(todo):
            known[keys[i]] = fresh[owner == j]
        names = list(known)
        stacked = np.concatenate([known[k] for k in names])
        n = np.array([len(known[k]) for k in names])

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                np.savez(
                    fh, weights=np.array(sha), keys=np.array(names), counts=n, features=stacked
                )

        atomic_write(path, write)
    feats = np.concatenate([known[k] for k in keys]) if keys else np.zeros((0, 1), np.float32)
    return feats.astype(np.float32), windows


# ---------------------------------------------------------------- training
