"""Building a run's index (``RUN/index/``, :mod:`harmonixr.search.catalog`) from the run and its
tensor cache, crash-safe, and adding files to it without a rebuild. The index's format, its
record and the :class:`Index` class live in ``catalog.py``; they are importable from here too."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from harmonixr._files import sha256_file
from harmonixr.evaluate.calibrate import OpenSetModel, fit_calibration
from harmonixr.midi.files import load_files
from harmonixr.midi.load import UNREADABLE, MidiError
from harmonixr.search import works as works_mod
from harmonixr.search.catalog import (
    BACKEND,
    FORMAT,
    INDEX_DIR,
    Index,
    Item,
    check_index,
)
from harmonixr.search.store import FaissStore, MilvusStore, VectorStore, milvus_uri
from harmonixr.train.rundir import Run

if TYPE_CHECKING:
    from harmonixr._pool import RobustPool
    from harmonixr.data.cache import CachedPiece, TensorCache
    from harmonixr.model.encoder import SiaViT

ProgressFn = Callable[[int, int, str], None]

# the index's own names, for the callers that import them from here
__all__ = [
    "BACKEND",
    "FORMAT",
    "INDEX_DIR",
    "AddResult",
    "Index",
    "Item",
    "ProgressFn",
    "add_files",
    "build_index",
    "centroids_of",
    "check_index",
    "load_open_set",
    "source_label",
]


# ------------------------------------------------------------------ building


def source_label(source: str) -> str:
    """What the page shows as a piece's source: the corpus and converter, or "MAESTRO
    recording" for an ASAP performance cut from one (its source is the recording's path)."""
    return "MAESTRO recording" if source.startswith("{maestro}") else source


def load_open_set(path: str | Path) -> OpenSetModel:
    """The unknown-composer model stored by ``evaluate.openset`` (``open-set.json``)."""
    path = Path(path)
    if path.is_dir():
        path = path / "open-set.json"
    try:
        return OpenSetModel.from_dict(json.loads(path.read_text())["model"])
    except (OSError, KeyError, ValueError) as exc:
        raise ValueError(f"{path}: not an open-set model ({exc})") from exc


def centroids_of(emb: np.ndarray, composers: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """(sorted composers, (C, D) unit mean embedding of each), by the one centroid rule of
    ``evaluate.protocols.centroids`` (the calibration uses the same)."""
    from harmonixr.evaluate.metrics import centroids

    names = sorted(set(composers))
    cents = centroids(np.asarray(emb, np.float64), np.asarray(composers, dtype=object), names)
    return names, cents.astype(np.float32)


def _store_for(spec: str, kind: str, dim: int, model_sha: str) -> VectorStore:
    if spec == "faiss":
        return FaissStore(dim, kind)
    collection = f"harmonixr_{model_sha[:16]}"
    return MilvusStore(milvus_uri(spec), collection, dim, create=True)


def build_index(
    run_dir: str | Path,
    cache: str | Path | None = None,
    *,
    store: str = "faiss",
    kind: str = "auto",
    relative_to: str | Path | None = None,
    batch_size: int = 32,
    progress: ProgressFn | None = None,
    open_set: OpenSetModel | str | Path | None = None,
    min_works: int | None = None,
    temperature_rule: str = "nll",
) -> Index:
    """Embed every usable piece of the cache (one per distinct file content) into
    ``RUN/index``, centroids and probe from the run's training split, calibration from its
    validation split (``evaluate/calibrate.py``). ``open_set`` is an unknown-composer model
    learnt on real strangers (an ``OpenSetModel`` or the ``open-set.json`` that
    ``harmonixr index open-set`` writes); without one it is simulated on validation.
    ``relative_to`` stores paths relative to that folder (a corpus root)."""
    from harmonixr.data.cache import TensorCache
    from harmonixr.data.splits import SIDES

    run_dir = Path(run_dir)
    run = Run.open(run_dir)
    cache = Path(cache or run.train.data)
    with TensorCache(cache) as c:
        run.check_tensors(c.config, cache)
        rows = c.pieces()
        if not rows:
            raise ValueError(f"{cache}: the cache holds no usable pieces")
        split = run.split(rows)
        run.check_split(split, rows)  # the pieces still have the content and groups it had
        side = {i: s for s in SIDES for i in split[s]}
        first: dict[str, int] = {}
        for i, r in enumerate(rows):
            first.setdefault(r.sha256 or r.path, i)
        unique = list(first.values())
        counted = (lambda i, n: progress(i, n, "")) if progress else None
        tensors = [c.load(rows[i]) for i in unique]
        emb = run.embed(tensors, batch_size=batch_size, progress=counted)
    vec = dict(zip(first, emb, strict=True))

    def z(i: int) -> np.ndarray:
        return vec[rows[i].sha256 or rows[i].path]

    train = [i for i in range(len(rows)) if side.get(i) == "train"]
    val = [i for i in range(len(rows)) if side.get(i) == "val"]
    if not train:
        raise ValueError(f"{run_dir}: the training split holds no piece of {cache}")
    train_emb, train_composers = np.stack([z(i) for i in train]), [rows[i].composer for i in train]
    known, centroids = centroids_of(train_emb, train_composers)
    val_emb = np.stack([z(i) for i in val]) if val else np.zeros((0, run.dim), np.float32)
    if open_set is not None and not isinstance(open_set, OpenSetModel):
        open_set = load_open_set(open_set)
    calibration = fit_calibration(
        train_emb,
        train_composers,
        [rows[i].group for i in train],
        val_emb,
        [rows[i].composer for i in val],
        [rows[i].group for i in val],
        open_set=open_set,
        min_works=min_works,
        temperature_rule=temperature_rule,
    )
    root = Path(relative_to).resolve() if relative_to else None

    def shown(path: str) -> str:
        if root is None:
            return path
        try:
            return str(Path(path).resolve().relative_to(root))
        except ValueError:
            return path

    items = [
        Item(
            rows[i].composer,
            rows[i].title,
            rows[i].group,
            shown(rows[i].path),
            rows[i].sha256 or "",
            rows[i].performer or "",
            source_label(rows[i].source or rows[i].corpus or ""),
        )
        for i in unique
    ]
    with TensorCache(cache) as c:
        items, prints, work_fit = known_works(c, rows, split, items, emb)
    sha = run.weights_sha256()
    manifest = {
        "format": FORMAT,
        "backend": BACKEND,
        "dim": run.dim,
        "model_sha256": sha,
        "tensor": run.tensor.to_dict(),
        "crop_frames": run.crop_frames,
        "hop_frames": run.hop_frames,
        "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "source": str(cache),
        "train_pieces": dict(Counter(train_composers)),
    }
    final = run_dir / INDEX_DIR
    _recover_builds(run_dir)
    tmp = _build_dir(run_dir, "tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    vectors = _store_for(store, kind, run.dim, sha)
    index = Index(
        tmp,
        [],
        vectors,
        centroids,
        known,
        calibration,
        manifest,
        works_mod.WorkPrints([]),
        work_fit,
    )
    index.add(emb, items, prints.sketches)
    index.save()
    old = _build_dir(run_dir, "old")
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    index.root = final
    return index


def known_works(
    cache: TensorCache,
    rows: Sequence[CachedPiece],
    split: dict[str, Sequence[int]],
    items: Sequence[Item],
    vectors: np.ndarray | None = None,
) -> tuple[list[Item], works_mod.WorkPrints, works_mod.WorkFit]:
    """``items`` with their compositions (``search/works.py``), their melodic sketches and the
    known-work rule fitted on the validation rows of ``split`` (its test rows never a
    candidate); every item must be a row of ``cache`` (by content). ``vectors``: the items'
    embeddings, for the validation record's comparison."""
    # a file's composition: its row's names, joined with every row of the same content
    named = [[*r.composition_names, f"\U0010ffffsha:{r.sha256 or r.path}"] for r in rows]
    composition = works_mod.compositions(named)
    row_of: dict[str, int] = {}
    for i, r in enumerate(rows):
        row_of.setdefault(r.sha256 or r.path, i)
    missing = [it.path for it in items if it.sha256 not in row_of]
    if missing:
        raise ValueError(
            f"{cache.root}: {len(missing)} indexed pieces are not in this cache (e.g. "
            f"{missing[0]}); known works need the cache the index was built from"
        )
    low, ms = cache.config.low_note, cache.config.frame_ms
    sketches = [works_mod.sketch(cache.load(rows[row_of[it.sha256]]), low, ms) for it in items]
    items = [replace(it, work=composition[row_of[it.sha256]]) for it in items]
    position = {it.sha256: k for k, it in enumerate(items)}

    def of(side: str) -> list[int]:
        shas = (rows[i].sha256 for i in split.get(side, ()))
        return sorted({position[k] for k in shas if k in position})

    prints = works_mod.WorkPrints(sketches)
    fit = works_mod.fit_works(prints, [it.work for it in items], of("val"), of("test"), vectors)
    return items, prints, fit


def attach_known_works(run_dir: str | Path, data: str | Path) -> Index:
    """Give ``RUN/index`` known works (compositions, sketches, the validation fit) from the
    cache it was built from, without embedding anything again."""
    from harmonixr.data.cache import TensorCache

    run = Run.open(run_dir)
    index = Index.load(Path(run_dir) / INDEX_DIR)
    check_index(index, run)
    with TensorCache(data) as c:
        rows = c.pieces()
        split = run.split(rows)
        run.check_split(split, rows)
        vectors = getattr(index.store, "vectors", None)
        items, prints, fit = known_works(c, rows, split, index.items, vectors)
    index.items, index.works, index.work_fit = items, prints, fit
    index.save()
    return index


_BUILD = re.compile(r"^\.index\.(?P<host>[A-Za-z0-9_-]+)\.(?P<pid>\d+)\.(?P<kind>tmp|old)$")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"


def _build_dir(run_dir: Path, kind: str) -> Path:
    """Where this process builds an index (``tmp``) or parks the one it replaces (``old``)."""
    return run_dir / f".{INDEX_DIR}.{_host()}.{os.getpid()}.{kind}"


def _recover_builds(run_dir: Path) -> None:
    """Folders a killed ``build_index`` on this machine left: a half-built ``.tmp`` is removed;
    an ``.old`` is the previous index, put back when the kill came before the new one was in
    place, else removed. Only names this module makes, only from processes of this host that
    are gone (a build on another machine sharing the folder is left alone)."""
    for path in sorted(run_dir.iterdir()):
        m = _BUILD.match(path.name)
        if m is None or m["host"] != _host() or not path.is_dir():
            continue
        try:
            os.kill(int(m["pid"]), 0)
            continue  # a live build
        except ProcessLookupError:
            pass
        except PermissionError:  # someone else's live process
            continue
        final = run_dir / INDEX_DIR
        if m["kind"] == "old" and not final.exists():
            path.rename(final)
        else:
            shutil.rmtree(path, ignore_errors=True)


# ------------------------------------------------------------------ adding files


@dataclass(frozen=True)
class AddResult:
    added: tuple[str, ...]
    duplicates: tuple[str, ...]  # content already in the index (or twice in the request)
    errors: tuple[MidiError, ...]  # unusable files, in input order

    def to_dict(self) -> dict[str, Any]:
        return {
            "added": list(self.added),
            "duplicates": list(self.duplicates),
            "errors": [e.to_dict() for e in self.errors],
        }


def add_files(
    run: Run,
    encoder: SiaViT,
    index: Index,
    paths: Sequence[str | os.PathLike[str]],
    *,
    composer: str = "",
    workers: int | None = None,
    pool: RobustPool | None = None,
    progress: ProgressFn | None = None,
) -> AddResult:
    """Parse, embed and append files to ``index`` and save it, without a rebuild. A file whose
    content (sha256) is already indexed is not added again. Each file is its own work; its
    title is its name, its composer ``composer`` (empty: unknown)."""
    todo: list[tuple[int, str, str]] = []
    duplicates: list[str] = []
    errors: dict[int, MidiError] = {}
    seen: set[str] = set()  # met in this request
    for n, p in enumerate(paths):
        path = str(Path(p).resolve())
        try:
            sha = sha256_file(path)
        except OSError as exc:
            errors[n] = MidiError(path, UNREADABLE, exc.strerror or str(exc))
            continue
        if sha in index or sha in seen:
            duplicates.append(os.fspath(p))
        else:
            seen.add(sha)
            todo.append((n, path, sha))
    loaded = load_files(
        [p for _, p, _ in todo], run.tensor, workers=workers, pool=pool, progress=progress
    )
    tensors, items = [], []
    for (n, path, sha), got in zip(todo, loaded, strict=True):
        if isinstance(got, MidiError):
            errors[n] = got
        else:
            tensors.append(got.tensor)
            items.append(Item(composer, Path(path).stem, sha, path, sha, work=f"file:{sha}"))
    if items:
        low, ms = run.tensor.low_note, run.tensor.frame_ms
        sketches = [works_mod.sketch(t, low, ms) for t in tensors]
        index.add(run.embed(tensors, encoder), items, sketches)
        index.save()
    ordered = tuple(errors[n] for n in sorted(errors))
    return AddResult(tuple(it.path for it in items), tuple(duplicates), ordered)
