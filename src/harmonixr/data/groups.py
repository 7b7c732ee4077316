"""Leak-free units across every source in one cache.

A unit is what a split may never cut. Each reader already names a group per file (a work, a
MAESTRO recording, a recital); a cache may hold several corpora, so the final unit is the union
(connected components) of every file sharing any of:

- its reader's ``group`` (ASAP: work ∪ recording ∪ recital; a manifest: the ``work`` key);
- its ``work`` (one key per composition across sources and editions);
- each of its ``links`` (another corpus's name of the same composition, e.g. the ASAP folder
  of a score edition);
- its content (``sha256``): one file stored under two names;
- its **melody**: two files whose interval patterns overlap by :data:`~harmonixr.data.melody.
  THRESHOLD` or more (``data.melody``): one piece under two titles or two composers' names,
  a number of one manuscript reused in another, a theme re-voiced in another key.

The unit is named by its smallest member name, so it depends on the corpus alone (not on the
order files were cached or scanned).

**What adding a file can change.** Every join is a relation between two files that depends on
those two alone (names, hashes, and an overlap measured on the pair against a fixed
threshold); none depends on corpus-wide statistics. So adding a file F adds only relations
that involve F: every unit F touches merges into F's unit (renamed to its smallest member),
and every other unit keeps its members and its name. No join between two other files can
break or appear. Removing F is the converse: only F's unit can split. (Were the threshold
re-estimated from each corpus's distribution, adding F could move it and break or make joins
anywhere; that is why it is a constant.) ``fold_split`` deals units by a hash of their name,
so a split moves only the unit F joined; ``tests/test_groups.py`` checks both.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from harmonixr.data import melody
from harmonixr.midi.corpora import UnionFind
from harmonixr.midi.tensorize import TensorConfig


class Row(Protocol):
    path: str
    group: str
    work: str
    sha256: str | None
    links: str


class CachedRow(Row, Protocol):
    """A cache row (``data.cache.CachedPiece``), as the melody joins read it."""

    composer: str
    title: str
    tensor: str | None


class Cache(Protocol):
    """What the melody joins use of a ``data.cache.TensorCache``."""

    db: sqlite3.Connection
    config: TensorConfig

    def load(self, piece: Any, mmap: bool = True) -> np.ndarray: ...


_SHA = "\U0010ffffsha:"  # content keys sort after every name, so they never name a unit

# names every grouping rule at once; split manifests record it (data.splits)
GROUPING = f"names+sha+{melody.RULE}@{melody.THRESHOLD:g}"


def names_of(row: Row) -> list[str]:
    """Every name under which ``row``'s composition or recording is known."""
    names = [row.group]
    if getattr(row, "work", ""):
        names.append(row.work)
    names += [x for x in (getattr(row, "links", "") or "").split("|") if x]
    sha = getattr(row, "sha256", None)
    if sha:
        names.append(_SHA + sha)
    return names


def join_groups(rows: Iterable[Row], content: Iterable[tuple[str, str]] = ()) -> dict[str, str]:
    """path → the name of its leak-free unit. ``content``: pairs of tensor names (a row's
    ``tensor``) whose melody overlaps (:func:`content_joins`)."""
    rows = list(rows)
    uf = UnionFind()
    group_of_tensor: dict[str, str] = {}
    for r in rows:
        names = names_of(r)
        for other in names[1:]:
            uf.union(names[0], other)
        uf.find(names[0])
        tensor = getattr(r, "tensor", None)
        if tensor:
            group_of_tensor.setdefault(tensor, r.group)
    for a, b in content:
        if a in group_of_tensor and b in group_of_tensor:
            uf.union(group_of_tensor[a], group_of_tensor[b])
    return {r.path: uf.find(r.group) for r in rows}


# ---------------------------------------------------------------- joins by melody, stored

CONTENT_SCHEMA = """
CREATE TABLE IF NOT EXISTS content_pairs (
    a TEXT NOT NULL, b TEXT NOT NULL, overlap REAL NOT NULL, line TEXT NOT NULL,
    PRIMARY KEY (a, b)
);
CREATE TABLE IF NOT EXISTS content_scan (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class ContentPair:
    """Two tensors (a cache row's ``tensor``) whose melody overlaps past the threshold."""

    a: str
    b: str
    overlap: float
    line: str  # top | bass | all: where they share most


@dataclass(frozen=True)
class ContentJoins:
    """A cache's scan by melody: its pairs, and the overlap distribution between units."""

    pairs: tuple[ContentPair, ...]
    compared: int  # pairs of pieces in different units (by name and hash) compared
    p9999: float  # their 99.99th percentile of overlap
    p999: float
    seconds: float  # how long the scan took (fingerprints and pairs), when it was made
    read_back: bool = False  # stored by an earlier scan of the same tensors and units
    rule: str = GROUPING
    threshold: float = melody.THRESHOLD

    def links(self) -> list[tuple[str, str]]:
        return [(p.a, p.b) for p in self.pairs]


def _digest(tensors: Sequence[str], units: Sequence[str]) -> str:
    h = hashlib.sha256(GROUPING.encode())
    for t, u in zip(tensors, units, strict=True):
        h.update(f"\x00{t}\x01{u}".encode())
    return h.hexdigest()


def content_joins(cache: Cache, rows: Sequence[CachedRow]) -> ContentJoins:
    """The melody pairs of ``rows`` (a cache's usable rows, their own groups): read back from
    the cache when it was scanned with these tensors and name units, else scanned now and
    stored (a read-only cache is scanned each time)."""
    by_name = join_groups(rows)
    unit_of: dict[str, str] = {}
    first: dict[str, CachedRow] = {}
    for r in rows:
        if r.tensor and r.tensor not in first:
            first[r.tensor], unit_of[r.tensor] = r, by_name[r.path]
    tensors = sorted(first)
    units = [unit_of[t] for t in tensors]
    digest = _digest(tensors, units)
    stored = _read(cache, digest)
    if stored is not None:
        return stored
    t0 = time.perf_counter()
    fps = [
        melody.fingerprint(cache.load(first[t]), cache.config.low_note, cache.config.frame_ms)
        for t in tensors
    ]
    found = melody.scan(fps, units)
    joins = ContentJoins(
        pairs=tuple(ContentPair(tensors[i], tensors[j], v, line) for i, j, v, line in found.pairs),
        compared=found.compared,
        p9999=found.percentile(99.99),
        p999=found.percentile(99.9),
        seconds=time.perf_counter() - t0,
    )
    _write(cache, digest, joins)
    return joins


def _read(cache: Cache, digest: str) -> ContentJoins | None:
    try:
        row = cache.db.execute("SELECT value FROM content_scan WHERE key = 'state'").fetchone()
    except sqlite3.OperationalError:  # no such table: never scanned
        return None
    if row is None:
        return None
    state = json.loads(row[0])
    if state.get("digest") != digest:
        return None
    pairs = tuple(
        ContentPair(a, b, overlap, line)
        for a, b, overlap, line in cache.db.execute(
            "SELECT a, b, overlap, line FROM content_pairs ORDER BY a, b"
        )
    )
    return ContentJoins(
        pairs, state["compared"], state["p9999"], state["p999"], state["seconds"], read_back=True
    )


def _write(cache: Cache, digest: str, joins: ContentJoins) -> None:
    state = {
        "digest": digest,
        "rule": joins.rule,
        "compared": joins.compared,
        "p9999": joins.p9999,
        "p999": joins.p999,
        "seconds": round(joins.seconds, 2),
    }
    try:
        with cache.db:  # one transaction: pairs and state change together
            cache.db.executescript(CONTENT_SCHEMA)
            cache.db.execute("DELETE FROM content_pairs")
            cache.db.executemany(
                "INSERT INTO content_pairs (a, b, overlap, line) VALUES (?, ?, ?, ?)",
                [(p.a, p.b, p.overlap, p.line) for p in joins.pairs],
            )
            cache.db.execute(
                "INSERT OR REPLACE INTO content_scan (key, value) VALUES ('state', ?)",
                (json.dumps(state),),
            )
    except sqlite3.OperationalError:  # a read-only cache: the scan is kept in memory only
        pass


def content_report(rows: Sequence[CachedRow], joins: ContentJoins) -> dict[str, Any]:
    """What the melody joins did to a cache's units, for ``harmonixr info``: units before and
    after, and every pair that joined two units (strongest first)."""
    by_name = join_groups(rows)
    final = join_groups(rows, joins.links())
    first: dict[str, CachedRow] = {}
    for r in rows:
        if r.tensor:
            first.setdefault(r.tensor, r)
    across = [
        p
        for p in joins.pairs
        if p.a in first and p.b in first and by_name[first[p.a].path] != by_name[first[p.b].path]
    ]
    across.sort(key=lambda p: (-p.overlap, p.a, p.b))

    def piece(r: CachedRow) -> dict[str, Any]:
        return {"composer": r.composer, "title": r.title, "path": r.path}

    return {
        "rule": joins.rule,
        "threshold": joins.threshold,
        "units_by_name": len(set(by_name.values())),
        "units": len(set(final.values())),
        "compared": joins.compared,
        "p99_99": joins.p9999,
        "p99_9": joins.p999,
        "seconds": round(joins.seconds, 2),
        "joins": [
            {
                "overlap": round(p.overlap, 3),
                "line": p.line,
                "a": piece(first[p.a]),
                "b": piece(first[p.b]),
            }
            for p in across
        ],
    }
