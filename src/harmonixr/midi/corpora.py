"""Corpus readers: a folder of MIDI files → ``Piece`` records with composer and work group.

One module, over 400 lines: one reader per corpus layout (GiantMIDI, ASAP, MAESTRO, manifest,
folder) and the detection that picks one; they share the naming and grouping helpers."""

from __future__ import annotations

import csv
import re
import unicodedata
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from harmonixr.midi.builtin import read_builtin
from harmonixr.midi.piece import Listing, Piece
from harmonixr.midi.scores import SCORE_SUFFIXES, is_score, looks_like_score

MIDI_SUFFIXES = (".mid", ".midi", ".kar", ".rmi")

READ_SUFFIXES = MIDI_SUFFIXES + SCORE_SUFFIXES
FORMATS = ("auto", "giantmidi", "asap", "maestro", "manifest", "folder", "builtin")
# the columns that make a metadata.csv a labelled multi-source manifest (``read_manifest``)
MANIFEST_COLUMNS = ("path", "composer", "work")
MANIFEST_OPTIONAL = (
    "title",
    "asap_work",
    "source",
    "converter",
    "licence",
    "kind",
    "edition",
    "performer",
    "movement",
)


def nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text).strip()


def normalise_title(title: str) -> str:
    """Case-, accent-spacing- and punctuation-insensitive form of a title, for grouping works."""
    t = unicodedata.normalize("NFKC", title).casefold()
    t = re.sub(r"[^\w]+", " ", t)
    return re.sub(r"\s+", " ", t).strip()


def _midi_files(root: Path, suffixes: tuple[str, ...] = MIDI_SUFFIXES) -> list[Path]:
    """Files with these suffixes under ``root``; hidden ones (a name starting with a dot, in a
    hidden folder or not) are left out: they are temporary files a writer has not finished
    (``_files.atomic_write``), or a system's."""
    files = [
        p
        for p in root.rglob("*")
        if p.suffix.lower() in suffixes
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    ]
    return sorted(p for p in files if p.suffix.lower() in MIDI_SUFFIXES or looks_like_score(p))


def music_files(root: Path) -> list[Path]:
    """Every MIDI file and score under ``root``, recursively, sorted (an ``.xml`` only when it
    is MusicXML)."""
    return _midi_files(root, READ_SUFFIXES)


def _kind_of(path: Path, given: str = "") -> str:
    """A file's kind: as given, else ``score`` for a score format (it is rendered, not played)."""
    return given or ("score" if is_score(path) else "")


# ---------------------------------------------------------------- GiantMIDI-Piano

_YOUTUBE_ID = re.compile(r"^[A-Za-z0-9_-]{11}$")


def parse_giantmidi_name(name: str) -> tuple[str, str] | None:
    """``Surname, Firstname, Title, YouTubeID.mid`` → (composer, title), or None.

    Titles may themselves contain commas; the composer is ``Firstname Surname`` in NFC.
    """
    stem = nfc(Path(name).stem)
    parts = stem.split(", ")
    if len(parts) < 4 or not _YOUTUBE_ID.match(parts[-1].strip()):
        return None
    surname, first = parts[0].strip(), parts[1].strip()
    title = ", ".join(parts[2:-1]).strip()
    composer = f"{first} {surname}".strip()
    if not surname or not title:
        return None
    return composer, title


def read_giantmidi(root: str | Path) -> Listing:
    root = Path(root)
    pieces, skipped = [], []
    for p in _midi_files(root):
        parsed = parse_giantmidi_name(p.name)
        if parsed is None:
            skipped.append((str(p), "name is not 'Surname, Firstname, Title, YouTubeID.mid'"))
            continue
        composer, title = parsed
        group = f"{normalise_title(title)}|{composer}"
        pieces.append(Piece(str(p), composer, title, group))
    return Listing(pieces, "giantmidi", skipped)


# ---------------------------------------------------------------- ASAP

_REPEAT_SUFFIX = re.compile(r"_(?:no_2_repeat|no_first_repeat|no_repeat|repeat)$")
_PERFORMER = re.compile(r"^(.*?)\d")
_REC = "\U0010ffffrec:"
_RECITAL = "\U0010ffffrecital:"


def asap_work(folder: str) -> str:
    """ASAP's work of a folder: repeat variants (``26-1_no_repeat``, ``Toccata_repeat``) are
    the same movement as ``26-1`` and ``Toccata``."""
    return _REPEAT_SUFFIX.sub("", folder.strip("/"))


def asap_performer(path: str) -> str:
    """ASAP's performer code: the file name's prefix before its first digit (``Shi05M`` →
    ``Shi``); "" for score MIDIs and names without digits."""
    stem = Path(path).stem
    if stem.startswith("midi_score"):
        return ""
    m = _PERFORMER.match(stem)
    # one pianist is spelled several ways (FALIKS / Faliks, Lee_E / LeeE, Na_ / Na)
    return re.sub(r"[^a-z]", "", m.group(1).casefold()) if m and m.group(1) else ""


def asap_collection(work: str) -> str:
    """The collection an ASAP work belongs to, for recitals: a sonata's movements
    (``Beethoven/Piano_Sonatas/21-1`` → ``…/21``), a WTC prelude and its fugue
    (``Bach/Prelude/bwv_846`` → ``Bach/bwv_846``), a cycle's pieces (``Schumann/Kreisleriana/3``
    → ``Schumann/Kreisleriana``); a work of its own is its own collection."""
    parts = work.split("/")
    if len(parts) == 3 and parts[0] == "Bach" and parts[1] in ("Prelude", "Fugue"):
        return f"Bach/{parts[2]}"
    if len(parts) >= 3:
        head = "/".join(parts[:-1])
        m = re.match(r"^(\d+)-", parts[-1])
        return f"{head}/{m.group(1)}" if m else head
    return work


class UnionFind:
    """Union-find over names; each set is named by its smallest member."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, a: str) -> str:
        self.parent.setdefault(a, a)
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            lo, hi = sorted((ra, rb))
            self.parent[hi] = lo


def read_asap(root: str | Path, include_scores: bool = False) -> Listing:
    """ASAP from ``metadata.csv``: one piece per performance; with ``include_scores`` also each
    work's score MIDI.

    The group is leak-free: the work (folder without its repeat suffix), joined with every work
    cut from the same MAESTRO recording (a prelude and its fugue, a sonata's movements in one
    recital share a performer, a piano and a recording session), and joined by recital: one
    pianist's performances within one collection (:func:`asap_collection`), e.g. the
    Kreisleriana movements one pianist played, with or without a MAESTRO recording each."""
    root = Path(root)
    meta = root / "metadata.csv"
    if not meta.is_file():
        raise ValueError(f"{root}: no metadata.csv, so this is not an ASAP folder")
    with meta.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    works = UnionFind()
    for row in rows:
        work = asap_work(row["folder"])
        works.find(work)
        rec = (row.get("maestro_midi_performance") or "").strip()
        if rec:
            works.union(work, _REC + rec)  # recording keys sort after every work name
        if row.get("midi_performance"):
            # a recital: MAESTRO keeps one piece per file, so one pianist's movements of one
            # collection are joined whether or not they carry a MAESTRO recording
            performer = asap_performer(row["midi_performance"]) or row["midi_performance"]
            works.union(work, f"{_RECITAL}{performer}|{asap_collection(work)}")
    pieces, skipped = [], []
    seen_scores: set[str] = set()
    for row in rows:
        composer, title = nfc(row["composer"]), nfc(row["title"])
        group = works.find(asap_work(row["folder"]))
        perf = row.get("midi_performance", "")
        if perf:
            path = root / perf
            if path.is_file():
                rec = (row.get("maestro_midi_performance") or "").strip()
                work = asap_work(row["folder"])
                pieces.append(
                    Piece(
                        str(path),
                        composer,
                        title,
                        group,
                        asap_performer(perf),
                        rec,
                        work,
                        "performance",
                    )
                )
            else:
                skipped.append((str(path), "listed in metadata.csv but missing"))
        score = row.get("midi_score", "")
        if include_scores and score and score not in seen_scores:
            seen_scores.add(score)
            path = root / score
            if path.is_file():
                work = asap_work(row["folder"])
                title_s = f"{title} (score)"
                pieces.append(Piece(str(path), composer, title_s, group, work=work, kind="score"))
            else:
                skipped.append((str(path), "listed in metadata.csv but missing"))
    return Listing(pieces, "asap", skipped)


# ---------------------------------------------------------------- MAESTRO


def _maestro_csv(root: Path) -> Path | None:
    found = sorted(root.glob("maestro-v*.csv"))
    return found[-1] if found else None


def read_maestro(root: str | Path) -> Listing:
    root = Path(root)
    meta = _maestro_csv(root)
    if meta is None:
        raise ValueError(f"{root}: no maestro-v*.csv, so this is not a MAESTRO folder")
    pieces, skipped = [], []
    with meta.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            composer, title = nfc(row["canonical_composer"]), nfc(row["canonical_title"])
            path = root / row["midi_filename"]
            if not path.is_file():
                skipped.append((str(path), f"listed in {meta.name} but missing"))
                continue
            pieces.append(Piece(str(path), composer, title, f"{normalise_title(title)}|{composer}"))
    return Listing(pieces, "maestro", skipped)


# ---------------------------------------------------------------- any folder


def read_folder(root: str | Path, labels: str | Path | None = None) -> Listing:
    """A folder of MIDI files labelled by ``labels`` (CSV: path, composer[, title, group,
    performer, source, work, kind]; paths relative to the folder; kind: performance | score) or
    else by each file's parent folder."""
    root = Path(root)
    pieces, skipped = [], []
    if labels is not None:
        labels = Path(labels)
        with labels.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = {"path", "composer"} - set(reader.fieldnames or [])
            if missing:
                raise ValueError(f"{labels}: missing column(s) {', '.join(sorted(missing))}")
            for row in reader:
                rel = row["path"]
                path = Path(rel) if Path(rel).is_absolute() else root / rel
                if not path.is_file():
                    skipped.append((str(path), f"listed in {labels.name} but missing"))
                    continue
                composer = nfc(row["composer"] or "")
                if not composer:
                    skipped.append((str(path), "no composer given"))
                    continue
                title = nfc(row.get("title") or "") or path.stem
                group = nfc(row.get("group") or "") or rel
                extra = {k: nfc(row.get(k) or "") for k in ("performer", "source", "work", "kind")}
                extra["kind"] = _kind_of(path, extra["kind"])
                pieces.append(Piece(str(path), composer, title, group, **extra))
        return Listing(pieces, "folder", skipped)
    for p in music_files(root):
        if p.parent == root:
            skipped.append((str(p), "no labels file and no composer folder above it"))
            continue
        rel = str(p.relative_to(root))
        pieces.append(Piece(str(p), nfc(p.parent.name), nfc(p.stem), rel, kind=_kind_of(p)))
    return Listing(pieces, "folder", skipped)


# ---------------------------------------------------------------- labelled manifests


def _is_manifest(meta: Path) -> bool:
    with meta.open(newline="", encoding="utf-8") as fh:
        header = next(csv.reader(fh), [])
    return all(c in header for c in MANIFEST_COLUMNS)


def read_manifest(root: str | Path, manifest: str | Path | None = None) -> Listing:
    """A labelled multi-source corpus: ``metadata.csv`` (or ``manifest``) with one row per file,
    columns ``path, composer, work`` and optionally ``title, movement, asap_work, source,
    converter, licence, kind, edition, performer``.

    ``work`` names the composition across sources and editions, so it is the group: every
    edition and every movement of one work share it. ``asap_work`` (an ASAP folder) is kept as
    a link, so a cache holding ASAP too joins the two (see ``data.groups``). ``source`` records
    the converter where one is given (``source/converter``): the program that rendered a score
    is something a model could learn instead of the composer."""
    root = Path(root)
    meta = Path(manifest) if manifest is not None else root / "metadata.csv"
    if not meta.is_file():
        raise ValueError(f"{root}: no {meta.name}, so this is not a labelled manifest")
    pieces, skipped = [], []
    with meta.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = set(MANIFEST_COLUMNS) - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{meta}: missing column(s) {', '.join(sorted(missing))}")
        for row in reader:
            cells = {k: nfc(v or "") for k, v in row.items() if isinstance(k, str)}
            cells = {k: cells.get(k, "") for k in MANIFEST_OPTIONAL} | cells
            get = cells.__getitem__
            rel = row["path"]
            path = Path(rel) if Path(rel).is_absolute() else root / rel
            if not path.is_file():
                skipped.append((str(path), f"listed in {meta.name} but missing"))
                continue
            composer, work = get("composer"), get("work")
            if not composer or not work:
                skipped.append((str(path), "no composer or no work given"))
                continue
            title = get("title") or path.stem
            source = "/".join(x for x in (get("source"), get("converter")) if x)
            kind = get("kind")
            if kind not in ("", "score", "performance"):
                skipped.append((str(path), f"kind {kind!r} is neither score nor performance"))
                continue
            link = get("asap_work")
            pieces.append(
                Piece(
                    str(path),
                    composer,
                    title,
                    group=work,
                    performer=get("performer"),
                    source=source,
                    work=work,
                    kind=kind,
                    licence=get("licence"),
                    edition=get("edition"),
                    links=asap_work(link) if link else "",
                    movement=get("movement"),
                )
            )
    return Listing(pieces, "manifest", skipped)


# ---------------------------------------------------------------- dispatch


def detect_format(source: str | Path) -> str:
    """Recognise a corpus: ``builtin``, ASAP, MAESTRO, GiantMIDI-Piano, else a plain folder."""
    if str(source) == "builtin":
        return "builtin"
    root = Path(source)
    if not root.is_dir():
        raise ValueError(f"{source}: not a folder (nor 'builtin')")
    meta = root / "metadata.csv"
    if meta.is_file():
        with meta.open(encoding="utf-8") as fh:
            header = fh.readline()
        if "midi_performance" in header and "folder" in header:
            return "asap"
        if _is_manifest(meta):
            return "manifest"
    if _maestro_csv(root) is not None:
        return "maestro"
    files = _midi_files(root)
    if files:
        named = sum(parse_giantmidi_name(p.name) is not None for p in files)
        if named >= 0.5 * len(files):
            return "giantmidi"
    return "folder"


def read_corpus(
    source: str | Path,
    format: str = "auto",
    labels: str | Path | None = None,
    include_scores: bool = False,
    progress: Callable[[int, int, str], None] | None = None,
) -> Listing:
    """List a corpus's pieces in the named (or recognised) format; the source ``"builtin"``
    is the built-in corpus (converted from music21 on first use, ``progress(i, n, name)``
    counting the conversions)."""
    if format not in FORMATS:
        raise ValueError(f"unknown corpus format {format!r}; choose one of {', '.join(FORMATS)}")
    if str(source) == "builtin" and format == "auto":
        format = "builtin"
    if format == "auto":
        if labels is not None:
            format = "manifest" if _is_manifest(Path(labels)) else "folder"
        else:
            format = detect_format(source)
    if format != "builtin" and not Path(source).is_dir():
        raise ValueError(f"{source}: no such folder")
    readers: dict[str, Callable[[], Listing]] = {
        "giantmidi": lambda: read_giantmidi(source),
        "asap": lambda: read_asap(source, include_scores=include_scores),
        "maestro": lambda: read_maestro(source),
        "manifest": lambda: read_manifest(source, labels),
        "folder": lambda: read_folder(source, labels),
    }
    if format == "builtin":
        return read_builtin(progress=progress)
    listing = readers[format]()
    listing.pieces = [replace(p, corpus=listing.format) for p in listing.pieces]
    return listing
