"""Metrics on arrays (mir_eval's shape: arrays in, floats out), in numpy with scikit-learn for
ROC curves, weighted AUC and the stratified AUC.

Verification convention: a pair is predicted *same composer* when its distance is **below** the
threshold; scores for ROC are ``-distance`` (closer = more likely the same composer). Metrics that
need both classes raise ``ValueError`` when one is missing rather than return a number.
Verification metrics that every report measures on every set of pairs are registered in
``verification.py`` (``pair_metric``), on the ROC helpers here.

This module imports nothing from harmonixr, so every layer (training included) may use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np


def check_pairs(d: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distances as float64 and labels as booleans, both flat, of one length."""
    d, y = np.asarray(d, np.float64).ravel(), np.asarray(y).ravel().astype(bool)
    if d.shape != y.shape:
        raise ValueError(f"{d.size} distances but {y.size} labels")
    return d, y


def _both_classes(y: np.ndarray, what: str) -> None:
    if y.all() or not y.any():
        kind = "same-composer" if not y.any() else "different-composer"
        raise ValueError(f"{what} needs both classes, but there are no {kind} pairs")


def cosine_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise ``1 − a·b``: the distance between two embeddings everywhere in the project. For
    L2-normalised rows (every embedding the model makes) it is 1 − cosine similarity, in [0, 2];
    other rows (the baselines' histograms and probabilities) are compared by the same rule."""
    a, b = np.asarray(a), np.asarray(b)
    out = np.empty(len(a), np.float64)
    step = 1 << 16  # rows at a time in float64, so that millions of pairs cost no copy of them
    for s in range(0, len(a), step):
        pa, pb = a[s : s + step].astype(np.float64), b[s : s + step].astype(np.float64)
        out[s : s + step] = 1.0 - np.einsum("nd,nd->n", pa, pb)
    return out


def accuracy_at(d: np.ndarray, y: np.ndarray, threshold: float) -> float:
    """Share of pairs classified right when ``d < threshold`` means same composer."""
    d, y = check_pairs(d, y)
    if d.size == 0:
        return float("nan")
    return float(np.mean((d < threshold) == y))


def best_threshold(d: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(threshold, accuracy) maximising accuracy; candidate thresholds are midpoints between
    sorted distinct distances plus both ends. Ties go to the smallest threshold."""
    d, y = check_pairs(d, y)
    if d.size == 0:
        raise ValueError("no pairs to choose a threshold from")
    u = np.unique(d)
    cands = np.concatenate(([u[0] - 1e-6], (u[1:] + u[:-1]) / 2, [u[-1] + 1e-6]))
    order = np.argsort(d, kind="stable")
    ds, ys = d[order], y[order]
    # for threshold c: predicted same = d < c. correct = same-pairs below + diff-pairs at/above
    below = np.searchsorted(ds, cands, side="left")
    same_below = np.concatenate(([0], np.cumsum(ys)))[below]
    diff_total = int((~ys).sum())
    diff_below = below - same_below
    correct = same_below + (diff_total - diff_below)
    i = int(np.argmax(correct))
    return float(cands[i]), float(correct[i] / d.size)


class PairSetLike(Protocol):
    """What :func:`pair_set_protocol` reads of a pair set (``data.pairs.PairSet`` is one): row
    indices ``i``, ``j`` into an embedding matrix, labels ``y`` (1 = same composer), a name."""

    name: str
    i: np.ndarray
    j: np.ndarray
    y: np.ndarray


def pair_set_protocol(
    pseudo_emb: np.ndarray,
    pseudo: PairSetLike,
    emb: np.ndarray,
    sets: Sequence[PairSetLike],
) -> dict[str, float]:
    """The original SiaViT project's pair-set protocol, with the distance
    :func:`cosine_distance`.

    The *pseudo-validation* pair set (over the rows of ``pseudo_emb``) chooses the threshold:
    the one of :func:`best_threshold`, maximising its accuracy. Each pair set of ``sets`` (over
    the rows of ``emb``) reports its accuracy at that threshold (a pair is called same composer
    when its distance is below it). Returns ``threshold``, ``acc_pseudo`` and, for each
    non-empty set, ``n_<name>`` (its pairs) and ``acc_<name>``. When the pseudo set lacks one of
    the two classes there is no threshold: only the ``n_<name>`` entries are returned."""
    threshold, acc_pseudo, right = pair_set_decisions(pseudo_emb, pseudo, emb, sets)
    out: dict[str, float] = {}
    if np.isfinite(threshold):
        out["acc_pseudo"], out["threshold"] = acc_pseudo, threshold
    for name, r in right.items():
        out[f"n_{name}"] = float(len(r))
        if np.isfinite(threshold):
            out[f"acc_{name}"] = float(np.mean(r))
    return out


def pair_set_decisions(
    pseudo_emb: np.ndarray,
    pseudo: PairSetLike,
    emb: np.ndarray,
    sets: Sequence[PairSetLike],
) -> tuple[float, float, dict[str, np.ndarray]]:
    """:func:`pair_set_protocol`'s threshold, the pseudo set's accuracy at it, and per
    non-empty set whether each pair is called right there (all False without a threshold)."""
    y = np.asarray(pseudo.y).astype(bool)
    threshold, acc_pseudo = float("nan"), float("nan")
    if y.size and 0 < y.sum() < y.size:
        d = cosine_distance(pseudo_emb[pseudo.i], pseudo_emb[pseudo.j])
        threshold, acc_pseudo = best_threshold(d, y)
    right: dict[str, np.ndarray] = {}
    for ps in sets:
        if not len(ps.y):
            continue
        d = cosine_distance(emb[ps.i], emb[ps.j])
        right[ps.name] = (d < threshold) == np.asarray(ps.y).astype(bool)
    return threshold, acc_pseudo, right


def roc_auc(d: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None) -> float:
    """ROC AUC with score −d (ties count half). Raises when one class is missing."""
    d, y = check_pairs(d, y)
    _both_classes(y, "ROC AUC")
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, -d, sample_weight=weights))


def roc_curve(d: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate, distance threshold) over all thresholds; a
    pair counts as predicted same when ``d <= threshold``."""
    d, y = check_pairs(d, y)
    _both_classes(y, "a ROC curve")
    from sklearn.metrics import roc_curve as sk_roc

    fpr, tpr, thr = sk_roc(y, -d, drop_intermediate=False)
    return fpr, tpr, -thr


def equal_error_rate(d: np.ndarray, y: np.ndarray) -> float:
    """The error rate where false accepts equal false rejects (FPR = 1 − TPR), interpolated
    linearly between the two ROC points that bracket the crossing."""
    fpr, tpr, _ = roc_curve(d, y)
    return eer_of_roc(fpr, tpr)


def eer_of_roc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """:func:`equal_error_rate` of a ROC curve given as its points, from (0, 0) on."""
    fnr = 1.0 - tpr
    diff = fpr - fnr  # rises from −1 to +1 along the curve
    k = int(np.flatnonzero(diff >= 0)[0])
    if k == 0 or diff[k] == 0:
        return float(fpr[k])
    # crossing between points k-1 and k
    a = diff[k - 1] / (diff[k - 1] - diff[k])
    return float(fpr[k - 1] + a * (fpr[k] - fpr[k - 1]))


def tpr_at_fpr(d: np.ndarray, y: np.ndarray, max_fpr: float = 0.01) -> float:
    """The highest true positive rate at a threshold whose false positive rate ≤ ``max_fpr``."""
    fpr, tpr, _ = roc_curve(d, y)
    return tpr_of_roc(fpr, tpr, max_fpr)


def tpr_of_roc(fpr: np.ndarray, tpr: np.ndarray, max_fpr: float) -> float:
    """:func:`tpr_at_fpr` of a ROC curve given as its points, from (0, 0) on."""
    ok = fpr <= max_fpr + 1e-12
    return float(tpr[ok].max())


def det_curve(d: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, false negative rate) over all thresholds."""
    fpr, tpr, _ = roc_curve(d, y)
    return fpr, 1.0 - tpr


# ------------------------------------------------------------------ attribution


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Share of rows whose true label is among the ``k`` highest scores. Ties share the places
    they straddle: a true class tied with t others just past rank r earns (k − r)/(t + 1), so a
    model that scores every class alike earns k/C, not a lucky index's credit."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels)
    if scores.ndim != 2 or scores.shape[0] != labels.size:
        raise ValueError(f"scores {scores.shape} do not match {labels.size} labels")
    if scores.shape[0] == 0:
        raise ValueError("no rows to score")
    if labels.min() < 0 or labels.max() >= scores.shape[1]:
        raise ValueError(f"labels must index the {scores.shape[1]} score columns")
    true = scores[np.arange(labels.size), labels][:, None]
    greater = (scores > true).sum(axis=1)
    tied = (scores == true).sum(axis=1)
    return float(np.mean(np.clip((k - greater) / tied, 0.0, 1.0)))


def balanced_accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    """Mean per-class recall over the classes present in ``labels``."""
    pred, labels = np.asarray(pred), np.asarray(labels)
    classes = np.unique(labels)
    if classes.size == 0:
        raise ValueError("no labels")
    return float(np.mean([np.mean(pred[labels == c] == c) for c in classes]))


def macro_f1(pred: np.ndarray, labels: np.ndarray) -> float:
    """Unweighted mean F1 over the classes present in ``labels`` (a class never predicted has
    F1 0)."""
    pred, labels = np.asarray(pred), np.asarray(labels)
    classes = np.unique(labels)
    f1s = []
    for c in classes:
        tp = np.sum((pred == c) & (labels == c))
        fp = np.sum((pred == c) & (labels != c))
        fn = np.sum((pred != c) & (labels == c))
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1s))


# ------------------------------------------------------------------ retrieval


def average_precision(relevant_sorted: np.ndarray) -> float:
    """AP of one ranked list given as relevance booleans in rank order (NaN when none)."""
    rel = np.asarray(relevant_sorted, bool)
    if not rel.any():
        return float("nan")
    hits = np.cumsum(rel)
    return float(np.sum(hits[rel] / (np.flatnonzero(rel) + 1)) / rel.sum())


def retrieval_scores(
    sim: np.ndarray, relevant: np.ndarray, allowed: np.ndarray, k: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """Per query: average precision and precision@k, ranking the ``allowed`` items of each row
    by similarity (descending; ties keep index order). Rows with nothing relevant give NaN."""
    sim, relevant, allowed = np.asarray(sim), np.asarray(relevant, bool), np.asarray(allowed, bool)
    aps, pks = np.full(sim.shape[0], np.nan), np.full(sim.shape[0], np.nan)
    for q in range(sim.shape[0]):
        cand = np.flatnonzero(allowed[q])
        if cand.size == 0:
            continue
        order = cand[np.argsort(-sim[q, cand], kind="stable")]
        rel = relevant[q, order]
        if rel.any():
            aps[q] = average_precision(rel)
            pks[q] = float(rel[:k].sum()) / min(k, rel.size)
    return aps, pks


# ---------------------------------------------------------------- calibration and weights


N_BINS = 10


def confidence_ece(
    conf: np.ndarray, right: np.ndarray, n_bins: int = N_BINS, weights=None
) -> float:
    """ECE of confidences ``conf`` (N,) against whether each answer was ``right`` (N,): the
    gap between accuracy and mean confidence in ``n_bins`` equal-width bins, weighted by bin
    size (or by the summed ``weights`` of its rows)."""
    conf, right = np.asarray(conf, np.float64), np.asarray(right, np.float64)
    w = np.ones(len(conf)) if weights is None else np.asarray(weights, np.float64)
    bins = np.minimum((conf * n_bins).astype(np.int64), n_bins - 1)
    total = np.bincount(bins, w, n_bins)
    gaps = np.bincount(bins, w * right, n_bins) - np.bincount(bins, w * conf, n_bins)
    if conf.size == 0 or total.sum() <= 0:
        return float("nan")
    return float(np.abs(gaps).sum() / total.sum())


def expected_calibration_error(
    probs: np.ndarray,
    labels: np.ndarray,
    n_bins: int = N_BINS,
    weights: np.ndarray | None = None,
) -> float:
    """Top-label ECE (Guo et al. 2017): ``probs`` (N, C), ``labels`` (N,) class indices; the
    confidence of each row's most probable class against whether it is right, in ``n_bins``
    equal-width bins, weighted by bin size (or by the summed ``weights`` of its rows)."""
    probs, labels = np.asarray(probs, np.float64), np.asarray(labels)
    if probs.shape[0] == 0:
        return float("nan")
    right = probs.argmax(axis=1) == labels
    return confidence_ece(probs.max(axis=1), right, n_bins, weights)


def binary_ece(
    p: np.ndarray, y: np.ndarray, n_bins: int = N_BINS, weights: np.ndarray | None = None
) -> float:
    """ECE of a binary probability ``p`` of ``y`` (both classes as a two-column table)."""
    p = np.asarray(p, np.float64)
    table = np.stack([1 - p, p], axis=1)
    return expected_calibration_error(table, np.asarray(y, np.int64), n_bins, weights)


def balanced_weights(y: np.ndarray) -> np.ndarray:
    """Weights giving each class of a binary ``y`` half the total (what an even prior means):
    :func:`balanced_weights_weighted` with every piece weighing one."""
    return balanced_weights_weighted(y, np.ones(len(y)))


def binary_balanced_accuracy(
    decision: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None
):
    """Mean of the two classes' (weighted) recalls."""
    y = np.asarray(y).astype(bool)
    d = np.asarray(decision).astype(bool)
    w = np.ones(len(y)) if weights is None else np.asarray(weights, np.float64)
    recalls = [np.dot(w[m], d[m] == y[m]) / w[m].sum() for m in (y, ~y) if w[m].sum() > 0]
    return float(np.mean(recalls)) if recalls else float("nan")


def group_pair_weights(ga: Sequence[Any], gb: Sequence[Any]) -> np.ndarray:
    """Weight 1 / (pairs of the same two groups): every pair of groups weighs one in total.
    Integer group codes are used as they are (millions of pooled pairs); names as text."""
    ga, gb = np.asarray(ga), np.asarray(gb)
    if not (np.issubdtype(ga.dtype, np.integer) and np.issubdtype(gb.dtype, np.integer)):
        ga, gb = ga.astype(str), gb.astype(str)
    _, codes = np.unique(np.concatenate([ga, gb]), return_inverse=True)
    a, b = codes[: len(ga)], codes[len(ga) :]
    lo, hi = np.minimum(a, b).astype(np.int64), np.maximum(a, b).astype(np.int64)
    _, inv, counts = np.unique(
        lo * (int(codes.max(initial=0)) + 1) + hi, return_inverse=True, return_counts=True
    )
    return 1.0 / counts[inv.ravel()]


def balanced_weights_weighted(y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Multipliers giving each class half of the total weight ``w``."""
    y = np.asarray(y).astype(bool)
    s1, s0 = w[y].sum(), w[~y].sum()
    return np.where(y, 0.5 / max(s1, 1e-300), 0.5 / max(s0, 1e-300))


class StratifiedAUC:
    """ROC AUC (score −d) counting only pairs of a positive and a negative from the same
    stratum: each stratum's AUC weighted by its (weighted) positives × negatives. Strata with
    one class only do not count; nan when none has both. The strata are split once, so that a
    bootstrap calls it with weights after weights."""

    def __init__(self, d: np.ndarray, y: np.ndarray, strata: np.ndarray) -> None:
        self.d, self.y = np.asarray(d, np.float64), np.asarray(y).astype(bool)
        _, inverse = np.unique(np.asarray(strata), return_inverse=True)
        order = np.argsort(inverse.ravel(), kind="stable")
        cuts = np.flatnonzero(np.diff(inverse.ravel()[order])) + 1
        # members of each stratum, in their original order; those with one class never count
        self.members = [m for m in np.split(order, cuts) if 0 < self.y[m].sum() < m.size]

    def __call__(self, weights: np.ndarray | None = None) -> float:
        from sklearn.metrics import roc_auc_score

        d, y = self.d, self.y
        w = np.ones(len(y)) if weights is None else np.asarray(weights, np.float64)
        total, acc = 0.0, 0.0
        for members in self.members:
            m = members[w[members] > 0]
            pos, neg = w[m][y[m]].sum(), w[m][~y[m]].sum()
            if pos > 0 and neg > 0:
                acc += pos * neg * float(roc_auc_score(y[m], -d[m], sample_weight=w[m]))
                total += pos * neg
        return acc / total if total > 0 else float("nan")


def centroids(emb: np.ndarray, composers: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """``(len(names), D)`` unit mean embedding of each named composer's pieces."""
    c = np.stack([emb[composers == n].mean(axis=0) for n in names])
    norm = np.linalg.norm(c, axis=1, keepdims=True)
    return c / np.where(norm > 0, norm, 1.0)


def shared_positive_rate(labels: np.ndarray, groups: np.ndarray) -> float:
    """Fraction of a batch's positive pairs (same composer) whose two crops share a group
    (work); NaN when the batch holds no positive pair."""
    labels, groups = np.asarray(labels), np.asarray(groups)
    pos = np.triu(labels[:, None] == labels[None, :], k=1)
    n = int(pos.sum())
    if n == 0:
        return float("nan")
    return int((pos & (groups[:, None] == groups[None, :])).sum()) / n
