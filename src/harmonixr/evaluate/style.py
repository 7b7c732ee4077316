"""Does the embedding's composer geometry follow music history? A Mantel-style test.

For composers with a known birth year and era (``data/composers.csv``: years and eras as given
by standard reference works, named per row), the rank correlation (Spearman) between the
cosine distance of two composers' centroids and (a) the years between their births, (b) the
number of era steps between them (Baroque → Classical → Romantic → Impressionist → 20th c.).
The p-value permutes which composer is which (the rows and columns of one matrix together),
since the pairs of a distance matrix are not independent.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

import numpy as np

ERAS = ("Baroque", "Classical", "Romantic", "Impressionist", "20th c.")


@dataclass(frozen=True)
class Composer:
    name: str
    born: int
    era: str
    source: str


def composer_table() -> dict[str, Composer]:
    """The shipped table of composers' birth years and eras."""
    text = resources.files("harmonixr.data").joinpath("composers.csv").read_text("utf-8")
    out = {}
    for row in csv.DictReader(text.splitlines()):
        if row["era"] not in ERAS:
            raise ValueError(f"composers.csv: {row['composer']}: unknown era {row['era']!r}")
        out[row["composer"]] = Composer(
            row["composer"], int(row["born"]), row["era"], row["source"]
        )
    return out


def _upper(m: np.ndarray) -> np.ndarray:
    i, j = np.triu_indices(m.shape[0], k=1)
    return m[i, j]


def _rank(v: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(v)


def mantel(a: np.ndarray, b: np.ndarray, permutations: int = 9999, seed: int = 0):
    """Spearman correlation of two square distance matrices' upper triangles, and the
    one-sided permutation p-value of a correlation at least this large ((k + 1) / (n + 1))."""
    n = a.shape[0]
    if n < 4:
        raise ValueError(f"need at least 4 composers, got {n}")
    ra = _rank(_upper(a))
    ra = (ra - ra.mean()) / ra.std()
    i, j = np.triu_indices(n, k=1)

    def rho(bm: np.ndarray) -> float:
        rb = _rank(bm[i, j])
        rb = (rb - rb.mean()) / rb.std()
        return float(np.mean(ra * rb))

    observed = rho(b)
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(permutations):
        p = rng.permutation(n)
        hits += rho(b[np.ix_(p, p)]) >= observed - 1e-12
    return observed, (hits + 1) / (permutations + 1)


def style_test(
    centroids: np.ndarray,
    names: Sequence[str],
    permutations: int = 9999,
    seed: int = 0,
) -> dict[str, object]:
    """Correlations of centroid distances with birth-year and era distances (composers in the
    table only)."""
    table = composer_table()
    keep = [k for k, n in enumerate(names) if n in table]
    used = [names[k] for k in keep]
    c = np.asarray(centroids, np.float64)[keep]
    c = c / np.linalg.norm(c, axis=1, keepdims=True)
    d_emb = 1.0 - c @ c.T
    born = np.array([table[n].born for n in used], float)
    era = np.array([ERAS.index(table[n].era) for n in used], float)
    d_year = np.abs(born[:, None] - born[None, :])
    d_era = np.abs(era[:, None] - era[None, :])
    out: dict[str, object] = {"composers": used, "permutations": permutations}
    for key, dm in (("birth_year", d_year), ("era", d_era)):
        rho, p = mantel(d_emb, dm, permutations, seed)
        out[key] = {"spearman": rho, "p": p}
    return out
