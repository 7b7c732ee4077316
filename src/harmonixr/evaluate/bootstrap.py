"""Bootstrap intervals over groups (works): pairs and pieces that share a work are not
independent, so whole groups are resampled with replacement (a seeded resampler)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def group_resamples(groups: np.ndarray, n: int = 1000, seed: int = 0) -> np.ndarray:
    """``(n, G)`` multiplicities: how often each of the G distinct groups is drawn in each
    resample (G draws with replacement). Groups are indexed by ``np.unique(groups)``."""
    _, inv = np.unique(np.asarray(groups), return_inverse=True)
    g = int(inv.max()) + 1 if inv.size else 0
    rng = np.random.default_rng(seed)
    return rng.multinomial(g, np.full(g, 1.0 / g), size=n) if g else np.zeros((n, 0), int)


def bootstrap_interval(
    stat: Callable[[np.ndarray], float],
    groups: np.ndarray,
    n: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile interval of ``stat(piece_weights)`` over group resamples.

    ``stat`` receives one weight per piece (its group's multiplicity; 0 = left out) and returns
    the statistic on the reweighted sample. Resamples where it is not finite (e.g. one class
    missing) are dropped; if more than half are, the interval is (nan, nan)."""
    groups = np.asarray(groups)
    _, inv = np.unique(groups, return_inverse=True)
    counts = group_resamples(groups, n, seed)
    values = []
    for c in counts:
        try:
            v = float(stat(c[inv].astype(np.float64)))
        except ValueError:
            v = float("nan")
        values.append(v)
    arr = np.asarray(values)
    arr = arr[np.isfinite(arr)]
    if arr.size < n / 2:
        return float("nan"), float("nan")
    lo, hi = np.percentile(arr, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)
