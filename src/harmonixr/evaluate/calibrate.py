"""Calibrated answers from embeddings: every part fitted on a run's training and validation
sides (or on real strangers of an unseen-composer cross-validation), never on a test side.

What a user sees and how it is made:

- **Named composers.** Only a composer whose training side holds at least ``min_works`` works
  (split groups) can be the answer. The others are *barely known*: ``attribute`` shows their
  centroid similarity but never names them, because a centroid resting on one or two works
  attracts answers it cannot back. ``min_works`` and the probe's C are chosen together on
  validation: the pair that names the most validation pieces rightly, a piece of a composer left
  out counting as wrong.
- **Composer** (closed set): a multinomial logistic-regression probe on the training pieces'
  embeddings over the named composers, its logits divided by one temperature fitted on the
  validation pieces (temperature scaling, Guo et al. 2017), the one of least NLL or of least
  ECE (``temperature_rule``; ``harmonixr index calibrators`` says which, on pieces the test
  side never holds). One parameter cannot overfit a validation side of a few hundred pieces
  and keeps the order of the scores.
- **Someone else** (open set, ``unknown.py``): a logistic model on three features of a piece
  (``FEATURES``): its top similarity to a named composer's centroid, the margin over the
  second, and that top similarity measured against the spread of the composer's own training
  pieces around their centroid (a z-score: some composers are tight, others wide). All three
  come from centroids, so the model can be learnt on one encoder's strangers and used with
  another of the same recipe. Every coefficient is ≤ 0, so a piece that fits better never
  looks more foreign. It is fitted on real strangers when one is given (``OpenSetModel``, learnt by
  ``evaluate.openset`` on composers that unseen-composer folds kept from their encoder);
  otherwise on validation pieces scored with their own composer left out (simulated strangers,
  said in ``notes``). Both classes weigh the same in the fit, so the probability assumes an even
  prior; ``prior_unknown`` moves the odds by Bayes' rule.
- **The answer** is "someone else" when that probability reaches the operating point: the larger
  of 0.5 and the value that only ``FALSE_UNKNOWN`` of the validation pieces of named composers
  reach. Otherwise it is the most probable named composer.
- **Verification** (``verification.fit_verify``): Platt scaling, ``sigmoid(a · cos + b)``, on
  pairs of validation pieces from different groups; each group pair weighs one in total (so
  one prolific composer's pairs cannot dominate) and the two classes weigh the same, so
  ``p = 0.5`` is the decision threshold.

``Calibration.report`` holds the figures measured on the validation side the parts were fitted
on, each labelled ``measured_on``; held-out figures are measured by ``search.measure`` and
added under ``held_out`` with the side they come from.

One module, over 400 lines: the fitted parameters, how they are applied to a question and how
each is fitted on validation share one record (``Calibration``) and its JSON form, which must
not drift apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from harmonixr.evaluate.metrics import (
    expected_calibration_error,
)
from harmonixr.evaluate.reliability import (
    TEMPERATURE_RULES,
    log_softmax,
    softmax,
)
from harmonixr.evaluate.unknown import (
    FALSE_UNKNOWN,
    OpenSetModel,
    fit_decreasing,
    open_set_features,
    operating_point,
    prior_shift,
    sigmoid,
    simulated_strangers,
    spread_statistics,
)
from harmonixr.evaluate.verification import fit_verify

MIN_WORKS_CHOICES = (1, 2, 3, 5, 8, 13)
NAMED_PROBE_CS = (
    0.01,
    0.1,
    1.0,
    10.0,
)  # the named-composer probe's C (protocols.PROBE_CS is the evaluation's)
FITTED_ON = "validation (fitted on it)"


# Calibration's fields stored as JSON lists
_SEQUENCES = ("composers", "unknown_coef", "probe_bias", "spread_mean", "spread_std", "notes")


@dataclass(frozen=True)
class Calibration:
    """Fitted parameters plus what ``index info`` shows. Unfitted parts keep neutral defaults
    (no probe: a softmax over centroid similarities; no unknown; ``p = (1 + cos) / 2``) and say
    why in ``notes``."""

    composers: tuple[str, ...] = ()  # the named composers, the probe's columns
    min_works: int = 1
    probe_weights: tuple[tuple[float, ...], ...] = ()  # (E, D); empty: centroid similarities
    probe_bias: tuple[float, ...] = ()
    spread_mean: tuple[float, ...] = ()  # per named composer, see ``spread_statistics``
    spread_std: tuple[float, ...] = ()
    temperature: float = 1.0
    temperature_rule: str = "nll"  # TEMPERATURE_RULES: how ``temperature`` was fitted
    unknown_coef: tuple[float, ...] = (0.0, 0.0, 0.0)
    unknown_bias: float = -30.0  # p(unknown) ≈ 0 until fitted
    unknown_source: str = "not fitted"
    operating_point: float = 0.5  # kept for reading older calibrations; see default_prior
    # the prior that the composer is none of the named ones, used when the caller gives none;
    # fitted on validation so that at most FALSE_UNKNOWN of its named pieces are answered
    # "someone else" (the operating point as a prior: the answer is always the top row)
    default_prior: float = 0.5
    # "someone else" is withdrawn as an answer when measured held out below the bar
    # (``open_set_verdict``): every probability is then over the named composers alone
    open_set_withdrawn: bool = False
    open_set_note: str = ""
    same_coef: float = 0.0
    same_bias: float = 0.0
    same_fitted: bool = False
    report: dict[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    # ---------------------------------------------------------------- applying

    def logits(self, z: np.ndarray, sims: np.ndarray) -> np.ndarray:
        """(N, E) closed-set logits before the temperature: the probe's, or the centroid
        similarities ``sims`` (N, E) of the named composers when there is no probe."""
        if not self.probe_weights:
            return np.atleast_2d(np.asarray(sims, np.float64))
        z = np.atleast_2d(np.asarray(z, np.float64))
        return z @ np.asarray(self.probe_weights).T + np.asarray(self.probe_bias)

    def closed_log_probabilities(self, z: np.ndarray, sims: np.ndarray) -> np.ndarray:
        return log_softmax(self.logits(z, sims) / self.temperature)

    def unknown_probability(
        self, z: np.ndarray, sims: np.ndarray, prior_unknown: float | None = None
    ) -> np.ndarray:
        """(N,) probability that each piece's composer is none of the named ones."""
        sims = np.atleast_2d(np.asarray(sims, np.float64))
        if sims.shape[1] == 0:
            return np.ones(sims.shape[0])
        if self.open_set_withdrawn:
            return np.zeros(sims.shape[0])
        prior = self.default_prior if prior_unknown is None else prior_unknown
        return sigmoid(self.unknown_logits(sims) + prior_shift(prior))

    def unknown_logits(self, sims: np.ndarray) -> np.ndarray:
        """(N,) log-odds of "someone else" at an even prior."""
        x = open_set_features(np.atleast_2d(sims), self.spread_mean, self.spread_std)
        return x @ np.asarray(self.unknown_coef) + self.unknown_bias

    def composer_probabilities(
        self, z: np.ndarray, sims: np.ndarray, prior_unknown: float | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """((N, E) per named composer, (N,) unknown); each row sums to one with its unknown."""
        sims = np.atleast_2d(np.asarray(sims, np.float64))
        unknown = self.unknown_probability(z, sims, prior_unknown)
        if sims.shape[1] == 0:
            return sims.copy(), unknown
        closed = np.exp(self.closed_log_probabilities(z, sims))
        return closed * (1.0 - unknown)[:, None], unknown

    def answers(
        self, z: np.ndarray, sims: np.ndarray, prior_unknown: float | None = None
    ) -> np.ndarray:
        """(N,) the answer per piece: a column of ``composers``, or -1 for "someone else"."""
        return self.decide(*self.composer_probabilities(z, sims, prior_unknown))

    def decide(self, probs: np.ndarray, unknown: np.ndarray) -> np.ndarray:
        """(N,) the answer from probabilities already computed (``composer_probabilities``):
        the most probable row of the one table {each named composer, someone else}, -1 for
        "someone else" (so no listed row is ever more probable than the answer)."""
        if probs.shape[1] == 0:
            return np.full(len(unknown), -1)
        return np.where(unknown > probs.max(axis=1), -1, probs.argmax(axis=1))

    def same_probability(self, cos: np.ndarray | float) -> np.ndarray:
        cos = np.asarray(cos, np.float64)
        if not self.same_fitted:
            return np.clip((1.0 + cos) / 2.0, 0.0, 1.0)
        return sigmoid(self.same_coef * cos + self.same_bias)

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
        for key in _SEQUENCES:
            d[key] = list(d[key])
        d["probe_weights"] = [list(row) for row in self.probe_weights]
        d["threshold"] = self.threshold
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        if "composers" not in d:
            raise ValueError(
                "calibration from an older Harmonixr (no named composers); rebuild the index "
                "with `harmonixr index build RUN`"
            )
        d = {k: v for k, v in d.items() if k != "threshold"}
        for key in _SEQUENCES:
            d[key] = tuple(d.get(key, ()))
        d["probe_weights"] = tuple(tuple(row) for row in d.get("probe_weights", ()))
        return cls(**d)


# -------------------------------------------------------------------- fitting


def work_counts(composers: Sequence[str], groups: Sequence[str]) -> dict[str, int]:
    """Distinct groups (works) per composer."""
    seen: dict[str, set[str]] = {}
    for c, g in zip(composers, groups, strict=True):
        seen.setdefault(c, set()).add(g)
    return {c: len(g) for c, g in seen.items()}


def _fit_probe(x: np.ndarray, y: np.ndarray, c: float, seed: int):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, max_iter=2000, random_state=seed).fit(x, y)


def _probe_table(model, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(E, D) weights and (E,) biases with a very negative bias for classes it never saw."""
    w = np.zeros((n, model.coef_.shape[1]))
    b = np.full(n, -30.0)
    if len(model.classes_) == 2:  # sklearn's binary form: one row for class 1
        w[model.classes_[1]], b[model.classes_[1]] = model.coef_[0], model.intercept_[0]
        w[model.classes_[0]], b[model.classes_[0]] = 0.0, 0.0
    else:
        w[model.classes_], b[model.classes_] = model.coef_, model.intercept_
    return w, b


def choose_named(
    train_emb: np.ndarray,
    train_composers: np.ndarray,
    works: dict[str, int],
    val_emb: np.ndarray,
    val_composers: np.ndarray,
    *,
    min_works: int | None = None,
    seed: int = 0,
) -> tuple[int, list[str], np.ndarray, np.ndarray, dict[str, Any]]:
    """(min_works, named composers, probe weights, biases, the choice's table): every
    ``(min_works, C)`` pair is fitted on training and scored on validation by the share of *all*
    validation pieces it names rightly; the best wins (ties: fewer works, then smaller C)."""
    choices = (min_works,) if min_works is not None else MIN_WORKS_CHOICES
    table: list[dict[str, Any]] = []
    best: tuple[float, int, list[str], Any] | None = None
    for m in choices:
        names = sorted(c for c, n in works.items() if n >= m)
        if len(names) < 2:
            continue
        index = {c: k for k, c in enumerate(names)}
        sel = np.array([c in index for c in train_composers])
        y = np.array([index[c] for c in train_composers[sel]])
        vy = np.array([index.get(c, -1) for c in val_composers])
        for c in NAMED_PROBE_CS if len(val_emb) else (1.0,):
            model = _fit_probe(train_emb[sel], y, c, seed)
            w, b = _probe_table(model, len(names))
            right = float(np.mean((val_emb @ w.T + b).argmax(1) == vy)) if len(vy) else 0.0
            table.append({"min_works": m, "C": c, "named": len(names), "val_named_right": right})
            if best is None or right > best[0] + 1e-12:
                best = (right, m, names, (w, b))
    if best is None:
        raise ValueError("fewer than two composers have enough training works to be named")
    _, m, names, (w, b) = best
    return m, names, w, b, {"choices": table, "chosen_min_works": m}


def _fit_unknown(
    emb: np.ndarray,
    sims: np.ndarray,
    logits: np.ndarray,
    labels: np.ndarray,
    names: list[str],
    spread: tuple[np.ndarray, np.ndarray],
    open_set: OpenSetModel | None,
    params: dict[str, Any],
    report: dict[str, Any],
    notes: list[str],
) -> None:
    """The parts fitted on validation pieces of named composers (``emb``, their centroid
    similarities, probe logits and labels): the temperature, the unknown model (``open_set``,
    or simulated strangers) and the operating point; into ``params``, ``report``, ``notes``."""
    from harmonixr.evaluate.metrics import roc_auc

    rule = params.get("temperature_rule", "nll")
    t = TEMPERATURE_RULES[rule].fit(logits, labels)
    params["temperature"] = t
    p_closed = softmax(logits / t)
    report["composer"] = {
        "method": f"probe logits / temperature ({TEMPERATURE_RULES[rule].name})",
        "measured_on": FITTED_ON,
        "temperature": t,
        "pieces": int(len(labels)),
        "ece": expected_calibration_error(p_closed, labels),
        "top1_accuracy": float(np.mean(p_closed.argmax(1) == labels)),
    }
    if open_set is not None:
        coef, bias, source = list(open_set.coef), open_set.bias, open_set.source
    else:
        x, y = simulated_strangers(sims, labels, *spread)
        coef, bias = fit_decreasing(x, y, (True, len(names) >= 3, True))
        source = "simulated strangers: validation pieces without their own composer"
        notes.append(
            "unknown fitted on simulated strangers (validation pieces scored without "
            "their own composer), not on composers the encoder never saw"
        )
        report["unknown_simulated"] = {
            "measured_on": FITTED_ON,
            "auc": roc_auc(-(x @ np.asarray(coef)), y),
        }
    params.update(unknown_coef=tuple(coef), unknown_bias=bias, unknown_source=source)
    cal = Calibration(**params)
    u = cal.unknown_probability(emb, sims, 0.5)
    params["operating_point"] = operating_point(u)
    prior = default_prior(cal.unknown_logits(sims), p_closed.max(axis=1))
    params["default_prior"] = prior
    u = sigmoid(cal.unknown_logits(sims) + prior_shift(prior))
    named_unknown = u > p_closed.max(axis=1) * (1.0 - u)
    report["operating_point"] = {
        "measured_on": FITTED_ON,
        "rule": "the prior of 'someone else' (at most an even one) under which at most "
        f"{FALSE_UNKNOWN:.0%} of validation pieces of named composers have it as their most "
        "probable row",
        "value": prior,
        "named_called_unknown": float(np.mean(named_unknown)),
    }


def default_prior(unknown_logits: np.ndarray, best_closed: np.ndarray) -> float:
    """The prior that makes "someone else" the most probable row for at most ``FALSE_UNKNOWN``
    of these pieces of named composers, never above an even prior. A piece's "someone else"
    (log-odds ``l + s`` at a prior of log-odds ``s``) beats its best composer (``m`` of the
    closed set, times ``1 − p(unknown)``) exactly when ``l + s > log m``."""
    t = np.log(np.maximum(np.asarray(best_closed, np.float64), 1e-300)) - unknown_logits
    if t.size == 0:
        return 0.5
    s = min(0.0, float(np.quantile(t, FALSE_UNKNOWN, method="lower")))
    return float(np.clip(sigmoid(np.array(s)), 1e-9, 0.5))  # a prior stays a probability


def fit_calibration(
    train_emb: np.ndarray,
    train_composers: Sequence[str],
    train_groups: Sequence[str],
    val_emb: np.ndarray,
    val_composers: Sequence[str],
    val_groups: Sequence[str],
    *,
    open_set: OpenSetModel | None = None,
    min_works: int | None = None,
    max_pairs: int = 20_000,
    seed: int = 0,
    temperature_rule: str = "nll",
) -> Calibration:
    """Fit every part (see the module docstring): the probe and the named composers on the
    training pieces' embeddings with choices on validation; temperature, operating point and
    ``verify`` on validation; the unknown model from ``open_set`` or simulated on validation."""
    tr_emb = np.asarray(train_emb, np.float64)
    va_emb = np.asarray(val_emb, np.float64).reshape(-1, tr_emb.shape[1])
    tr_c, va_c = np.asarray(train_composers, dtype=object), np.asarray(val_composers, dtype=object)
    va_g = np.asarray(val_groups, dtype=object)
    notes: list[str] = []
    works = work_counts(list(tr_c), list(train_groups))
    report: dict[str, Any] = {"validation_pieces": int(len(va_emb)), "train_works": works}
    if temperature_rule not in TEMPERATURE_RULES:
        raise ValueError(f"temperature_rule must be one of {sorted(TEMPERATURE_RULES)}")
    params: dict[str, Any] = {"temperature_rule": temperature_rule}
    try:
        m, names, w, b, choice = choose_named(
            tr_emb, tr_c, works, va_emb, va_c, min_works=min_works, seed=seed
        )
    except ValueError as exc:
        notes.append(f"composers not calibrated: {exc}")
        names = []
    if names:
        report["named"] = {"measured_on": FITTED_ON, **choice, "composers": len(names)}
        params.update(
            composers=tuple(names),
            min_works=m,
            probe_weights=tuple(tuple(float(v) for v in row) for row in w),
            probe_bias=tuple(float(v) for v in b),
        )
        cents, mean, std = spread_statistics(tr_emb, tr_c, names)
        params.update(spread_mean=tuple(mean.tolist()), spread_std=tuple(std.tolist()))
        index = {c: k for k, c in enumerate(names)}
        labels = np.array([index.get(c, -1) for c in va_c], np.int64)
        named = labels >= 0
        sims = va_emb @ cents.T
        logits = va_emb @ w.T + b
        if named.any():
            _fit_unknown(va_emb[named], sims[named], logits[named], labels[named], names,
                         (mean, std), open_set, params, report, notes)  # fmt: skip
        else:
            notes.append("no validation piece of a named composer: temperature and unknown unfit")
    fitted = fit_verify(va_emb, va_c, va_g, max_pairs, seed, FITTED_ON)
    if isinstance(fitted, str):
        notes.append(fitted)
    else:
        params["same_coef"], params["same_bias"], report["verify"] = fitted
        params["same_fitted"] = True
    return Calibration(**params, report=report, notes=tuple(notes))
