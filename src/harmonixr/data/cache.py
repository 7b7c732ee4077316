"""The tensor cache (docs/architecture.md): content-addressed ``.npy`` tensors and a SQLite index.

``preprocess`` lists a corpus, hashes each file, parses and tensorizes the new ones in a robust
process pool, and the parent alone writes: tensor to a temporary name, rename, then the row.
Killed at any moment, a rerun continues where it stopped.

One module, over 400 lines: the cache's SQLite schema, its migration and ``preprocess`` (the
only writer) share the row format and the resume rules."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from harmonixr._files import TEMP_GLOB, atomic_json, atomic_write, sha256_file
from harmonixr.midi.corpora import Listing, Piece, read_corpus
from harmonixr.midi.load import (
    CRASHED,
    INTERNAL_ERROR,
    MAX_FILE_BYTES,
    MAX_SECONDS,
    TIMEOUT,
    UNREADABLE,
    Tensorized,
    failure_reason,
    load_job,
)
from harmonixr.midi.tensorize import TensorConfig

SCHEMA = """
CREATE TABLE IF NOT EXISTS pieces (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    sha256 TEXT,
    composer TEXT NOT NULL,
    title TEXT NOT NULL,
    "group" TEXT NOT NULL,
    n_frames INTEGER,
    n_notes INTEGER,
    dropped_notes INTEGER,
    duration_s REAL,
    status TEXT NOT NULL CHECK (status IN ('ok', 'skipped')),
    reason TEXT,
    detail TEXT,
    tensor TEXT,
    performer TEXT NOT NULL DEFAULT '',
    source TEXT NOT NULL DEFAULT '',
    work TEXT NOT NULL DEFAULT '',
    kind TEXT NOT NULL DEFAULT '',
    licence TEXT NOT NULL DEFAULT '',
    edition TEXT NOT NULL DEFAULT '',
    links TEXT NOT NULL DEFAULT '',
    corpus TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS pieces_sha ON pieces (sha256);
CREATE INDEX IF NOT EXISTS pieces_composer ON pieces (composer);
"""

# label columns added after the first schema (older caches get them, empty)
LABEL_COLUMNS = ("performer", "source", "work", "kind", "licence", "edition", "links", "corpus")
# reasons that may not recur (a worker crash or hang, a bug): a rerun tries these files again
RETRY_REASONS = (CRASHED, TIMEOUT, INTERNAL_ERROR)


@dataclass(frozen=True)
class CachedPiece:
    """A row of the cache index."""

    id: int
    path: str
    sha256: str | None
    composer: str
    title: str
    group: str
    n_frames: int | None
    n_notes: int | None
    dropped_notes: int | None
    duration_s: float | None
    status: str
    reason: str | None
    detail: str | None
    tensor: str | None
    performer: str = ""
    source: str = ""
    work: str = ""  # "" means the group is the work
    kind: str = ""  # performance | score | "" (unknown)
    licence: str = ""
    edition: str = ""
    links: str = ""  # other names of the composition ("|"-separated), joined by data.groups
    corpus: str = ""  # the reader that listed it (asap, manifest, folder, ...)

    @property
    def origin(self) -> str:
        """Where a piece comes from, for per-source counts: a manifest's source (and converter),
        else the corpus reader (ASAP's MAESTRO recordings are not sources)."""
        return self.source if self.corpus == "manifest" else (self.corpus or self.source)

    @property
    def work_id(self) -> str:
        return self.work or self.group


@dataclass
class PreprocessSummary:
    """What one ``preprocess`` run did."""

    seen: int = 0
    ok: int = 0  # rows ok after the run (new + already cached)
    new: int = 0  # tensorized in this run
    reused: int = 0  # identical to another file (cached before or tensorized in this run)
    already: int = 0  # rows present from an earlier run
    skipped: Counter[str] = field(default_factory=Counter)
    listing_skipped: list[tuple[str, str]] = field(default_factory=list)
    composers: int = 0
    hours: float = 0.0
    seconds: float = 0.0

    @property
    def files_per_second(self) -> float:
        return self.seen / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "seen": self.seen,
            "ok": self.ok,
            "new": self.new,
            "reused": self.reused,
            "already": self.already,
            "skipped": dict(self.skipped),
            "listing_skipped": len(self.listing_skipped),
            "composers": self.composers,
            "hours": round(self.hours, 3),
            "seconds": round(self.seconds, 2),
            "files_per_second": round(self.files_per_second, 1),
        }


class TensorCache:
    """Read access to a cache folder (and the writer's primitives)."""

    def __init__(self, root: str | Path, config: TensorConfig | None = None, create: bool = False):
        self.root = Path(root)
        cfg_path = self.root / "tensor_config.json"
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
            (self.root / "tensors").mkdir(exist_ok=True)
        elif not (self.root / "cache.sqlite").is_file():
            raise ValueError(f"{self.root}: not a Harmonixr cache (no cache.sqlite)")
        if cfg_path.is_file():
            stored = TensorConfig.from_dict(json.loads(cfg_path.read_text()))
            if config is not None and config != stored:
                raise ValueError(
                    f"{self.root}: holds tensors made with {stored}, not {config}; "
                    "use another --out folder"
                )
            config = stored
        elif create:
            config = config or TensorConfig()
            atomic_json(cfg_path, config.to_dict(), indent=2)
        self.config = config or TensorConfig()
        self.db = sqlite3.connect(self.root / "cache.sqlite", timeout=30)
        self.db.row_factory = sqlite3.Row
        if create:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.executescript(SCHEMA)
        self._migrate()
        self.db.execute("PRAGMA synchronous=NORMAL")

    def _migrate(self) -> None:
        """Caches made before performer/source/work existed get the columns (empty)."""
        have = {r[1] for r in self.db.execute("PRAGMA table_info(pieces)")}
        for col in LABEL_COLUMNS:
            if have and col not in have:
                self.db.execute(f"ALTER TABLE pieces ADD COLUMN {col} TEXT NOT NULL DEFAULT ''")
        self.db.commit()

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> TensorCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ reading

    def rows(self, status: str | None = "ok") -> list[CachedPiece]:
        """Rows ordered by path, a key that depends on the corpus alone (not on which worker
        finished first), so splits and pair sets drawn from them depend only on the seed."""
        sql = (
            'SELECT id, path, sha256, composer, title, "group", n_frames, n_notes, '
            "dropped_notes, duration_s, status, reason, detail, tensor, performer, source, work, "
            "kind, licence, edition, links, corpus FROM pieces"
        )
        args: tuple[Any, ...] = ()
        if status is not None:
            sql += " WHERE status = ?"
            args = (status,)
        rows = [CachedPiece(*r) for r in self.db.execute(sql, args)]
        return sorted(rows, key=lambda r: r.path)

    def pieces(self, joined: bool = True) -> list[CachedPiece]:
        """Usable rows ordered by path. With ``joined`` (the default) each row's ``group`` is
        its leak-free unit across every source in the cache (:func:`harmonixr.data.groups.
        join_groups`): one work's editions, its ASAP performances, one recording's or
        recital's pieces and pieces whose melody recurs (scanned once, then stored) share it."""
        rows = self.rows("ok")
        if not joined:
            return rows
        from harmonixr.data.groups import content_joins, join_groups

        unit = join_groups(rows, content_joins(self, rows).links())
        return [replace(r, group=unit[r.path]) for r in rows]

    def tensor_path(self, key: str) -> Path:
        return self.root / "tensors" / key[:2] / f"{key}.npy"

    def tensor_file(self, piece: CachedPiece) -> Path:
        """The tensor file of a row, checked to lie inside ``tensors/`` (the index is data: a
        tampered or foreign ``cache.sqlite`` must not make us read files elsewhere)."""
        if piece.tensor is None:
            raise ValueError(f"{piece.path}: skipped in the cache ({piece.reason})")
        base = (self.root / "tensors").resolve()
        path = (self.root / piece.tensor).resolve()
        if not path.is_relative_to(base):
            msg = (
                f"{self.root / 'cache.sqlite'}: the tensor of {piece.path} is {piece.tensor!r}, "
                f"outside {base}; refusing to read it"
            )
            raise ValueError(msg)
        return path

    def load(self, piece: CachedPiece, mmap: bool = True) -> np.ndarray:
        return np.load(self.tensor_file(piece), mmap_mode="r" if mmap else None)

    def stats(self) -> dict[str, Any]:
        per = self.db.execute(
            "SELECT composer, COUNT(*), SUM(duration_s) FROM pieces WHERE status='ok' "
            "GROUP BY composer ORDER BY COUNT(*) DESC, composer"
        ).fetchall()
        reasons = self.db.execute(
            "SELECT reason, COUNT(*) FROM pieces WHERE status='skipped' GROUP BY reason "
            "ORDER BY COUNT(*) DESC"
        ).fetchall()
        groups, works = self.db.execute(
            'SELECT COUNT(DISTINCT "group"), '
            "COUNT(DISTINCT CASE WHEN work != '' THEN work ELSE \"group\" END) "
            "FROM pieces WHERE status='ok'"
        ).fetchone()
        return {
            "root": str(self.root),
            "tensor_config": self.config.to_dict(),
            "pieces": sum(r[1] for r in per),
            "groups": groups,
            "works": works,
            "hours": sum((r[2] or 0.0) for r in per) / 3600.0,
            "composers": [
                {"composer": r[0], "pieces": r[1], "hours": (r[2] or 0.0) / 3600.0} for r in per
            ],
            "skipped": {r[0]: r[1] for r in reasons},
        }

    def breakdown(self) -> list[dict[str, Any]]:
        """Pieces and works per composer × source × kind (works: distinct ``work_id``)."""
        cells: dict[tuple[str, str, str], tuple[int, set[str]]] = {}
        for r in self.rows("ok"):
            key = (r.composer, r.origin, r.kind)
            n, works = cells.get(key, (0, set()))
            works.add(r.work_id)
            cells[key] = (n + 1, works)
        return [
            {"composer": c, "source": s, "kind": k, "pieces": n, "works": len(w)}
            for (c, s, k), (n, w) in sorted(cells.items())
        ]

    # ------------------------------------------------------------ writing

    def cleanup_temp(self) -> int:
        """Remove temporary tensors left by a killed run."""
        n = 0
        for p in (self.root / "tensors").glob(f"*/{TEMP_GLOB}"):
            p.unlink(missing_ok=True)
            n += 1
        return n

    def write_tensor(self, key: str, tensor: np.ndarray) -> str:
        final = self.tensor_path(key)
        if not final.exists():
            final.parent.mkdir(parents=True, exist_ok=True)
            array = np.ascontiguousarray(tensor, dtype=np.uint8)
            atomic_write(final, lambda tmp: np.save(tmp, array))
        return str(final.relative_to(self.root))

    def put_row(self, piece: Piece, sha: str | None, status: str, **values: Any) -> None:
        self.db.execute(
            'INSERT INTO pieces (path, sha256, composer, title, "group", n_frames, n_notes, '
            "dropped_notes, duration_s, status, reason, detail, tensor, performer, source, work, "
            "kind, licence, edition, links, corpus) "
            f"VALUES ({','.join('?' * 21)}) "
            "ON CONFLICT(path) DO UPDATE SET sha256=excluded.sha256, composer=excluded.composer, "
            'title=excluded.title, "group"=excluded."group", n_frames=excluded.n_frames, '
            "performer=excluded.performer, source=excluded.source, work=excluded.work, "
            "kind=excluded.kind, licence=excluded.licence, edition=excluded.edition, "
            "links=excluded.links, corpus=excluded.corpus, "
            "n_notes=excluded.n_notes, dropped_notes=excluded.dropped_notes, "
            "duration_s=excluded.duration_s, status=excluded.status, reason=excluded.reason, "
            "detail=excluded.detail, tensor=excluded.tensor",
            (
                piece.path,
                sha,
                piece.composer,
                piece.title,
                piece.group,
                values.get("n_frames"),
                values.get("n_notes"),
                values.get("dropped_notes"),
                values.get("duration_s"),
                status,
                values.get("reason"),
                values.get("detail"),
                values.get("tensor"),
                *(getattr(piece, c) for c in LABEL_COLUMNS),
            ),
        )
        self.db.commit()


def tensor_key(sha256: str, config: TensorConfig) -> str:
    return hashlib.sha256(f"{sha256}:{config.key()}".encode()).hexdigest()


def _sha_of(path: str) -> str | None:
    """The file's sha256, or None where it cannot be read."""
    try:
        return sha256_file(path)
    except OSError:
        return None


# ---------------------------------------------------------------- the job


ProgressFn = Callable[[int, int, str], None]


def preprocess(
    source: str | Path,
    out: str | Path,
    *,
    format: str = "auto",
    labels: str | Path | None = None,
    include_scores: bool = False,
    config: TensorConfig = TensorConfig(),
    workers: int | None = None,
    limit: int | None = None,
    timeout: float = 120.0,
    max_seconds: float = MAX_SECONDS,
    max_bytes: int = MAX_FILE_BYTES,
    progress: ProgressFn | None = None,
    listing: Listing | None = None,
    listing_progress: ProgressFn | None = None,
) -> PreprocessSummary:
    """Tensorize a corpus into the cache at ``out``; rerunning continues a killed run. The
    corpus is read as ``read_corpus`` reads ``source`` (``"builtin"``: the built-in corpus,
    whose conversion ``listing_progress`` counts), unless a ``listing`` is given."""
    from harmonixr._pool import run_robust
    from harmonixr.midi.load import parser_context

    t0 = time.perf_counter()
    if listing is None:
        listing = read_corpus(
            source, format, labels, include_scores=include_scores, progress=listing_progress
        )
    pieces = listing.pieces[:limit] if limit is not None else listing.pieces
    summary = PreprocessSummary(seen=len(pieces), listing_skipped=list(listing.skipped))
    cache = TensorCache(out, config, create=True)
    try:
        cache.cleanup_temp()
        retry = ",".join(f"'{r}'" for r in RETRY_REASONS)
        final = f"(status = 'ok' OR reason NOT IN ({retry}))"
        done = {
            r["path"]: r["sha256"]
            for r in cache.db.execute(f"SELECT path, sha256 FROM pieces WHERE {final}")
        }
        known = {  # content already tensorized: sha → row values
            r["sha256"]: dict(r)
            for r in cache.db.execute(
                "SELECT sha256, n_frames, n_notes, dropped_notes, duration_s, status, reason, "
                f"detail, tensor FROM pieces WHERE sha256 IS NOT NULL AND {final}"
            )
        }
        todo: list[tuple[Piece, str]] = []
        twins: dict[str, list[Piece]] = {}  # content met again in this run: done with its first
        count = 0
        for piece in pieces:
            sha = _sha_of(piece.path)
            if piece.path in done and done[piece.path] == sha and sha is not None:
                summary.already += 1
                _refresh_labels(cache, piece)
            elif sha is None:
                cache.put_row(piece, None, "skipped", reason=UNREADABLE, detail="cannot be read")
            elif sha in known:
                _put_copy(cache, piece, sha, known[sha])
                summary.reused += 1
            elif sha in twins:
                twins[sha].append(piece)
                continue
            else:
                todo.append((piece, sha))
                twins[sha] = []
                continue
            count += 1
            if progress:
                progress(count, len(pieces), piece.path)
        cache.db.commit()
        n_workers = max(1, min(workers or (os.cpu_count() or 1), len(todo) or 1))
        jobs = [(p.path, config, max_seconds, max_bytes) for p, _ in todo]
        # parser_context: fork on Linux, so a script without a main guard works here too
        ctx = parser_context()
        for outcome in run_robust(load_job, jobs, workers=n_workers, timeout=timeout, context=ctx):
            piece, sha = todo[outcome.index]
            result = outcome.value if outcome.ok else None
            if isinstance(result, Tensorized):
                row = {
                    "status": "ok",
                    "tensor": cache.write_tensor(tensor_key(sha, config), result.tensor),
                    "n_frames": result.n_frames,
                    "n_notes": result.notes,
                    "dropped_notes": result.dropped_notes,
                    "duration_s": result.duration_s,
                }
                summary.new += 1
            else:
                reason, detail = failure_reason(outcome)
                row = {"status": "skipped", "reason": reason, "detail": detail}
            same = [piece, *twins.pop(sha)]
            summary.reused += len(same) - 1
            for p in same:
                _put_copy(cache, p, sha, row)
                count += 1
                if progress:
                    progress(count, len(pieces), p.path)
        paths = [p.path for p in pieces]
        rows = _rows_for(cache, paths)
        summary.ok = sum(r["status"] == "ok" for r in rows)
        summary.skipped = Counter(r["reason"] for r in rows if r["status"] == "skipped")
        summary.composers = len({r["composer"] for r in rows if r["status"] == "ok"})
        summary.hours = sum(r["duration_s"] or 0.0 for r in rows if r["status"] == "ok") / 3600
    finally:
        cache.close()
    summary.seconds = time.perf_counter() - t0
    return summary


def _put_copy(cache: TensorCache, piece: Piece, sha: str, row: dict[str, Any]) -> None:
    """A row for ``piece`` with the outcome ``row`` (status and values) of identical content."""
    cache.put_row(piece, sha, row["status"], **{k: v for k, v in row.items() if k != "status"})


def _refresh_labels(cache: TensorCache, piece: Piece) -> None:
    labels = tuple(getattr(piece, c) for c in ("composer", "title", "group", *LABEL_COLUMNS))
    cache.db.execute(  # committed once after the scan
        'UPDATE pieces SET composer=?, title=?, "group"=?, performer=?, source=?, work=?, kind=?, '
        "licence=?, edition=?, links=?, corpus=? "
        'WHERE path=? AND (composer!=? OR title!=? OR "group"!=? OR performer!=? OR source!=? '
        "OR work!=? OR kind!=? OR licence!=? OR edition!=? OR links!=? OR corpus!=?)",
        labels + (piece.path,) + labels,
    )


def _rows_for(cache: TensorCache, paths: list[str]) -> list[sqlite3.Row]:
    wanted = set(paths)
    return [
        r
        for r in cache.db.execute("SELECT path, composer, status, reason, duration_s FROM pieces")
        if r["path"] in wanted
    ]
