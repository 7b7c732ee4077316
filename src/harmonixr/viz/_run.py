"""Reading a run directory for the pictures: its config, its weights and checkpoints, and the
whole-piece embeddings of a cache's pieces."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harmonixr._files import atomic_write
from harmonixr.midi.tensorize import TensorConfig

SPLITS = ("all", "train", "val", "test")


@dataclass(frozen=True)
class RunInfo:
    root: Path
    config: dict[str, Any]

    @property
    def crop_frames(self) -> int:
        t = self.config["train"]
        return max(1, round(float(t["crop_seconds"]) * 1000.0 / float(t["frame_ms"])))

    @property
    def tensor_config(self) -> TensorConfig:
        return TensorConfig.from_dict(self.config["tensor"])

    @property
    def seed(self) -> int:
        return int(self.config["train"].get("seed", 0))


def read_run(run: str | Path) -> RunInfo:
    root = Path(run)
    path = root / "config.json"
    if not path.is_file():
        raise ValueError(f"{root}: not a run directory (no config.json)")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    for key in ("train", "model", "tensor"):
        if key not in config:
            raise ValueError(f"{path}: no {key!r} section")
    return RunInfo(root, config)


def checkpoints(run: RunInfo) -> list[tuple[int, Path]]:
    """(global step, path) of the run's Lightning checkpoints, by step; one per step (the
    rolling "every N steps" and "at validation" checkpoints often hold the same step)."""
    import torch

    found = []
    for path in sorted((run.root / "checkpoints").glob("*.ckpt")):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:  # a checkpoint being written, or a foreign file
            raise ValueError(f"{path}: not a readable checkpoint ({exc})") from None
        found.append((int(state.get("global_step", 0)), path))
    return sorted(dict(sorted(found, reverse=True)).items())


def encoder_at(run: RunInfo, checkpoint: Path | None = None, initial: bool = False) -> Any:
    """The run's encoder: its exported weights, a Lightning checkpoint's, or (``initial``)
    freshly initialised weights drawn with the run's seed (step 0)."""
    import torch

    from harmonixr.model.config import ModelConfig
    from harmonixr.model.encoder import SiaViT
    from harmonixr.model.io import load

    if checkpoint is None and not initial:
        return load(run.root)
    if initial:
        torch.manual_seed(run.seed)
        return SiaViT(ModelConfig.from_dict(run.config["model"])).eval()
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    weights = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    if not weights:
        raise ValueError(f"{checkpoint}: no encoder weights in the checkpoint")
    encoder = SiaViT(ModelConfig.from_dict(run.config["model"]))
    encoder.load_state_dict(weights)
    return encoder.eval()


@dataclass(frozen=True)
class Corpus:
    """The pieces a map shows (rows of a cache, in cache order)."""

    paths: list[str]
    composers: list[str]
    titles: list[str]
    tensors: list[np.ndarray]


def read_corpus(run: RunInfo, data: str | Path, split: str = "all") -> Corpus:
    """The cache's usable pieces, or those of one side of the run's split."""
    from harmonixr.data.cache import TensorCache
    from harmonixr.data.splits import load_split

    if split not in SPLITS:
        raise ValueError(f"--split must be one of {SPLITS}, got {split!r}")
    with TensorCache(data) as cache:
        rows = cache.pieces()
        if not rows:
            raise ValueError(f"{data}: the cache holds no usable pieces")
        if cache.config != run.tensor_config:
            raise ValueError(
                f"{data}: its tensors were made with {cache.config}, but {run.root} was trained "
                f"on {run.tensor_config}"
            )
        if split != "all":
            split_path = run.root / "split.json"
            if not split_path.is_file():
                raise ValueError(f"{run.root}: no split.json, so --split {split} is unknown")
            rows = [rows[i] for i in load_split(split_path, rows)[split]]
            if not rows:
                raise ValueError(f"{split_path}: the {split} side is empty")
        tensors = [cache.load(r) for r in rows]
    return Corpus(
        [r.path for r in rows],
        [r.composer for r in rows],
        [r.title or Path(r.path).stem for r in rows],
        tensors,
    )


def embed(encoder: Any, tensors: list[np.ndarray], crop: int) -> np.ndarray:
    from harmonixr.model.embed import embed_pieces

    return embed_pieces(encoder, tensors, crop)


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
