"""tensorize against hand-computed tensors (docs/architecture.md) and a slow reference."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import mido
import numpy as np
import pytest
import symusic
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from midi_factory import TPQ, frames, make_multitrack, make_score, write_dense, write_score

from harmonixr import TensorConfig, tensorize, tensorize_with_stats
from harmonixr.midi import tensorize as tz


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


def test_pedal_on_one_track_holds_the_notes_of_every_track(tmp_path):
    # the left hand's track carries the pedal; the right hand's notes ring on under it too
    right = [(0, frames(2), 72, 100)]
    left = [(0, frames(2), 41, 80)]
    pedal = [(frames(1), 127), (frames(10), 0)]
    path = tmp_path / "hands.mid"
    make_multitrack([(right, [], False), (left, pedal, False)]).dump_midi(str(path))
    t = tensorize(path)
    assert np.flatnonzero(t[:, *cell(72)]).tolist() == list(range(10))
    assert np.flatnonzero(t[:, *cell(41)]).tolist() == list(range(10))


def test_drum_track_pedal_is_ignored(tmp_path):
    path = tmp_path / "kit.mid"
    drums = ([(0, frames(1), 38, 100)], [(frames(1), 127), (frames(10), 0)], True)
    make_multitrack([([(0, frames(2), 60, 100)], [], False), drums]).dump_midi(str(path))
    assert np.flatnonzero(tensorize(path)[:, 7, 2]).tolist() == [0, 1]


def test_twins_are_cut_at_the_next_strike_after_their_onset():
    # two notes of one key struck together, then the key struck again under the pedal: both
    # twins stop there (the first must not take its twin for its next strike)
    notes = [(0, frames(2), 60, 100), (0, frames(3), 60, 60), (frames(8), frames(1), 60, 50)]
    pedals = [(frames(1), 127), (frames(20), 0)]
    col = tensorize(make_score(notes, pedals=pedals))[:, 7, 2].tolist()
    first = [max(1, round(100 * math.exp(-0.03 * f))) for f in range(8)]
    again = [max(1, round(50 * math.exp(-0.03 * f))) for f in range(12)]
    assert col == first + again


def test_overlapping_notes_of_one_pitch_take_max():
    # built as a Score, not a file: a MIDI file cannot say which note-off ends which note
    notes = [(0, frames(10), 60, 50), (frames(3), frames(2), 60, 100)]
    t = tensorize(make_score(notes))
    col = t[:, 7, 2].tolist()
    assert col[3:5] == [100, 97]
    assert col[5] == round(50 * math.exp(-0.03 * 5))


# a child process, its address space capped so that a regression fails instead of exhausting
# the machine; it reports the reason and its own peak resident memory (VmHWM)
_DENSE_CHILD = """
import json, resource, sys
cap = 1536 << 20
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
from harmonixr.midi.load import MidiError, load_tensor
try:
    load_tensor(sys.argv[1])
    reason = "ok"
except MidiError as exc:
    reason = exc.reason
except MemoryError:
    reason = "MemoryError"
try:  # this process image's own peak (ru_maxrss can inherit the parent's across exec)
    status = open("/proc/self/status").read()
    peak = int(status.split("VmHWM:")[1].split()[0]) * 1024
except OSError:
    scale = 1 if sys.platform == "darwin" else 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
print(json.dumps({"reason": reason, "peak": peak}))
"""


def test_hostile_dense_file_is_skipped_in_bounded_memory(tmp_path):
    # 18 KB: 3,000 notes of 3.9 hours each, inside the size and length limits; expanded note
    # by frame it would need ~40 GB
    path = write_dense(tmp_path / "dense.mid", n_notes=3000, seconds=3.9 * 3600)
    assert path.stat().st_size < 20_000
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        [sys.executable, "-c", _DENSE_CHILD, str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["reason"] == "too_dense"
    assert report["peak"] < 300 * 2**20, f"peak RSS {report['peak'] / 2**20:.0f} MiB"


def test_too_dense_is_decided_before_any_work(monkeypatch):
    monkeypatch.setattr(tz, "MIN_NOTE_FRAMES_LIMIT", 0)
    on, off = np.zeros(3), np.full(3, 0.5)  # 3 notes × 10 frames over 10 frames
    pitch, vel = np.array([40, 50, 60]), np.full(3, 100)
    assert tz.tensorize_notes(on, off, pitch, vel, TensorConfig(), max_per_frame=3).shape[0] == 10
    with pytest.raises(tz.TooDense, match="30 note-frames over 10 frames"):
        tz.tensorize_notes(on, off, pitch, vel, TensorConfig(), max_per_frame=2)


def test_too_dense_file_error_names_the_file(tmp_path):
    from harmonixr import MidiError

    path = write_dense(tmp_path / "dense.mid", n_notes=3000, seconds=3600)
    with pytest.raises(MidiError, match="dense.mid: too_dense") as info:
        tensorize(path)
    assert info.value.reason == "too_dense"


def test_expansion_in_small_chunks_gives_the_same_tensor(monkeypatch):
    rng = np.random.default_rng(1)
    notes = [
        (int(rng.integers(0, 3000)), int(rng.integers(0, 900)), int(rng.integers(29, 101)), 90)
        for _ in range(60)
    ]
    score = make_score(notes)
    whole = tensorize(score)
    monkeypatch.setattr(tz, "CHUNK_NOTE_FRAMES", 7)
    np.testing.assert_array_equal(tensorize(score), whole)
    assert whole.any()


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
    """The tensor contract of docs/architecture.md read word for word, one note and one frame at
    a time (slow, obviously right).

    - All tracks merged; drum tracks ignored (their notes and their controls).
    - One sustain pedal: the CC64 events of every non-drum track, in time order (events at the
      same time in file order). The pedal is down at time t when the last event at or before t
      has a value of 64 or more.
    - A note whose key is released (its end) while the pedal is down sounds on until the pedal
      is released (the first event after its end with a value below 64; if none, the end of
      the music: its last note end or pedal event) or until the same key is struck again after
      the note's own onset (a note struck at that very instant does not count), whichever is
      first.
    - A note is active in frames floor(on/0.05) up to max(that+1, ceil(off/0.05)), end
      exclusive; value max(1, round(v·exp(−Δ/τ_o))), Δ the time since the first frame;
      overlapping notes in a cell take the maximum; binary stores 1.
    """
    tracks = [t for t in score.tracks if not t.is_drum]
    notes = [
        (float(n.time), float(n.time) + max(0.0, float(n.duration)), int(n.pitch), int(n.velocity))
        for t in tracks
        for n in t.notes
    ]
    pedal = [(float(c.time), int(c.value)) for t in tracks for c in t.controls if c.number == 64]
    pedal.sort(key=lambda e: e[0])  # stable: same time keeps file order
    music_end = max([n[1] for n in notes] + [t for t, _ in pedal], default=0.0)

    def pedal_down_at(t: float) -> bool:
        down = False
        for when, value in pedal:
            if when > t:
                break
            down = value >= 64
        return down

    def pedal_released_after(t: float) -> float:
        for when, value in pedal:
            if when > t and value < 64:
                return when
        return music_end

    def struck_again_after(pitch: int, onset: float) -> float:
        later = [on for on, _, p, _ in notes if p == pitch and on > onset]
        return min(later, default=math.inf)

    fps = 1000.0 / cfg.frame_ms
    cells: dict[tuple[int, int, int], int] = {}
    for on, off, pitch, vel in notes:
        end = off
        if cfg.pedal and pedal_down_at(off):
            end = max(off, min(pedal_released_after(off), struck_again_after(pitch, on)))
        if not cfg.low_note <= pitch <= cfg.high_note:
            continue
        f_on = max(0, math.floor(on * fps + 1e-6))
        f_end = max(f_on + 1, math.ceil(end * fps - 1e-6))
        k = pitch - cfg.low_note
        tau = cfg.tau_s / cfg.octave_decay[k // 12]
        for f in range(f_on, f_end):
            delta = (f - f_on) * cfg.frame_ms / 1000
            value = 1 if cfg.binary else max(1, round(vel * math.exp(-delta / tau)))
            key = (f, k % 12, k // 12)
            cells[key] = max(cells.get(key, 0), value)
    n = max((f for f, _, _ in cells), default=-1) + 1
    out = np.zeros((n, 12, cfg.n_octaves), np.uint8)
    for (f, pc, o), v in cells.items():
        out[f, pc, o] = v
    return out


# pitches often collide (re-strikes under the pedal); a twin is a second note of the same key
# struck at the same instant, on the same or another track
pitch_st = st.one_of(st.integers(20, 110), st.integers(59, 62))
twin_st = st.none() | st.tuples(st.integers(0, 600), st.integers(1, 127), st.integers(0, 2))
note_st = st.tuples(
    st.integers(0, 3000), st.integers(0, 600), pitch_st, st.integers(1, 127), st.integers(0, 2)
)
pedal_st = st.lists(
    st.tuples(
        st.integers(0, 3500), st.one_of(st.sampled_from([0, 63, 64, 127]), st.integers(0, 127))
    ),
    max_size=6,
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    notes=st.lists(st.tuples(note_st, twin_st), min_size=1, max_size=30),
    pedals=st.tuples(pedal_st, pedal_st, pedal_st),
    drum_track=st.booleans(),
    tempos=st.lists(st.tuples(st.integers(1, 3000), st.floats(30, 240)), max_size=3),
    binary=st.booleans(),
    pedal=st.booleans(),
)
def test_vectorised_equals_reference(notes, pedals, drum_track, tempos, binary, pedal):
    parts: list[list] = [[], [], []]  # track 2 is a drum kit when drum_track
    for (start, dur, pitch, vel, track), twin in notes:
        parts[track].append((start, dur, pitch, vel))
        if twin is not None:
            dur2, vel2, track2 = twin
            parts[track2].append((start, dur2, pitch, vel2))
    tracks = [(parts[k], pedals[k], drum_track and k == 2) for k in range(3)]
    tempo_map = [(0, 120.0)] + sorted(tempos)
    raw = make_multitrack(tracks, tempos=tempo_map).dumps_midi()
    score = symusic.Score.from_midi(raw, ttype="second")
    cfg = TensorConfig(binary=binary, pedal=pedal)
    got = tensorize(score, cfg)
    want = reference_tensor(score, cfg)
    assert got.dtype == np.uint8 and got.ndim == 3 and got.shape[1:] == (12, 6)
    assert got.max(initial=0) <= (1 if binary else 127)
    np.testing.assert_array_equal(got, want)


def test_reference_on_hand_computed_pedal_cases():
    """The oracle itself, on the two cases that once hid bugs: the pedal on another track than
    the notes it holds, and twins of one key re-struck under the pedal."""
    notes = [(0, frames(2), 60, 100), (0, frames(1), 60, 90), (frames(5), frames(1), 60, 40)]
    pedal = [(frames(1), 127), (frames(12), 0)]
    score = make_multitrack([(notes, [], False), ([], pedal, False)]).to("second")
    col = reference_tensor(score, TensorConfig())[:, 7, 2].tolist()
    first = [max(1, round(100 * math.exp(-0.03 * f))) for f in range(5)]
    again = [max(1, round(40 * math.exp(-0.03 * f))) for f in range(7)]
    assert col == first + again  # both twins stop at the re-strike, which rings to the release


def test_config_validates_and_round_trips():
    cfg = TensorConfig(binary=True)
    assert TensorConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.key() != TensorConfig().key()
    with pytest.raises(ValueError, match="whole octaves"):
        TensorConfig(high_note=99)
    with pytest.raises(ValueError, match="octave_decay"):
        TensorConfig(octave_decay=(1.0, 2.0))


def _rmid(smf: bytes, extra_chunk: bool = True) -> bytes:
    """A RIFF RMID file (little-endian chunk sizes, odd chunks padded) holding ``smf``."""
    chunks = b""
    if extra_chunk:
        info = b"INFOx"  # an odd-length chunk before the data: padded to even
        chunks += b"LIST" + len(info).to_bytes(4, "little") + info + b"\x00"
    chunks += b"data" + len(smf).to_bytes(4, "little") + smf
    body = b"RMID" + chunks
    return b"RIFF" + len(body).to_bytes(4, "little") + body


def test_rmi_riff_wrapped_midi_gives_the_same_tensor(tmp_path):
    from harmonixr.data.cache import TensorCache, preprocess
    from harmonixr.midi.load import MidiError, load_tensor, unwrap_rmid

    (tmp_path / "x" / "A").mkdir(parents=True)
    notes = [(480 * i, 480, 60 + i % 7, 90) for i in range(16)]  # 8 s
    plain = write_score(tmp_path / "x" / "A" / "p.mid", notes)
    smf = plain.read_bytes()
    wrapped = tmp_path / "x" / "A" / "p.rmi"
    wrapped.write_bytes(_rmid(smf))
    assert unwrap_rmid(_rmid(smf)) == smf and unwrap_rmid(smf) == smf
    cfg = TensorConfig()
    assert np.array_equal(load_tensor(wrapped, cfg).tensor, load_tensor(plain, cfg).tensor)
    preprocess(tmp_path / "x", tmp_path / "cache", workers=1)
    with TensorCache(tmp_path / "cache") as cache:
        rows = {r.path.rsplit(".", 1)[1]: r for r in cache.rows(None)}
    assert rows["rmi"].status == "ok" and rows["rmi"].n_notes == rows["mid"].n_notes == 16
    with pytest.raises(MidiError, match="without a 'data' chunk"):
        unwrap_rmid(b"RIFF\x04\x00\x00\x00RMID")
    with pytest.raises(MidiError, match="cut short"):
        unwrap_rmid(_rmid(smf, extra_chunk=False)[:-5])


def test_condense_cuts_stretches_without_a_new_note():
    from harmonixr.midi.tensorize import condense, onset_frames

    t = np.zeros((30, 12, 6), np.uint8)
    t[0:20, 0, 2] = 100  # a note held 20 frames (no decay here: the rule reads onsets only)
    t[25:27, 3, 2] = 80  # another note after 5 silent frames
    assert onset_frames(t).nonzero()[0].tolist() == [0, 25]
    c = condense(t, 4)
    # from each onset, 4 frames are kept: 0-3 (the held note), then 25-28 (the new note and
    # two silent frames after it); 4-24 and 29 go
    assert c.shape[0] == 4 + 4
    np.testing.assert_array_equal(c[4], t[25])
    assert condense(t, 100) is t  # nothing long enough to cut
    with pytest.raises(ValueError):
        condense(t, 0)
