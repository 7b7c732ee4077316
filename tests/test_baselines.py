"""Baseline histograms against hand-computed values."""

from __future__ import annotations

import numpy as np

from harmonixr.evaluate.baselines import (
    histogram_table,
    interval_histogram,
    normalise_rows,
    note_histogram,
    onsets,
    pitch_class_histogram,
    polyphony_histogram,
)


def _tensor():
    t = np.zeros((6, 12, 6), np.uint8)
    t[0:3, 7, 2] = [100, 90, 80]  # C4 (k = 31) from frame 0
    t[2:4, 11, 2] = [50, 40]  # E4 (k = 35) from frame 2
    t[4, 7, 3] = 30  # C5 (k = 43) at frame 4
    return t


def test_histograms_by_hand():
    t = _tensor()
    pc = pitch_class_histogram(t)
    assert np.allclose(pc[[7, 11]], [300 / 390, 90 / 390]) and pc.sum() == 1
    notes = note_histogram(t)
    assert np.allclose(notes[[31, 35, 43]], [270 / 390, 90 / 390, 30 / 390])
    on = onsets(t)
    assert np.flatnonzero(on.any(axis=1)).tolist() == [0, 2, 4]
    iv = interval_histogram(t)  # 31 → 35 (+4), 35 → 43 (+8)
    assert iv[12 + 4] == 0.5 and iv[12 + 8] == 0.5
    poly = polyphony_histogram(t)  # frames sound 1, 1, 2, 1, 1, 0 notes
    assert np.allclose(poly[:3], [1 / 6, 4 / 6, 1 / 6])


def test_embeddings_are_unit_rows():
    table = histogram_table([_tensor(), _tensor()[::-1].copy()])
    for transform in ("raw", "sqrt"):
        e = normalise_rows(table["interval"], transform)
        assert np.allclose(np.linalg.norm(e, axis=1), 1.0)
