"""What every job does: record itself, refuse to resume as another job, train and embed one
split in its own run directory (resumable), and read back the embeddings as sides.

A job's record (``cv.json``, ``loso.json``) holds the cache, the plan and the recipe. A rerun
compares them: the plan and the cache as they are, the recipe *typed* — through
``TrainConfig`` and ``ModelConfig``, as ``train.config.check_resume`` compares a resumed run,
and each split's run through ``Run.open`` — so a setting this version added since the job was
written takes its default and the job still resumes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from harmonixr._files import atomic_json, atomic_write
from harmonixr.data.cache import CachedPiece, TensorCache
from harmonixr.data.pairs import centre_crop
from harmonixr.data.splits import SIDES, check_manifest, read_split, split_manifest
from harmonixr.evaluate.baselines import histogram_table
from harmonixr.evaluate.protocols import Fold
from harmonixr.evaluate.records import Side
from harmonixr.train.config import TrainConfig, build_model_config, check_resume

EMB_FILE = "embeddings.npz"
TIMING = "timing.json"
HISTOGRAMS = "histograms.npz"
Progress = Callable[[str], None]
# how a split's training pieces are embedded: whole (as evaluation embeds every piece), by
# their centre crop (enough for attribution's centroids, and fast), or not at all
TRAIN_EMBEDDINGS = ("whole", "centre crop", "none")


def recipe(config: TrainConfig, model: dict[str, Any] | None) -> dict[str, Any]:
    """What a job records of its training: every setting but the cache, the run directory and
    the split (the plan's), with the model's overrides."""
    skip = ("data", "out", "split")
    return {**{k: v for k, v in config.to_dict().items() if k not in skip}, "model": model or {}}


def _check_recipe(stored: dict[str, Any], config: TrainConfig, model: dict, where: Path) -> None:
    stored = dict(stored)
    stored_model = stored.pop("model", {}) or {}
    unknown = sorted(set(stored) - {f.name for f in fields(TrainConfig)})
    if unknown:
        raise ValueError(
            f"{where}: records training settings this version does not know: {unknown}"
        )
    pinned = {"data": config.data, "out": config.out, "split": config.split}
    was = TrainConfig.from_dict({**stored, **pinned})
    check_resume(was, config, where, build_model_config(was.preset, stored_model), model)


def prepare(
    out: Path,
    name: str,
    data: Path,
    plan: dict[str, Any],
    config: TrainConfig,
    model: dict[str, Any] | None,
    what: str,
) -> None:
    """Write the job's record ``out/name`` or, when there is one, check that it is this job:
    the cache and the plan unchanged, the recipe changed in nothing but how long and on what
    it runs (``train.config.RESUMABLE``)."""
    out.mkdir(parents=True, exist_ok=True)
    model = model or {}
    record = {"data": str(Path(data).resolve()), **plan, "train": recipe(config, model)}
    path = out / name
    if not path.is_file():
        atomic_json(path, record, indent=1)
        return
    was = json.loads(path.read_text())
    differ = [k for k in record if k != "train" and was.get(k) != record[k]]
    try:
        if not differ:
            _check_recipe(was.get("train", {}), config, model, path)
    except ValueError as exc:
        differ = [f"train ({exc})"]
    if differ:
        raise ValueError(
            f"{path}: records another {what} ({', '.join(differ)} differ); "
            "use another --out to change it"
        )


def read_record(out: str | Path, name: str, what: str) -> dict[str, Any]:
    path = Path(out) / name
    if not path.is_file():
        raise ValueError(f"{out}: not a {what} job (no {name})")
    return json.loads(path.read_text())


def timing(d: Path) -> dict[str, float]:
    path = d / TIMING
    return json.loads(path.read_text()) if path.is_file() else {}


def _stamp(d: Path, key: str, value: float) -> None:
    t = timing(d)
    t[key] = round(value, 1)
    atomic_json(d / TIMING, t, indent=1)


def train_split(
    d: Path,
    data: Path,
    rows: list[CachedPiece],
    split: dict[str, list[int]],
    config: TrainConfig,
    model: dict[str, Any] | None,
    info: dict[str, Any],
    train_embedding: str,
    say: Progress,
) -> None:
    """Train a run on ``split`` in ``d`` and embed its pieces (``EMB_FILE``), skipping what is
    done: a finished split is left alone, a split whose run exists resumes from its last
    checkpoint. The run's recorded settings are checked first (``Run.open``), so a job never
    resumes a split trained otherwise."""
    from harmonixr.model.io import WEIGHTS
    from harmonixr.train.run import last_checkpoint, train
    from harmonixr.train.rundir import Run

    config = config.replace(out=str(d), data=str(data))
    d.mkdir(parents=True, exist_ok=True)
    if (d / "split.json").is_file():
        check_manifest(read_split(d / "split.json"), split, rows, str(d))
    else:
        atomic_json(d / "split.json", split_manifest(rows, split, **info), indent=1)
    if (d / "config.json").is_file():
        run = Run.open(d)
        check_resume(run.train, config.replace(data=str(data.resolve())), d, run.model, model)
    if (d / EMB_FILE).is_file():
        say(f"{d.name}: done before")
        return
    # finished = timed after train() returned (export="best" writes weights mid-training)
    if not (d / WEIGHTS).is_file() or "train_seconds" not in timing(d):
        resume = last_checkpoint(d / "checkpoints") is not None
        sizes = ", ".join(f"{s} {len(split[s])}" for s in SIDES)
        say(f"{d.name}: training ({'resumed' if resume else 'new'}), {sizes}")
        t0 = time.perf_counter()
        train(config, model, resume=resume)
        _stamp(d, "train_seconds", time.perf_counter() - t0)
    say(f"{d.name}: embedding")
    t0 = time.perf_counter()
    embed_split(d, data, rows, split, train_embedding)
    _stamp(d, "embed_seconds", time.perf_counter() - t0)


def embed_split(
    d: Path, data: Path, rows: list[CachedPiece], split: dict[str, list[int]], train_embedding: str
) -> None:
    """The split's pieces embedded by its run: validation and test whole (overlapping crops,
    the run's hop, as ``Harmonixr.embed`` does); training pieces as ``train_embedding`` says."""
    from harmonixr.train.rundir import Run

    if train_embedding not in TRAIN_EMBEDDINGS:
        raise ValueError(f"train_embedding must be one of {TRAIN_EMBEDDINGS}")
    run = Run.open(d)
    crop = run.crop_frames
    encoder = run.encoder()
    parts: dict[str, np.ndarray] = {}
    with TensorCache(data) as cache:
        for side in ("test", "val", "train"):
            idx = split[side] if side != "train" or train_embedding != "none" else []
            tensors = [cache.load(rows[i]) for i in idx]
            if side == "train" and train_embedding == "centre crop":
                tensors = [_centre(t, crop) for t in tensors]
            parts[side] = run.embed(tensors, encoder)
    arrays = {
        **{f"emb_{s}": parts[s] for s in parts},
        **{
            f"path_{s}": np.array([rows[i].path for i in split[s]][: len(parts[s])], dtype=str)
            for s in parts
        },
        "train_embedding": np.array(train_embedding),
    }
    atomic_write(d / EMB_FILE, lambda tmp: np.savez(tmp, **arrays))


def _centre(t: np.ndarray, crop: int) -> np.ndarray:
    """The piece's centre crop without padding (``data.pairs.centre_crop``, cut to its music)."""
    window, n = centre_crop(t, crop)
    return window[:n]


def load_split_fold(
    d: Path, rows: list[CachedPiece], split: dict[str, list[int]]
) -> tuple[Fold, dict[str, np.ndarray]]:
    """A split's stored embeddings as a fold of sides (training side empty when its pieces were
    not embedded), refused if the cache has changed; and each side's row indices."""
    if not (d / EMB_FILE).is_file():
        raise ValueError(f"{d}: not finished; rerun the same command to resume")
    check_manifest(read_split(d / "split.json"), split, rows, str(d))
    index = {r.path: i for i, r in enumerate(rows)}
    z = np.load(d / EMB_FILE)
    idx = {s: np.asarray(split[s], np.int64) for s in SIDES}
    sides = {}
    for s in SIDES:
        stored = np.array([index[p] for p in z[f"path_{s}"]], np.int64)
        # training pieces are not embedded when unused (unseen-composer folds)
        if (s != "train" or stored.size) and not np.array_equal(stored, idx[s]):
            raise ValueError(f"{d / EMB_FILE}: its {s} pieces are not the split's")
        emb = z[f"emb_{s}"].astype(np.float64)
        sides[s] = Side.from_rows([rows[i] for i in stored], emb)
    return Fold(**sides), idx


def histograms(out: Path, cache: TensorCache, rows: list[CachedPiece]) -> dict[str, np.ndarray]:
    """Every histogram kind of every piece, computed once per job and stored by path."""
    path = out / HISTOGRAMS
    paths = np.array([r.path for r in rows])
    if path.is_file():
        z = np.load(path)
        if np.array_equal(z["paths"], paths):
            return {k[2:]: z[k] for k in z.files if k.startswith("h_")}
    table = histogram_table([cache.load(r) for r in rows])
    arrays = {f"h_{k}": v for k, v in table.items()}
    atomic_write(path, lambda tmp: np.savez(tmp, paths=paths, **arrays))
    return table


def fold_labels(rows: list[CachedPiece], idx: dict[str, np.ndarray]) -> Fold:
    """The labels of a fold's pieces (no embeddings), every side whole."""
    return Fold(
        **{
            s: Side.from_rows([rows[i] for i in i_s], np.zeros((len(i_s), 0)))
            for s, i_s in idx.items()
        }
    )


def fold_histograms(
    table: dict[str, np.ndarray], idx: dict[str, np.ndarray]
) -> dict[str, dict[str, np.ndarray]]:
    """Per side of a fold, each histogram kind's rows."""
    return {s: {k: h[i] for k, h in table.items()} for s, i in idx.items()}


def model_sha256(d: Path) -> str | None:
    from harmonixr._files import sha256_file

    try:
        return sha256_file(d / "model.safetensors")
    except OSError:
        return None
