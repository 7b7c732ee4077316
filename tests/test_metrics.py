"""Evaluation metrics against hand-computed values."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from harmonixr.evaluate.bootstrap import bootstrap_interval, group_resamples
from harmonixr.evaluate.metrics import (
    accuracy_at,
    average_precision,
    balanced_accuracy,
    best_threshold,
    cosine_distance,
    det_curve,
    equal_error_rate,
    macro_f1,
    pair_set_protocol,
    retrieval_scores,
    roc_auc,
    topk_accuracy,
    tpr_at_fpr,
)

# same-composer pairs (y = 1) should have small distances
D = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
Y = np.array([1, 1, 0, 1, 0, 0])


def test_auc_counts_ordered_pairs_and_half_ties():
    # positives 0.1 0.2 0.4, negatives 0.3 0.5 0.6: 8 of 9 (pos, neg) orders right
    assert roc_auc(D, Y) == pytest.approx(8 / 9)
    assert roc_auc(np.array([0.1, 0.9]), np.array([1, 0])) == 1.0  # perfect
    assert roc_auc(np.array([0.9, 0.1]), np.array([1, 0])) == 0.0  # inverted
    assert roc_auc(np.array([0.5, 0.5]), np.array([1, 0])) == 0.5  # tie counts half
    with pytest.raises(ValueError, match="same-composer"):
        roc_auc(D, np.zeros(6))
    with pytest.raises(ValueError, match="different-composer"):
        roc_auc(D, np.ones(6))


def test_weighted_auc_equals_auc_of_repeated_pairs():
    w = np.array([2, 1, 1, 3, 1, 2])
    rep = np.repeat(np.arange(6), w)
    assert roc_auc(D, Y, weights=w) == pytest.approx(roc_auc(D[rep], Y[rep]))


def test_threshold_accuracy_eer_tpr():
    thr, acc = best_threshold(D, Y)
    # 0.25 and 0.45 both get 5 of 6 right; ties go to the smaller threshold
    assert acc == pytest.approx(5 / 6) and thr == pytest.approx(0.25)
    assert accuracy_at(D, Y, 0.45) == pytest.approx(5 / 6)
    # ROC points (FPR, TPR): (0,0) (0,1/3) (0,2/3) (1/3,2/3) (1/3,1) (2/3,1) (1,1)
    # FNR − FPR changes sign between (0, 2/3) [FNR 1/3 > FPR 0] and (1/3, 2/3) [FNR 1/3 = FPR 1/3]
    assert equal_error_rate(D, Y) == pytest.approx(1 / 3)
    assert tpr_at_fpr(D, Y, 0.0) == pytest.approx(2 / 3)
    assert tpr_at_fpr(D, Y, 0.34) == pytest.approx(1.0)
    fpr, fnr = det_curve(D, Y)
    assert fpr[0] == 0 and fnr[-1] == 0
    # perfect separation: EER 0, TPR@1%FPR 1
    assert equal_error_rate(np.array([0.1, 0.2, 0.8, 0.9]), np.array([1, 1, 0, 0])) == 0.0
    assert tpr_at_fpr(np.array([0.1, 0.2, 0.8, 0.9]), np.array([1, 1, 0, 0])) == 1.0


def test_eer_interpolates_between_roc_points():
    # inverted: the negative is closer. ROC (0,0) (1,0) (1,1); FNR = 1 until FPR = 1: EER 1
    assert equal_error_rate(np.array([0.1, 0.2]), np.array([0, 1])) == pytest.approx(1.0)
    # two positives, two negatives interleaved: d 0.1+ 0.2− 0.3+ 0.4−
    # ROC (0,0) (0,.5) (.5,.5) (.5,1) (1,1): FNR − FPR = 1, .5, 0 → EER exactly 0.5
    d, y = np.array([0.1, 0.2, 0.3, 0.4]), np.array([1, 0, 1, 0])
    assert equal_error_rate(d, y) == pytest.approx(0.5)
    # a tie between a positive and a negative: ROC (0,0) (0,.5) (.5,1) (1,1); FNR − FPR goes
    # 1 → .5 → −.5: the crossing lies halfway along the diagonal step, at FPR = FNR = 0.25
    d, y = np.array([0.1, 0.5, 0.5, 0.9]), np.array([1, 1, 0, 0])
    assert equal_error_rate(d, y) == pytest.approx(0.25)


def test_attribution_metrics():
    scores = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.5, 0.4, 0.1], [0.1, 0.3, 0.6]])
    labels = np.array([0, 1, 1, 0])
    assert topk_accuracy(scores, labels, 1) == 0.5
    assert topk_accuracy(scores, labels, 2) == 0.75
    assert topk_accuracy(scores, labels, 3) == 1.0
    pred = scores.argmax(1)  # 0 1 0 2
    assert balanced_accuracy(pred, labels) == pytest.approx((1 / 2 + 1 / 2) / 2)
    # class 0: tp 1, fp 1, fn 1 → 0.5; class 1: tp 1, fp 0, fn 1 → 2/3
    assert macro_f1(pred, labels) == pytest.approx((0.5 + 2 / 3) / 2)
    with pytest.raises(ValueError):
        topk_accuracy(scores, labels[:2], 1)
    with pytest.raises(ValueError):
        topk_accuracy(scores, np.array([0, 1, 3, 0]), 1)
    # a collapsed model (all scores equal) earns k/C, whatever the labels' indices
    flat = np.zeros((4, 3))
    assert topk_accuracy(flat, np.array([0, 0, 1, 2]), 1) == pytest.approx(1 / 3)
    assert topk_accuracy(flat, np.array([0, 0, 1, 2]), 2) == pytest.approx(2 / 3)
    # the true class tied with one other for first place: half a top-1, a whole top-2
    tie = np.array([[0.5, 0.5, 0.1]])
    assert topk_accuracy(tie, np.array([1]), 1) == 0.5 and topk_accuracy(tie, np.array([1]), 2) == 1


def test_average_precision_and_retrieval():
    assert average_precision(np.array([1, 0, 1, 0])) == pytest.approx((1 + 2 / 3) / 2)
    assert np.isnan(average_precision(np.array([0, 0])))
    sim = np.array(
        [[1.0, 0.9, 0.1, 0.5], [0.9, 1.0, 0.2, 0.3], [0.1, 0.2, 1, 0.8], [0.5, 0.3, 0.8, 1]]
    )
    comp = np.array([0, 0, 1, 1])
    relevant = comp[:, None] == comp[None, :]
    allowed = ~np.eye(4, dtype=bool)
    aps, pks = retrieval_scores(sim, relevant, allowed, k=1)
    # query 0 ranks 1 (rel), 3, 2 → AP 1; query 3 ranks 2 (rel), 0, 1 → AP 1
    np.testing.assert_allclose(aps, [1, 1, 1, 1])
    np.testing.assert_allclose(pks, [1, 1, 1, 1])
    allowed[0, 1] = False  # query 0 may not see its only relevant item
    aps, _ = retrieval_scores(sim, relevant, allowed, k=1)
    assert np.isnan(aps[0])


def test_group_bootstrap_is_seeded_and_resamples_whole_groups():
    groups = np.array(["a", "a", "b", "c", "c", "c"])
    counts = group_resamples(groups, n=50, seed=1)
    assert counts.shape == (50, 3) and (counts.sum(axis=1) == 3).all()
    np.testing.assert_array_equal(counts, group_resamples(groups, n=50, seed=1))
    seen = []

    def stat(w):
        seen.append(w.copy())
        return float(w.sum())

    a = bootstrap_interval(stat, groups, n=200, seed=3)
    b = bootstrap_interval(lambda w: float(w.sum()), groups, n=200, seed=3)
    assert a == b
    for w in seen:  # pieces of one group always share a weight
        assert w[0] == w[1] and w[3] == w[4] == w[5]
    values = np.array([1.0, 1.0, 0.0, 1.0, 1.0, 1.0])
    lo, hi = bootstrap_interval(lambda w: float(w @ values / w.sum()), groups, n=500, seed=0)
    assert 0 <= lo < 5 / 6 < hi <= 1


def test_ranked_pairs_auc_equals_weighted_roc_auc_with_ties():
    from harmonixr.evaluate.verification import RankedPairs

    rng = np.random.default_rng(0)
    d = rng.integers(0, 6, 300).astype(float)  # many ties
    y = rng.uniform(size=300) < 0.3 + 0.05 * (6 - d)
    ranked = RankedPairs(d, y)
    assert ranked.auc() == pytest.approx(roc_auc(d, y))
    for k in range(5):
        w = rng.integers(0, 4, 300).astype(float)
        assert ranked.auc(w) == pytest.approx(roc_auc(d, y, weights=w)), k
    # by hand: positives at d 1 and 3, negatives at 2 and 3 → (1 + 1 + 0.5·... )
    # pos d=1 beats both negatives (2); pos d=3 loses to d=2, ties d=3 (0.5) → 2.5 / 4
    hand = RankedPairs(np.array([1.0, 3.0, 2.0, 3.0]), np.array([True, True, False, False]))
    assert hand.auc() == pytest.approx(2.5 / 4)
    assert np.isnan(hand.auc(np.array([1.0, 1.0, 0.0, 0.0])))  # no negatives left


def _unit_rows(rng, n, d=5):
    x = rng.normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_cosine_distance_is_one_minus_cosine_similarity():
    rng = np.random.default_rng(1)
    a, b = _unit_rows(rng, 7), _unit_rows(rng, 7)
    want = [
        1.0 - float(np.dot(a[k], b[k]) / (np.linalg.norm(a[k]) * np.linalg.norm(b[k])))
        for k in range(7)
    ]
    assert cosine_distance(a, b) == pytest.approx(want)
    assert cosine_distance(a, a) == pytest.approx(np.zeros(7), abs=1e-12)
    assert cosine_distance(a, -a) == pytest.approx(np.full(7, 2.0))


@dataclass
class _Pairs:
    name: str
    i: np.ndarray
    j: np.ndarray
    y: np.ndarray


def _rand_pairs(rng, name, n_rows, n):
    i = rng.integers(0, n_rows, n)
    j = (i + rng.integers(1, n_rows, n)) % n_rows
    return _Pairs(name, i, j, rng.integers(0, 2, n))


def _reference_protocol(pseudo_emb, pseudo, emb, sets):
    """The documented rule, by brute force: distance 1 − cos; over every threshold (all cuts of
    the sorted pseudo distances), the best pseudo accuracy with 'same' meaning d < threshold;
    each set's accuracy at the chosen threshold, counted pair by pair."""

    def dist(e, a, b):
        return 1.0 - sum(e[a, k] * e[b, k] for k in range(e.shape[1]))

    dp = [dist(pseudo_emb, a, b) for a, b in zip(pseudo.i, pseudo.j, strict=True)]
    cuts = sorted(dp) + [max(dp) + 1.0]

    def acc(ds, ys, t):
        return sum((d < t) == bool(y) for d, y in zip(ds, ys, strict=True)) / len(ys)

    best = max(acc(dp, pseudo.y, t) for t in cuts)
    out = {"acc_pseudo": best}
    for ps in sets:
        ds = [dist(emb, a, b) for a, b in zip(ps.i, ps.j, strict=True)]
        out[f"n_{ps.name}"] = len(ds)
        out[f"ds_{ps.name}"] = ds
    return dp, out


def test_pair_set_protocol_follows_its_documented_rule():
    rng = np.random.default_rng(3)
    for _ in range(20):
        pseudo_emb, emb = _unit_rows(rng, 12), _unit_rows(rng, 15)
        pseudo = _rand_pairs(rng, "pseudo", 12, 30)
        sets = [_rand_pairs(rng, name, 15, 25) for name in ("mixed", "same")]
        sets.append(_Pairs("empty", np.zeros(0, int), np.zeros(0, int), np.zeros(0, int)))
        got = pair_set_protocol(pseudo_emb, pseudo, emb, sets)
        dp, ref = _reference_protocol(pseudo_emb, pseudo, emb, sets)
        thr = got["threshold"]
        assert got["acc_pseudo"] == pytest.approx(ref["acc_pseudo"])
        # the threshold achieves that accuracy on the pseudo set, on the 1 − cos scale
        pseudo_acc = np.mean((np.array(dp) < thr) == pseudo.y.astype(bool))
        assert pseudo_acc == pytest.approx(ref["acc_pseudo"])
        assert min(dp) - 1e-3 < thr < max(dp) + 1e-3
        for ps in sets[:2]:
            want = np.mean((np.array(ref[f"ds_{ps.name}"]) < thr) == ps.y.astype(bool))
            assert got[f"acc_{ps.name}"] == pytest.approx(want)
            assert got[f"n_{ps.name}"] == ref[f"n_{ps.name}"]
        assert "acc_empty" not in got and "n_empty" not in got


def test_pair_set_protocol_without_both_classes_has_no_threshold():
    rng = np.random.default_rng(4)
    e = _unit_rows(rng, 6)
    pseudo = _Pairs("pseudo", np.array([0, 1]), np.array([2, 3]), np.array([1, 1]))
    mixed = _Pairs("mixed", np.array([0, 1]), np.array([4, 5]), np.array([1, 0]))
    assert pair_set_protocol(e, pseudo, e, [mixed]) == {"n_mixed": 2.0}


def test_the_tally_gives_the_roc_and_every_registered_metric_of_the_pairs():
    from harmonixr.evaluate.metrics import roc_curve
    from harmonixr.evaluate.verification import PAIR_METRICS, RankedPairs

    rng = np.random.default_rng(1)
    d = np.round(rng.uniform(size=400), 2)  # ties
    y = rng.uniform(size=400) < 1.0 - d
    t = RankedPairs(d, y).tally()
    fpr, tpr, _ = roc_curve(d, y)
    np.testing.assert_array_equal(t.roc()[0], fpr)  # the very points, bit for bit
    np.testing.assert_array_equal(t.roc()[1], tpr)
    assert PAIR_METRICS["eer"].fn(t) == equal_error_rate(d, y)
    assert PAIR_METRICS["tpr_at_1fpr"].fn(t) == tpr_at_fpr(d, y, 0.01)
    assert PAIR_METRICS["auc"].fn(t) == pytest.approx(roc_auc(d, y))
    one_class = RankedPairs(d, np.ones(400, bool)).tally()
    assert all(np.isnan(m.fn(one_class)) for m in PAIR_METRICS.values())


def test_false_rejects_at_five_percent_false_accepts_by_hand():
    from harmonixr.evaluate.verification import PAIR_METRICS, RankedPairs

    # 20 different-composer pairs at d = 0.5, 0.55, … ; 4 same-composer pairs at 0.1, 0.2, 0.6,
    # 0.9. Accepting at most 1 of the 20 negatives (5 %) means a threshold at 0.5: pairs up to
    # 0.5 accepted, so 2 of the 4 positives are rejected
    neg = 0.5 + 0.05 * np.arange(20)
    d = np.concatenate([[0.1, 0.2, 0.6, 0.9], neg])
    y = np.r_[np.ones(4, bool), np.zeros(20, bool)]
    frr = PAIR_METRICS["frr_at_far5"]
    assert frr.fn(RankedPairs(d, y).tally()) == pytest.approx(0.5)
    assert frr.label == "FRR@FAR 5%"
    # perfectly separated pairs reject nothing
    assert frr.fn(RankedPairs(np.array([0.1, 0.2, 0.8]), np.array([1, 1, 0])).tally()) == 0.0
