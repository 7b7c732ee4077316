"""Which calibrator of the closed-set answer to use, chosen on the validation side alone.

The shipped answer divides its probe's logits by one temperature fitted on validation
(``reliability.fit_temperature``). Any calibrator fitted on a side looks good on that side, so
here each candidate is *cross-fitted*: the validation groups are split into ``folds``, each
fold's pieces are calibrated by a fit on the other folds, and the top-label ECE of the pooled
answers is measured; this is repeated over ``repeats`` random foldings. The candidates:

- ``none``: the probe's softmax as it is;
- ``temperature (NLL)``: the shipped rule, the temperature of least negative log-likelihood;
- ``temperature (ECE)``: the temperature of least ECE on the fitting folds (200 on a log grid);
- ``temperature + Platt``: then a logistic curve of the answer's log-odds (top-label
  calibration); the other rows share the rest in proportion;
- ``temperature + isotonic``: the same with an isotonic curve.

Beside them, the ECE that answers of the same confidences would show if they were perfectly
calibrated (``reliability.ece_by_chance``): a candidate cannot be told apart from it on this
many pieces when their difference is inside its spread.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from harmonixr.evaluate.reliability import (
    TEMPERATURE_RULES,
    confidence_ece,
    ece_by_chance,
    fit_temperature,
    softmax,
)

Calibrator = Callable[[np.ndarray], np.ndarray]  # (N, E) logits → (N, E) probabilities
Fitter = Callable[[np.ndarray, np.ndarray], Calibrator]


def _none(logits: np.ndarray, labels: np.ndarray) -> Calibrator:
    return softmax


def _scaled(rule: str) -> Fitter:
    """A temperature fitted by one of ``TEMPERATURE_RULES``."""

    def fit(logits: np.ndarray, labels: np.ndarray) -> Calibrator:
        t = TEMPERATURE_RULES[rule].fit(logits, labels)
        return lambda x: softmax(x / t)

    return fit


_temperature, _temperature_ece = _scaled("nll"), _scaled("ece")


def _log_odds(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1.0 - 1e-6)
    return np.log(p / (1.0 - p))


def _top_label(curve: str) -> Fitter:
    """Temperature, then the answer's probability through a curve fitted on whether it was
    right; the other rows keep their proportions and share the rest."""

    def fit(logits: np.ndarray, labels: np.ndarray) -> Calibrator:
        base = _temperature(logits, labels)
        p = base(logits)
        conf, right = p.max(1), (p.argmax(1) == labels).astype(int)
        if curve == "platt" and 0 < right.sum() < len(right):
            from sklearn.linear_model import LogisticRegression

            lr = LogisticRegression(C=1e4).fit(_log_odds(conf).reshape(-1, 1), right)
            a, b = float(lr.coef_[0, 0]), float(lr.intercept_[0])

            def mapped(c: np.ndarray) -> np.ndarray:
                return 1.0 / (1.0 + np.exp(-(a * _log_odds(c) + b)))
        elif curve == "isotonic":
            from sklearn.isotonic import IsotonicRegression

            iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(conf, right)
            mapped = iso.predict
        else:  # one class only: nothing to fit
            return base

        def apply(x: np.ndarray) -> np.ndarray:
            q = base(x)
            rows = np.arange(len(q))
            top, c = q.argmax(1), q.max(1)
            second = np.partition(q, -2, axis=1)[:, -2] if q.shape[1] > 1 else np.zeros(len(q))
            # the answer stays the top row: its new probability is at least what keeps the
            # runner-up, rescaled with the others, from passing it
            floor = second / np.maximum(1.0 - c + second, 1e-12) + 1e-9
            new = np.maximum(np.asarray(mapped(c), np.float64), floor)
            q[rows, top] = 0.0
            rest = q.sum(1, keepdims=True)  # the others share 1 − new in proportion
            q = np.where(rest > 0, q / np.where(rest > 0, rest, 1.0), 1.0 / max(1, q.shape[1] - 1))
            q = q * (1.0 - new)[:, None]
            q[rows, top] = new
            return q

        return apply

    return fit


CANDIDATES: dict[str, Fitter] = {
    "none": _none,
    "temperature (NLL)": _temperature,
    "temperature (ECE)": _temperature_ece,
    "temperature + Platt": _top_label("platt"),
    "temperature + isotonic": _top_label("isotonic"),
}
SHIPPED = "temperature (NLL)"  # the default rule (``index build --temperature nll``)
# candidates an index can hold: its temperature rule (``reliability.TEMPERATURE_RULES``)
RULE_OF = {"temperature (NLL)": "nll", "temperature (ECE)": "ece"}
ON_THEM = "temperature of least ECE, fitted on the held-out pieces themselves"


def compare_calibrators(
    logits: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    *,
    folds: int = 5,
    repeats: int = 20,
    seed: int = 0,
    shipped: str = SHIPPED,
) -> dict[str, Any]:
    """Cross-fitted ECE (mean and spread over ``repeats`` foldings by group) of every
    candidate on validation ``logits`` (N, E) with true columns ``labels`` (N,), and the
    chance level of the shipped rule's answers."""
    logits = np.asarray(logits, np.float64)
    labels, groups = np.asarray(labels), np.asarray(groups, dtype=object)
    names = np.unique(groups)
    if len(names) < folds:
        raise ValueError(f"{len(names)} validation groups: too few for {folds} folds")
    eces: dict[str, list[float]] = {k: [] for k in CANDIDATES}
    for r in range(repeats):
        order = np.random.default_rng(seed + r).permutation(names)
        fold_of = {g: i % folds for i, g in enumerate(order)}
        fold = np.array([fold_of[g] for g in groups])
        for name, fit in CANDIDATES.items():
            probs = np.zeros_like(logits)
            for f in range(folds):
                held = fold == f
                probs[held] = fit(logits[~held], labels[~held])(logits[held])
            eces[name].append(confidence_ece(probs.max(1), probs.argmax(1) == labels))
    fitted = CANDIDATES[shipped](logits, labels)(logits)
    chance = ece_by_chance(fitted.max(1), fitted.argmax(1) == labels, seed=seed)
    ship = np.asarray(eces[shipped])
    table = {
        k: {
            "mean": float(np.mean(v)),
            "sd": float(np.std(v)),
            # the same foldings: the candidate's ECE minus the shipped one's
            "minus_shipped": float(np.mean(np.asarray(v) - ship)),
            "minus_shipped_sd": float(np.std(np.asarray(v) - ship)),
        }
        for k, v in eces.items()
    }
    best = min(table, key=lambda k: table[k]["mean"])
    # another calibrator replaces the shipped one only when, folding by folding, it is lower by
    # more than the spread of that difference over the foldings
    gap = table[best]
    chosen = best if gap["minus_shipped"] + gap["minus_shipped_sd"] < 0 else shipped
    return {
        "measured_on": "validation, cross-fitted by group",
        "pieces": int(len(labels)),
        "groups": int(len(names)),
        "folds": folds,
        "repeats": repeats,
        "cross_fitted_ece": table,
        "lowest": best,
        "shipped": shipped,
        "chosen": chosen,
        "rule": "the shipped calibrator unless another is lower, folding by folding, by more "
        "than the spread of that difference",
        "shipped_fitted_on_ece": chance.measured,
        "chance": {**chance.to_json(), "fitted_on": "the shipped rule fitted on these pieces"},
    }


def compare_on_runs(
    runs: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]],
    shipped: str = SHIPPED,
) -> dict[str, Any]:
    """Every candidate fitted on each run's validation logits and labels and measured on its
    held-out ones: ``runs`` holds ``(name, val_logits, val_labels, held_logits, held_labels,
    named)``. Per run, the ECE of each candidate; for reference, that of the temperature of
    least ECE fitted on the held-out pieces themselves (``ON_THEM``), and the ECE calibrated
    answers of the shipped calibrator's confidences would show by chance."""
    table: dict[str, list[float]] = {k: [] for k in CANDIDATES}
    rows = []
    for name, lv, yv, lt, yt, named in runs:
        if len(yv) == 0 or len(yt) == 0:
            continue
        row: dict[str, Any] = {
            "run": name,
            "named": named,
            "validation": len(yv),
            "held_out": len(yt),
        }
        for k, fit in CANDIDATES.items():
            p = fit(lv, yv)(lt)
            row[k] = confidence_ece(p.max(1), p.argmax(1) == yt)
            table[k].append(row[k])
        # references fitted on the measured pieces themselves, labelled so: the temperature of
        # least ECE there, and the ratio of least-NLL temperatures (held out / validation)
        own = _temperature_ece(lt, yt)(lt)
        row[ON_THEM] = confidence_ece(own.max(1), own.argmax(1) == yt)
        row["temperature_ratio"] = fit_temperature(lt, yt) / fit_temperature(lv, yv)
        # what answers of the shipped calibrator's confidences would show, calibrated
        mine = CANDIDATES[shipped](lv, yv)(lt)
        chance = ece_by_chance(mine.max(1), mine.argmax(1) == yt, draws=1000)
        row["ece_by_chance"] = chance.expected
        rows.append(row)
    means = {k: float(np.mean(v)) for k, v in table.items() if v}
    return {
        "measured_on": "each run's test pieces outside the calibrated run's test side, "
        "calibrators fitted on that run's validation side",
        "runs": rows,
        "mean_ece": means,
        "lowest": min(means, key=means.get) if means else None,
    }
