"""What the front door (:class:`harmonixr.api.Harmonixr`) answers: attributions, matches,
verdicts, timeline passages, and embeddings of many files with the ones that failed; and how
embeddings are written to disk (``.npy`` or ``.parquet``)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harmonixr._files import atomic_write
from harmonixr.midi.load import MidiError


def described(text: str, **default: Any) -> Any:
    """A field with its description, which the service's OpenAPI page (``/docs``) shows
    (pydantic reads it from the field's metadata); ``default=`` as ``dataclasses.field``."""
    return field(metadata={"description": text}, **default)


@dataclass(frozen=True)
class Attribution:
    """A named composer with its calibrated probability and its centroid similarity; the
    open-set entry (``known=False``, composer ``"unknown"``: someone else, no score); or a
    *barely known* composer (``known=False, barely_known=True``): one with a centroid but too
    few training works to be named, shown with its similarity and probability 0 (its share is
    part of "someone else")."""

    composer: str = described(
        'The first entry is the answer: a named composer, or "unknown" (known=false, someone else).'
    )
    probability: float = described("Calibrated; named entries with unknown sum to 1.")
    score: float | None = described("Cosine similarity to the composer's centroid.")
    known: bool = True
    barely_known: bool = described(
        "Too few training works to be named: shown, probability 0.", default=False
    )
    from_work: str = described(
        "The known work this composer follows from (identify), or empty.", default=""
    )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Match:
    """An indexed piece near the question."""

    composer: str
    title: str
    path: str = described("The piece's path as the index recorded it.")
    similarity: float = described("Cosine similarity of the whole-piece embeddings.")
    sha256: str = ""
    performer: str = described("Who played it, where the corpus says.", default="")
    source: str = described("The corpus, edition or converter it came from.", default="")
    same_composer: float | None = described(
        "The probability that it is by the same composer as the question (verify's "
        "calibration, fitted on validation): the similarity on a scale people read.",
        default=None,
    )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Identification:
    """Whether a piece is a rendition (the same file, another edition, another performance)
    of a composition the index holds: the indexed piece that shares most of its melody, and
    the probability that it renders the same composition (fitted on validation)."""

    known: bool = described("A known work is named: probability ≥ 0.5.")
    probability: float = described("That the closest piece renders the same composition.")
    composer: str = described("The closest piece's composer; empty when none shares a pattern.")
    title: str = described("The closest piece's title; empty when none shares a pattern.")
    renditions: int = described("Indexed files of that composition.")
    overlap: float = described("Share of melodic patterns with the closest piece (0–1).")
    same_file: bool = described("The very file is indexed.", default=False)
    path: str = described("The closest piece's path as the index recorded it.", default="")

    @property
    def work(self) -> str:
        """The title as a name: without a score's suffix, underscores as spaces."""
        return self.title.removesuffix(" (score)").replace("_", " ")

    @property
    def text(self) -> str:
        """The sentence a person reads."""
        many = f"{self.renditions} rendition{'s' if self.renditions != 1 else ''} in the index"
        if self.same_file:
            return f"This file is in the index: {self.work} by {self.composer} ({many})."
        if self.known:
            return (
                f"This is {self.work} by {self.composer}: {many} "
                f"(probability {self.probability:.2f})."
            )
        if not self.composer:
            return "No known work: no indexed piece shares its melody."
        return (
            "No known work: no indexed piece shares enough of its melody (closest: "
            f"{self.work} by {self.composer}, probability {self.probability:.2f})."
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "work": self.work, "text": self.text}


@dataclass(frozen=True)
class Verdict:
    """Whether two pieces are by the same composer."""

    similarity: float
    same_composer: bool = described("probability ≥ 0.5")
    probability: float = described("Of the same composer, at an even prior.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Passage:
    """One window of a timeline; unpacks as ``(start_s, end_s, probabilities)``. The known
    composers' probabilities and ``unknown`` sum to one."""

    start_s: float = described("In the music analysed (long quiet stretches cut).")
    end_s: float
    probabilities: dict[str, float] = described("Known composers; with unknown, sum 1.")
    unknown: float

    def __iter__(self) -> Iterator[Any]:
        return iter((self.start_s, self.end_s, self.probabilities))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Embedded:
    """Embeddings of the files that could be read, and why the others could not."""

    paths: tuple[str, ...]
    vectors: np.ndarray  # (len(paths), D)
    errors: tuple[MidiError, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "embedded": len(self.paths),
            "dim": int(self.vectors.shape[1]),
            "errors": [e.to_dict() for e in self.errors],
        }


def embeddings_format(out: str | os.PathLike[str]) -> str:
    """``npy`` or ``parquet`` from the output's name; raises before any work is done if the
    name is neither or pyarrow is missing for parquet."""
    suffix = Path(out).suffix.lower()
    if suffix == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            msg = f"{out}: writing .parquet needs pyarrow (pip install pyarrow); or use .npy"
            raise ValueError(msg) from None
        return "parquet"
    if suffix == ".npy":
        return "npy"
    raise ValueError(f"{out}: the output must end in .npy or .parquet")


def write_embeddings(out: str | os.PathLike[str], result: Embedded) -> list[Path]:
    """``.npy`` (with the paths, one a line, in ``NAME.paths.txt`` beside it) or ``.parquet``
    (columns ``path`` and ``embedding``, needs pyarrow). Returns the files written."""
    out = Path(out)
    if embeddings_format(out) == "npy":
        vectors = result.vectors.astype(np.float32)
        atomic_write(out, lambda tmp: np.save(tmp, vectors))
        listing = out.with_suffix(".paths.txt")
        atomic_write(listing, "".join(p + "\n" for p in result.paths))
        return [out, listing]
    import pyarrow as pa
    import pyarrow.parquet as pq

    dim = result.vectors.shape[1]
    flat = pa.array(result.vectors.astype(np.float32).ravel())
    table = pa.table(
        {
            "path": pa.array(list(result.paths), pa.string()),
            "embedding": pa.FixedSizeListArray.from_arrays(flat, dim),
        }
    )
    atomic_write(out, lambda tmp: pq.write_table(table, tmp))
    return [out]
