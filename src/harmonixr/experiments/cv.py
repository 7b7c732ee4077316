"""Cross-validation jobs: K fold runs over one cache, then pooled out-of-fold figures.

``run_folds`` deals the cache's leak-free units (or, with ``unseen-composer``, its composers) to
K folds by a hash of the unit and the seed (``data.splits.fold_split``). For each fold it trains
a run on the other folds (validation taken from them) and embeds the fold's pieces with it
(``jobs.train_split``); a killed job resumes fold by fold. ``pooled_report`` then hands the
stored embeddings to ``evaluate.crossval`` and writes ``report.json`` / ``report.md``.

The open-set study reads two such jobs: ``embed_training_sides`` and ``openset_job``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from harmonixr._files import atomic_json, atomic_write
from harmonixr.data.cache import CachedPiece, TensorCache
from harmonixr.data.splits import fold_split
from harmonixr.evaluate.crossval import MIN_WORKS, crossval_methods
from harmonixr.evaluate.protocols import Fold, Settings
from harmonixr.evaluate.records import WEIGHTINGS, Side, json_ready
from harmonixr.evaluate.tables import INTERVALS, report_markdown
from harmonixr.experiments.jobs import (
    EMB_FILE,
    Progress,
    fold_histograms,
    fold_labels,
    histograms,
    load_split_fold,
    model_sha256,
    prepare,
    read_record,
    timing,
    train_split,
)
from harmonixr.train.config import TrainConfig, load_toml, merged_settings

CV_FILE = "cv.json"
TRAIN_FILE = "train-embeddings.npz"
OPEN_SET_FILE = "open-set.json"


@dataclass(frozen=True)
class FoldPlan:
    folds: int = 5
    seed: int = 0
    mode: str = "group"
    val_fraction: float = 0.1

    def to_dict(self) -> dict[str, Any]:
        return {
            "folds": self.folds,
            "seed": self.seed,
            "mode": self.mode,
            "val_fraction": self.val_fraction,
        }


def fold_sides(rows: list[CachedPiece], plan: FoldPlan, fold: int) -> dict[str, list[int]]:
    return fold_split(rows, plan.folds, fold, plan.seed, plan.mode, plan.val_fraction)


def run_folds(
    data: str | Path,
    out: str | Path,
    config: TrainConfig,
    plan: FoldPlan = FoldPlan(),
    model_overrides: dict[str, Any] | None = None,
    only: list[int] | None = None,
    progress: Progress | None = None,
) -> Path:
    """Train and embed each fold (skipping those already done); returns ``out``."""
    say = progress or (lambda _m: None)
    out, data = Path(out), Path(data)
    config = config.replace(split=plan.mode)
    prepare(out, CV_FILE, data, plan.to_dict(), config, model_overrides, "cross-validation")
    with TensorCache(data) as cache:
        rows = cache.pieces()
    embed_train = "centre crop" if plan.mode == "group" else "none"
    for k in only if only is not None else range(plan.folds):
        info = {"mode": plan.mode, "seed": plan.seed, "folds": plan.folds, "fold": k}
        split = fold_sides(rows, plan, k)
        d = out / f"fold-{k}"
        train_split(d, data, rows, split, config, model_overrides, info, embed_train, say)
    return out


def read_job(out: str | Path) -> tuple[dict[str, Any], FoldPlan]:
    """A cross-validation job's record (``cv.json``: cache, training settings, plan) and its
    fold plan."""
    rec = read_record(out, CV_FILE, "cross-validation")
    return rec, FoldPlan(rec["folds"], rec["seed"], rec["mode"], rec["val_fraction"])


def job_settings(
    out_dir: Path,
    data: str | Path | None,
    folds: int,
    config: str | Path | None,
    mode: str,
    seed: int,
    max_steps: int | None = None,
) -> tuple[Path, TrainConfig, dict[str, Any], FoldPlan]:
    """(cache, training settings, model overrides, fold plan) of a cross-validation job: the
    job's own recorded settings when ``out_dir`` holds a ``cv.json`` and neither a cache nor a
    TOML is given (a rerun resumes), else the TOML's with ``seed`` and ``max_steps``."""
    if (out_dir / CV_FILE).is_file() and data is None and config is None:
        rec, plan = read_job(out_dir)
        settings = dict(rec["train"])
        model = settings.pop("model", {})
        data, flags = Path(rec["data"]), {}
    else:
        if data is None:
            raise ValueError("--folds needs --data CACHE (or RUN holding a cv.json)")
        settings, model = load_toml(config) if config else ({}, {})
        plan, flags = FoldPlan(folds, seed, mode), {"seed": seed, "max_steps": max_steps}
    flags["split"] = plan.mode
    cfg = merged_settings(Path(data).resolve(), out_dir, toml=settings, flags=flags)
    return Path(data), cfg, model, plan


def load_folds(
    out: Path, rows: list[CachedPiece], plan: FoldPlan, only: list[int] | None = None
) -> list[tuple[Fold, dict[str, np.ndarray]]]:
    """The model's folds from their stored embeddings (and each side's row indices), refused if
    the cache has changed."""
    return [
        load_split_fold(out / f"fold-{k}", rows, fold_sides(rows, plan, k))
        for k in (only if only is not None else range(plan.folds))
    ]


def pooled_report(
    out: str | Path,
    resamples: int = 1000,
    baselines: bool = True,
    progress: Progress | None = None,
    only: list[int] | None = None,
    side: str = "test",
    min_works: int = MIN_WORKS,
) -> dict[str, Any]:
    """Every method's pooled out-of-fold figures; written to ``out/report.json`` and ``.md``
    (with ``only``: those folds' test sides alone, to ``out/report-folds-….json|md``).
    ``side="val"`` measures the validation sides instead, for choosing a recipe: the test
    sides are then never looked at (``report-val…``). Attribution names the composers with
    at least ``min_works`` training units."""
    if side not in ("test", "val"):
        raise ValueError(f"side must be test or val, got {side!r}")
    say = progress or (lambda _m: None)
    out = Path(out)
    rec, plan = read_job(out)
    t0 = time.perf_counter()
    with TensorCache(rec["data"]) as cache:
        rows = cache.pieces()
        loaded = load_folds(out, rows, plan, only)
        if side == "val":  # the validation side stands where the test side would
            loaded = [(f.measured_on_val(), {**i, "test": i["val"]}) for f, i in loaded]
        extra = None
        if baselines:
            say("histograms of every piece")
            table = histograms(out, cache, rows)
            extra = [(fold_labels(rows, idx), fold_histograms(table, idx)) for _, idx in loaded]
    folds = [f for f, _ in loaded]
    units = np.unique(np.array([r.group for r in rows], dtype=object))
    s = Settings(seed=plan.seed, resamples=resamples, min_works=min_works, universe=units)
    methods, choices = crossval_methods(folds, extra, s, plan.mode == "group", say)
    reported = list(only) if only is not None else list(range(plan.folds))
    report: dict[str, Any] = {
        "out": str(out),
        "cache": rec["data"],
        "plan": plan.to_dict(),
        "folds_reported": reported,
        "pieces": len(rows),
        "units": len(units),
        "composers": len({r.composer for r in rows}),
        "fold_sizes": [{s: int(i[s].size) for s in ("train", "val", "test")} for _, i in loaded],
        "fold_units": [
            {s: len(set(getattr(f, s).unit.tolist())) for s in ("train", "val", "test")}
            for f, _ in loaded
        ],
        "resamples": resamples,
        "intervals": INTERVALS + "; every unit of the corpus is resampled",
        "weightings": WEIGHTINGS,
        "min_works": min_works,
        "measured_on": side,
        "choices_made_on": "each fold's validation side"
        + (" (baselines chosen and measured on it: optimistic for them)" if side == "val" else ""),
        "choices": choices,
        "methods": methods,
        "timing": {f"fold-{k}": timing(out / f"fold-{k}") for k in reported},
        "model_sha256": {f"fold-{k}": model_sha256(out / f"fold-{k}") for k in reported},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    stem = "report" if only is None else "report-folds-" + "-".join(map(str, only))
    if side == "val":
        stem = stem.replace("report", "report-val")
    report["files"] = [f"{stem}.json", f"{stem}.md"]
    report = json_ready(report)
    atomic_json(out / f"{stem}.json", report, indent=1)
    atomic_write(out / f"{stem}.md", report_markdown(report))
    return report


# ---------------------------------------------------------------- the open-set study's inputs


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
            emb = run.embed([cache.load(rows[i]) for i in idx])
            paths = np.array([rows[i].path for i in idx], dtype=str)
            atomic_write(path, partial(np.savez, emb=emb, path=paths))
    return written


def load_whole_folds(out: str | Path) -> tuple[dict[str, Any], list[Fold]]:
    """Each fold's training (whole pieces, :func:`embed_training_sides`), validation and test
    sides as embedded by the fold's encoder, labelled from the cache the job used."""
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
            return Side.from_rows([rows[p] for p in paths], emb)

        folds.append(
            Fold(
                side(t["emb"], t["path"]),
                side(z["emb_val"], z["path_val"]),
                side(z["emb_test"], z["path_test"]),
            )
        )
    return cv, folds


def openset_job(
    strangers_dir: str | Path,
    known_dir: str | Path,
    resamples: int = 300,
    seed: int = 0,
    progress: Progress | None = None,
    exclude_groups: set[str] | None = None,
) -> dict[str, Any]:
    """``evaluate.openset.openset_study`` on an unseen-composer and a by-group job of the same
    recipe; writes ``open-set.json`` (the shipped model and the report) and ``open-set.md``
    into ``strangers_dir``."""
    from harmonixr.evaluate.openset import openset_markdown, openset_study

    strangers_dir = Path(strangers_dir)
    cvs, sf = load_whole_folds(strangers_dir)
    cvk, kf = load_whole_folds(known_dir)
    if cvs.get("mode") != "unseen-composer" or cvk.get("mode") != "group":
        raise ValueError("needs an unseen-composer and a by-group cross-validation, in that order")
    for key in ("folds", "seed", "data"):
        if cvs.get(key) != cvk.get(key):
            raise ValueError(f"the two cross-validations differ in {key}: {cvs[key]} vs {cvk[key]}")
    if cvs.get("train") != cvk.get("train"):
        raise ValueError("the two cross-validations trained with different settings")
    plans = {
        name: {k: cv[k] for k in ("folds", "seed", "mode", "val_fraction")}
        for name, cv in (("strangers", cvs), ("known", cvk))
    }
    result = openset_study(
        sf, kf, plans, cvk["seed"], resamples, seed, progress, exclude_groups or set()
    )
    atomic_json(strangers_dir / OPEN_SET_FILE, json_ready(result), indent=1)
    atomic_write(strangers_dir / "open-set.md", openset_markdown(result))
    return result
