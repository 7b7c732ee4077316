"""Open set from real strangers: figures checked by hand, folds that refuse a leak, an index
measured on its test side with the held-out figures stored beside the fitted-on ones, and a
shipped split that a rebuild must reproduce."""

from __future__ import annotations

import json

import numpy as np
import pytest

from harmonixr.data.splits import compare_manifests, portable_manifest
from harmonixr.evaluate.metrics import confidence_ece
from harmonixr.evaluate.openset import known_examples, open_set_figures, stranger_examples
from harmonixr.evaluate.protocols import Fold
from harmonixr.evaluate.records import Side
from harmonixr.evaluate.unknown import operating_point


def test_open_set_figures_by_hand():
    # known: p 0.1, 0.6 (called unknown at 0.5), 0.2 ; strangers: 0.9, 0.4 (missed)
    pk, ps = np.array([0.1, 0.6, 0.2]), np.array([0.9, 0.4])
    right = np.array([True, True, False])  # the closed-set answer for known pieces
    units = np.array(["a", "b", "c", "s1", "s2"])
    f = open_set_figures(pk, ps, 0.5, right, units, resamples=20, seed=0)
    assert f["known_called_unknown"]["value"] == pytest.approx(1 / 3)
    assert f["strangers_caught"]["value"] == pytest.approx(1 / 2)
    # known answers right: piece 0 only (piece 1 called unknown, piece 2 wrong composer)
    assert f["answer_accuracy_known"]["value"] == pytest.approx(1 / 3)
    assert f["answer_accuracy_strangers"]["value"] == pytest.approx(1 / 2)
    # AUC: stranger 0.9 beats all 3 known, 0.4 beats 0.1 and 0.2 → 5 of 6
    assert f["detection_auc"]["value"] == pytest.approx(5 / 6)
    lo, hi = f["detection_auc"]["lo"], f["detection_auc"]["hi"]
    assert lo <= 5 / 6 <= hi


def test_operating_point_is_the_validation_quantile_but_never_below_one_half():
    assert operating_point(np.linspace(0, 1, 101)) == pytest.approx(0.9)
    assert operating_point(np.full(10, 0.1)) == 0.5
    assert operating_point(np.zeros(0)) == 0.5


def _side(rng, centres: dict[str, np.ndarray], per: int, tag: str) -> Side:
    emb, comp, group = [], [], []
    for c, v in centres.items():
        for k in range(per):
            e = v + 0.3 * rng.standard_normal(v.size)
            emb.append(e / np.linalg.norm(e))
            comp.append(c)
            group.append(f"{tag}{c}{k}")
    return Side.of(np.asarray(emb), comp, group)


def test_known_and_stranger_examples_keep_their_roles():
    rng = np.random.default_rng(0)
    centres = {c: rng.standard_normal(12) for c in "ABCDE"}
    known = {c: centres[c] for c in "ABC"}
    fold = Fold(
        _side(rng, known, 12, "t"),
        _side(rng, known, 6, "v"),
        # a by-group test side: known composers' other works and one composer never trained
        Side.concat([_side(rng, known, 5, "x"), _side(rng, {"D": centres["D"]}, 4, "y")]),
    )
    ex = known_examples(fold, seed=0)
    assert len(ex["x_known"]) == 15 and len(ex["x_strangers"]) == 4
    assert set(ex["composer_strangers"]) == {"D"} and len(ex["x_cal"]) == 18
    # strangers look less known than known pieces on the top similarity
    assert np.median(ex["x_strangers"][:, 0]) < np.median(ex["x_known"][:, 0])
    unseen = Fold(
        fold.train, _side(rng, {"D": centres["D"]}, 3, "w"), _side(rng, {"E": centres["E"]}, 5, "z")
    )
    st = stranger_examples(unseen, min_works=1)
    assert len(st["x"]) == 8 and set(st["composer"]) == {"D", "E"}
    leaky = Fold(unseen.train, unseen.val, _side(rng, {"A": centres["A"]}, 3, "q"))
    with pytest.raises(ValueError, match="also train the encoder"):
        stranger_examples(leaky, min_works=1)


def test_shipped_split_check_accepts_moved_paths_and_refuses_moved_files(tmp_path):
    root = tmp_path / "corpus"
    (root / "a").mkdir(parents=True)
    manifest = {
        "seed": 0,
        "train": [{"path": str(root / "a/x.mid"), "sha256": "1", "group": "g1"}],
        "val": [{"path": str(root / "a/y.mid"), "sha256": "2", "group": "g2"}],
        "test": [{"path": str(root / "a/z.mid"), "sha256": "3", "group": "g3"}],
    }
    shipped = portable_manifest(manifest, root)
    assert shipped["train"][0]["path"] == "a/x.mid" and shipped["seed"] == 0
    (tmp_path / "shipped.json").write_text(json.dumps(shipped))
    (tmp_path / "same.json").write_text(json.dumps(manifest))
    compare_manifests(tmp_path / "shipped.json", tmp_path / "same.json")
    manifest["val"], manifest["test"] = manifest["test"], manifest["val"]
    (tmp_path / "moved.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="2 files changed side or group"):
        compare_manifests(tmp_path / "shipped.json", tmp_path / "moved.json")
    with pytest.raises(ValueError, match="not under"):
        portable_manifest(manifest, tmp_path / "elsewhere")
    # the same content on two sides is not one file: it must match as often as it was shipped
    manifest["val"], manifest["test"] = manifest["test"], manifest["val"]
    manifest["test"].append({"path": str(root / "a/copy.mid"), "sha256": "1", "group": "g1"})
    (tmp_path / "copied.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="1 are new"):
        compare_manifests(tmp_path / "shipped.json", tmp_path / "copied.json")
    manifest["test"][-1]["sha256"] = None
    (tmp_path / "nohash.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="needs every file's sha256"):
        compare_manifests(tmp_path / "shipped.json", tmp_path / "nohash.json")


def test_measure_index_stores_held_out_figures_beside_fitted_ones(search_run_copy, tmp_path):
    from harmonixr.api import Harmonixr
    from harmonixr.search.measure import measure_index, measure_markdown, store_held_out

    run = search_run_copy
    cache = json.loads((run / "config.json").read_text())["train"]["data"]
    report = measure_index(run, cache, resamples=20)
    test = json.loads((run / "split.json").read_text())["test"]
    c = report["composer"]
    assert c["measured_on"] == "test" and c["pieces"] == len(test)
    assert 0.0 <= c["answer_accuracy"]["value"] <= 1.0
    assert report["verify"]["measured_on"] == "test"
    assert report["timeline"]["windows"] > 0
    assert "# The shipped answers" in measure_markdown(report)
    chance = c["ece_by_chance"]
    assert chance["measured"] == pytest.approx(c["ece"]["value"])
    assert 0.0 <= chance["p_value"] <= 1.0 and chance["expected_if_calibrated"] > 0.0
    shown = report["composer_as_shown"]
    assert shown["pieces"] == c["pieces"] and 0 <= shown["work_named"] <= shown["pieces"]
    assert "by chance alone" in measure_markdown(report)
    store_held_out(run, report)
    info = Harmonixr.load(run).info()
    assert info["calibration"]["held_out"]["composer"]["pieces"] == len(test)
    assert info["calibration"]["verify"]["measured_on"].startswith("validation")
    # measured again after a withdrawal, "someone else" is measured as fitted, not as withdrawn:
    # a detector that calls every piece unknown is seen doing so (withdrawn, it would say 0)
    cal_path = run / "index" / "calibration.json"
    cal = json.loads(cal_path.read_text())
    cal.update(open_set_withdrawn=True, unknown_bias=30.0)
    cal["unknown_coef"] = [0.0] * len(cal["unknown_coef"])
    cal_path.write_text(json.dumps(cal))
    again = measure_index(run, cache, resamples=20)
    assert again["open_set_test_side"]["known_called_unknown"]["value"] == 1.0
    assert again["known_works"] == report["known_works"]


def test_answer_as_shown_is_what_attribute_shows(search_run_copy):
    from dataclasses import replace

    from harmonixr.evaluate.records import Side
    from harmonixr.results import Identification
    from harmonixr.search.index import Index
    from harmonixr.search.measure import _Measure

    index = Index.load(search_run_copy / "index")
    # as shipped: "someone else" withdrawn, every table over the named composers
    index.calibration = replace(index.calibration, open_set_withdrawn=True)
    m = _Measure(index, 20, 0)
    names = list(index.calibration.composers)
    emb = np.asarray(index.store.vectors[:6], np.float64)
    # works: not named (p < 0.5), named for a composer the model names (either one), named for
    # a composer it cannot name, none sharing a pattern (p 0)
    composers = np.array([names[0], names[1], names[0], "Nobody", names[1], "?"], dtype=object)
    p_work = np.array([0.3, 0.7, 0.95, 0.9, 0.51, 0.0])
    said, conf, named = m.shown(emb, composers, p_work)
    assert named.tolist() == [False, True, True, True, True, False]
    for q in range(6):
        work = Identification(p_work[q] >= 0.5, float(p_work[q]), composers[q], "w", 2, 0.5)
        rows = index.attributions(emb[q : q + 1], len(names), work=work)
        assert rows[0].composer == said[q]
        assert rows[0].probability == pytest.approx(conf[q])
    # measured: the answers' accuracy over these pieces, by the truth given
    truth = [str(x) for x in said[:3]] + ["Nobody", names[0], names[1]]
    side = Side.of(emb, truth, [f"g{i}" for i in range(6)])
    got = m.as_shown(side, composers, p_work)
    want = np.mean(np.array(truth, dtype=object) == said)
    assert got["work_named"] == 4 and got["answer_accuracy"]["value"] == pytest.approx(want)
    right = np.array(truth, dtype=object) == said
    assert got["ece"]["value"] == pytest.approx(confidence_ece(conf, right))
    assert got["ece_work_named"]["value"] == pytest.approx(
        confidence_ece(conf[named], right[named])
    )
    assert got["ece_no_work"]["value"] == pytest.approx(confidence_ece(conf[~named], right[~named]))
    assert got["answer_accuracy_no_work"]["value"] == pytest.approx(right[~named].mean())


def test_stratified_auc_counts_only_pairs_inside_a_stratum():
    from harmonixr.evaluate.metrics import StratifiedAUC

    # stratum a: positive d 0.1 vs negative 0.2 → 1; stratum b: positive 0.5 vs negative 0.3
    # → 0; pooled over strata it would compare 0.1 with 0.3 too. Weighted 1·1 each: 0.5
    d = np.array([0.1, 0.2, 0.5, 0.3])
    y = np.array([True, False, True, False])
    assert StratifiedAUC(d, y, np.array(["a", "a", "b", "b"]))() == pytest.approx(0.5)
    # a stratum with one class only does not count
    assert StratifiedAUC(d[:3], y[:3], np.array(["a", "a", "b"]))() == pytest.approx(1.0)
    assert np.isnan(StratifiedAUC(d[:1], y[:1], np.array(["a"]))())


def _performers(rng, hears: bool):
    # three composers, three performers; each piece its own group. An embedding that hears
    # the performer adds the performer's direction; one that does not adds noise only.
    comp, perf, emb = [], [], []
    cdir = rng.standard_normal((3, 16))
    pdir = rng.standard_normal((3, 16)) * 2.0
    for c in range(3):
        for p in range(3):
            for _ in range(4):
                e = cdir[c] + 0.5 * rng.standard_normal(16) + (pdir[p] if hears else 0.0)
                emb.append(e / np.linalg.norm(e))
                comp.append(f"C{c}")
                perf.append(f"P{p}")
    return Side.of(np.asarray(emb), comp, performer=perf)


def test_performer_control_fails_when_the_embedding_hears_the_performer():
    from harmonixr.evaluate.bootstrap import Bootstrap
    from harmonixr.evaluate.verification import performer_control

    rng = np.random.default_rng(0)
    boot = Bootstrap(resamples=30)
    hears = performer_control([_performers(rng, True)], boot)["auc"]
    deaf = performer_control([_performers(rng, False)], boot)["auc"]
    assert hears["value"] > 0.9
    assert 0.35 < deaf["value"] < 0.65
    assert hears["lo"] > deaf["hi"]
