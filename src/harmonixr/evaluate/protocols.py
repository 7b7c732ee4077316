"""The evaluation protocols, as functions of a fold's sides, registered in one place
(:data:`PROTOCOLS`, as mir_eval registers a task's metrics).

A **fold** is a method's embedding of three sides: ``train`` (what was fitted on), ``val``
(where every choice is made: thresholds, a probe's C, a baseline's settings) and ``test`` (only
measured). A single run is one fold; a cross-validation is K folds whose figures are pooled;
leave-one-source-out is one fold per held-out source. Each protocol *measures* a fold (per-pair
or per-piece results) and *pools* the folds' results into figures, each an ``Estimate`` with a
bootstrap interval over units (``bootstrap.Bootstrap``). Two pieces are compared by
``metrics.cosine_distance``: ``1 − a·b``, 1 − cosine for normalised embeddings.

:func:`evaluate_folds` runs the protocols named for a method; the figures' keys are the same
whichever caller (``evaluate_run``, a cross-validation, leave-one-source-out, a held-out
measurement) runs them.

One module, over 400 lines: the registry (``PROTOCOLS``) and the protocols it names (the
pair sets, attribution, retrieval, the source probe; verification is ``verification.py``) are
one list a reader checks at once, and they share ``Fold`` and ``Settings``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from harmonixr.data.pairs import protocol_pair_sets
from harmonixr.evaluate.bootstrap import Bootstrap
from harmonixr.evaluate.metrics import (
    balanced_accuracy,
    centroids,
    macro_f1,
    pair_set_decisions,
    retrieval_scores,
)
from harmonixr.evaluate.records import Estimate, Side
from harmonixr.evaluate.verification import (
    Pairs,
    RankedPairs,
    between,
    cross_pairs,
    pair_figures,
    performer_control,
    verification_sections,
    within,
)

PROBE_CS = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)  # the evaluation probe's C grid
TOPK = (1, 3, 5)


@dataclass(frozen=True)
class Settings:
    """How figures are measured: bootstrap ``resamples`` seeded by ``seed`` (also the seed of
    pair sets and probes); ``pairs`` per pair set of the pair-set protocol; ``k`` of
    precision@k; attribution to training composers with at least ``min_works`` training units;
    ``universe``: the units every interval resamples (None: those measured)."""

    seed: int = 0
    resamples: int = 1000
    pairs: int = 1000
    k: int = 10
    min_works: int = 1
    universe: np.ndarray | None = field(default=None, compare=False)

    @property
    def boot(self) -> Bootstrap:
        return Bootstrap(self.resamples, self.seed, universe=self.universe)


@dataclass(frozen=True)
class Fold:
    """One method's embedding of a fold's sides; ``scores``: score MIDIs of the test side's
    works (the score-MIDI control), when there are any."""

    train: Side
    val: Side
    test: Side
    scores: Side | None = None

    def sides(self) -> dict[str, Side]:
        out = {"train": self.train, "val": self.val, "test": self.test}
        return out if self.scores is None else {**out, "scores": self.scores}

    def mapped(self, fn: Callable[[str, Side], Side]) -> Fold:
        """The fold with each side replaced by ``fn(name, side)``."""
        return Fold(**{k: fn(k, s) for k, s in self.sides().items()})

    def measured_on_val(self) -> Fold:
        """The validation side standing where the test side would (for choosing a recipe: the
        test side is then never looked at)."""
        return replace(self, test=self.val, scores=None)


@dataclass
class Curves:
    """What the pictures need: the test pairs' distances and labels, and the pair-set
    protocol's threshold."""

    d: np.ndarray = field(default_factory=lambda: np.zeros(0))
    y: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    threshold: float = float("nan")


def val_auc(side: Side) -> float:
    """All-pairs AUC of a side (the figure every choice on validation maximises); nan without
    both classes."""
    p = within(side)
    return RankedPairs(p.d, p.y).auc() if 0 < p.y.sum() < p.y.size else float("nan")


# ---------------------------------------------------------------- the pair-set protocol


def pair_set_fold(fold: Fold, s: Settings) -> dict[str, Any]:
    """The original SiaViT project's pair-set protocol (``metrics.pair_set_protocol``) on whole
    pieces: a pseudo-validation mixed pair set of the *validation* side picks the threshold;
    mixed / same / different pair sets of the test side are called at it (distinct pairs;
    same-composer pairs from different units)."""
    val, test = fold.val, fold.test
    pseudo, sets = protocol_pair_sets(
        val.composer, val.unit, test.composer, test.unit, s.pairs, s.seed
    )
    threshold, _, right = pair_set_decisions(val.embeddings, pseudo, test.embeddings, sets)
    return {"threshold": threshold, "right": right}


def pair_set_figures(parts: Sequence[dict[str, Any]], s: Settings) -> dict[str, dict]:
    """Accuracy at each fold's threshold, pooled: ``acc_<set>`` and ``n_<set>`` per pair set,
    ``thresholds`` per fold (none where validation lacked a class)."""
    thresholds = [p["threshold"] for p in parts]
    out: dict[str, Any] = {"thresholds": [float(t) if np.isfinite(t) else None for t in thresholds]}
    for name in dict.fromkeys(n for p in parts for n in p["right"]):
        n, called = 0, []
        for p in parts:
            if name in p["right"]:
                n += len(p["right"][name])
                if np.isfinite(p["threshold"]):
                    called.append(p["right"][name])
        out[f"n_{name}"] = n
        if called:
            right = np.concatenate(called)
            out[f"acc_{name}"] = Estimate(right.mean(), weighting="pairs").to_json()
    return {"pairs": out}


# ---------------------------------------------------------------- attribution


def named_composers(train: Side, min_works: int) -> list[str]:
    """Training composers with at least ``min_works`` units, sorted."""
    units: dict[str, set[str]] = {}
    for c, u in zip(train.composer, train.unit, strict=True):
        units.setdefault(c, set()).add(u)
    return sorted(c for c, us in units.items() if len(us) >= min_works)


def class_probabilities(model, x: np.ndarray, n_classes: int) -> np.ndarray:
    """``(N, n_classes)`` probabilities of a fitted classifier, 0 for classes it never saw."""
    p = np.zeros((x.shape[0], n_classes))
    if x.shape[0]:
        p[:, model.classes_] = model.predict_proba(x)
    return p


def topk_credit(scores: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Per row, the credit of the true label being among the ``k`` highest scores; ties share
    the places they straddle (``metrics.topk_accuracy`` is its mean)."""
    true = scores[np.arange(labels.size), labels][:, None]
    greater = (scores > true).sum(axis=1)
    tied = (scores == true).sum(axis=1)
    return np.clip((k - greater) / tied, 0.0, 1.0)


def probe_scores(fold: Fold, names: list[str], seed: int) -> tuple[np.ndarray, float] | None:
    """A logistic-regression probe on the training pieces of ``names`` (C chosen by
    validation top-1 among ``PROBE_CS``, the first best): the test pieces' class
    probabilities, and the C."""
    from sklearn.linear_model import LogisticRegression

    index = {n: k for k, n in enumerate(names)}
    tr = np.array([c in index for c in fold.train.composer], bool)
    va = np.array([c in index for c in fold.val.composer], bool)
    y_train = np.array([index[c] for c in fold.train.composer[tr]])
    if len(np.unique(y_train)) < 2 or not va.any():
        return None
    y_val = np.array([index[c] for c in fold.val.composer[va]])

    def fit(c: float) -> LogisticRegression:
        return LogisticRegression(C=c, max_iter=3000, random_state=seed).fit(
            fold.train.embeddings[tr], y_train
        )

    models = {c: fit(c) for c in PROBE_CS}  # each C fitted once, the chosen one reused

    def probs(c: float, x: np.ndarray) -> np.ndarray:
        return class_probabilities(models[c], x, len(names))

    best = max(
        PROBE_CS, key=lambda c: np.mean(probs(c, fold.val.embeddings[va]).argmax(1) == y_val)
    )
    return probs(best, fold.test.embeddings), best


def attribution_fold(fold: Fold, s: Settings, probe: bool) -> dict[str, Any] | None:
    """Test pieces by the named training composers (``s.min_works``), scored against exactly
    those: by the centroids of their training pieces, or (``probe``) by a probe on them."""
    if not len(fold.train):
        return None
    names = named_composers(fold.train, s.min_works)
    if len(names) < 2:
        return None
    index = {n: k for k, n in enumerate(names)}
    seen = np.array([c in index for c in fold.test.composer], bool)
    out: dict[str, Any] = {"candidates": len(names), "pieces": int(seen.sum())}
    if not seen.any():
        return out
    test = fold.test.take(seen)
    labels = np.array([index[c] for c in test.composer])
    if probe:
        got = probe_scores(replace(fold, test=test), names, s.seed)
        if got is None:
            return None
        scores, out["C"] = got
    else:
        scores = test.embeddings @ centroids(fold.train.embeddings, fold.train.composer, names).T
    n = scores.shape[1]
    out.update(
        {f"top{k}": topk_credit(scores, labels, min(k, n)) for k in TOPK},
        predicted=np.array(names, dtype=object)[scores.argmax(axis=1)],
        side=test.with_embeddings(np.zeros((len(test), 0))),  # its labels, to pool folds
    )
    return out


def attribution_figures(parts: Sequence[dict[str, Any]], s: Settings, key: str) -> dict:
    """Top-1/3/5 (with intervals over the measured pieces' units), top-1 on performances,
    balanced accuracy and macro-F1 over the composers, pooled over folds."""
    if not parts:
        return {}
    fig: dict[str, Any] = {
        "pieces": int(sum(p["pieces"] for p in parts)),
        "candidates_per_fold": [p["candidates"] for p in parts],
    }
    if key == "attribution_probe":
        fig["C_per_fold"] = [p.get("C") for p in parts]
    scored = [p for p in parts if "side" in p]
    if scored:
        side = Side.concat([p["side"] for p in scored])
        pop = s.boot.population(side.unit)
        for k in TOPK:
            credit = np.concatenate([p[f"top{k}"] for p in scored])
            fig[f"top{k}"] = pop.mean(credit).to_json()
        perf = side.kind == "performance"
        if perf.any():
            sub = s.boot.population(side.unit[perf])
            fig["top1_performance"] = sub.mean(
                np.concatenate([p["top1"] for p in scored])[perf]
            ).to_json()
        pred = np.concatenate([p["predicted"] for p in scored])
        truth = side.composer
        fig["balanced_acc"] = Estimate(balanced_accuracy(pred, truth), weighting="pieces").to_json()
        fig["macro_f1"] = Estimate(macro_f1(pred, truth), weighting="pieces").to_json()
    return {key: fig}


# ---------------------------------------------------------------- retrieval


def retrieval_fold(fold: Fold, s: Settings) -> dict[str, Any]:
    """Each test piece queries the fold's other test pieces of other units: same-composer AP
    and precision@k; same-work recall@1 where the work has another rendition (is the nearest
    other piece one of them?)."""
    t = fold.test
    sim = t.embeddings @ t.embeddings.T
    other_unit = t.unit[:, None] != t.unit[None, :]
    relevant = t.composer[:, None] == t.composer[None, :]
    aps, pks = retrieval_scores(sim, relevant, other_unit, s.k)
    n = len(t)
    not_self = ~np.eye(n, dtype=bool)
    same_work = (t.work[:, None] == t.work[None, :]) & not_self
    has = same_work.any(axis=1)
    r1 = np.full(n, np.nan)
    if has.any():
        nearest = np.where(not_self, sim, -np.inf).argmax(axis=1)
        r1[has] = same_work[np.flatnonzero(has), nearest[has]]
    return {"ap": aps, "pk": pks, "r1": r1, "units": t.unit}


def retrieval_figures(parts: Sequence[dict[str, Any]], s: Settings) -> dict[str, dict]:
    c = {k: np.concatenate([p[k] for p in parts]) for k in ("ap", "pk", "r1", "units")}
    pop = s.boot.population(c["units"])
    return {
        "retrieval": {
            "map": pop.mean(c["ap"], "queries").to_json(),
            f"p{s.k}": pop.mean(c["pk"], "queries").to_json(),
            "work_r1": pop.mean(c["r1"], "queries").to_json(),
            "work_queries": int(np.isfinite(c["r1"]).sum()),
        }
    }


# ---------------------------------------------------------------- source probe


def source_probe_fold(fold: Fold, s: Settings) -> dict[str, Any]:
    """How well a logistic regression on the test side's embeddings tells what they should not:
    score vs performance, and which source made a score; cross-validated inside the test side
    by unit (GroupKFold)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold, cross_val_predict

    t = fold.test
    out: dict[str, Any] = {}
    for target in ("kind", "source"):
        lab = t.kind if target == "kind" else t.source
        sel = np.ones(len(t), bool) if target == "kind" else t.kind == "score"
        classes, y = np.unique(lab[sel], return_inverse=True)
        units = t.unit[sel]
        if classes.size < 2 or np.unique(units).size < 5:
            continue
        model = LogisticRegression(C=1.0, max_iter=2000, random_state=s.seed)
        p = cross_val_predict(model, t.embeddings[sel], y, groups=units, cv=GroupKFold(5))
        out[target] = (classes[p], classes[y])
    return out


def source_probe_figures(parts: Sequence[dict[str, Any]], s: Settings) -> dict[str, dict]:
    """Balanced accuracy of the pooled probes' predictions against chance (1 / classes)."""
    out: dict[str, Any] = {}
    for target in ("kind", "source"):
        got = [p[target] for p in parts if target in p]
        if not got:
            continue
        pr, tr = np.concatenate([g[0] for g in got]), np.concatenate([g[1] for g in got])
        classes, code = np.unique(tr, return_inverse=True)
        lookup = {k: i for i, k in enumerate(classes)}
        pc = np.array([lookup.get(x, -1) for x in pr])
        out[target] = {
            "balanced_accuracy": balanced_accuracy(pc, code),
            "chance": 1.0 / classes.size,
            "classes": classes.tolist(),
            "pieces": int(tr.size),
        }
    return {"source_probe": out}


# ---------------------------------------------------------------- the registry


@dataclass(frozen=True)
class Protocol:
    """``measure(fold, settings)``: one fold's results (None: not measurable there);
    ``pool(results, settings)``: the figures, by report section."""

    measure: Callable[[Fold, Settings], Any]
    pool: Callable[[Sequence[Any], Settings], dict[str, dict]]


def _pairs_pool(prefix: str) -> Callable[[Sequence[Pairs], Settings], dict[str, dict]]:
    def pool(parts: Sequence[Pairs], s: Settings) -> dict[str, dict]:
        return verification_sections(Pairs.pool(parts), s.boot, prefix) if parts else {}

    return pool


def _scores_side(fold: Fold, s: Settings) -> Pairs | None:
    return within(fold.scores) if fold.scores is not None and len(fold.scores) >= 2 else None


PROTOCOLS: dict[str, Protocol] = {
    # same composer? every pair of test pieces from different units (and by kinds of piece)
    "verify": Protocol(lambda f, s: within(f.test), _pairs_pool("verify")),
    # same composer? a test piece against each training piece (leave-one-source-out)
    "verify_against_train": Protocol(
        lambda f, s: between(f.test, f.train), _pairs_pool("verify_against_train")
    ),
    "pairs": Protocol(pair_set_fold, pair_set_figures),
    "attribution": Protocol(
        lambda f, s: attribution_fold(f, s, probe=False),
        lambda parts, s: attribution_figures(parts, s, "attribution"),
    ),
    "attribution_probe": Protocol(
        lambda f, s: attribution_fold(f, s, probe=True),
        lambda parts, s: attribution_figures(parts, s, "attribution_probe"),
    ),
    "retrieval": Protocol(retrieval_fold, retrieval_figures),
    "control_performer": Protocol(
        lambda f, s: f.test,
        lambda sides, s: {"control_performer": performer_control(sides, s.boot)},
    ),
    "control_score_midis": Protocol(_scores_side, _pairs_pool("control_score_midis")),
    "source_probe": Protocol(source_probe_fold, source_probe_figures),
}
RUN_PROTOCOLS = (
    "verify",
    "pairs",
    "attribution",
    "attribution_probe",
    "retrieval",
    "control_performer",
    "control_score_midis",
)


def evaluate_folds(
    folds: Sequence[Fold], s: Settings, protocols: Sequence[str] = RUN_PROTOCOLS
) -> tuple[dict[str, Any], Curves]:
    """One method's figures over its folds (one for a single run): every named protocol, and
    each fold's validation AUC; the curves of the pooled test pairs for the pictures."""
    figures: dict[str, Any] = {}
    curves = Curves()
    for name in protocols:
        p = PROTOCOLS[name]
        parts = [r for f in folds if (r := p.measure(f, s)) is not None]
        figures.update(p.pool(parts, s))
        if name == "verify" and parts:
            pooled = Pairs.pool(parts)
            curves.d, curves.y = pooled.d, pooled.y
        if name == "pairs" and len(parts) == 1:
            curves.threshold = parts[0]["threshold"]
    figures["val_auc_per_fold"] = [_finite(val_auc(f.val)) for f in folds]
    return figures, curves


def _finite(v: float) -> float | None:
    return float(v) if np.isfinite(v) else None


__all__ = [
    "PROTOCOLS",
    "RUN_PROTOCOLS",
    "Curves",
    "Fold",
    "Settings",
    "cross_pairs",
    "evaluate_folds",
    "pair_figures",
    "val_auc",
]
