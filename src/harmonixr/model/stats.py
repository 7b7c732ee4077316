"""Whole-piece statistics: the second input of SiaViT (docs/design.md, "The statistics branch").

Everything is read off the ``uint8 (T, 12, 6)`` tensor, so a file, a score, an upload, a cached
piece and a timeline window all get the same numbers without the notes. A *cell* is a key
(pitch class × octave, notes F1–E7); it *sounds* in a frame when its value is above zero, and a
note *starts* in a frame when its cell rises above the frame before (a new key, or a key struck
again: the tensor's values only decay while a note is held). A key struck again no louder than
it still sounds, in the very next frame (repeated 50 ms notes), reads as one long note. The
numbers assume the default tensors (50 ms frames from F1, decaying values); the second stage
refuses others.

The vector (:data:`STATS_DIM` numbers, :func:`describe` names its parts) holds, per piece:

- pitch classes weighted by how long they sound, absolute and rotated to an estimated key
  (Krumhansl–Kessler profiles, major or minor), the key's mode and its profile's correlation;
- the register: how long each of the 72 keys sounds, and the mean and spread of the notes
  started;
- note starts per second of sounding music (log(1 + rate)) and the share of sounding frames
  with a start;
- polyphony (keys sounding per frame) and chord size (keys starting together);
- melodic intervals (−12…+12 semitones) of the top line and of the bass, the notes that start
  highest and lowest in each frame with a start, and their mean size;
- key-relative pitch-class transitions of the top line (12 × 12);
- the interval classes (1–6) between keys sounding together;
- inter-onset intervals relative to the local beat (the median of the neighbouring ones), on a
  log₂ scale, and the typical inter-onset interval.

Histograms are proportions under a square root (a Hellinger embedding), so that a common and a
rare event differ by comparable amounts. No velocity enters: a notation program writes one
velocity, and the statistics must not tell a score from a performance by it.
"""

from __future__ import annotations

import numpy as np

N_PC, N_OCT = 12, 6
N_KEYS = N_PC * N_OCT
LOW_NOTE = 29  # F1: pitch-class index 0 of the tensor is F
FRAME_S = 0.05

# Krumhansl & Kessler (1982) key profiles, tonic first
_MAJOR = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
_MINOR = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])

_POLY_BINS = 11  # 0..9 keys sounding, 10 or more
_CHORD_BINS = 8  # 1..7 keys starting together, 8 or more
_INTERVAL_BINS = 25  # −12..+12 semitones (clipped)
_IOI_EDGES = np.arange(-3.25, 3.26, 0.5)  # log2 ratio bins, 13 of them
_LOCAL = 8  # onsets either side that make the local beat

PARTS: tuple[tuple[str, int], ...] = (
    ("pitch_classes", N_PC),
    ("pitch_classes_in_key", N_PC),
    ("mode", 2),
    ("key_clarity", 1),
    ("register", N_KEYS),
    ("onset_register", 2),
    ("onset_density", 2),
    ("polyphony", _POLY_BINS),
    ("chord_size", _CHORD_BINS),
    ("top_intervals", _INTERVAL_BINS),
    ("bass_intervals", _INTERVAL_BINS),
    ("interval_size", 2),
    ("top_transitions", N_PC * N_PC),
    ("interval_classes", 6),
    ("ioi_ratios", len(_IOI_EDGES) - 1),
    ("ioi_typical", 1),
)
STATS_DIM = sum(n for _, n in PARTS)
# what a vector's numbers mean changes with this; models record it beside their weights
STATS_VERSION = 1


def describe() -> list[tuple[str, slice]]:
    """(name, slice of the vector) of each part, in order."""
    out, at = [], 0
    for name, n in PARTS:
        out.append((name, slice(at, at + n)))
        at += n
    return out


def _hist(values: np.ndarray, n: int) -> np.ndarray:
    """Square-rooted proportions of the integers ``values`` in 0..n−1 (zeros when empty)."""
    counts = np.bincount(values, minlength=n)[:n].astype(np.float64)
    total = counts.sum()
    return np.sqrt(counts / total) if total > 0 else counts


def _proportions(weights: np.ndarray) -> np.ndarray:
    total = float(weights.sum())
    return np.sqrt(weights / total) if total > 0 else np.zeros_like(weights, np.float64)


def estimate_key(pc_weights: np.ndarray) -> tuple[int, int, float]:
    """(tonic 0..11 as absolute pitch class with C = 0, mode 0 major / 1 minor, correlation) of
    the best-correlating rotated Krumhansl–Kessler profile; (0, 0, 0.0) for silence."""
    w = np.asarray(pc_weights, np.float64)
    if w.sum() <= 0 or w.std() == 0:
        return 0, 0, 0.0
    best = (0, 0, -2.0)
    for mode, profile in enumerate((_MAJOR, _MINOR)):
        for tonic in range(N_PC):
            r = float(np.corrcoef(w, np.roll(profile, tonic))[0, 1])
            if r > best[2]:
                best = (tonic, mode, r)
    return best


def key_cells(tensor: np.ndarray) -> np.ndarray:
    """``(T, 72)`` int16 values per key, k = octave · 12 + pitch-class index (the note
    ``LOW_NOTE + k``)."""
    t = np.asarray(tensor)
    return np.ascontiguousarray(t.transpose(0, 2, 1)).reshape(len(t), N_KEYS).astype(np.int16)


def onsets(tensor: np.ndarray) -> np.ndarray:
    """``(T, 72)`` whether a note starts in each key and frame: its cell rises above the frame
    before (the first frame: above zero)."""
    cells = key_cells(tensor)
    rise = np.empty(cells.shape, bool)
    if len(cells):
        rise[0] = cells[0] > 0
        rise[1:] = cells[1:] > cells[:-1]
    return rise


def _line_intervals(keys: np.ndarray) -> tuple[np.ndarray, float]:
    """Histogram of successive intervals of a line of key numbers, and the mean size."""
    if keys.size < 2:
        return np.zeros(_INTERVAL_BINS), 0.0
    d = np.diff(keys)
    hist = _hist(np.clip(d, -12, 12) + 12, _INTERVAL_BINS)
    return hist, float(np.mean(np.minimum(np.abs(d), 24))) / 12.0


def _ioi_features(onset_times: np.ndarray) -> tuple[np.ndarray, float]:
    """log₂(IOI / local median IOI) histogram and log₂ of the median IOI in seconds (0 when
    there are too few onsets)."""
    n_bins = len(_IOI_EDGES) - 1
    if onset_times.size < 3:
        return np.zeros(n_bins), 0.0
    ioi = np.diff(onset_times).astype(np.float64) * FRAME_S
    n = ioi.size
    pad = np.pad(ioi, _LOCAL, mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(pad, 2 * _LOCAL + 1)[:n]
    local = np.median(windows, axis=1)
    ratio = np.log2(ioi / local)
    idx = np.clip(np.digitize(ratio, _IOI_EDGES) - 1, 0, n_bins - 1)
    return _hist(idx, n_bins), float(np.log2(np.median(ioi)))


def piece_stats(tensor: np.ndarray) -> np.ndarray:
    """The statistics vector (``float32 (STATS_DIM,)``) of a ``(T, 12, 6)`` tensor; zeros for an
    empty one."""
    t = np.asarray(tensor)
    if t.ndim != 3 or t.shape[1:] != (N_PC, N_OCT):
        raise ValueError(f"expected a (T, 12, 6) tensor, got shape {t.shape}")
    out = np.zeros(STATS_DIM, np.float64)
    if t.shape[0] == 0:
        return out.astype(np.float32)
    # key index k = octave · 12 + pitch-class index, i.e. the note LOW_NOTE + k
    cells = key_cells(t)
    sounding = cells > 0
    starts = onsets(t)
    parts: dict[str, np.ndarray] = {}

    key_time = sounding.sum(axis=0).astype(np.float64)  # frames each key sounds
    pc_rel_f = key_time.reshape(N_OCT, N_PC).sum(axis=0)  # by tensor index (0 = F)
    pc_abs = np.roll(pc_rel_f, (LOW_NOTE % N_PC))  # index 0 = C
    tonic, mode, clarity = estimate_key(pc_abs)
    parts["pitch_classes"] = _proportions(pc_abs)
    parts["pitch_classes_in_key"] = _proportions(np.roll(pc_abs, -tonic))
    parts["mode"] = np.eye(2)[mode]
    parts["key_clarity"] = np.array([clarity])
    parts["register"] = _proportions(key_time)

    frame_idx, key_idx = np.nonzero(starts)  # row-major: by frame, then key
    if key_idx.size:
        parts["onset_register"] = np.array([key_idx.mean() / N_KEYS, key_idx.std() / N_KEYS])
    sounding_frames = int(sounding.any(axis=1).sum())
    onset_any = starts.any(axis=1)
    n_onset_frames = int(onset_any.sum())
    seconds = max(sounding_frames, 1) * FRAME_S
    parts["onset_density"] = np.array(
        [np.log1p(key_idx.size / seconds), n_onset_frames / max(sounding_frames, 1)]
    )
    poly = sounding.sum(axis=1)
    parts["polyphony"] = _hist(np.minimum(poly[poly > 0], _POLY_BINS - 1), _POLY_BINS)
    per_frame = starts.sum(axis=1)
    chord = per_frame[per_frame > 0]
    parts["chord_size"] = _hist(np.minimum(chord, _CHORD_BINS) - 1, _CHORD_BINS)

    if key_idx.size:
        first = np.r_[True, frame_idx[1:] != frame_idx[:-1]]
        last = np.r_[frame_idx[1:] != frame_idx[:-1], True]
        bass, top = key_idx[first], key_idx[last]
        parts["top_intervals"], top_size = _line_intervals(top)
        parts["bass_intervals"], bass_size = _line_intervals(bass)
        parts["interval_size"] = np.array([top_size, bass_size])
        pcs = (top + LOW_NOTE - tonic) % N_PC  # key-relative pitch classes of the top line
        if pcs.size > 1:
            parts["top_transitions"] = _hist(pcs[:-1] * N_PC + pcs[1:], N_PC * N_PC)
        onset_times = np.flatnonzero(onset_any)
        parts["ioi_ratios"], typical = _ioi_features(onset_times)
        parts["ioi_typical"] = np.array([typical])

    # interval classes between keys sounding together: for each frame the pitch-class counts c,
    # and Σ_p c[p]·c[p + d] counts the pairs d semitones apart (mod 12)
    counts = sounding.reshape(len(t), N_OCT, N_PC).sum(axis=1).astype(np.float64)
    ic = np.array([(counts * np.roll(counts, -d, axis=1)).sum() for d in range(1, 7)])
    ic[5] /= 2.0  # the tritone pairs every pair twice (d = 6 and d = −6 are one class)
    parts["interval_classes"] = _proportions(ic)

    for name, sl in describe():
        if name in parts:
            out[sl] = parts[name]
    return out.astype(np.float32)
