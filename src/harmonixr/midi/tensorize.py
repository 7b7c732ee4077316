"""MIDI → the 12 × 6 × T tensor of DESIGN §2, vectorised over symusic's note arrays."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from os import PathLike
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
    """(k, 2) array of [down, up) seconds from CC64 events (down when value ≥ 64)."""
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


def _apply_pedal(
    on: np.ndarray, off: np.ndarray, pitch: np.ndarray, pedals: np.ndarray
) -> np.ndarray:
    """Extend note ends under a held sustain pedal to the release or the key's next strike."""
    if pedals.size == 0 or on.size == 0:
        return off
    # pedal interval containing each note's end, if any
    k = np.searchsorted(pedals[:, 0], off, side="right") - 1
    k_safe = np.maximum(k, 0)
    held = (k >= 0) & (off < pedals[k_safe, 1]) & (off >= pedals[k_safe, 0])
    release = np.where(held, pedals[k_safe, 1], off)
    # next onset of the same key (strictly later than this note's onset)
    order = np.lexsort((on, pitch))
    p_sorted, on_sorted = pitch[order], on[order]
    nxt_sorted = np.full(on.size, np.inf)
    same = p_sorted[1:] == p_sorted[:-1]
    nxt_sorted[:-1] = np.where(same, on_sorted[1:], np.inf)
    nxt = np.empty_like(nxt_sorted)
    nxt[order] = nxt_sorted
    nxt = np.where(nxt > on, nxt, np.inf)
    return np.where(held, np.maximum(off, np.minimum(release, nxt)), off)


def tensorize_notes(
    on_s: np.ndarray,
    off_s: np.ndarray,
    pitch: np.ndarray,
    velocity: np.ndarray,
    config: TensorConfig,
) -> np.ndarray:
    """Cells from note arrays already in seconds (pedal applied). Returns uint8 (T, 12, O)."""
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
    k = pitch - config.low_note
    pc, octave = k % N_PITCH_CLASSES, k // N_PITCH_CLASSES
    cell = pc * n_oct + octave  # index into the flattened (12, O) plane
    lengths = f_end - f_on
    n_frames = int(f_end.max())
    total = int(lengths.sum())
    note_idx = np.repeat(np.arange(pitch.size), lengths)
    starts = np.cumsum(lengths) - lengths
    step = np.arange(total, dtype=np.int64) - np.repeat(starts, lengths)  # f − f_on
    frames = f_on[note_idx] + step
    if config.binary:
        values = np.ones(total, np.uint8)
    elif config.decay:
        tau = config.tau_s / np.asarray(config.octave_decay)  # per octave
        dt = config.frame_ms / 1000.0
        decay = np.exp(-(step * dt) / tau[octave[note_idx]])
        values = np.maximum(1, np.rint(velocity[note_idx] * decay)).astype(np.uint8)
    else:
        values = velocity[note_idx].astype(np.uint8)
    flat = np.zeros(n_frames * N_PITCH_CLASSES * n_oct, np.uint8)
    np.maximum.at(flat, frames * (N_PITCH_CLASSES * n_oct) + cell[note_idx], values)
    return flat.reshape(n_frames, N_PITCH_CLASSES, n_oct)


def tensorize_score(score: Any, config: TensorConfig = TensorConfig()) -> Tensorized:
    """Tensorize a ``symusic.Score`` (any time unit; converted to seconds)."""
    if str(score.ttype).lower() != "second":
        score = score.to("second")
    ons, offs, pitches, vels = [], [], [], []
    n_notes = 0
    for track in score.tracks:
        if track.is_drum or track.note_num() == 0:
            continue
        arr = track.notes.numpy()
        on = arr["time"].astype(np.float64)
        off = on + np.maximum(arr["duration"].astype(np.float64), 0.0)
        pitch = arr["pitch"].astype(np.int64)  # int8 in symusic 0.6: widen first
        vel = arr["velocity"].astype(np.int64)
        n_notes += on.size
        if config.pedal and len(track.controls):
            ctl = track.controls.numpy()
            sel = ctl["number"].astype(np.int64) == 64
            times = ctl["time"][sel]
            # a pedal still held at the end is released when the track's last event is over
            end = max(float(off.max()), float(times.max(initial=0.0)))
            pedals = _pedal_intervals(times, ctl["value"][sel], end)
            off = _apply_pedal(on, off, pitch, pedals)
        ons.append(on)
        offs.append(off)
        pitches.append(pitch)
        vels.append(vel)
    if n_notes == 0:
        tensor = np.zeros((0, N_PITCH_CLASSES, config.n_octaves), np.uint8)
        return Tensorized(tensor, 0, 0, 0.0)
    pitch = np.concatenate(pitches)
    dropped = int(((pitch < config.low_note) | (pitch > config.high_note)).sum())
    tensor = tensorize_notes(
        np.concatenate(ons), np.concatenate(offs), pitch, np.concatenate(vels), config
    )
    duration = tensor.shape[0] * config.frame_ms / 1000.0
    return Tensorized(tensor, n_notes, dropped, duration)


def tensorize_with_stats(
    source: str | PathLike[str] | Any, config: TensorConfig = TensorConfig()
) -> Tensorized:
    """Tensorize a path or a ``symusic.Score`` and return the counts beside the tensor."""
    if isinstance(source, str | PathLike):
        from harmonixr.midi.load import load_score

        source = load_score(source)
    return tensorize_score(source, config)


def tensorize(
    source: str | PathLike[str] | Any, config: TensorConfig = TensorConfig()
) -> np.ndarray:
    """The uint8 ``(T, 12, 6)`` tensor of a MIDI path or a ``symusic.Score`` (DESIGN §2)."""
    return tensorize_with_stats(source, config).tensor
