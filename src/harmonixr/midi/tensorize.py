"""MIDI → the 12 × 6 × T tensor of docs/architecture.md, vectorised over symusic's note arrays."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

N_PITCH_CLASSES = 12


@dataclass(frozen=True)
class TensorConfig:
    """How a MIDI file becomes a tensor. Its :meth:`key` names the cache's tensors."""

    frame_ms: float = 50.0
    low_note: int = 29  # F1
    high_note: int = 100  # E7
    decay: bool = True
    tau_s: float = 2.5
    octave_decay: tuple[float, ...] = (0.7, 1.0, 1.5, 2.0, 3.0, 4.0)
    pedal: bool = True
    binary: bool = False

    def __post_init__(self) -> None:
        span = self.high_note - self.low_note + 1
        if not 0 <= self.low_note <= self.high_note <= 127:
            raise ValueError(f"note range {self.low_note}..{self.high_note} is not within 0..127")
        if span % N_PITCH_CLASSES:
            raise ValueError(f"note range must span whole octaves, got {span} notes")
        if len(self.octave_decay) != self.n_octaves:
            raise ValueError(
                f"octave_decay has {len(self.octave_decay)} entries for {self.n_octaves} octaves"
            )
        if self.frame_ms <= 0 or self.tau_s <= 0 or min(self.octave_decay) <= 0:
            raise ValueError("frame_ms, tau_s and octave_decay must be positive")
        object.__setattr__(self, "octave_decay", tuple(float(m) for m in self.octave_decay))

    @property
    def n_octaves(self) -> int:
        return (self.high_note - self.low_note + 1) // N_PITCH_CLASSES

    @property
    def frames_per_second(self) -> float:
        return 1000.0 / self.frame_ms

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["octave_decay"] = list(self.octave_decay)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TensorConfig:
        d = dict(d)
        if "octave_decay" in d:
            d["octave_decay"] = tuple(d["octave_decay"])
        return cls(**d)

    def key(self) -> str:
        """A short stable hash of every setting."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Tensorized:
    """A tensor with the counts a caller needs."""

    tensor: np.ndarray = field(repr=False)  # uint8 (T, 12, n_octaves)
    notes: int  # pitched (non-drum) notes seen
    dropped_notes: int  # of those, outside low_note..high_note
    duration_s: float  # T · frame length

    @property
    def n_frames(self) -> int:
        return int(self.tensor.shape[0])


# A hair of tolerance so that an onset stored as 0.1499999 s (float32) lands in frame 3.
_EPS = 1e-6


def frame_bounds(on_s: np.ndarray, off_s: np.ndarray, fps: float) -> tuple[np.ndarray, np.ndarray]:
    """First frame and (exclusive) end frame of notes given in seconds."""
    f_on = np.floor(np.asarray(on_s, np.float64) * fps + _EPS).astype(np.int64)
    f_on = np.maximum(f_on, 0)
    f_end = np.ceil(np.asarray(off_s, np.float64) * fps - _EPS).astype(np.int64)
    return f_on, np.maximum(f_on + 1, f_end)


def _pedal_intervals(times: np.ndarray, values: np.ndarray, end: float) -> np.ndarray:
    """(k, 2) array of [down, up) seconds from CC64 events (down when value ≥ 64).

    Events at the same time keep their given order (the last one decides the state)."""
    if times.size == 0:
        return np.zeros((0, 2))
    order = np.argsort(times, kind="stable")
    t = times[order].astype(np.float64)
    down = values[order].astype(np.int64) >= 64
    prev = np.concatenate(([False], down[:-1]))
    starts = t[down & ~prev]
    ups = t[~down & prev]
    if ups.size < starts.size:  # still held at the end of the file
        ups = np.concatenate((ups, [max(end, float(starts[-1]))]))
    return np.stack((starts, ups), axis=1)


def next_strike(on: np.ndarray, pitch: np.ndarray) -> np.ndarray:
    """For each note, the first onset of the same pitch strictly after its own onset (inf if
    none). A note struck twice at the same instant is not its own next strike."""
    n = on.size
    nxt = np.full(n, np.inf)
    if n == 0:
        return nxt
    order = np.lexsort((on, pitch))
    p_s, on_s = pitch[order], on[order]
    # runs of equal (pitch, onset); each element's candidate is the start of the next run
    new_run = np.concatenate(([True], (p_s[1:] != p_s[:-1]) | (on_s[1:] != on_s[:-1])))
    run_starts = np.flatnonzero(new_run)
    k = np.searchsorted(run_starts, np.arange(n), side="right")
    has_next = k < run_starts.size
    j = run_starts[np.minimum(k, run_starts.size - 1)]
    same_key = has_next & (p_s[j] == p_s)
    nxt_sorted = np.where(same_key, on_s[j], np.inf)
    nxt[order] = nxt_sorted
    return nxt


def apply_pedal(
    on: np.ndarray, off: np.ndarray, pitch: np.ndarray, pedals: np.ndarray
) -> np.ndarray:
    """Note ends under the sustain pedal: a note whose key is released while the pedal is down
    sounds on until the pedal comes up or its key is struck again, whichever is first."""
    if pedals.size == 0 or on.size == 0:
        return off
    # pedal interval containing each note's end, if any
    k = np.searchsorted(pedals[:, 0], off, side="right") - 1
    k_safe = np.maximum(k, 0)
    held = (k >= 0) & (off < pedals[k_safe, 1]) & (off >= pedals[k_safe, 0])
    release = np.where(held, pedals[k_safe, 1], off)
    nxt = next_strike(on, pitch)
    return np.where(held, np.maximum(off, np.minimum(release, nxt)), off)


class TooDense(ValueError):
    """The notes would cost more work than :data:`MAX_NOTE_FRAMES_PER_FRAME` allows."""

    def __init__(self, note_frames: int, n_frames: int, limit: int) -> None:
        self.note_frames, self.n_frames, self.limit = note_frames, n_frames, limit
        msg = (
            f"{note_frames} note-frames over {n_frames} frames "
            f"(more than {limit} sounding notes per frame on average)"
        )
        super().__init__(msg)


# The work of tensorizing is one step per note and frame it sounds in. Real music, even an
# orchestra of doubled parts under the pedal, keeps well under 72 sounding notes per frame on
# average; a tiny file of thousands of hours-long notes does not, and is refused before any
# work is done.
MAX_NOTE_FRAMES_PER_FRAME = 256
MIN_NOTE_FRAMES_LIMIT = 1 << 22  # short files are never refused
# note-frames expanded at once: bounds the temporaries (~49 bytes each) to ~25 MB
CHUNK_NOTE_FRAMES = 1 << 19


def _chunks(lengths: np.ndarray, size: int) -> list[tuple[int, int]]:
    """Consecutive note ranges [a, b) of about ``size`` note-frames each (at least one note)."""
    ends = np.cumsum(lengths)
    total = int(ends[-1])
    cuts = np.searchsorted(ends, np.arange(size, total, size), side="left") + 1
    bounds = np.unique(np.concatenate(([0], cuts, [lengths.size])))
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def tensorize_notes(
    on_s: np.ndarray,
    off_s: np.ndarray,
    pitch: np.ndarray,
    velocity: np.ndarray,
    config: TensorConfig,
    max_per_frame: int = MAX_NOTE_FRAMES_PER_FRAME,
) -> np.ndarray:
    """Cells from note arrays already in seconds (pedal applied). Returns uint8 (T, 12, O).

    Memory is the output (T·12·O bytes) plus the note arrays plus a fixed-size chunk, whatever
    the notes' lengths; :class:`TooDense` is raised, before any frame is expanded, when the
    notes sound in more than ``max_per_frame`` cells per frame on average."""
    pitch = np.asarray(pitch, np.int64)
    velocity = np.clip(np.asarray(velocity, np.int64), 1, 127)
    keep = (pitch >= config.low_note) & (pitch <= config.high_note)
    pitch, velocity = pitch[keep], velocity[keep]
    n_oct = config.n_octaves
    if pitch.size == 0:
        return np.zeros((0, N_PITCH_CLASSES, n_oct), np.uint8)
    f_on, f_end = frame_bounds(
        np.asarray(on_s)[keep], np.asarray(off_s)[keep], config.frames_per_second
    )
    n_frames = int(f_end.max())
    lengths = f_end - f_on
    total = int(lengths.sum())
    limit = max(MIN_NOTE_FRAMES_LIMIT, max_per_frame * n_frames)
    if total > limit:
        raise TooDense(total, n_frames, max_per_frame)
    k = pitch - config.low_note
    octave = k // N_PITCH_CLASSES
    cell = (k % N_PITCH_CLASSES) * n_oct + octave  # index into the flattened (12, O) plane
    tau = config.tau_s / np.asarray(config.octave_decay)  # per octave
    dt = config.frame_ms / 1000.0
    width = N_PITCH_CLASSES * n_oct
    flat = np.zeros(n_frames * width, np.uint8)
    for a, b in _chunks(lengths, CHUNK_NOTE_FRAMES):
        n_len = lengths[a:b]
        note_idx = np.repeat(np.arange(a, b), n_len)
        starts = np.cumsum(n_len) - n_len
        step = np.arange(note_idx.size, dtype=np.int64) - np.repeat(starts, n_len)  # f − f_on
        if config.binary:
            values = np.ones(note_idx.size, np.uint8)
        elif config.decay:
            decay = np.exp(-(step * dt) / tau[octave[note_idx]])
            values = np.maximum(1, np.rint(velocity[note_idx] * decay)).astype(np.uint8)
        else:
            values = velocity[note_idx].astype(np.uint8)
        np.maximum.at(flat, (f_on[note_idx] + step) * width + cell[note_idx], values)
    return flat.reshape(n_frames, N_PITCH_CLASSES, n_oct)


def tensorize_score(score: Any, config: TensorConfig = TensorConfig()) -> Tensorized:
    """Tensorize a ``symusic.Score`` (any time unit; converted to seconds).

    All non-drum tracks are merged, and so is their sustain pedal: a piano has one pedal for
    both hands, whichever track of the file carries its events."""
    if str(score.ttype).lower() != "second":
        score = score.to("second")
    ons, offs, pitches, vels, pedal_t, pedal_v = [], [], [], [], [], []
    for track in score.tracks:
        if track.is_drum:
            continue
        if track.note_num():
            arr = track.notes.numpy()
            on = arr["time"].astype(np.float64)
            ons.append(on)
            offs.append(on + np.maximum(arr["duration"].astype(np.float64), 0.0))
            pitches.append(arr["pitch"].astype(np.int64))  # int8 in symusic 0.6: widen first
            vels.append(arr["velocity"].astype(np.int64))
        if config.pedal and len(track.controls):
            ctl = track.controls.numpy()
            sel = ctl["number"].astype(np.int64) == 64
            pedal_t.append(ctl["time"][sel].astype(np.float64))
            pedal_v.append(ctl["value"][sel].astype(np.int64))
    if not ons:
        tensor = np.zeros((0, N_PITCH_CLASSES, config.n_octaves), np.uint8)
        return Tensorized(tensor, 0, 0, 0.0)
    on, off = np.concatenate(ons), np.concatenate(offs)
    pitch, vel = np.concatenate(pitches), np.concatenate(vels)
    if pedal_t:
        times, values = np.concatenate(pedal_t), np.concatenate(pedal_v)
        # a pedal still held at the end is released when the last note or pedal event is over
        end = max(float(off.max()), float(times.max(initial=0.0)))
        off = apply_pedal(on, off, pitch, _pedal_intervals(times, values, end))
    dropped = int(((pitch < config.low_note) | (pitch > config.high_note)).sum())
    tensor = tensorize_notes(on, off, pitch, vel, config)
    duration = tensor.shape[0] * config.frame_ms / 1000.0
    return Tensorized(tensor, int(on.size), dropped, duration)


def onset_frames(tensor: np.ndarray) -> np.ndarray:
    """(T,) whether a note starts in each frame: some cell rises above the frame before (the
    first frame counts when anything sounds in it)."""
    t = np.asarray(tensor).reshape(len(tensor), -1).astype(np.int16)
    if len(t) == 0:
        return np.zeros(0, bool)
    rises = np.zeros(len(t), bool)
    rises[0] = bool(t[0].any())
    rises[1:] = (t[1:] > t[:-1]).any(axis=1)
    return rises


def condense(tensor: np.ndarray, max_quiet_frames: int) -> np.ndarray:
    """``tensor`` with every stretch in which no note starts (a held note, a silence) cut to
    its first ``max_quiet_frames`` frames: what a stretch adds stops growing with its length,
    so a file cannot make the model work in proportion to a length it does not fill."""
    if max_quiet_frames < 1:
        raise ValueError(f"max_quiet_frames must be at least 1, got {max_quiet_frames}")
    onsets = onset_frames(tensor)
    if len(onsets) == 0:
        return tensor
    # frames since the last onset (the first frame counts as one when nothing starts there)
    idx = np.arange(len(onsets))
    last = np.maximum.accumulate(np.where(onsets, idx, -1))
    since = idx - last
    keep = since < max_quiet_frames + (last < 0)
    return tensor if keep.all() else tensor[keep]
