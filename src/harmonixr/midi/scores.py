"""Scores as MIDI: MusicXML (music21), Humdrum **kern and MEI (verovio), rendered to standard
MIDI bytes that the MIDI path then parses and tensorizes.

It runs where MIDI parsing runs, in a child process with a time limit (``midi.load``), so a
converter that crashes or hangs costs one file. What a rendering is:

- **Repeats**: music21 expands them as a performer plays them (``expandRepeats``) where it
  can; a score whose repeat marks it cannot resolve is rendered as written. verovio renders
  kern and MEI as encoded (its MIDI follows the first expansion of an MEI file).
- **Tempo**: the score's own tempo marks; without one, each library's default, quarter = 120.
- **Dynamics**: music21 turns dynamics into velocities (without any, velocity 90); verovio's
  MIDI has one constant velocity (90). The tensor keeps velocities, so a score without
  dynamics looks like a deadpan performance.

A file that cannot be rendered is refused with ``score_error`` and the library's message.
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
import tempfile
import zipfile
from pathlib import Path

MUSICXML_SUFFIXES = (".musicxml", ".mxl", ".xml")
VEROVIO_SUFFIXES = (".krn", ".mei")
SCORE_SUFFIXES = MUSICXML_SUFFIXES + VEROVIO_SUFFIXES


class ScoreError(Exception):
    """A score the converter could not render (its message says why)."""


def is_score(path: str | os.PathLike[str]) -> bool:
    return Path(path).suffix.lower() in SCORE_SUFFIXES


def unzipped_size(data: bytes) -> int:
    """The bytes an ``.mxl`` (a zip) holds once unpacked, from its directory (nothing is
    unpacked to count them)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            return sum(info.file_size for info in z.infolist())
    except zipfile.BadZipFile as exc:
        raise ScoreError(f"not a compressed MusicXML file ({exc})") from None


def _musicxml_to_midi(data: bytes, suffix: str) -> bytes:
    import warnings

    from music21 import converter, midi, stream

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if suffix == ".mxl":  # a zip: music21 reads it from a file
                with tempfile.TemporaryDirectory() as tmp:
                    path = Path(tmp) / "score.mxl"
                    path.write_bytes(data)
                    # forceSource: music21 would otherwise keep a pickle of every parsed file
                    score = converter.parse(str(path), format="musicxml", forceSource=True)
            else:
                score = converter.parseData(data.decode("utf-8-sig"), format="musicxml")
        except Exception as exc:  # music21 raises many kinds
            raise ScoreError(f"music21: {type(exc).__name__}: {exc}") from None
        if isinstance(score, stream.Opus):
            score = score.mergeScores()
        with contextlib.suppress(Exception):  # unresolvable repeat marks: rendered as written
            score = score.expandRepeats()
        try:
            mf = midi.translate.streamToMidiFile(score)
            return mf.writestr()
        except Exception as exc:
            raise ScoreError(f"music21 MIDI export: {type(exc).__name__}: {exc}") from None


def _verovio_to_midi(data: bytes, suffix: str) -> bytes:
    import verovio

    tk = verovio.toolkit(False)
    # its font resources ship in the wheel; set them on every toolkit (a toolkit made in a
    # process forked from one that had already made one could not find them by itself)
    if not tk.setResourcePath(str(Path(verovio.__file__).parent / "data")):
        raise ScoreError("verovio: its font resources cannot be loaded")
    tk.setOptions({"inputFrom": "humdrum" if suffix == ".krn" else "mei"})
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ScoreError(f"not UTF-8 text ({exc})") from None
    if not tk.loadData(text):
        log = tk.getLog().strip().splitlines()
        raise ScoreError("verovio: " + (log[-1] if log else "could not load the file"))
    midi_b64 = tk.renderToMIDI()
    if not midi_b64:
        raise ScoreError("verovio: no MIDI rendered")
    return base64.b64decode(midi_b64)


def score_to_midi(data: bytes, suffix: str) -> bytes:
    """Standard MIDI bytes rendered from a score file's bytes; ``suffix`` says its format.
    Every failure of a converter is a :class:`ScoreError` (a bad file, not a bug of ours)."""
    suffix = suffix.lower()
    try:
        if suffix in MUSICXML_SUFFIXES:
            return _musicxml_to_midi(data, suffix)
        if suffix in VEROVIO_SUFFIXES:
            return _verovio_to_midi(data, suffix)
    except ScoreError:
        raise
    except Exception as exc:  # the libraries raise many kinds
        raise ScoreError(f"{type(exc).__name__}: {exc}") from None
    raise ScoreError(f"{suffix!r} is not a score format read here ({', '.join(SCORE_SUFFIXES)})")


def looks_like_score(path: str | os.PathLike[str]) -> bool:
    """Whether a file found in a folder is a score to read: any ``.musicxml``, ``.mxl``,
    ``.krn`` or ``.mei``; an ``.xml`` only when it is MusicXML (a folder's other XML files,
    metadata for instance, are not pieces)."""
    p = Path(path)
    if p.suffix.lower() != ".xml":
        return p.suffix.lower() in SCORE_SUFFIXES
    try:
        with p.open("rb") as fh:
            head = fh.read(4096)
    except OSError:
        return False
    return b"<score-partwise" in head or b"<score-timewise" in head
