"""The tensor cache (docs/architecture.md): ``preprocess`` fills it, the store
(``data/store.py``: :class:`TensorCache`, its rows and schema) keeps it; the store's names are
importable from here too.

``preprocess`` lists a corpus, hashes each file, parses and tensorizes the new ones in a robust
process pool, and the parent alone writes: tensor to a temporary name, rename, then the row.
Killed at any moment, a rerun continues where it stopped."""

from __future__ import annotations

import os
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harmonixr._files import sha256_file
from harmonixr.data.store import LABEL_COLUMNS, SCHEMA, CachedPiece, TensorCache, tensor_key
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

# the store's names, for the callers that import them from here
__all__ = [
    "LABEL_COLUMNS",
    "RETRY_REASONS",
    "SCHEMA",
    "CachedPiece",
    "PreprocessSummary",
    "ProgressFn",
    "TensorCache",
    "preprocess",
    "tensor_key",
]

# reasons that may not recur (a worker crash or hang, a bug): a rerun tries these files again
RETRY_REASONS = (CRASHED, TIMEOUT, INTERNAL_ERROR)


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
    names = ("composer", "title", '"group"', *LABEL_COLUMNS)
    cache.db.execute(  # committed once after the scan
        f"UPDATE pieces SET {', '.join(f'{c}=?' for c in names)} "
        f"WHERE path=? AND ({' OR '.join(f'{c}!=?' for c in names)})",
        labels + (piece.path,) + labels,
    )


def _rows_for(cache: TensorCache, paths: list[str]) -> list[sqlite3.Row]:
    wanted = set(paths)
    return [
        r
        for r in cache.db.execute("SELECT path, composer, status, reason, duration_s FROM pieces")
        if r["path"] in wanted
    ]
