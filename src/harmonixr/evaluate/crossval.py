"""Cross-validation: K fold runs over one cache, pooled out-of-fold figures with intervals.

``run_folds`` deals the cache's leak-free units (or, with ``unseen-composer``, its composers) to
K folds by a hash of the unit and the seed (``data.splits.fold_split``). For each fold it trains
a run on the other folds (validation taken from them), embeds every piece with that fold's
model and stores the embeddings; a killed job resumes fold by fold (a fold's training resumes
from its last checkpoint). ``pooled_report`` then measures every method on each fold's test
side with the choices made on that fold's validation side, and pools the folds:

- pairs are formed inside a test fold only (two folds' models embed into different spaces);
- every interval resamples units, so pairs sharing a unit are never counted as independent.

One module, over 400 lines: running folds, embedding them and pooling their figures share the
fold plan, the split manifests and the resume rules of one job (``cv.json``)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harmonixr._files import atomic_json, atomic_write
from harmonixr.data.cache import CachedPiece, TensorCache, _sha_of
from harmonixr.data.pairs import centre_crop
from harmonixr.data.splits import check_manifest, fold_split, read_split, split_manifest
from harmonixr.evaluate.baselines import LR_CS, TRANSFORMS, fit_lr, histogram_table, normalise_rows
from harmonixr.evaluate.bootstrap import bootstrap_interval
from harmonixr.evaluate.metrics import (
    RankedPairs,
    centroids,
    cosine_distance,
    equal_error_rate,
    group_pair_weights,
    roc_auc,
)
from harmonixr.evaluate.protocols import PROBE_CS, class_probabilities
from harmonixr.train.config import RESUMABLE, TrainConfig, load_toml, merged_settings

MODEL = "SiaViT"
LR = "logistic regression, 5 histograms"
MIN_WORKS = 5  # attribution: composers with at least this many training units
CV_FILE = "cv.json"
EMB_FILE = "embeddings.npz"
Progress = Callable[[str], None]


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


def prepare(out: Path, data: Path, plan: FoldPlan, train: dict[str, Any]) -> None:
    """Write (or check) ``cv.json``: a resumed job must be the same job."""
    out.mkdir(parents=True, exist_ok=True)
    record = {"data": str(Path(data).resolve()), **plan.to_dict(), "train": train}
    path = out / CV_FILE
    if path.is_file():
        was = json.loads(path.read_text())

        def what(r: dict[str, Any]) -> dict[str, Any]:  # how long / on what it runs may change
            keep = {k: v for k, v in r.get("train", {}).items() if k not in RESUMABLE}
            return {**{k: r.get(k) for k in record if k != "train"}, "train": keep}

        if what(was) != what(record):
            differ = [k for k in record if was.get(k) != record[k]]
            raise ValueError(
                f"{path}: records another cross-validation ({', '.join(differ)} differ); "
                "use another --out to change it"
            )
    else:
        atomic_json(path, record, indent=1)


def run_folds(
    data: str | Path,
    out: str | Path,
    config: Any,
    plan: FoldPlan = FoldPlan(),
    model_overrides: dict[str, Any] | None = None,
    only: list[int] | None = None,
    progress: Progress | None = None,
) -> Path:
    """Train and embed each fold (skipping those already done); returns ``out``."""
    from harmonixr.data.splits import SIDES
    from harmonixr.model.io import WEIGHTS
    from harmonixr.train.run import last_checkpoint, train

    say = progress or (lambda _m: None)
    out, data = Path(out), Path(data)
    recipe = {k: v for k, v in config.to_dict().items() if k not in ("data", "out", "split")}
    prepare(out, data, plan, {**recipe, "model": model_overrides or {}})
    with TensorCache(data) as cache:
        rows = cache.pieces()
    for k in only if only is not None else range(plan.folds):
        d = out / f"fold-{k}"
        if (d / EMB_FILE).is_file():
            say(f"fold {k}: done before")
            continue
        split = fold_sides(rows, plan, k)
        info = {"mode": plan.mode, "seed": plan.seed, "folds": plan.folds, "fold": k}
        manifest = split_manifest(rows, split, **info)
        d.mkdir(parents=True, exist_ok=True)
        if (d / "split.json").is_file():
            check_manifest(read_split(d / "split.json"), split, rows, str(d))
        else:
            atomic_json(d / "split.json", manifest, indent=1)
        # finished = timed after train() returned (export="best" writes weights mid-training)
        if not (d / WEIGHTS).is_file() or "train_seconds" not in _timing(d):
            resume = last_checkpoint(d / "checkpoints") is not None
            say(
                f"fold {k}: training ({'resumed' if resume else 'new'}), "
                + ", ".join(f"{s} {len(split[s])}" for s in SIDES)
            )
            t0 = time.perf_counter()
            train(
                config.replace(out=str(d), data=str(data), split=plan.mode),
                model_overrides,
                resume=resume,
            )
            _stamp(d, "train_seconds", time.perf_counter() - t0)
        say(f"fold {k}: embedding {len(rows)} pieces")
        t0 = time.perf_counter()
        embed_fold(d, data, rows, split, plan.mode)
        _stamp(d, "embed_seconds", time.perf_counter() - t0)
    return out


def _timing(d: Path) -> dict[str, float]:
    path = d / "timing.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _stamp(d: Path, key: str, value: float) -> None:
    path = d / "timing.json"
    t = _timing(d)
    t[key] = round(value, 1)
    atomic_json(path, t, indent=1)


def read_job(out: str | Path) -> tuple[dict[str, Any], FoldPlan]:
    """A cross-validation job's record (``cv.json``: cache, training settings, plan) and its
    fold plan."""
    path = Path(out) / CV_FILE
    if not path.is_file():
        raise ValueError(f"{out}: not a cross-validation job (no {CV_FILE})")
    rec = json.loads(path.read_text())
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


def embed_fold(
    d: Path, data: Path, rows: list[CachedPiece], split: dict[str, list[int]], mode: str = "group"
) -> None:
    """The fold's pieces embedded by its model: validation and test whole (overlapping crops,
    the default half-crop hop, as ``Harmonixr.embed`` does). Training pieces only serve the
    composer centroids of attribution, so each gives its centre crop; with an
    ``unseen-composer`` split there is no attribution and they are not embedded."""
    from harmonixr.train.rundir import Run

    run = Run.open(d)
    crop = run.crop_frames
    encoder = run.encoder()
    parts: dict[str, np.ndarray] = {}
    with TensorCache(data) as cache:
        for side in ("test", "val", "train"):
            idx = split[side] if side != "train" or mode == "group" else []
            tensors = [cache.load(rows[i]) for i in idx]
            if side == "train":
                tensors = [_centre(t, crop) for t in tensors]
            parts[side] = run.embed(tensors, encoder)
    arrays = {
        **{f"emb_{s}": parts[s] for s in parts},
        **{
            f"path_{s}": np.array([rows[i].path for i in split[s]][: len(parts[s])], dtype=str)
            for s in parts
        },
        "train_embedding": np.array("centre crop" if mode == "group" else "none"),
    }
    atomic_write(d / EMB_FILE, lambda tmp: np.savez(tmp, **arrays))


def _centre(t: np.ndarray, crop: int) -> np.ndarray:
    """The piece's centre crop without padding (``data.pairs.centre_crop``, cut to its music)."""
    window, n = centre_crop(t, crop)
    return window[:n]


# ---------------------------------------------------------------- pooled evaluation


@dataclass
class Fold:
    """One fold's pieces (row indices per side) and one method's embeddings of them."""

    idx: dict[str, np.ndarray]
    emb: dict[str, np.ndarray]


class Corpus:
    """Per-piece labels of the whole cache as arrays, indexed like ``rows``."""

    def __init__(self, rows: list[CachedPiece]) -> None:
        self.rows = rows
        self.composer = np.array([r.composer for r in rows], dtype=object)
        self.group = np.array([r.group for r in rows], dtype=object)
        self.work = np.array([r.work_id for r in rows], dtype=object)
        self.kind = np.array([r.kind or "?" for r in rows], dtype=object)
        self.source = np.array([r.source or "?" for r in rows], dtype=object)
        units = sorted(set(self.group.tolist()))
        code = {u: i for i, u in enumerate(units)}
        self.unit = np.array([code[g] for g in self.group], np.int64)
        self.n_units = len(units)


def _pairs(c: Corpus, test: np.ndarray, emb: np.ndarray) -> dict[str, np.ndarray]:
    """All pairs of a fold's test pieces from different units."""
    ii, jj = np.triu_indices(test.size, k=1)
    a, b = test[ii], test[jj]
    keep = c.unit[a] != c.unit[b]
    ii, jj, a, b = ii[keep], jj[keep], a[keep], b[keep]
    d = cosine_distance(emb[ii], emb[jj])
    ka, kb = c.kind[a], c.kind[b]
    cat = np.where(
        (ka == "performance") & (kb == "performance"),
        "performance",
        np.where(
            (ka == "score") & (kb == "score"), "score", np.where(ka != kb, "cross-kind", "other")
        ),
    )
    return {
        "d": d,
        "y": c.composer[a] == c.composer[b],
        "ua": c.unit[a],
        "ub": c.unit[b],
        "cat": cat,
    }


def _cat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def verification_figures(
    p: dict[str, np.ndarray], n_units: int, resamples: int, seed: int
) -> dict[str, float]:
    """AUC pair-weighted and group-pair-equal, each with a unit-bootstrap interval, and EER."""
    d, y = p["d"], p["y"]
    out: dict[str, float] = {"pairs": float(y.size), "same": float(y.sum())}
    if not 0 < y.sum() < y.size:
        return out
    gpe = group_pair_weights(p["ua"], p["ub"])
    units = np.arange(n_units)
    ranked = RankedPairs(d, y)
    for name, base in (("auc", None), ("auc_gpe", gpe)):
        out[name] = ranked.auc(base)

        def stat(w: np.ndarray, base=base) -> float:
            pw = w[p["ua"]] * w[p["ub"]]
            return ranked.auc(pw if base is None else pw * base)

        out[f"{name}_lo"], out[f"{name}_hi"] = bootstrap_interval(stat, units, resamples, seed)
    out["eer"] = equal_error_rate(d, y)
    return out


def _attribution(c: Corpus, f: Fold, probe: bool = False) -> dict[str, np.ndarray] | None:
    """Test pieces by composers with ≥ MIN_WORKS training units, scored against exactly those
    composers: by the centroids of this fold's training pieces, or (``probe``) by a logistic
    regression on them whose C is chosen by validation top-1."""
    tr = f.idx["train"]
    if f.emb["train"].shape[0] != tr.size:
        return None  # training pieces not embedded (unseen-composer folds)
    works: dict[str, set[int]] = {}
    for i in tr:
        works.setdefault(c.composer[i], set()).add(int(c.unit[i]))
    names = sorted(n for n, u in works.items() if len(u) >= MIN_WORKS)
    if len(names) < 2:
        return None
    index = {n: k for k, n in enumerate(names)}
    test = f.idx["test"]
    seen = np.array([x in index for x in c.composer[test]], bool)
    if not seen.any():
        return None
    labels = np.array([index[x] for x in c.composer[test][seen]])
    if probe:
        scores = _probe_scores(c, f, names, f.emb["test"][seen])
        if scores is None:
            return None
    else:
        scores = f.emb["test"][seen] @ centroids(f.emb["train"], c.composer[tr], names).T
    return {
        "top1": (scores.argmax(1) == labels).astype(float),
        "top3": np.array(
            [labels[i] in np.argsort(-scores[i])[:3] for i in range(labels.size)], float
        ),
        "unit": c.unit[test][seen],
        "kind": c.kind[test][seen],
        "composers": np.full(labels.size, len(names)),
    }


def _probe_scores(c: Corpus, f: Fold, names: list[str], x: np.ndarray) -> np.ndarray | None:
    from sklearn.linear_model import LogisticRegression

    index = {n: k for k, n in enumerate(names)}
    tr = np.array([x in index for x in c.composer[f.idx["train"]]])
    va = np.array([x in index for x in c.composer[f.idx["val"]]])
    if not va.any():
        return None
    y_tr = np.array([index[x] for x in c.composer[f.idx["train"]][tr]])
    y_va = np.array([index[x] for x in c.composer[f.idx["val"]][va]])
    best, best_acc = None, -1.0
    for cval in PROBE_CS:
        model = LogisticRegression(C=cval, max_iter=3000).fit(f.emb["train"][tr], y_tr)
        acc = float(np.mean(model.predict(f.emb["val"][va]) == y_va))
        if acc > best_acc:
            best, best_acc = model, acc
    return class_probabilities(best, x, len(names))


def _retrieval(c: Corpus, f: Fold) -> dict[str, np.ndarray]:
    """Each test piece queries the fold's other test pieces: AP over same-composer pieces of
    other units; same-work recall@1 where the work has another rendition in the fold."""
    test, emb = f.idx["test"], f.emb["test"]
    sim = emb @ emb.T
    n = test.size
    comp, unit, work = c.composer[test], c.unit[test], c.work[test]
    aps = np.full(n, np.nan)
    r1 = np.full(n, np.nan)
    for q in range(n):
        other = unit != unit[q]
        rel = (comp == comp[q]) & other
        if rel.any():
            order = np.argsort(-sim[q][other], kind="stable")
            hits = rel[other][order]
            ranks = np.flatnonzero(hits) + 1
            aps[q] = float(np.mean(np.arange(1, ranks.size + 1) / ranks))
        same = (work == work[q]) & (np.arange(n) != q)
        if same.any():
            s = sim[q].copy()
            s[q] = -np.inf
            r1[q] = float(same[int(np.argmax(s))])
    return {"ap": aps, "r1": r1, "unit": unit}


def _mean_interval(values: np.ndarray, units: np.ndarray, n_units: int, resamples: int, seed: int):
    ok = np.isfinite(values)
    v, u = values[ok], units[ok]
    if not v.size:
        return float("nan"), float("nan"), float("nan")

    def stat(w: np.ndarray) -> float:
        ww = w[u]
        return float(np.sum(ww * v) / ww.sum()) if ww.sum() > 0 else float("nan")

    lo, hi = bootstrap_interval(stat, np.arange(n_units), resamples, seed)
    return float(v.mean()), lo, hi


def _histogram_methods(
    c: Corpus, hists: dict[str, np.ndarray], folds: list[dict[str, np.ndarray]], seed: int
) -> tuple[dict[str, list[Fold]], dict[str, list[dict[str, Any]]]]:
    """Each histogram kind (transform chosen per fold on its validation AUC) and the logistic
    regression on all of them (C chosen per fold on validation p·q AUC)."""
    methods: dict[str, list[Fold]] = {}
    choices: dict[str, list[dict[str, Any]]] = {}
    for kind, h in hists.items():
        name = f"{kind} histogram"
        methods[name], choices[name] = [], []
        for idx in folds:
            best = max(
                TRANSFORMS,
                key=lambda tr: np.nan_to_num(
                    _side_auc(c, idx["val"], normalise_rows(h[idx["val"]], tr)), nan=-1
                ),
            )
            choices[name].append({"transform": best})
            methods[name].append(Fold(idx, {s: normalise_rows(h[idx[s]], best) for s in idx}))
    feats = np.concatenate([hists[k] for k in hists], axis=1)
    methods[LR], choices[LR] = [], []
    for idx in folds:
        names = sorted(set(c.composer[idx["train"]].tolist()))
        label = {n: i for i, n in enumerate(names)}
        y = np.array([label[x] for x in c.composer[idx["train"]]])
        scored = []
        for cval in LR_CS:
            model = fit_lr(feats[idx["train"]], y, cval, seed)
            pv = class_probabilities(model, feats[idx["val"]], len(names))
            scored.append((np.nan_to_num(_side_auc(c, idx["val"], pv), nan=-1.0), cval, model))
        auc, cval, model = max(scored, key=lambda t: t[0])
        choices[LR].append({"C": cval, "val_auc": float(auc)})
        methods[LR].append(
            Fold(idx, {s: class_probabilities(model, feats[idx[s]], len(names)) for s in idx})
        )
    return methods, choices


def _side_auc(c: Corpus, idx: np.ndarray, emb: np.ndarray) -> float:
    p = _pairs(c, idx, emb)
    if not 0 < p["y"].sum() < p["y"].size:
        return float("nan")
    return roc_auc(p["d"], p["y"])


def method_figures(
    c: Corpus,
    folds: list[Fold],
    resamples: int,
    seed: int,
    attribution: bool = True,
    embeddings: bool = False,
) -> dict[str, Any]:
    """Pooled out-of-fold figures of one method (``embeddings``: a model's, so that a
    logistic-regression probe on them is worth fitting as well as the centroids)."""
    pairs = _cat([_pairs(c, f.idx["test"], f.emb["test"]) for f in folds])
    out: dict[str, Any] = {"verify": verification_figures(pairs, c.n_units, resamples, seed)}
    for cat in ("performance", "score", "cross-kind"):
        sel = pairs["cat"] == cat
        sub = {k: v[sel] for k, v in pairs.items()}
        out[f"verify_{cat}"] = verification_figures(sub, c.n_units, resamples, seed)
    val = [_side_auc(c, f.idx["val"], f.emb["val"]) for f in folds]
    out["val_auc_per_fold"] = [float(v) for v in val]
    if attribution:
        for key, probe in (("attribution", False), ("attribution_probe", True)):
            if probe and not embeddings:
                continue
            attr = [a for f in folds if (a := _attribution(c, f, probe)) is not None]
            if not attr:
                continue
            a = _cat(attr)
            fig: dict[str, Any] = {"pieces": float(a["top1"].size)}
            for k in ("top1", "top3"):
                fig[k], fig[f"{k}_lo"], fig[f"{k}_hi"] = _mean_interval(
                    a[k], a["unit"], c.n_units, resamples, seed
                )
            perf = a["kind"] == "performance"
            if perf.any():
                fig["top1_performance"], fig["top1_performance_lo"], fig["top1_performance_hi"] = (
                    _mean_interval(a["top1"][perf], a["unit"][perf], c.n_units, resamples, seed)
                )
            fig["candidates_per_fold"] = [int(x["composers"][0]) for x in attr]
            out[key] = fig
    r = _cat([_retrieval(c, f) for f in folds])
    m, lo, hi = _mean_interval(r["ap"], r["unit"], c.n_units, resamples, seed)
    w, wlo, whi = _mean_interval(r["r1"], r["unit"], c.n_units, resamples, seed)
    out["retrieval"] = {
        "map": m,
        "map_lo": lo,
        "map_hi": hi,
        "work_r1": w,
        "work_r1_lo": wlo,
        "work_r1_hi": whi,
        "work_queries": float(np.isfinite(r["r1"]).sum()),
    }
    return out


def source_probe(c: Corpus, folds: list[Fold], seed: int) -> dict[str, Any]:
    """How well a logistic regression on a method's embeddings tells what it should not hear:
    score vs performance, and which converter/source made a score. Cross-validated inside each
    test fold by unit (GroupKFold), balanced accuracy against chance (1 / classes)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold, cross_val_predict

    from harmonixr.evaluate.metrics import balanced_accuracy

    out: dict[str, Any] = {}
    for target in ("kind", "source"):
        preds, truth = [], []
        for f in folds:
            test = f.idx["test"]
            lab = (c.kind if target == "kind" else c.source)[test]
            sel = np.ones(test.size, bool) if target == "kind" else c.kind[test] == "score"
            classes, y = np.unique(lab[sel], return_inverse=True)
            units = c.unit[test][sel]
            if classes.size < 2 or np.unique(units).size < 5:
                continue
            model = LogisticRegression(C=1.0, max_iter=2000, random_state=seed)
            p = cross_val_predict(model, f.emb["test"][sel], y, groups=units, cv=GroupKFold(5))
            preds.append(classes[p])
            truth.append(classes[y])
        if preds:
            pr, tr = np.concatenate(preds), np.concatenate(truth)
            classes, code = np.unique(tr, return_inverse=True)
            lookup = {k: i for i, k in enumerate(classes)}
            pc = np.array([lookup.get(x, -1) for x in pr])
            out[target] = {
                "balanced_accuracy": balanced_accuracy(pc, code),
                "chance": 1.0 / classes.size,
                "classes": classes.tolist(),
                "pieces": int(tr.size),
            }
    return out


def load_folds(
    out: Path, rows: list[CachedPiece], plan: FoldPlan, only: list[int] | None = None
) -> list[Fold]:
    """The model's folds from their stored embeddings, refused if the cache has changed."""
    index = {r.path: i for i, r in enumerate(rows)}
    folds = []
    for k in only if only is not None else range(plan.folds):
        d = out / f"fold-{k}"
        if not (d / EMB_FILE).is_file():
            raise ValueError(f"{d}: fold {k} is not finished; rerun the same command to resume")
        split = fold_sides(rows, plan, k)
        check_manifest(read_split(d / "split.json"), split, rows, str(d))
        z = np.load(d / EMB_FILE)
        idx = {s: np.asarray(split[s], np.int64) for s in split}
        emb = {}
        for s in split:
            stored = np.array([index[p] for p in z[f"path_{s}"]], np.int64)
            # training pieces are not embedded when unused (unseen-composer folds)
            if (s != "train" or stored.size) and not np.array_equal(stored, idx[s]):
                raise ValueError(f"{d / EMB_FILE}: its {s} pieces are not the split's")
            emb[s] = z[f"emb_{s}"].astype(np.float64)
        folds.append(Fold(idx, emb))
    return folds


def pooled_report(
    out: str | Path,
    resamples: int = 1000,
    baselines: bool = True,
    progress: Progress | None = None,
    only: list[int] | None = None,
    side: str = "test",
) -> dict[str, Any]:
    """Every method's pooled out-of-fold figures; written to ``out/report.json`` and ``.md``
    (with ``only``: those folds' test sides alone, to ``out/report-folds-….json|md``).
    ``side="val"`` measures the validation sides instead, for choosing a recipe: the test
    sides are then never looked at (``report-val…``)."""
    if side not in ("test", "val"):
        raise ValueError(f"side must be test or val, got {side!r}")
    say = progress or (lambda _m: None)
    out = Path(out)
    rec, plan = read_job(out)
    t0 = time.perf_counter()
    with TensorCache(rec["data"]) as cache:
        rows = cache.pieces()
        c = Corpus(rows)
        folds = load_folds(out, rows, plan, only)
        if side == "val":  # the validation side stands where the test side would
            folds = [
                Fold({**f.idx, "test": f.idx["val"]}, {**f.emb, "test": f.emb["val"]})
                for f in folds
            ]
        methods: dict[str, list[Fold]] = {MODEL: folds}
        choices: dict[str, Any] = {}
        if baselines:
            say("histograms of every piece")
            hists = _histograms(out, cache, rows)
            hm, choices = _histogram_methods(c, hists, [f.idx for f in folds], plan.seed)
            methods.update(hm)
    attribution = plan.mode == "group"
    report: dict[str, Any] = {
        "out": str(out),
        "cache": rec["data"],
        "plan": plan.to_dict(),
        "folds_reported": list(only) if only is not None else list(range(plan.folds)),
        "pieces": len(rows),
        "units": c.n_units,
        "composers": len(set(c.composer.tolist())),
        "fold_sizes": [{s: int(f.idx[s].size) for s in f.idx} for f in folds],
        "resamples": resamples,
        "auc_weighting": "auc: every pair of pieces from different units counts once; auc_gpe: "
        "every pair of units counts once (pairs weighted 1 / pairs of those two units)",
        "intervals": "95% percentile bootstrap over units (pairs weighted by both units' counts)",
        "measured_on": side,
        "choices_made_on": "each fold's validation side"
        + (" (baselines chosen and measured on it: optimistic for them)" if side == "val" else ""),
        "choices": choices,
        "methods": {},
    }
    for name, mf in methods.items():
        say(f"figures: {name}")
        report["methods"][name] = method_figures(
            c, mf, resamples, plan.seed, attribution, embeddings=name == MODEL
        )
    say("source probes")
    report["source_probe"] = {
        name: source_probe(c, methods[name], plan.seed) for name in methods if name in (MODEL, LR)
    }
    report["timing"] = {
        f"fold-{k}": json.loads((out / f"fold-{k}" / "timing.json").read_text())
        for k in report["folds_reported"]
        if (out / f"fold-{k}" / "timing.json").is_file()
    }
    report["model_sha256"] = {
        f"fold-{k}": _sha_of(str(out / f"fold-{k}" / "model.safetensors"))
        for k in report["folds_reported"]
    }
    report["seconds"] = round(time.perf_counter() - t0, 1)
    stem = "report" if only is None else "report-folds-" + "-".join(map(str, only))
    if side == "val":
        stem = stem.replace("report", "report-val")
    report["files"] = [f"{stem}.json", f"{stem}.md"]
    atomic_json(out / f"{stem}.json", _clean(report), indent=1)
    atomic_write(out / f"{stem}.md", report_markdown(report))
    return report


def _histograms(out: Path, cache: TensorCache, rows: list[CachedPiece]) -> dict[str, np.ndarray]:
    """Every histogram kind of every piece, computed once per job and stored by path."""
    path = out / "histograms.npz"
    paths = np.array([r.path for r in rows])
    if path.is_file():
        z = np.load(path)
        if np.array_equal(z["paths"], paths):
            return {k[2:]: z[k] for k in z.files if k.startswith("h_")}
    table = histogram_table([cache.load(r) for r in rows])
    arrays = {f"h_{k}": v for k, v in table.items()}
    atomic_write(path, lambda tmp: np.savez(tmp, paths=paths, **arrays))
    return table


def _clean(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x


def _f(m: dict[str, Any], key: str) -> str:
    v = m.get(key)
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "—"
    lo, hi = m.get(f"{key}_lo"), m.get(f"{key}_hi")
    if lo is not None and hi is not None and np.isfinite(lo) and np.isfinite(hi):
        return f"{v:.3f} [{lo:.3f}, {hi:.3f}]"
    return f"{v:.3f}"


def report_markdown(r: dict[str, Any]) -> str:
    p = r["plan"]
    lines = [
        f"# Cross-validation: {p['folds']} folds, {p['mode']} split, seed {p['seed']}",
        "",
        f"{'Validation' if r['measured_on'] == 'val' else 'Test'} sides of fold(s) "
        f"{r['folds_reported']}"
        + ("" if len(r["folds_reported"]) == p["folds"] else " only (not the whole corpus)")
        + ".",
        "",
        f"{r['pieces']} pieces, {r['units']} leak-free units, {r['composers']} composers. "
        "Pooled out-of-fold figures; every choice made on the fold's validation side.",
        f"AUC weighting — {r['auc_weighting']}. Intervals: {r['intervals']}.",
        "",
        "## Verification (same composer?), pairs inside each test fold",
        "",
        "| method | all: AUC | all: AUC (unit pairs equal) | EER | performances: AUC | "
        "performances: AUC (unit pairs equal) | scores: AUC | cross-kind: AUC |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, m in r["methods"].items():
        v, vp, vs, vx = (
            m["verify"],
            m["verify_performance"],
            m["verify_score"],
            m["verify_cross-kind"],
        )
        lines.append(
            f"| {name} | {_f(v, 'auc')} | {_f(v, 'auc_gpe')} | {_f(v, 'eer')} | {_f(vp, 'auc')} | "
            f"{_f(vp, 'auc_gpe')} | {_f(vs, 'auc')} | {_f(vx, 'auc')} |"
        )
    if any("attribution" in m for m in r["methods"].values()):
        lines += [
            "",
            f"## Attribution to composers with ≥ {MIN_WORKS} training works (centroids)",
            "",
            "| method | pieces | top-1 | top-3 | top-1 on performances |",
            "|---|---|---|---|---|",
        ]
        for name, m in r["methods"].items():
            for key, what in (("attribution", ""), ("attribution_probe", " (probe, C on val)")):
                a = m.get(key)
                if a:
                    lines.append(
                        f"| {name}{what} | {int(a['pieces'])} | {_f(a, 'top1')} | "
                        f"{_f(a, 'top3')} | {_f(a, 'top1_performance')} |"
                    )
    lines += [
        "",
        "## Retrieval",
        "",
        "| method | same-composer mAP | same-work recall@1 |",
        "|---|---|---|",
    ]
    for name, m in r["methods"].items():
        lines.append(f"| {name} | {_f(m['retrieval'], 'map')} | {_f(m['retrieval'], 'work_r1')} |")
    if r.get("source_probe"):
        lines += [
            "",
            "## Source probes (what the embedding should not tell)",
            "",
            "| method | target | balanced accuracy | chance | pieces |",
            "|---|---|---|---|---|",
        ]
        for name, probes in r["source_probe"].items():
            for target, s in probes.items():
                lines.append(
                    f"| {name} | {target} | {s['balanced_accuracy']:.3f} | {s['chance']:.3f} | "
                    f"{s['pieces']} |"
                )
    lines += ["", f"Fold sizes: {r['fold_sizes']}", f"Timing (s): {r.get('timing')}", ""]
    return "\n".join(lines)
