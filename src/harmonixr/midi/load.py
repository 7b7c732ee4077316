"""Reading MIDI with symusic, checked, and optionally in a child process.

One module, over 400 lines: every way a question reaches a tensor (bytes, a path, a score
rendered to MIDI, a Score, a tensor given directly) shares its checks and its one list of
failure reasons, which a split would scatter."""

from __future__ import annotations

import os
import sys
import warnings
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from harmonixr._pool import Outcome
from harmonixr.midi.scores import ScoreLimits, is_score
from harmonixr.midi.tensorize import TensorConfig, Tensorized, TooDense, tensorize_score

if TYPE_CHECKING:
    import multiprocessing.context

    from harmonixr._pool import RobustPool

MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_SECONDS = 4 * 3600.0
PARSE_TIMEOUT = 60.0  # seconds a child process may take over one file

# Skip reasons, one per kind of bad input (stored in the cache and counted in summaries).
EMPTY = "empty"
NOT_MIDI = "not_midi"
TRUNCATED = "truncated"
PARSE_ERROR = "parse_error"
NO_NOTES = "no_notes"
NO_NOTES_IN_RANGE = "no_notes_in_range"
DRUMS_ONLY = "drums_only"
TOO_LARGE = "too_large"
TOO_LONG = "too_long"
SCORE_ERROR = "score_error"  # a score (MusicXML, kern, MEI) the converter could not render
TOO_COMPLEX = "too_complex"  # beyond the bounds on nesting, notes as played, or memory
UNSAFE_XML = "unsafe_xml"  # XML entities or a DTD of its own (refused before any converter)

TOO_SHORT = "too_short"  # less sounding music than the model can judge
MIN_SOUNDING_S = 5.0  # seconds during which at least one note sounds
TOO_DENSE = "too_dense"  # notes that would cost too much work (thousands of hours-long notes)
CRASHED = "crashed"
TIMEOUT = "timeout"
CANCELLED = "cancelled"  # the caller stopped waiting (a service's client hung up)
UNREADABLE = "unreadable"
INTERNAL_ERROR = "internal_error"


class MidiError(ValueError):
    """A MIDI file that cannot be used; ``reason`` is one of the skip reasons above."""

    def __init__(self, path: str | PathLike[str] | None, reason: str, detail: str = "") -> None:
        self.path = None if path is None else str(path)
        self.reason = reason
        self.detail = detail
        where = self.path or "<bytes>"
        msg = f"{where}: {reason}" + (f" ({detail})" if detail else "")
        super().__init__(msg)

    def to_dict(self) -> dict[str, str | None]:
        return {"path": self.path, "reason": self.reason, "detail": self.detail}


def unwrap_rmid(data: bytes, path: str | PathLike[str] | None = None) -> bytes:
    """The standard MIDI file inside a RIFF RMID wrapper (``.rmi``): the payload of its ``data``
    chunk; any other bytes are returned unchanged."""
    if not (data[:4] == b"RIFF" and data[8:12] == b"RMID"):
        return data
    pos = 12
    while pos + 8 <= len(data):
        cid, size = data[pos : pos + 4], int.from_bytes(data[pos + 4 : pos + 8], "little")
        if cid == b"data":
            if pos + 8 + size > len(data):
                raise MidiError(path, TRUNCATED, "RIFF 'data' chunk is cut short")
            return data[pos + 8 : pos + 8 + size]
        pos += 8 + size + (size & 1)  # RIFF chunks are padded to an even length
    raise MidiError(path, NOT_MIDI, "RIFF RMID file without a 'data' chunk")


def check_midi_bytes(
    data: bytes, path: str | PathLike[str] | None = None, max_bytes: int = MAX_FILE_BYTES
) -> None:
    """Cheap structural check: header, then every chunk length fits inside the file."""
    if len(data) == 0:
        raise MidiError(path, EMPTY, "file has 0 bytes")
    if len(data) > max_bytes:
        raise MidiError(path, TOO_LARGE, f"{len(data)} bytes > {max_bytes}")
    data = unwrap_rmid(data, path)
    offset = 0
    if data[offset : offset + 4] != b"MThd":
        raise MidiError(path, NOT_MIDI, "does not start with the MIDI header 'MThd'")
    if len(data) < offset + 14:
        raise MidiError(path, TRUNCATED, "header is cut short")
    header_len = int.from_bytes(data[offset + 4 : offset + 8], "big")
    n_tracks = int.from_bytes(data[offset + 10 : offset + 12], "big")
    pos = offset + 8 + header_len
    for i in range(n_tracks):
        if pos + 8 > len(data):
            raise MidiError(path, TRUNCATED, f"track {i + 1} of {n_tracks} is missing")
        length = int.from_bytes(data[pos + 4 : pos + 8], "big")
        if pos + 8 + length > len(data):
            raise MidiError(path, TRUNCATED, f"track {i + 1} of {n_tracks} is cut short")
        pos += 8 + length


def read_bytes(path: str | PathLike[str], max_bytes: int = MAX_FILE_BYTES) -> bytes:
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > max_bytes:
            raise MidiError(path, TOO_LARGE, f"{size} bytes > {max_bytes}")
        return p.read_bytes()
    except OSError as exc:
        raise MidiError(path, UNREADABLE, exc.strerror or str(exc)) from exc


def parse_bytes(
    data: bytes, path: str | PathLike[str] | None = None, max_bytes: int = MAX_FILE_BYTES
) -> Any:
    """A ``symusic.Score`` in seconds from checked MIDI bytes."""
    import symusic

    check_midi_bytes(data, path, max_bytes)
    try:
        return symusic.Score.from_midi(unwrap_rmid(data, path), ttype="second")
    except Exception as exc:  # symusic raises RuntimeError with a readable message
        detail = str(exc).replace("MiniMidi: ", "").replace(": iostream error", "")
        raise MidiError(path, PARSE_ERROR, detail) from exc


def load_score(path: str | PathLike[str]) -> Any:
    """Parse a MIDI file with symusic (in seconds, tempo map applied); a score (MusicXML, kern,
    MEI: ``midi.scores``) is rendered to MIDI first, as everywhere else. Raises
    :class:`MidiError`."""
    data = read_bytes(path)
    if is_score(path):
        data = render_score(data, path, Path(path).suffix)
    return parse_bytes(data, path)


def tensorize_checked(
    score: Any,
    config: TensorConfig,
    path: str | PathLike[str] | None = None,
    max_seconds: float = MAX_SECONDS,
    min_sounding_s: float = MIN_SOUNDING_S,
) -> Tensorized:
    """Tensorize, turning the unusable results (no notes, drums only, too long, too dense,
    under ``min_sounding_s`` of sounding notes: too little for the model to judge; 0 for
    pictures of any file) into errors. A Score in ticks or quarters is
    converted to seconds first (the length limit is in seconds)."""
    if str(score.ttype).lower() != "second":
        score = score.to("second")
    end = float(score.end()) if score.note_num() else 0.0
    if end > max_seconds:
        raise MidiError(path, TOO_LONG, f"{end:.0f} s > {max_seconds:.0f} s")
    try:
        result = tensorize_score(score, config)
    except TooDense as exc:
        raise MidiError(path, TOO_DENSE, str(exc)) from exc
    if result.notes == 0:
        has_drums = any(t.is_drum and t.note_num() for t in score.tracks)
        if has_drums:
            raise MidiError(path, DRUMS_ONLY, "only drum-channel notes")
        raise MidiError(path, NO_NOTES, "the file holds no notes")
    frames = result.tensor.any(axis=(1, 2))  # whether something sounds, frame by frame
    if result.notes == result.dropped_notes or not frames.any():
        lo, hi = config.low_note, config.high_note
        raise MidiError(path, NO_NOTES_IN_RANGE, f"all {result.notes} notes outside {lo}..{hi}")
    sounding = float(np.count_nonzero(frames)) * config.frame_ms / 1000.0
    if sounding < min_sounding_s:
        raise MidiError(
            path, TOO_SHORT, f"{sounding:.2f} s of sounding notes < {min_sounding_s:g} s"
        )
    return result


def load_tensor(
    path: str | PathLike[str],
    config: TensorConfig = TensorConfig(),
    max_seconds: float = MAX_SECONDS,
    max_bytes: int = MAX_FILE_BYTES,
    min_sounding_s: float = MIN_SOUNDING_S,
) -> Tensorized:
    """Read, check, parse and tensorize one file in this process (a score format is rendered
    to MIDI first: ``midi.scores``)."""
    data = read_bytes(path, max_bytes)
    return tensorize_bytes(data, path, config, max_seconds, max_bytes, min_sounding_s)


def tensorize_bytes(
    data: bytes,
    name: str | PathLike[str],
    config: TensorConfig = TensorConfig(),
    max_seconds: float = MAX_SECONDS,
    max_bytes: int = MAX_FILE_BYTES,
    min_sounding_s: float = MIN_SOUNDING_S,
    score: ScoreLimits | None = None,
) -> Tensorized:
    """A file's bytes (named ``name``: its suffix says whether it is a score to render first,
    within ``score``'s limits) checked, parsed and tensorized. Raises :class:`MidiError`."""
    if is_score(name):
        data = render_score(data, name, Path(name).suffix, max_bytes, score)
    score = parse_bytes(data, name, max_bytes)
    return tensorize_checked(score, config, name, max_seconds, min_sounding_s)


def render_score(
    data: bytes,
    path: str | PathLike[str] | None,
    suffix: str,
    max_bytes: int = MAX_FILE_BYTES,
    limits: ScoreLimits | None = None,
) -> bytes:
    """MIDI bytes rendered from a score file's ``data`` (``midi.scores``: its XML checked
    first; an ``.mxl`` held to ``max_bytes`` as it unzips, or ``limits.max_xml_bytes``).
    Raises :class:`MidiError` (``empty``, ``too_large``, ``unsafe_xml``, ``too_complex``,
    ``score_error``)."""
    from dataclasses import replace

    from harmonixr.midi.scores import (
        ScoreError,
        ScoreTooComplex,
        ScoreTooLarge,
        one_line,
        score_to_midi,
    )

    if not data:
        raise MidiError(path, EMPTY, "file has 0 bytes")
    limits = limits or replace(ScoreLimits(), max_xml_bytes=max_bytes)
    try:
        midi = score_to_midi(data, suffix, limits)
    except ScoreTooLarge as exc:
        raise MidiError(path, TOO_LARGE, str(exc)) from None
    except ScoreTooComplex as exc:
        reason = UNSAFE_XML if exc.kind == "unsafe" else TOO_COMPLEX
        raise MidiError(path, reason, str(exc)) from None
    except ScoreError as exc:
        raise MidiError(path, SCORE_ERROR, one_line(str(exc), 300)) from None
    except MemoryError:
        raise MidiError(path, TOO_COMPLEX, "it needs more memory than a score may take") from None
    most = limits.max_played
    if most is not None and (notes := _midi_notes(midi)) > most:
        # e.g. expansions of kern, which the checks before conversion do not see
        raise MidiError(path, TOO_COMPLEX, f"it plays {notes:,} notes, more than {most:,}")
    return midi


def _midi_notes(midi: bytes) -> int:
    """Note-ons in standard MIDI bytes (what a rendering plays), 0 if symusic cannot read it
    (the MIDI path then says why)."""
    import symusic

    try:
        return int(symusic.Score.from_midi(midi).note_num())
    except Exception:
        return 0


# path, config, max_seconds, max_bytes[, min_sounding_s]
LoadJob = tuple[str, TensorConfig, float, int] | tuple[str, TensorConfig, float, int, float]


def load_job(job: LoadJob) -> Tensorized | tuple[str, str]:
    """:func:`load_tensor` for a worker process: a bad file comes back as (reason, detail)."""
    try:
        return load_tensor(*job)
    except MidiError as exc:
        return (exc.reason, exc.detail)


def failure_reason(outcome: Outcome) -> tuple[str, str]:
    """(reason, detail) of a :func:`load_job` that gave no tensor: the file's own problem, or
    its worker crashing, hanging or hitting a bug."""
    if outcome.ok:
        return outcome.value
    kinds = {"crashed": CRASHED, "timeout": TIMEOUT, "memory": TOO_COMPLEX}
    kinds["cancelled"] = CANCELLED
    return kinds.get(outcome.failure, INTERNAL_ERROR), outcome.error[:500]


def parse_bytes_job(
    job: tuple[bytes, str, TensorConfig, float, int]
    | tuple[bytes, str, TensorConfig, float, int, ScoreLimits | None],
) -> Tensorized | tuple[str, str]:
    """Like :func:`load_job` for bytes already in memory (an upload): ``(data, name, config,
    max_seconds, max_bytes[, score_limits])``; nothing is written to disk."""
    data, name, config, max_seconds, max_bytes, *rest = job
    try:
        return tensorize_bytes(
            data, name, config, max_seconds, max_bytes, score=rest[0] if rest else None
        )
    except MidiError as exc:
        return (exc.reason, exc.detail)


def parser_context() -> multiprocessing.context.BaseContext:
    """How parser processes start. Linux: ``fork``, so that a user's script without an
    ``if __name__ == "__main__":`` guard still works (forkserver and spawn re-import the main
    script in every child, which then fails) and a child starts with the parser already
    imported; the child only parses (no torch, no OpenMP), so forking a threaded parent is
    safe here, as for PyTorch's own data-loader workers. Elsewhere ``forkserver`` (or
    ``spawn``) with the parser preloaded; there scripts need the guard."""
    import multiprocessing as mp

    methods = mp.get_all_start_methods()
    if sys.platform.startswith("linux") and "fork" in methods:
        import symusic  # noqa: F401  (imported once here, inherited by every child)

        return mp.get_context("fork")
    if "forkserver" not in methods:
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["harmonixr.midi.load", "symusic"])
    return ctx


def parser_pool(
    func: Any = load_job,
    *,
    workers: int = 1,
    timeout: float | None = PARSE_TIMEOUT,
    memory: int | None = None,
) -> RobustPool:
    """Child processes running ``func`` (default :func:`load_job`) on parse jobs, started with
    :func:`parser_context`, each allowed ``memory`` bytes over what it starts with (None: no
    ceiling); keep it for many calls and ``close()`` it."""
    from harmonixr._pool import RobustPool

    with warnings.catch_warnings():  # Python ≥ 3.12 warns about forking a threaded process
        warnings.filterwarnings("ignore", message=".*use of fork\\(\\) may lead to deadlocks.*")
        context = parser_context()
        return RobustPool(func, workers=workers, timeout=timeout, context=context, memory=memory)


def safe_load(
    path: str | PathLike[str],
    config: TensorConfig = TensorConfig(),
    *,
    timeout: float = PARSE_TIMEOUT,
    max_seconds: float = MAX_SECONDS,
    max_bytes: int = MAX_FILE_BYTES,
    min_sounding_s: float = MIN_SOUNDING_S,
) -> Tensorized:
    """:func:`load_tensor` in a child process, so that a parser crash or hang becomes a
    :class:`MidiError` (reason ``crashed`` or ``timeout``) instead of taking this process down.
    Works from a script without an ``if __name__ == "__main__":`` guard (see
    :func:`parser_context`)."""
    path = os.fspath(path)
    with parser_pool(workers=1, timeout=timeout) as pool:
        (outcome,) = pool.imap([(path, config, max_seconds, max_bytes, min_sounding_s)])
    if outcome.ok and isinstance(outcome.value, Tensorized):
        return outcome.value
    raise MidiError(path, *failure_reason(outcome))


def tensorize_with_stats(
    source: str | PathLike[str] | Any, config: TensorConfig = TensorConfig()
) -> Tensorized:
    """Tensorize a path (MIDI, or a score rendered to MIDI first) or a ``symusic.Score`` and
    return the counts beside the tensor. It runs in this process (:func:`safe_load` parses in
    a child).

    A path that cannot be used raises ``MidiError`` naming the file and the reason (a
    ``symusic.Score``: :class:`TooDense` when its notes would cost too much work)."""
    if isinstance(source, str | PathLike):
        score = load_score(source)
        try:
            return tensorize_score(score, config)
        except TooDense as exc:
            raise MidiError(source, TOO_DENSE, str(exc)) from exc
    return tensorize_score(source, config)


def tensorize(
    source: str | PathLike[str] | Any, config: TensorConfig = TensorConfig()
) -> np.ndarray:
    """The uint8 ``(T, 12, 6)`` tensor of a MIDI or score path (``.musicxml``, ``.mxl``,
    ``.krn``, ``.mei``; rendered as ``preprocess`` renders it) or a ``symusic.Score`` (the tensor
    contract in docs/architecture.md)."""
    return tensorize_with_stats(source, config).tensor


def tensor_input(x: Any, config: TensorConfig) -> np.ndarray:
    """A question given as a tensor (numpy or torch, checked against ``config``) or a
    ``symusic.Score`` (tensorized), as the tensor the model reads."""
    import symusic

    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor
        x = x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        want = (12, config.n_octaves)
        if x.dtype != np.uint8 or x.ndim != 3 or tuple(x.shape[1:]) != want or not len(x):
            raise ValueError(
                f"expected a uint8 (T, {want[0]}, {want[1]}) tensor with T ≥ 1, "
                f"got {x.dtype} {tuple(x.shape)}"
            )
        return x
    if isinstance(x, symusic.Score):  # tensorize_checked converts it to seconds
        return tensorize_checked(x, config).tensor
    raise TypeError(f"cannot embed a {type(x).__name__}: give a path, a uint8 tensor or a Score")
