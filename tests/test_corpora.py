"""Corpus readers on tiny folders laid out by the tests."""

from __future__ import annotations

import unicodedata

import pytest
from midi_factory import write_score

from harmonixr.midi.corpora import (
    detect_format,
    parse_giantmidi_name,
    read_corpus,
)

NOTES = [(0, 480, 60, 80)]


def test_giantmidi_names_with_commas_and_unicode():
    decomposed = unicodedata.normalize(
        "NFD", "Dvořák, Antonín, Humoresque, Op.101, No.7, abcDEF_-123.mid"
    )
    composer, title = parse_giantmidi_name(decomposed)
    assert composer == unicodedata.normalize("NFC", "Antonín Dvořák")
    assert title == "Humoresque, Op.101, No.7"
    assert parse_giantmidi_name("Bach, Johann Sebastian, Prelude, tooShortId.mid") is None
    assert parse_giantmidi_name("not a giantmidi name.mid") is None


def test_read_giantmidi_folder(tmp_path):
    names = [
        "Chopin, Frédéric, Nocturne Op.9, No.2, aaaaaaaaaaa.mid",
        "Chopin, Frédéric, Nocturne  op.9,  no.2, bbbbbbbbbbb.mid",
        "Satie, Erik, Gymnopédie No.1, ccccccccccc.mid",
        "readme-ish.mid",
    ]
    for n in names:
        write_score(tmp_path / n, NOTES)
    assert detect_format(tmp_path) == "giantmidi"
    listing = read_corpus(tmp_path)
    assert listing.format == "giantmidi"
    by_title = {p.title: p for p in listing.pieces}
    assert by_title["Nocturne Op.9, No.2"].composer == "Frédéric Chopin"
    # two renditions of one work share a group despite spacing and case
    groups = {p.group for p in listing.pieces if p.composer == "Frédéric Chopin"}
    assert groups == {"nocturne op 9 no 2|Frédéric Chopin"}
    assert [s[0].endswith("readme-ish.mid") for s in listing.skipped] == [True]


def test_read_asap_performances_and_scores(tmp_path):
    (tmp_path / "Bach/Fugue/bwv_846").mkdir(parents=True)
    (tmp_path / "Chopin/Etudes/10_1").mkdir(parents=True)
    for rel in [
        "Bach/Fugue/bwv_846/A.mid",
        "Bach/Fugue/bwv_846/B.mid",
        "Bach/Fugue/bwv_846/midi_score.mid",
        "Chopin/Etudes/10_1/C.mid",
        "Chopin/Etudes/10_1/midi_score.mid",
    ]:
        write_score(tmp_path / rel, NOTES)
    header = "composer,title,folder,xml_score,midi_score,midi_performance\n"
    rows = [
        "Bach,Fugue_bwv_846,Bach/Fugue/bwv_846,x,Bach/Fugue/bwv_846/midi_score.mid,Bach/Fugue/bwv_846/A.mid",
        "Bach,Fugue_bwv_846,Bach/Fugue/bwv_846,x,Bach/Fugue/bwv_846/midi_score.mid,Bach/Fugue/bwv_846/B.mid",
        "Chopin,Etude_10_1,Chopin/Etudes/10_1,x,Chopin/Etudes/10_1/midi_score.mid,Chopin/Etudes/10_1/C.mid",
        "Chopin,Etude_10_1,Chopin/Etudes/10_1,x,Chopin/Etudes/10_1/midi_score.mid,Chopin/Etudes/10_1/gone.mid",
    ]
    (tmp_path / "metadata.csv").write_text(header + "\n".join(rows) + "\n")
    assert detect_format(tmp_path) == "asap"
    perf = read_corpus(tmp_path)
    assert sorted(p.path.rsplit("/", 1)[1] for p in perf.pieces) == ["A.mid", "B.mid", "C.mid"]
    assert {p.group for p in perf.pieces} == {"Bach/Fugue/bwv_846", "Chopin/Etudes/10_1"}
    assert len(perf.skipped) == 1 and perf.skipped[0][0].endswith("gone.mid")
    both = read_corpus(tmp_path, include_scores=True)
    scores = [p for p in both.pieces if p.path.endswith("midi_score.mid")]
    assert len(both.pieces) == 5 and len(scores) == 2  # each score once
    assert {p.composer for p in scores} == {"Bach", "Chopin"}


def test_read_maestro(tmp_path):
    (tmp_path / "2004").mkdir()
    write_score(tmp_path / "2004/a.midi", NOTES)
    write_score(tmp_path / "2004/b.midi", NOTES)
    (tmp_path / "maestro-v3.0.0.csv").write_text(
        "canonical_composer,canonical_title,split,year,midi_filename,audio_filename,duration\n"
        'Franz Liszt,"Hungarian Rhapsody No. 2",train,2004,2004/a.midi,2004/a.wav,1\n'
        'Franz Liszt,"Hungarian Rhapsody no. 2",test,2004,2004/b.midi,2004/b.wav,1\n'
    )
    assert detect_format(tmp_path) == "maestro"
    listing = read_corpus(tmp_path)
    assert [p.composer for p in listing.pieces] == ["Franz Liszt", "Franz Liszt"]
    assert len({p.group for p in listing.pieces}) == 1


def test_read_folder_by_parent_and_by_labels(tmp_path):
    for rel in ["Ravel/a.mid", "Ravel/b.mid", "Satie/c.mid", "loose.mid"]:
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        write_score(tmp_path / rel, NOTES)
    assert detect_format(tmp_path) == "folder"
    listing = read_corpus(tmp_path)
    assert sorted((p.composer, p.title) for p in listing.pieces) == [
        ("Ravel", "a"),
        ("Ravel", "b"),
        ("Satie", "c"),
    ]
    assert len(listing.skipped) == 1
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "path,composer,title,group\nRavel/a.mid,Maurice Ravel,Bolero,w1\n"
        "Satie/c.mid,Erik Satie,,\nmissing.mid,X,,\n"
    )
    listing = read_corpus(tmp_path, labels=labels)
    assert [(p.composer, p.title, p.group) for p in listing.pieces] == [
        ("Maurice Ravel", "Bolero", "w1"),
        ("Erik Satie", "c", "Satie/c.mid"),
    ]
    assert listing.skipped[0][1] == "listed in labels.csv but missing"


def test_bad_source_and_format(tmp_path):
    with pytest.raises(ValueError, match="unknown corpus format"):
        read_corpus(tmp_path, format="nope")
    with pytest.raises(ValueError, match="no such folder"):
        read_corpus(tmp_path / "absent", format="folder")
    with pytest.raises(ValueError, match="not an ASAP folder"):
        read_corpus(tmp_path, format="asap")
