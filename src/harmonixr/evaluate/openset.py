"""Open-set attribution from real strangers: "someone else" learnt and measured on composers
an encoder never trained on.

Two cross-validations of one recipe over one cache (``experiments.cv.openset_job`` reads them)
supply the two kinds of piece:

- an ``unseen-composer`` one deals whole composers to folds, so each fold's validation and test
  composers are real strangers to that fold's encoder;
- a by-``group`` one holds out works, so each fold's test side has pieces of composers its
  encoder knows, pieces it never trained on.

For each fold the training pieces are embedded whole (the centroids ``attribute`` uses) and
every held-out piece is turned into the unknown model's features against them. The model is
cross-fitted: fold k of both cross-validations is measured by a model fitted on the other
folds, at an operating point chosen on fold k's validation side, so no figure is measured where
anything was fitted. The model fitted on all folds is what ``index build --open-set`` uses."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from harmonixr.evaluate.bootstrap import Bootstrap
from harmonixr.evaluate.calibrate import fit_calibration, work_counts
from harmonixr.evaluate.metrics import balanced_weights_weighted, binary_ece, roc_auc
from harmonixr.evaluate.protocols import Fold
from harmonixr.evaluate.records import Side, formatted, json_ready
from harmonixr.evaluate.unknown import (
    FEATURES,
    OpenSetModel,
    fit_decreasing,
    open_set_features,
    operating_point,
    sigmoid,
    spread_statistics,
)

Progress = Callable[[str], None]
# a known piece's unit is its group, a stranger's its composer
UNITS = "units"


def known_examples(fold: Fold, seed: int) -> dict[str, Any]:
    """A by-group fold: calibrated on its training and validation sides as ``index build``
    would; its test pieces of named composers are held-out known pieces, those of composers
    with no training piece strangers, the rest barely known."""
    tr, va, te = fold.train, fold.val, fold.test
    cal = fit_calibration(
        tr.embeddings, tr.composer, tr.unit, va.embeddings, va.composer, va.unit, seed=seed
    )
    names = list(cal.composers)
    index = {c: k for k, c in enumerate(names)}
    trained = set(tr.composer)
    named = np.array([c in index for c in te.composer], bool)
    stranger = np.array([c not in trained for c in te.composer], bool)
    known = te.take(named)
    cents, mean, std = spread_statistics(tr.embeddings, tr.composer, names)

    def features(emb: np.ndarray) -> np.ndarray:
        return open_set_features(emb @ cents.T, mean, std)

    closed = cal.closed_log_probabilities(known.embeddings, known.embeddings @ cents.T)
    labels = np.array([index[c] for c in known.composer])
    return {
        "cal": cal,
        "x_cal": features(va.take(np.array([c in index for c in va.composer], bool)).embeddings),
        "x_known": features(known.embeddings),
        "right": closed.argmax(1) == labels,
        "group_known": known.unit,
        "x_barely": features(te.take(~named & ~stranger).embeddings),
        "x_strangers": features(te.take(stranger).embeddings),
        "composer_strangers": te.composer[stranger],
        "group_strangers": te.unit[stranger],
    }


def stranger_examples(fold: Fold, min_works: int) -> dict[str, Any]:
    """An unseen-composer fold: its validation and test composers never trained its encoder.
    Scored against its training composers with at least ``min_works`` works; ``test`` marks
    the fold's own test pieces (its validation composers are other folds' test composers)."""
    tr = fold.train
    pieces = Side.concat([fold.val, fold.test])
    overlap = set(pieces.composer) & set(tr.composer)
    if overlap:
        raise ValueError(f"strangers that also train the encoder: {sorted(overlap)[:3]}")
    works = work_counts(list(tr.composer), list(tr.unit))
    names = sorted(c for c, n in works.items() if n >= min_works)
    cents, mean, std = spread_statistics(tr.embeddings, tr.composer, names)
    test = np.r_[np.zeros(len(fold.val), bool), np.ones(len(fold.test), bool)]
    return {
        "x": open_set_features(pieces.embeddings @ cents.T, mean, std),
        "composer": pieces.composer,
        "group": pieces.unit,
        "test": test,
    }


@dataclass
class Examples:
    """Open-set examples: features, target (1 = stranger), composer and group of each."""

    x: np.ndarray
    y: np.ndarray
    composer: np.ndarray
    group: np.ndarray

    def take(self, mask: np.ndarray) -> Examples:
        return Examples(self.x[mask], self.y[mask], self.composer[mask], self.group[mask])

    @staticmethod
    def join(parts: list[Examples]) -> Examples:
        return Examples(
            *(
                np.concatenate([getattr(p, f) for p in parts])
                for f in ["x", "y", "composer", "group"]
            )
        )


def fold_examples(known: dict[str, Any], strangers: dict[str, Any], test_only: bool) -> Examples:
    """Fold k's known pieces (label 0) and strangers (1): the by-group fold's test strangers
    and the unseen-composer fold's strangers (only its test side when ``test_only``)."""
    keep = strangers["test"] if test_only else np.ones(len(strangers["x"]), bool)
    nk, ns, ng = len(known["x_known"]), int(keep.sum()), len(known["x_strangers"])
    return Examples(
        np.concatenate([known["x_known"], strangers["x"][keep], known["x_strangers"]]),
        np.r_[np.zeros(nk), np.ones(ns + ng)],
        np.concatenate(
            [np.full(nk, "", object), strangers["composer"][keep], known["composer_strangers"]]
        ),
        np.concatenate([known["group_known"], strangers["group"][keep], known["group_strangers"]]),
    )


def disjoint_from(fit: Examples, measured: Examples, groups: set[str] = frozenset()) -> Examples:
    """``fit`` without any piece that shares a group with a measured piece (or with ``groups``)
    and without any stranger whose composer is a measured stranger: no measured piece, and no
    measured composer as a stranger, is fitted on, through any encoder."""
    gone = set(measured.group.tolist()) | set(groups)
    stranger_composers = set(measured.composer[measured.y == 1].tolist())
    keep = np.array(
        [
            g not in gone and not (y == 1 and c in stranger_composers)
            for g, y, c in zip(fit.group, fit.y, fit.composer, strict=True)
        ],
        bool,
    )
    return fit.take(keep)


def _p(coef: Any, bias: float, x: np.ndarray) -> np.ndarray:
    return sigmoid(x @ np.asarray(coef, np.float64) + bias)


def open_set_figures(
    p_known: np.ndarray,
    p_strangers: np.ndarray,
    point: np.ndarray | float,
    right_known: np.ndarray,
    units: np.ndarray,
    resamples: int,
    seed: int,
    answered: bool = False,
) -> dict[str, Any]:
    """Detection AUC (score p), the share of known pieces called unknown and of strangers
    caught at the operating point, answer accuracy on both, and the ECE of p at an even prior
    (classes reweighted to equal mass), each with a unit-bootstrap interval. ``point`` may
    differ per piece (each fold its own); with ``answered``, ``point`` is instead each piece's
    answer already made (True: "someone else"). ``units`` label known pieces then strangers."""
    nk, ns = len(p_known), len(p_strangers)
    p = np.concatenate([p_known, p_strangers])
    y = np.concatenate([np.zeros(nk, bool), np.ones(ns, bool)])
    if answered:
        said = np.asarray(point, bool)
    else:
        said = p >= np.broadcast_to(np.asarray(point, np.float64), p.shape)
    answer_right = np.concatenate([right_known & ~said[:nk], said[nk:]])

    def mean(v: np.ndarray, m: np.ndarray, w: np.ndarray) -> float:
        return float(np.dot(w[m], v[m]) / w[m].sum()) if w[m].sum() > 0 else float("nan")

    stats = {
        "detection_auc": lambda w: roc_auc(-p, y, w),
        "known_called_unknown": lambda w: mean(said, ~y, w),
        "strangers_caught": lambda w: mean(said, y, w),
        "answer_accuracy_known": lambda w: mean(answer_right, ~y, w),
        "answer_accuracy_strangers": lambda w: mean(answer_right, y, w),
        "ece_even_prior": lambda w: binary_ece(p, y, weights=w * balanced_weights_weighted(y, w)),
    }
    out: dict[str, Any] = {"known_pieces": nk, "stranger_pieces": ns}
    pop = Bootstrap(resamples, seed).population(units)
    for name, stat in stats.items():
        if name in ("detection_auc", "ece_even_prior") and not (nk and ns):
            continue
        out[name] = pop.item_estimate(stat, UNITS).to_json()
    return out


def _cross_fitted(
    known: list[dict[str, Any]], strangers: list[dict[str, Any]], excluded: set[str]
) -> dict[str, dict[str, list[np.ndarray]]]:
    """Per model ("real": fitted on the other folds' real strangers; "simulated": fold k's own
    validation calibration), fold k's measured probabilities, operating point and units."""
    every = [fold_examples(known[k], strangers[k], test_only=False) for k in range(len(known))]
    rows: dict[str, dict[str, list[np.ndarray]]] = {"real": {}, "simulated": {}}
    for k, e in enumerate(known):
        measured = fold_examples(e, strangers[k], test_only=True)
        measured = measured.take(np.array([g not in excluded for g in measured.group], bool))
        fit = disjoint_from(
            Examples.join([every[j] for j in range(len(known)) if j != k]), measured, excluded
        )
        real = fit_decreasing(fit.x, fit.y)
        sim = (list(e["cal"].unknown_coef), e["cal"].unknown_bias)
        xk, xs = measured.x[measured.y == 0], measured.x[measured.y == 1]
        right = e["right"][np.array([g not in excluded for g in e["group_known"]], bool)]
        units = np.concatenate(
            [
                np.array([f"{k}:{g}" for g in measured.group[measured.y == 0]]),
                np.array([f"c:{c}" for c in measured.composer[measured.y == 1]]),
            ]
        )
        for name, (coef, bias) in (("real", real), ("simulated", sim)):
            point = operating_point(_p(coef, bias, e["x_cal"]))
            part = {
                "p_known": _p(coef, bias, xk),
                "p_strangers": _p(coef, bias, xs),
                "barely": _p(coef, bias, e["x_barely"]) >= point,
                "points": np.full(len(xk) + len(xs), point),
                "right": right,
                "units": units,
                "point": np.array([point]),
                "fit_pieces": np.array([len(fit.y)]),
            }
            for key, v in part.items():
                rows[name].setdefault(key, []).append(v)
    return rows


def openset_study(
    strangers: Sequence[Fold],
    known: Sequence[Fold],
    plans: dict[str, dict[str, Any]],
    calibration_seed: int = 0,
    resamples: int = 300,
    seed: int = 0,
    progress: Progress | None = None,
    exclude_groups: set[str] = frozenset(),
) -> dict[str, Any]:
    """Learn "someone else" from real strangers and measure it where nothing was fitted.

    ``strangers``: the folds of an unseen-composer cross-validation (each fold's validation and
    test composers never trained its encoder), training sides embedded whole. ``known``: the
    folds of a by-group cross-validation of the same recipe, whose test sides hold pieces of
    composers its encoders know but pieces they never trained on. Fold k is measured on its
    by-group test pieces of named composers and on its strangers (the unseen-composer fold's
    *test* composers, and the by-group fold's test composers with no training piece), by a
    model fitted on the other folds' pieces less every piece that shares a group with a
    measured one and every stranger whose composer is measured (``disjoint_from``): an
    unseen-composer fold's validation composers are other folds' test composers, so without
    this the same pieces would be fitted and measured through two encoders. The operating
    point is chosen on fold k's by-group validation side (calibrated with
    ``calibration_seed``).

    ``exclude_groups`` (e.g. the test groups of the run that will ship with this model) are kept
    out of every fit and every measurement, so that run's test side stays unseen. Returns the
    model fitted on every fold less those groups, and the cross-fitted report (``plans``: the
    two cross-validations' plans, recorded in it)."""
    say = progress or (lambda s: None)
    known_ex, stranger_ex = [], []
    for k in range(len(known)):
        say(f"fold {k}: calibrating")
        known_ex.append(known_examples(known[k], calibration_seed))
        stranger_ex.append(stranger_examples(strangers[k], known_ex[k]["cal"].min_works))
    excluded = set(exclude_groups)
    rows = _cross_fitted(known_ex, stranger_ex, excluded)
    report: dict[str, Any] = {
        "cross_validations": plans,
        "measured_on": "fold k's strangers (unseen-composer fold k: test composers its encoder "
        "never saw; by-group fold k: test composers with no training piece) and fold k's "
        "by-group test pieces of named composers; the unknown model fitted on the other folds "
        "less every piece sharing a group, or a stranger composer, with a measured piece; the "
        "operating point on fold k's validation side",
        "excluded_groups": len(excluded),
        "features": list(FEATURES),
        "named_composers": [len(e["cal"].composers) for e in known_ex],
        "min_works": [e["cal"].min_works for e in known_ex],
    }
    for name, r in rows.items():
        c = {k: np.concatenate(v) for k, v in r.items()}
        fig = open_set_figures(
            c["p_known"], c["p_strangers"], c["points"], c["right"], c["units"], resamples, seed
        )
        fig["barely_known_called_unknown"] = float(c["barely"].mean()) if c["barely"].size else None
        fig["barely_known_pieces"] = int(c["barely"].size)
        fig["operating_points"] = [float(v) for v in c["point"]]
        fig["fitted_pieces_per_fold"] = [int(v) for v in c["fit_pieces"]]
        report[f"{name}_strangers_model"] = fig
    every = Examples.join(
        [fold_examples(known_ex[k], stranger_ex[k], test_only=False) for k in range(len(known))]
    )
    final = every.take(np.array([g not in excluded for g in every.group], bool))
    coef, bias = fit_decreasing(final.x, final.y)
    model = OpenSetModel(
        tuple(coef),
        bias,
        f"real strangers: {len(strangers)} unseen-composer folds ({int(final.y.sum())} stranger "
        f"pieces) against {int((final.y == 0).sum())} held-out pieces of known composers",
    )
    return {"model": model.to_dict(), "report": json_ready(report)}


FIGURE_NAMES = (
    ("detection_auc", "unknown-detection AUC"),
    ("known_called_unknown", "known-composer pieces called unknown"),
    ("strangers_caught", "strangers caught"),
    ("answer_accuracy_known", "answer accuracy, known composers"),
    ("answer_accuracy_strangers", "answer accuracy, strangers"),
    ("ece_even_prior", "ECE of p(unknown), even prior"),
)


def openset_markdown(result: dict[str, Any]) -> str:
    r = result["report"]
    lines = [
        "# Someone else: learnt and measured on real strangers",
        "",
        f"Measured on: {r['measured_on']}. Intervals: 95 % bootstrap over units (a known "
        "piece's group, a stranger's composer).",
        "",
        f"Named composers per fold: {r['named_composers']} (minimum works "
        f"{r['min_works']}, chosen on each fold's validation side).",
        "",
        "| figure | model fitted on real strangers | simulated on validation (no strangers) |",
        "|---|---|---|",
    ]
    for key, label in FIGURE_NAMES:
        a = r.get("real_strangers_model", {}).get(key)
        b = r.get("simulated_strangers_model", {}).get(key)
        lines.append(f"| {label} | {formatted(a)} | {formatted(b)} |")
    m = result["model"]
    lines += [
        "",
        f"Shipped model: coefficients {', '.join(f'{c:.3f}' for c in m['coef'])} on "
        f"({', '.join(FEATURES)}), bias {m['bias']:.3f}; {m['source']}.",
        "",
    ]
    return "\n".join(lines)
