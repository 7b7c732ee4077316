"""The corpus map: a seeded 3-D t-SNE (openTSNE) of whole-piece embeddings that later takes new
points without refitting.

Pipeline: embeddings → PCA to at most 50 dimensions → Barnes–Hut t-SNE in 3-D. Saved as
``map.npz`` (arrays only, read with ``allow_pickle=False``) and ``map.json`` (the pieces and the
settings), never a pickle: to place new points, the map rebuilds openTSNE's neighbour index
(exact search) from the saved PCA coordinates and runs openTSNE's ``transform`` with the corpus
points frozen, so the corpus never moves between calls.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from harmonixr._files import atomic_write

FORMAT = 1
MAP_NPZ, MAP_JSON = "map.npz", "map.json"


@dataclass
class CorpusMap:
    coords: np.ndarray  # (N, 3) positions of the corpus pieces
    embeddings: np.ndarray  # (N, D) whole-piece embeddings (L2-normalised)
    mean: np.ndarray  # (D,) PCA mean
    components: np.ndarray  # (K, D) PCA axes
    paths: list[str]
    composers: list[str]
    titles: list[str]
    perplexity: float
    seed: int = 0
    info: dict[str, Any] = field(default_factory=dict)  # weights key, run, timings…

    def __len__(self) -> int:
        return len(self.paths)

    def reduce(self, z: np.ndarray) -> np.ndarray:
        return (np.asarray(z, np.float64) - self.mean) @ self.components.T

    # ------------------------------------------------------------ placing new points

    def place(self, z: np.ndarray, n_jobs: int = 1) -> np.ndarray:
        """(M, 3) positions of new embeddings in this map; the corpus points stay where they are
        (openTSNE's ``transform``: each new point starts at the median of its nearest corpus
        points and is optimised against the frozen corpus)."""
        from openTSNE import TSNEEmbedding
        from openTSNE.affinity import PerplexityBasedNN

        z = np.atleast_2d(np.asarray(z, np.float32))
        if z.shape[1] != self.embeddings.shape[1]:
            raise ValueError(
                f"embeddings of dimension {z.shape[1]} cannot be placed in a map of "
                f"dimension {self.embeddings.shape[1]}"
            )
        ref = self.reduce(self.embeddings)
        affinities = PerplexityBasedNN(
            ref,
            perplexity=self.perplexity,
            method="exact",
            n_jobs=n_jobs,
            random_state=self.seed,
        )
        frozen = TSNEEmbedding(
            self.coords.astype(np.float64).copy(),
            affinities,
            negative_gradient_method="bh",
            random_state=self.seed,
            n_jobs=n_jobs,
        )
        k = min(25, len(self))
        placed = frozen.transform(self.reduce(z), k=k, perplexity=min(5.0, max(1.0, k / 3)))
        return np.asarray(placed, np.float64)

    def nearest(self, z: np.ndarray, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
        """Indices (M, k) of the corpus pieces nearest to each embedding, and their Euclidean
        distances in embedding space (0…2 for normalised embeddings), nearest first."""
        z = np.atleast_2d(np.asarray(z, np.float32))
        d2 = (
            (z**2).sum(1)[:, None]
            + (self.embeddings**2).sum(1)[None, :]
            - 2.0 * z @ self.embeddings.T
        )
        d = np.sqrt(np.clip(d2, 0.0, None))
        k = min(k, len(self))
        idx = np.argsort(d, axis=1, kind="stable")[:, :k]
        return idx, np.take_along_axis(d, idx, axis=1)

    # ------------------------------------------------------------ saving

    def save(self, folder: str | Path, compact: bool = False) -> Path:
        """``map.npz`` and ``map.json`` in ``folder``. ``compact`` (a map shipped as package
        data): the embeddings in float16 and the positions in float32, compressed, and the
        JSON on one line, about half the size; loaded, they are float32 and float64 again
        (half precision moves a normalised embedding by under 0.001)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        arrays = {
            "coords": self.coords.astype(np.float32) if compact else self.coords,
            "embeddings": self.embeddings.astype(np.float16) if compact else self.embeddings,
            "mean": self.mean,
            "components": self.components,
        }
        meta = {
            "format": FORMAT,
            "method": "openTSNE (Barnes-Hut, 3-D) after PCA",
            "perplexity": self.perplexity,
            "seed": self.seed,
            "info": self.info,
            "pieces": [
                {"path": p, "composer": c, "title": t}
                for p, c, t in zip(self.paths, self.composers, self.titles, strict=True)
            ],
        }
        text = json.dumps(meta, separators=(",", ":")) if compact else json.dumps(meta, indent=1)
        write = np.savez_compressed if compact else np.savez
        atomic_write(folder / MAP_NPZ, lambda tmp: write(tmp, **arrays))  # after the text
        atomic_write(folder / MAP_JSON, text)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> CorpusMap:
        folder = Path(folder)
        npz, meta_path = folder / MAP_NPZ, folder / MAP_JSON
        if not (npz.is_file() and meta_path.is_file()):
            raise ValueError(f"{folder}: no saved map ({MAP_NPZ} and {MAP_JSON})")
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{meta_path}: not valid JSON ({exc})") from None
        if meta.get("format") != FORMAT:
            raise ValueError(f"{meta_path}: map format {meta.get('format')}, expected {FORMAT}")
        with np.load(npz, allow_pickle=False) as f:
            arrays = {k: f[k] for k in ("coords", "embeddings", "mean", "components")}
        if arrays["embeddings"].dtype == np.float16:  # a compact map (``save(compact=True)``)
            arrays["embeddings"] = arrays["embeddings"].astype(np.float32)
            arrays["coords"] = arrays["coords"].astype(np.float64)
        pieces = meta["pieces"]
        if len(pieces) != len(arrays["coords"]):
            raise ValueError(f"{folder}: {len(pieces)} pieces but {len(arrays['coords'])} points")
        return cls(
            paths=[p["path"] for p in pieces],
            composers=[p["composer"] for p in pieces],
            titles=[p["title"] for p in pieces],
            perplexity=float(meta["perplexity"]),
            seed=int(meta["seed"]),
            info=dict(meta.get("info", {})),
            **arrays,
        )

    def rebased(self, root: str | Path) -> CorpusMap:
        """This map with its pieces' paths relative to ``root`` (the folder holding the
        corpora, as ``index build --relative-to`` writes the index's) and the run and cache it
        names relative to the working folder, for a map that ships beside its model (no
        machine's paths in it); a path outside either is kept as it was."""

        def relative(path: str, base: Path) -> str:
            try:
                return Path(path).resolve().relative_to(base.resolve()).as_posix()
            except ValueError:
                return path

        info = dict(self.info)
        for key in ("run", "data"):
            if isinstance(info.get(key), str):
                info[key] = relative(info[key], Path.cwd())
        return replace(self, paths=[relative(p, Path(root)) for p in self.paths], info=info)


def fit_map(
    embeddings: np.ndarray,
    paths: list[str],
    composers: list[str],
    titles: list[str],
    *,
    perplexity: float = 30.0,
    seed: int = 0,
    n_pca: int = 50,
    n_iter: int = 500,
    n_jobs: int | None = None,
    initialization: np.ndarray | None = None,
    info: dict[str, Any] | None = None,
) -> CorpusMap:
    """Fit a seeded 3-D t-SNE map of ``embeddings`` (PCA to ``n_pca`` dimensions first).
    ``n_jobs`` defaults to one thread below 2,000 points or on two cores or fewer (measured:
    10,000 points took 92 s on one thread and 133 s on two of a busy 2-core machine; threads
    cost more than they save on small maps), else up to 8."""
    from openTSNE import TSNE

    z = np.asarray(embeddings, np.float32)
    n = len(z)
    if n < 4:
        raise ValueError(f"a map needs at least 4 pieces, got {n}")
    if not len(paths) == len(composers) == len(titles) == n:
        raise ValueError("embeddings, paths, composers and titles differ in length")
    started = time.perf_counter()
    mean = z.mean(0).astype(np.float64)
    k = min(n_pca, n - 1, z.shape[1])
    # PCA by SVD of the centred data (exact, deterministic up to sign; signs fixed below)
    _, _, vt = np.linalg.svd(z.astype(np.float64) - mean, full_matrices=False)
    comps = vt[:k]
    comps *= np.where(comps[np.arange(k), np.abs(comps).argmax(1)] < 0, -1.0, 1.0)[:, None]
    x = (z.astype(np.float64) - mean) @ comps.T
    if n_jobs is None:
        cores = os.cpu_count() or 1
        n_jobs = 1 if n < 2000 or cores <= 2 else min(cores, 8)
    perplexity = float(min(perplexity, max(1.0, (n - 1) / 3.0 - 1.0)))
    tsne = TSNE(
        n_components=3,
        perplexity=perplexity,
        n_iter=n_iter,
        negative_gradient_method="bh",
        neighbors="exact" if n <= 5000 else "annoy",
        initialization="pca" if initialization is None else initialization,
        random_state=seed,
        n_jobs=n_jobs,
    )
    coords = np.asarray(tsne.fit(x), np.float64)
    coords -= (coords.max(0) + coords.min(0)) / 2  # centred as openTSNE's transform expects
    meta = dict(info or {})
    meta.update(tsne_seconds=round(time.perf_counter() - started, 1), n_pca=k)
    return CorpusMap(coords, z, mean, comps, paths, composers, titles, perplexity, seed, meta)


def align(points: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``points`` rotated (or reflected) and shifted to best match ``target`` (orthogonal
    Procrustes, same rows); the scale is kept, so a map that is smaller stays smaller."""
    p_mean, t_mean = points.mean(0), target.mean(0)
    u, _, vt = np.linalg.svd((points - p_mean).T @ (target - t_mean))
    return (points - p_mean) @ (u @ vt) + t_mean


def composer_positions(
    coords: np.ndarray, composers: list[str]
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Each composer's point in the map: the mean of its pieces' positions. Returns names
    (most pieces first), positions (C, 3) and piece counts (C,)."""
    tally = Counter(composers)
    names = sorted(tally, key=lambda c: (-tally[c], c))
    index = {c: i for i, c in enumerate(names)}
    owner = np.array([index[c] for c in composers])
    counts = np.bincount(owner, minlength=len(names))
    sums = np.zeros((len(names), coords.shape[1]))
    np.add.at(sums, owner, coords)
    return names, sums / counts[:, None], counts


def spread_and_dimension(z: np.ndarray) -> tuple[float, float]:
    """How far embeddings lie from their centroid (root mean square distance) and their
    effective dimension (participation ratio of the covariance's eigenvalues: 1 for points on
    a line, D for a round cloud)."""
    z = np.asarray(z, np.float64)
    centred = z - z.mean(0)
    spread = float(np.sqrt((centred**2).sum(1).mean()))
    eig = np.clip(np.linalg.eigvalsh(np.cov(centred, rowvar=False)), 0.0, None)
    dim = float(eig.sum() ** 2 / (eig**2).sum()) if eig.sum() > 0 else 0.0
    return spread, dim
