"""The persistent index of a run (``RUN/index/``): its on-disk format, its record (``Item``) and
the :class:`Index` that loads, searches, extends and saves it. ``search/index.py`` builds one
from a run and its cache and adds files to it (and re-exports these names).

```
RUN/index/
  index.json        what built it: model hash, store, dimension, centroid composers, counts
  items.json        the metadata table, one column per field (row i = vector id i)
  centroids.npy     (C, D) unit composer centroids, from the run's TRAIN split only
  calibration.json  probe + calibration: TRAIN and VALIDATION splits only (evaluate/calibrate.py)
  embeddings.npy    (N, D) float32 (FAISS store) [+ hnsw.faiss above HNSW_MIN vectors]
  works.npz         melodic sketches of the pieces, for known works (``search/works.py``)
  works.json        the known-work rule fitted on VALIDATION (absent: identify is unavailable)
```

No pickle anywhere: JSON, ``.npy`` and ``faiss.write_index``. ``items.json`` is written last
and is the commit point of an ``add``: vectors past its length (an interrupted add) are
ignored on load and overwritten by the next one. The test split is never read for a choice."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from harmonixr._files import atomic_json, atomic_write
from harmonixr.evaluate.calibrate import Calibration
from harmonixr.results import Attribution, Identification, Match, Passage
from harmonixr.search.store import FaissStore, MilvusStore, VectorStore
from harmonixr.search.works import FIT_FILE, PRINTS_FILE, Sketch, WorkFit, WorkPrints, given_work
from harmonixr.train.rundir import Run

INDEX_DIR = "index"
# 2: named composers, probe and operating point in calibration.json; 3: the scoring back-end
FORMAT = 3
UNKNOWN = "unknown"  # the composer of the "someone else" row
BARELY_SHOWN = 3  # barely known composers listed after an answer, at most
# How every question scores two embeddings: the cosine of the vectors ``embed`` returns (a
# statistics model's head is trained for it), so users' own tools score as ``verify`` does.
BACKEND = "cosine"


@dataclass(frozen=True)
class Item:
    """One indexed piece, as ``items.json`` stores it; a search hands it out as a
    :class:`~harmonixr.results.Match` (:meth:`match`: all but ``group``, with its similarity)."""

    composer: str
    title: str
    group: str
    path: str
    sha256: str
    performer: str = ""  # who played it, where the corpus says
    source: str = ""  # the corpus, edition or converter it came from
    work: str = ""  # the composition it renders (search/works.py); "" when the corpus is silent

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    def match(self, similarity: float) -> Match:
        # Match's fields that the index stores (its same_composer is the calibration's to give)
        shown = {f.name: getattr(self, f.name) for f in fields(Match) if hasattr(self, f.name)}
        shown.pop("similarity", None)
        return Match(similarity=similarity, **shown)


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
        works: WorkPrints | None = None,
        work_fit: WorkFit | None = None,
    ) -> None:
        self.root, self.items, self.store = root, items, store
        self.works, self.work_fit = works, work_fit  # known works: None when not built
        self.works_note = ""  # why an index's known works were not loaded
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

    def search(self, queries: np.ndarray, k: int, per_work: int | None = None) -> list[list[Match]]:
        """The ``k`` most similar items per query, as matches (cosine similarity, best first); with
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
                    hits.append(it.match(float(s)))
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

    def attributions(
        self,
        z: np.ndarray,
        k: int,
        prior_unknown: float | None = None,
        work: Identification | None = None,
    ) -> list[Attribution]:
        """``attribute``'s answer for one ``(1, D)`` embedding: the one table of the named
        composers and "someone else" (unless withdrawn), its most probable row first, then up to
        :data:`BARELY_SHOWN` barely known composers closer than the best named one. With a
        named ``work`` (``identify``) the table is the one given the work: its composer takes
        the work's probability, the model's own table shares the rest; a composer the model
        cannot name becomes a row of its own (``known`` still, never ``barely_known``)."""
        cal = self.calibration
        every, sims, probs, unknown = self.scores(z, prior_unknown)
        # the model's own ranking orders the rows (a work of probability 1 leaves every other
        # row at 0, and ties must not fall back to the composers' alphabetical order)
        own = np.argsort(-probs[0], kind="stable")
        probs, unknown, column = given_work(probs, unknown, cal.composers, work)
        order = [int(c) for c in own[: max(0, k)]]
        answer = int(cal.decide(probs, unknown)[0])
        if answer >= 0 and answer not in order:
            order.insert(0, answer)  # the answer is always listed, whatever k
        source = {column: work.work} if work is not None and column >= 0 else {}
        rows = [
            Attribution(
                cal.composers[c], float(probs[0, c]), float(sims[0, c]), from_work=source.get(c, "")
            )
            for c in order
        ]
        if not cal.open_set_withdrawn:  # see Harmonixr.open_set
            rows.append(Attribution(UNKNOWN, float(unknown[0]), None, known=False))
        if work is not None and work.known and column < 0:  # a composer the model cannot name
            p = float(work.probability)
            rows = [replace(a, probability=a.probability * (1.0 - p)) for a in rows]
            rows.append(Attribution(work.composer, p, None, from_work=work.work))
        first = max(rows, key=lambda a: a.probability)  # the answer: the table's top row
        out = [first, *sorted((a for a in rows if a is not first), key=lambda a: -a.probability)]
        top = float(sims[0].max()) if sims.shape[1] else -1.0
        col = self.barely_known_columns
        shown = {a.composer for a in out}
        close = sorted(
            (c for c in col if every[0, col[c]] > top and c not in shown),
            key=lambda c: -every[0, col[c]],
        )
        return out + [
            Attribution(c, 0.0, float(every[0, col[c]]), known=False, barely_known=True)
            for c in close[:BARELY_SHOWN]
        ]

    def passages(
        self, frame_seconds: float, z: np.ndarray, windows: Sequence[Any]
    ) -> list[Passage]:
        """A timeline: the probabilities of windows' embeddings ``z`` (each window a
        ``model.embed.Window``: ``start`` and ``valid`` frames)."""
        _, _, probs, unknown = self.scores(z)
        return [
            Passage(
                round(w.start * frame_seconds, 3),
                round((w.start + w.valid) * frame_seconds, 3),
                {c: float(p) for c, p in zip(self.calibration.composers, probs[i], strict=True)},
                float(unknown[i]),
            )
            for i, w in enumerate(windows)
        ]

    def identify(self, sketch: Sketch, sha256: str = "") -> Identification:
        """Whether the piece of melodic ``sketch`` (``search/works.py``) renders a composition
        of the index: the piece of highest overlap and the validation-fitted probability; a
        file whose ``sha256`` is indexed is that piece itself."""
        if self.works is None or self.work_fit is None or not len(self):
            why = f" ({self.works_note})" if self.works_note else ""
            raise ValueError(
                f"{self.root}: this index has no known works{why}; give it them with "
                "`harmonixr index works RUN --data CACHE`"
            )
        same = [i for i, it in enumerate(self.items) if sha256 and it.sha256 == sha256]
        overlaps = self.works.overlaps([sketch])[0]
        best = same[0] if same else int(overlaps.argmax())
        p = 1.0 if same else float(self.work_fit.probability(overlaps[best]))
        if not same and overlaps[best] <= 0.0:  # no piece shares a pattern: none is closest
            return Identification(False, p, "", "", 0, 0.0)
        it = self.items[best]
        count = sum(1 for x in self.items if x.work == it.work) if it.work else 1
        return Identification(
            p >= 0.5, p, it.composer, it.title, count, float(overlaps[best]), bool(same), it.path
        )

    @property
    def new_work_note(self) -> str:
        """What the held-out measure (``index measure``) says of answers no known work backs,
        for a user to read beside one; empty before the index is measured."""
        held = self.calibration.report.get("held_out") or {}
        shown = held.get("composer_as_shown") or {}
        acc, ece = shown.get("answer_accuracy_no_work"), shown.get("ece_no_work")
        if not acc or not ece:
            return ""
        return (
            f"no known work backs this answer: measured held out, such answers were right for "
            f"{acc['value']:.0%} of pieces, and their probability was off by {ece['value']:.2f} "
            "on average (ECE)"
        )

    @property
    def barely_known(self) -> list[str]:
        """Composers with a centroid who are never named (too few training works)."""
        return list(self.barely_known_columns)

    # ------------------------------------------------------------ writing

    def add(
        self, vectors: np.ndarray, items: Sequence[Item], sketches: Sequence[Sketch] | None = None
    ) -> list[Item]:
        """Append pieces not present yet (by sha256, also within ``items``); returns those
        added. Incremental: FAISS appends to its index, Milvus upserts. Call :meth:`save`.
        ``sketches`` (one per item) keep known works searchable when the index has them."""
        vectors = np.asarray(vectors, np.float32).reshape(-1, self.dim)
        if self.works is not None and (sketches is None or len(sketches) != len(items)):
            raise ValueError(f"{self.root}: this index knows works; give one sketch per item")
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
            if self.works is not None and sketches is not None:
                self.works.extend([sketches[i] for i in keep])
        return new

    def save(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        centroids = np.asarray(self.centroids, np.float32)
        atomic_write(self.root / "centroids.npy", lambda tmp: np.save(tmp, centroids))
        atomic_json(self.root / "calibration.json", self.calibration.to_dict(), indent=1)
        manifest = {**self.manifest, **self.store.describe(), "known": self.known}
        atomic_json(self.root / "index.json", manifest, indent=1)
        self.store.save(self.root)
        if self.works is not None:
            self.works.save(self.root)
        if self.work_fit is not None:
            self.work_fit.save(self.root)
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
        works = fit = None
        note = ""
        if (root / PRINTS_FILE).is_file() and (root / FIT_FILE).is_file():
            try:  # known works of another rule are not used (index works remakes them)
                works, fit = WorkPrints.load(root, len(items)), WorkFit.load(root)
            except ValueError as exc:
                works, fit, note = None, None, str(exc)
        known = manifest["known"]
        index = cls(root, items, store, centroids, known, calibration, manifest, works, fit)
        index.works_note = note
        return index

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
            "new_work_note": self.new_work_note,
            "calibration": self.calibration.report,
            "threshold": self.calibration.threshold,
            "notes": list(self.calibration.notes),
            "known_works": None
            if self.work_fit is None
            else {**self.work_fit.to_dict(), "threshold": self.work_fit.threshold},
        }


def check_index(index: Index, run: Run) -> None:
    """Refuse an index built with other weights than the run holds now: its vectors,
    centroids and calibration belong to another model."""
    if index.manifest.get("model_sha256") != run.weights_sha256():
        raise ValueError(
            f"{index.root}: built with other weights than {run.weights_path}; rebuild it "
            f"(harmonixr index build {run.root})"
        )
