"""A labelled multi-source corpus cached beside an ASAP-like folder: readers, units across
sources, recitals, and the cross-validation folds (tests write every file they read)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from midi_factory import write_score

from harmonixr.data.cache import TensorCache, preprocess
from harmonixr.data.splits import check_manifest, fold_split, split_manifest
from harmonixr.midi.corpora import asap_collection, read_corpus

HEADER = "path,composer,title,work,movement,asap_work,source,licence,converter,kind,edition"


def _notes(i: int, n: int = 30) -> list[tuple[int, int, int, int]]:
    return [(240 * k, 240, 48 + (k * (i + 3)) % 30, 70) for k in range(n)]


def make_manifest_corpus(root: Path) -> Path:
    """Two sources; 'Chopin op.10 no.1' in both (and in two editions of one), a two-movement
    sonata whose movements link to two ASAP folders, and pieces of their own."""
    rows = [
        # path, composer, title, work, movement, asap_work, source, licence, converter, edition
        (
            "a/Chopin/e1.mid",
            "Chopin",
            "Etude 1",
            "Chopin op.10 no.1",
            "",
            "Chopin/Etudes_op_10/1",
            "srcA",
            "CC-BY-4.0",
            "verovio",
            "",
        ),
        (
            "b/Chopin/e1-1a.mid",
            "Chopin",
            "Etude 1",
            "Chopin op.10 no.1",
            "",
            "",
            "srcB",
            "CC-BY-4.0",
            "mscore",
            "1a-BH",
        ),
        (
            "b/Chopin/e1-2.mid",
            "Chopin",
            "Etude 1",
            "Chopin op.10 no.1",
            "",
            "",
            "srcB",
            "CC-BY-4.0",
            "mscore",
            "2-Sm",
        ),
        (
            "a/Chopin/e2.mid",
            "Chopin",
            "Etude 2",
            "Chopin op.10 no.2",
            "",
            "",
            "srcA",
            "CC-BY-4.0",
            "verovio",
            "",
        ),
        (
            "a/Beethoven/s21-1.mid",
            "Beethoven",
            "Sonata 21 I",
            "Beethoven op.53",
            "1",
            "Beethoven/Piano_Sonatas/21-1_no_repeat",
            "srcA",
            "public-domain",
            "verovio",
            "",
        ),
        (
            "a/Beethoven/s21-2.mid",
            "Beethoven",
            "Sonata 21 II",
            "Beethoven op.53",
            "2",
            "Beethoven/Piano_Sonatas/21-2",
            "srcA",
            "public-domain",
            "verovio",
            "",
        ),
        (
            "b/Grieg/l1.mid",
            "Grieg",
            "Lyric 1",
            "Grieg op.12 no.1",
            "",
            "",
            "srcB",
            "CC-BY-4.0",
            "mscore",
            "",
        ),
        (
            "b/Grieg/l2.mid",
            "Grieg",
            "Lyric 2",
            "Grieg op.12 no.2",
            "",
            "",
            "srcB",
            "CC-BY-4.0",
            "mscore",
            "",
        ),
    ]
    lines = [HEADER]
    for i, (path, *rest) in enumerate(rows):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        write_score(root / path, _notes(i))
        cells = [path, *rest[:8], "score", rest[8]]
        lines.append(",".join(cells))
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    return root


def make_asap(root: Path) -> Path:
    """ASAP-like: the etude (two pianists), the sonata's two movements played by one pianist
    with no MAESTRO recording (a recital), and a piece of its own."""
    rows = [
        ("Chopin", "Etude_1", "Chopin/Etudes_op_10/1", "Ann01.mid", "r1"),
        ("Chopin", "Etude_1", "Chopin/Etudes_op_10/1", "Bob02.mid", ""),
        ("Chopin", "Etude_3", "Chopin/Etudes_op_10/3", "Cy01.mid", ""),
        ("Beethoven", "Sonata_21-1", "Beethoven/Piano_Sonatas/21-1", "Dee01.mid", ""),
        ("Beethoven", "Sonata_21-3", "Beethoven/Piano_Sonatas/21-3", "Dee02.mid", ""),
        ("Beethoven", "Sonata_23-1", "Beethoven/Piano_Sonatas/23-1", "Dee03.mid", ""),
        ("Beethoven", "Sonata_23-1", "Beethoven/Piano_Sonatas/23-1", "Eve01.mid", ""),
        ("Schumann", "Kreisleriana_1", "Schumann/Kreisleriana/1", "Fu01.mid", ""),
        ("Schumann", "Kreisleriana_5", "Schumann/Kreisleriana/5", "Fu05.mid", ""),
        ("Schumann", "Kreisleriana_3", "Schumann/Kreisleriana/3", "Gil01.mid", ""),
        # one recital, each movement its own MAESTRO file, or none
        ("Schumann", "Kreisleriana_2", "Schumann/Kreisleriana/2", "Park04M.mid", "r7"),
        ("Schumann", "Kreisleriana_4", "Schumann/Kreisleriana/4", "Park05M.mid", "r8"),
        ("Schumann", "Kreisleriana_6", "Schumann/Kreisleriana/6", "Park06.mid", ""),
    ]
    lines = ["composer,title,folder,xml_score,midi_score,midi_performance,maestro_midi_performance"]
    for i, (composer, title, folder, name, rec) in enumerate(rows):
        (root / folder).mkdir(parents=True, exist_ok=True)
        write_score(root / folder / name, _notes(20 + i))
        maestro = f"{{maestro}}/2008/{rec}.midi" if rec else ""
        lines.append(f"{composer},{title},{folder},x,,{folder}/{name},{maestro}")
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    return root


def test_manifest_reader_records_labels(tmp_path):
    listing = read_corpus(make_manifest_corpus(tmp_path / "scores"))
    assert listing.format == "manifest" and not listing.skipped and len(listing.pieces) == 8
    by = {Path(p.path).name: p for p in listing.pieces}
    e = by["e1-1a.mid"]
    assert (e.work, e.group, e.kind, e.edition, e.licence) == (
        "Chopin op.10 no.1",
        "Chopin op.10 no.1",
        "score",
        "1a-BH",
        "CC-BY-4.0",
    )
    assert e.source == "srcB/mscore"
    # the ASAP link loses ASAP's repeat suffix, so it names ASAP's work
    assert by["s21-1.mid"].links == "Beethoven/Piano_Sonatas/21-1"


def test_manifest_errors_name_the_problem(tmp_path):
    root = tmp_path / "bad"
    root.mkdir()
    (root / "metadata.csv").write_text("path,composer,work\nmissing.mid,X,X w\nx.mid,,w\n")
    write_score(root / "x.mid", _notes(0))
    listing = read_corpus(root)
    assert [r for _, r in listing.skipped] == [
        "listed in metadata.csv but missing",
        "no composer or no work given",
    ]
    (root / "labels.csv").write_text("path,composer,work,kind\nx.mid,X,X w,vinyl\n")
    listing = read_corpus(root, labels=root / "labels.csv")
    assert listing.format == "manifest" and "vinyl" in listing.skipped[0][1]


def test_asap_recitals_join_one_pianists_collection(tmp_path):
    assert asap_collection("Beethoven/Piano_Sonatas/21-1") == "Beethoven/Piano_Sonatas/21"
    assert asap_collection("Bach/Fugue/bwv_846") == asap_collection("Bach/Prelude/bwv_846")
    assert asap_collection("Schumann/Kreisleriana/3") == "Schumann/Kreisleriana"
    assert asap_collection("Liszt/Sonata") == "Liszt/Sonata"
    g = {Path(p.path).name: p.group for p in read_corpus(make_asap(tmp_path)).pieces}
    assert g["Dee01.mid"] == g["Dee02.mid"]  # one sonata, one pianist, no recording id
    assert g["Dee03.mid"] == g["Eve01.mid"] != g["Dee01.mid"]  # another sonata
    assert g["Fu01.mid"] == g["Fu05.mid"] != g["Gil01.mid"]  # one pianist's Kreisleriana
    # a recital whose movements are separate MAESTRO files (or none) is still one group
    assert g["Park04M.mid"] == g["Park05M.mid"] == g["Park06.mid"]
    assert g["Ann01.mid"] == g["Bob02.mid"] != g["Cy01.mid"]


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    root = tmp_path_factory.mktemp("multi")
    asap, scores = make_asap(root / "asap"), make_manifest_corpus(root / "scores")
    preprocess(asap, root / "cache", workers=1)
    preprocess(scores, root / "cache", workers=1)
    return root


def test_one_cache_two_sources_units_span_sources(both):
    with TensorCache(both / "cache") as cache:
        rows = cache.pieces()
        raw = cache.pieces(joined=False)
    assert len(rows) == 21 and {r.kind for r in rows} == {"score", "performance"}
    unit = {Path(r.path).name: r.group for r in rows}
    # every edition and source of the etude with its two ASAP performances
    etude = {unit[n] for n in ("e1.mid", "e1-1a.mid", "e1-2.mid", "Ann01.mid", "Bob02.mid")}
    assert len(etude) == 1
    # the sonata: score movements (one work key) ∪ ASAP 21-1 ∪ the recital 21-1 + 21-3
    assert unit["s21-1.mid"] == unit["s21-2.mid"] == unit["Dee01.mid"] == unit["Dee02.mid"]
    assert unit["Dee03.mid"] != unit["Dee01.mid"]
    assert len({unit[n] for n in ("e2.mid", "l1.mid", "l2.mid", "Cy01.mid")}) == 4
    # the reader's own groups are kept in the cache
    assert {Path(r.path).name: r.group for r in raw}["e1.mid"] == "Chopin op.10 no.1"


def test_compositions_are_movements_joined_across_sources_by_their_links(both):
    from harmonixr.search.works import compositions

    with TensorCache(both / "cache") as cache:
        rows = cache.pieces()
    by = {Path(r.path).name: r for r in rows}
    assert by["s21-1.mid"].movement == "1" and by["s21-1.mid"].composition_names == [
        "Beethoven op.53 / 1",
        "Beethoven/Piano_Sonatas/21-1",
    ]
    work = dict(zip(by, compositions([r.composition_names for r in by.values()]), strict=True))
    # one unit, but three compositions: the score's first movement is ASAP's 21-1 performance
    assert work["s21-1.mid"] == work["Dee01.mid"] != work["s21-2.mid"] != work["Dee02.mid"]
    etude = {work[n] for n in ("e1.mid", "e1-1a.mid", "e1-2.mid", "Ann01.mid", "Bob02.mid")}
    assert len(etude) == 1


def test_no_work_edition_or_recital_crosses_a_fold(both):
    with TensorCache(both / "cache") as cache:
        rows = cache.pieces()
    names = {
        "work": lambda r: r.work_id,
        "link": lambda r: r.links or None,
        "recording": lambda r: r.source if r.kind == "performance" and r.source else None,
        "recital": lambda r: (r.performer, asap_collection(r.work)) if r.performer else None,
    }
    for seed in range(15):
        tested = []
        for k in range(3):
            split = fold_split(rows, 3, k, seed, val_fraction=0.2)
            tested += split["test"]
            for what, key in names.items():
                side: dict = {}
                for s, idx in split.items():
                    for i in idx:
                        if (v := key(rows[i])) is not None:
                            assert side.setdefault(v, s) == s, (seed, k, what, v)
            # the links (ASAP folder of a score) sit with the ASAP work of that name
            sides = {rows[i].work_id: s for s, idx in split.items() for i in idx}
            for s, idx in split.items():
                for i in idx:
                    if rows[i].links in sides:
                        assert sides[rows[i].links] == s
        assert sorted(tested) == list(range(len(rows)))  # every piece tested exactly once


def test_adding_a_file_moves_only_its_own_unit(both, tmp_path):
    with TensorCache(both / "cache") as cache:
        rows = cache.pieces()
    from dataclasses import replace

    extra = replace(
        rows[0],
        path="/new/piece.mid",
        group="Grieg op.99",
        work="Grieg op.99",
        sha256="f" * 64,
        links="",
    )
    for seed in range(10):
        for k in range(5):
            before = fold_split(rows, 5, k, seed)
            after = fold_split([*rows, extra], 5, k, seed)
            for s in before:
                assert [i for i in after[s] if i < len(rows)] == before[s]


def test_unseen_composer_folds_deal_composers(both):
    with TensorCache(both / "cache") as cache:
        rows = cache.pieces()
    seen_as_test = set()
    for k in range(3):
        split = fold_split(rows, 3, k, 0, mode="unseen-composer", val_fraction=0.2)
        test = {rows[i].composer for i in split["test"]}
        other = {rows[i].composer for s in ("train", "val") for i in split[s]}
        assert not test & other
        seen_as_test |= test
    assert seen_as_test == {r.composer for r in rows}


def test_unseen_composer_folds_never_cut_a_unit_shared_by_two_composers():
    from types import SimpleNamespace as P

    # one file labelled with two composers (same content) and a work key shared by mistake
    pieces = [
        P(path="a", composer="A", group="w1", sha256="x"),
        P(path="b", composer="B", group="w2", sha256="x"),
        P(path="c", composer="C", group="w3", sha256="y"),
        P(path="d", composer="D", group="w3", sha256="z"),
        *[P(path=f"e{k}", composer=f"E{k}", group=f"v{k}", sha256=f"s{k}") for k in range(12)],
    ]
    for seed in range(10):
        for k in range(3):
            split = fold_split(pieces, 3, k, seed, mode="unseen-composer", val_fraction=0.2)
            side = {pieces[i].path: s for s, idx in split.items() for i in idx}
            assert side["a"] == side["b"] and side["c"] == side["d"], (seed, k)


def test_validation_is_drawn_afresh_in_each_fold(both):
    with TensorCache(both / "cache") as cache:
        rows = cache.pieces()
    vals = [frozenset(fold_split(rows * 1, 2, k, 3, val_fraction=0.4)["val"]) for k in range(2)]
    tests = [frozenset(fold_split(rows, 2, k, 3, val_fraction=0.4)["test"]) for k in range(2)]
    assert not vals[0] & tests[0] and not vals[1] & tests[1]
    # fold 1's validation is not fold 0's validation minus fold 1's test side
    assert vals[1] != vals[0] - tests[1]


def test_split_manifest_refuses_a_changed_cache(both):
    with TensorCache(both / "cache") as cache:
        rows = cache.pieces()
    split = fold_split(rows, 3, 0, 0, val_fraction=0.2)
    manifest = json.loads(json.dumps(split_manifest(rows, split, folds=3, fold=0)))
    check_manifest(manifest, split, rows, "run")  # unchanged: accepted
    from dataclasses import replace

    changed = [replace(rows[0], sha256="0" * 64), *rows[1:]]
    with pytest.raises(ValueError, match="no longer matches.*1 pieces changed"):
        check_manifest(manifest, split, changed, "run")
    fewer = rows[1:]
    with pytest.raises(ValueError, match="1 vanished"):
        check_manifest(manifest, fold_split(fewer, 3, 0, 0, val_fraction=0.2), fewer, "run")


def test_info_counts_per_composer_source_and_kind(both):
    with TensorCache(both / "cache") as cache:
        table = cache.breakdown()
    chopin = {
        (r["source"], r["kind"]): (r["pieces"], r["works"])
        for r in table
        if r["composer"] == "Chopin"
    }
    assert chopin == {
        ("srcB/mscore", "score"): (2, 1),  # two editions of one work
        ("srcA/verovio", "score"): (2, 2),
        ("asap", "performance"): (3, 2),  # recordings are not sources: one row for ASAP
    }


def test_group_pair_weights_count_each_pair_of_units_once():
    from harmonixr.evaluate.bootstrap import Bootstrap
    from harmonixr.evaluate.metrics import group_pair_weights
    from harmonixr.evaluate.verification import Pairs, pair_figures

    def verification_figures(p, n_units, resamples, seed):
        units = np.arange(n_units + 1)  # pieces 0…n_units, piece k of unit k
        pairs = Pairs(p["d"], p["y"], p["ua"], p["ub"], units, np.full(len(p["d"]), "other"))
        fig = pair_figures(pairs, Bootstrap(resamples, seed))
        return {k: v["value"] if isinstance(v, dict) else v for k, v in fig.items()}

    ua, ub = np.array([0, 0, 0, 1]), np.array([1, 1, 2, 0])
    np.testing.assert_allclose(group_pair_weights(ua, ub), [1 / 3, 1 / 3, 1.0, 1 / 3])
    # unit 0 ↔ 1: three pairs, all ranked right; 0 ↔ 2 one pair ranked wrong.
    # pair-weighted: positives (0,1,3) d = .1 .2 .3; negative (2) d = .25 → 2 of 3 right
    d = np.array([0.1, 0.2, 0.25, 0.3])
    y = np.array([True, True, False, True])
    p = {"d": d, "y": y, "ua": ua, "ub": ub}
    fig = verification_figures(p, 3, resamples=50, seed=0)
    assert fig["auc"] == pytest.approx(2 / 3)
    assert fig["auc_gpe"] == pytest.approx(2 / 3)  # one positive unit pair: same ranking
    # positives: units 0↔1 twice (d .1 .2), 0↔3 once (d .5); negative 0↔2 (d .3)
    ua, ub = np.array([0, 0, 0, 0]), np.array([1, 1, 3, 2])
    p2 = {
        "d": np.array([0.1, 0.2, 0.5, 0.3]),
        "y": np.array([1, 1, 1, 0], bool),
        "ua": ua,
        "ub": ub,
    }
    fig2 = verification_figures(p2, 4, resamples=50, seed=0)
    assert fig2["auc"] == pytest.approx(2 / 3)  # pieces: .1 and .2 right, .5 wrong
    assert fig2["auc_gpe"] == pytest.approx(1 / 2)  # unit pairs: 0↔1 right, 0↔3 wrong


def _labelled_cache(midi: Path, lines: list[str], cache: Path):
    """Write the manifest, cache the folder, and return a tiny training config for it."""
    from tiny_runs import tiny_config

    (midi / "metadata.csv").write_text("\n".join(lines) + "\n")
    preprocess(midi, cache, workers=1)
    return tiny_config(  # data and out: set per fold
        loss="supcon",
        crop_seconds=4,
        max_steps=4,
        steps_per_epoch=2,
        warmup_steps=1,
        val_pairs=20,
        split_fractions=(0.8, 0.1, 0.1),
        checkpoint_every_steps=200,
    )


def test_crossval_trains_each_fold_resumes_and_pools(tmp_path):
    """Two folds of a tiny model on two synthetic composers (scores and 'performances' of
    shared works): every piece is tested once, a rerun trains nothing, and the pooled report
    has finite figures for the model and the baselines, with choices from validation only."""
    from midi_factory import synthetic_corpus

    from harmonixr.experiments.cv import FoldPlan, pooled_report, run_folds

    midi = synthetic_corpus(tmp_path / "midi", n_per=16, seconds=12)
    lines = ["path,composer,work,kind,source"]
    for k, p in enumerate(sorted(midi.rglob("*.mid"))):
        rel = p.relative_to(midi)
        # pieces k and k+1 of a composer render one work: a score and a performance
        work = f"{p.parent.name} w{k // 2}"
        kind = "score" if k % 2 else "performance"
        lines.append(f"{rel},{p.parent.name},{work},{kind},{'eng' if k % 2 else 'piano'}")
    cfg = _labelled_cache(midi, lines, tmp_path / "cache").replace(max_steps=6, steps_per_epoch=3)
    plan = FoldPlan(folds=2, seed=0, mode="group", val_fraction=0.2)
    out = run_folds(tmp_path / "cache", tmp_path / "cv", cfg, plan)
    stamps = [(out / f"fold-{k}" / "embeddings.npz").stat().st_mtime_ns for k in range(2)]
    run_folds(tmp_path / "cache", tmp_path / "cv", cfg, plan)  # resumed: nothing to do
    assert stamps == [(out / f"fold-{k}" / "embeddings.npz").stat().st_mtime_ns for k in range(2)]
    with pytest.raises(ValueError, match="records another cross-validation"):
        run_folds(tmp_path / "cache", tmp_path / "cv", cfg, FoldPlan(3, 0, "group", 0.2))
    rep = pooled_report(out, resamples=30, min_works=1)  # a few works per fold
    for key in ("attribution", "attribution_probe"):
        a = rep["methods"]["SiaViT"][key]
        assert 0 <= a["top1"]["value"] <= 1 and a["pieces"] > 0
        assert a["top3"]["value"] == 1.0  # two composers
    tested = sum(s["test"] for s in rep["fold_sizes"])
    assert tested == rep["pieces"] == 32
    for name in ("SiaViT", "logistic regression, 5 histograms", "pitch_class histogram"):
        m = rep["methods"][name]
        assert 0.0 <= m["verify"]["auc"]["value"] <= 1.0, name
        assert m["verify"]["pairs"] > 0
    assert set(rep["choices"]["logistic regression, 5 histograms"][0]) == {
        "C",
        "val_auc",
        "scored_by",
    }
    assert rep["choices_made_on"] == "each fold's validation side"
    assert (out / "report.md").read_text().startswith("# Cross-validation: 2 folds")
    # the CLI resumes the recorded job (no --data, no --config) and pools it
    from typer.testing import CliRunner

    from harmonixr.cli import app

    res = CliRunner().invoke(
        app, ["evaluate", str(out), "--folds", "2", "--resamples", "20", "--no-baselines", "--json"]
    )
    assert res.exit_code == 0, res.output
    assert json.loads((out / "report.json").read_text())["folds_reported"] == [0, 1]
    # --split val measures the validation sides (for choosing a recipe), never the test sides
    res = CliRunner().invoke(
        app,
        [
            "evaluate",
            str(out),
            "--folds",
            "2",
            "--split",
            "val",
            "--resamples",
            "20",
            "--no-baselines",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    val = json.loads((out / "report-val.json").read_text())
    assert val["measured_on"] == "val"
    assert [s["test"] for s in val["fold_sizes"]] == [s["val"] for s in rep["fold_sizes"]]
    one = pooled_report(out, resamples=20, baselines=False, only=[1])
    assert one["folds_reported"] == [1] and set(one["methods"]) == {"SiaViT"}
    assert sum(s["test"] for s in one["fold_sizes"]) == rep["fold_sizes"][1]["test"]
    assert "only (not the whole corpus)" in (out / "report-folds-1.md").read_text()
    assert (
        "kind" in rep["methods"]["SiaViT"]["source_probe"]
        or not (rep["methods"]["SiaViT"]["source_probe"])
    )
    # a fold run is a run: its split manifest gives the index its centroids and calibration
    from harmonixr.search.index import build_index

    index = build_index(out / "fold-1", tmp_path / "cache")
    assert len(index) == 32 and sorted(index.known) == ["High", "Low"]


def test_unseen_composer_crossval_never_trains_on_a_test_composer(tmp_path):
    from midi_factory import synthetic_corpus

    from harmonixr.experiments.cv import FoldPlan, pooled_report, run_folds

    midi = synthetic_corpus(tmp_path / "midi", n_per=12, seconds=10)
    lines, composer_of = ["path,composer,work"], {}
    for k, p in enumerate(sorted(midi.rglob("*.mid"))):
        composer = f"{p.parent.name}-{k % 3}"  # six composers, two styles
        composer_of[str(p)] = composer
        lines.append(f"{p.relative_to(midi)},{composer},{composer} w{k}")
    cfg = _labelled_cache(midi, lines, tmp_path / "cache")
    plan = FoldPlan(folds=3, seed=0, mode="unseen-composer", val_fraction=0.15)
    out = run_folds(tmp_path / "cache", tmp_path / "cv", cfg, plan)
    tested = set()
    for k in range(3):
        split = json.loads((out / f"fold-{k}" / "split.json").read_text())
        who = {s: {composer_of[e["path"]] for e in split[s]} for s in ("train", "val", "test")}
        assert who["test"] and not who["test"] & (who["train"] | who["val"]), k
        tested |= who["test"]
    assert tested == set(composer_of.values())  # every composer is unseen once
    rep = pooled_report(out, resamples=20)
    assert "attribution" not in rep["methods"]["SiaViT"]  # no composer of the test is known
    assert rep["methods"]["SiaViT"]["verify"]["pairs"] > 0
    assert rep["methods"]["logistic regression, 5 histograms"]["verify"]["pairs"] > 0
