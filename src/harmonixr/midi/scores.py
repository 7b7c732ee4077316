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

What a score may cost is bounded before a converter sees it (``xmlsafe``): no XML entities
or DTD of its own, nesting at most ``MAX_DEPTH`` deep, and, within :class:`ScoreLimits`, its
XML elements and the notes it plays once repeats are expanded (checked again on the rendered
MIDI); an ``.mxl`` is unzipped in memory, a chunk at a time, up to a limit whatever its
directory declares. Nothing is written to disk. A file that cannot be rendered is refused
with ``score_error`` and the converter's own reason, on one line of bounded length
(:func:`one_line`; verovio's is read from what it logs), which a service shows too.
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
import re
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from harmonixr.midi.xmlsafe import MAX_DEPTH, XmlRefused, scan

MUSICXML_SUFFIXES = (".musicxml", ".mxl", ".xml")
VEROVIO_SUFFIXES = (".krn", ".mei")
SCORE_SUFFIXES = MUSICXML_SUFFIXES + VEROVIO_SUFFIXES
XML_SUFFIXES = (".musicxml", ".xml", ".mei")  # read by :func:`xmlsafe.scan` first

MXL_MEMBERS = 256  # files in an .mxl (real ones hold 2 or 3)
CHUNK = 64 * 1024


@dataclass(frozen=True)
class ScoreLimits:
    """What one score may cost before a converter sees it (None: no bound; preprocessing a
    corpus sets none, the service sets all: ``serve.service.Limits``). ``max_elements``: XML
    elements, what music21's time follows (measured: ``bench/serve.py --score-costs``);
    ``max_played``: notes once repeats are expanded, estimated before conversion and counted
    in the MIDI after; ``max_xml_bytes``: an ``.mxl``'s MusicXML unzipped."""

    max_xml_bytes: int = 64 * 1024 * 1024
    max_elements: int | None = None
    max_played: int | None = None
    max_depth: int = MAX_DEPTH


class ScoreError(Exception):
    """A score the converter could not render. Its message is the converter's reason, one
    line (for logs, the preprocess summary and a service's answer)."""


class ScoreTooComplex(ScoreError):
    """A score refused before conversion: entities or a DTD of its own (``kind`` "unsafe"), or
    nesting or notes as played beyond the bounds ("too_complex"); the message is ours."""

    def __init__(self, message: str, kind: str = "too_complex") -> None:
        super().__init__(message)
        self.kind = kind


class ScoreTooLarge(ScoreError):
    """An ``.mxl`` whose MusicXML unzips to more than the limit (counted while it inflates)."""


def is_score(path: str | os.PathLike[str]) -> bool:
    return Path(path).suffix.lower() in SCORE_SUFFIXES


def _member(z: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    """A zip member's bytes, inflated a chunk at a time and counted as they come: never more
    than ``limit`` (+ one chunk) in memory, whatever size the zip's directory declares."""
    if info.flag_bits & 0x1:
        raise ScoreError("an encrypted .mxl member")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        # bzip2 and lzma inflate a whole block per read: not bounded by the chunk size
        raise ScoreError(f"an .mxl member compressed with method {info.compress_type}")
    out = bytearray()
    try:
        with z.open(info) as fh:
            while chunk := fh.read(CHUNK):
                out += chunk
                if len(out) > limit:
                    raise ScoreTooLarge(f"its MusicXML is larger than {limit} bytes unzipped")
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as exc:
        raise ScoreError(f"zip: {exc}") from None
    return bytes(out)


def read_mxl(data: bytes, limit: int = ScoreLimits.max_xml_bytes) -> bytes:
    """The MusicXML inside an ``.mxl`` (a zip), chosen as music21 chooses it (the first
    ``.musicxml``/``.xml`` member outside ``META-INF``), read by :func:`_member`. Nothing is
    written to disk."""
    try:
        z = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as exc:
        raise ScoreError(f"not a zip ({exc})") from None
    with z:
        infos = z.infolist()
        if len(infos) > MXL_MEMBERS:
            raise ScoreTooComplex(f"its zip holds more than {MXL_MEMBERS} files")
        for info in infos:
            name = info.filename
            suffix = PurePosixPath(name).suffix
            if "META-INF" not in name and (suffix in (".musicxml", ".xml") or name == ".xml"):
                return _member(z, info, limit)
    raise ScoreError("no MusicXML file inside the .mxl")


def _decode(xml: bytes) -> str:
    """Text of MusicXML bytes: UTF-8 (with or without a byte-order mark), else the encoding
    its declaration names, else UTF-16 (music21 tries UTF-8, then UTF-16)."""
    found = re.match(rb"""[^>]*encoding=['"]([A-Za-z0-9._-]+)['"]""", xml[:1000])
    for encoding in ("utf-8-sig", found.group(1).decode() if found else None, "utf-16"):
        if encoding is None:
            continue
        try:
            return xml.decode(encoding)
        except (UnicodeDecodeError, LookupError):
            pass
    raise ScoreError("not text in a known encoding")


def _musicxml_to_midi(xml: bytes) -> bytes:
    import warnings

    from music21 import converter, midi, stream

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            score = converter.parseData(_decode(xml), format="musicxml")
        except ScoreError:
            raise
        except Exception as exc:  # music21 raises many kinds
            raise ScoreError(f"music21: {_said(exc)}") from None
        if isinstance(score, stream.Opus):
            score = score.mergeScores()
        with contextlib.suppress(Exception):  # unresolvable repeat marks: rendered as written
            score = score.expandRepeats()
        try:
            mf = midi.translate.streamToMidiFile(score)
            return mf.writestr()
        except Exception as exc:
            raise ScoreError(f"music21 MIDI export: {_said(exc)}") from None


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
    with _stderr_captured() as said:
        loaded = tk.loadData(text)
        midi_b64 = tk.renderToMIDI() if loaded else ""
    if not loaded:
        raise ScoreError("verovio: " + _verovio_reason(tk.getLog() + said(), "could not load it"))
    if not midi_b64:
        raise ScoreError("verovio: " + _verovio_reason(tk.getLog() + said(), "no MIDI rendered"))
    return base64.b64decode(midi_b64)


@contextlib.contextmanager
def _stderr_captured() -> Iterator[Callable[[], str]]:
    """What C code writes to file descriptor 2 meanwhile (verovio's Python module logs its
    errors there, not to ``getLog``), passed on to the real stderr afterwards; yields a
    function giving that text once the block has ended. Held in memory where Linux allows."""
    import sys
    import tempfile

    text = [""]
    try:
        if sys.stderr is not None:
            sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no descriptor 2 (an embedded interpreter): no text
        saved = -1
    if saved < 0:
        yield lambda: text[0]
        return
    try:
        memfd = getattr(os, "memfd_create", None)
        with os.fdopen(memfd("verovio-log"), "w+b") if memfd else tempfile.TemporaryFile() as buf:
            os.dup2(buf.fileno(), 2)
            try:
                yield lambda: text[0]
            finally:
                os.dup2(saved, 2)
                buf.seek(0)
                logged = buf.read(64 * 1024)
                with contextlib.suppress(OSError):
                    os.write(2, logged)
                text[0] = logged.decode("utf-8", "replace")
    finally:
        os.close(saved)


def _verovio_reason(log: str, fallback: str) -> str:
    """verovio's own reason from its log: its first error line other than the generic
    "Error importing data" (else its first line, else ``fallback``), as :func:`one_line`."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("[Error]")]
    specific = [e for e in errors if "error importing data" not in e.lower()]
    chosen = (specific or errors or lines or [fallback])[0]
    return one_line(re.sub(r"^\[(Error|Warning|Info)\]\s*", "", chosen))


def one_line(text: str, limit: int = 200) -> str:
    """A converter's message as one readable line: whitespace (newlines too) collapsed, other
    control characters dropped, at most ``limit`` characters (cut with an ellipsis)."""
    flat = " ".join("".join(c if c.isprintable() or c.isspace() else " " for c in text).split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def score_to_midi(data: bytes, suffix: str, limits: ScoreLimits = ScoreLimits()) -> bytes:
    """Standard MIDI bytes rendered from a score file's bytes; ``suffix`` says its format.
    XML (an ``.mxl``'s after :func:`read_mxl`) is checked by :func:`xmlsafe.scan` before any
    converter sees it. Every failure is a :class:`ScoreError` (a bad file, not a bug of ours):
    :class:`ScoreTooComplex` for what the checks refuse, :class:`ScoreTooLarge` for an .mxl
    over ``limits.max_xml_bytes`` unzipped."""
    suffix = suffix.lower()
    if suffix not in SCORE_SUFFIXES:
        known = ", ".join(SCORE_SUFFIXES)
        raise ScoreError(f"{suffix!r} is not a score format read here ({known})")
    if suffix == ".mxl":
        data, suffix = read_mxl(data, limits.max_xml_bytes), ".musicxml"
    if suffix in XML_SUFFIXES:
        try:
            facts = scan(data, limits.max_depth, limits.max_played)
        except XmlRefused as exc:
            if exc.kind == "malformed":
                raise ScoreError(str(exc)) from None
            raise ScoreTooComplex(str(exc), exc.kind) from None
        if limits.max_elements is not None and facts.elements > limits.max_elements:
            raise ScoreTooComplex(f"it holds more than {limits.max_elements:,} XML elements")
    try:
        if suffix in MUSICXML_SUFFIXES:
            return _musicxml_to_midi(data)
        return _verovio_to_midi(data, suffix)
    except ScoreError:
        raise
    except Exception as exc:  # the libraries raise many kinds
        raise ScoreError(_said(exc)) from None


def _said(exc: BaseException) -> str:
    """What a library's exception says, as :func:`one_line` (its class where it says nothing)."""
    return one_line(str(exc)) or type(exc).__name__


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
