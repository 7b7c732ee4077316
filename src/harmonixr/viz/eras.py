"""The composers of a run's index, placed by their centroids and coloured by era, with the
Mantel test of ``evaluate/style.py`` written beside the picture."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from harmonixr._files import atomic_json
from harmonixr.evaluate.style import ERAS, composer_table, style_test
from harmonixr.viz._style import save_png, subplots

ERA_COLOURS = dict(zip(ERAS, ("#8c564b", "#1f77b4", "#d62728", "#9467bd", "#2ca02c"), strict=True))


def composer_style(
    index_dir: str | Path,
    out_dir: str | Path,
    min_pieces: int = 3,
    permutations: int = 9999,
    seed: int = 0,
) -> dict[str, Any]:
    """Centroids of the index (from its run's training pieces) of composers with at least
    ``min_pieces`` training pieces and a row in the composer table → ``style.json`` and
    ``composers-eras.png`` in ``out_dir``."""
    from harmonixr.search.index import Index, check_index
    from harmonixr.train.rundir import CONFIG, Run

    index = Index.load(index_dir)
    if (Path(index_dir).parent / CONFIG).is_file():  # RUN/index: it must be the run's weights'
        check_index(index, Run.open(Path(index_dir).parent))
    train = index.manifest.get("train_pieces", {})
    table = composer_table()
    names = [n for n in index.known if train.get(n, 0) >= min_pieces and n in table]
    if len(names) < 4:
        raise ValueError(f"{index_dir}: {len(names)} composers with a date and enough pieces")
    cent = np.asarray(index.centroids)[[index.known.index(n) for n in names]]
    result = style_test(cent, names, permutations, seed)
    result["min_training_pieces"] = min_pieces
    result["centroids_from"] = "the run's training pieces (index centroids)"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_json(out / "style.json", result, indent=1)
    result["picture"] = str(_draw(cent, names, table, result, out / "composers-eras.png"))
    return result


def _draw(cent: np.ndarray, names: list[str], table, result: dict[str, Any], path: Path) -> Path:
    c = cent / np.linalg.norm(cent, axis=1, keepdims=True)
    c = c - c.mean(axis=0)
    _, _, vt = np.linalg.svd(c, full_matrices=False)
    xy = c @ vt[:2].T
    fig, ax = subplots(figsize=(9, 7))
    for era in ERAS:
        k = [i for i, n in enumerate(names) if table[n].era == era]
        if k:
            ax.scatter(xy[k, 0], xy[k, 1], s=60, c=ERA_COLOURS[era], label=era, edgecolors="#333")
    for i, n in enumerate(names):
        ax.annotate(
            f"{n} ({table[n].born})", xy[i], fontsize=7, xytext=(4, 3), textcoords="offset points"
        )
    b, e = result["birth_year"], result["era"]
    ax.set_title(
        "Composer centroids (first two principal axes), coloured by era\n"
        f"Spearman(centroid distance, birth-year distance) = {b['spearman']:.2f} "
        f"(p = {b['p']:.4f}); era distance: {e['spearman']:.2f} (p = {e['p']:.4f})",
        fontsize=9,
    )
    ax.legend(fontsize=8, loc="best")
    ax.set_xticks([])
    ax.set_yticks([])
    return save_png(fig, path)
