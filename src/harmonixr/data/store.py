"""The tensor cache's store (docs/architecture.md): content-addressed ``.npy`` tensors under
``tensors/`` and a SQLite index of rows (``cache.sqlite``), its schema and migration, and the
primitives its one writer uses (``data/cache.py``: ``preprocess``)."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from harmonixr._files import TEMP_GLOB, atomic_json, atomic_write
from harmonixr.midi.corpora import Piece
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
    corpus TEXT NOT NULL DEFAULT '',
    movement TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS pieces_sha ON pieces (sha256);
CREATE INDEX IF NOT EXISTS pieces_composer ON pieces (composer);
"""

# label columns added after the first schema (older caches get them, empty)
LABEL_COLUMNS = (
    "performer",
    "source",
    "work",
    "kind",
    "licence",
    "edition",
    "links",
    "corpus",
    "movement",
)
_COLUMNS = (
    'path, sha256, composer, title, "group", n_frames, n_notes, dropped_notes, duration_s, '
    "status, reason, detail, tensor, " + ", ".join(LABEL_COLUMNS)
)


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
    movement: str = ""  # which movement of ``work`` (manifest); "" when the file is all of it

    @property
    def origin(self) -> str:
        """Where a piece comes from, for per-source counts: a manifest's source (and converter),
        else the corpus reader (ASAP's MAESTRO recordings are not sources)."""
        return self.source if self.corpus == "manifest" else (self.corpus or self.source)

    @property
    def work_id(self) -> str:
        return self.work or self.group

    @property
    def composition_names(self) -> list[str]:
        """Names of the one composition the file renders (a movement where the corpus says):
        a file shares its composition with every file that shares one of these names (its
        ASAP folder, or the manifest's work and movement, and the links between them)."""
        own = f"{self.work_id} / {self.movement}" if self.movement else self.work_id
        return [own, *(x for x in self.links.split("|") if x)]


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
        sql = f"SELECT id, {_COLUMNS} FROM pieces"
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
        names = _COLUMNS.split(", ")
        update = ", ".join(f"{c}=excluded.{c}" for c in names if c != "path")
        self.db.execute(
            f"INSERT INTO pieces ({_COLUMNS}) VALUES ({','.join('?' * len(names))}) "
            f"ON CONFLICT(path) DO UPDATE SET {update}",
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
