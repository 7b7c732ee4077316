"""``evaluate_run(run) -> report``: the model and its baselines on the run's held-out split, every
protocol of ``protocols.py``, written as ``report.json``, ``report.md`` and pictures.

Baselines get the model's treatment: the same pieces, the same whole-piece protocols, and their
settings (histogram transform, logistic-regression C) chosen on the validation side.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from harmonixr._files import atomic_json, atomic_write
from harmonixr.data.cache import CachedPiece, TensorCache
from harmonixr.evaluate.baselines import LR_CS, TRANSFORMS, fit_lr, histogram_table, normalise_rows
from harmonixr.evaluate.metrics import cosine_distance, roc_auc
from harmonixr.evaluate.protocols import (
    Curves,
    Settings,
    Side,
    class_probabilities,
    cross_pairs,
    current_keys,
    evaluate_method,
)

SPLITS = ("test", "val", "unseen-composer")
MODEL = "SiaViT"
UNTRAINED = "SiaViT (untrained)"
LR = "logistic regression, 5 histograms"
Progress = Callable[[str], None]


def resolve_data(run: Path, stored: str, data: str | Path | None) -> Path:
    """The cache: ``data`` if given, else the run's, as stored or relative to the run."""
    if data is not None:
        return Path(data)
    for cand in (Path(stored), run / stored):
        if (cand / "cache.sqlite").is_file():
            return cand
    raise ValueError(f"{run}: its cache {stored!r} is not found from here; pass --data CACHE")


def _side(rows: Sequence[CachedPiece], emb: np.ndarray) -> Side:
    return Side(
        emb=np.asarray(emb, np.float64),
        composer=np.array([r.composer for r in rows], dtype=object),
        group=np.array([r.group for r in rows], dtype=object),
        work=np.array([r.work_id for r in rows], dtype=object),
        performer=np.array([r.performer for r in rows], dtype=object),
    )


def _val_auc(side: Side) -> float:
    i, j = cross_pairs(side)
    y = side.composer[i] == side.composer[j]
    if not 0 < y.sum() < y.size:
        return float("nan")
    return roc_auc(cosine_distance(side.emb[i], side.emb[j]), y)


class _Sides:
    """Rows of train / val / held-out (/ score MIDIs) and a way to embed each."""

    def __init__(self, rows: dict[str, list[CachedPiece]], tensors: dict[str, list[np.ndarray]]):
        self.rows, self.tensors = rows, tensors

    def sides(self, emb: Callable[[list[np.ndarray]], np.ndarray]) -> dict[str, Side]:
        return {k: _side(self.rows[k], emb(self.tensors[k])) for k in self.rows}


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
    held_name = "val" if split == "val" else "test"
    crop, seed = the_run.crop_frames, the_run.seed
    settings = Settings(seed=seed, resamples=resamples)
    cache_dir = resolve_data(run, the_run.train.data, data)
    t0 = time.perf_counter()
    with TensorCache(cache_dir) as cache:
        the_run.check_tensors(cache.config, cache.root)
        all_rows = cache.pieces()
        idx = the_run.split(all_rows)
        the_run.check_split(idx, all_rows)
        rows = {k: [all_rows[i] for i in idx[k]] for k in ("train", "val")}
        rows["held"] = [all_rows[i] for i in idx[held_name]]
        tensors = {k: [cache.load(r) for r in v] for k, v in rows.items()}
    if scores is not None:
        held_groups = {r.group for r in rows["held"]}
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
    data_sides = _Sides(rows, tensors)
    say(f"{sum(len(v) for v in rows.values())} pieces loaded")

    methods: dict[str, dict[str, Side]] = {}
    choices: dict[str, Any] = {}
    weights_path = Path(weights) if weights else the_run.weights_path
    encoder = load_encoder(weights_path)
    info = weights_info(weights_path)
    say("embedding with the trained model")
    methods[MODEL] = data_sides.sides(lambda ts: the_run.embed(ts, encoder))
    if baselines:
        untrained = the_run.encoder(initial=True)
        say("embedding with the untrained model")
        methods[UNTRAINED] = data_sides.sides(lambda ts: the_run.embed(ts, untrained))
        say("histogram baselines")
        hists = {k: histogram_table(v) for k, v in tensors.items()}
        for kind in next(iter(hists.values())):
            best = max(
                TRANSFORMS,
                key=lambda tr, kind=kind: np.nan_to_num(
                    _val_auc(_side(rows["val"], normalise_rows(hists["val"][kind], tr))), nan=-1
                ),
            )
            choices[f"{kind} histogram"] = {"transform": best}
            methods[f"{kind} histogram"] = {
                k: _side(rows[k], normalise_rows(hists[k][kind], best)) for k in rows
            }
        methods[LR], choices[LR] = _lr_baseline(rows, hists, seed)

    report: dict[str, Any] = {
        "run": str(run),
        "split": split,
        "held_side": held_name,
        "split_mode": mode,
        "cache": str(cache_dir),
        "crop_frames": crop,
        "pieces": {k: len(v) for k, v in rows.items()},
        "groups": {k: len({r.group for r in v}) for k, v in rows.items()},
        "resamples": resamples,
        "weights": {
            "path": str(weights_path),
            "step": info.get("step"),
            "ema": the_run.train.ema,
        },
        "choices_made_on": "val",
        "choices": choices,
        "methods": {},
    }
    curves: dict[str, Curves] = {}
    for name, sides in methods.items():
        say(f"protocols: {name}")
        metrics, curves[name] = evaluate_method(
            sides["train"], sides["val"], sides["held"], settings, sides.get("scores")
        )
        metrics["val_verify_auc"] = _val_auc(sides["val"])
        report["methods"][name] = {k: _finite(v) for k, v in sorted(metrics.items())}
    report["seconds"] = round(time.perf_counter() - t0, 1)
    out_dir = run / "eval" / split
    write_report(report, curves, out_dir)
    report["out"] = str(out_dir)
    return report


def _lr_baseline(
    rows: dict[str, list[CachedPiece]], hists: dict[str, dict[str, np.ndarray]], seed: int
) -> tuple[dict[str, Side], dict[str, Any]]:
    """Logistic regression on the concatenated histograms; C chosen by validation all-pairs AUC
    where pieces are compared by p·q (the probability that both are by the same composer if the
    two guesses were independent)."""

    def feats(k: str) -> np.ndarray:
        return np.concatenate([hists[k][kind] for kind in hists[k]], axis=1)

    names = sorted({r.composer for r in rows["train"]})
    label = {n: i for i, n in enumerate(names)}
    y = np.array([label[r.composer] for r in rows["train"]])
    x_train = feats("train")

    def probs(model, k: str) -> np.ndarray:
        return class_probabilities(model, feats(k), len(names))

    scored = []
    for c in LR_CS:
        model = fit_lr(x_train, y, c, seed)
        auc = _val_auc(_side(rows["val"], probs(model, "val")))
        scored.append((np.nan_to_num(auc, nan=-1.0), c, model))
    auc, c, model = max(scored, key=lambda t: t[0])
    sides = {k: _side(rows[k], probs(model, k)) for k in rows}
    return sides, {"C": c, "val_auc": float(auc) if auc >= 0 else None, "scored_by": "p·q"}


def _finite(v: float) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


# ------------------------------------------------------------------ writing

HEADLINE = [
    ("verify_auc", "AUC all pairs"),
    ("verify_eer", "EER"),
    ("verify_tpr_at_1fpr", "TPR@1%FPR"),
    ("pairs_acc_mixed", "acc mixed"),
    ("pairs_acc_same", "acc same"),
    ("pairs_acc_different", "acc diff"),
    ("attr_top1", "top-1"),
    ("attr_top3", "top-3"),
    ("probe_top1", "probe top-1"),
    ("attr_macro_f1", "macro-F1"),
    ("retr_map", "mAP"),
    ("retr_work_r1", "same-work R@1"),
    ("conf_performer_auc", "performer AUC (0.5 = deaf to it)"),
    ("conf_score_auc", "AUC score MIDIs"),
    ("val_verify_auc", "val AUC"),
]
INTERVALS = (
    "verify_auc",
    "attr_top1",
    "probe_top1",
    "retr_map",
    "conf_performer_auc",
    "conf_score_auc",
)


def _fmt(m: dict[str, float | None], key: str) -> str:
    v = m.get(key)
    if v is None:
        return "–"
    text = f"{v:.3f}"
    lo, hi = m.get(f"{key}_lo"), m.get(f"{key}_hi")
    if key in INTERVALS and lo is not None and hi is not None:
        text += f" [{lo:.2f}, {hi:.2f}]"
    return text


def read_report(path: str | Path) -> dict[str, Any]:
    """A ``report.json`` written by :func:`evaluate_run`, this version's or an earlier one's
    (its methods' keys read as today's, :func:`~harmonixr.evaluate.protocols.current_keys`)."""
    report = json.loads(Path(path).read_text())
    report["methods"] = {k: current_keys(m) for k, m in report.get("methods", {}).items()}
    return report


def report_markdown(report: dict[str, Any]) -> str:
    methods = {k: current_keys(m) for k, m in report["methods"].items()}
    model = methods.get(MODEL, {})
    lines = [
        f"# Evaluation of `{report['run']}` on its {report['held_side']} side ({report['split']})",
        "",
        f"Pieces: train {report['pieces']['train']}, val {report['pieces']['val']}, held-out "
        f"{report['pieces']['held']} in {report['groups']['held']} groups"
        + (f"; score MIDIs {report['pieces']['scores']}" if "scores" in report["pieces"] else "")
        + f". Whole pieces (crops of {report['crop_frames']} frames, half overlapping, "
        f"averaged). Held-out pairs from different groups: {int(model.get('verify_pairs') or 0)} "
        f"({int(model.get('verify_same') or 0)} same composer). 95% intervals: bootstrap over "
        f"groups, {report['resamples']} resamples. "
        + (
            "Thresholds, probe C and baseline settings come from the validation side."
            if report["held_side"] != "val"
            else "**Thresholds, probe C and baseline settings were chosen on this same "
            "validation side: these figures are optimistic; use the test side for claims.**"
        ),
        "",
        "| method | " + " | ".join(h for _, h in HEADLINE) + " |",
        "|---|" + "---:|" * len(HEADLINE),
    ]
    for name, m in methods.items():
        label = f"**{name}**" if name == MODEL else name
        lines.append(f"| {label} | " + " | ".join(_fmt(m, k) for k, _ in HEADLINE) + " |")
    lines += ["", "Baseline settings chosen on validation: " + json.dumps(report["choices"]), ""]
    share = model.get("conf_same_performer_share")
    if share is not None:
        lines.append(
            f"Same-composer held-out pairs played by the same performer: {share:.1%}. The "
            "performer AUC asks whether, among pairs of different composers, the similarity "
            "tells one performer from two (0.5: the embedding does not hear the performer)."
        )
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], curves: dict[str, Curves], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_json(out_dir / "report.json", report, indent=1)
    atomic_write(out_dir / "report.md", report_markdown(report))
    _plots(curves, out_dir)


def _plots(curves: dict[str, Curves], out_dir: Path) -> None:
    from scipy.stats import norm

    from harmonixr._plotstyle import save_png, subplots
    from harmonixr.evaluate.metrics import det_curve, roc_curve

    usable = {k: c for k, c in curves.items() if 0 < c.y.sum() < c.y.size}
    if not usable:
        return
    fig, ax = subplots(figsize=(6, 6))
    for name, c in usable.items():
        fpr, tpr, _ = roc_curve(c.d, c.y)
        lw, alpha = (2.5, 1.0) if name == MODEL else (1.0, 0.8)
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
            lw=2.5 if name == MODEL else 1.0,
            label=name,
        )
    ticks = np.array([0.001, 0.01, 0.05, 0.2, 0.5, 0.8, 0.95])
    ax.set_xticks(norm.ppf(ticks), [f"{t:g}" for t in ticks])
    ax.set_yticks(norm.ppf(ticks), [f"{t:g}" for t in ticks])
    ax.set(xlabel="false positive rate", ylabel="false negative rate", title="DET")
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    save_png(fig, out_dir / "det.png")

    c = usable.get(MODEL) or next(iter(usable.values()))
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
