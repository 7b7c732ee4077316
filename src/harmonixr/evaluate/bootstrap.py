"""The one bootstrap: intervals over units (leak-free groups of works). Pieces and pairs that
share a unit are not independent, so whole units are resampled with replacement (a seeded
resampler), and every figure's interval comes from :class:`Population`.

A population is the units a figure's items belong to — by default the units of the items
measured; a cross-validation resamples every unit of its corpus (``Bootstrap.universe``), as its
reports always have. A statistic receives one weight per unit of the population (how often the
unit was drawn) and returns its value on the reweighted sample; with every weight 1 it is the
figure itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from harmonixr.evaluate.records import Estimate

UnitStat = Callable[[np.ndarray], float]


def group_resamples(groups: np.ndarray, n: int = 1000, seed: int = 0) -> np.ndarray:
    """``(n, G)`` multiplicities: how often each of the G distinct groups is drawn in each
    resample (G draws with replacement). Groups are indexed by ``np.unique(groups)``."""
    _, inv = np.unique(np.asarray(groups), return_inverse=True)
    g = int(inv.max()) + 1 if inv.size else 0
    return _draws(g, n, seed)


def _draws(g: int, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.multinomial(g, np.full(g, 1.0 / g), size=n) if g else np.zeros((n, 0), int)


def _percentiles(values: list[float], n: int, level: float) -> tuple[float, float]:
    arr = np.asarray(values, np.float64)
    arr = arr[np.isfinite(arr)]
    if arr.size < n / 2:  # more than half the resamples without a value: no interval
        return float("nan"), float("nan")
    lo, hi = np.percentile(arr, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


@dataclass(frozen=True)
class Bootstrap:
    """How intervals are drawn: ``resamples`` draws seeded by ``seed``, percentile intervals at
    ``level``; ``universe``: the units every population resamples (None: the units of the items
    measured)."""

    resamples: int = 1000
    seed: int = 0
    level: float = 0.95
    universe: np.ndarray | None = field(default=None, compare=False)

    def population(self, units: Sequence[object] | np.ndarray) -> Population:
        """The population of items labelled with ``units`` (one unit name per item)."""
        units = np.asarray(units, dtype=object)
        if self.universe is None:
            names, codes = np.unique(units, return_inverse=True)
        else:
            names = np.unique(np.asarray(self.universe, dtype=object))
            codes = np.searchsorted(names, units) if units.size else np.zeros(0, np.int64)
            if units.size and not np.array_equal(names[np.minimum(codes, len(names) - 1)], units):
                raise ValueError("units outside the bootstrap's universe")
        return Population(self, names, np.asarray(codes, np.int64).ravel())


@dataclass(frozen=True, eq=False)
class Population:
    """The units a bootstrap resamples (``names``) and the unit of each item (``codes``)."""

    boot: Bootstrap
    names: np.ndarray
    codes: np.ndarray

    @property
    def size(self) -> int:
        return len(self.names)

    def counts(self) -> np.ndarray:
        """``(resamples, size)`` multiplicities of each unit in each resample."""
        return _draws(self.size, self.boot.resamples, self.boot.seed)

    def intervals(
        self, stats: Callable[[np.ndarray], Mapping[str, float]], keys: Sequence[str]
    ) -> dict[str, tuple[float, float]]:
        """Percentile intervals of several statistics computed together on the same resamples
        (``stats(unit_weights)`` returns them by name). Resamples where one is not finite (one
        class missing) or that raise ``ValueError`` are dropped for it; when more than half
        are, its interval is (nan, nan)."""
        values: dict[str, list[float]] = {k: [] for k in keys}
        for c in self.counts():
            try:
                got = stats(c.astype(np.float64))
            except ValueError:
                got = {}
            for k in keys:
                values[k].append(float(got.get(k, np.nan)))
        return {k: _percentiles(values[k], self.boot.resamples, self.boot.level) for k in keys}

    def estimates(
        self,
        stats: Callable[[np.ndarray], Mapping[str, float]],
        weighting: Mapping[str, str],
    ) -> dict[str, Estimate]:
        """Each statistic (named in ``weighting``, with its weighting) as an estimate: its
        value with every unit weighing one, and its interval."""
        keys = list(weighting)
        try:
            point = stats(np.ones(self.size))
        except ValueError:
            point = {}
        iv = self.intervals(stats, keys)
        return {
            k: Estimate(point.get(k), *iv[k], weighting=weighting[k], resamples=self.boot.resamples)
            for k in keys
        }

    def estimate(self, stat: UnitStat, weighting: str) -> Estimate:
        """One statistic as an estimate."""
        return self.estimates(lambda w: {"x": stat(w)}, {"x": weighting})["x"]

    def item_estimate(self, stat: UnitStat, weighting: str) -> Estimate:
        """One statistic of per-*item* weights (each item weighs what its unit drew)."""
        return self.estimate(lambda w: stat(w[self.codes]), weighting)

    def mean(self, values: np.ndarray, weighting: str = "pieces") -> Estimate:
        """The mean of per-item ``values`` (non-finite ones left out), each item weighing
        what its unit drew."""
        values = np.asarray(values, np.float64)
        ok = np.isfinite(values)
        v, u = values[ok], self.codes[ok]
        if not v.size:
            return Estimate(None, weighting=weighting)

        def stat(w: np.ndarray) -> float:
            ww = w[u]
            return float(np.sum(ww * v) / ww.sum()) if ww.sum() > 0 else float("nan")

        return self.estimate(stat, weighting)


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
    pop = Bootstrap(n, seed, level).population(groups)
    return pop.intervals(lambda w: {"stat": stat(w[pop.codes])}, ["stat"])["stat"]
