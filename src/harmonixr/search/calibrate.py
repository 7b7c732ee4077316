"""Calibrated probabilities from similarities, fitted on a run's validation split only.

Three small models, each chosen for a validation set of a few dozen to a few hundred pieces:

- **Composer** (closed set): ``softmax(s / T)`` over the cosine similarities ``s`` of a piece to
  the composer centroids, with one temperature ``T`` fitted by minimising the negative
  log-likelihood of the validation pieces (temperature scaling, the multi-class form of Platt
  scaling). One parameter cannot overfit a small validation set, it keeps the order of the
  scores (the most similar centroid stays the most probable) and the result sums to one;
  isotonic regression needs far more pieces per composer and does neither.
- **Unknown** (open set): a logistic model of "the composer is none of the known ones" on two
  features, the top similarity and the margin between the top two. Positive examples are
  validation pieces whose composer has no centroid (an ``unseen-composer`` split) and, for every
  validation piece of a known composer, the same piece scored with its own composer's centroid
  left out (leave-one-composer-out); negatives are the known pieces scored against all
  centroids. The two classes are therefore about balanced: the probability assumes an even
  prior between "one of these composers" and "someone else".
- **Verification**: Platt scaling, ``sigmoid(a · cos + b)``, on all pairs of validation pieces
  from different works (at most ``max_pairs``), classes weighted equally, so ``p = 0.5`` (the
  decision threshold) sits where a same-composer and a different-composer pair are equally
  likely.

The reported expected calibration errors are out-of-fold: pieces are dealt into folds by work,
each fold scored by a model fitted on the others, so a figure is never measured on the pieces
that fitted it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

N_BINS = 10
FOLDS = 5
REGULARISATION = 1.0  # logistic C (inverse L2 strength): shrinks towards less confident


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def expected_calibration_error(
    probs: np.ndarray, labels: np.ndarray, n_bins: int = N_BINS
) -> float:
    """Top-label ECE (Guo et al. 2017): ``probs`` (N, C), ``labels`` (N,) class indices; the
    confidence of each row's most probable class against whether it is right, in ``n_bins``
    equal-width bins, weighted by bin size."""
    probs, labels = np.asarray(probs, np.float64), np.asarray(labels)
    if probs.shape[0] == 0:
        return float("nan")
    conf = probs.max(axis=1)
    right = probs.argmax(axis=1) == labels
    bins = np.minimum((conf * n_bins).astype(np.int64), n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        sel = bins == b
        if sel.any():
            ece += sel.mean() * abs(right[sel].mean() - conf[sel].mean())
    return float(ece)


def binary_ece(p: np.ndarray, y: np.ndarray, n_bins: int = N_BINS) -> float:
    """ECE of a binary probability ``p`` of ``y`` (both classes as a two-column table)."""
    p = np.asarray(p, np.float64)
    return expected_calibration_error(np.stack([1 - p, p], axis=1), np.asarray(y, np.int64), n_bins)


def fit_temperature(sims: np.ndarray, labels: np.ndarray) -> float:
    """The ``T`` minimising the NLL of ``softmax(sims / T)`` (searched over 1e-4…100)."""
    from scipy.optimize import minimize_scalar

    sims, labels = np.asarray(sims, np.float64), np.asarray(labels, np.int64)

    def nll(log_t: float) -> float:
        z = sims / np.exp(log_t)
        z = z - z.max(axis=1, keepdims=True)
        logp = z[np.arange(len(z)), labels] - np.log(np.exp(z).sum(axis=1))
        return float(-logp.mean())

    res = minimize_scalar(nll, bounds=(np.log(1e-4), np.log(100.0)), method="bounded")
    return float(np.exp(res.x))


def open_set_features(sims: np.ndarray) -> np.ndarray:
    """(N, 2): top similarity and its margin over the second (0 with a single centroid)."""
    sims = np.asarray(sims, np.float64)
    if sims.shape[1] == 0:
        return np.zeros((sims.shape[0], 2))
    top = np.sort(sims, axis=1)[:, ::-1]
    second = top[:, 1] if sims.shape[1] > 1 else top[:, 0]
    return np.stack([top[:, 0], top[:, 0] - second], axis=1)


def _logistic(x: np.ndarray, y: np.ndarray, balanced: bool = False) -> tuple[list[float], float]:
    """(coefficients, intercept) of an L2-regularised logistic regression, fitted on
    standardised features (so the regularisation does not depend on how spread the
    similarities of a given model are) and returned on the original scale."""
    from sklearn.linear_model import LogisticRegression

    x = np.asarray(x, np.float64)
    mean, std = x.mean(axis=0), x.std(axis=0)
    std = np.where(std > 1e-12, std, 1.0)
    model = LogisticRegression(
        C=REGULARISATION, class_weight="balanced" if balanced else None, max_iter=1000
    )
    model.fit((x - mean) / std, y)
    coef = model.coef_[0] / std
    return [float(c) for c in coef], float(model.intercept_[0] - np.dot(coef, mean))


def _logistic_decreasing(x: np.ndarray, y: np.ndarray, use: Sequence[bool]) -> tuple[list, float]:
    """A logistic model of "unknown" whose every coefficient is ≤ 0, so a higher top similarity
    or a clearer margin never makes a piece look *more* unknown: a feature whose fitted sign is
    wrong (or that ``use`` switches off) is dropped and the rest refitted."""
    keep = [bool(u) for u in use]
    while any(keep):
        cols = [i for i, k in enumerate(keep) if k]
        coef_k, bias = _logistic(x[:, cols], y)
        wrong = [c for c, v in zip(cols, coef_k, strict=True) if v > 0]
        if not wrong:
            coef = [0.0] * x.shape[1]
            for c, v in zip(cols, coef_k, strict=True):
                coef[c] = v
            return coef, bias
        for c in wrong:
            keep[c] = False
    rate = float(np.clip(np.mean(y), 1e-6, 1 - 1e-6))
    return [0.0] * x.shape[1], float(np.log(rate / (1 - rate)))


def _folds(groups: Sequence[str], k: int = FOLDS, seed: int = 0) -> np.ndarray:
    """Fold number per item; items of one group share a fold."""
    names = sorted(set(groups))
    rng = np.random.default_rng(seed)
    rng.shuffle(names)
    fold_of = {g: i % k for i, g in enumerate(names)}
    return np.array([fold_of[g] for g in groups], np.int64)


@dataclass(frozen=True)
class Calibration:
    """Fitted parameters plus the report ``index info`` shows. Unfitted parts keep neutral
    defaults (``T = 1``, no unknown, ``p = (1 + cos) / 2``) and say why in ``notes``."""

    temperature: float = 1.0
    unknown_coef: tuple[float, float] = (0.0, 0.0)
    unknown_bias: float = -30.0  # p(unknown) ≈ 0 until fitted
    same_coef: float = 0.0
    same_bias: float = 0.0
    same_fitted: bool = False
    report: dict[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    # ---------------------------------------------------------------- applying

    def unknown_probability(self, sims: np.ndarray) -> np.ndarray:
        """(N,) probability that each row's composer has no centroid."""
        sims = np.atleast_2d(np.asarray(sims, np.float64))
        if sims.shape[1] == 0:
            return np.ones(sims.shape[0])
        x = open_set_features(sims)
        return _sigmoid(x @ np.asarray(self.unknown_coef) + self.unknown_bias)

    def composer_probabilities(self, sims: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """((N, C) per known composer, (N,) unknown); each row sums to one with its unknown."""
        sims = np.atleast_2d(np.asarray(sims, np.float64))
        unknown = self.unknown_probability(sims)
        if sims.shape[1] == 0:
            return sims.copy(), unknown
        closed = softmax(sims / self.temperature, axis=1)
        return closed * (1.0 - unknown)[:, None], unknown

    def same_probability(self, cos: np.ndarray | float) -> np.ndarray:
        cos = np.asarray(cos, np.float64)
        if not self.same_fitted:
            return np.clip((1.0 + cos) / 2.0, 0.0, 1.0)
        return _sigmoid(self.same_coef * cos + self.same_bias)

    @property
    def threshold(self) -> float | None:
        """The similarity at which ``verify`` says *same composer* (p = 0.5)."""
        if not self.same_fitted:
            return 0.0
        if self.same_coef <= 0:
            return None
        return -self.same_bias / self.same_coef

    # ---------------------------------------------------------------- storage

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["unknown_coef"] = list(self.unknown_coef)
        d["notes"] = list(self.notes)
        d["threshold"] = self.threshold
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        d = {k: v for k, v in d.items() if k != "threshold"}
        d["unknown_coef"] = tuple(d.get("unknown_coef", (0.0, 0.0)))
        d["notes"] = tuple(d.get("notes", ()))
        return cls(**d)


# -------------------------------------------------------------------- fitting


def _fit_closed(
    sims: np.ndarray, labels: np.ndarray, folds: np.ndarray, report: dict[str, Any]
) -> float:
    t = fit_temperature(sims, labels)
    oof = np.zeros_like(sims)
    for f in np.unique(folds):
        out = folds == f
        t_f = t if out.all() else fit_temperature(sims[~out], labels[~out])
        oof[out] = softmax(sims[out] / t_f, axis=1)
    report["composer"] = {
        "method": "temperature scaling",
        "temperature": t,
        "pieces": int(len(labels)),
        "ece_before": expected_calibration_error(softmax(sims, axis=1), labels),
        "ece_after": expected_calibration_error(oof, labels),
        "top1_accuracy": float(np.mean(sims.argmax(axis=1) == labels)),
    }
    return t


def _open_set_examples(
    sims: np.ndarray, labels: np.ndarray, folds: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features, targets (1 = unknown) and folds: known pieces against all centroids and
    against all but their own; pieces of composers without a centroid (label -1) as they are."""
    xs, ys, fs = [], [], []
    known = labels >= 0
    if known.any():
        xs.append(open_set_features(sims[known]))
        ys.append(np.zeros(known.sum()))
        fs.append(folds[known])
        loco = sims[known].copy()
        loco[np.arange(len(loco)), labels[known]] = -np.inf
        loco = np.sort(loco, axis=1)[:, ::-1][:, :-1]  # drop the removed column
        xs.append(open_set_features(loco))
        ys.append(np.ones(known.sum()))
        fs.append(folds[known])
    if (~known).any():
        xs.append(open_set_features(sims[~known]))
        ys.append(np.ones((~known).sum()))
        fs.append(folds[~known])
    return np.concatenate(xs), np.concatenate(ys).astype(np.int64), np.concatenate(fs)


def _fit_open(
    sims: np.ndarray, labels: np.ndarray, folds: np.ndarray, report: dict[str, Any]
) -> tuple[tuple[float, float], float]:
    from sklearn.metrics import roc_auc_score

    x, y, f = _open_set_examples(sims, labels, folds)
    # with two known composers, leaving one out leaves a single centroid: every simulated
    # stranger has margin 0, so the margin would only learn that artefact
    use = (True, sims.shape[1] >= 3)
    coef, bias = _logistic_decreasing(x, y, use)
    oof = np.zeros(len(y))
    for k in np.unique(f):
        out = f == k
        train_y = y[~out]
        if out.all() or len(np.unique(train_y)) < 2:
            c, b = coef, bias
        else:
            c, b = _logistic_decreasing(x[~out], train_y, use)
        oof[out] = _sigmoid(x[out] @ np.asarray(c) + b)
    report["unknown"] = {
        "method": "logistic on (top similarity, margin), leave-one-composer-out, "
        "coefficients constrained ≤ 0",
        "coefficients": [float(coef[0]), float(coef[1])],
        "examples": int(len(y)),
        "held_out_composer_pieces": int((labels < 0).sum()),
        "auc": float(roc_auc_score(y, oof)),
        "ece": binary_ece(oof, y),
    }
    return (coef[0], coef[1]), bias


def validation_pairs(
    groups: Sequence[str], max_pairs: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i < j) of pieces from different groups, at most ``max_pairs`` (seeded)."""
    g = np.asarray(groups)
    i, j = np.triu_indices(len(g), k=1)
    keep = g[i] != g[j]
    i, j = i[keep], j[keep]
    if len(i) > max_pairs:
        pick = np.sort(np.random.default_rng(seed).choice(len(i), max_pairs, replace=False))
        i, j = i[pick], j[pick]
    return i, j


def _fit_verify(
    emb: np.ndarray,
    composers: Sequence[str],
    groups: Sequence[str],
    max_pairs: int,
    seed: int,
    report: dict[str, Any],
) -> tuple[float, float] | str:
    i, j = validation_pairs(groups, max_pairs, seed)
    c = np.asarray(composers)
    y = (c[i] == c[j]).astype(np.int64)
    if len(y) == 0 or y.all() or not y.any():
        return "verify not calibrated: validation has no pairs of both kinds from different works"
    cos = np.einsum("nd,nd->n", emb[i], emb[j]).astype(np.float64)
    (a,), b = _logistic(cos[:, None], y, balanced=True)
    p = _sigmoid(a * cos + b)
    from sklearn.metrics import roc_auc_score

    weight = np.where(y == 1, 0.5 / y.mean(), 0.5 / (1 - y.mean()))
    report["verify"] = {
        "method": "Platt scaling on cosine similarity, classes weighted equally",
        "pairs": int(len(y)),
        "same_pairs": int(y.sum()),
        "threshold": -b / a if a > 0 else None,
        "balanced_accuracy": float(np.sum(weight * ((p >= 0.5) == y)) / weight.sum()),
        "auc": float(roc_auc_score(y, cos)),
        "ece": binary_ece(p, y),
    }
    return a, b


def fit_calibration(
    embeddings: np.ndarray,
    composers: Sequence[str],
    groups: Sequence[str],
    centroids: np.ndarray,
    known: Sequence[str],
    *,
    max_pairs: int = 20_000,
    seed: int = 0,
) -> Calibration:
    """Fit all three models on validation pieces: their whole-piece ``embeddings`` (N, D),
    ``composers`` and ``groups`` (works), against ``centroids`` (C, D) of the ``known``
    composers (from the training split)."""
    emb = np.asarray(embeddings, np.float32)
    notes: list[str] = []
    report: dict[str, Any] = {"validation_pieces": int(len(emb))}
    params: dict[str, Any] = {}
    label_of = {c: i for i, c in enumerate(known)}
    labels = np.array([label_of.get(c, -1) for c in composers], np.int64)
    sims = emb @ np.asarray(centroids, np.float32).T if len(emb) else np.zeros((0, len(known)))
    folds = _folds(list(groups), seed=seed) if len(emb) else np.zeros(0, np.int64)
    is_known = labels >= 0
    if len(known) == 0:
        notes.append("no composer centroids: nothing to calibrate")
    elif not is_known.any():
        notes.append("composer probabilities not calibrated: no validation piece of a known one")
    else:
        params["temperature"] = _fit_closed(
            sims[is_known], labels[is_known], folds[is_known], report
        )
    if len(known) >= 2 and len(emb) and is_known.any():
        params["unknown_coef"], params["unknown_bias"] = _fit_open(sims, labels, folds, report)
    elif len(known):
        notes.append(
            "unknown not calibrated: needs two known composers and validation pieces of them"
        )
    fitted = _fit_verify(emb, composers, groups, max_pairs, seed, report)
    if isinstance(fitted, str):
        notes.append(fitted)
    else:
        params["same_coef"], params["same_bias"] = fitted
        params["same_fitted"] = True
    return Calibration(**params, report=report, notes=tuple(notes))
