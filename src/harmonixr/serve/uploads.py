"""What an upload may be and what its refusal says: the limits on one upload
(:class:`Limits`, measured), the file's name as messages show it, and the sentence, status and
reason of each refusal, in the project's words: a detail a library wrote (it may hold a path,
the file's content or an exception's class) goes to the server log (logger
``harmonixr.serve``), never to the client, except a score converter's reason (what is wrong
with the score, which a person needs to fix it): one line, bounded, any path in it removed."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from harmonixr.midi.load import (
    CRASHED,
    EMPTY,
    MAX_SECONDS,
    NOT_MIDI,
    TIMEOUT,
    TOO_COMPLEX,
    TOO_LARGE,
    MidiError,
)
from harmonixr.midi.scores import ScoreLimits, is_score, one_line

MB = 1024 * 1024
log = logging.getLogger("harmonixr.serve")

# What each reason means to a person reading the page ({name}: the uploaded file's name;
# {detail}: only where the detail is the project's own words, with numbers, never content)
MESSAGES = {
    EMPTY: "{name} is empty",
    NOT_MIDI: "{name} is not a MIDI file (it does not start with the MIDI header 'MThd')",
    "truncated": "{name} is cut short: {detail}",
    "parse_error": "{name} could not be read as MIDI (its data is not valid MIDI)",
    "no_notes": "{name} holds no notes",
    "no_notes_in_range": "{name} has no notes in the range the model reads ({detail})",
    "drums_only": "{name} holds only drum-channel notes",
    TOO_LARGE: "{name} is larger than the {limit}",
    "too_long": "{name} is too long to analyse ({detail})",
    "too_short": "{name} holds too little music to judge ({detail})",
    "score_error": "{name} could not be rendered as a score: {detail}",
    "unsafe_xml": "{name} was refused: {detail}",
    TOO_COMPLEX: "{name} is too complex to read here: {detail}",
    "too_dense": "{name} holds too many long overlapping notes to analyse ({detail})",
    TIMEOUT: "Reading {name} took longer than {timeout:g} s and was stopped",
    CRASHED: "{name} crashed the parser (only its own child process was lost)",
    "internal_error": "{name} could not be read",
}
OWN_DETAIL = {  # reasons whose detail this project writes (the rest: a library's, logged)
    "truncated",
    "no_notes_in_range",
    "too_long",
    "too_short",
    "too_dense",
    "unsafe_xml",
    TOO_COMPLEX,
}
CONVERTER_DETAIL = {"score_error"}  # a converter's reason, shown without paths (:func:`shown`)


class UploadError(Exception):
    """A bad upload: the HTTP status, a reason from ``midi.load`` (or ``busy``, ``too_many``)
    and a sentence a person can read."""

    def __init__(self, status: int, reason: str, message: str, file: str | None = None) -> None:
        super().__init__(message)
        self.status, self.reason, self.message, self.file = status, reason, message, file

    def to_dict(self) -> dict[str, Any]:
        return {"detail": self.message, "reason": self.reason, "file": self.file}


MAX_NAME = 120


def clean_name(name: str | None) -> str:
    """The upload's file name for messages (never a path on this machine) and for its format:
    a long one is cut in its stem, so that it keeps its suffix."""
    base = PurePath((name or "").replace("\\", "/")).name.strip()
    base = "".join(ch for ch in base if ch.isprintable())
    if len(base) > MAX_NAME:
        suffix = PurePath(base).suffix
        suffix = suffix if len(suffix) <= 16 else ""
        base = base[: MAX_NAME - len(suffix) - 1] + "…" + suffix
    return base or "the upload"


def has_midi_header(data: bytes) -> bool:
    """Whether ``data`` starts like a standard MIDI file (or an RMID-wrapped one)."""
    return data[:4] == b"MThd" or (data[:4] == b"RIFF" and data[8:12] == b"RMID")


@dataclass(frozen=True)
class Limits:
    """What one upload may cost. The score figures come from music21's corpus
    (``bench/serve.py --score-costs``, 2 cores beside a training job): music21 converts about
    2,000 XML elements a second there (Beethoven's op. 133, 134,000 elements, 67 s and
    +284 MB); 60,000 elements (97.9 % of the corpus's 654 MusicXML files; a MusicXML's
    elements average 38 bytes) is about 30 s and 130 MB; nesting is at most 8 deep and a
    piece plays at most 29,000 notes with its repeats. ``memory``: bytes a parser process may
    take over what it started with, three times the largest accepted score's."""

    max_bytes: int = 10 * MB  # one uploaded file
    max_seconds: float = MAX_SECONDS  # a piece's length
    parse_timeout: float = 30.0  # seconds for the child process to parse and tensorize a file
    max_windows: int = 2000  # timeline windows of one request
    score_bytes: int = 3 * MB  # one uploaded score (an .mxl's MusicXML unzipped: 4 MB)
    score_timeout: float = 40.0
    score_elements: int = 60_000
    score_played: int = 40_000  # notes once repeats are expanded
    memory: int = 384 * MB

    def __post_init__(self) -> None:
        numbers = (self.max_bytes, self.max_seconds, self.parse_timeout, self.score_bytes)
        more = (self.score_timeout, self.score_elements, self.score_played, self.memory)
        if min(numbers + more) <= 0:
            raise ValueError(f"limits must be positive, got {self}")

    def scores(self) -> ScoreLimits:
        return ScoreLimits(
            max_xml_bytes=max(self.score_bytes, 4 * MB),
            max_elements=self.score_elements,
            max_played=self.score_played,
        )


def error_for(exc: MidiError, name: str, limits: Limits) -> UploadError:
    """The HTTP answer to a file the parser refused: 415 for what is not MIDI at all, 413 for
    what is too large, 422 with the reason for the rest."""
    status = {EMPTY: 415, NOT_MIDI: 415, TOO_LARGE: 413}.get(exc.reason, 422)
    template = MESSAGES.get(exc.reason, "{name} cannot be used ({reason})")
    score = is_score(name)
    if exc.detail and exc.reason not in OWN_DETAIL:
        log.warning("%s refused (%s): %s", name, exc.reason, exc.detail)
    detail = exc.detail if exc.reason in OWN_DETAIL else ""
    if exc.reason in CONVERTER_DETAIL:
        detail = shown(exc.detail) or "the converter gave no reason"
    text = template.format(
        name=name,
        detail=detail,
        reason=exc.reason,
        limit=f"{(limits.score_bytes if score else limits.max_bytes) / MB:g} MB limit"
        + (" for a score" if score else ""),
        timeout=limits.score_timeout if score else limits.parse_timeout,
    )
    return UploadError(status, exc.reason, text, name)


PATH = re.compile(r"(?<![\w<])(?:[A-Za-z]:)?[/\\](?:[\w.~-]+[/\\])+[\w.~-]*")


CLASS = re.compile(r"\b[A-Z]\w*(?:Error|Exception)\b:?\s*")


def shown(detail: str, limit: int = 200) -> str:
    """A converter's reason as the client sees it: one line of at most ``limit`` characters,
    any file path in it (one on this machine, in a library's message) replaced by "…" and
    any exception's class name dropped."""
    return one_line(CLASS.sub("", PATH.sub("…", detail)), limit)
