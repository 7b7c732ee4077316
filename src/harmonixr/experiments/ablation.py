"""The statistics branch's ablation on one split, scored by the evaluation engine.

Arms, each a method of ``evaluate.protocols``:

- ``ViT (crop head)``: the first-stage encoder as it is, whole pieces by the mean of its crop
  embeddings (the model before the statistics branch);
- ``second stage: vit | stats | both``: runs of ``harmonixr train-head`` over that encoder
  (``--branches``), ViT only, statistics only, both;
- the tuned baselines of ``evaluate.baselines`` (each histogram, the logistic regression on the
  five histograms) and a logistic regression on the statistics vector itself (C chosen on
  validation, pieces compared by p·q), so that the branch is measured against the plain use of
  the same numbers.

Every embedding is computed once from the encoder's cached window tokens
(``train.piece_inputs``). A split is a run's ``split.json`` (its recurring pieces left out as
``Run.split`` leaves them) or a leave-one-source-out split (``--source`` names the held-out source
and the test side counts only composers the training side holds). Choices come from the split's
validation side; the test side is only measured.

    python -m harmonixr.experiments.ablation SPLIT_JSON --data CACHE --out OUT.json \\
        [--trunk RUN] [--head NAME=RUN ...] [--source S] [--resamples 300] [--side test|val]
    python -m harmonixr.experiments.ablation SPLIT_JSON --data CACHE --out - --source S \\
        --write-loso-split      # the split of holding S out, for training its runs
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from harmonixr._files import atomic_json
from harmonixr.data.cache import CachedPiece, TensorCache
from harmonixr.data.splits import load_split, read_split, without_recurring
from harmonixr.evaluate.baselines import baseline_folds, histogram_table, probability_space
from harmonixr.evaluate.loso import loso_report
from harmonixr.evaluate.protocols import RUN_PROTOCOLS, Fold, Settings, evaluate_folds
from harmonixr.evaluate.records import Side, json_ready
from harmonixr.model.embed import Window, whole_pieces
from harmonixr.model.io import load_encoder
from harmonixr.train.piece_inputs import cached_stats, window_features_cached
from harmonixr.train.rundir import Run

SIDES = ("train", "val", "test")
STATS_LR = "logistic regression, statistics vector"


def split_rows(
    cache: TensorCache, split_json: Path, source: str | None
) -> tuple[dict[str, list[CachedPiece]], dict[str, Any]]:
    """Each side's rows: the split less its recurring pieces; with ``source``, a held-out
    source's test side only keeps composers the training side holds."""
    rows = cache.pieces()
    split, left_out = without_recurring(load_split(split_json, rows), rows)
    sides = {s: [rows[i] for i in split[s]] for s in SIDES}
    info: dict[str, Any] = {"left_out_recurring": {s: len(v) for s, v in left_out.items()}}
    if source is not None:
        trained = {r.composer for r in sides["train"]}
        known = [r for r in sides["test"] if r.composer in trained]
        if known:
            info["unmeasured"] = len(sides["test"]) - len(known)
            sides["test"] = known
        else:  # a source of composers found nowhere else: only its own pairs, all unseen
            info["unseen_composers_only"] = True
    info["sizes"] = {s: len(v) for s, v in sides.items()}
    return sides, info


def write_loso_split(data: Path, source: str, out: Path, seed: int = 0) -> dict[str, int]:
    """The split of holding ``source`` out (``evaluate.loso.holdout``: its pieces whose
    composer the training side holds are the test side, other sources' pieces of a unit it
    touches are set aside, validation drawn from the rest), as a split manifest at ``out``
    (training runs read it with ``split_file``). Returns the sizes."""
    from harmonixr.data.splits import split_manifest
    from harmonixr.evaluate.loso import holdout

    with TensorCache(data) as cache:
        rows = cache.pieces()
    corpus = Side.from_rows(rows, np.zeros((len(rows), 1), np.float32))
    h = holdout(corpus, source, seed=seed)
    split = {k: [int(i) for i in v] for k, v in h.sides.items()}
    manifest = split_manifest(rows, split, mode="leave-one-source-out", held_out=source, seed=seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_json(out, manifest)
    return h.sizes()


def write_fold_split(
    data: Path, folds: int, fold: int, out: Path, seed: int = 0, mode: str = "group"
) -> dict[str, int]:
    """Fold ``fold`` of a ``folds``-fold cross-validation (``data.splits.fold_split``: by
    ``group``, or by composer with ``unseen-composer``) as a split manifest at ``out``;
    returns the sizes."""
    from harmonixr.data.splits import fold_split, split_manifest

    with TensorCache(data) as cache:
        rows = cache.pieces()
    split = fold_split(rows, folds, fold, seed, mode=mode)
    manifest = split_manifest(rows, split, mode=mode, folds=folds, fold=fold, seed=seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_json(out, manifest)
    return {s: len(v) for s, v in split.items()}


def check_inputs(split_json: Path, trunk: Path | None, heads: dict[str, Path]) -> None:
    """Refuse runs that are not of this split: the trunk and every head must carry the same
    sides (by path), and a head must sit on this trunk's weights."""

    def sides_of(path: Path) -> dict[str, set[str]]:
        m = read_split(path)
        return {s: {e["path"] if isinstance(e, dict) else e for e in m[s]} for s in SIDES}

    want = sides_of(split_json)
    runs = ([trunk] if trunk is not None else []) + list(heads.values())
    for r in runs:
        if sides_of(Path(r) / "split.json") != want:
            raise ValueError(f"{r}: its split is not {split_json}")
    if trunk is not None:
        sha = Run.open(trunk).weights_sha256()
        for name, h in heads.items():
            head = json.loads((Path(h) / "config.json").read_text()).get("head", {})
            if head.get("branches") != "stats" and head.get("trunk_weights_sha256") != sha:
                raise ValueError(f"{h} ({name}): trained on another encoder than {trunk}")


def arms(
    cache: TensorCache,
    sides: dict[str, list[CachedPiece]],
    trunk: Path | None,
    heads: dict[str, Path],
) -> dict[str, Fold]:
    """Each arm's fold from the cached window tokens (statistics-only arms need none)."""
    tensors = {s: [cache.load(r) for r in sides[s]] for s in SIDES}
    stats = {s: cached_stats(cache, sides[s]) for s in SIDES}
    out: dict[str, Fold] = {}
    feats: dict[str, tuple[np.ndarray, list[Any]]] = {}
    if trunk is not None:
        run = Run.open(trunk)
        encoder = run.encoder()
        for s in SIDES:
            keys = [r.sha256 or r.path for r in sides[s]]
            feats[s] = window_features_cached(run, encoder, tensors[s], keys)
        out["ViT (crop head)"] = Fold(
            **{
                s: Side.from_rows(
                    sides[s], whole_pieces(encoder, tensors[s], feats[s][1], feats[s][0])
                )
                for s in SIDES
            }
        )
    for name, path in heads.items():
        model = load_encoder(path)
        if model.config.stats_branches != "stats" and trunk is None:
            raise ValueError(f"{path}: a ViT arm needs --trunk (its first-stage run)")
        per_side = {}
        for s in SIDES:
            if model.config.stats_branches == "stats":  # the ViT branch is never read
                n = len(tensors[s])
                f = np.zeros((n, model.config.d_model), np.float32)
                w = [Window(i, 0, 1) for i in range(n)]
            else:
                f, w = feats[s]
            per_side[s] = Side.from_rows(sides[s], whole_pieces(model, tensors[s], w, f, stats[s]))
        out[f"second stage: {name}"] = Fold(**per_side)
    return out


def baselines(
    cache: TensorCache, sides: dict[str, list[CachedPiece]], seed: int
) -> tuple[dict[str, Fold], dict[str, Any]]:
    """The tuned baselines and the logistic regression on the statistics vector."""
    tensors = {s: [cache.load(r) for r in sides[s]] for s in SIDES}
    empty = Fold(**{s: Side.from_rows(sides[s], np.zeros((len(sides[s]), 1))) for s in SIDES})
    hists = {s: histogram_table(tensors[s]) for s in SIDES}
    methods, choices = baseline_folds(empty, hists, seed)
    stats = Fold(**{s: Side.from_rows(sides[s], cached_stats(cache, sides[s])) for s in SIDES})
    methods[STATS_LR], choices[STATS_LR] = probability_space(stats, seed)
    return methods, choices


def run_ablation(
    split_json: Path,
    data: Path,
    trunk: Path | None,
    heads: dict[str, Path],
    source: str | None = None,
    resamples: int = 300,
    side: str = "test",
    seed: int = 0,
) -> dict[str, Any]:
    check_inputs(split_json, trunk, heads)
    with TensorCache(data) as cache:
        sides, info = split_rows(cache, split_json, source)
        methods = arms(cache, sides, trunk, heads)
        base, choices = baselines(cache, sides, seed)
    methods.update(base)
    if side == "val":  # a choice: measured on validation, nothing of the test side read
        methods = {n: Fold(f.train, f.val, f.val) for n, f in methods.items()}
    s = Settings(seed=seed, resamples=resamples)
    if source is not None:
        report = loso_report(
            {n: {source: f} for n, f in methods.items()},
            s,
            {source: info["sizes"]},
            {n: {source: c} for n, c in choices.items()},
        )
    else:
        report = {"methods": {}, "choices": choices}
        for name, fold in methods.items():
            figures, _ = evaluate_folds([fold], s, RUN_PROTOCOLS)
            report["methods"][name] = figures
    report.update({"split": str(split_json), "side": side, "source": source, **info})
    return json_ready(report)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("split", type=Path)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--trunk", type=Path)
    p.add_argument("--head", action="append", default=[], help="NAME=RUN")
    p.add_argument("--source")
    p.add_argument("--resamples", type=int, default=300)
    p.add_argument("--side", choices=("test", "val"), default="test")
    p.add_argument(
        "--write-loso-split",
        action="store_true",
        help="Write SPLIT as the split of holding --source out, then stop.",
    )
    p.add_argument(
        "--write-fold-split",
        metavar="FOLDS:FOLD[:MODE]",
        help="Write SPLIT as fold FOLD of FOLDS (MODE group, the default, or unseen-composer; "
        "seed 0, validation a tenth), then stop.",
    )
    a = p.parse_args(argv)
    if a.write_fold_split:
        folds, fold, *mode = a.write_fold_split.split(":")
        print(write_fold_split(a.data, int(folds), int(fold), a.split, mode=(mode or ["group"])[0]))
        return
    if a.write_loso_split:
        print(write_loso_split(a.data, a.source, a.split))
        return
    heads = dict(h.split("=", 1) for h in a.head)
    report = run_ablation(
        a.split,
        a.data,
        a.trunk,
        {k: Path(v) for k, v in heads.items()},
        a.source,
        a.resamples,
        a.side,
    )
    a.out.write_text(json.dumps(report, indent=1))
    print(a.out)


if __name__ == "__main__":
    main()
