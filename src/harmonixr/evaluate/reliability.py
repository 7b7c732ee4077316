"""The expected calibration error of a confidence, and what it would be by chance alone.

A binned ECE is never zero on a finite sample: even answers whose confidence is exactly their
chance of being right scatter around it. On a few hundred pieces that scatter is of the same
order as the bars a calibration is held to, so a measured ECE is read beside the ECE that
perfectly calibrated answers of the same confidences would show (consistency resampling,
Bröcker and Smith 2007): each draw makes every answer right with probability equal to its
confidence and measures the ECE with the same bins. Its mean is the ECE expected by chance; the
share of draws at or above the measured ECE is the p-value of "these answers are calibrated".

The temperatures that calibrate a table of logits live here too, one per rule
(``TEMPERATURE_RULES``): the one of least negative log-likelihood and the one of least ECE.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from harmonixr.evaluate.metrics import N_BINS, confidence_ece


@dataclass(frozen=True)
class ChanceECE:
    """The ECE measured and what perfectly calibrated answers of the same confidences show."""

    measured: float
    expected: float  # mean ECE of calibrated answers
    q95: float  # 95th percentile: a calibrated model stays below it 95 % of the time
    p_value: float  # share of calibrated draws at or above the measured ECE
    draws: int
    above_bar: float  # share of calibrated draws above ``bar``
    bar: float = 0.05

    def to_json(self) -> dict[str, float | int]:
        return {
            "measured": self.measured,
            "expected_if_calibrated": self.expected,
            "q95_if_calibrated": self.q95,
            "p_value": self.p_value,
            "draws": self.draws,
            "bar": self.bar,
            "calibrated_above_bar": self.above_bar,
            "method": "consistency resampling: each answer right with probability equal to "
            "its confidence, same bins, every piece counted once",
        }


def ece_by_chance(
    conf: np.ndarray,
    right: np.ndarray,
    n_bins: int = N_BINS,
    draws: int = 2000,
    seed: int = 0,
    bar: float = 0.05,
) -> ChanceECE:
    """The measured ECE of (``conf``, ``right``) beside the ECE of ``draws`` calibrated
    re-draws of the same confidences, and how often those pass ``bar`` (the project asks an
    answer's ECE to stay at or below 0.05)."""
    conf = np.asarray(conf, np.float64)
    rng = np.random.default_rng(seed)
    chance = np.array(
        [confidence_ece(conf, rng.random(conf.size) < conf, n_bins) for _ in range(draws)]
    )
    measured = confidence_ece(conf, right, n_bins)
    return ChanceECE(
        measured,
        float(chance.mean()),
        float(np.quantile(chance, 0.95)),
        float(np.mean(chance >= measured - 1e-12)),
        draws,
        float(np.mean(chance > bar)),
        bar,
    )


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The ``T`` minimising the NLL of ``softmax(logits / T)`` (searched over 1e-4…100)."""
    from scipy.optimize import minimize_scalar

    logits, labels = np.asarray(logits, np.float64), np.asarray(labels, np.int64)

    def nll(log_t: float) -> float:
        logp = log_softmax(logits / np.exp(log_t))
        return float(-logp[np.arange(len(logp)), labels].mean())

    res = minimize_scalar(nll, bounds=(np.log(1e-4), np.log(100.0)), method="bounded")
    return float(np.exp(res.x))


def ece_temperature(logits: np.ndarray, labels: np.ndarray, n_bins: int = N_BINS) -> float:
    """The temperature ``T`` whose ``softmax(logits / T)`` has the least top-label ECE on these
    pieces, searched over 200 values from 0.2 to 5 on a log scale (the smallest on ties)."""
    logits, labels = np.asarray(logits, np.float64), np.asarray(labels)
    grid = np.exp(np.linspace(np.log(0.2), np.log(5.0), 200))
    eces = []
    for t in grid:
        p = softmax(logits / t)
        eces.append(confidence_ece(p.max(1), p.argmax(1) == labels, n_bins))
    return float(grid[int(np.argmin(eces))])


@dataclass(frozen=True)
class TemperatureRule:
    name: str
    fit: Callable[[np.ndarray, np.ndarray], float]


# how an answer's temperature is fitted on validation (``index calibrators`` compares them)
TEMPERATURE_RULES = {
    "nll": TemperatureRule("least negative log-likelihood", fit_temperature),
    "ece": TemperatureRule("least ECE", ece_temperature),
}
