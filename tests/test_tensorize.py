"""tensorize against hand-computed tensors (DESIGN §2) and a slow reference."""

from __future__ import annotations

import math

import mido
import numpy as np
import pytest
import symusic
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from midi_factory import TPQ, frames, make_score, write_score

from harmonixr import TensorConfig, tensorize, tensorize_with_stats


def cell(pitch: int) -> tuple[int, int]:
    k = pitch - 29
    return k % 12, k // 12


def only_cells(t: np.ndarray, keep: list[tuple[int, int]]) -> np.ndarray:
    other = t.copy()
    for pc, o in keep:
        other[:, pc, o] = 0
    return other


def test_one_note_exact_values(tmp_path):
    path = write_score(tmp_path / "one.mid", [(0, frames(5), 60, 100)])
    res = tensorize_with_stats(path)
    t = res.tensor
    assert t.dtype == np.uint8 and t.shape == (5, 12, 6)
    assert cell(60) == (7, 2)  # C4 is pitch class 7 (F = 0) of octave 2
    # tau = 2.5 s / 1.5 ; value = round(100 * exp(-0.05 f / tau)) = round(100 * exp(-0.03 f))
    assert t[:, 7, 2].tolist() == [100, 97, 94, 91, 89]
    assert not only_cells(t, [(7, 2)]).any()
    assert (res.notes, res.dropped_notes) == (1, 0)
    assert res.duration_s == pytest.approx(0.25)


def test_chord_over_three_octaves(tmp_path):
    notes = [(0, frames(2), p, 64) for p in (29, 53, 76)]
    t = tensorize(write_score(tmp_path / "chord.mid", notes))
    assert [cell(p) for p in (29, 53, 76)] == [(0, 0), (0, 2), (11, 3)]
    assert t[:, 0, 0].tolist() == [64, 63]  # octave 0: tau 2.5/0.7 s
    assert t[:, 0, 2].tolist() == [64, 62]  # octave 2: tau 2.5/1.5 s
    assert t[:, 11, 3].tolist() == [64, 61]  # octave 3: tau 2.5/2 s
    assert not only_cells(t, [(0, 0), (0, 2), (11, 3)]).any()


def test_out_of_range_notes_dropped_and_counted(tmp_path):
    notes = [(0, frames(1), 28, 90), (0, frames(1), 101, 90), (0, frames(3), 100, 90)]
    res = tensorize_with_stats(write_score(tmp_path / "range.mid", notes))
    assert (res.notes, res.dropped_notes) == (3, 2)
    assert cell(100) == (11, 5)
    assert res.tensor.shape == (3, 12, 6)
    assert np.count_nonzero(res.tensor) == 3 and res.tensor[:, 11, 5].all()


def test_tempo_change_mid_piece(tmp_path):
    # 120 bpm for one beat (0.5 s), then 60 bpm: tick 960 is 0.5 + 1.0 = 1.5 s = frame 30
    path = write_score(
        tmp_path / "tempo.mid",
        [(960, TPQ // 10, 65, 127)],  # a tenth of a beat at 60 bpm = 0.1 s = 2 frames
        tempos=[(0, 120.0), (TPQ, 60.0)],
    )
    t = tensorize(path)
    assert t.shape[0] == 32
    assert np.flatnonzero(t[:, *cell(65)]).tolist() == [30, 31]


def test_pedal_extends_until_release(tmp_path):
    notes = [(0, frames(2), 60, 100)]
    pedals = [(frames(1), 127), (frames(10), 0)]
    on = tensorize(write_score(tmp_path / "p.mid", notes, pedals=pedals))
    off = tensorize(
        write_score(tmp_path / "p2.mid", notes, pedals=pedals), TensorConfig(pedal=False)
    )
    assert np.flatnonzero(on[:, 7, 2]).tolist() == list(range(10))
    assert np.flatnonzero(off[:, 7, 2]).tolist() == [0, 1]


def test_restrike_under_pedal_cuts_and_restarts(tmp_path):
    notes = [(0, frames(2), 60, 100), (frames(6), frames(1), 60, 50)]
    pedals = [(frames(1), 127), (frames(10), 0)]
    t = tensorize(write_score(tmp_path / "r.mid", notes, pedals=pedals))
    col = t[:, 7, 2].tolist()
    first = [max(1, round(100 * math.exp(-0.03 * f))) for f in range(6)]
    second = [max(1, round(50 * math.exp(-0.03 * f))) for f in range(4)]
    assert col == first + second  # frames 0-5, then 6-9 restarted at velocity 50


def test_overlapping_notes_of_one_pitch_take_max():
    # built as a Score, not a file: a MIDI file cannot say which note-off ends which note
    notes = [(0, frames(10), 60, 50), (frames(3), frames(2), 60, 100)]
    t = tensorize(make_score(notes))
    col = t[:, 7, 2].tolist()
    assert col[3:5] == [100, 97]
    assert col[5] == round(50 * math.exp(-0.03 * 5))


def test_binary_mode(tmp_path):
    notes = [(0, frames(3), 60, 100), (frames(1), frames(1), 40, 20)]
    t = tensorize(write_score(tmp_path / "b.mid", notes), TensorConfig(binary=True))
    assert set(np.unique(t).tolist()) == {0, 1}
    assert t[:, 7, 2].tolist() == [1, 1, 1] and t[:, *cell(40)].tolist() == [0, 1, 0]


def test_drum_track_ignored(tmp_path):
    notes = [(0, frames(4), 60, 100)]
    plain = tensorize(write_score(tmp_path / "a.mid", notes))
    drums = [(0, frames(20), 38, 127), (frames(2), frames(1), 60, 127)]
    with_drums = tensorize_with_stats(write_score(tmp_path / "d.mid", notes, drums=drums))
    np.testing.assert_array_equal(with_drums.tensor, plain)
    assert with_drums.notes == 1


def _write_mido(path, type_: int) -> None:
    """One piece as a type-0 file (one track, two channels) or type-1 (a track per part)."""
    parts = [(0, [(0, 480, 60, 90), (480, 240, 64, 70)]), (1, [(240, 720, 41, 60)])]
    tempo = mido.MetaMessage("set_tempo", tempo=400000, time=0)
    per_part = []
    for ch, notes in parts:
        events = []
        for start, dur, pitch, vel in notes:
            events.append((start, 1, mido.Message("note_on", channel=ch, note=pitch, velocity=vel)))
            events.append((start + dur, 0, mido.Message("note_off", channel=ch, note=pitch)))
        per_part.append(events)
    mf = mido.MidiFile(type=type_, ticks_per_beat=480)
    streams = [[e for events in per_part for e in events]] if type_ == 0 else per_part
    for i, events in enumerate(streams):
        track = mido.MidiTrack()
        if i == 0:
            track.append(tempo)
        now = 0
        for tick, _, msg in sorted(events, key=lambda e: (e[0], e[1])):
            track.append(msg.copy(time=tick - now))
            now = tick
        mf.tracks.append(track)
    mf.save(path)


def test_type0_and_type1_give_same_tensor(tmp_path):
    _write_mido(tmp_path / "t0.mid", 0)
    _write_mido(tmp_path / "t1.mid", 1)
    assert mido.MidiFile(tmp_path / "t0.mid").type == 0
    a, b = tensorize(tmp_path / "t0.mid"), tensorize(tmp_path / "t1.mid")
    # the last note ends at tick 960 = 2 beats of 0.4 s = 0.8 s = 16 frames
    assert a.shape == (16, 12, 6)
    assert np.flatnonzero(a[:, *cell(41)]).tolist() == list(range(4, 16))  # second part
    np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------ reference, cell for cell


def reference_tensor(score: symusic.Score, cfg: TensorConfig) -> np.ndarray:
    """Obviously correct and slow: loops over notes and frames, pedal scanned event by event."""
    fps = 1000.0 / cfg.frame_ms
    cells: dict[tuple[int, int, int], int] = {}
    for track in score.tracks:
        if track.is_drum:
            continue
        notes = [
            (
                float(n.time),
                float(n.time) + max(0.0, float(n.duration)),
                int(n.pitch),
                int(n.velocity),
            )
            for n in track.notes
        ]
        events = sorted(
            ((float(c.time), int(c.value)) for c in track.controls if c.number == 64),
            key=lambda e: e[0],
        )
        last_off = max((n[1] for n in notes), default=0.0)
        for on, off, pitch, vel in notes:
            if cfg.pedal:
                down = False
                for t, v in events:
                    if t <= off:
                        down = v >= 64
                if down:
                    release = None
                    for t, v in events:
                        if t > off and v < 64:
                            release = t
                            break
                    if release is None:
                        release = max(last_off, max(t for t, v in events))
                    later = [n[0] for n in notes if n[2] == pitch and n[0] > on]
                    nxt = min(later) if later else math.inf
                    off = max(off, min(release, nxt))
            if not cfg.low_note <= pitch <= cfg.high_note:
                continue
            f_on = max(0, math.floor(on * fps + 1e-6))
            f_end = max(f_on + 1, math.ceil(off * fps - 1e-6))
            k = pitch - cfg.low_note
            m = cfg.octave_decay[k // 12]
            for f in range(f_on, f_end):
                if cfg.binary:
                    value = 1
                else:
                    value = max(
                        1,
                        round(vel * math.exp(-(f - f_on) * cfg.frame_ms / 1000 / (cfg.tau_s / m))),
                    )
                key = (f, k % 12, k // 12)
                cells[key] = max(cells.get(key, 0), value)
    n = max((f for f, _, _ in cells), default=-1) + 1
    out = np.zeros((n, 12, cfg.n_octaves), np.uint8)
    for (f, pc, o), v in cells.items():
        out[f, pc, o] = v
    return out


note_st = st.tuples(
    st.integers(0, 3000), st.integers(0, 600), st.integers(20, 110), st.integers(1, 127)
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    notes=st.lists(note_st, min_size=1, max_size=40),
    pedal_ticks=st.lists(st.integers(0, 3500), max_size=8, unique=True),
    pedal_values=st.lists(st.integers(0, 127), min_size=8, max_size=8),
    tempos=st.lists(st.tuples(st.integers(1, 3000), st.floats(30, 240)), max_size=3),
    binary=st.booleans(),
    pedal=st.booleans(),
)
def test_vectorised_equals_reference(notes, pedal_ticks, pedal_values, tempos, binary, pedal):
    pedals = list(zip(pedal_ticks, pedal_values, strict=False))
    tempo_map = [(0, 120.0)] + sorted(tempos)
    raw = make_score(notes, pedals=pedals, tempos=tempo_map).dumps_midi()
    score = symusic.Score.from_midi(raw, ttype="second")
    cfg = TensorConfig(binary=binary, pedal=pedal)
    got = tensorize(score, cfg)
    want = reference_tensor(score, cfg)
    assert got.dtype == np.uint8 and got.ndim == 3 and got.shape[1:] == (12, 6)
    assert got.max(initial=0) <= (1 if binary else 127)
    np.testing.assert_array_equal(got, want)


def test_config_validates_and_round_trips():
    cfg = TensorConfig(binary=True)
    assert TensorConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.key() != TensorConfig().key()
    with pytest.raises(ValueError, match="whole octaves"):
        TensorConfig(high_note=99)
    with pytest.raises(ValueError, match="octave_decay"):
        TensorConfig(octave_decay=(1.0, 2.0))
