"""Small real MIDI files for the tests, built with symusic (and mido for type-0 files).

At 120 bpm and 480 ticks per quarter, one 50 ms frame is exactly 48 ticks.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import symusic

TPQ = 480
TICKS_PER_FRAME = 48  # at 120 bpm


def make_score(
    notes: Iterable[tuple[int, int, int, int]],
    *,
    pedals: Iterable[tuple[int, int]] = (),
    drums: Iterable[tuple[int, int, int, int]] = (),
    tempos: Iterable[tuple[int, float]] = ((0, 120.0),),
) -> symusic.Score:
    """notes: (start tick, duration ticks, pitch, velocity); pedals: (tick, CC64 value)."""
    score = symusic.Score(TPQ)
    for tick, qpm in tempos:
        score.tempos.append(symusic.Tempo(tick, qpm=qpm))
    track = symusic.Track(name="piano", program=0, is_drum=False)
    for start, dur, pitch, vel in notes:
        track.notes.append(symusic.Note(start, dur, pitch, vel))
    for tick, value in pedals:
        track.controls.append(symusic.ControlChange(tick, 64, value))
    score.tracks.append(track)
    drums = list(drums)
    if drums:
        kit = symusic.Track(name="drums", program=0, is_drum=True)
        for start, dur, pitch, vel in drums:
            kit.notes.append(symusic.Note(start, dur, pitch, vel))
        score.tracks.append(kit)
    return score


def write_score(path: Path, *args, **kwargs) -> Path:
    make_score(*args, **kwargs).dump_midi(str(path))
    return path


def frames(n: float) -> int:
    """Ticks for n frames at 120 bpm."""
    return round(n * TICKS_PER_FRAME)


# (lowest pitch, highest pitch, seconds between onsets, note length in seconds)
STYLES = {"Low": (36, 56, 0.4, 0.8), "High": (67, 91, 0.1, 0.08)}


def _style_notes(
    rng, style: str, start_s: float, seconds: float
) -> list[tuple[int, int, int, int]]:
    lo, hi, step_s, dur_s = STYLES[style]
    ticks_per_s = 2 * TPQ  # 120 bpm
    notes, t = [], start_s
    while t < start_s + seconds:
        pitch = int(rng.integers(lo, hi))
        notes.append(
            (
                round(t * ticks_per_s),
                max(1, round(dur_s * ticks_per_s)),
                pitch,
                int(rng.integers(40, 110)),
            )
        )
        t += step_s * float(rng.uniform(0.7, 1.3))
    return notes


def synthetic_corpus(root: Path, n_per: int = 12, seconds: float = 30.0, seed: int = 0) -> Path:
    """Two made-up composers with different habits, one folder each (a piece = a work):
    'Low' writes slow, long notes in the bass; 'High' writes fast, short notes in the treble."""
    import numpy as np

    rng = np.random.default_rng(seed)
    for composer in STYLES:
        (root / composer).mkdir(parents=True, exist_ok=True)
        for i in range(n_per):
            notes = _style_notes(rng, composer, 0.0, seconds)
            write_score(root / composer / f"{composer.lower()}{i:02d}.mid", notes)
    return root


def synthetic_piece(path: Path, plan: Iterable[tuple[str, float]], seed: int = 1) -> Path:
    """One piece in the synthetic composers' styles, section after section: ``plan`` is
    (style, seconds), e.g. ``[("Low", 60), ("High", 60), ("Low", 60)]``."""
    import numpy as np

    rng = np.random.default_rng(seed)
    notes, start = [], 0.0
    for style, seconds in plan:
        notes += _style_notes(rng, style, start, seconds)
        start += seconds
    return write_score(path, notes)


def make_multitrack(
    parts: Iterable[tuple[Iterable[tuple[int, int, int, int]], Iterable[tuple[int, int]], bool]],
    *,
    tempos: Iterable[tuple[int, float]] = ((0, 120.0),),
) -> symusic.Score:
    """A score with one track per part: (notes, pedals, is_drum), as in :func:`make_score`."""
    score = symusic.Score(TPQ)
    for tick, qpm in tempos:
        score.tempos.append(symusic.Tempo(tick, qpm=qpm))
    for k, (notes, pedals, is_drum) in enumerate(parts):
        track = symusic.Track(name=f"part{k}", program=0, is_drum=is_drum)
        for start, dur, pitch, vel in notes:
            track.notes.append(symusic.Note(start, dur, pitch, vel))
        for tick, value in pedals:
            track.controls.append(symusic.ControlChange(tick, 64, value))
        score.tracks.append(track)
    return score


def write_dense(path: Path, n_notes: int = 3000, seconds: float = 3.9 * 3600) -> Path:
    """A hostile file: a few kilobytes of ``n_notes`` notes that each last ``seconds``."""
    ticks = round(seconds * 2 * TPQ)  # 120 bpm
    notes = [(i, ticks, 29 + i % 72, 100) for i in range(n_notes)]
    return write_score(path, notes)
