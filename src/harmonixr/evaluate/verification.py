"""Verification ("same composer?") on pairs of pieces from different units, written once: the
pairs of one side (``within``) or of a side against another (``between``), pooled over folds,
and every registered metric (:data:`PAIR_METRICS`) measured on them with both weightings —
every pair of pieces once (``pairs``) and every pair of units once (``unit pairs``, key suffix
``_gpe``) — each with a bootstrap interval over units.

**Adding a verification metric** is one function here, registered with :func:`pair_metric`: it
reads a :class:`Tally` (weighted same- and different-composer pairs per distance, nearest
first) and returns a float (nan where undefined). Every report — a run's, a cross-validation's,
leave-one-source-out's, a held-out measurement's — then measures it on every set of pairs, with
both weightings and an interval, and prints it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from harmonixr.evaluate.bootstrap import Bootstrap
from harmonixr.evaluate.metrics import (
    StratifiedAUC,
    balanced_weights_weighted,
    binary_balanced_accuracy,
    binary_ece,
    check_pairs,
    cosine_distance,
    eer_of_roc,
    group_pair_weights,
    roc_auc,
    tpr_of_roc,
)
from harmonixr.evaluate.records import Estimate, Side
from harmonixr.evaluate.unknown import logistic, sigmoid


class RankedPairs:
    """One set of scored pairs, sorted once by distance (nearest first, ties grouped), so that
    each weighting of them (a bootstrap's, the unit-pair one) costs two bincounts instead of a
    sort: :meth:`tally` gives the weighted classes per distance, from which AUC and the ROC
    follow. ``auc(w)`` equals ``roc_auc(d, y, weights=w)``."""

    def __init__(self, d: np.ndarray, y: np.ndarray) -> None:
        d, y = check_pairs(d, y)
        self.order = np.argsort(d, kind="stable")
        ds = d[self.order]
        new = np.ones(ds.size, bool)
        new[1:] = ds[1:] != ds[:-1]
        self.tie = np.cumsum(new) - 1
        self.n_ties = int(self.tie[-1]) + 1 if ds.size else 0
        self.pos = y[self.order].astype(np.float64)

    def tally(self, weights: np.ndarray | None = None) -> Tally:
        """The weighted same- and different-composer pairs at each distinct distance."""
        w = np.ones(self.pos.size) if weights is None else np.asarray(weights, float)[self.order]
        wp = np.bincount(self.tie, weights=w * self.pos, minlength=self.n_ties)
        wn = np.bincount(self.tie, weights=w * (1.0 - self.pos), minlength=self.n_ties)
        return Tally(wp, wn)

    def auc(self, weights: np.ndarray | None = None) -> float:
        return self.tally(weights).auc()


class Tally:
    """Weighted same-composer (``wp``) and different-composer (``wn``) pairs at each distinct
    distance, nearest first: what every verification metric reads."""

    def __init__(self, wp: np.ndarray, wn: np.ndarray) -> None:
        self.wp, self.wn = wp, wn
        self._roc: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def both_classes(self) -> bool:
        return bool(self.wp.sum() > 0 and self.wn.sum() > 0)

    def auc(self) -> float:
        """ROC AUC with score −d, ties counting half; nan without both classes."""
        wp, wn = self.wp, self.wn
        p, n = wp.sum(), wn.sum()
        if p <= 0 or n <= 0:
            return float("nan")
        later = n - np.cumsum(wn)  # negatives strictly farther than this tie group
        return float(np.sum(wp * (later + 0.5 * wn)) / (p * n))

    def roc(self) -> tuple[np.ndarray, np.ndarray]:
        """(false positive rate, true positive rate) at every distinct distance, from (0, 0):
        the points of :func:`roc_curve` (a pair is called same when ``d <= threshold``)."""
        if self._roc is None:
            tps = np.concatenate(([0.0], np.cumsum(self.wp)))
            fps = np.concatenate(([0.0], np.cumsum(self.wn)))
            self._roc = (fps / fps[-1], tps / tps[-1])
        return self._roc


class PairMetric(NamedTuple):
    name: str  # the report's key
    label: str  # the column's header
    fn: Callable[[Tally], float]


PAIR_METRICS: dict[str, PairMetric] = {}


def pair_metric(name: str, label: str) -> Callable[[Callable[[Tally], float]], Callable]:
    """Register a verification metric (``fn(tally) -> float``; nan where it is undefined)."""

    def register(fn: Callable[[Tally], float]) -> Callable[[Tally], float]:
        PAIR_METRICS[name] = PairMetric(name, label, fn)
        return fn

    return register


@pair_metric("auc", "AUC")
def _auc(t: Tally) -> float:
    return t.auc()


@pair_metric("eer", "EER")
def _eer(t: Tally) -> float:
    return eer_of_roc(*t.roc()) if t.both_classes else float("nan")


@pair_metric("tpr_at_1fpr", "TPR@1%FPR")
def _tpr_at_1fpr(t: Tally) -> float:
    return tpr_of_roc(*t.roc(), 0.01) if t.both_classes else float("nan")


@pair_metric("frr_at_far5", "FRR@FAR 5%")
def _frr_at_far5(t: Tally) -> float:
    """False-reject rate (same-composer pairs called different) at the threshold that falsely
    accepts at most 5 % of different-composer pairs."""
    return 1.0 - tpr_of_roc(*t.roc(), 0.05) if t.both_classes else float("nan")


# pairs by the kinds of their two pieces (a cross-validation's headline rows)
KIND_SECTIONS = {"performance": "verify_performance", "score": "verify_score"}
CROSS_KIND = "verify_cross-kind"


@dataclass(frozen=True, eq=False)
class Pairs:
    """Scored pairs: distance ``d``, same composer ``y``, each pair's two pieces ``a`` and ``b``
    as indices into ``units`` (the unit of every piece they come from) and the pair's kind
    category (``performance``, ``score``, ``cross-kind``, ``other``)."""

    d: np.ndarray
    y: np.ndarray
    a: np.ndarray
    b: np.ndarray
    units: np.ndarray
    category: np.ndarray

    def take(self, mask: np.ndarray) -> Pairs:
        return Pairs(
            self.d[mask], self.y[mask], self.a[mask], self.b[mask], self.units, self.category[mask]
        )

    @staticmethod
    def pool(parts: Sequence[Pairs]) -> Pairs:
        """Several folds' pairs as one set (piece indices shifted past the earlier folds)."""
        offsets = np.cumsum([0] + [len(p.units) for p in parts[:-1]])
        return Pairs(
            np.concatenate([p.d for p in parts]),
            np.concatenate([p.y for p in parts]).astype(bool),
            np.concatenate([p.a + o for p, o in zip(parts, offsets, strict=True)]),
            np.concatenate([p.b + o for p, o in zip(parts, offsets, strict=True)]),
            np.concatenate([p.units for p in parts]),
            np.concatenate([p.category for p in parts]),
        )


def _category(ka: np.ndarray, kb: np.ndarray) -> np.ndarray:
    both_perf = (ka == "performance") & (kb == "performance")
    both_score = (ka == "score") & (kb == "score")
    mixed = np.where(ka != kb, "cross-kind", "other")
    return np.where(both_perf, "performance", np.where(both_score, "score", mixed))


def cross_pairs(side: Side) -> tuple[np.ndarray, np.ndarray]:
    """All pairs (i < j) of a side's pieces from different units."""
    ii, jj = np.triu_indices(len(side), k=1)
    keep = side.unit[ii] != side.unit[jj]
    return ii[keep], jj[keep]


def within(side: Side) -> Pairs:
    """Every pair of the side's pieces from different units."""
    i, j = cross_pairs(side)
    return Pairs(
        cosine_distance(side.embeddings[i], side.embeddings[j]),
        side.composer[i] == side.composer[j],
        i,
        j,
        side.unit,
        _category(side.kind[i], side.kind[j]),
    )


def between(a: Side, b: Side) -> Pairs:
    """Every pair of one piece of ``a`` and one of ``b`` from different units (a held-out
    piece against the pieces of the training side, say)."""
    i, j = np.meshgrid(np.arange(len(a)), np.arange(len(b)), indexing="ij")
    i, j = i.ravel(), j.ravel()
    keep = a.unit[i] != b.unit[j]
    i, j = i[keep], j[keep]
    return Pairs(
        cosine_distance(a.embeddings[i], b.embeddings[j]),
        a.composer[i] == b.composer[j],
        i,
        j + len(a),
        np.concatenate([a.unit, b.unit]),
        _category(a.kind[i], b.kind[j]),
    )


def pair_figures(p: Pairs, boot: Bootstrap) -> dict[str, object]:
    """Pair counts and, when both classes are present, every registered metric with both
    weightings, each an estimate with its interval (units of the pairs' pieces resampled; a
    pair weighs the product of its two units' draws)."""
    y = np.asarray(p.y, bool)
    out: dict[str, object] = {"pairs": int(y.size), "same": int(y.sum())}
    if not 0 < y.sum() < y.size:
        return out
    pop = boot.population(p.units)
    ua, ub = pop.codes[p.a], pop.codes[p.b]
    gpe = group_pair_weights(ua, ub)
    ranked = RankedPairs(p.d, y)
    weighting = {}
    for name in PAIR_METRICS:
        weighting[name], weighting[f"{name}_gpe"] = "pairs", "unit pairs"

    def stats(w: np.ndarray) -> dict[str, float]:
        pw = w[ua] * w[ub]
        got = {}
        for suffix, t in (("", ranked.tally(pw)), ("_gpe", ranked.tally(pw * gpe))):
            for m in PAIR_METRICS.values():
                got[m.name + suffix] = m.fn(t)
        return got

    out.update({k: e.to_json() for k, e in pop.estimates(stats, weighting).items()})
    return out


def verification_sections(p: Pairs, boot: Bootstrap, prefix: str = "verify") -> dict[str, dict]:
    """``prefix`` over every pair, and (for ``verify``) the pairs of two performances, of two
    scores and of one of each."""
    out = {prefix: pair_figures(p, boot)}
    if prefix == "verify":
        for cat, name in (*KIND_SECTIONS.items(), ("cross-kind", CROSS_KIND)):
            out[name] = pair_figures(p.take(p.category == cat), boot)
    return out


def performer_control(sides: Sequence[Side], boot: Bootstrap) -> dict[str, object]:
    """The performer control: among test pairs of *different* composers (and different units)
    whose performers are known, does the similarity tell the pairs played by one performer from
    those played by two? Pairs are compared only within the same pair of composers (and fold: a
    performer's repertoire would otherwise stand in for the performer): AUC 0.5, the embedding
    does not hear the performer; towards 1, it does. Also the share of same-composer pairs that
    share a performer."""
    parts: dict[str, list[np.ndarray]] = {}
    for k, side in enumerate(sides):
        i, j = cross_pairs(side)
        known = (side.performer[i] != "") & (side.performer[j] != "")
        y_all = side.composer[i] == side.composer[j]
        same_perf = known & (side.performer[i] == side.performer[j])
        keep = known & ~y_all
        i, j = i[keep], j[keep]
        pairs = zip(side.composer[i], side.composer[j], strict=True)
        strata = [f"{k}\x00" + "\x00".join(sorted((str(a), str(b)))) for a, b in pairs]
        offset = sum(len(s) for s in sides[:k])
        for name, v in (
            ("shared", same_perf[y_all]),
            ("y", side.performer[i] == side.performer[j]),
            ("d", cosine_distance(side.embeddings[i], side.embeddings[j])),
            ("strata", np.array(strata, dtype=object)),
            ("a", i + offset),
            ("b", j + offset),
        ):
            parts.setdefault(name, []).append(v)
    c = {k: np.concatenate(v) for k, v in parts.items()}
    y = c["y"].astype(bool)
    out: dict[str, object] = {
        "same_performer_share": Estimate(
            c["shared"].mean() if c["shared"].size else None
        ).to_json(),
        "pairs": int(y.size),
        "same": int(y.sum()),
    }
    within_strata = StratifiedAUC(c["d"], y, c["strata"])
    if y.any() and np.isfinite(within_strata()):
        pop = boot.population(np.concatenate([s.unit for s in sides]))
        a, b = pop.codes[c["a"]], pop.codes[c["b"]]
        out["auc"] = pop.estimate(lambda w: within_strata(w[a] * w[b]), "pairs").to_json()
    return out


# ---------------------------------------------------------------- calibrated verify


def verify_pairs(
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


def verify_figures(
    p: np.ndarray, y: np.ndarray, ga, gb, weights: np.ndarray | None = None
) -> dict[str, float]:
    """Balanced accuracy at p ≥ 0.5 and ECE at an even prior, pair-weighted and with every
    group pair weighing the same; ``weights`` multiply both (a bootstrap's multiplicities)."""
    y = np.asarray(y).astype(bool)
    base = np.ones(len(y)) if weights is None else np.asarray(weights, np.float64)
    out: dict[str, float] = {"pairs": int(len(y)), "same_pairs": int(y.sum())}
    if not (base[y].sum() > 0 and base[~y].sum() > 0):
        return out
    gpe = group_pair_weights(ga, gb)
    for name, w in (("", base), ("_gpe", base * gpe)):
        even = w * balanced_weights_weighted(y, w)
        out[f"balanced_accuracy{name}"] = binary_balanced_accuracy(p >= 0.5, y, w)
        out[f"ece{name}"] = binary_ece(p, y, weights=even)
    out["auc"] = roc_auc(-p, y, base)
    return out


def fit_verify(
    emb: np.ndarray,
    composers: np.ndarray,
    groups: np.ndarray,
    max_pairs: int,
    seed: int,
    fitted_on: str,
) -> tuple[float, float, dict[str, Any]] | str:
    """``verify``'s Platt scaling, ``sigmoid(a · cos + b)``, on pairs of the pieces (validation)
    from different groups, each group pair weighing one and the classes even: (a, b, its
    figures there), or why it could not be fitted."""
    i, j = verify_pairs(list(groups), max_pairs, seed)
    y = (composers[i] == composers[j]).astype(np.int64)
    if len(y) == 0 or y.all() or not y.any():
        return "verify not calibrated: validation has no pairs of both kinds from different works"
    cos = np.einsum("nd,nd->n", emb[i], emb[j]).astype(np.float64)
    gpe = group_pair_weights(groups[i], groups[j])
    (a,), b = logistic(cos[:, None], y, gpe * balanced_weights_weighted(y, gpe))
    p = sigmoid(a * cos + b)
    report = {
        "method": "Platt scaling on cosine similarity; each group pair weighs one, classes even",
        "measured_on": fitted_on,
        "threshold": -b / a if a > 0 else None,
        **verify_figures(p, y, groups[i], groups[j]),
    }
    return a, b, report
