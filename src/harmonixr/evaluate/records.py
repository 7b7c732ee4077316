"""The evaluation's two records: a labelled side of embeddings (:class:`Side`) and a figure with
its interval (:class:`Estimate`). Every protocol takes sides and gives estimates; every report
stores an estimate in one JSON form and prints it with one formatter.

Reports written before these records stored an interval three ways; :meth:`Estimate.read` reads
each of them: ``{"auc": v, "auc_lo": lo, "auc_hi": hi}`` (sibling keys, :func:`flat_estimates`),
``{"value": v, "lo": lo, "hi": hi}`` and ``{"auc": v, "auc_interval": [lo, hi]}``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from harmonixr.data.cache import CachedPiece

UNKNOWN = "?"  # a kind or source nobody recorded

# how the items behind a figure are weighted (``Estimate.weighting``)
WEIGHTINGS = {
    "pairs": "every pair of pieces from different units counts once",
    "unit pairs": "every pair of units counts once (a pair weighs 1 / pairs of its two units)",
    "pieces": "every piece counts once",
    "queries": "every query piece counts once",
    "units": "every piece counts once; a stranger's unit is its composer",
}


def _matrix(embeddings: np.ndarray, n: int) -> np.ndarray:
    emb = np.asarray(embeddings, np.float64)
    if emb.ndim == 2:
        return emb
    return emb.reshape(n, -1) if n else emb.reshape(0, 0)


def _labels(values: Iterable[Any] | None, n: int, fill: str) -> np.ndarray:
    if values is None:
        return np.full(n, fill, dtype=object)
    out = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=object)
    return np.array([fill if v is None or v == "" else v for v in out], dtype=object)


@dataclass(frozen=True, eq=False)
class Side:
    """Pieces of one side (training, validation, test, a held-out source…) and one method's
    embedding of each: ``embeddings`` (N, D); per piece its ``composer``, leak-free ``unit``
    (the group no split cuts), ``work``, ``kind`` (performance | score | ``?``), ``source``
    (where it comes from: a manifest's source and converter, else the corpus reader) and
    ``performer`` ("" unknown)."""

    embeddings: np.ndarray
    composer: np.ndarray
    unit: np.ndarray
    work: np.ndarray
    kind: np.ndarray
    source: np.ndarray
    performer: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.composer)
        emb = _matrix(self.embeddings, n)
        object.__setattr__(self, "embeddings", emb)
        for f in fields(self):
            if f.name == "embeddings":
                continue
            v = np.asarray(getattr(self, f.name), dtype=object)
            object.__setattr__(self, f.name, v)
            if v.shape != (n,):
                raise ValueError(f"Side: {f.name} has shape {v.shape}, composers {n}")
        if emb.shape[0] != n:
            raise ValueError(f"Side: {emb.shape[0]} embeddings for {n} pieces")

    @classmethod
    def of(
        cls,
        embeddings: np.ndarray,
        composer: Sequence[str],
        unit: Sequence[str] | None = None,
        *,
        work: Sequence[str] | None = None,
        kind: Sequence[str] | None = None,
        source: Sequence[str] | None = None,
        performer: Sequence[str] | None = None,
    ) -> Side:
        """A side from labels: each piece its own unit and work unless given; kind and source
        unknown (``?``) and performer "" unless given."""
        n = len(composer)
        unit_ = np.array([f"#{i}" for i in range(n)], dtype=object)
        if unit is not None:
            unit_ = _labels(unit, n, "")
        return cls(
            _matrix(embeddings, n),
            np.asarray(list(composer), dtype=object),
            unit_,
            _labels(work, n, "") if work is not None else unit_.copy(),
            _labels(kind, n, UNKNOWN),
            _labels(source, n, UNKNOWN),
            _labels(performer, n, "") if performer is not None else np.full(n, "", object),
        )

    @classmethod
    def from_rows(cls, rows: Sequence[CachedPiece], embeddings: np.ndarray) -> Side:
        """The cache's labels of ``rows`` (``CachedPiece``) beside their ``embeddings``."""
        return cls(
            _matrix(embeddings, len(rows)),
            np.array([r.composer for r in rows], dtype=object),
            np.array([r.group for r in rows], dtype=object),
            np.array([r.work_id for r in rows], dtype=object),
            np.array([r.kind or UNKNOWN for r in rows], dtype=object),
            np.array([r.origin or UNKNOWN for r in rows], dtype=object),
            np.array([r.performer or "" for r in rows], dtype=object),
        )

    def __len__(self) -> int:
        return len(self.composer)

    def take(self, which: np.ndarray | Sequence[int]) -> Side:
        """The pieces selected by a boolean mask or by indices, in that order."""
        which = np.asarray(which)
        if which.dtype != bool:
            which = which.astype(np.int64)
        return Side(**{f.name: getattr(self, f.name)[which] for f in fields(self)})

    def with_embeddings(self, embeddings: np.ndarray) -> Side:
        """The same pieces embedded otherwise (another method, a back-end's output)."""
        return Side(**{**self._arrays(), "embeddings": embeddings})

    def _arrays(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @staticmethod
    def concat(sides: Sequence[Side]) -> Side:
        """The pieces of several sides, one after the other."""
        if not sides:
            raise ValueError("no sides to join")
        return Side(
            **{f.name: np.concatenate([getattr(s, f.name) for s in sides]) for f in fields(Side)}
        )


def _finite(x: Any) -> float | None:
    if x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


@dataclass(frozen=True)
class Estimate:
    """A figure: its ``value`` and 95 % interval (``lo``, ``hi``; None without one), how its
    items were weighted (``weighting``, a key of :data:`WEIGHTINGS` or ""), and the bootstrap
    resamples behind the interval (0: none)."""

    value: float | None
    lo: float | None = None
    hi: float | None = None
    weighting: str = ""
    resamples: int = 0

    def __post_init__(self) -> None:
        for name in ("value", "lo", "hi"):
            object.__setattr__(self, name, _finite(getattr(self, name)))
        if self.value is None or self.lo is None or self.hi is None:
            object.__setattr__(self, "lo", None)
            object.__setattr__(self, "hi", None)

    def format(self, digits: int = 3) -> str:
        """``0.812 [0.740, 0.860]``, ``0.812`` without an interval, ``–`` without a value:
        the one way every report prints a figure."""
        if self.value is None:
            return "–"
        text = f"{self.value:.{digits}f}"
        if self.lo is not None and self.hi is not None:
            text += f" [{self.lo:.{digits}f}, {self.hi:.{digits}f}]"
        return text

    def to_json(self) -> dict[str, Any]:
        """The one JSON form: ``{"value", "lo", "hi", "weighting", "resamples"}`` (null where
        there is none)."""
        return {
            "value": self.value,
            "lo": self.lo,
            "hi": self.hi,
            "weighting": self.weighting,
            "resamples": self.resamples,
        }

    @classmethod
    def read(
        cls,
        x: Any,
        interval: Any = None,
        *,
        weighting: str = "",
        resamples: int = 0,
    ) -> Estimate:
        """An estimate from any form a report ever stored: the JSON form (or its older
        ``{value, lo, hi}``), a bare number, or a number with its ``interval`` given apart as
        ``[lo, hi]`` or ``(lo, hi)``. ``weighting`` and ``resamples`` fill what an old form
        did not record."""
        if isinstance(x, Estimate):
            return x
        if isinstance(x, Mapping):
            return cls(
                x.get("value"),
                x.get("lo"),
                x.get("hi"),
                str(x.get("weighting") or weighting),
                int(x.get("resamples") or resamples),
            )
        lo = hi = None
        if interval is not None and len(interval) == 2:
            lo, hi = interval
        return cls(x, lo, hi, weighting, resamples if lo is not None else 0)


def is_estimate(x: Any) -> bool:
    """Whether ``x`` is an estimate in its JSON form (or the older ``{value, lo, hi}``)."""
    return isinstance(x, Mapping) and "value" in x and ("lo" in x or "hi" in x)


def flat_estimates(
    d: Mapping[str, Any], weightings: Mapping[str, str] | None = None, resamples: int = 0
) -> dict[str, Any]:
    """A table whose intervals are sibling keys (``x``, ``x_lo``, ``x_hi``) or ``x_interval``
    lists, with each such figure as an estimate's JSON form; other entries as they are.
    ``weightings``: the weighting of each figure, by name."""
    weightings = weightings or {}
    out: dict[str, Any] = {}
    for k, v in d.items():
        if k.endswith(("_lo", "_hi")) and k[:-3] in d:
            continue
        if k.endswith("_interval") and k[: -len("_interval")] in d:
            continue
        if f"{k}_lo" in d or f"{k}_hi" in d:
            iv = (d.get(f"{k}_lo"), d.get(f"{k}_hi"))
        elif f"{k}_interval" in d:
            iv = d[f"{k}_interval"]
        else:
            out[k] = v
            continue
        out[k] = Estimate.read(
            v, iv, weighting=weightings.get(k, ""), resamples=resamples
        ).to_json()
    return out


def formatted(x: Any, digits: int = 3) -> str:
    """Any stored figure as text: an estimate (any form) with its interval, a number, or
    ``–``."""
    if x is None:
        return "–"
    if isinstance(x, Mapping | Estimate):
        return Estimate.read(x).format(digits)
    if isinstance(x, int | float | np.integer | np.floating):
        return Estimate(float(x)).format(digits)
    return str(x)


def value(x: Any) -> float | None:
    """The value of a stored figure (an estimate in any form, or a number)."""
    if isinstance(x, Mapping | Estimate):
        return Estimate.read(x).value
    return _finite(x)


def json_ready(x: Any) -> Any:
    """``x`` with numpy scalars as Python numbers, tuples as lists, estimates in their JSON
    form and non-finite floats as None: what a report's JSON holds."""
    if isinstance(x, Estimate):
        return x.to_json()
    if isinstance(x, Mapping):
        return {k: json_ready(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [json_ready(v) for v in x]
    if isinstance(x, np.ndarray):
        return json_ready(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x
