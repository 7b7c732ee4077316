"""A score's XML read safely before any converter sees it, and what it would cost to play.

One pass of expat (the parser in Python's standard library), with handlers and no tree, so the
check itself costs a few milliseconds per 100 KB and no memory beyond the bytes:

- **No entities, no DTD of its own.** A document that declares an entity (internal or
  external) or carries an internal DTD subset is refused at the declaration, before any
  entity is expanded: an entity can multiply a small file a million times, or bring in a file
  of this machine. These are the checks ``defusedxml`` makes (``forbid_entities``,
  ``forbid_external``), with expat's own handlers; the usual MusicXML ``<!DOCTYPE … PUBLIC …
  "….dtd">`` line, which names a DTD and defines nothing, is allowed (no converter here
  fetches it).
- **Bounded nesting.** An element deeper than ``max_depth`` is refused (a deeply nested MEI
  made verovio allocate gigabytes).
- **Notes as played.** ``<note>`` elements are counted, and MusicXML's repeat barlines
  (``<repeat direction="backward" times="N">``), da capo and dal segno, and MEI's first
  ``<expansion>`` are applied to the counts, giving an upper bound on the notes a converter
  would render once repeats are expanded. A two-kilobyte file with ``times="100000"`` is
  refused here in microseconds instead of costing a worker 30 s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from xml.parsers import expat

MAX_DEPTH = 48  # real MusicXML nests ≤ 9 deep, MEI about 15 (bench/serve.py --score-costs)


class XmlRefused(Exception):
    """A document refused by :func:`scan`; ``kind`` is ``unsafe`` (entities, a DTD of its
    own), ``too_complex`` (nesting, notes as played) or ``malformed`` (not well-formed XML);
    the message is in the project's words, with no content of the file."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class XmlFacts:
    elements: int
    depth: int  # the deepest element's depth (the root is 1)
    notes: int  # <note> elements as written (MusicXML: also rests and chord tones)
    played: int  # an upper bound on the notes once repeats are expanded


def _local(name: str) -> str:
    return name.rpartition(":")[2]


class _Scanner:
    """expat's handlers; state for the counts."""

    def __init__(self, max_depth: int, max_played: int | None) -> None:
        self.max_depth, self.max_played = max_depth, max_played
        self.depth = self.deepest = self.elements = self.notes = 0
        self.extra = 0  # notes added by MusicXML's repeats
        self.section = 0  # notes before the current repeated section began
        self.measure = 0  # notes before the current measure began
        self.part = 0  # notes before the current part began
        self.jumped = False  # a da capo / dal segno already counted in this part
        # MEI: notes inside each element with an xml:id, and the first expansion's list
        self.open_ids: list[tuple[int, str, int]] = []  # (depth, id, notes at its start)
        self.inside: dict[str, int] = {}
        self.plists: dict[str, list[str]] = {}
        self.expansion: list[str] | None = None

    # -------------------------------------------------------------- refusals

    def doctype(self, _name: str, _sys: Any, _pub: Any, internal: int) -> None:
        if internal:
            raise XmlRefused("unsafe", "it carries a document type definition of its own")

    def entity(self, *_: Any) -> None:
        raise XmlRefused("unsafe", "it declares XML entities, which are not read here")

    def external(self, *_: Any) -> int:
        raise XmlRefused("unsafe", "it refers to an external entity, which is not read here")

    # -------------------------------------------------------------- elements

    def start(self, name: str, attrs: dict[str, str]) -> None:
        self.depth += 1
        self.elements += 1
        if self.depth > self.max_depth:
            raise XmlRefused("too_complex", f"its elements nest more than {self.max_depth} deep")
        self.deepest = max(self.deepest, self.depth)
        tag = _local(name)
        if tag == "note":
            self.notes += 1
        elif tag == "measure":
            self.measure = self.notes
        elif tag == "part":
            self.part = self.section = self.measure = self.notes
            self.jumped = False
        elif tag == "repeat":
            self._repeat(attrs)
        elif tag == "sound":
            jump = attrs.get("dacapo") == "yes" or "dalsegno" in attrs
            if jump and not self.jumped:  # the part so far, once more (an upper bound)
                self.jumped = True
                self.extra += self.notes - self.part
        elif tag == "expansion" and "plist" in attrs:
            tokens = [t.lstrip("#") for t in attrs["plist"].split()]
            xid = attrs.get("xml:id") or attrs.get("id")
            if xid:
                self.plists[xid] = tokens
            if self.expansion is None:
                self.expansion = tokens
        xid = attrs.get("xml:id")
        if xid is not None:
            self.open_ids.append((self.depth, xid, self.notes))
        self._check_played()

    def end(self, _name: str) -> None:
        if self.open_ids and self.open_ids[-1][0] == self.depth:
            _, xid, before = self.open_ids.pop()
            self.inside[xid] = self.notes - before
        self.depth -= 1

    def _repeat(self, attrs: dict[str, str]) -> None:
        if attrs.get("direction") == "forward":
            self.section = self.measure
            return
        try:
            times = int(attrs.get("times", "2"))
        except ValueError:
            times = 2
        self.extra += max(0, times - 1) * (self.notes - self.section)
        self.section = self.notes

    def played(self) -> int:
        if self.expansion is None:
            return self.notes + self.extra
        return self.extra + self._expanded(self.expansion, 0)

    def _expanded(self, tokens: list[str], level: int) -> int:
        if level > 4:  # expansions of expansions of…: refused
            raise XmlRefused("too_complex", "its expansions nest more than 4 deep")
        total = 0
        for t in tokens:
            if t in self.plists and self.plists[t] is not tokens:
                total += self._expanded(self.plists[t], level + 1)
            else:
                total += self.inside.get(t, 0)
        return total

    def _check_played(self) -> None:  # while reading: a repeat bomb stops at its barline
        if self.max_played is not None and self.notes + self.extra > self.max_played:
            raise XmlRefused(
                "too_complex",
                f"it would play more than {self.max_played:,} notes once repeats are expanded",
            )


def scan(data: bytes, max_depth: int = MAX_DEPTH, max_played: int | None = None) -> XmlFacts:
    """The facts of an XML document, or :class:`XmlRefused` (see the module's docstring)."""
    s = _Scanner(max_depth, max_played)
    p = expat.ParserCreate()
    p.StartDoctypeDeclHandler = s.doctype
    p.EntityDeclHandler = s.entity
    p.UnparsedEntityDeclHandler = s.entity
    p.ExternalEntityRefHandler = s.external
    p.StartElementHandler = s.start
    p.EndElementHandler = s.end
    p.buffer_text = True
    try:
        p.Parse(data, True)
    except expat.ExpatError as exc:
        where = f"line {exc.lineno}, column {exc.offset}"
        raise XmlRefused("malformed", f"it is not well-formed XML ({where})") from None
    played = s.played()
    if max_played is not None and played > max_played:  # with MEI's expansion applied
        raise XmlRefused(
            "too_complex", f"it would play more than {max_played:,} notes once repeats are expanded"
        )
    return XmlFacts(s.elements, s.deepest, s.notes, played)
