"""Known works: whether a file is a rendition of a composition the index holds (the same file,
another edition, another performance), the question :meth:`harmonixr.api.Harmonixr.identify`
answers before any composer is guessed.

**Compositions.** Every indexed piece records the composition it renders (``Item.work``): the
files that share a name of one (an ASAP folder, a manifest's work and movement, the links
between them; ``CachedPiece.composition_names``) or that have the same content are one
composition, named by its smallest name. A file whose corpus says nothing is its own.

**Melodic sketches.** The match is the melodic content that groups are joined by
(``data/melody.py``: interval patterns of the top line, the bass and all notes, blind to key,
tempo and dynamics), not the embedding. On the shipped split's validation side, of the 247
pieces with another rendition indexed, the nearest embedding renders the same composition for
0.968 (0.939 with the previous model), the melodic rule below names it right for 0.984
(``works.json``); and an embedding's
similarity cannot tell a new piece from a known one (every piece has a close neighbour by
composer). To keep the shipped index small each piece keeps one in :data:`SAMPLE` of its
patterns, chosen by a hash of the pattern (so two renditions keep the same ones), as 16-bit
hashes (``works.npz``: 2.0 MB for the shipped index's 3,333 pieces). Two different patterns
share a hash by chance: between a question and a piece of ``m`` and ``n`` kept patterns about
``m·n / 65536`` of the shared count is chance, an overlap of about ``sqrt(m·n) / 65536`` (under
0.02 for pieces of a thousand kept patterns, against a threshold near 0.19). With 32-bit hashes
the validation rates were 0.980 and 0.955 (with 16-bit hashes, 0.976 and 0.962; both fitted
while test pieces could still be candidates, which they no longer are). A question's overlap with
a piece is the Ochiai coefficient of their kept patterns on the line where it is highest,
counted from :data:`MIN_SHARED` shared patterns.

**Decision.** The candidate is the piece of highest overlap; the probability that its
composition is the question's is a logistic curve of that overlap, fitted on the validation
side with every validation piece asked against the index without itself (``works.json``).
The work is named when the probability reaches one half. ``index measure`` measures both
rates on the test side, with intervals over its groups."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from harmonixr._files import atomic_json, atomic_write
from harmonixr.data import melody
from harmonixr.midi.corpora import UnionFind

SAMPLE = 8  # one pattern in SAMPLE is kept (by its hash)
MIN_SHARED = 4  # kept patterns two pieces must share before their overlap counts
RULE = f"{melody.RULE}/sketch-{SAMPLE}-{MIN_SHARED}-16bit"
PRINTS_FILE, FIT_FILE = "works.npz", "works.json"
_MULT = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: a bijection of 64-bit codes
_KEEP_BELOW = np.uint64(64 // SAMPLE)  # of the hash's top six bits


Sketch = tuple[np.ndarray, ...]  # per melodic line, sorted distinct uint16 pattern hashes


def sketch_of(fp: melody.Fingerprint) -> Sketch:
    """The kept patterns of a fingerprint: one in :data:`SAMPLE`, as 16-bit hashes."""
    out = []
    for codes in fp.lines:
        h = np.asarray(codes).astype(np.uint64) * _MULT  # wraps modulo 2**64, as meant
        kept = h[(h >> np.uint64(58)) < _KEEP_BELOW]
        out.append(np.unique((kept >> np.uint64(42)).astype(np.uint16)))
    return tuple(out)


def sketch(tensor: np.ndarray, low_note: int, frame_ms: float) -> Sketch:
    """A tensor's sketch (its fingerprint's kept patterns)."""
    return sketch_of(melody.fingerprint(tensor, low_note, frame_ms))


def compositions(names: Sequence[Sequence[str]]) -> list[str]:
    """One composition per entry: entries sharing a name are one (transitively), named by the
    smallest of their names; an entry without names is its own, named ``""``."""
    sets = UnionFind()  # each set named by its smallest member
    for ns in names:
        for n in ns:
            sets.union(ns[0], n)
    return [sets.find(ns[0]) if ns else "" for ns in names]


class WorkPrints:
    """The sketches of an index's pieces (row i = item i), searchable by overlap."""

    def __init__(self, sketches: Sequence[Sketch]) -> None:
        self.sketches = list(sketches)
        self._mats: list[tuple[np.ndarray, sp.csr_matrix, np.ndarray]] | None = None

    def __len__(self) -> int:
        return len(self.sketches)

    def extend(self, sketches: Sequence[Sketch]) -> None:
        self.sketches.extend(sketches)
        self._mats = None

    def _matrices(self) -> list[tuple[np.ndarray, sp.csr_matrix, np.ndarray]]:
        """Per line: the vocabulary of hashes, the pieces × vocabulary incidence and each
        piece's number of kept patterns (made once, not per question)."""
        if self._mats is None:
            self._mats = []
            for k in range(len(melody.LINES)):
                codes = [s[k] for s in self.sketches]
                vocab, column = np.unique(np.concatenate([*codes, _EMPTY]), return_inverse=True)
                sizes = np.array([c.size for c in codes], np.int64)
                indptr = np.concatenate(([0], np.cumsum(sizes)))
                data = np.ones(column.size, np.float32)
                shape = (len(codes), max(1, vocab.size))
                incidence = sp.csr_matrix((data, column.ravel(), indptr), shape)
                self._mats.append((vocab, incidence, sizes.astype(np.float64)))
        return self._mats

    def overlaps(self, queries: Sequence[Sketch]) -> np.ndarray:
        """(Q, N) overlap of each query with each piece: the best line's Ochiai coefficient,
        0 where fewer than :data:`MIN_SHARED` patterns are shared."""
        best = np.zeros((len(queries), len(self)), np.float64)
        for k, (vocab, mat, own) in enumerate(self._matrices()):
            rows, cols, sizes = [], [], []
            for q, s in enumerate(queries):
                pos = np.searchsorted(vocab, s[k])
                hit = pos < vocab.size
                hit[hit] = vocab[pos[hit]] == s[k][hit]
                rows.append(np.full(int(hit.sum()), q))
                cols.append(pos[hit])
                sizes.append(s[k].size)
            r, c = np.concatenate([*rows, _EMPTY_I]), np.concatenate([*cols, _EMPTY_I])
            qm = sp.csr_matrix((np.ones(r.size, np.float32), (r, c)), (len(queries), mat.shape[1]))
            shared = (qm @ mat.T).toarray()
            denom = np.sqrt(np.outer(np.asarray(sizes, np.float64), own))
            value = np.where(shared >= MIN_SHARED, shared / np.maximum(denom, 1.0), 0.0)
            np.maximum(best, value, out=best)
        return best

    def save(self, root: Path) -> None:
        arrays: dict[str, np.ndarray] = {}
        for k, line in enumerate(melody.LINES):
            codes = [s[k] for s in self.sketches]
            arrays[f"{line}_codes"] = np.concatenate([*codes, _EMPTY])
            arrays[f"{line}_sizes"] = np.array([c.size for c in codes], np.int64)
        atomic_write(root / PRINTS_FILE, lambda tmp: np.savez_compressed(tmp, **arrays))

    @classmethod
    def load(cls, root: Path, n: int) -> WorkPrints:
        with np.load(root / PRINTS_FILE) as z:
            per_line = []
            for line in melody.LINES:
                ends = np.cumsum(z[f"{line}_sizes"])
                per_line.append(np.split(z[f"{line}_codes"], ends[:-1]) if ends.size else [])
        if any(len(x) < n for x in per_line):
            raise ValueError(f"{root / PRINTS_FILE}: sketches for fewer pieces than the index's")
        return cls([tuple(x[i] for x in per_line) for i in range(n)])


_EMPTY = np.zeros(0, np.uint16)
_EMPTY_I = np.zeros(0, np.int64)


@dataclass(frozen=True)
class WorkFit:
    """The identification rule fitted on validation: ``p = 1 / (1 + exp(-(a·overlap + b)))``."""

    a: float
    b: float
    validation: dict[str, Any]  # what the fit saw and the rates it gives there
    rule: str = RULE

    def probability(self, overlap: np.ndarray | float) -> np.ndarray:
        x = np.asarray(overlap, np.float64)
        return 1.0 / (1.0 + np.exp(-(self.a * x + self.b)))

    def known(self, overlap: np.ndarray | float) -> np.ndarray:
        """Whether a work is named at this overlap with the closest piece: probability ≥ ½,
        and at least one pattern shared (with none, no piece is closest)."""
        x = np.asarray(overlap, np.float64)
        return (x > 0.0) & (self.probability(x) >= 0.5)

    @property
    def threshold(self) -> float:
        """The overlap from which a work is named (probability one half)."""
        return -self.b / self.a if self.a > 0 else float("inf")

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "a": self.a, "b": self.b, "validation": self.validation}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WorkFit:
        return cls(float(d["a"]), float(d["b"]), dict(d.get("validation", {})), d["rule"])

    def save(self, root: Path) -> None:
        atomic_json(root / FIT_FILE, {**self.to_dict(), "threshold": self.threshold}, indent=1)

    @classmethod
    def load(cls, root: Path) -> WorkFit:
        fit = cls.from_dict(json.loads((root / FIT_FILE).read_text()))
        if fit.rule != RULE:
            raise ValueError(
                f"{root / FIT_FILE}: made by {fit.rule!r}, this Harmonixr uses {RULE!r}"
            )
        return fit


def given_work(
    probs: np.ndarray, unknown: np.ndarray, composers: Sequence[str], work: Any
) -> tuple[np.ndarray, np.ndarray, int]:
    """The one composer table of a question given its identification ``work`` (a
    ``results.Identification`` or None): when a work is named and its composer is among
    ``composers``, that composer gets the work's probability and the model's own table
    (``probs`` (1, C), ``unknown`` (1,)) shares the rest, so the rows still sum to one; the
    composer's column, else -1 and the table unchanged."""
    if work is None or not work.known or work.composer not in composers:
        return probs, unknown, -1
    column, p = list(composers).index(work.composer), float(work.probability)
    probs, unknown = probs * (1.0 - p), unknown * (1.0 - p)
    probs[0, column] += p
    return probs, unknown, column


def best_others(overlaps: np.ndarray, own: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """For each query row (item ``own[q]`` of the index), the best other piece and its overlap:
    the question asked as if the piece were not indexed."""
    o = overlaps.copy()
    o[np.arange(len(own)), np.asarray(own, np.int64)] = -1.0
    best = o.argmax(axis=1) if o.shape[1] else np.zeros(len(own), np.int64)
    return best, o[np.arange(len(own)), best]


def asked_without_self(prints: WorkPrints, pieces: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """For indexed pieces ``pieces``, the best other piece and its overlap (``best_others``)."""
    pieces = list(pieces)
    return best_others(prints.overlaps([prints.sketches[i] for i in pieces]), pieces)


def outcomes(works: Sequence[str], own: Sequence[int], best: np.ndarray) -> dict[str, np.ndarray]:
    """Per query: whether another rendition of its composition is indexed, and whether the
    best other piece renders its composition."""
    w = np.asarray(works, dtype=object)
    mine = w[np.asarray(own, np.int64)]
    count: dict[str, int] = {}
    for x in works:
        count[x] = count.get(x, 0) + 1
    has = np.array([bool(x) and count[x] > 1 for x in mine])
    right = np.array([bool(x) and x == w[b] for x, b in zip(mine, best, strict=True)])
    return {"has_rendition": has, "right": right}


def fit_works(
    prints: WorkPrints,
    works: Sequence[str],
    val: Sequence[int],
    hidden: Sequence[int] = (),
    vectors: np.ndarray | None = None,
) -> WorkFit:
    """The logistic curve of P(best other piece's composition is the query's | overlap), fitted
    on the validation pieces ``val`` (indices into the index), each asked without itself and
    without the ``hidden`` pieces (the test side: never a candidate while fitting). With the
    index's ``vectors``, the validation record also says how often the nearest embedding
    renders the same composition, for comparison."""
    from sklearn.linear_model import LogisticRegression

    val = list(val)
    if not val:
        return WorkFit(0.0, -np.inf, {"pieces": 0, "note": "no validation side: never named"})
    overlaps = prints.overlaps([prints.sketches[i] for i in val])
    overlaps[:, np.asarray(list(hidden), np.int64)] = -1.0
    best, value = best_others(overlaps, val)
    got = outcomes(works, val, best)
    right = got["right"]
    if right.all() or not right.any():
        a, b = (0.0, 30.0) if right.all() else (0.0, -30.0)
    else:
        lr = LogisticRegression(C=1e4).fit(value.reshape(-1, 1), right.astype(int))
        a, b = float(lr.coef_[0, 0]), float(lr.intercept_[0])
    fit = WorkFit(a, b, {})
    named = fit.known(value)
    has = got["has_rendition"]
    rates: dict[str, Any] = {
        "pieces": len(val),
        "with_rendition": int(has.sum()),
        "without": int((~has).sum()),
        "identified_right": float((named & right)[has].mean()) if has.any() else None,
        "no_known_work": float((~named)[~has].mean()) if (~has).any() else None,
        "candidates": "every indexed piece but the test side's",
    }
    if vectors is not None and has.any():
        sims = np.asarray(vectors, np.float64)[val] @ np.asarray(vectors, np.float64).T
        sims[:, np.asarray(list(hidden), np.int64)] = -np.inf
        near = outcomes(works, val, best_others(sims, val)[0])["right"]
        rates["embedding_nearest_right"] = float(near[has].mean())
    return WorkFit(a, b, rates)


def _exact(hits: np.ndarray, units: np.ndarray) -> dict[str, Any]:
    """Clopper–Pearson 95 % interval over units: a unit counts as right when all its pieces
    are (pieces of one group are not independent; with every piece right the bootstrap's
    interval is [1, 1], this one is not)."""
    from scipy.stats import beta

    ok = {}
    for u, h in zip(units, hits, strict=True):
        ok[u] = ok.get(u, True) and bool(h)
    n, k = len(ok), sum(ok.values())
    lo = float(beta.ppf(0.025, k, n - k + 1)) if k > 0 else 0.0
    hi = float(beta.ppf(0.975, k + 1, n - k)) if k < n else 1.0
    return {"groups": n, "groups_all_right": k, "exact_95": [lo, hi]}


def measure_works(
    prints: WorkPrints,
    works: Sequence[str],
    fit: WorkFit,
    test: Sequence[int],
    units: np.ndarray,
    boot: Any,
    asked: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, Any]:
    """The known-work rule on the test pieces ``test`` (indices into the index), each asked
    without itself (``asked``: ``asked_without_self``'s answer when already computed): how
    often a piece with another rendition indexed is named right, how often one without is
    answered "no known work", and the calibration of the probability (its ECE as the
    confidence of the decision); intervals from ``boot`` (an ``evaluate.bootstrap.Bootstrap``)
    over ``units``, one per test piece."""
    from harmonixr.evaluate.metrics import expected_calibration_error

    test = list(test)
    best, value = asked if asked is not None else asked_without_self(prints, test)
    got = outcomes(works, test, best)
    has, right = got["has_rendition"], got["right"]
    p = fit.probability(value)
    named = fit.known(value)
    units = np.asarray(units)

    def share(mask: np.ndarray, hit: np.ndarray) -> dict[str, Any] | None:
        if not mask.any():
            return None
        return boot.population(units[mask]).mean(hit[mask], "pieces").to_json()

    probs, said = np.stack([1.0 - p, p], axis=1), right.astype(np.int64)
    ece = boot.population(units).item_estimate(
        lambda w: expected_calibration_error(probs, said, weights=w), "pieces"
    )
    return {
        "measured_on": "test",
        "rule": fit.rule,
        "threshold": fit.threshold,
        "pieces": len(test),
        "with_rendition": int(has.sum()),
        "without": int((~has).sum()),
        "identified_right": share(has, named & right),
        "identified_right_by_group": _exact((named & right)[has], units[has])
        if has.any()
        else None,
        "no_known_work": share(~has, ~named),
        "no_known_work_by_group": _exact((~named)[~has], units[~has]) if (~has).any() else None,
        "named_wrong_work": int((named & ~right).sum()),
        "probability_ece": ece.to_json(),
    }
