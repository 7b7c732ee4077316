"""Which calibrator of a run's composer answer to use (``evaluate/calibrators.py``), on
pieces its test side never holds: cross-fitted on its validation side, and, given other runs
of the same recipe (a cross-validation's folds), fitted on each one's validation side and
measured on its held-out pieces, with every piece of ``RUN``'s test side and of its groups
removed from each side of theirs (probe, calibrators and measure alike). Those runs' encoders
may still have trained on ``RUN``'s test pieces: their figures inform the choice, they are
not figures of ``RUN``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from harmonixr.data.cache import TensorCache
from harmonixr.data.splits import SIDES
from harmonixr.evaluate.calibrate import choose_named, work_counts
from harmonixr.evaluate.calibrators import RULE_OF, compare_calibrators, compare_on_runs
from harmonixr.search.index import INDEX_DIR, Index, check_index
from harmonixr.train.piece_inputs import cached_stats
from harmonixr.train.rundir import Run


def outside_test_side(run: Run, rows: list) -> set[str]:
    """Contents of the rows outside ``run``'s whole test side: its every test piece (those
    ``Run.split`` leaves out for recurring music too) and every piece of their split units
    (groups joined through byte-identical files, ``data.splits.fold_units``)."""
    from harmonixr.data.splits import fold_units, load_split

    unit = fold_units(rows)
    test = load_split(run.split_path, rows)["test"]
    hidden_units = {unit[i] for i in test}
    hidden = {rows[i].sha256 for i in test}
    return {
        r.sha256
        for r, u in zip(rows, unit, strict=True)
        if r.sha256 not in hidden and u not in hidden_units
    }


def _run_logits(
    run: Run, rows: list, keep: set[str], z: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int, dict[str, int]]:
    """A run's probe fitted as its index would be (named composers and C chosen on its
    validation side), and the logits and true columns of its validation and test pieces,
    every side restricted to the contents in ``keep``; then the number of named composers
    and how many pieces of each side were stripped (not in ``keep``)."""
    split = run.split(rows)
    comp = np.array([r.composer for r in rows], dtype=object)
    stripped = {s: sum(rows[i].sha256 not in keep for i in split[s]) for s in SIDES}
    tr, va, te = ([i for i in split[s] if rows[i].sha256 in keep] for s in SIDES)
    works = work_counts(list(comp[tr]), [rows[i].group for i in tr])
    _, names, w, b, _ = choose_named(z[tr], comp[tr], works, z[va], comp[va])
    col = {c: k for k, c in enumerate(names)}

    def side(ix: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        ix = [i for i in ix if comp[i] in col]
        return z[ix] @ w.T + b, np.array([col[comp[i]] for i in ix], np.int64)

    return *side(va), *side(te), len(names), stripped


def calibrator_choice(
    run_dir: str | Path,
    data: str | Path,
    *,
    held_out: Sequence[str | Path] = (),
    folds: int = 5,
    repeats: int = 20,
    shipped: str | None = None,
) -> dict[str, Any]:
    """The calibrators compared on ``run_dir``'s validation pieces of named composers
    (cross-fitted) and, for each run of ``held_out``, fitted on its validation side and
    measured on its test pieces, every side without ``run_dir``'s test side and its groups
    (``outside_test_side``): no label or embedding of ``run_dir``'s test side enters a fit or
    a figure. ``shipped``: the temperature rule compared against (default: the index's)."""
    run_dir = Path(run_dir)
    run = Run.open(run_dir)
    index = Index.load(run_dir / INDEX_DIR)
    check_index(index, run)
    by_sha = {it.sha256: i for i, it in enumerate(index.items)}
    named = {c: k for k, c in enumerate(index.calibration.composers)}
    with TensorCache(data) as cache:
        rows = cache.pieces()
        split = run.split(rows)
        val = [rows[i] for i in split["val"] if rows[i].composer in named]
        if not val:
            raise ValueError(f"{run_dir}: no validation piece of a named composer")
        z = np.asarray(index.store.vectors, np.float64)[[by_sha[r.sha256] for r in val]]
        _, sims, _, _ = index.scores(z)
        logits = index.calibration.logits(z, sims)
        labels = np.array([named[r.composer] for r in val])
        groups = np.array([r.group for r in val])
        rule = shipped or index.calibration.temperature_rule  # compared against
        if rule not in RULE_OF.values():
            raise ValueError(f"no temperature rule {rule!r}: one of {sorted(RULE_OF.values())}")
        shipped = next(k for k, r in RULE_OF.items() if r == rule)
        report = compare_calibrators(
            logits, labels, groups, folds=folds, repeats=repeats, shipped=shipped
        )
        if not held_out:
            return _index_build(report)
        keep = outside_test_side(run, rows)
        per_run, strips = [], []
        # every run reads the same pieces: their tensors and statistics, once
        tensors = [cache.load(r) for r in rows]
        stats = cached_stats(cache, rows)
        for other in held_out:
            o = Run.open(other)
            o.check_tensors(cache.config, data)
            emb = o.embed(tensors, stats=stats).astype(np.float64)
            *logits_of, stripped = _run_logits(o, rows, keep, emb)
            per_run.append((str(other), *logits_of))
            strips.append(stripped)
    runs = compare_on_runs(per_run, shipped)
    stripped_of = {name: n for (name, *_), n in zip(per_run, strips, strict=True)}
    for row in runs["runs"]:  # a run with nothing held out has no row
        row["stripped_of_run_test_side"] = stripped_of[row["run"]]
    report["held_out_runs"] = runs
    return choose(report)


def choose(report: dict[str, Any]) -> dict[str, Any]:
    """The rule, given other runs: the calibrator of least mean ECE on their held-out pieces
    (several times as many pieces as one validation side, and the very question: does a fit on
    a validation side carry to unseen pieces?), unless it is clearly worse on this run's
    validation side (its cross-fitted ECE above the shipped one's by more than the spread of
    the paired difference); without other runs, the validation rule."""
    means = report["held_out_runs"]["mean_ece"]
    if not means:
        report["chosen"] = report["shipped"]
        report["rule"] = "no other run's held-out piece: the shipped calibrator stays"
        return _index_build(report)
    best = min(means, key=means.get)
    v = report["cross_fitted_ece"][best]
    worse = v["minus_shipped"] - v["minus_shipped_sd"] > 0
    report["chosen"] = report["shipped"] if worse else best
    report["rule"] = (
        "the least mean ECE on the other runs' held-out pieces, unless clearly worse on this "
        "run's validation side (paired difference above its spread)"
    )
    return _index_build(report)


def _index_build(report: dict[str, Any]) -> dict[str, Any]:
    """What ``index build`` is given for the chosen calibrator."""
    chosen = report["chosen"]
    report["index_build"] = (
        f"--temperature {RULE_OF[chosen]}"
        if chosen in RULE_OF
        else "not a temperature: an index holds a temperature rule only"
    )
    return report
