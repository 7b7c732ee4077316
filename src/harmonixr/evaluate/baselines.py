"""Simple, strong-enough baselines on the same tensors the model sees (docs/architecture.md),
given the model's treatment: the same folds, the same protocols, their settings chosen on each
fold's validation side.

Each histogram turns a ``uint8 (T, 12, 6)`` tensor into an L1-normalised histogram; pieces are
compared by the cosine of their histograms (square-rooted first or not, chosen on validation).
:func:`probability_space` fits a logistic regression on a fold's training features (C chosen on
validation) and compares pieces by its class probabilities, p·q: on the five histograms
together it is the logistic-regression baseline, and on any other features a cheap back-end.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from harmonixr.evaluate.protocols import Fold, class_probabilities, val_auc
from harmonixr.model.stats import onsets  # one rule for a note's start

INTERVAL_RANGE = 12
MAX_POLYPHONY = 10


def _l1(v: np.ndarray) -> np.ndarray:
    s = v.sum()
    return v / s if s > 0 else v


def pitch_class_histogram(t: np.ndarray) -> np.ndarray:
    """Sounding energy per pitch class (F = 0), (12,)."""
    return _l1(np.asarray(t, np.float64).sum(axis=(0, 2)))


def note_histogram(t: np.ndarray) -> np.ndarray:
    """Sounding energy per note F1…E7 in helix order ``k = 12·octave + pitch class``, (72,)."""
    return _l1(np.asarray(t, np.float64).sum(axis=0).T.reshape(-1))


def interval_histogram(t: np.ndarray) -> np.ndarray:
    """Melodic intervals between the highest new notes of consecutive onset frames, clipped to
    ±12 semitones, (25,)."""
    on = onsets(t)
    frames = np.flatnonzero(on.any(axis=1))
    hist = np.zeros(2 * INTERVAL_RANGE + 1)
    if frames.size < 2:
        return hist
    top = on.shape[1] - 1 - np.argmax(on[frames, ::-1], axis=1)
    steps = np.clip(np.diff(top), -INTERVAL_RANGE, INTERVAL_RANGE) + INTERVAL_RANGE
    np.add.at(hist, steps, 1.0)
    return _l1(hist)


def polyphony_histogram(t: np.ndarray) -> np.ndarray:
    """How many notes sound at once, per frame, 0…10+ (11,)."""
    n = np.minimum((np.asarray(t) > 0).reshape(t.shape[0], -1).sum(axis=1), MAX_POLYPHONY)
    return _l1(np.bincount(n, minlength=MAX_POLYPHONY + 1).astype(np.float64))


def pc_transition_histogram(t: np.ndarray) -> np.ndarray:
    """Pitch-class transitions between consecutive onset frames: every pitch class starting in
    one onset frame to every pitch class starting in the next, (144,) = 12 × 12."""
    on = onsets(t)  # (T, 72), k = 12·octave + pitch class
    frames = np.flatnonzero(on.any(axis=1))
    hist = np.zeros((12, 12))
    if frames.size < 2:
        return hist.ravel()
    pcs = on[frames].reshape(frames.size, 6, 12).any(axis=1).astype(np.float64)  # (F, 12)
    hist += pcs[:-1].T @ pcs[1:]
    return _l1(hist.ravel())


HISTOGRAMS = {
    "pitch_class": pitch_class_histogram,
    "note": note_histogram,
    "interval": interval_histogram,
    "polyphony": polyphony_histogram,
    "pc_transition": pc_transition_histogram,
}
TRANSFORMS = ("raw", "sqrt")  # sqrt: cosine of square roots = Bhattacharyya similarity
LR_CS = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)


def normalise_rows(h: np.ndarray, transform: str = "raw") -> np.ndarray:
    """L2-normalised rows, after an optional element-wise square root."""
    if transform not in TRANSFORMS:
        raise ValueError(f"transform must be one of {TRANSFORMS}, got {transform!r}")
    h = np.sqrt(np.maximum(h, 0.0)) if transform == "sqrt" else np.asarray(h, np.float64)
    norm = np.linalg.norm(h, axis=1, keepdims=True)
    return h / np.where(norm > 0, norm, 1.0)


def histogram_table(tensors: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """Every histogram kind of every tensor, unnormalised rows: {kind: (N, D_kind)}."""
    out: dict[str, list[np.ndarray]] = {k: [] for k in HISTOGRAMS}
    for t in tensors:
        for k, fn in HISTOGRAMS.items():
            out[k].append(fn(t))
    return {k: np.stack(v) if v else np.zeros((0, 1)) for k, v in out.items()}


def fit_lr(features: np.ndarray, labels: np.ndarray, c: float, seed: int = 0):
    """Standardised features → multinomial logistic regression (returns the pipeline)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(
        StandardScaler(), LogisticRegression(C=c, max_iter=3000, random_state=seed)
    )
    return model.fit(features, labels)


LR = "logistic regression, 5 histograms"


def histogram_name(kind: str) -> str:
    return f"{kind} histogram"


def probability_space(fold: Fold, seed: int = 0, cs: Sequence[float] = LR_CS):
    """A logistic regression on the fold's training features (its sides' embeddings) over the
    training composers, C chosen by validation all-pairs AUC, pieces compared by p·q (the
    probability that both are by the same composer if the two guesses were independent).
    Returns the fold in that space and the choice."""
    names = sorted(set(fold.train.composer.tolist()))
    label = {n: i for i, n in enumerate(names)}
    y = np.array([label[c] for c in fold.train.composer])
    scored = []
    for c in cs:
        model = fit_lr(fold.train.embeddings, y, c, seed)
        p_val = class_probabilities(model, fold.val.embeddings, len(names))
        auc = val_auc(fold.val.with_embeddings(p_val))
        scored.append((np.nan_to_num(auc, nan=-1.0), c, model))
    auc, c, model = max(scored, key=lambda t: t[0])
    space = fold.mapped(
        lambda _, side: side.with_embeddings(
            class_probabilities(model, side.embeddings, len(names))
        )
    )
    return space, {"C": c, "val_auc": float(auc) if auc >= 0 else None, "scored_by": "p·q"}


def baseline_folds(
    fold: Fold, hists: dict[str, dict[str, np.ndarray]], seed: int = 0
) -> tuple[dict[str, Fold], dict[str, dict[str, Any]]]:
    """Every baseline's fold: each histogram kind (its transform chosen by validation AUC) and
    the logistic regression on all five (:func:`probability_space`). ``fold``: the pieces'
    labels (its embeddings unused); ``hists``: per side name, every kind's raw histograms
    (``histogram_table``). Also each baseline's choice."""
    methods: dict[str, Fold] = {}
    choices: dict[str, dict[str, Any]] = {}
    kinds = list(next(iter(hists.values())))
    for kind in kinds:

        def auc(tr: str, kind: str = kind) -> float:
            v = fold.val.with_embeddings(normalise_rows(hists["val"][kind], tr))
            return float(np.nan_to_num(val_auc(v), nan=-1))

        best = max(TRANSFORMS, key=auc)
        choices[histogram_name(kind)] = {"transform": best}
        methods[histogram_name(kind)] = fold.mapped(
            lambda name, side, kind=kind, best=best: side.with_embeddings(
                normalise_rows(hists[name][kind], best)
            )
        )
    features = fold.mapped(
        lambda name, side: side.with_embeddings(
            np.concatenate([hists[name][k] for k in kinds], axis=1)
        )
    )
    methods[LR], choices[LR] = probability_space(features, seed)
    return methods, choices
