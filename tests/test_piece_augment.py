"""Whole pieces played otherwise (train/piece_augment.py), each checked against its documented
rule on small hand-made tensors; and the second stage's performed views."""

from __future__ import annotations

import numpy as np
import pytest

from harmonixr.train import piece_augment as A


def tensor(frames: int, notes: list[tuple[int, int, int, int, int]]) -> np.ndarray:
    """notes: (start, length, pitch class, octave, value); a note holds its value."""
    t = np.zeros((frames, 12, 6), np.uint8)
    for start, length, pc, octave, value in notes:
        t[start : start + length, pc, octave] = value
    return t


def starts(t: np.ndarray) -> list[tuple[int, int, int]]:
    """(frame, pitch class, octave) where a cell rises above the frame before."""
    prev = np.concatenate([np.zeros((1, 12, 6), np.int32), t[:-1].astype(np.int32)])
    return [tuple(int(x) for x in i) for i in np.argwhere(t.astype(np.int32) > prev)]


def test_tempo_resamples_the_frames():
    t = tensor(40, [(0, 4, 0, 2, 90), (20, 4, 5, 2, 80)])
    fast, slow = A.tempo(t, 2.0), A.tempo(t, 0.5)
    assert len(fast) == 20 and len(slow) == 80
    assert [s[0] for s in starts(fast)] == [0, 10] and [s[0] for s in starts(slow)] == [0, 40]
    with pytest.raises(ValueError):
        A.tempo(t, 0.0)


def test_rubato_keeps_the_order_of_notes_and_without_depth_changes_nothing():
    t = tensor(300, [(k * 20, 5, k % 12, 2, 60 + k) for k in range(15)])
    assert np.array_equal(A.rubato(t, np.random.default_rng(0), depth=0.0), t)
    warped = A.rubato(t, np.random.default_rng(1), depth=0.4)
    got = starts(warped)
    assert [s[1] for s in got] == [k % 12 for k in range(15)]  # every note, in order
    gaps = np.diff([s[0] for s in got])
    assert gaps.min() < 20 < gaps.max()  # some faster, some slower


def test_roll_chords_spreads_three_keys_upwards_one_step_each():
    chord = [(10, 8, 0, 1, 100), (10, 8, 4, 1, 90), (10, 8, 7, 2, 80)]  # F, A, C an octave up
    two = [(30, 8, 0, 3, 70), (30, 8, 7, 3, 70)]
    t = tensor(50, chord + two)
    rolled = A.roll_chords(t, step=2)
    got = dict(((pc, o), f) for f, pc, o in starts(rolled))
    assert got[(0, 1)] == 10 and got[(4, 1)] == 12 and got[(7, 2)] == 14
    assert got[(0, 3)] == 30 and got[(7, 3)] == 30  # two keys are not a roll
    assert list(rolled[12:20, 4, 1]) == [90] * 8 and rolled[10:12, 4, 1].sum() == 0


def test_bass_octaves_doubles_the_lowest_start_below_but_not_from_the_lowest_octave():
    t = tensor(30, [(2, 6, 3, 2, 70), (2, 6, 9, 3, 70), (15, 4, 1, 0, 60)])
    out = A.bass_octaves(t, np.random.default_rng(0), p=1.0)
    assert list(out[2:8, 3, 1]) == [70] * 6  # the lowest start copied an octave below
    assert out[:, 9, 2].sum() == 0  # only the lowest
    assert out[:, 1, :].sum() == t[:, 1, :].sum()  # octave 0 has nothing below


def test_pedal_sustains_until_the_key_starts_again_or_the_pedal_changes():
    t = tensor(30, [(0, 2, 5, 2, 100), (10, 2, 5, 2, 50)])
    out = A.pedal(t, np.random.default_rng(0), keep=0.9, change=(100, 100))  # one pedal
    assert out[2, 5, 2] == 90 and out[3, 5, 2] == 81  # fades by 0.9 a frame
    assert out[10, 5, 2] == 50  # struck again: its own value, no carry
    changed = A.pedal(t, np.random.default_rng(0), keep=0.9, change=(3, 3))  # changes at 0, 3, 6
    assert changed[2, 5, 2] == 90 and changed[3, 5, 2] == 0


def test_dry_keeps_a_fraction_of_each_note():
    t = tensor(30, [(0, 10, 2, 2, 80), (12, 1, 2, 2, 80)])
    out = A.dry(t, 0.5)
    assert list(out[:12, 2, 2]) == [80] * 5 + [0] * 7
    assert out[12, 2, 2] == 80  # at least one frame


def test_perform_is_seeded_and_gives_a_tensor():
    t = tensor(200, [(k * 10, 8, (k * 5) % 12, 1 + k % 4, 90) for k in range(18)])
    a = A.perform(t, np.random.default_rng(3))
    b = A.perform(t, np.random.default_rng(3))
    assert np.array_equal(a, b) and a.dtype == np.uint8 and a.shape[1:] == (12, 6)


def test_performed_views_hold_the_whole_piece_tokens_beside_other_statistics():
    from harmonixr.model.embed import piece_windows
    from harmonixr.model.stats import piece_stats
    from harmonixr.train.piece_inputs import build_views

    ts = [tensor(700, [(k * 7, 6, (k * 5) % 12, 1 + k % 4, 90) for k in range(90)])]
    windows = piece_windows(ts, 600, 300)
    feats = np.arange(len(windows) * 4, dtype=np.float32).reshape(len(windows), 4)
    whole = np.stack([piece_stats(t) for t in ts])
    v = build_views(ts, feats, windows, whole, 1, np.random.default_rng(0), performed=2)
    assert len(v.piece) == 1 + 1 + 2 and v.whole.tolist() == [True, False, False, False]
    np.testing.assert_allclose(v.features[2], v.features[0])  # the whole piece's tokens
    assert not np.allclose(v.stats[2], v.stats[0]) and not np.allclose(v.stats[3], v.stats[2])
