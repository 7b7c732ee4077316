"""Simple, strong-enough baselines on the same tensors the model sees (DESIGN §7).

Each turns a ``uint8 (T, 12, 6)`` tensor into an L1-normalised histogram; pieces are compared by
the Euclidean distance of the L2-normalised histograms (equivalent to cosine). ``fit_histogram_lr``
trains a logistic regression on the concatenated histograms and uses its class probabilities as
embeddings.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

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


def onsets(t: np.ndarray) -> np.ndarray:
    """(T, 72) booleans: a cell whose value rises from the previous frame starts a note."""
    v = np.asarray(t, np.int16).transpose(0, 2, 1).reshape(t.shape[0], -1)
    prev = np.vstack((np.zeros((1, v.shape[1]), v.dtype), v[:-1]))
    return v > prev


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


HISTOGRAMS = {
    "pitch_class": pitch_class_histogram,
    "note": note_histogram,
    "interval": interval_histogram,
    "polyphony": polyphony_histogram,
}


def histogram_embeddings(tensors: Sequence[np.ndarray], kind: str) -> np.ndarray:
    """(N, D) L2-normalised histograms of one kind."""
    fn = HISTOGRAMS[kind]
    h = np.stack([fn(t) for t in tensors])
    norm = np.linalg.norm(h, axis=1, keepdims=True)
    return h / np.where(norm > 0, norm, 1.0)


def all_histograms(tensors: Sequence[np.ndarray]) -> np.ndarray:
    return np.stack([np.concatenate([fn(t) for fn in HISTOGRAMS.values()]) for t in tensors])


def fit_histogram_lr(train_tensors: Sequence[np.ndarray], train_labels: np.ndarray, seed: int = 0):
    """A logistic regression on the four histograms; returns ``embed(tensors) -> probs``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(
        StandardScaler(), LogisticRegression(max_iter=2000, C=0.5, random_state=seed)
    )
    model.fit(all_histograms(train_tensors), train_labels)

    def embed(tensors: Sequence[np.ndarray]) -> np.ndarray:
        return model.predict_proba(all_histograms(tensors))

    return embed
