"""User files as the model sees them: folders expanded, each file read, checked, parsed and
tensorized in a child process (so a file that crashes the parser cannot take the caller down)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from harmonixr._pool import RobustPool
from harmonixr.midi.corpora import READ_SUFFIXES, music_files
from harmonixr.midi.load import (
    MAX_FILE_BYTES,
    MAX_SECONDS,
    PARSE_TIMEOUT,
    MidiError,
    Tensorized,
    failure_reason,
    load_job,
)
from harmonixr.midi.load import parser_pool as make_pool
from harmonixr.midi.tensorize import TensorConfig

ProgressFn = Callable[[int, int, str], None]  # (done, total, the file just done)


def parser_pool(workers: int | None = None, timeout: float = PARSE_TIMEOUT) -> RobustPool:
    """Child processes that parse user files, kept for many calls (default up to 2); they
    fork on Linux (``midi.load.parser_context``)."""
    n = workers or min(2, os.cpu_count() or 1)
    return make_pool(load_job, workers=n, timeout=timeout)


def load_files(
    paths: Sequence[str | os.PathLike[str]],
    config: TensorConfig,
    *,
    workers: int | None = None,
    pool: RobustPool | None = None,
    progress: ProgressFn | None = None,
) -> list[Tensorized | MidiError]:
    """Each file read, checked, parsed and tensorized in a child process: the tensor, or the
    :class:`MidiError` that ``preprocess`` would give, in input order. ``pool`` (from
    :func:`parser_pool`) reuses its processes; without one, ``workers`` fresh ones (default
    up to 2) start and stop with the call."""
    names = [os.fspath(p) for p in paths]
    out: list[Tensorized | MidiError | None] = [None] * len(names)
    if not names:
        return []
    jobs = [(p, config, MAX_SECONDS, MAX_FILE_BYTES) for p in names]
    own = pool is None
    if pool is None:
        pool = parser_pool(max(1, min(workers or 2, os.cpu_count() or 1, len(names))))
    try:
        for done, outcome in enumerate(pool.imap(jobs), 1):
            if outcome.ok and isinstance(outcome.value, Tensorized):
                out[outcome.index] = outcome.value
            else:
                out[outcome.index] = MidiError(names[outcome.index], *failure_reason(outcome))
            if progress:
                progress(done, len(names), names[outcome.index])
    finally:
        if own:
            pool.close()
    return out  # type: ignore[return-value]


def expand_midi_paths(args: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Files as given, folders replaced by the MIDI files and scores inside them (recursively,
    sorted, as ``preprocess`` finds them)."""
    out: list[Path] = []
    for arg in args:
        p = Path(arg)
        if p.is_dir():
            found = music_files(p)
            if not found:
                raise ValueError(f"{p}: no MIDI or score files ({', '.join(READ_SUFFIXES)}) inside")
            out.extend(found)
        else:
            out.append(p)
    return out
