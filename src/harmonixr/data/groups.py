"""Leak-free units across every source in one cache.

A unit is what a split may never cut. Each reader already names a group per file (a work, a
MAESTRO recording, a recital); a cache may hold several corpora, so the final unit is the union
(connected components) of every file sharing any of:

- its reader's ``group`` (ASAP: work ∪ recording ∪ recital; a manifest: the ``work`` key);
- its ``work`` (one key per composition across sources and editions);
- each of its ``links`` (another corpus's name of the same composition, e.g. the ASAP folder
  of a score edition);
- its content (``sha256``): one file stored under two names.

The unit is named by its smallest member name, so it depends on the corpus alone (not on the
order files were cached), and adding a file changes only the unit it joins.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from harmonixr.midi.corpora import UnionFind


class Row(Protocol):
    path: str
    group: str
    work: str
    sha256: str | None
    links: str


_SHA = "\U0010ffffsha:"  # content keys sort after every name, so they never name a unit


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


def join_groups(rows: Iterable[Row]) -> dict[str, str]:
    """path → the name of its leak-free unit."""
    rows = list(rows)
    uf = UnionFind()
    for r in rows:
        names = names_of(r)
        for other in names[1:]:
            uf.union(names[0], other)
        uf.find(names[0])
    return {r.path: uf.find(r.group) for r in rows}
