"""What a corpus reader returns: ``Piece`` records and the ``Listing`` that holds them."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Piece:
    """One MIDI file and what it is: ``group`` names the work, shared by all its renditions."""

    path: str
    composer: str
    title: str
    group: str
    performer: str = ""  # who played it, where the corpus says (ASAP); "" when unknown
    source: str = ""  # the recording it was cut from, where the corpus says (ASAP); "" otherwise
    work: str = ""  # the musical work when ``group`` joins several (ASAP); "" means ``group``
    kind: str = ""  # "performance" or "score" (a deadpan score MIDI) where known; "" otherwise
    licence: str = ""  # the file's licence where the corpus says (manifest)
    edition: str = ""  # which edition of the work (e.g. a first edition's publisher), manifest
    links: str = ""  # other names of the same composition ("|"-separated), e.g. an ASAP folder
    corpus: str = ""  # the reader that listed it (asap, manifest, folder, ...)
    movement: str = ""  # which movement of ``work`` the file holds (manifest); "" for all of it


@dataclass
class Listing:
    """A corpus reader's answer: the pieces, the format it read, and entries it had to skip."""

    pieces: list[Piece]
    format: str
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
