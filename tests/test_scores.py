"""Scores read where MIDI is: MusicXML (written here with music21), a kern string and an MEI
string, each with known pitches and durations checked against the tensor; a converter that
crashes costs one file; the formats reach preprocess, the API and the service."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from harmonixr.midi.load import MidiError, load_tensor, parse_bytes_job
from harmonixr.midi.tensorize import TensorConfig

# quarter notes at 60 bpm (one second each): C4 D4 E4 F4, then half notes G4 A4, repeated
# three times so that the piece holds more than the 5 s of music the model needs
KERN = (
    "**kern\n*M4/4\n*MM60\n"
    + "".join(
        f"={3 * b + 1}\n4c\n4d\n4e\n4f\n={3 * b + 2}\n2g\n2a\n={3 * b + 3}\n1c\n" for b in range(2)
    )
    + "==\n*-\n"
)
MEI_NOTES = "".join(
    f'<measure n="{n}"><staff n="1"><layer n="1"><note pname="c" oct="4" dur="2"/>'
    '<note pname="g" oct="4" dur="2"/></layer></staff></measure>'
    for n in range(1, 5)
)
MEI = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<mei xmlns="http://www.music-encoding.org/ns/mei" '
    'meiversion="5.0"><meiHead><fileDesc><titleStmt><title>t</title></titleStmt><pubStmt/>'
    '</fileDesc></meiHead><music><body><mdiv><score><scoreDef meter.count="4" '
    'meter.unit="4"><staffGrp><staffDef n="1" lines="5" clef.shape="G" clef.line="2"/>'
    f"</staffGrp></scoreDef><section>{MEI_NOTES}</section></score></mdiv></body></music></mei>"
)
FRAME_S = 0.05


def _sounding(tensor: np.ndarray, pitch: int, config: TensorConfig) -> np.ndarray:
    """Frames in which MIDI pitch ``pitch`` sounds, at the cell the tensor contract gives it:
    ``k = pitch − low_note``, pitch class ``k % 12`` (0 is F), octave ``k // 12``."""
    k = pitch - config.low_note
    return np.nonzero(tensor[:, k % 12, k // 12])[0]


def test_kern_renders_its_pitches_and_durations(tmp_path):
    cfg = TensorConfig()
    path = tmp_path / "piece.krn"
    path.write_text(KERN)
    t = load_tensor(path, cfg).tensor
    # D4 sounds from 1 s to 2 s in the first bar: frames 20..39
    d4 = _sounding(t, 62, cfg)
    assert d4.min() == pytest.approx(1.0 / FRAME_S, abs=1) and 18 <= len(d4) // 2 <= 21
    # G4 is a half note at 4 s: two seconds, 40 frames, in each of the two passes
    g4 = _sounding(t, 67, cfg)
    assert g4.min() == pytest.approx(4.0 / FRAME_S, abs=1)
    assert 78 <= len(g4) <= 84
    assert t.shape[0] == pytest.approx(24.0 / FRAME_S, abs=3)  # 2 × (4 + 4 + 4 beats) at 60


def test_mei_renders_at_the_default_tempo(tmp_path):
    cfg = TensorConfig()
    path = tmp_path / "piece.mei"
    path.write_text(MEI)
    t = load_tensor(path, cfg).tensor
    # no tempo in the file: quarter = 120, a half note is one second; C4 at 0, 2, 4, 6 s
    c4 = _sounding(t, 60, cfg)
    starts = [int(c4[0])] + [int(b) for a, b in zip(c4, c4[1:], strict=False) if b - a > 1]
    assert starts == pytest.approx([0, 40, 80, 120], abs=1)
    assert t.shape[0] == pytest.approx(8.0 / FRAME_S, abs=3)


def _musicxml(path, marking: str | None):
    from music21 import dynamics, meter, note, stream, tempo

    part = stream.Part()
    part.append(tempo.MetronomeMark(number=120))
    part.append(meter.TimeSignature("4/4"))
    if marking:
        part.append(dynamics.Dynamic(marking))
    for name in ["E4", "F4", "G4", "A4"] * 3:
        part.append(note.Note(name, quarterLength=1))
    stream.Score([part]).write("mxl" if path.suffix == ".mxl" else "musicxml", fp=str(path))
    return path


def test_musicxml_written_by_music21_renders_with_its_dynamics(tmp_path):
    cfg = TensorConfig()
    for suffix in (".musicxml", ".mxl"):
        soft = load_tensor(_musicxml(tmp_path / f"soft{suffix}", "pp"), cfg).tensor
        plain = load_tensor(_musicxml(tmp_path / f"plain{suffix}", None), cfg).tensor
        # twelve quarters at 120: 6 s; E4 starts the piece
        assert soft.shape[0] == pytest.approx(6.0 / FRAME_S, abs=3)
        assert _sounding(soft, 64, cfg).min() == 0
        # the same notes, pianissimo: quieter cells than without a dynamic
        assert 0 < soft.max() < plain.max()


def test_tensorize_reads_scores_as_preprocess_does(tmp_path):
    import harmonixr

    cfg = TensorConfig()
    kern = tmp_path / "piece.krn"
    kern.write_text(KERN)
    for path in (_musicxml(tmp_path / "plain.musicxml", None), kern):
        np.testing.assert_array_equal(harmonixr.tensorize(path, cfg), load_tensor(path, cfg).tensor)
        assert harmonixr.tensorize_with_stats(path, cfg).notes > 0
        assert harmonixr.load_score(path).note_num() > 0
    bad = tmp_path / "bad.musicxml"
    bad.write_text("<score-partwise>not music")
    with pytest.raises(MidiError) as err:
        harmonixr.tensorize(bad)
    assert err.value.reason == "score_error"


def test_bad_scores_get_score_error_and_uploads_are_rendered_too(tmp_path):
    cfg = TensorConfig()
    bad = tmp_path / "bad.mei"
    bad.write_text("<mei>not music")
    with pytest.raises(MidiError) as err:
        load_tensor(bad, cfg)
    assert err.value.reason == "score_error" and "not well-formed XML" in err.value.detail
    bad.write_text("<mei>not music</mei>")  # well-formed: verovio says why
    with pytest.raises(MidiError) as err:
        load_tensor(bad, cfg)
    assert err.value.reason == "score_error" and "verovio" in err.value.detail
    got = parse_bytes_job((KERN.encode(), "up.krn", cfg, 3600.0, 1 << 20))
    assert got.tensor.shape[0] > 300
    reason, _ = parse_bytes_job((b"PK\x03\x04 not a zip", "x.mxl", cfg, 3600.0, 1 << 20))
    assert reason == "score_error"


def test_a_score_error_names_the_file_and_the_converters_own_reason(tmp_path, capfd):
    import harmonixr
    from harmonixr.midi.scores import one_line

    no_body = tmp_path / "no body.mei"  # an MEI whose <music> holds no <body>
    no_body.write_text(MEI.replace(MEI[MEI.index("<body>") : MEI.index("</music>")], ""))
    for load in (load_tensor, harmonixr.tensorize):
        with pytest.raises(MidiError) as err:
            load(no_body)
        assert err.value.reason == "score_error" and "could not load" not in err.value.detail
        assert str(err.value).startswith(f"{no_body}: score_error")
        assert "No <body> element found in the MEI data" in str(err.value)
    assert "No <body> element" in capfd.readouterr().err  # verovio's log is passed on
    # music21's reason, without its exception's class
    bad = tmp_path / "bad.musicxml"
    bad.write_text(_musicxml(tmp_path / "ok.musicxml", None).read_text().replace(">E<", ">H<"))
    with pytest.raises(MidiError) as err:
        load_tensor(bad)
    assert err.value.detail == "music21: Cannot make a step out of 'H'"
    assert one_line("a\n\tb\x00c " + "x" * 300, 20) == "a b c " + "x" * 13 + "…"


def _crash_on_kern(job):
    from harmonixr.midi.load import load_job

    if str(job[0]).endswith("crash.krn"):
        os.kill(os.getpid(), signal.SIGSEGV)  # as verovio does on some kern files
    return load_job(job)


def test_a_converter_crash_costs_one_file_and_the_folder_is_cached(tmp_path, monkeypatch):
    from harmonixr.data import cache as cache_mod
    from harmonixr.data.cache import TensorCache, preprocess

    folder = tmp_path / "corpus" / "Someone"
    folder.mkdir(parents=True)
    (folder / "good.krn").write_text(KERN)
    (folder / "crash.krn").write_text("!! another file\n" + KERN)
    (folder / "good.mei").write_text(MEI)
    monkeypatch.setattr(cache_mod, "load_job", _crash_on_kern)
    summary = preprocess(tmp_path / "corpus", tmp_path / "cache", workers=1)
    assert summary.ok == 2 and dict(summary.skipped) == {"crashed": 1}
    with TensorCache(tmp_path / "cache") as c:
        rows = {r.path.rsplit("/", 1)[1]: r for r in c.rows(status=None)}
    assert rows["good.krn"].kind == "score" and rows["good.mei"].kind == "score"
    assert rows["crash.krn"].reason == "crashed"


def test_a_folder_reads_musicxml_but_not_other_xml(tmp_path):
    from harmonixr.midi.corpora import read_corpus

    folder = tmp_path / "corpus" / "Someone"
    folder.mkdir(parents=True)
    (folder / "piece.krn").write_text(KERN)
    (folder / "metadata.xml").write_text('<?xml version="1.0"?><catalogue><item/></catalogue>')
    (folder / "score.xml").write_text(
        '<?xml version="1.0"?><!DOCTYPE score-partwise><score-partwise version="4.0">'
        "</score-partwise>"
    )
    names = sorted(p.path.rsplit("/", 1)[1] for p in read_corpus(tmp_path / "corpus").pieces)
    assert names == ["piece.krn", "score.xml"]
