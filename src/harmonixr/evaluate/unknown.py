""" "Someone else": the open-set part of the calibration (``calibrate.py``), apart so that the
open-set study (``openset.py``) and the held-out measurement use it without the rest.

A logistic model of "unknown" on three features of a piece (``FEATURES``): its top similarity
to a named composer's centroid, the margin over the second, and that top similarity measured
against the spread of the composer's own training pieces around their centroid. Every
coefficient is ≤ 0 (``fit_decreasing``), so a piece that fits better never looks more foreign.
The model is fitted on real strangers (``OpenSetModel``) or on simulated ones
(``simulated_strangers``); its operating point comes from validation (``operating_point``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from harmonixr.evaluate.metrics import balanced_weights, centroids

REGULARISATION = 1.0  # logistic C (inverse L2 strength) of the small models on standardised x
FEATURES = ("top similarity", "margin", "top similarity in the composer's spread")
SPREAD_PRIOR = 5.0  # pieces' worth of the pooled spread mixed into each composer's own
FALSE_UNKNOWN = 0.10  # share of validation pieces of named composers allowed to be called unknown


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def open_set_features(sims: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """(N, 3) ``FEATURES``: the top centroid similarity, its margin over the second (0 with a
    single composer), and ``(top − mean[c]) / std[c]`` for the top composer ``c``."""
    sims = np.atleast_2d(np.asarray(sims, np.float64))
    if sims.shape[1] == 0:
        return np.zeros((sims.shape[0], 3))
    best = sims.argmax(axis=1)
    top = sims[np.arange(len(sims)), best]
    second = -np.sort(-sims, axis=1)[:, 1] if sims.shape[1] > 1 else top
    z = (top - np.asarray(mean, np.float64)[best]) / np.asarray(std, np.float64)[best]
    return np.stack([top, top - second, z], axis=1)


def spread_statistics(
    emb: np.ndarray, composers: np.ndarray, names: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(centroids (E, D), mean (E,), std (E,)) of the named composers: the mean and spread of
    their training pieces' similarity to their own centroid, each std shrunk towards the pooled
    one by ``SPREAD_PRIOR`` pieces (a composer of three pieces has no reliable spread)."""
    cents = centroids(emb, composers, names)
    sims = [emb[composers == n] @ cents[k] for k, n in enumerate(names)]
    pooled = float(np.std(np.concatenate([s - s.mean() for s in sims]))) if sims else 1.0
    pooled = max(pooled, 1e-6)
    mean = np.array([s.mean() for s in sims])
    var = np.array(
        [(len(s) * s.var() + SPREAD_PRIOR * pooled**2) / (len(s) + SPREAD_PRIOR) for s in sims]
    )
    return cents, mean, np.sqrt(var)


def logistic(
    x: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None
) -> tuple[list[float], float]:
    """(coefficients, intercept) of an L2-regularised logistic regression, fitted on
    standardised features (so the regularisation does not depend on how spread one model's
    similarities are) and returned on the original scale. ``weights`` per example."""
    from sklearn.linear_model import LogisticRegression

    x = np.asarray(x, np.float64)
    mean, std = x.mean(axis=0), x.std(axis=0)
    std = np.where(std > 1e-12, std, 1.0)
    model = LogisticRegression(C=REGULARISATION, max_iter=1000)
    w = None if weights is None else np.asarray(weights, np.float64) * len(y) / np.sum(weights)
    model.fit((x - mean) / std, y, sample_weight=w)
    coef = model.coef_[0] / std
    return [float(c) for c in coef], float(model.intercept_[0] - np.dot(coef, mean))


def fit_decreasing(
    x: np.ndarray, y: np.ndarray, use: Sequence[bool] | None = None
) -> tuple[list[float], float]:
    """A class-balanced logistic model of "unknown" (``y = 1``) whose every coefficient is ≤ 0:
    a feature whose fitted sign is wrong (or that ``use`` switches off) is dropped and the rest
    refitted."""
    y = np.asarray(y, np.int64)
    keep = [True] * x.shape[1] if use is None else [bool(u) for u in use]
    w = balanced_weights(y)
    while any(keep):
        cols = [i for i, k in enumerate(keep) if k]
        coef_k, bias = logistic(x[:, cols], y, w)
        wrong = [c for c, v in zip(cols, coef_k, strict=True) if v > 0]
        if not wrong:
            coef = [0.0] * x.shape[1]
            for c, v in zip(cols, coef_k, strict=True):
                coef[c] = v
            return coef, bias
        for c in wrong:
            keep[c] = False
    return [0.0] * x.shape[1], 0.0  # balanced classes, no usable feature: p = 0.5


def prior_shift(prior_unknown: float | None) -> float:
    """Log-odds added to the unknown logit for a prior other than the even one it was fitted
    at (Bayes' rule: posterior odds = likelihood ratio × prior odds)."""
    if prior_unknown is None:
        return 0.0
    if not 0.0 < prior_unknown < 1.0:
        raise ValueError(f"prior_unknown must be strictly between 0 and 1, got {prior_unknown}")
    return math.log(prior_unknown / (1.0 - prior_unknown))


@dataclass(frozen=True)
class OpenSetModel:
    """An unknown-composer model learnt elsewhere (on real strangers), for ``FEATURES``."""

    coef: tuple[float, ...]
    bias: float
    source: str

    def to_dict(self) -> dict[str, Any]:
        return {"coef": list(self.coef), "bias": self.bias, "source": self.source}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OpenSetModel:
        return cls(tuple(float(c) for c in d["coef"]), float(d["bias"]), str(d["source"]))


def operating_point(p_unknown_named: np.ndarray) -> float:
    """The operating point of "someone else" from validation pieces of named composers: the
    larger of 0.5 and the probability that only ``FALSE_UNKNOWN`` of them reach."""
    p = np.asarray(p_unknown_named, np.float64)
    return max(0.5, float(np.quantile(p, 1.0 - FALSE_UNKNOWN))) if p.size else 0.5


def simulated_strangers(
    sims: np.ndarray, labels: np.ndarray, mean: np.ndarray, std: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Simulated strangers: each known piece as it is (0) and with its own composer's column
    removed (1): what "someone else" is fitted on without real strangers."""
    n, e = sims.shape
    x0 = open_set_features(sims, mean, std)
    hidden = sims.copy()
    hidden[np.arange(n), labels] = -np.inf  # never the top: as if the column were gone
    x1 = open_set_features(hidden, mean, std)
    ranked = -np.sort(-hidden, axis=1)  # the hidden column (-inf) sorts last
    x1[:, 1] = ranked[:, 0] - ranked[:, 1] if e > 2 else 0.0
    return np.concatenate([x0, x1]), np.concatenate([np.zeros(n), np.ones(n)]).astype(np.int64)


# what "someone else" must reach, held out (test side and outsiders pooled), to stay an answer
OPEN_SET_BAR = {"detection_auc": 0.75, "strangers_caught": 0.60, "known_called_unknown": 0.15}


def open_set_verdict(figures: dict[str, Any]) -> tuple[bool, str]:
    """(withdrawn, note) from held-out open-set figures (values or estimates): withdrawn unless
    detection AUC, strangers caught and named pieces called unknown all meet ``OPEN_SET_BAR``."""

    def v(key: str) -> float | None:
        x = figures.get(key)
        x = x.get("value") if isinstance(x, dict) else x
        return None if x is None else float(x)

    auc, caught, false = (v(k) for k in OPEN_SET_BAR)
    ok = (
        auc is not None
        and caught is not None
        and false is not None
        and auc >= OPEN_SET_BAR["detection_auc"]
        and caught >= OPEN_SET_BAR["strangers_caught"]
        and false <= OPEN_SET_BAR["known_called_unknown"]
    )
    if ok:
        return False, ""

    def show(x: float | None) -> str:
        return "not measured" if x is None else f"{x:.2f}"

    return True, (
        "this model cannot tell whether a piece is by a composer it does not know: held out, "
        f"its 'someone else' reached a detection AUC of {show(auc)} and caught {show(caught)} "
        f"of strangers while calling {show(false)} of named composers' pieces unknown (the bar: "
        f"{OPEN_SET_BAR['detection_auc']}, {OPEN_SET_BAR['strangers_caught']}, "
        f"{OPEN_SET_BAR['known_called_unknown']}); probabilities are over the named composers"
    )
