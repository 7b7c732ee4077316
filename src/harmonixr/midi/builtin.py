"""The built-in corpus: real music from music21's bundled corpus, converted to MIDI once.

music21 ships scores, not MIDI, and little keyboard music; what it has in quantity is vocal and
string-quartet repertoire. We take a fixed, evenly spaced selection per composer (so the first
conversion stays within a few minutes on two cores), convert each work in a worker process with
a time limit, and keep the MIDI files and a manifest in the user's cache folder. Later calls read
the manifest; a killed conversion resumes with the files it had finished.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from harmonixr._files import atomic_json, atomic_write
from harmonixr.midi.piece import Listing, Piece

BUILTIN_VERSION = 1

# (music21 composer directory, composer name, at most this many works, only these sub-works).
# Measured on 2 cores: chorales ~0.3 s each, Palestrina ~0.6 s, madrigals ~1.3 s, quartet
# movements 1-10 s; Mozart's K. 458, Haydn's op. 74 no. 1 finale and most Beethoven quartets fail
# music21's repeat expansion or take over 20 s, so the quartets are named explicitly.
SELECTION: tuple[tuple[str, str, int, tuple[str, ...]], ...] = (
    ("bach", "Johann Sebastian Bach", 60, ()),
    ("palestrina", "Giovanni Pierluigi da Palestrina", 50, ()),
    ("monteverdi", "Claudio Monteverdi", 26, ()),
    ("mozart", "Wolfgang Amadeus Mozart", 12, ("k155", "k156", "k80", "k545")),
    ("haydn", "Joseph Haydn", 7, ("opus1no1", "opus74no1/movement1", "opus74no1/movement2")),
    ("beethoven", "Ludwig van Beethoven", 4, ("opus18no1",)),
)
SCORE_SUFFIXES = (".mxl", ".xml", ".musicxml", ".krn", ".abc")  # preferred in this order
WORK_TIMEOUT_S = 90.0  # generous: a loaded machine must not drop works (see read_builtin)


def cache_dir() -> Path:
    """Harmonixr's cache folder (``HARMONIXR_CACHE_DIR`` overrides the platform default)."""
    env = os.environ.get("HARMONIXR_CACHE_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("harmonixr"))


def builtin_dir() -> Path:
    return cache_dir() / f"builtin-v{BUILTIN_VERSION}"


def _corpus_root() -> Path:
    import music21

    return Path(music21.__file__).parent / "corpus"


# Composers of music21's corpus that no corpus Harmonixr's model learnt from holds: real
# strangers for measuring "someone else" (evaluate.openset), with music21 scores by composers the
# model does know as their comparison (the same sources, converter and textures).
STRANGERS: tuple[tuple[str, str, int, tuple[str, ...]], ...] = (
    ("palestrina", "Giovanni Pierluigi da Palestrina", 20, ()),
    ("monteverdi", "Claudio Monteverdi", 20, ()),
    ("josquin", "Josquin des Prez", 8, ()),
    ("ciconia", "Johannes Ciconia", 8, ()),
    ("luca", "Luca Marenzio", 6, ()),
    ("lusitano", "Vicente Lusitano", 6, ()),
    ("corelli", "Arcangelo Corelli", 8, ()),
    ("weber", "Carl Maria von Weber", 6, ()),
    ("verdi", "Giuseppe Verdi", 6, ()),
    ("schoenberg", "Arnold Schoenberg", 8, ()),
    ("webern", "Anton Webern", 6, ()),
    ("beach", "Amy Beach", 6, ()),
    ("schumann_clara", "Clara Schumann", 6, ()),
    ("trecento", "Trecento composers", 15, ()),
)
KNOWN_IN_MUSIC21: tuple[tuple[str, str, int, tuple[str, ...]], ...] = (
    ("bach", "Bach", 20, ()),
    ("beethoven", "Beethoven", 6, ()),
    ("chopin", "Chopin", 6, ()),
    ("cpebach", "C. P. E. Bach", 6, ()),
    ("handel", "Handel", 6, ()),
    ("haydn", "Haydn", 8, ()),
    ("joplin", "Joplin", 6, ()),
    ("mozart", "Mozart", 10, ()),
    ("schubert", "Schubert", 6, ()),
    ("schumann_robert", "Schumann", 6, ()),
)

# music21 works whose music the keyboard score corpus also holds, under other names (found by
# comparing their pitch-interval sequences with the corpus's): a model trained on that corpus
# has seen them, so they are never measured as held-out pieces
IN_THE_SCORE_CORPUS = frozenset({"joplin__maple_leaf_rag", "cpebach__h186"})


def select_works(
    selection: tuple[tuple[str, str, int, tuple[str, ...]], ...] = SELECTION,
) -> list[tuple[str, str, str, str]]:
    """(relative score path, composer, title, group) for every work of ``selection`` (the
    built-in corpus by default): up to the cap per composer, evenly spaced."""
    root = _corpus_root()
    chosen: list[tuple[str, str, str, str]] = []
    for folder, composer, cap, only in selection:
        by_stem: dict[str, Path] = {}
        for p in sorted((root / folder).rglob("*")):
            if p.suffix.lower() not in SCORE_SUFFIXES:
                continue
            sub = p.relative_to(root / folder).as_posix()
            if only and not sub.startswith(only):
                continue
            stem = str(p.relative_to(root).with_suffix(""))
            old = by_stem.get(stem)
            if old is None or SCORE_SUFFIXES.index(p.suffix.lower()) < SCORE_SUFFIXES.index(
                old.suffix.lower()
            ):
                by_stem[stem] = p
        stems = sorted(by_stem)
        if len(stems) > cap > 1:  # evenly spaced, deterministic
            stems = [stems[round(i * (len(stems) - 1) / (cap - 1))] for i in range(cap)]
        for stem in stems:
            rel = by_stem[stem].relative_to(root)
            parts = rel.with_suffix("").parts
            # a work in its own folder (mozart/k155/movement1) groups its movements
            group = "/".join(parts[:2]) if len(parts) > 2 else "/".join(parts)
            title = " ".join(parts[1:])
            chosen.append((str(rel), composer, title, group))
    return chosen


def _midi_name(rel: str) -> str:
    return rel.replace("/", "__").rsplit(".", 1)[0] + ".mid"


def _convert(job: tuple[str, str]) -> str:
    """Convert one corpus score to MIDI at ``out`` (runs in a worker process)."""
    rel, out = job
    import warnings

    from music21 import converter, stream

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        score = converter.parse(str(_corpus_root() / rel))
        if isinstance(score, stream.Opus):  # an ABC file of one voice per tune: one score
            score = score.mergeScores()
        atomic_write(out, lambda tmp: score.write("midi", fp=str(tmp)))
    return out


def read_builtin(
    workers: int | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> Listing:
    """The built-in corpus as a :class:`Listing`, converting what is not yet converted."""
    return read_music21(SELECTION, builtin_dir(), workers, progress)


def read_music21(
    selection: tuple[tuple[str, str, int, tuple[str, ...]], ...],
    folder: Path,
    workers: int | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    timeout: float = WORK_TIMEOUT_S,
) -> Listing:
    """Works of music21's corpus (``select_works(selection)``) converted to MIDI in
    ``folder``, as a :class:`Listing`; a finished manifest is read back, a killed conversion
    resumes."""
    from harmonixr._pool import run_robust

    manifest = folder / "manifest.json"
    if manifest.is_file():
        data = json.loads(manifest.read_text())
        pieces = [Piece(**p) for p in data["pieces"] if Path(p["path"]).is_file()]
        if len(pieces) == len(data["pieces"]):
            skipped = [tuple(s) for s in data["skipped"]]
            return Listing(pieces, "builtin", skipped)  # type: ignore[arg-type]
    folder.mkdir(parents=True, exist_ok=True)
    works = select_works(selection)
    pieces_by_rel: dict[str, Piece] = {}
    skipped: list[tuple[str, str]] = []
    todo = []
    for rel, composer, title, group in works:
        out = folder / _midi_name(rel)
        piece = Piece(str(out), composer, title, group)
        pieces_by_rel[rel] = piece
        if not out.is_file():
            todo.append((rel, str(out)))
    done = len(works) - len(todo)
    n_workers = workers or min(len(todo), max(2, os.cpu_count() or 1)) or 1
    rels = [rel for rel, _ in todo]
    timed_out = False
    for outcome in run_robust(_convert, todo, workers=n_workers, timeout=timeout):
        done += 1
        rel = rels[outcome.index]
        if not outcome.ok:
            skipped.append((rel, outcome.error.splitlines()[0][:200]))
            timed_out = timed_out or outcome.failure == "timeout"
        if progress:
            progress(done, len(works), rel)
    bad = {rel for rel, _ in skipped}
    pieces = [p for rel, p in pieces_by_rel.items() if rel not in bad]
    if timed_out:
        # a work that timed out may only have met a busy machine: no manifest, so the next call
        # retries it, and the corpus never depends on how loaded this machine was
        return Listing(pieces, "builtin", skipped)
    record = {
        "version": BUILTIN_VERSION,
        "pieces": [asdict(p) for p in pieces],
        "skipped": skipped,
    }
    atomic_json(manifest, record, indent=1)
    return Listing(pieces, "builtin", skipped)
