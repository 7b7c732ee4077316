"""``Run``: a run directory as every other room reads it.

Training writes a run (``train/run.py``): ``config.json`` (the training, model and tensor
configs and the corpus's composers), ``split.json`` (which piece sat on which side),
``model.safetensors`` (the exported weights) and ``checkpoints/``. Evaluation, the index, the
pictures and the service all read it through this one class, so the crop length, the seed of
the untrained encoder and the check that a cache matches the run are each written once.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, fields
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from harmonixr._files import sha256_file
from harmonixr.midi.tensorize import TensorConfig
from harmonixr.model.config import ModelConfig
from harmonixr.model.embed import default_hop
from harmonixr.model.io import WEIGHTS, load_encoder
from harmonixr.train.config import TrainConfig

if TYPE_CHECKING:
    from harmonixr.data.cache import CachedPiece
    from harmonixr.model.encoder import SiaViT

CONFIG = "config.json"
SPLIT = "split.json"
CHECKPOINTS = "checkpoints"
PRETRAINED = "pretrained"  # the shipped run, inside the package


def pretrained_dir() -> Path:
    """The model shipped in the package (``harmonixr/pretrained/``); raises if absent."""
    where = files("harmonixr") / PRETRAINED
    path = Path(str(where))
    if not (path / WEIGHTS).is_file():
        msg = (
            f"no pretrained model in this installation ({path / WEIGHTS} is missing): "
            "install a release of harmonixr that ships one, build it with "
            "`make pretrained ASAP=path/to/asap`, or pass a run directory (--model RUN)"
        )
        raise FileNotFoundError(msg)
    return path


@dataclass(frozen=True)
class Run:
    """A run directory's configs, typed; weights are read on demand (:meth:`encoder`)."""

    root: Path
    train: TrainConfig
    model: ModelConfig
    tensor: TensorConfig
    composers: tuple[str, ...]  # every composer of the corpus the run trained on

    @classmethod
    def open(cls, root: str | Path, *, strict: bool = False) -> Run:
        """Read ``root/config.json``; a clear ``ValueError`` when it is not a run. Training
        settings this version does not know (a run of a newer release) are ignored with a
        warning, or refused with ``strict`` (resuming a run must keep every setting)."""
        root = Path(root)
        path = root / CONFIG
        if not path.is_file():
            raise ValueError(f"{root}: not a run directory (no {CONFIG})")
        try:
            stored = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(stored, dict):
            raise ValueError(f"{path}: not a run's config (not a JSON object)")
        for key in ("train", "model", "tensor"):
            if key not in stored:
                raise ValueError(f"{path}: not a run's config (no {key!r} section)")
            if not isinstance(stored[key], dict):
                raise ValueError(f"{path}: not a run's config ({key!r} is not a table)")
        known = {f.name for f in fields(TrainConfig)}
        newer = sorted(set(stored["train"]) - known)
        if newer and strict:
            raise ValueError(f"{path}: training settings this version does not know: {newer}")
        if newer:  # a run from a newer release: what this one does not know cannot matter here
            warnings.warn(
                f"{path}: training settings this version does not know, ignored: {newer}",
                stacklevel=2,
            )
        try:
            train = TrainConfig.from_dict({k: v for k, v in stored["train"].items() if k in known})
            model = ModelConfig.from_dict(stored["model"])
            tensor = TensorConfig.from_dict(stored["tensor"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}: not a run's config ({exc})") from None
        if abs(train.frame_ms - tensor.frame_ms) > 1e-9:
            raise ValueError(
                f"{path}: training frames of {train.frame_ms} ms but tensors of "
                f"{tensor.frame_ms} ms"
            )
        return cls(root, train, model, tensor, tuple(stored.get("composers", ())))

    # ------------------------------------------------------------ shape of the input

    @property
    def crop_frames(self) -> int:
        """Frames per training crop, which is also the window of whole-piece embedding."""
        return self.train.crop_frames

    @property
    def hop_frames(self) -> int:
        """The whole-piece embedding's hop: half a crop."""
        return default_hop(self.crop_frames)

    @property
    def frame_seconds(self) -> float:
        return self.tensor.frame_ms / 1000.0

    @property
    def seed(self) -> int:
        return self.train.seed

    @property
    def dim(self) -> int:
        return self.model.embed_dim

    # ------------------------------------------------------------ files

    @property
    def weights_path(self) -> Path:
        return self.root / WEIGHTS

    @property
    def split_path(self) -> Path:
        return self.root / SPLIT

    def weights_sha256(self) -> str:
        return sha256_file(self.weights_path)

    def checkpoints(self) -> list[tuple[int, Path]]:
        """(global step, path) of the run's Lightning checkpoints, by step; one per step (the
        rolling "every N steps" and "at validation" checkpoints often hold the same step)."""
        import torch

        found = []
        for path in sorted((self.root / CHECKPOINTS).glob("*.ckpt")):
            try:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except Exception as exc:  # a checkpoint being written, or a foreign file
                raise ValueError(f"{path}: not a readable checkpoint ({exc})") from None
            found.append((int(state.get("global_step", 0)), path))
        return sorted(dict(sorted(found, reverse=True)).items())

    def encoder(
        self, checkpoint: Path | None = None, *, initial: bool = False, device: str = "cpu"
    ) -> SiaViT:
        """The run's encoder in eval mode: its exported weights; a Lightning checkpoint's; or
        (``initial``) the untrained encoder drawn with the run's seed, as training's step 0."""
        import torch

        from harmonixr.model.encoder import SiaViT

        if initial:
            with torch.random.fork_rng(devices=[]):  # the caller's random state is left alone
                torch.manual_seed(self.seed)
                return SiaViT(self.model).eval().to(device)
        if checkpoint is None:
            return load_encoder(self.weights_path).to(device)  # any device, "meta" included
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
        weights = {
            k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")
        }
        if not weights:
            raise ValueError(f"{checkpoint}: no encoder weights in the checkpoint")
        encoder = SiaViT(self.model)
        encoder.load_state_dict(weights)
        return encoder.eval().to(device)

    def embed(
        self, tensors: Sequence[np.ndarray], encoder: SiaViT | None = None, **kwargs: Any
    ) -> np.ndarray:
        """Whole-piece embeddings as everywhere else: the run's crop and hop, by ``encoder``
        (default: the exported weights); ``kwargs`` go to ``model.embed.embed_pieces``."""
        from harmonixr.model.embed import embed_pieces

        encoder = encoder if encoder is not None else self.encoder()
        return embed_pieces(encoder, tensors, self.crop_frames, self.hop_frames, **kwargs)

    # ------------------------------------------------------------ its corpus

    def check_tensors(self, cache_config: TensorConfig, where: str | Path) -> None:
        """Refuse tensors made otherwise than the run's (the model would read nonsense)."""
        if cache_config != self.tensor:
            raise ValueError(
                f"{where}: its tensors were made with {cache_config}, but {self.root} was "
                f"trained on {self.tensor}"
            )

    def split_manifest(self) -> dict[str, Any]:
        """``split.json``: its header (mode, seed, fractions, cache) and each side's pieces."""
        from harmonixr.data.splits import read_split

        return read_split(self._split_file())

    def _split_file(self) -> Path:
        if not self.split_path.is_file():
            raise ValueError(f"{self.root}: not a run directory (no {SPLIT})")
        return self.split_path

    def split(self, rows: list[CachedPiece]) -> dict[str, list[int]]:
        """Row indices of each side of the run's split, matched by path, without the
        validation and test pieces whose music recurs on an earlier side by today's groups
        (``data.splits.without_recurring``; a warning counts them)."""
        from harmonixr.data.splits import load_split, without_recurring

        split, left_out = without_recurring(load_split(self._split_file(), rows), rows)
        n = {s: len(v) for s, v in left_out.items() if v}
        if n:
            first = next(v[0] for v in left_out.values() if v)
            warnings.warn(
                f"{self.root}: left out {n} pieces whose music recurs on an earlier side of the "
                f"split by today's groups (e.g. {first})",
                stacklevel=2,
            )
        return split

    def check_split(self, split: dict[str, list[int]], rows: list[CachedPiece]) -> None:
        """Refuse when the cache no longer gives the split the run was trained on (a piece
        changed content, unit or side, or appeared or vanished), and ``split`` when it is not
        that split (less the recurring pieces :meth:`split` leaves out)."""
        from harmonixr.data.splits import check_manifest, load_split

        full = load_split(self._split_file(), rows)
        check_manifest(self.split_manifest(), full, rows, str(self.root))
        for s, idx in split.items():
            if not set(idx) <= set(full.get(s, ())):
                raise ValueError(f"{self.root}: the {s} side given is not the run's split")

    def split_info(self) -> dict[str, Any]:
        """``split.json``'s header without its pieces."""
        return {k: v for k, v in self.split_manifest().items() if not isinstance(v, list)}
