"""Calibration: ECE by hand, temperature recovered, probabilities that sum with the unknown to
one in the order of the scores, held-out composers look unknown, verification threshold."""

from __future__ import annotations

import json

import numpy as np
import pytest

from harmonixr.search.calibrate import (
    Calibration,
    expected_calibration_error,
    fit_calibration,
    fit_temperature,
    open_set_features,
    softmax,
    validation_pairs,
)


def test_ece_by_hand():
    # bin 0.9: confidences 0.9, 0.9 (one right) → |0.5 − 0.9| · 2/4; bin 0.6: 0.6, 0.6 both
    # right → |1 − 0.6| · 2/4
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.4, 0.6]])
    labels = np.array([0, 1, 1, 1])
    assert expected_calibration_error(probs, labels) == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)
    perfect = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert expected_calibration_error(perfect, np.array([0, 1])) == 0.0


def test_temperature_is_recovered_from_data_drawn_at_that_temperature():
    rng = np.random.default_rng(0)
    sims = rng.uniform(-1, 1, (4000, 5))
    probs = softmax(sims / 0.2)
    labels = np.array([rng.choice(5, p=p) for p in probs])
    assert fit_temperature(sims, labels) == pytest.approx(0.2, rel=0.1)


def test_open_set_features_are_top_and_margin():
    x = open_set_features(np.array([[0.1, 0.7, 0.4], [0.5, 0.5, 0.0]]))
    np.testing.assert_allclose(x, [[0.7, 0.3], [0.5, 0.0]])
    np.testing.assert_allclose(open_set_features(np.array([[0.3]])), [[0.3, 0.0]])


def _centres(rng, names, dim=16):
    return {c: (v := rng.standard_normal(dim)) / np.linalg.norm(v) for c in names}


def _pieces(rng, centres, per, noise=0.25):
    """Unit embeddings scattered around each composer's direction."""
    emb, comp = [], []
    for c, centre in centres.items():
        emb.append(centre + noise * rng.standard_normal((per, len(centre))))
        comp += [c] * per
    emb = np.concatenate(emb).astype(np.float32)
    return emb / np.linalg.norm(emb, axis=1, keepdims=True), comp


def _centroids(emb, comp, names):
    c = np.stack([emb[[i for i, x in enumerate(comp) if x == n]].mean(0) for n in names])
    return c / np.linalg.norm(c, axis=1, keepdims=True)


KNOWN = ["A", "B", "C", "D"]


@pytest.fixture(scope="module")
def world():
    rng = np.random.default_rng(1)
    centres = _centres(rng, [*KNOWN, "E"])
    stranger = {"E": centres.pop("E")}
    train, train_c = _pieces(rng, centres, 30)
    val, val_c = _pieces(rng, centres, 30)
    centroids = _centroids(train, train_c, KNOWN)
    groups = [f"w{i}" for i in range(len(val))]  # each piece its own work
    cal = fit_calibration(val, val_c, groups, centroids, KNOWN)
    return {
        "cal": cal,
        "centroids": centroids,
        "val": (val, val_c),
        "test": _pieces(rng, centres, 30)[0],
        "stranger": _pieces(rng, stranger, 40)[0],
    }


def test_probabilities_sum_with_unknown_to_one_in_score_order(world):
    cal, centroids = world["cal"], world["centroids"]
    rng = np.random.default_rng(3)
    z = rng.standard_normal((50, centroids.shape[1])).astype(np.float32)
    sims = (z / np.linalg.norm(z, axis=1, keepdims=True)) @ centroids.T
    probs, unknown = cal.composer_probabilities(sims)
    assert probs.shape == sims.shape and unknown.shape == (50,)
    assert (
        (probs >= 0).all() and (probs <= 1).all() and (unknown >= 0).all() and (unknown <= 1).all()
    )
    np.testing.assert_allclose(probs.sum(1) + unknown, 1.0, atol=1e-9)
    for s, p in zip(sims, probs, strict=True):
        assert list(np.argsort(-s, kind="stable")) == list(np.argsort(-p, kind="stable"))


def test_report_says_calibration_lowered_the_error(world):
    cal = world["cal"]
    c = cal.report["composer"]
    assert c["method"] == "temperature scaling" and c["pieces"] == 120
    assert c["ece_after"] < c["ece_before"]
    assert cal.temperature < 1.0  # raw cosine softmax is far too flat
    assert not cal.notes


def test_a_composer_without_centroid_looks_unknown(world):
    cal, centroids = world["cal"], world["centroids"]
    u_stranger = cal.unknown_probability(world["stranger"] @ centroids.T)
    u_known = cal.unknown_probability(world["test"] @ centroids.T)
    assert np.median(u_stranger) > 0.5 > np.median(u_known)
    assert cal.report["unknown"]["auc"] > 0.9


def test_verify_threshold_separates_same_from_different(world):
    cal = world["cal"]
    v = cal.report["verify"]
    assert v["pairs"] == 120 * 119 // 2 and v["same_pairs"] == 4 * 30 * 29 // 2
    t = cal.threshold
    assert t is not None
    assert cal.same_probability(t) == pytest.approx(0.5)
    assert cal.same_probability(t + 0.1) > 0.5 > cal.same_probability(t - 0.1)
    # p = 0.5 sits about where the best balanced accuracy over all thresholds is
    val, comp = world["val"]
    i, j = validation_pairs([f"w{k}" for k in range(len(val))], max_pairs=10**6)
    cos = np.einsum("nd,nd->n", val[i], val[j])
    same = np.asarray(comp)[i] == np.asarray(comp)[j]
    best = max(((cos >= c)[same].mean() + (cos < c)[~same].mean()) / 2 for c in np.unique(cos))
    assert best - 0.02 <= v["balanced_accuracy"] <= best


def test_calibration_round_trips_through_json(world):
    cal, centroids = world["cal"], world["centroids"]
    back = Calibration.from_dict(json.loads(json.dumps(cal.to_dict())))
    sims = np.random.default_rng(4).uniform(-1, 1, (5, len(centroids)))
    np.testing.assert_allclose(
        back.composer_probabilities(sims)[0], cal.composer_probabilities(sims)[0]
    )
    assert back.threshold == cal.threshold


def test_unfittable_parts_stay_neutral_and_say_why():
    emb = np.eye(3, dtype=np.float32)
    cal = fit_calibration(emb, ["X", "Y", "Z"], ["a", "b", "c"], emb[:1], ["X"])
    assert any("unknown not calibrated" in n for n in cal.notes)
    assert any("verify not calibrated" in n for n in cal.notes)
    assert cal.unknown_probability(np.array([[0.2]]))[0] < 1e-9
    assert cal.same_probability(1.0) == 1.0 and cal.threshold == 0.0


def test_validation_pairs_skip_same_work_and_are_capped():
    i, j = validation_pairs(["a", "a", "b", "c"], max_pairs=100)
    assert sorted(zip(i.tolist(), j.tolist(), strict=True)) == [
        (0, 2),
        (0, 3),
        (1, 2),
        (1, 3),
        (2, 3),
    ]
    i, j = validation_pairs([str(k) for k in range(100)], max_pairs=50)
    assert len(i) == 50 and (i < j).all()


def test_unknown_never_rises_with_similarity_or_margin_and_ignores_margin_for_two_composers():
    from harmonixr.search.calibrate import _logistic_decreasing

    rng = np.random.default_rng(0)
    # a feature whose fitted sign would be "wrong" (unknown rises with it) is dropped
    x = rng.normal(size=(400, 2))
    y = (x[:, 0] < 0).astype(int)  # unknown when the top similarity is low
    x[:, 1] = y + rng.normal(scale=0.1, size=400)  # a margin that *rises* with unknown
    coef, _ = _logistic_decreasing(x, y, (True, True))
    assert coef[0] < 0 and coef[1] == 0.0
    coef, _ = _logistic_decreasing(x, y, (True, False))
    assert coef[1] == 0.0


def test_shipped_unknown_probability_is_monotone():
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "src/harmonixr/pretrained/index/calibration.json"
    if not path.is_file():
        pytest.skip("no shipped model")
    params = json.loads(path.read_text())
    flat = json.dumps(params)
    assert "unknown_coef" in flat
    coef = params.get("unknown_coef") or params.get("params", {}).get("unknown_coef")
    assert coef is not None and all(c <= 0 for c in coef), coef
