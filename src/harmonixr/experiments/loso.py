"""Leave-one-source-out jobs: one run per held-out source, then its figures beside the tuned
baselines'.

``run_loso`` holds each source of the plan out in turn (``evaluate.loso.holdout``: the source's
pieces are the test side, every unit it touches is kept off the training and validation sides)
and trains a run on the rest, in ``OUT/source-<name>/``, embedding every side's pieces whole
(``jobs.train_split``); a killed job resumes source by source, a source's training from its last
checkpoint. ``loso_job_report`` measures the stored embeddings (``evaluate.loso``) and writes
``OUT/loso-report.json`` and ``.md``.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harmonixr._files import atomic_json, atomic_write
from harmonixr.data.cache import CachedPiece, TensorCache
from harmonixr.evaluate.baselines import baseline_folds
from harmonixr.evaluate.loso import holdout, holdouts, loso_markdown, loso_report
from harmonixr.evaluate.protocols import Fold, Settings
from harmonixr.evaluate.records import Side, json_ready
from harmonixr.evaluate.tables import MODEL
from harmonixr.experiments.jobs import (
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

LOSO_FILE = "loso.json"
REPORT = "loso-report"
WHAT = "leave-one-source-out job"


@dataclass(frozen=True)
class SourcePlan:
    """The sources a job holds out, one at a time, and how each holdout's sides are drawn."""

    sources: tuple[str, ...]
    seed: int = 0
    val_fraction: float = 0.1
    min_works: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "sources": list(self.sources),
            "seed": self.seed,
            "val_fraction": self.val_fraction,
            "min_works": self.min_works,
        }


def labels(rows: list[CachedPiece]) -> Side:
    """The cache's pieces as one side of labels (no embeddings)."""
    return Side.from_rows(rows, np.zeros((len(rows), 0)))


def make_plan(
    data: str | Path,
    which: list[str] | None = None,
    seed: int = 0,
    val_fraction: float = 0.1,
    min_works: int = 1,
) -> SourcePlan:
    """A plan over ``which`` sources, or every source of the cache that leaves test pieces."""
    with TensorCache(data) as cache:
        corpus = labels(cache.pieces())
    found = holdouts(corpus, which, val_fraction, seed, min_works)
    return SourcePlan(tuple(h.source for h in found), seed, val_fraction, min_works)


def source_dir(out: Path, source: str) -> Path:
    return out / ("source-" + re.sub(r"[^A-Za-z0-9._-]+", "_", source))


def _splits(rows: list[CachedPiece], plan: SourcePlan, only: list[str] | None):
    corpus = labels(rows)
    for source in only if only is not None else plan.sources:
        if source not in plan.sources:
            raise ValueError(f"{source!r} is not a source of this job: {list(plan.sources)}")
        h = holdout(corpus, source, plan.val_fraction, plan.seed, plan.min_works)
        yield h, {k: v.tolist() for k, v in h.sides.items()}


def run_loso(
    data: str | Path,
    out: str | Path,
    config: TrainConfig,
    plan: SourcePlan,
    model_overrides: dict[str, Any] | None = None,
    only: list[str] | None = None,
    progress: Progress | None = None,
) -> Path:
    """Train and embed a run per held-out source (skipping those done); returns ``out``."""
    say = progress or (lambda _m: None)
    out, data = Path(out), Path(data)
    config = config.replace(split="group")  # the split is the holdout's, written beforehand
    prepare(out, LOSO_FILE, data, plan.to_dict(), config, model_overrides, WHAT)
    with TensorCache(data) as cache:
        rows = cache.pieces()
    for h, split in _splits(rows, plan, only):
        info = {"mode": "leave-one-source-out", "source": h.source, "seed": plan.seed}
        d = source_dir(out, h.source)
        train_split(d, data, rows, split, config, model_overrides, info, "whole", say)
    return out


def read_job(out: str | Path) -> tuple[dict[str, Any], SourcePlan]:
    rec = read_record(out, LOSO_FILE, "leave-one-source-out")
    return rec, SourcePlan(
        tuple(rec["sources"]), rec["seed"], rec["val_fraction"], rec["min_works"]
    )


def job_settings(
    out_dir: Path,
    data: str | Path | None,
    config: str | Path | None,
    which: list[str] | None,
    seed: int,
    val_fraction: float,
    min_works: int,
    max_steps: int | None = None,
) -> tuple[Path, TrainConfig, dict[str, Any], SourcePlan, list[str] | None]:
    """(cache, training settings, model overrides, plan, the sources to run now). A job
    already in ``out_dir`` keeps its plan (``which`` then picks among its sources) and, when
    neither a cache nor a TOML is given, its recorded settings (a rerun resumes); a new job
    holds out ``which`` sources (default: every source that leaves test pieces) with the
    TOML's settings, ``seed`` and ``max_steps``."""
    flags: dict[str, Any] = {"seed": seed, "max_steps": max_steps}
    only = None
    if (out_dir / LOSO_FILE).is_file():
        rec, plan = read_job(out_dir)
        only = which
        if data is None and config is None:
            settings = dict(rec["train"])
            model = settings.pop("model", {})
            data, flags = Path(rec["data"]), {}
        else:
            settings, model = load_toml(config) if config else ({}, {})
    else:
        if data is None:
            raise ValueError("a leave-one-source-out job needs --data CACHE (or OUT holding one)")
        settings, model = load_toml(config) if config else ({}, {})
        plan = make_plan(data, which, seed, val_fraction, min_works)
    if data is None:
        raise ValueError(f"{out_dir}: give --data with --config (or neither, to resume)")
    flags["split"] = "group"
    cfg = merged_settings(Path(data).resolve(), out_dir, toml=settings, flags=flags)
    return Path(data), cfg, model, plan, only


def loso_job_report(
    out: str | Path,
    resamples: int = 1000,
    baselines: bool = True,
    progress: Progress | None = None,
    only: list[str] | None = None,
) -> dict[str, Any]:
    """The job's figures per held-out source (``evaluate.loso.loso_report``), written to
    ``out/loso-report.json`` and ``.md``."""
    say = progress or (lambda _m: None)
    out = Path(out)
    rec, plan = read_job(out)
    t0 = time.perf_counter()
    methods: dict[str, dict[str, Fold]] = {MODEL: {}}
    choices: dict[str, dict[str, dict[str, Any]]] = {}
    sizes = {}
    with TensorCache(rec["data"]) as cache:
        rows = cache.pieces()
        table = histograms(out, cache, rows) if baselines else None
    for h, split in _splits(rows, plan, only):
        fold, idx = load_split_fold(source_dir(out, h.source), rows, split)
        methods[MODEL][h.source] = fold
        sizes[h.source] = h.sizes()
        if table is not None:
            found, chosen = baseline_folds(
                fold_labels(rows, idx), fold_histograms(table, idx), plan.seed
            )
            for name, f in found.items():
                methods.setdefault(name, {})[h.source] = f
                choices.setdefault(name, {})[h.source] = chosen[name]
    s = Settings(seed=plan.seed, resamples=resamples, min_works=plan.min_works)
    report = loso_report(methods, s, sizes, choices, say)
    dirs = {source: source_dir(out, source) for source in sizes}
    report.update(
        out=str(out),
        cache=rec["data"],
        plan=plan.to_dict(),
        timing={s: timing(d) for s, d in dirs.items()},
        model_sha256={s: model_sha256(d) for s, d in dirs.items()},
        seconds=round(time.perf_counter() - t0, 1),
    )
    report = json_ready(report)
    atomic_json(out / f"{REPORT}.json", report, indent=1)
    atomic_write(out / f"{REPORT}.md", loso_markdown(report))
    return report
