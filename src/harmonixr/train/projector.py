"""Embeddings for TensorBoard's projector (``RUN/tb``), with composer and title metadata."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

HEADER = ("composer", "title")


def _cell(text: object) -> str:
    # the projector's metadata is a TSV: no tabs or line breaks inside a cell
    return " ".join(str(text).split()) or "-"


def write_projector(
    run_dir: str | Path,
    embeddings: np.ndarray,
    metadata: Sequence[Sequence[str]],
    tag: str = "val",
    step: int | None = None,
    header: Sequence[str] = HEADER,
) -> Path:
    """Add ``embeddings`` (N, D) with one metadata row per point (default: composer, title) to
    the projector of ``run_dir/tb`` under ``tag``; returns the TensorBoard log folder."""
    from torch.utils.tensorboard import SummaryWriter

    z = np.asarray(embeddings, np.float32)
    if z.ndim != 2 or len(z) != len(metadata):
        raise ValueError(
            f"{run_dir}: {len(metadata)} metadata rows for embeddings of shape {z.shape}"
        )
    rows = [[_cell(v) for v in row] for row in metadata]
    if any(len(r) != len(header) for r in rows):
        raise ValueError(f"{run_dir}: every metadata row needs {len(header)} fields {header}")
    logdir = Path(run_dir) / "tb"
    writer = SummaryWriter(str(logdir))
    try:
        writer.add_embedding(
            z, metadata=rows, metadata_header=list(header), tag=tag, global_step=step
        )
    finally:
        writer.close()
    return logdir
