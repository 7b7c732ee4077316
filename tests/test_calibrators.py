"""Calibrators of the composer answer compared on validation (``evaluate/calibrators.py``)."""

import json

import numpy as np
import pytest

from harmonixr.evaluate.calibrators import ON_THEM, SHIPPED, compare_calibrators, compare_on_runs
from harmonixr.search.index import Index


def _overconfident(rng, n=300, classes=4, scale=3.0):
    """Logits of a calibrated model times ``scale``: its softmax is too sure, and dividing by
    ``scale`` again is the right temperature. Pieces come in groups of three."""
    true_logits = rng.standard_normal((n, classes)) * 1.5
    p = np.exp(true_logits) / np.exp(true_logits).sum(1, keepdims=True)
    labels = np.array([rng.choice(classes, p=row) for row in p])
    groups = np.array([f"g{i // 3}" for i in range(n)])
    return true_logits * scale, labels, groups


def test_a_temperature_fixes_overconfident_logits_where_none_does_not():
    logits, labels, groups = _overconfident(np.random.default_rng(0))
    r = compare_calibrators(logits, labels, groups, repeats=3)
    ece = r["cross_fitted_ece"]
    assert set(ece) >= {"none", SHIPPED, "temperature + isotonic"}
    assert ece["none"]["mean"] > 0.1 > ece[SHIPPED]["mean"]
    assert r["lowest"] != "none" and r["chosen"] != "none"
    assert r["chance"]["expected_if_calibrated"] > 0 and r["groups"] == 100


def _stepped(rng, n=600, classes=3):
    """Answers right 0.3 of the time below a confidence of 0.7 and 0.95 above it (the
    confidences spread evenly over [0.4, 1)). No temperature fits a step; a curve of the
    answer's own confidence (Platt, steep, or isotonic) does."""
    conf = rng.uniform(0.4, 0.999, n)
    right = rng.random(n) < np.where(conf < 0.7, 0.3, 0.95)
    labels = rng.integers(0, classes, n)
    logits = np.zeros((n, classes))
    top = np.where(right, labels, (labels + 1) % classes)
    rest = np.log((1 - conf) / (classes - 1))
    logits[:] = rest[:, None]
    logits[np.arange(n), top] = np.log(conf)
    return logits, labels, np.array([f"g{i // 2}" for i in range(n)])


def test_a_curve_of_the_confidence_is_chosen_where_a_temperature_cannot_fit():
    logits, labels, groups = _stepped(np.random.default_rng(4))
    r = compare_calibrators(logits, labels, groups, repeats=5)
    assert r["chosen"] in ("temperature + Platt", "temperature + isotonic")
    gap = r["cross_fitted_ece"][r["chosen"]]
    assert gap["minus_shipped"] + gap["minus_shipped_sd"] < 0


def test_the_shipped_calibrator_stays_on_answers_a_temperature_calibrates():
    # logits of a calibrated model: the shipped temperature (about 1) is right, and the
    # curves' extra parameters only add noise
    logits, labels, groups = _overconfident(np.random.default_rng(1), n=600, scale=1.0)
    assert compare_calibrators(logits, labels, groups, repeats=5)["chosen"] == SHIPPED


def test_a_curve_never_changes_the_answer():
    from harmonixr.evaluate.calibrators import CANDIDATES

    logits, labels, _ = _stepped(np.random.default_rng(5))
    extra = np.random.default_rng(6).standard_normal(logits.shape)  # runners-up of every size
    logits = logits + extra
    for name in ("temperature + Platt", "temperature + isotonic"):
        p = CANDIDATES[name](logits, labels)(logits)
        assert np.array_equal(p.argmax(1), logits.argmax(1)), name
        assert np.allclose(p.sum(1), 1.0)


def test_too_few_groups_is_a_clear_error():
    logits, labels, _ = _overconfident(np.random.default_rng(2), n=12)
    with pytest.raises(ValueError, match="too few"):
        compare_calibrators(logits, labels, np.array(["a", "b", "c"] * 4))


def test_calibrator_choice_reads_the_validation_side_only(search_run_copy):
    from harmonixr.search.calibrators import calibrator_choice

    run = search_run_copy
    cache = json.loads((run / "config.json").read_text())["train"]["data"]
    with pytest.raises(ValueError, match="too few for 5 folds"):
        calibrator_choice(run, cache, repeats=2)
    r = calibrator_choice(run, cache, folds=2, repeats=2)
    assert r["measured_on"].startswith("validation")
    from harmonixr.data.cache import TensorCache
    from harmonixr.train.rundir import Run

    with TensorCache(cache) as c:
        rows = c.pieces()
    split = Run.open(run).split(rows)
    val_sha = {rows[i].sha256 for i in split["val"]}
    test_sha = {rows[i].sha256 for i in split["test"]}
    index = Index.load(run / "index")
    named = set(index.calibration.composers)
    assert r["pieces"] == sum(
        1 for it in index.items if it.sha256 in val_sha and it.composer in named
    )
    # the test side's vectors scrambled: the comparison does not move
    path = run / "index" / "embeddings.npy"
    vectors = np.load(path)
    rows = [k for k, it in enumerate(index.items) if it.sha256 in test_sha]
    assert rows
    vectors[rows] = vectors[rows][::-1] * -1.0
    np.save(path, vectors)
    again = calibrator_choice(run, cache, folds=2, repeats=2)
    assert again["cross_fitted_ece"] == r["cross_fitted_ece"]


def test_compare_on_runs_fits_on_validation_and_measures_held_out():
    from harmonixr.evaluate.calibrators import compare_on_runs

    rng = np.random.default_rng(3)
    runs = []
    for k in range(2):
        lv, yv, _ = _overconfident(rng)
        lt, yt, _ = _overconfident(rng)
        runs.append((f"run{k}", lv, yv, lt, yt, 4))
    runs.append(("empty", lv, yv, lt[:0], yt[:0], 4))  # nothing held out: skipped
    r = compare_on_runs(runs)
    assert [x["run"] for x in r["runs"]] == ["run0", "run1"]
    assert r["mean_ece"]["none"] > r["mean_ece"][SHIPPED]
    for row in r["runs"]:
        assert row[ON_THEM] < row["none"] and row["temperature_ratio"] > 0
        assert 0 < row["ece_by_chance"] < 0.1


def test_a_held_out_run_never_measures_the_calibrated_runs_test_side(search_run_copy):
    from harmonixr.search.calibrators import calibrator_choice

    run = search_run_copy
    cache = json.loads((run / "config.json").read_text())["train"]["data"]
    # the run as its own "other run": every test piece it holds is the calibrated run's
    r = calibrator_choice(run, cache, held_out=[run], folds=2, repeats=2)
    assert r["held_out_runs"]["runs"] == [] and r["chosen"] == SHIPPED


def test_the_rule_given_other_runs():
    from harmonixr.search.calibrators import choose

    def report(minus, sd, means):
        table = {k: {"minus_shipped": 0.0, "minus_shipped_sd": 0.0} for k in means}
        table["temperature (ECE)"] = {"minus_shipped": minus, "minus_shipped_sd": sd}
        return {
            "shipped": SHIPPED,
            "cross_fitted_ece": table,
            "held_out_runs": {"mean_ece": means},
        }

    means = {SHIPPED: 0.058, "temperature (ECE)": 0.046, "none": 0.09}
    # lowest on the other runs and not clearly worse on validation (0.002 - 0.01 ≤ 0): chosen
    got = choose(report(0.002, 0.01, means))
    assert got["chosen"] == "temperature (ECE)" and got["index_build"] == "--temperature ece"
    # clearly worse on validation (0.03 - 0.01 > 0): the shipped one stays
    assert choose(report(0.03, 0.01, means))["chosen"] == SHIPPED
    # no other run measured: the shipped one stays
    assert choose(report(0.0, 0.0, {}))["chosen"] == SHIPPED


def test_an_index_fits_the_temperature_rule_it_is_given():
    from harmonixr.evaluate.calibrate import fit_calibration
    from harmonixr.evaluate.reliability import ece_temperature

    rng = np.random.default_rng(7)
    centres = rng.standard_normal((3, 8)) * 2.0
    comp = np.repeat([0, 1, 2], 40)
    emb = centres[comp] + rng.standard_normal((120, 8)) * 1.5
    names = np.array([f"C{c}" for c in comp])
    groups = np.array([f"g{i}" for i in range(120)])
    tr, va = np.arange(120) % 2 == 0, np.arange(120) % 2 == 1
    args = (emb[tr], names[tr], groups[tr], emb[va], names[va], groups[va])
    nll = fit_calibration(*args, min_works=1)
    ece = fit_calibration(*args, min_works=1, temperature_rule="ece")
    assert nll.temperature_rule == "nll" and ece.temperature_rule == "ece"
    assert ece.probe_weights == nll.probe_weights  # only the temperature differs
    logits = ece.logits(emb[va], emb[va] @ np.zeros((8, 3)))
    labels = np.array([ece.composers.index(c) for c in names[va]])
    assert ece.temperature == pytest.approx(ece_temperature(logits, labels))
    with pytest.raises(ValueError, match="temperature_rule"):
        fit_calibration(*args, min_works=1, temperature_rule="isotonic")


def test_compare_on_runs_fits_on_the_validation_logits_it_is_given():
    from harmonixr.evaluate.metrics import confidence_ece
    from harmonixr.evaluate.reliability import fit_temperature, softmax

    rng = np.random.default_rng(8)
    lv, yv, _ = _overconfident(rng, scale=3.0)  # validation: too sure by 3
    lt, yt, _ = _overconfident(rng, scale=1.0)  # held out: calibrated as they are
    row = compare_on_runs([("run", lv, yv, lt, yt, 4)])["runs"][0]
    p = softmax(lt / fit_temperature(lv, yv))  # the temperature of validation, not of lt
    assert row[SHIPPED] == pytest.approx(confidence_ece(p.max(1), p.argmax(1) == yt))
    q = softmax(lt / fit_temperature(lt, yt))
    assert row[SHIPPED] != pytest.approx(confidence_ece(q.max(1), q.argmax(1) == yt))


def test_other_runs_fit_and_measure_without_the_stripped_pieces():
    from types import SimpleNamespace

    from harmonixr.search.calibrators import _run_logits

    rng = np.random.default_rng(9)
    rows, z = [], []
    centres = rng.standard_normal((3, 6)) * 3.0
    for i in range(60):
        c = i % 3
        rows.append(SimpleNamespace(composer=f"C{c}", group=f"g{i}", sha256=f"s{i}"))
        z.append(centres[c] + rng.standard_normal(6))
    z = np.array(z)
    split = {"train": list(range(0, 36)), "val": list(range(36, 48)), "test": list(range(48, 60))}
    hidden = {0, 1, 2, 36, 37, 48}  # a piece of every side belongs to the other run's test side
    z[sorted(hidden)] = np.nan  # any use of them would spoil the probe or the logits
    keep = {r.sha256 for i, r in enumerate(rows) if i not in hidden}
    run = SimpleNamespace(split=lambda _rows: split)
    lv, yv, lt, yt, named, stripped = _run_logits(run, rows, keep, z)
    assert np.isfinite(lv).all() and np.isfinite(lt).all()
    assert (len(yv), len(yt), named) == (10, 11, 3)
    assert stripped == {"train": 3, "val": 2, "test": 1}


def test_outside_test_side_drops_every_piece_of_the_test_units(search_run_copy):
    from harmonixr.data.cache import TensorCache
    from harmonixr.search.calibrators import outside_test_side
    from harmonixr.train.rundir import Run

    run = search_run_copy
    cache = json.loads((run / "config.json").read_text())["train"]["data"]
    with TensorCache(cache) as c:
        rows = c.pieces()
    r = Run.open(run)
    test_groups = {rows[i].group for i in r.split(rows)["test"]}
    keep = outside_test_side(r, rows)
    assert test_groups and keep == {r.sha256 for r in rows if r.group not in test_groups}
