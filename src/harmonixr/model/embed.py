"""Whole-piece embeddings (docs/architecture.md): the mean of the embeddings of overlapping crops
covering the piece, weighted by each crop's valid frames, then renormalised. A model with a
statistics branch instead averages the crops' pooled tokens and reads them with the whole
piece's statistics (one head call per piece).

Works on ``uint8 (T, 12, 6)`` arrays (the cache's tensors), so evaluation, pictures and search
share one definition. Crops from many pieces are batched together; a piece shorter than the crop
is one padded crop whose padding the encoder masks out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from harmonixr.model.encoder import SiaViT
from harmonixr.model.stats import STATS_DIM, piece_stats


def to_model_input(x: torch.Tensor) -> torch.Tensor:
    """uint8 ``(B, L, 12, 6)`` → float ``(B, 1, 12, 6, L)`` in [0, 1]."""
    return x.permute(0, 2, 3, 1).unsqueeze(1).float().div_(127.0)


def crop_starts(n_frames: int, crop: int, hop: int) -> list[int]:
    """Start frames of windows of ``crop`` frames every ``hop`` frames that cover all
    ``n_frames``; the last window ends at the piece's end (so no window is mostly padding)."""
    if crop < 1 or hop < 1:
        raise ValueError(f"crop and hop must be positive, got {crop}, {hop}")
    if n_frames <= crop:
        return [0]
    starts = list(range(0, n_frames - crop + 1, hop))
    if starts[-1] + crop < n_frames:
        starts.append(n_frames - crop)
    return starts


@dataclass(frozen=True)
class Window:
    piece: int  # index into the input sequence
    start: int  # first frame
    valid: int  # frames of music in the window (≤ crop)


def default_hop(crop: int) -> int:
    """Whole-piece embedding's hop: half a crop, so every frame is seen twice."""
    return max(1, crop // 2)


def piece_windows(tensors: Sequence[np.ndarray], crop: int, hop: int) -> list[Window]:
    out = []
    for i, t in enumerate(tensors):
        n = int(t.shape[0])
        for s in crop_starts(n, crop, hop):
            out.append(Window(i, s, max(1, min(crop, n - s))))
    return out


def crop_batches(
    tensors: Sequence[np.ndarray], windows: Sequence[Window], crop: int, batch_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray, slice]]:
    """uint8 ``(b, crop, 12, 6)`` batches of the windows (padding zero), their valid frames,
    and which windows they hold."""
    for b0 in range(0, len(windows), batch_size):
        chunk = windows[b0 : b0 + batch_size]
        x = np.zeros((len(chunk), crop, 12, 6), np.uint8)
        for k, w in enumerate(chunk):
            part = tensors[w.piece][w.start : w.start + crop]
            x[k, : part.shape[0]] = part
        yield x, np.array([w.valid for w in chunk]), slice(b0, b0 + len(chunk))


@torch.inference_mode()
def window_features(
    encoder: SiaViT,
    tensors: Sequence[np.ndarray],
    windows: Sequence[Window],
    crop: int,
    batch_size: int = 32,
) -> np.ndarray:
    """``(len(windows), d_model)`` float32 pooled ViT tokens of the given windows (what the
    head reads); zeros, not computed, for a statistics-only model (its head never reads them)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    encoder.eval()
    device = next(encoder.parameters()).device
    out = np.zeros((len(windows), encoder.config.d_model), np.float32)
    if encoder.has_stats and encoder.config.stats_branches == "stats":
        return out
    for x, valid, sl in crop_batches(tensors, windows, crop, batch_size):
        xt = to_model_input(torch.from_numpy(x).to(device))
        lengths = torch.from_numpy(valid).to(device)
        out[sl] = encoder.pooled(xt, lengths).float().cpu().numpy()
    return out


def window_stats(tensors: Sequence[np.ndarray], windows: Sequence[Window]) -> np.ndarray:
    """``(len(windows), STATS_DIM)`` statistics of the music inside each window."""
    return np.stack(
        [piece_stats(tensors[w.piece][w.start : w.start + w.valid]) for w in windows]
    ).reshape(len(windows), STATS_DIM)


@torch.inference_mode()
def head_embeddings(
    encoder: SiaViT, features: np.ndarray, stats: np.ndarray | None, batch_size: int = 1024
) -> np.ndarray:
    """``(N, D)`` L2-normalised embeddings of pooled tokens (and statistics) by the head."""
    encoder.eval()
    device = next(encoder.parameters()).device
    out = np.zeros((len(features), encoder.config.embed_dim), np.float32)
    for b0 in range(0, len(features), batch_size):
        sl = slice(b0, b0 + batch_size)
        f = torch.from_numpy(np.ascontiguousarray(features[sl], np.float32)).to(device)
        st = None
        if stats is not None:
            st = torch.from_numpy(np.ascontiguousarray(stats[sl], np.float32)).to(device)
        out[sl] = encoder.forward_head(f, st).float().cpu().numpy()
    return out


def embed_windows(
    encoder: SiaViT,
    tensors: Sequence[np.ndarray],
    windows: Sequence[Window],
    crop: int,
    batch_size: int = 32,
) -> np.ndarray:
    """``(len(windows), D)`` float32 L2-normalised embeddings of the given windows (a
    statistics model reads each window's own statistics)."""
    features = window_features(encoder, tensors, windows, crop, batch_size)
    stats = window_stats(tensors, windows) if encoder.has_stats else None
    return head_embeddings(encoder, features, stats)


def _weighted_mean(z: np.ndarray, windows: Sequence[Window], n_pieces: int) -> np.ndarray:
    owner = np.array([w.piece for w in windows], np.int64)
    weight = np.array([w.valid for w in windows], np.float64)
    acc = np.zeros((n_pieces, z.shape[1]), np.float64)
    np.add.at(acc, owner, z.astype(np.float64) * weight[:, None])
    total = np.bincount(owner, weights=weight, minlength=n_pieces)
    return acc, total


def pool_windows(z: np.ndarray, windows: Sequence[Window], n_pieces: int) -> np.ndarray:
    """Valid-frame-weighted mean of window embeddings per piece, renormalised, ``(N, D)``."""
    acc, _ = _weighted_mean(z, windows, n_pieces)
    norm = np.linalg.norm(acc, axis=1, keepdims=True)
    return (acc / np.where(norm > 0, norm, 1.0)).astype(np.float32)


def pool_features(features: np.ndarray, windows: Sequence[Window], n_pieces: int) -> np.ndarray:
    """Valid-frame-weighted mean of window features per piece, ``(N, d)`` (not normalised:
    a statistics model's head reads the whole piece's mean token)."""
    acc, total = _weighted_mean(features, windows, n_pieces)
    return (acc / np.maximum(total, 1e-12)[:, None]).astype(np.float32)


def whole_pieces(
    encoder: SiaViT,
    tensors: Sequence[np.ndarray],
    windows: Sequence[Window],
    features: np.ndarray,
    stats: np.ndarray | None = None,
) -> np.ndarray:
    """``(N, D)`` whole-piece embeddings from the pooled tokens of windows covering the pieces
    (``window_features``): a ViT-only model's mean of its window embeddings, renormalised; a
    statistics model's head on the mean token with the whole piece's statistics (``stats``,
    computed from the tensors when not given)."""
    if not encoder.has_stats:
        return pool_windows(head_embeddings(encoder, features, None), windows, len(tensors))
    if stats is None:
        stats = np.stack([piece_stats(t) for t in tensors]).reshape(len(tensors), STATS_DIM)
    pooled = pool_features(features, windows, len(tensors))
    return head_embeddings(encoder, pooled, np.asarray(stats, np.float32))


def embed_pieces(
    encoder: SiaViT,
    tensors: Sequence[np.ndarray],
    crop: int,
    hop: int | None = None,
    batch_size: int = 32,
    progress: Callable[[int, int], None] | None = None,
    chunk: int = 64,
    stats: np.ndarray | None = None,
) -> np.ndarray:
    """``(N, D)`` float32 whole-piece embeddings (see the module docstring). ``hop`` defaults
    to half a crop. Pieces go through ``chunk`` at a time, so memory stays bounded and
    ``progress(done, total)`` is called after each chunk. A statistics model's head reads the
    mean of the windows' pooled tokens and the whole piece's statistics (``stats``, ``(N,
    STATS_DIM)``, computed from the tensors when not given)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if stats is not None and len(stats) != len(tensors):
        raise ValueError(f"{len(stats)} statistics vectors for {len(tensors)} pieces")
    hop = hop or default_hop(crop)
    out = np.zeros((len(tensors), encoder.config.embed_dim), np.float32)
    step = max(1, chunk)
    for c0 in range(0, len(tensors), step):
        part = [tensors[i] for i in range(c0, min(c0 + step, len(tensors)))]
        windows = piece_windows(part, crop, hop)
        features = window_features(encoder, part, windows, crop, batch_size)
        given = None if stats is None else stats[c0 : c0 + len(part)]
        out[c0 : c0 + len(part)] = whole_pieces(encoder, part, windows, features, given)
        if progress:
            progress(c0 + len(part), len(tensors))
    return out
