"""Whole pieces played otherwise: the ways of playing that a score rendition lacks and a
performance (an older one above all) has, applied to a piece's ``uint8 (T, 12, 6)`` tensor so
that the second stage can teach its statistics branch to look past them
(``HeadConfig.performed``).

The crop augmentations of the first stage (``train/augment.py``) change loudness and nudge
keys in time; these change what the statistics read: when notes start, how long they sound,
how many start together and where the bass lies. Each works on *notes* read back from the
tensor: a note starts where its key's value rises above the frame before (the statistics'
rule, ``model.stats.onsets``) and lasts until the key falls silent or starts again.

- :func:`tempo`: the whole piece faster or slower (a factor, e.g. 0.7–1.3);
- :func:`rubato`: tempo that drifts and breathes: a smooth random speed curve;
- :func:`roll_chords`: chords of three or more keys spread upwards, a few frames a key;
- :func:`bass_octaves`: the lowest note of an onset doubled an octave below, as pianists of
  an older school often did;
- :func:`pedal`: notes sustained (their values decaying slowly) until the pedal changes;
- :func:`dry`: every note cut short (its trace kept for a fraction of its length).

:func:`perform` draws a random combination. Keys outside the tensor's range are left alone
(a bass note on the lowest octave is not doubled)."""

from __future__ import annotations

import numpy as np

from harmonixr.model.stats import N_OCT, N_PC, key_cells, onsets

MAX_NOTE_FRAMES = 400  # a trace is followed at most this long (20 s)


def _keys(tensor: np.ndarray) -> np.ndarray:
    """``(T, 72)`` int32 values, key k = octave·12 + pitch class: ascending pitch."""
    return key_cells(tensor).astype(np.int32)


def _tensor(keys: np.ndarray) -> np.ndarray:
    k = np.clip(keys, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(k.reshape(len(k), N_OCT, N_PC).transpose(0, 2, 1))


def _end(column: np.ndarray, rise: np.ndarray, start: int) -> int:
    """Where the note starting at ``start`` stops: the key's next silent frame or next start."""
    stop = min(len(column), start + MAX_NOTE_FRAMES)
    for f in range(start + 1, stop):
        if column[f] == 0 or rise[f]:
            return f
    return stop


def tempo(tensor: np.ndarray, factor: float) -> np.ndarray:
    """The piece ``factor`` times as fast (frames resampled, nearest earlier frame)."""
    if factor <= 0:
        raise ValueError(f"tempo factor must be positive, got {factor}")
    t = np.asarray(tensor)
    n = max(1, round(len(t) / factor))
    src = np.minimum((np.arange(n) * factor).astype(np.int64), len(t) - 1)
    return np.ascontiguousarray(t[src])


def rubato(
    tensor: np.ndarray, rng: np.random.Generator, depth: float = 0.25, every: int = 60
) -> np.ndarray:
    """Speed that drifts: log-speed interpolated between random knots ``every`` frames apart,
    each N(0, depth²); a frame of the piece lasts 1/speed frames."""
    t = np.asarray(tensor)
    if len(t) < 2:
        return t.copy()
    knots = np.arange(0, len(t) + every, every)
    log_speed = np.interp(np.arange(len(t)), knots, rng.normal(0.0, depth, len(knots)))
    ends = np.cumsum(np.exp(-log_speed))  # where each old frame ends on the new clock
    n = max(1, int(np.floor(ends[-1])))
    src = np.minimum(np.searchsorted(ends, np.arange(n) + 0.5), len(t) - 1)
    return np.ascontiguousarray(t[src])


def roll_chords(tensor: np.ndarray, step: int = 1, min_keys: int = 3) -> np.ndarray:
    """Each onset of ``min_keys`` or more keys rolled upwards: its k-th key from the bottom
    starts ``k·step`` frames late (silent until then), its trace moved whole."""
    keys = _keys(tensor)
    rise = onsets(tensor)
    out = keys.copy()
    for f in np.flatnonzero(rise.sum(1) >= min_keys):
        for k, key in enumerate(np.flatnonzero(rise[f])[1:], start=1):
            d = k * step
            end = _end(keys[:, key], rise[:, key], f)
            length = min(end, len(keys) - d) - f
            out[f:end, key] = 0
            if length > 0:
                out[f + d : f + d + length, key] = keys[f : f + length, key]
    return _tensor(out)


def bass_octaves(tensor: np.ndarray, rng: np.random.Generator, p: float = 0.5) -> np.ndarray:
    """The lowest key starting in a frame doubled an octave below (its trace copied), with
    probability ``p`` per onset; keys in the lowest octave stay single."""
    keys = _keys(tensor)
    rise = onsets(tensor)
    out = keys.copy()
    for f in np.flatnonzero(rise.any(1)):
        low = int(np.flatnonzero(rise[f])[0])
        if low < N_PC or rng.random() >= p:
            continue
        end = _end(keys[:, low], rise[:, low], f)
        np.maximum(out[f:end, low - N_PC], keys[f:end, low], out=out[f:end, low - N_PC])
    return _tensor(out)


def pedal(
    tensor: np.ndarray, rng: np.random.Generator, keep: float = 0.97, change: tuple = (20, 60)
) -> np.ndarray:
    """The sustain pedal held between changes every ``change`` frames (drawn uniformly, 1–3
    s): within one pedal, a note that stops keeps sounding, its value ``keep`` times the frame
    before, until its key starts again or the pedal changes."""
    keys = _keys(tensor)
    rise = onsets(tensor)
    out = keys.copy()
    cut = np.zeros(len(out), bool)
    f = 0
    while f < len(out):
        cut[f] = True
        f += int(rng.integers(change[0], change[1] + 1))
    for f in range(1, len(out)):
        if cut[f]:
            continue
        held = np.where(rise[f], 0, (out[f - 1] * keep).astype(np.int32))
        np.maximum(out[f], held, out=out[f])
    return _tensor(out)


def dry(tensor: np.ndarray, fraction: float = 0.5) -> np.ndarray:
    """Every note cut to ``fraction`` of its trace (at least one frame): no pedal, detached."""
    keys = _keys(tensor)
    rise = onsets(tensor)
    out = keys.copy()
    for f, key in zip(*np.nonzero(rise), strict=True):
        end = _end(keys[:, key], rise[:, key], int(f))
        cut = int(f) + max(1, int(round((end - f) * fraction)))
        out[cut:end, key] = 0
    return _tensor(out)


def perform(tensor: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random way of playing the piece: each of tempo (0.7–1.3), rubato, rolled chords,
    bass octaves and pedal-or-dry applied with probability one half, in that order."""
    t = np.asarray(tensor)
    if rng.random() < 0.5:
        t = tempo(t, float(rng.uniform(0.7, 1.3)))
    if rng.random() < 0.5:
        t = rubato(t, rng, depth=float(rng.uniform(0.1, 0.35)))
    if rng.random() < 0.5:
        t = roll_chords(t, step=int(rng.integers(1, 3)))
    if rng.random() < 0.5:
        t = bass_octaves(t, rng, p=float(rng.uniform(0.3, 0.9)))
    if rng.random() < 0.5:
        t = pedal(t, rng) if rng.random() < 0.5 else dry(t, float(rng.uniform(0.3, 0.7)))
    return np.ascontiguousarray(t)
