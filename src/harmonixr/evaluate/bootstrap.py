"""Bootstrap intervals over groups (works): pairs and pieces that share a work are not
independent, so whole groups are resampled with replacement (a seeded resampler)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

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
    intervals = bootstrap_intervals(lambda w: {"stat": stat(w)}, ["stat"], groups, n, seed, level)
    return intervals["stat"]


def bootstrap_intervals(
    stats: Callable[[np.ndarray], dict[str, float]],
    keys: Sequence[str],
    groups: np.ndarray,
    n: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """:func:`bootstrap_interval` of several statistics computed together (``stats`` returns
    them by name), on the same resamples: one pass instead of one per statistic."""
    groups = np.asarray(groups)
    _, inv = np.unique(groups, return_inverse=True)
    counts = group_resamples(groups, n, seed)
    values: dict[str, list[float]] = {k: [] for k in keys}
    for c in counts:
        try:
            got = stats(c[inv].astype(np.float64))
        except ValueError:
            got = {}
        for k in keys:
            values[k].append(float(got.get(k, np.nan)))
    out = {}
    for k in keys:
        arr = np.asarray(values[k])
        arr = arr[np.isfinite(arr)]
        if arr.size < n / 2:
            out[k] = (float("nan"), float("nan"))
        else:
            lo, hi = np.percentile(arr, [50 * (1 - level), 50 * (1 + level)])
            out[k] = (float(lo), float(hi))
    return out
