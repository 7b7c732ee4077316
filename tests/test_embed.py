"""Whole-piece embedding: windows cover the piece, weights follow valid frames, batching and
padding change nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harmonixr.model.config import preset
from harmonixr.model.embed import crop_starts, embed_pieces, embed_windows, piece_windows
from harmonixr.model.encoder import SiaViT


def test_crop_starts_cover_the_piece_and_end_at_its_end():
    assert crop_starts(50, 100, 50) == [0]
    assert crop_starts(100, 100, 50) == [0]
    assert crop_starts(250, 100, 50) == [0, 50, 100, 150]
    assert crop_starts(260, 100, 50) == [0, 50, 100, 150, 160]
    with pytest.raises(ValueError):
        crop_starts(10, 0, 5)


def _encoder():
    torch.manual_seed(0)
    return SiaViT(preset("tiny")).eval()


def _piece(n, seed):
    rng = np.random.default_rng(seed)
    t = np.zeros((n, 12, 6), np.uint8)
    mask = rng.random(t.shape) < 0.05
    t[mask] = rng.integers(1, 128, mask.sum())
    return t


def test_whole_piece_is_the_weighted_mean_of_its_windows_renormalised():
    enc = _encoder()
    pieces = [_piece(260, 1), _piece(40, 2), _piece(100, 3)]
    crop = 64
    got = embed_pieces(enc, pieces, crop, hop=32, batch_size=3)
    assert got.shape == (3, enc.config.embed_dim)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # reference from the definition: each window alone, weighted by its music frames
    for i, t in enumerate(pieces):
        acc = np.zeros(enc.config.embed_dim)
        for s in crop_starts(t.shape[0], crop, 32):
            part = t[s : s + crop]
            x = torch.from_numpy(np.ascontiguousarray(part)).permute(1, 2, 0)[None, None] / 127.0
            with torch.no_grad():
                z = enc(x.float(), torch.tensor([part.shape[0]])).numpy()[0]
            acc += part.shape[0] * z
        np.testing.assert_allclose(got[i], acc / np.linalg.norm(acc), atol=1e-4)


def test_batch_size_does_not_change_the_result():
    enc = _encoder()
    pieces = [_piece(n, n) for n in (30, 130, 77, 64)]
    a = embed_pieces(enc, pieces, 64, batch_size=1)
    b = embed_pieces(enc, pieces, 64, batch_size=16)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_windows_know_their_piece_and_valid_frames():
    ws = piece_windows([np.zeros((10, 12, 6), np.uint8), np.zeros((70, 12, 6), np.uint8)], 64, 32)
    assert [(w.piece, w.start, w.valid) for w in ws] == [(0, 0, 10), (1, 0, 64), (1, 6, 64)]
    ones = np.ones((70, 12, 6), np.uint8)
    z = embed_windows(_encoder(), [ones[:10], ones], ws[1:], 64)
    np.testing.assert_allclose(z[0], z[1], atol=1e-5)  # identical content, identical vectors
