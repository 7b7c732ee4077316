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


def _asap_like(root):
    """An ASAP-like folder: repeat variants of one movement in separate folders, a prelude and a
    fugue cut from one MAESTRO recording, a byte-identical performance in two folders."""
    rows = [
        # composer, title, folder, performance file, maestro recording
        ("Beethoven", "Sonata_26-1", "Beethoven/Piano_Sonatas/26-1", "Lee01.mid", "r1"),
        ("Beethoven", "Sonata_26-1", "Beethoven/Piano_Sonatas/26-1_no_repeat", "Kim02M.mid", ""),
        ("Beethoven", "Sonata_24-1", "Beethoven/Piano_Sonatas/24-1", "Ann03.mid", ""),
        ("Beethoven", "Sonata_24-1", "Beethoven/Piano_Sonatas/24-1_no_2_repeat", "Bo04.mid", ""),
        ("Beethoven", "Sonata_24-1", "Beethoven/Piano_Sonatas/24-1_no_repeat", "Cy05.mid", ""),
        ("Beethoven", "Sonata_18-2", "Beethoven/Piano_Sonatas/18-2", "Schmitt01.mid", ""),
        ("Beethoven", "Sonata_18-2", "Beethoven/Piano_Sonatas/18-2_no_repeat", "Schmitt01.mid", ""),
        ("Beethoven", "Sonata_26-2", "Beethoven/Piano_Sonatas/26-2", "Lee02.mid", "r1"),
        ("Beethoven", "Sonata_1-1", "Beethoven/Piano_Sonatas/1-1", "Dee01.mid", ""),
        ("Beethoven", "Sonata_2-1", "Beethoven/Piano_Sonatas/2-1", "Eve01.mid", ""),
        ("Bach", "Prelude_846", "Bach/Prelude/bwv_846", "Shi05M.mid", "r2"),
        ("Bach", "Fugue_846", "Bach/Fugue/bwv_846", "Shi06M.mid", "r2"),
        ("Bach", "Fugue_848", "Bach/Fugue/bwv_848", "Den06.mid", "r3"),
        ("Bach", "Fugue_850", "Bach/Fugue/bwv_850", "Fox01.mid", ""),
        ("Bach", "Fugue_852", "Bach/Fugue/bwv_852", "Gil01.mid", ""),
        ("Schumann", "Toccata", "Schumann/Toccata", "Hu01.mid", ""),
        ("Schumann", "Toccata", "Schumann/Toccata_repeat", "Io01.mid", ""),
        ("Schumann", "Kreisleriana_1", "Schumann/Kreisleriana/1", "Jo01.mid", "r4"),
        ("Schumann", "Kreisleriana_1", "Schumann/Kreisleriana/1_no_first_repeat", "Ka01.mid", ""),
        ("Schumann", "Kreisleriana_2", "Schumann/Kreisleriana/2", "Jo02.mid", "r4"),
        ("Schumann", "Arabeske", "Schumann/Arabeske", "Lu01.mid", ""),
    ]
    lines = ["composer,title,folder,xml_score,midi_score,midi_performance,maestro_midi_performance"]
    for i, (composer, title, folder, name, rec) in enumerate(rows):
        (root / folder).mkdir(parents=True, exist_ok=True)
        write_score(root / folder / name, [(0, 480 * (1 + i % 3), 60 + i % 12, 80)])
        write_score(root / folder / "midi_score.mid", [(0, 480, 60, 80)])
        maestro = f"{{maestro}}/2008/{rec}.midi" if rec else ""
        lines.append(
            f"{composer},{title},{folder},x,{folder}/midi_score.mid,{folder}/{name},{maestro}"
        )
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    return root


def test_asap_groups_join_repeat_variants_and_shared_recordings(tmp_path):
    from harmonixr.midi.corpora import asap_performer, asap_work

    assert asap_work("Beethoven/Piano_Sonatas/24-1_no_2_repeat") == "Beethoven/Piano_Sonatas/24-1"
    assert asap_work("Schumann/Toccata_repeat") == "Schumann/Toccata"
    assert asap_work("Schumann/Kreisleriana/1_no_first_repeat") == "Schumann/Kreisleriana/1"
    assert asap_performer("x/Shi05M.mid") == "shi" and asap_performer("x/midi_score.mid") == ""
    assert asap_performer("a/FALIKS03.mid") == asap_performer("b/Faliks07.mid") == "faliks"
    assert asap_performer("a/Lee_E02.mid") == asap_performer("b/LeeE05.mid") == "leee"
    listing = read_corpus(_asap_like(tmp_path))
    by_name = {p.path.split("/", len(str(tmp_path).split("/")))[-1]: p for p in listing.pieces}
    g = {k: v.group for k, v in by_name.items()}
    b = "Beethoven/Piano_Sonatas/"
    assert g[b + "26-1/Lee01.mid"] == g[b + "26-1_no_repeat/Kim02M.mid"] == g[b + "26-2/Lee02.mid"]
    assert len({g[b + f] for f in ("24-1/Ann03.mid", "24-1_no_2_repeat/Bo04.mid")}) == 1
    assert g["Bach/Prelude/bwv_846/Shi05M.mid"] == g["Bach/Fugue/bwv_846/Shi06M.mid"]
    assert g["Schumann/Kreisleriana/2/Jo02.mid"] == g["Schumann/Kreisleriana/1/Jo01.mid"]
    assert g["Schumann/Toccata/Hu01.mid"] == g["Schumann/Toccata_repeat/Io01.mid"]
    assert g["Bach/Fugue/bwv_850/Fox01.mid"] != g["Bach/Fugue/bwv_852/Gil01.mid"]
    shi = by_name["Bach/Fugue/bwv_846/Shi06M.mid"]
    assert shi.performer == "shi" and shi.source.endswith("r2.midi")
    assert shi.work == "Bach/Fugue/bwv_846"
    # 26-1 24-1 18-2 26-2 1-1 2-1, 846 P+F, 848 850 852, Toccata, Kreisleriana 1+2, Arabeske
    assert len({p.work for p in listing.pieces}) == 15
    scores = read_corpus(tmp_path, include_scores=True)
    score = next(p for p in scores.pieces if p.path.endswith("26-2/midi_score.mid"))
    assert score.group == g[b + "26-1/Lee01.mid"] and score.performer == ""
    assert score.kind == "score" and shi.kind == "performance"


def test_asap_like_groups_never_straddle_a_split(tmp_path):
    from harmonixr.data.splits import make_split

    pieces = read_corpus(_asap_like(tmp_path), include_scores=True).pieces
    for seed in range(20):
        split = make_split(pieces, "group", (0.6, 0.2, 0.2), seed=seed)
        side = {}
        for name, idx in split.items():
            for i in idx:
                for key in (pieces[i].group, pieces[i].work, pieces[i].source or None):
                    if key is not None:
                        assert side.setdefault(key, name) == name, (seed, key)
        # byte-identical performances (Schmitt01 in 18-2 and 18-2_no_repeat) share a side
        schmitt = {n for n, idx in split.items() for i in idx if "Schmitt01" in pieces[i].path}
        assert len(schmitt) == 1


def test_hidden_files_are_not_music(tmp_path):
    from harmonixr._files import temp_path
    from harmonixr.midi.corpora import music_files

    note = [(0, 480 * 12, 60, 80)]
    (tmp_path / "Bach").mkdir()
    kept = write_score(tmp_path / "Bach" / "a.mid", note)
    # what a killed writer leaves: a temporary name in the same folder, suffix kept
    write_score(temp_path(tmp_path / "Bach" / "b.mid"), note)
    (tmp_path / ".trash").mkdir()
    write_score(tmp_path / ".trash" / "c.mid", note)
    assert music_files(tmp_path) == [kept]
