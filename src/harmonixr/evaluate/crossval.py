"""Cross-validation's figures: K folds' sides (each measured by its own model, every choice made
on its own validation side) pooled into one report by the protocols of ``protocols.py``:

- pairs are formed inside a test fold only (two folds' models embed into different spaces);
- every interval resamples the corpus's units (``Settings.universe``), so pairs sharing a unit
  are never counted as independent.

Running the folds (training, embedding, resuming) is ``experiments.cv``'s; this module only
measures what they stored.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from harmonixr.evaluate.baselines import LR, baseline_folds
from harmonixr.evaluate.protocols import Fold, Settings, evaluate_folds
from harmonixr.evaluate.tables import MODEL

MIN_WORKS = 5  # attribution: composers with at least this many training units
# what a cross-validation measures for its model; baselines skip the probe (they are features
# or a probe already), and only the model and the logistic regression get source probes
CV_PROTOCOLS = ("verify", "pairs", "attribution", "attribution_probe", "retrieval", "source_probe")
BASELINE_PROTOCOLS = ("verify", "pairs", "attribution", "retrieval")
NO_ATTRIBUTION = ("attribution", "attribution_probe")


def crossval_methods(
    folds: Sequence[Fold],
    baselines: Sequence[tuple[Fold, dict[str, dict[str, np.ndarray]]]] | None,
    s: Settings,
    attribution: bool = True,
    progress: Callable[[str], None] | None = None,
) -> tuple[dict[str, dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """Every method's pooled figures and each baseline's choices per fold. ``folds``: the
    model's (a training side of no pieces where they were not embedded); ``baselines``: per
    fold, every piece's labels and, per side, each histogram kind's rows (None: none)."""
    say = progress or (lambda _m: None)
    methods: dict[str, list[Fold]] = {MODEL: list(folds)}
    choices: dict[str, list[dict[str, Any]]] = {}
    if baselines is not None:
        for labels, h in baselines:
            found, chosen = baseline_folds(labels, h, s.seed)
            for name, f in found.items():
                methods.setdefault(name, []).append(f)
                choices.setdefault(name, []).append(chosen[name])
    figures = {}
    for name, mf in methods.items():
        say(f"figures: {name}")
        protocols = CV_PROTOCOLS if name == MODEL else BASELINE_PROTOCOLS
        if name == LR:
            protocols = (*protocols, "source_probe")
        if not attribution:
            protocols = tuple(p for p in protocols if p not in NO_ATTRIBUTION)
        figures[name], _ = evaluate_folds(mf, s, protocols)
    return figures, choices
