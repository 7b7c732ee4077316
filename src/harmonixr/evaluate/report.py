"""``evaluate_run(run) -> report``: the model and its baselines on the run's held-out side, as
one fold of the protocols (``protocols.evaluate_folds``), written as ``report.json``,
``report.md`` and pictures. The report has the keys and types of a cross-validation's
(``tables.py`` writes and reads both).

Baselines get the model's treatment: the same pieces, the same whole-piece protocols, and their
settings (histogram transform, logistic-regression C) chosen on the validation side.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from harmonixr._files import atomic_json, atomic_write, sha256_file
from harmonixr.data.cache import CachedPiece, TensorCache
from harmonixr.evaluate.baselines import baseline_folds, histogram_table
from harmonixr.evaluate.protocols import RUN_PROTOCOLS, Curves, Fold, Settings, evaluate_folds
from harmonixr.evaluate.records import WEIGHTINGS, Side, json_ready
from harmonixr.evaluate.tables import INTERVALS, MODEL, UNTRAINED, report_markdown

SPLITS = ("test", "val", "unseen-composer")
Progress = Callable[[str], None]


def resolve_data(run: Path, stored: str, data: str | Path | None) -> Path:
    """The cache: ``data`` if given, else the run's, as stored or relative to the run."""
    if data is not None:
        return Path(data)
    for cand in (Path(stored), run / stored):
        if (cand / "cache.sqlite").is_file():
            return cand
    raise ValueError(f"{run}: its cache {stored!r} is not found from here; pass --data CACHE")


class _Pieces:
    """The run's pieces per side (train, val, test, and score MIDIs) and their tensors."""

    def __init__(self, rows: dict[str, list[CachedPiece]], tensors: dict[str, list[np.ndarray]]):
        self.rows, self.tensors = rows, tensors

    def fold(self, embed: Callable[[list[np.ndarray]], np.ndarray]) -> Fold:
        return Fold(**{k: Side.from_rows(r, embed(self.tensors[k])) for k, r in self.rows.items()})

    def labels(self) -> Fold:
        return Fold(**{k: Side.from_rows(r, np.zeros((len(r), 0))) for k, r in self.rows.items()})


def _load(the_run, cache_dir: Path, held: str, scores: str | Path | None) -> _Pieces:
    with TensorCache(cache_dir) as cache:
        the_run.check_tensors(cache.config, cache.root)
        all_rows = cache.pieces()
        idx = the_run.split(all_rows)
        the_run.check_split(idx, all_rows)
        rows = {k: [all_rows[i] for i in idx[k]] for k in ("train", "val")}
        rows["test"] = [all_rows[i] for i in idx[held]]
        tensors = {k: [cache.load(r) for r in v] for k, v in rows.items()}
    if scores is not None:
        held_groups = {r.group for r in rows["test"]}
        with TensorCache(scores) as sc:
            the_run.check_tensors(sc.config, sc.root)
            score_rows = [r for r in sc.pieces() if r.kind == "score"]
            if not score_rows:
                raise ValueError(
                    f"{scores}: holds no score MIDIs (kind 'score'); make it with "
                    "harmonixr preprocess ASAP --scores"
                )
            rows["scores"] = [r for r in score_rows if r.group in held_groups]
            tensors["scores"] = [sc.load(r) for r in rows["scores"]]
    return _Pieces(rows, tensors)


def evaluate_run(
    run: str | Path,
    data: str | Path | None = None,
    split: str = "test",
    scores: str | Path | None = None,
    resamples: int = 1000,
    baselines: bool = True,
    weights: str | Path | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Evaluate a run on its ``split`` side (``test``; ``val`` to look at validation;
    ``unseen-composer`` for a run trained with that split). ``scores``: a cache holding score
    MIDIs (ASAP ``--scores``); those of the held-out groups give the score-MIDI control."""
    from harmonixr.model.io import load_encoder, weights_info
    from harmonixr.train.rundir import Run

    say = progress or (lambda _msg: None)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    the_run = Run.open(run)
    run = the_run.root
    mode = the_run.split_info().get("mode", "group")
    if split == "unseen-composer" and mode != "unseen-composer":
        raise ValueError(
            f"{run}: was trained with a {mode!r} split; train with --split unseen-composer to "
            "measure composers never seen in training"
        )
    held = "val" if split == "val" else "test"
    settings = Settings(seed=the_run.seed, resamples=resamples)
    cache_dir = resolve_data(run, the_run.train.data, data)
    t0 = time.perf_counter()
    pieces = _load(the_run, cache_dir, held, scores)
    say(f"{sum(len(v) for v in pieces.rows.values())} pieces loaded")

    weights_path = Path(weights) if weights else the_run.weights_path
    encoder = load_encoder(weights_path)
    info = weights_info(weights_path)
    say("embedding with the trained model")
    methods: dict[str, Fold] = {MODEL: pieces.fold(lambda ts: the_run.embed(ts, encoder))}
    choices: dict[str, list[dict[str, Any]]] = {}
    if baselines:
        untrained = the_run.encoder(initial=True)
        say("embedding with the untrained model")
        methods[UNTRAINED] = pieces.fold(lambda ts: the_run.embed(ts, untrained))
        say("histogram baselines")
        hists = {k: histogram_table(v) for k, v in pieces.tensors.items()}
        found, chosen = baseline_folds(pieces.labels(), hists, the_run.seed)
        methods.update(found)
        choices = {k: [v] for k, v in chosen.items()}

    sizes = {k: len(v) for k, v in pieces.rows.items()}
    report: dict[str, Any] = {
        "run": str(run),
        "split": split,
        "held_side": held,
        "split_mode": mode,
        "cache": str(cache_dir),
        "crop_frames": the_run.crop_frames,
        "fold_sizes": [sizes],
        "fold_units": [{k: len({r.group for r in v}) for k, v in pieces.rows.items()}],
        "resamples": resamples,
        "intervals": INTERVALS,
        "weightings": WEIGHTINGS,
        "weights": {"path": str(weights_path), "step": info.get("step"), "ema": the_run.train.ema},
        "model_sha256": {"0": sha256_file(weights_path)},
        "measured_on": held,
        "choices_made_on": "val",
        "choices": choices,
        "methods": {},
    }
    curves: dict[str, Curves] = {}
    for name, fold in methods.items():
        say(f"protocols: {name}")
        report["methods"][name], curves[name] = evaluate_folds([fold], settings, RUN_PROTOCOLS)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    report = json_ready(report)
    out_dir = run / "eval" / split
    write_report(report, curves, out_dir)
    report["out"] = str(out_dir)
    return report


def write_report(report: dict[str, Any], curves: dict[str, Curves], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_json(out_dir / "report.json", report, indent=1)
    atomic_write(out_dir / "report.md", report_markdown(report))
    plots(curves, out_dir)


def plots(curves: dict[str, Curves], out_dir: Path, main: Sequence[str] = (MODEL,)) -> None:
    """``roc.png``, ``det.png`` and ``distances.png`` of the methods' test pairs."""
    from scipy.stats import norm

    from harmonixr._plotstyle import save_png, subplots
    from harmonixr.evaluate.metrics import det_curve, roc_auc, roc_curve

    usable = {k: c for k, c in curves.items() if 0 < c.y.sum() < c.y.size}
    if not usable:
        return
    fig, ax = subplots(figsize=(6, 6))
    for name, c in usable.items():
        fpr, tpr, _ = roc_curve(c.d, c.y)
        lw, alpha = (2.5, 1.0) if name in main else (1.0, 0.8)
        ax.plot(fpr, tpr, lw=lw, alpha=alpha, label=f"{name} ({roc_auc(c.d, c.y):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="Same composer? ROC")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    save_png(fig, out_dir / "roc.png")

    fig, ax = subplots(figsize=(6, 6))
    clip = 1e-4
    for name, c in usable.items():
        fpr, fnr = det_curve(c.d, c.y)
        ax.plot(
            norm.ppf(np.clip(fpr, clip, 1 - clip)),
            norm.ppf(np.clip(fnr, clip, 1 - clip)),
            lw=2.5 if name in main else 1.0,
            label=name,
        )
    ticks = np.array([0.001, 0.01, 0.05, 0.2, 0.5, 0.8, 0.95])
    ax.set_xticks(norm.ppf(ticks), [f"{t:g}" for t in ticks])
    ax.set_yticks(norm.ppf(ticks), [f"{t:g}" for t in ticks])
    ax.set(xlabel="false positive rate", ylabel="false negative rate", title="DET")
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    save_png(fig, out_dir / "det.png")

    c = next((usable[m] for m in main if m in usable), next(iter(usable.values())))
    fig, ax = subplots(figsize=(7, 4))
    bins = np.linspace(float(c.d.min()), float(c.d.max()), 50)
    ax.hist(c.d[c.y], bins=bins, density=True, alpha=0.6, label="same composer")
    ax.hist(c.d[~c.y], bins=bins, density=True, alpha=0.6, label="different composers")
    if math.isfinite(c.threshold):
        ax.axvline(c.threshold, color="k", ls="--", label=f"threshold {c.threshold:.3f} (val)")
    ax.set(xlabel="distance (1 − cosine)", ylabel="density", title="Held-out pairs, whole pieces")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, out_dir / "distances.png")
