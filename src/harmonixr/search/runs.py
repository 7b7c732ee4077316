"""A trained run as the search side sees it: the encoder, how it crops, and how user files
become tensors (parsed in child processes, so a file that crashes the parser cannot take the
caller down)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from harmonixr._files import sha256_file
from harmonixr.midi.load import MAX_FILE_BYTES, MAX_SECONDS, MidiError, Tensorized
from harmonixr.midi.tensorize import TensorConfig
from harmonixr.model.encoder import SiaViT
from harmonixr.model.io import WEIGHTS

if TYPE_CHECKING:
    from harmonixr._pool import RobustPool

PRETRAINED = "pretrained"
PARSE_TIMEOUT = 60.0  # seconds for one file, as safe_load
ProgressFn = Callable[[int, int, str], None]


def pretrained_dir() -> Path:
    """The model shipped in the package (``harmonixr/pretrained/``); raises if absent."""
    from importlib.resources import files

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
    """A run directory (``config.json`` + ``model.safetensors``) loaded for inference."""

    root: Path
    encoder: SiaViT
    tensor_config: TensorConfig
    crop: int  # frames per window, the training crop
    composers: tuple[str, ...]  # every composer of the run's corpus
    config: dict[str, Any]

    @property
    def hop(self) -> int:
        return max(1, self.crop // 2)

    @property
    def frame_seconds(self) -> float:
        return self.tensor_config.frame_ms / 1000.0

    @property
    def dim(self) -> int:
        return self.encoder.config.embed_dim

    def weights_sha256(self) -> str:
        return sha256_file(self.root / WEIGHTS)

    def embed_tensors(
        self,
        tensors: Sequence[np.ndarray],
        batch_size: int = 32,
        chunk: int = 64,
        progress: ProgressFn | None = None,
    ) -> np.ndarray:
        """(N, D) whole-piece embeddings (``model.embed.embed_pieces``), ``chunk`` pieces at a
        time so that progress can be shown and memory stays bounded."""
        from harmonixr.model.embed import embed_pieces

        out = np.zeros((len(tensors), self.dim), np.float32)
        for c0 in range(0, len(tensors), chunk):
            part = tensors[c0 : c0 + chunk]
            out[c0 : c0 + len(part)] = embed_pieces(
                self.encoder, part, self.crop, self.hop, batch_size
            )
            if progress:
                progress(c0 + len(part), len(tensors), "")
        return out


def load_run(root: str | Path, device: str = "cpu") -> Run:
    from harmonixr.model.io import load

    root = Path(root)
    cfg_path = root / "config.json"
    if not cfg_path.is_file():
        raise ValueError(f"{root}: not a run directory (no config.json)")
    config = json.loads(cfg_path.read_text())
    tensor = TensorConfig.from_dict(config.get("tensor", {}))
    train = config.get("train", {})
    crop = int(round(float(train.get("crop_seconds", 60.0)) * 1000.0 / tensor.frame_ms))
    encoder = load(root, map_location=device)
    composers = tuple(config.get("composers", ()))
    return Run(root, encoder, tensor, max(1, crop), composers, config)


# ------------------------------------------------------------------ user files


def parser_pool(workers: int | None = None, timeout: float = PARSE_TIMEOUT) -> RobustPool:
    """Child processes that parse user files, kept for many calls (default up to 2); they
    fork on Linux (``midi.load.parser_context``)."""
    from harmonixr.midi.load import load_job
    from harmonixr.midi.load import parser_pool as make_pool

    n = workers or min(2, os.cpu_count() or 1)
    return make_pool(load_job, workers=n, timeout=timeout)


def load_files(
    paths: Sequence[str | os.PathLike[str]],
    config: TensorConfig,
    *,
    workers: int | None = None,
    pool: RobustPool | None = None,
    progress: ProgressFn | None = None,
) -> list[Tensorized | MidiError]:
    """Each file read, checked, parsed and tensorized in a child process: the tensor, or the
    :class:`MidiError` that ``preprocess`` would give, in input order. ``pool`` (from
    :func:`parser_pool`) reuses its processes; without one, ``workers`` fresh ones (default
    up to 2) start and stop with the call."""
    from harmonixr.midi.load import failure_reason

    names = [os.fspath(p) for p in paths]
    out: list[Tensorized | MidiError | None] = [None] * len(names)
    if not names:
        return []
    jobs = [(p, config, MAX_SECONDS, MAX_FILE_BYTES) for p in names]
    own = pool is None
    if pool is None:
        pool = parser_pool(max(1, min(workers or 2, os.cpu_count() or 1, len(names))))
    try:
        for done, outcome in enumerate(pool.imap(jobs), 1):
            if outcome.ok and isinstance(outcome.value, Tensorized):
                out[outcome.index] = outcome.value
            else:
                out[outcome.index] = MidiError(names[outcome.index], *failure_reason(outcome))
            if progress:
                progress(done, len(names), names[outcome.index])
    finally:
        if own:
            pool.close()
    return out  # type: ignore[return-value]


def expand_midi_paths(args: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Files as given, folders replaced by the MIDI files and scores inside them (recursively,
    sorted, as ``preprocess`` finds them)."""
    from harmonixr.midi.corpora import READ_SUFFIXES, music_files

    out: list[Path] = []
    for arg in args:
        p = Path(arg)
        if p.is_dir():
            found = music_files(p)
            if not found:
                raise ValueError(f"{p}: no MIDI or score files ({', '.join(READ_SUFFIXES)}) inside")
            out.extend(found)
        else:
            out.append(p)
    return out
