"""Melodic content of a piece and how much two pieces share: what joins groups by content.

A piece's content is its set of **interval patterns**: every run of six successive notes of a
line, written as its five pitch intervals (so a transposed copy has the same patterns), for
three lines read back from the piece's tensor:

- ``top``: the highest note of each event (an event: the notes starting together, onsets
  less than :data:`CHORD_GAP_S` apart joined, so a performer's spread chord is one event);
- ``bass``: the lowest note of each event;
- ``all``: every note in onset order (lowest first within a frame).

Key, rhythm, tempo and dynamics are left out, so a score and a performance of one piece, or
a re-voiced, transposed copy, still share most of their top line or bass. (On the full corpus,
97 % of ASAP performances overlap the score of their own piece by the threshold or more.)

The **overlap** of two pieces is, on the line where they share most, the Ochiai coefficient
``|A ∩ B| / sqrt(|A| · |B|)`` of their pattern sets, counted only when they share at least
:data:`MIN_SHARED` patterns (two tiny pieces sharing a handful of scale steps are not one
piece). It depends on the two pieces alone, never on the rest of the corpus.

:data:`THRESHOLD` was set on the full ASAP + score corpus (3,334 files, 206 h): between
pieces of different groups (works, links, hashes already joined) the 99.99th percentile of
the overlap is 0.112 (5.5 M pairs); every recurrence an audit found by hand lies at 0.215 or
above (Kurpiński's *Andantino* vs Stefani's *Adagio-Cracovienne*, the weakest). The threshold
is 0.2: that percentile plus a margin of 0.09 (1.8 times it). ``harmonixr info`` reports a
cache's own percentile beside it, so another corpus shows whether the margin holds there.
The threshold is a constant, not re-estimated per corpus, so that a join never depends on
which other files a cache holds (``data.groups`` states the property this gives).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

PATTERN_NOTES = 6  # notes per pattern (five intervals)
LINES = ("top", "bass", "all")
CHORD_GAP_S = 0.1  # an onset this long after the previous one starts a new event
MIN_SHARED = 10  # patterns two pieces must share before their overlap counts
THRESHOLD = 0.2  # overlap from which two pieces are one unit (see the module's docstring)
RULE = "melody-v1"  # names the whole recipe above; stored with every scan
BINS = 10_000  # the overlap distribution is kept as a histogram of this many bins on [0, 1]


@dataclass(frozen=True)
class Fingerprint:
    """A piece's interval patterns, one sorted array of codes per line (:data:`LINES`)."""

    lines: tuple[np.ndarray, ...]

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(int(x.size) for x in self.lines)


def onsets(tensor: np.ndarray, low_note: int) -> tuple[np.ndarray, np.ndarray]:
    """``(frames, pitches)`` of the notes starting in a ``(T, 12, O)`` tensor, ordered by frame
    then pitch: a cell that rises above its value in the frame before (a note struck again
    while it still sounds louder than the new stroke is not seen)."""
    t = np.asarray(tensor)
    n_frames, n_oct = len(t), t.shape[2]
    flat = t.reshape(n_frames, -1)
    rise = np.empty(flat.shape, bool)
    if n_frames:
        rise[0] = flat[0] > 0
        np.greater(flat[1:], flat[:-1], out=rise[1:])
    frame, cell = np.nonzero(rise)
    pc, octave = np.divmod(cell, n_oct)
    pitch = low_note + pc + 12 * octave
    order = np.lexsort((pitch, frame))
    return frame[order].astype(np.int64), pitch[order].astype(np.int64)


def melodic_lines(
    frames: np.ndarray, pitches: np.ndarray, gap_frames: int = 2
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The top line, the bass and all notes of onsets ordered by frame then pitch; an onset
    starts a new event when at least ``gap_frames`` after the previous onset."""
    if frames.size == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty
    new = np.empty(frames.size, bool)
    new[0] = True
    new[1:] = np.diff(frames) >= gap_frames
    starts = np.flatnonzero(new)
    return np.maximum.reduceat(pitches, starts), np.minimum.reduceat(pitches, starts), pitches


def patterns(line: np.ndarray) -> np.ndarray:
    """The sorted distinct codes of every :data:`PATTERN_NOTES`-note run of ``line``: its
    intervals, each offset by 128 into one byte, packed into one integer."""
    if line.size < PATTERN_NOTES:
        return np.zeros(0, np.int64)
    steps = np.diff(np.asarray(line, np.int64)) + 128
    runs = np.lib.stride_tricks.sliding_window_view(steps, PATTERN_NOTES - 1)
    codes = np.zeros(len(runs), np.int64)
    for k in range(PATTERN_NOTES - 1):
        codes |= runs[:, k] << (8 * k)
    return np.unique(codes)


def fingerprint(tensor: np.ndarray, low_note: int, frame_ms: float) -> Fingerprint:
    """The interval patterns of a tensor's three lines."""
    gap = max(1, round(CHORD_GAP_S * 1000.0 / frame_ms))
    frames, pitches = onsets(tensor, low_note)
    return Fingerprint(tuple(patterns(x) for x in melodic_lines(frames, pitches, gap)))


def overlap(a: Fingerprint, b: Fingerprint) -> tuple[float, str]:
    """The overlap of two pieces and the line it was found on (see the module docstring)."""
    best, where = 0.0, LINES[0]
    for name, x, y in zip(LINES, a.lines, b.lines, strict=True):
        shared = np.intersect1d(x, y, assume_unique=True).size
        if shared >= MIN_SHARED:
            value = shared / float(np.sqrt(x.size * y.size))
            if value > best:
                best, where = value, name
    return best, where


@dataclass
class Scan:
    """Every pair of pieces whose overlap reaches a threshold, and the distribution of the
    overlap between pieces of different units."""

    pairs: list[tuple[int, int, float, str]]  # (i, j, overlap, line), i < j
    histogram: np.ndarray = field(repr=False)  # BINS + 1 counts, between different units
    seconds: float = 0.0

    @property
    def compared(self) -> int:
        return int(self.histogram.sum())

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile of the overlap between different units (to 1/BINS)."""
        total = self.compared
        if total == 0:
            return 0.0
        k = int(np.searchsorted(np.cumsum(self.histogram), q / 100.0 * total, side="left"))
        return min(k, BINS) / BINS


def _matrix(codes: Sequence[np.ndarray]) -> sp.csr_matrix:
    """Pieces × patterns, one where a piece holds a pattern."""
    sizes = np.array([c.size for c in codes], np.int64)
    allc = np.concatenate([*codes, np.zeros(0, np.int64)])
    vocab, column = np.unique(allc, return_inverse=True)
    indptr = np.concatenate(([0], np.cumsum(sizes)))
    data = np.ones(allc.size, np.float32)
    return sp.csr_matrix((data, column.ravel(), indptr), shape=(len(codes), max(1, vocab.size)))


def scan(
    fingerprints: Sequence[Fingerprint],
    units: Sequence[str],
    threshold: float = THRESHOLD,
    block: int = 256,
) -> Scan:
    """Every pair of ``fingerprints`` at ``threshold`` or above, found with one sparse product
    per line (pieces × patterns), a block of pieces at a time; ``units`` (one per piece) say
    which pairs count in the distribution between different units."""
    t0 = time.perf_counter()
    n = len(fingerprints)
    unit_id = np.unique(np.asarray(units, dtype=object), return_inverse=True)[1].ravel()
    mats = [_matrix([f.lines[k] for f in fingerprints]) for k in range(len(LINES))]
    sizes = [np.array([f.sizes[k] for f in fingerprints], np.float64) for k in range(len(LINES))]
    transposed = [m.T.tocsc() for m in mats]
    histogram = np.zeros(BINS + 1, np.int64)
    pairs: list[tuple[int, int, float, str]] = []
    for s in range(0, n, block):
        e = min(n, s + block)
        best = np.zeros((e - s, n), np.float64)
        line = np.zeros((e - s, n), np.int8)
        for k, (m, mt, size) in enumerate(zip(mats, transposed, sizes, strict=True)):
            shared = (m[s:e] @ mt).toarray()
            denom = np.sqrt(np.outer(size[s:e], size))
            value = np.where(shared >= MIN_SHARED, shared / np.maximum(denom, 1.0), 0.0)
            better = value > best
            best[better], line[better] = value[better], k
        upper = np.arange(n)[None, :] > np.arange(s, e)[:, None]
        between = upper & (unit_id[s:e, None] != unit_id[None, :])
        bins = np.minimum((best[between] * BINS).astype(np.int64), BINS)
        histogram += np.bincount(bins, minlength=BINS + 1)
        for i, j in zip(*np.nonzero(upper & (best >= threshold)), strict=True):
            pairs.append((s + int(i), int(j), float(best[i, j]), LINES[line[i, j]]))
    return Scan(pairs, histogram, time.perf_counter() - t0)
