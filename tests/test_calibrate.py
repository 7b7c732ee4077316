"""Calibration: ECE by hand, temperature recovered, probabilities that sum with the unknown to
one, the named composers and operating point chosen on validation only, strangers look
unknown, the prior obeys Bayes, verification weighted by group pair."""

from __future__ import annotations

import json

import numpy as np
import pytest

from harmonixr.evaluate.calibrate import (
    FITTED_ON,
    Calibration,
    fit_calibration,
    work_counts,
)
from harmonixr.evaluate.metrics import (
    balanced_weights,
    binary_balanced_accuracy,
    binary_ece,
    expected_calibration_error,
    group_pair_weights,
)
from harmonixr.evaluate.metrics import centroids as centroids_of
from harmonixr.evaluate.reliability import fit_temperature, softmax
from harmonixr.evaluate.unknown import (
    FALSE_UNKNOWN,
    OpenSetModel,
    fit_decreasing,
    logistic,
    open_set_features,
    spread_statistics,
)
from harmonixr.evaluate.verification import verify_pairs


def test_ece_by_hand():
    # bin 0.9: confidences 0.9, 0.9 (one right) → |0.5 − 0.9| · 2/4; bin 0.6: 0.6, 0.6 both
    # right → |1 − 0.6| · 2/4
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.4, 0.6]])
    labels = np.array([0, 1, 1, 1])
    assert expected_calibration_error(probs, labels) == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)
    perfect = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert expected_calibration_error(perfect, np.array([0, 1])) == 0.0
    # weights: the first bin alone (weights 0 elsewhere) → |0.5 − 0.9|
    w = np.array([1.0, 1.0, 0.0, 0.0])
    assert expected_calibration_error(probs, labels, weights=w) == pytest.approx(0.4)


def test_binary_ece_and_balanced_accuracy_by_hand():
    # p = 0.8 for three positives and one negative: bin 0.8 right 3/4 → |0.75 − 0.8|
    assert binary_ece(np.full(4, 0.8), np.array([1, 1, 1, 0])) == pytest.approx(0.05)
    # recall of class 1: 2/3, of class 0: 1/1 → 5/6
    d = np.array([True, True, False, False])
    assert binary_balanced_accuracy(d, np.array([1, 1, 1, 0])) == pytest.approx(5 / 6)


def test_ece_at_an_even_prior_reweights_the_classes_by_hand():
    from harmonixr.evaluate.metrics import balanced_weights_weighted

    # p = 0.8 everywhere; 3 positives, 1 negative. Unweighted: right 3/4 → |0.75 − 0.8| =
    # 0.05. At an even prior each class weighs half: right 1/2 → |0.5 − 0.8| = 0.3
    p, y = np.full(4, 0.8), np.array([1, 1, 1, 0])
    w = balanced_weights_weighted(y, np.ones(4))
    np.testing.assert_allclose(w, [1 / 6, 1 / 6, 1 / 6, 1 / 2])
    assert binary_ece(p, y, weights=w) == pytest.approx(0.3)


def test_temperature_is_recovered_from_data_drawn_at_that_temperature():
    rng = np.random.default_rng(0)
    sims = rng.uniform(-1, 1, (4000, 5))
    probs = softmax(sims / 0.2)
    labels = np.array([rng.choice(5, p=p) for p in probs])
    assert fit_temperature(sims, labels) == pytest.approx(0.2, rel=0.1)


def test_open_set_features_are_top_margin_and_spread_score():
    mean, std = np.array([0.5, 0.6, 0.2]), np.array([0.1, 0.05, 0.2])
    x = open_set_features(np.array([[0.1, 0.7, 0.4], [0.5, 0.5, 0.0]]), mean, std)
    # row 0: top is column 1 → (0.7 − 0.6) / 0.05; row 1: tie, first column → (0.5 − 0.5) / 0.1
    np.testing.assert_allclose(x, [[0.7, 0.3, 2.0], [0.5, 0.0, 0.0]])
    one = open_set_features(np.array([[0.3]]), np.array([0.1]), np.array([0.1]))
    np.testing.assert_allclose(one, [[0.3, 0.0, 2.0]])


def test_spread_is_shrunk_towards_the_pooled_one():
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((23, 6))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    comp = np.array(["A"] * 20 + ["B"] * 3)
    cents, mean, std = spread_statistics(emb, comp, ["A", "B"])
    sa = emb[:20] @ cents[0]
    sb = emb[20:] @ cents[1]
    pooled = np.std(np.concatenate([sa - sa.mean(), sb - sb.mean()]))
    assert mean[0] == pytest.approx(sa.mean())
    # by the rule: (n · own variance + 5 · pooled variance) / (n + 5)
    assert std[1] == pytest.approx(np.sqrt((3 * sb.var() + 5 * pooled**2) / 8))


def test_group_pair_weights_give_each_pair_of_groups_one():
    w = group_pair_weights(["a", "a", "b", "a"], ["b", "b", "a", "c"])
    np.testing.assert_allclose(w, [1 / 3, 1 / 3, 1 / 3, 1.0])


def _centres(rng, names, dim=16):
    return {c: (v := rng.standard_normal(dim)) / np.linalg.norm(v) for c in names}


def _pieces(rng, centres, per, noise=0.25, tag=""):
    """Unit embeddings scattered around each composer's direction, each its own group."""
    emb, comp = [], []
    for c, centre in centres.items():
        emb.append(centre + noise * rng.standard_normal((per, len(centre))))
        comp += [c] * per
    emb = np.concatenate(emb).astype(np.float32)
    groups = [f"{tag}{i}" for i in range(len(comp))]
    return emb / np.linalg.norm(emb, axis=1, keepdims=True), comp, groups


KNOWN = ["A", "B", "C", "D"]


@pytest.fixture(scope="module")
def world():
    rng = np.random.default_rng(1)
    centres = _centres(rng, [*KNOWN, "E", "F"])
    stranger = {"E": centres.pop("E")}
    # F has a single training work (40 movements) that sounds like A: named, it would take
    # A's pieces; with too few works it stays barely known
    centres.pop("F")
    few = {"F": centres["A"]}
    tr, tr_c, tr_g = _pieces(rng, centres, 30, tag="t")
    f_emb, f_c, _ = _pieces(rng, few, 40)
    tr, tr_c, tr_g = np.concatenate([tr, f_emb]), tr_c + f_c, [*tr_g, *["f0"] * 40]
    va, va_c, va_g = _pieces(rng, centres, 30, tag="v")
    cal = fit_calibration(tr, tr_c, tr_g, va, va_c, va_g)
    return {
        "cal": cal,
        "train": (tr, tr_c, tr_g),
        "centroids": centroids_of(tr, np.asarray(tr_c), KNOWN),
        "val": (va, va_c, va_g),
        "test": _pieces(rng, centres, 30)[0],
        "stranger": _pieces(rng, stranger, 40)[0],
    }


def test_named_composers_need_enough_works_chosen_on_validation(world):
    cal = world["cal"]
    assert list(cal.composers) == KNOWN  # F, with one work, is barely known
    assert cal.min_works > 1
    table = cal.report["named"]["choices"]
    best = max(r["val_named_right"] for r in table)
    chosen = [r for r in table if r["min_works"] == cal.min_works]
    assert max(r["val_named_right"] for r in chosen) == best
    assert work_counts(["A", "A", "B"], ["x", "y", "x"]) == {"A": 2, "B": 1}


def test_probabilities_sum_with_unknown_to_one(world):
    cal, cents = world["cal"], world["centroids"]
    z = world["test"]
    probs, unknown = cal.composer_probabilities(z, z @ cents.T)
    assert probs.shape == (len(z), 4) and unknown.shape == (len(z),)
    assert (probs >= 0).all() and (unknown >= 0).all() and (unknown <= 1).all()
    np.testing.assert_allclose(probs.sum(1) + unknown, 1.0, atol=1e-9)


def test_every_figure_says_where_it_was_measured(world):
    report = world["cal"].report
    for part in ("named", "composer", "operating_point", "verify", "unknown_simulated"):
        assert report[part]["measured_on"] == FITTED_ON, part
    assert any("simulated strangers" in n for n in world["cal"].notes)


def test_a_composer_without_centroid_looks_unknown_and_the_answer_says_so(world):
    cal, cents = world["cal"], world["centroids"]
    s, t = world["stranger"], world["test"]
    u_stranger = cal.unknown_probability(s, s @ cents.T)
    u_known = cal.unknown_probability(t, t @ cents.T)
    assert np.median(u_stranger) > 0.5 > np.median(u_known)
    assert np.mean(cal.answers(s, s @ cents.T) == -1) > 0.5
    right = cal.answers(t, t @ cents.T) == np.repeat(np.arange(4), 30)
    assert right.mean() > 0.8


def test_operating_point_comes_from_validation_only(world):
    cal, cents = world["cal"], world["centroids"]
    va = world["val"][0]
    u = cal.unknown_probability(va, va @ cents.T)
    expected = max(0.5, float(np.quantile(u, 1 - FALSE_UNKNOWN)))
    assert cal.operating_point == pytest.approx(expected)
    # the rule, written out: 10 % of the named validation pieces reach it (or it is 0.5)
    assert np.mean(u >= cal.operating_point) <= FALSE_UNKNOWN + 1 / len(u)
    assert cal.report["operating_point"]["named_called_unknown"] == pytest.approx(
        np.mean(u >= cal.operating_point)
    )


def test_prior_moves_the_odds_as_bayes_says(world):
    cal, cents = world["cal"], world["centroids"]
    z = world["test"][:10]
    p = cal.unknown_probability(z, z @ cents.T)
    for prior in (0.1, 0.5, 0.9):
        q = cal.unknown_probability(z, z @ cents.T, prior_unknown=prior)
        # posterior odds = likelihood ratio (the odds at the even prior) × prior odds
        np.testing.assert_allclose(q / (1 - q), p / (1 - p) * prior / (1 - prior), rtol=1e-9)
        probs, unknown = cal.composer_probabilities(z, z @ cents.T, prior_unknown=prior)
        np.testing.assert_allclose(probs.sum(1) + unknown, 1.0, atol=1e-9)
    with pytest.raises(ValueError, match="prior_unknown"):
        cal.unknown_probability(z, z @ cents.T, prior_unknown=1.0)


def test_an_open_set_model_learnt_elsewhere_is_used_as_given(world):
    tr, tr_c, tr_g = world["train"]
    model = OpenSetModel((-5.0, -1.0, -0.5), 3.0, "real strangers: test")
    cal = fit_calibration(tr, tr_c, tr_g, *world["val"], open_set=model)
    assert cal.unknown_coef == model.coef and cal.unknown_bias == 3.0
    assert cal.unknown_source == "real strangers: test"
    assert not any("simulated" in n for n in cal.notes)


def test_verify_threshold_separates_same_from_different(world):
    cal = world["cal"]
    v = cal.report["verify"]
    assert v["pairs"] == 120 * 119 // 2 and v["same_pairs"] == 4 * 30 * 29 // 2
    t = cal.threshold
    assert t is not None
    assert cal.same_probability(t) == pytest.approx(0.5)
    assert cal.same_probability(t + 0.1) > 0.5 > cal.same_probability(t - 0.1)
    # p = 0.5 sits about where the best balanced accuracy over all thresholds is
    val, comp, _ = world["val"]
    i, j = verify_pairs([f"w{k}" for k in range(len(val))], max_pairs=10**6)
    cos = np.einsum("nd,nd->n", val[i], val[j])
    same = np.asarray(comp)[i] == np.asarray(comp)[j]
    best = max(((cos >= c)[same].mean() + (cos < c)[~same].mean()) / 2 for c in np.unique(cos))
    assert best - 0.02 <= v["balanced_accuracy"] <= best


def test_verify_fit_is_not_dominated_by_one_prolific_pair_of_groups():
    # composer A: two groups of 40 pieces pointing in opposite directions (1,600 same-composer
    # pairs of cosine ≈ −1); composers B and C: single-piece groups, B along u and C along −u
    # (same-composer cosine ≈ +1, B–C pairs ≈ −1); A is orthogonal to u (A–B, A–C pairs ≈ 0)
    rng = np.random.default_rng(0)
    v, u = np.eye(8)[0], np.eye(8)[1]
    emb, comp, groups = [], [], []
    for g, sign in (("big1", 1.0), ("big2", -1.0)):
        for _ in range(40):
            emb.append(sign * v + 0.05 * rng.standard_normal(8))
            comp.append("A")
            groups.append(g)
    for k in range(40):
        c = "B" if k % 2 else "C"
        emb.append((u if c == "B" else -u) + 0.05 * rng.standard_normal(8))
        comp.append(c)
        groups.append(f"s{k}")
    emb = np.asarray(emb)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    # the control: every pair counted once, similar pieces would look *less* likely to share a
    # composer (the 1,600 pairs of A's two groups outweigh everything)
    i, j = verify_pairs(groups, max_pairs=10**6)
    y = (np.asarray(comp)[i] == np.asarray(comp)[j]).astype(int)
    cos = np.einsum("nd,nd->n", emb[i], emb[j])
    (slope,), _ = logistic(cos[:, None], y, balanced_weights(y))
    assert slope < 0
    # weighted by group pair, the big pair counts once: similar means same composer
    cal = fit_calibration(emb, comp, groups, emb, comp, groups, max_pairs=10**6)
    assert cal.same_coef > 0


def test_calibration_round_trips_through_json(world):
    cal, cents = world["cal"], world["centroids"]
    back = Calibration.from_dict(json.loads(json.dumps(cal.to_dict())))
    z = world["stranger"][:5]
    np.testing.assert_allclose(
        back.composer_probabilities(z, z @ cents.T)[0],
        cal.composer_probabilities(z, z @ cents.T)[0],
        rtol=1e-5,
    )
    assert back.threshold == cal.threshold and back.composers == cal.composers
    with pytest.raises(ValueError, match="rebuild the index"):
        Calibration.from_dict({"temperature": 1.0})


def test_unfittable_parts_stay_neutral_and_say_why():
    emb = np.eye(3, dtype=np.float32)
    cal = fit_calibration(emb, ["X", "Y", "Z"], ["a", "b", "c"], emb[:1], ["X"], ["d"])
    assert any("verify not calibrated" in n for n in cal.notes)
    assert cal.same_probability(1.0) == 1.0 and cal.threshold == 0.0
    one = fit_calibration(emb[:1], ["X"], ["a"], emb[:1], ["X"], ["b"])
    assert not one.composers and any("composers not calibrated" in n for n in one.notes)


def test_verify_pairs_skip_same_group_and_are_capped():
    i, j = verify_pairs(["a", "a", "b", "c"], max_pairs=100)
    assert sorted(zip(i.tolist(), j.tolist(), strict=True)) == [
        (0, 2),
        (0, 3),
        (1, 2),
        (1, 3),
        (2, 3),
    ]
    i, j = verify_pairs([str(k) for k in range(100)], max_pairs=50)
    assert len(i) == 50 and (i < j).all()


def test_unknown_never_rises_with_a_feature():
    rng = np.random.default_rng(0)
    # a feature whose fitted sign would be "wrong" (unknown rises with it) is dropped
    x = rng.normal(size=(400, 3))
    y = (x[:, 0] < 0).astype(int)  # unknown when the top similarity is low
    x[:, 1] = y + rng.normal(scale=0.1, size=400)  # a margin that *rises* with unknown
    coef, _ = fit_decreasing(x, y)
    assert coef[0] < 0 and coef[1] == 0.0
    coef, _ = fit_decreasing(x, y, (True, False, True))
    assert coef[1] == 0.0


def test_shipped_unknown_probability_is_monotone():
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "src/harmonixr/pretrained/index/calibration.json"
    if not path.is_file():
        pytest.skip("no shipped model")
    params = json.loads(path.read_text())
    assert all(c <= 0 for c in params["unknown_coef"]), params["unknown_coef"]
    # "someone else" is offered only where, measured held out, it reached the bar
    from harmonixr.evaluate.unknown import open_set_verdict

    held = params["report"]["held_out"]["open_set_all"]
    assert params["open_set_withdrawn"] == open_set_verdict(held)[0]
    assert params["open_set_withdrawn"] or params["unknown_source"].startswith("real strangers")


def test_the_answer_is_the_top_row_of_one_table(search_run):
    from search_fixtures import split_paths

    from harmonixr.api import Harmonixr

    hx = Harmonixr.load(search_run)
    for prior in (None, 0.05, 0.5, 0.95):
        for path in split_paths(search_run, "test")[:6]:
            rows = [a for a in hx.attribute(path, k=50, prior_unknown=prior) if not a.barely_known]
            assert rows[0].probability == max(a.probability for a in rows)
            assert sum(a.probability for a in rows) == pytest.approx(1.0)
    # an overwhelming prior makes "someone else" the model's answer, on top (asked from the
    # embedding: the file itself is indexed, and a known work's composer would take its place)
    z = hx.embed(split_paths(search_run, "test")[0])
    top = hx.attribute_embedding(z, prior_unknown=0.999)[0]
    assert not top.known and top.composer == "unknown"


def test_the_default_prior_calls_at_most_a_tenth_of_named_pieces_unknown():
    from harmonixr.evaluate.calibrate import default_prior
    from harmonixr.evaluate.unknown import FALSE_UNKNOWN

    rng = np.random.default_rng(0)
    logits = rng.normal(1.0, 2.0, 500)  # "someone else" log-odds at an even prior
    best = rng.uniform(0.2, 0.9, 500)  # each piece's best named composer (closed set)
    prior = default_prior(logits, best)
    s = np.log(prior / (1 - prior))
    u = 1 / (1 + np.exp(-(logits + s)))
    called = u > best * (1 - u)  # "someone else" is the top row
    assert called.mean() <= FALSE_UNKNOWN and prior <= 0.5
    # and no more cautious than it needs to be: the quota is (almost) used
    assert called.mean() >= FALSE_UNKNOWN - 2 / len(logits)
    # pieces whose "someone else" is hopeless at an even prior need no shift at all
    assert default_prior(np.full(50, -20.0), np.full(50, 0.5)) == pytest.approx(0.5)


def test_someone_else_is_withdrawn_where_held_out_figures_miss_the_bar(search_run_copy):
    from search_fixtures import split_paths

    from harmonixr.api import Harmonixr
    from harmonixr.evaluate.unknown import open_set_verdict
    from harmonixr.search.measure import store_held_out

    good = {"detection_auc": 0.8, "strangers_caught": {"value": 0.7}, "known_called_unknown": 0.1}
    assert open_set_verdict(good) == (False, "")
    for key, bad in (("detection_auc", 0.74), ("strangers_caught", 0.5),
                     ("known_called_unknown", 0.2)):  # fmt: skip
        withdrawn, note = open_set_verdict({**good, key: bad})
        assert withdrawn and "cannot tell" in note
    assert open_set_verdict({})[0]  # never measured on strangers: no claim

    path = split_paths(search_run_copy, "test")[0]
    before = Harmonixr.load(search_run_copy)
    assert before.open_set and any(not a.known for a in before.attribute(path, k=50))
    store_held_out(search_run_copy, {"open_set_all": {**good, "detection_auc": 0.5}})
    hx = Harmonixr.load(search_run_copy)
    assert not hx.open_set and "0.50" in hx.open_set_note
    rows = [a for a in hx.attribute(path, k=50, prior_unknown=0.99) if not a.barely_known]
    assert all(a.known for a in rows)  # no "someone else" row, whatever the prior
    assert sum(a.probability for a in rows) == pytest.approx(1.0)
    assert rows[0].probability == max(a.probability for a in rows)
    assert all(p.unknown == 0.0 for p in hx.timeline(path))
