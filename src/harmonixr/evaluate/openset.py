"""Open-set attribution from real strangers: "someone else" learnt and measured on composers
an encoder never trained on.

Two cross-validations of one recipe over one cache supply the two kinds of piece:

- an ``unseen-composer`` one deals whole composers to folds, so each fold's validation and test
  composers are real strangers to that fold's encoder;
- a by-``group`` one holds out works, so each fold's test side has pieces of composers its
  encoder knows, pieces it never trained on.

For each fold the training pieces are embedded whole (the centroids ``attribute`` uses) and
every held-out piece is turned into the unknown model's features against them. The model is
cross-fitted: fold k of both cross-validations is measured by a model fitted on the other
folds, at an operating point chosen on fold k's validation side, so no figure is measured where
anything was fitted. The model fitted on all folds is what ``index build --open-set`` uses.

One module, over 400 lines: the open-set study is one protocol (folds read, features,
cross-fitting, operating point, report); split, its exclusion rules would drift apart."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from harmonixr._files import atomic_json, atomic_write
from harmonixr.data.cache import TensorCache
from harmonixr.evaluate.bootstrap import bootstrap_interval
from harmonixr.evaluate.calibrate import (
    FEATURES,
    OpenSetModel,
    _sigmoid,
    fit_calibration,
    fit_decreasing,
    open_set_features,
    operating_point,
    spread_statistics,
    work_counts,
)
from harmonixr.evaluate.crossval import EMB_FILE, _clean, fold_sides, read_job
from harmonixr.evaluate.metrics import balanced_weights_weighted, binary_ece, roc_auc

TRAIN_FILE = "train-embeddings.npz"
Progress = Callable[[str], None]


def embed_training_sides(out: str | Path, progress: Progress | None = None) -> list[Path]:
    """Embed each fold's training pieces whole with the fold's encoder into
    ``fold-k/train-embeddings.npz`` (skipped when present: a killed job resumes)."""
    from harmonixr.train.rundir import Run

    out = Path(out)
    cv, plan = read_job(out)
    written = []
    with TensorCache(cv["data"]) as cache:
        rows = cache.pieces()
        for k in range(plan.folds):
            d = out / f"fold-{k}"
            path = d / TRAIN_FILE
            written.append(path)
            if path.is_file():
                continue
            run = Run.open(d)
            sides = fold_sides(rows, plan, k)
            # the cache must still give the split the fold's encoder was trained on
            run.check_split(sides, rows)
            idx = sides["train"]
            if progress:
                progress(f"fold {k}: embedding {len(idx)} training pieces")
            tensors = [cache.load(rows[i]) for i in idx]
            emb = run.embed(tensors)
            paths = np.array([rows[i].path for i in idx], dtype=str)
            atomic_write(path, partial(np.savez, emb=emb, path=paths))
    return written


# ---------------------------------------------------------------- the study over folds

OPEN_SET_FILE = "open-set.json"


@dataclass
class Side:
    emb: np.ndarray
    composer: np.ndarray
    group: np.ndarray

    def take(self, mask: np.ndarray) -> Side:
        return Side(self.emb[mask], self.composer[mask], self.group[mask])

    def __len__(self) -> int:
        return len(self.composer)

    @staticmethod
    def join(a: Side, b: Side) -> Side:
        return Side(
            np.concatenate([a.emb, b.emb]),
            np.concatenate([a.composer, b.composer]),
            np.concatenate([a.group, b.group]),
        )


def load_whole_folds(out: str | Path) -> tuple[dict[str, Any], list[dict[str, Side]]]:
    """Each fold's training (whole pieces, ``embed_training_sides``), validation and test sides
    as embedded by the fold's encoder, labelled from the cache the cross-validation used."""
    out = Path(out)
    cv, _ = read_job(out)
    with TensorCache(cv["data"]) as cache:
        rows = {r.path: r for r in cache.pieces()}
    folds = []
    for k in range(cv["folds"]):
        d = out / f"fold-{k}"
        if not (d / TRAIN_FILE).is_file():
            raise ValueError(f"{d}: training side not embedded; run embed_training_sides first")
        z, t = np.load(d / EMB_FILE), np.load(d / TRAIN_FILE)

        def side(emb: np.ndarray, paths: np.ndarray, d: Path = d) -> Side:
            missing = [p for p in paths if p not in rows]
            if missing:
                raise ValueError(f"{d}: {len(missing)} pieces left the cache, e.g. {missing[0]}")
            return Side(
                emb.astype(np.float64),
                np.array([rows[p].composer for p in paths], dtype=object),
                np.array([rows[p].group for p in paths], dtype=object),
            )

        folds.append(
            {
                "train": side(t["emb"], t["path"]),
                "val": side(z["emb_val"], z["path_val"]),
                "test": side(z["emb_test"], z["path_test"]),
            }
        )
    return cv, folds


def known_examples(sides: dict[str, Side], seed: int) -> dict[str, Any]:
    """A by-group fold: calibrated on its training and validation sides as ``index build``
    would; its test pieces of named composers are held-out known pieces, those of composers
    with no training piece strangers, the rest barely known."""
    tr, va, te = sides["train"], sides["val"], sides["test"]
    cal = fit_calibration(tr.emb, tr.composer, tr.group, va.emb, va.composer, va.group, seed=seed)
    names = list(cal.composers)
    index = {c: k for k, c in enumerate(names)}
    trained = set(tr.composer)
    named = np.array([c in index for c in te.composer], bool)
    stranger = np.array([c not in trained for c in te.composer], bool)
    known = te.take(named)
    cents, mean, std = spread_statistics(tr.emb, tr.composer, names)

    def features(emb: np.ndarray) -> np.ndarray:
        return open_set_features(emb @ cents.T, mean, std)

    closed = cal.closed_log_probabilities(known.emb, known.emb @ cents.T)
    labels = np.array([index[c] for c in known.composer])
    return {
        "cal": cal,
        "x_cal": features(va.take(np.array([c in index for c in va.composer])).emb),
        "x_known": features(known.emb),
        "right": closed.argmax(1) == labels,
        "group_known": known.group,
        "x_barely": features(te.take(~named & ~stranger).emb),
        "x_strangers": features(te.take(stranger).emb),
        "composer_strangers": te.composer[stranger],
        "group_strangers": te.group[stranger],
    }


def stranger_examples(sides: dict[str, Side], min_works: int) -> dict[str, Any]:
    """An unseen-composer fold: its validation and test composers never trained its encoder.
    Scored against its training composers with at least ``min_works`` works; ``test`` marks
    the fold's own test pieces (its validation composers are other folds' test composers)."""
    tr = sides["train"]
    pieces = Side.join(sides["val"], sides["test"])
    overlap = set(pieces.composer) & set(tr.composer)
    if overlap:
        raise ValueError(f"strangers that also train the encoder: {sorted(overlap)[:3]}")
    works = work_counts(list(tr.composer), list(tr.group))
    names = sorted(c for c, n in works.items() if n >= min_works)
    cents, mean, std = spread_statistics(tr.emb, tr.composer, names)
    test = np.r_[np.zeros(len(sides["val"]), bool), np.ones(len(sides["test"]), bool)]
    return {
        "x": open_set_features(pieces.emb @ cents.T, mean, std),
        "composer": pieces.composer,
        "group": pieces.group,
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
    return _sigmoid(x @ np.asarray(coef, np.float64) + bias)


def open_set_figures(
    p_known: np.ndarray,
    p_strangers: np.ndarray,
    point: np.ndarray | float,
    right_known: np.ndarray,
    units: np.ndarray,
    resamples: int,
    seed: int,
) -> dict[str, Any]:
    """Detection AUC (score p), the share of known pieces called unknown and of strangers
    caught at the operating point, answer accuracy on both, and the ECE of p at an even prior
    (classes reweighted to equal mass), each with a unit-bootstrap interval. ``point`` may
    differ per piece (each fold its own); ``units`` label known pieces then strangers."""
    nk, ns = len(p_known), len(p_strangers)
    p = np.concatenate([p_known, p_strangers])
    y = np.concatenate([np.zeros(nk, bool), np.ones(ns, bool)])
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
    ones = np.ones(len(p))
    for name, stat in stats.items():
        if name in ("detection_auc", "ece_even_prior") and not (nk and ns):
            continue
        lo, hi = bootstrap_interval(stat, units, resamples, seed)
        out[name] = {"value": stat(ones), "lo": lo, "hi": hi}
    return out


def _same_recipe(a: dict[str, Any], b: dict[str, Any]) -> None:
    for key in ("folds", "seed", "data"):
        if a.get(key) != b.get(key):
            raise ValueError(f"the two cross-validations differ in {key}: {a[key]} vs {b[key]}")
    if a.get("train") != b.get("train"):
        raise ValueError("the two cross-validations trained with different settings")


def openset_study(
    strangers_dir: str | Path,
    known_dir: str | Path,
    resamples: int = 300,
    seed: int = 0,
    progress: Progress | None = None,
    exclude_groups: set[str] | None = None,
) -> dict[str, Any]:
    """Learn "someone else" from real strangers and measure it where nothing was fitted.

    ``strangers_dir``: an unseen-composer cross-validation (each fold's validation and test
    composers never trained its encoder). ``known_dir``: a by-group cross-validation of the same
    recipe, whose test sides hold pieces of composers its encoders know but pieces they never
    trained on. Fold k is measured on its by-group test pieces of named composers and on its
    strangers (the unseen-composer fold's *test* composers, and the by-group fold's test
    composers with no training piece), by a model fitted on the other folds' pieces less every
    piece that shares a group with a measured one and every stranger whose composer is measured
    (``disjoint_from``): an unseen-composer fold's validation composers are other folds' test
    composers, so without this the same pieces would be fitted and measured through two
    encoders. The operating point is chosen on fold k's by-group validation side.

    ``exclude_groups`` (e.g. the test groups of the run that will ship with this model) are kept
    out of every fit and every measurement, so that run's test side stays unseen. Writes
    ``open-set.json`` (the model fitted on every fold less those groups, and the cross-fitted
    report) and ``open-set.md`` into ``strangers_dir``."""
    strangers_dir = Path(strangers_dir)
    say = progress or (lambda s: None)
    cvs, sf = load_whole_folds(strangers_dir)
    cvk, kf = load_whole_folds(known_dir)
    if cvs.get("mode") != "unseen-composer" or cvk.get("mode") != "group":
        raise ValueError("needs an unseen-composer and a by-group cross-validation, in that order")
    _same_recipe(cvs, cvk)
    known, strangers = [], []
    for k in range(len(kf)):
        say(f"fold {k}: calibrating")
        known.append(known_examples(kf[k], cvk["seed"]))
        strangers.append(stranger_examples(sf[k], known[k]["cal"].min_works))

    excluded = set(exclude_groups or ())
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
    report: dict[str, Any] = {
        "cross_validations": {
            "strangers": {k: cvs[k] for k in ("folds", "seed", "mode", "val_fraction")},
            "known": {k: cvk[k] for k in ("folds", "seed", "mode", "val_fraction")},
        },
        "measured_on": "fold k's strangers (unseen-composer fold k: test composers its encoder "
        "never saw; by-group fold k: test composers with no training piece) and fold k's "
        "by-group test pieces of named composers; the unknown model fitted on the other folds "
        "less every piece sharing a group, or a stranger composer, with a measured piece; the "
        "operating point on fold k's validation side",
        "excluded_groups": len(exclude_groups or ()),
        "features": list(FEATURES),
        "named_composers": [len(e["cal"].composers) for e in known],
        "min_works": [e["cal"].min_works for e in known],
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
    final = Examples.join(every)
    final = final.take(np.array([g not in excluded for g in final.group], bool))
    x, y = final.x, final.y
    coef, bias = fit_decreasing(x, y)
    model = OpenSetModel(
        tuple(coef),
        bias,
        f"real strangers: {cvs['folds']} unseen-composer folds ({int(y.sum())} stranger "
        f"pieces) against {int((y == 0).sum())} held-out pieces of known composers",
    )
    result = {"model": model.to_dict(), "report": _clean(report)}
    atomic_json(strangers_dir / OPEN_SET_FILE, result, indent=1)
    atomic_write(strangers_dir / "open-set.md", openset_markdown(result))
    return result


def _fmt(d: Any) -> str:
    if not isinstance(d, dict) or d.get("value") is None:
        return "–"
    lo, hi = d.get("lo"), d.get("hi")
    iv = f" [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else ""
    return f"{d['value']:.3f}{iv}"


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
        lines.append(f"| {label} | {_fmt(a)} | {_fmt(b)} |")
    m = result["model"]
    lines += [
        "",
        f"Shipped model: coefficients {', '.join(f'{c:.3f}' for c in m['coef'])} on "
        f"({', '.join(FEATURES)}), bias {m['bias']:.3f}; {m['source']}.",
        "",
    ]
    return "\n".join(lines)
