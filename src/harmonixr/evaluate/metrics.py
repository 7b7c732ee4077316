"""Pure numpy metrics for pair verification (mir_eval's shape: arrays in, floats out).

Convention: a pair is predicted *same composer* when its distance is **below** the threshold.
"""

from __future__ import annotations

import numpy as np


def _check(d: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d, y = np.asarray(d, np.float64).ravel(), np.asarray(y).ravel().astype(bool)
    if d.shape != y.shape:
        raise ValueError(f"{d.size} distances but {y.size} labels")
    return d, y


def accuracy_at(d: np.ndarray, y: np.ndarray, threshold: float) -> float:
    """Share of pairs classified right when ``d < threshold`` means same composer."""
    d, y = _check(d, y)
    if d.size == 0:
        return float("nan")
    return float(np.mean((d < threshold) == y))


def best_threshold(d: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(threshold, accuracy) maximising accuracy; candidate thresholds are midpoints between
    sorted distinct distances plus both ends. Ties go to the smallest threshold."""
    d, y = _check(d, y)
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


def roc_auc(d: np.ndarray, y: np.ndarray) -> float:
    """ROC AUC with score −d (closer = more likely same). NaN when one class is missing."""
    d, y = _check(d, y)
    if y.all() or not y.any():
        return float("nan")
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, -d))
