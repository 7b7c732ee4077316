"""The persistent index of a run (``RUN/index/``): whole-piece embeddings of its corpus in a
vector store, a metadata table, composer centroids and the calibration.

```
RUN/index/
  index.json        what built it: model hash, store, dimension, centroid composers, counts
  items.json        the metadata table, one column per field (row i = vector id i)
  centroids.npy     (C, D) unit composer centroids, from the run's TRAIN split only
  calibration.json  probe + calibration: TRAIN and VALIDATION splits only (evaluate/calibrate.py)
  embeddings.npy    (N, D) float32 (FAISS store) [+ hnsw.faiss above HNSW_MIN vectors]
```

No pickle anywhere: JSON, ``.npy`` and ``faiss.write_index``. ``items.json`` is written last
and is the commit point of an ``add``: vectors past its length (an interrupted add) are
ignored on load and overwritten by the next one. The test split is never read for a choice.

One module, over 400 lines: building, loading, searching and extending an index share its
on-disk format (the manifest, the items, the commit point), which must not drift."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from harmonixr._files import atomic_json, atomic_write, sha256_file
from harmonixr.evaluate.calibrate import Calibration, OpenSetModel, fit_calibration
from harmonixr.midi.files import load_files
from harmonixr.midi.load import UNREADABLE, MidiError
from harmonixr.search.store import FaissStore, MilvusStore, VectorStore, milvus_uri
from harmonixr.train.rundir import Run

if TYPE_CHECKING:
    from harmonixr._pool import RobustPool
    from harmonixr.model.encoder import SiaViT

INDEX_DIR = "index"
# 2: named composers, probe and operating point in calibration.json; 3: the scoring back-end
FORMAT = 3
# How every question scores two embeddings: the cosine of the vectors ``embed`` returns (a
# statistics model's head is trained for it), so users' own tools score as ``verify`` does.
BACKEND = "cosine"
ProgressFn = Callable[[int, int, str], None]


@dataclass(frozen=True)
class Item:
    """One indexed piece."""

    composer: str
    title: str
    group: str
    path: str
    sha256: str
    performer: str = ""  # who played it, where the corpus says
    source: str = ""  # the corpus, edition or converter it came from

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


_COLUMNS = [f.name for f in fields(Item)]
_OPTIONAL = {f.name: f.default for f in fields(Item) if isinstance(f.default, str)}


class Index:
    """Search, centroids and calibration of one run; see the module docstring."""

    def __init__(
        self,
        root: Path,
        items: list[Item],
        store: VectorStore,
        centroids: np.ndarray,
        known: Sequence[str],
        calibration: Calibration,
        manifest: dict[str, Any],
    ) -> None:
        self.root, self.items, self.store = root, items, store
        self.centroids, self.known = centroids, list(known)
        self.calibration, self.manifest = calibration, manifest
        self._shas = {it.sha256 for it in items}
        column = {c: k for k, c in enumerate(self.known)}
        missing = [c for c in calibration.composers if c not in column]
        if missing:
            raise ValueError(f"{root}: calibrated composers without a centroid: {missing[:3]}")
        self._named = np.array([column[c] for c in calibration.composers], np.int64)
        named = set(calibration.composers)
        # composers with a centroid who are never named (too few training works): their columns
        self.barely_known_columns = {c: k for c, k in column.items() if c not in named}

    def __len__(self) -> int:
        return len(self.items)

    def __contains__(self, sha256: str) -> bool:
        return sha256 in self._shas

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    # ------------------------------------------------------------ queries

    def search(
        self, queries: np.ndarray, k: int, per_work: int | None = None
    ) -> list[list[tuple[Item, float]]]:
        """The ``k`` most similar items per query (cosine similarity, best first); with
        ``per_work``, at most that many of one piece (same composer and title: its
        performances, or its copies), the best of each. Not the split group, which can hold
        a whole opus."""
        queries = np.atleast_2d(queries)
        fetch = k if per_work is None else min(len(self), max(k, k * 8))
        while True:
            sims, ids = self.store.search(queries, fetch)
            out = []
            for srow, irow in zip(sims, ids, strict=True):
                hits, seen = [], {}  # seen: pieces (composer, title) → count
                for s, i in zip(srow, irow, strict=True):
                    if not 0 <= i < len(self):
                        continue
                    it = self.items[i]
                    if per_work is not None:
                        key = (it.composer, it.title)
                        if seen.get(key, 0) >= per_work:
                            continue
                        seen[key] = seen.get(key, 0) + 1
                    hits.append((it, float(s)))
                    if len(hits) == k:
                        break
                out.append(hits)
            if per_work is None or fetch >= len(self) or all(len(h) == k for h in out):
                return out
            fetch = min(len(self), fetch * 4)  # one work filled the window: look further

    def composer_similarities(self, z: np.ndarray) -> np.ndarray:
        """(N, C) cosine similarity of each embedding to each known composer's centroid."""
        return np.atleast_2d(z).astype(np.float32) @ self.centroids.T

    def named_similarities(self, sims: np.ndarray) -> np.ndarray:
        """The columns of :meth:`composer_similarities` of the named composers, in the
        calibration's order."""
        return np.atleast_2d(sims)[:, self._named]

    def scores(
        self, z: np.ndarray, prior_unknown: float | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """How every question scores embeddings ``z``: the similarity to every composer's
        centroid, to the named composers', the named composers' calibrated probabilities and
        that of "someone else" (``Calibration.composer_probabilities``)."""
        every = self.composer_similarities(z)
        sims = self.named_similarities(every)
        probs, unknown = self.calibration.composer_probabilities(z, sims, prior_unknown)
        return every, sims, probs, unknown

    @property
    def barely_known(self) -> list[str]:
        """Composers with a centroid who are never named (too few training works)."""
        return list(self.barely_known_columns)

    # ------------------------------------------------------------ writing

    def add(self, vectors: np.ndarray, items: Sequence[Item]) -> list[Item]:
        """Append pieces not present yet (by sha256, also within ``items``); returns those
        added. Incremental: FAISS appends to its index, Milvus upserts. Call :meth:`save`."""
        vectors = np.asarray(vectors, np.float32).reshape(-1, self.dim)
        keep, seen = [], set(self._shas)
        for i, it in enumerate(items):
            if it.sha256 not in seen:
                seen.add(it.sha256)
                keep.append(i)
        new = [items[i] for i in keep]
        if new:
            self.store.add(vectors[keep], [it.to_dict() for it in new], len(self.items))
            self.items.extend(new)
            self._shas = seen
        return new

    def save(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        centroids = np.asarray(self.centroids, np.float32)
        atomic_write(self.root / "centroids.npy", lambda tmp: np.save(tmp, centroids))
        atomic_json(self.root / "calibration.json", self.calibration.to_dict(), indent=1)
        manifest = {**self.manifest, **self.store.describe(), "known": self.known}
        atomic_json(self.root / "index.json", manifest, indent=1)
        self.store.save(self.root)
        columns = {c: [getattr(it, c) for it in self.items] for c in _COLUMNS}
        atomic_json(self.root / "items.json", columns)  # the commit point

    @classmethod
    def load(cls, root: str | Path) -> Index:
        root = Path(root)
        if not (root / "index.json").is_file():
            raise ValueError(f"{root}: no index (build one with `harmonixr index build`)")
        manifest = json.loads((root / "index.json").read_text())
        if manifest.get("format") != FORMAT:
            raise ValueError(
                f"{root}: index format {manifest.get('format')}, expected {FORMAT} (an index from "
                "an earlier Harmonixr, which did not record its scoring back-end); rebuild it "
                "with `harmonixr index build RUN --data CACHE`"
            )
        if manifest.get("backend") != BACKEND:
            raise ValueError(
                f"{root}: scored by {manifest.get('backend')!r}, this Harmonixr scores by "
                f"{BACKEND!r}; rebuild it with `harmonixr index build RUN --data CACHE`"
            )
        columns = json.loads((root / "items.json").read_text())
        n = len(columns["sha256"])
        for c, default in _OPTIONAL.items():  # columns added later read as empty
            columns.setdefault(c, [default] * n)
        items = [Item(*vals) for vals in zip(*(columns[c] for c in _COLUMNS), strict=True)]
        store: VectorStore
        if manifest["store"] == "milvus":
            store = MilvusStore(manifest["uri"], manifest["collection"], int(manifest["dim"]))
        else:
            store = FaissStore.load(root, manifest, len(items))
        calibration = Calibration.from_dict(json.loads((root / "calibration.json").read_text()))
        centroids = np.load(root / "centroids.npy")
        return cls(root, items, store, centroids, manifest["known"], calibration, manifest)

    def info(self) -> dict[str, Any]:
        per = Counter(it.composer for it in self.items)
        m = self.manifest
        return {
            "root": str(self.root),
            "items": len(self),
            "dim": self.dim,
            **self.store.describe(),
            "model_sha256": m.get("model_sha256"),
            "backend": m.get("backend"),
            "built": m.get("built"),
            "source": m.get("source"),
            "known_composers": [
                {"composer": c, "train_pieces": m.get("train_pieces", {}).get(c, 0)}
                for c in self.known
            ],
            "pieces_per_composer": dict(per.most_common()),
            "named_composers": list(self.calibration.composers),
            "min_works": self.calibration.min_works,
            "barely_known": self.barely_known,
            "unknown_model": self.calibration.unknown_source,
            "operating_point": self.calibration.operating_point,
            "default_prior": self.calibration.default_prior,
            "open_set": not self.calibration.open_set_withdrawn,
            "open_set_note": self.calibration.open_set_note,
            "calibration": self.calibration.report,
            "threshold": self.calibration.threshold,
            "notes": list(self.calibration.notes),
        }


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
    index = Index(tmp, [], vectors, centroids, known, calibration, manifest)
    index.add(emb, items)
    index.save()
    old = _build_dir(run_dir, "old")
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    index.root = final
    return index


def check_index(index: Index, run: Run) -> None:
    """Refuse an index built with other weights than the run holds now: its vectors,
    centroids and calibration belong to another model."""
    if index.manifest.get("model_sha256") != run.weights_sha256():
        raise ValueError(
            f"{index.root}: built with other weights than {run.weights_path}; rebuild it "
            f"(harmonixr index build {run.root})"
        )


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
    seen = set(index._shas)
    for n, p in enumerate(paths):
        path = str(Path(p).resolve())
        try:
            sha = sha256_file(path)
        except OSError as exc:
            errors[n] = MidiError(path, UNREADABLE, exc.strerror or str(exc))
            continue
        if sha in seen:
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
            items.append(Item(composer, Path(path).stem, sha, path, sha))
    if items:
        index.add(run.embed(tensors, encoder), items)
        index.save()
    ordered = tuple(errors[n] for n in sorted(errors))
    return AddResult(tuple(it.path for it in items), tuple(duplicates), ordered)
