"""The service's response shapes, so that the OpenAPI page at ``/docs`` documents them and every
answer is checked against them: pydantic models of what only the service answers, and the
API's own records (``harmonixr.results``: ``Attribution``, ``Match``, ``Verdict``, ``Passage``,
stdlib dataclasses whose fields carry their descriptions), declared once there."""

from __future__ import annotations

from pydantic import BaseModel, Field

from harmonixr.results import Attribution, Match, Passage


class Embedding(BaseModel):
    dim: int
    embedding: list[float] = Field(description="L2-normalised whole-piece embedding.")


class Roll(BaseModel):
    """A piano-roll thumbnail: ``data`` is base64 of uint8 ``(pitches, columns)``, row ``r``
    the MIDI note ``low_note + r``, each column the loudest cell of its time bin (0–127)."""

    pitches: int
    columns: int
    low_note: int
    seconds: float
    max_value: int
    data: str


class Timeline(BaseModel):
    window_s: float
    hop_s: float
    passages: list[Passage]
    calibrated: bool = Field(
        False, description="Window probabilities use the whole-piece calibration: not calibrated."
    )


class Position(BaseModel):
    x: float
    y: float
    z: float


class KnownWork(BaseModel):
    """Whether the file renders a composition of the index (``Harmonixr.identify``)."""

    known: bool = Field(description="A known work is named: probability ≥ 0.5.")
    probability: float = Field(description="That the closest piece renders the same work.")
    composer: str
    title: str = Field(description="The closest indexed piece's title.")
    work: str = Field(description="The work's name as shown.")
    renditions: int = Field(description="Indexed files of that work.")
    overlap: float = Field(description="Share of melodic patterns with the closest piece.")
    same_file: bool
    path: str
    text: str = Field(description="The sentence a person reads.")


class Analysis(BaseModel):
    """Everything the page shows for one file."""

    file: str
    seconds: float = Field(
        description="Music analysed: stretches without a new note over 10 s count as 10 s."
    )
    identified: KnownWork | None = Field(None, description="Null when the index has no works.")
    attribution: list[Attribution]
    similar: list[Match] = Field(description="Nearest pieces, the best one of each work.")
    similar_all: list[Match] = Field(description="Nearest pieces, every performance/edition.")
    timeline: Timeline
    roll: Roll
    position: Position | None = Field(description="In the corpus map; null without a map.")


class CorpusMapPoints(BaseModel):
    available: bool
    note: str
    x: list[float] = []
    y: list[float] = []
    z: list[float] = []
    composers: list[str] = []
    titles: list[str] = []
    colours: dict[str, str] = {}


class Health(BaseModel):
    status: str
    model: str
    shipped: bool
    index_size: int
    composers: list[str] = Field(description="The composers the model can name.")
    colours: dict[str, str] = Field(description="Composer → colour, as in the map pictures.")
    map: bool
    map_note: str
    max_upload_bytes: int
    max_score_bytes: int = Field(description="Largest score file (MusicXML, .mxl, kern, MEI).")
    workers: int
    crop_s: float = Field(description="The model's crop: the timeline's default window, s.")
    known_works: bool = Field(
        default=False, description="Whether the index recognises known works (identify)."
    )
    open_set: bool = Field(
        default=True,
        description="Whether 'someone else' is an answer (it is withdrawn where, "
        "measured held out, it did not work).",
    )
    open_set_note: str = Field(default="", description="Why it is withdrawn, with the figures.")
    new_work_note: str = Field(
        default="", description="What held-out figures say of answers no known work backs."
    )


class Problem(BaseModel):
    """Every refused request: a sentence for people, a reason for programs."""

    detail: str
    reason: str
    file: str | None = None
