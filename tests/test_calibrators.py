"""Calibrators of the composer answer compared on validation (``evaluate/calibrators.py``)."""

import json

import numpy as np
import pytest

from harmonixr.evaluate.calibrators import SHIPPED, compare_calibrators


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


def test_the_shipped_calibrator_stays_unless_another_is_clearly_lower():
    logits, labels, groups = _overconfident(np.random.default_rng(1), scale=1.0)
    r = compare_calibrators(logits, labels, groups, repeats=3)
    ship = r["cross_fitted_ece"][SHIPPED]
    best = r["cross_fitted_ece"][r["lowest"]]
    if best["mean"] >= ship["mean"] - ship["sd"]:
        assert r["chosen"] == SHIPPED
    else:
        assert r["chosen"] == r["lowest"]


def test_too_few_groups_is_a_clear_error():
    logits, labels, _ = _overconfident(np.random.default_rng(2), n=12)
    with pytest.raises(ValueError, match="too few"):
        compare_calibrators(logits, labels, np.array(["a", "b", "c"] * 4))


def test_calibrator_choice_reads_the_validation_side_only(search_run_copy):
    from harmonixr.search.calibrators import calibrator_choice

    run = search_run_copy
    cache = json.loads((run / "config.json").read_text())["train"]["data"]
    val = json.loads((run / "split.json").read_text())["val"]
    with pytest.raises(ValueError, match="too few for 5 folds"):
        calibrator_choice(run, cache, repeats=2)
    r = calibrator_choice(run, cache, folds=2, repeats=2)
    assert r["pieces"] <= len(val) and r["measured_on"].startswith("validation")


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
        assert row["temperature fitted on the held-out pieces"] < row["none"]
        assert 0 < row["ece_by_chance"] < 0.1


def test_a_held_out_run_never_measures_the_calibrated_runs_test_side(search_run_copy):
    from harmonixr.search.calibrators import calibrator_choice

    run = search_run_copy
    cache = json.loads((run / "config.json").read_text())["train"]["data"]
    # the run as its own "other run": every test piece it holds is the calibrated run's
    r = calibrator_choice(run, cache, held_out=[run], folds=2, repeats=2)
    assert r["held_out_runs"]["runs"] == [] and r["chosen"] == SHIPPED
