"""The project's plot style, one place for every figure: the Agg backend (set when a figure
is made, not at import), the resolution, how a PNG is written, and the composer palette.

A leaf module at the package's top, so the evaluation (``evaluate/report.py``) and the
pictures (``viz/``, whose ``_style.py`` adds GIFs and HTML on top) both use it without either
importing the other. Figures are made with :func:`figure` / :func:`subplots` and written with
:func:`save_png`; no other module sets a backend or a dpi.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DPI = 100  # every figure's resolution: a 10 × 7.5 in figure is 1000 × 750 pixels
OTHER = "other"
OTHER_COLOUR = "#b4b4b4"
# 16 colours picked to stay apart from each other and from the grey of "other"
PALETTE = (
    "#1f77b4",  # blue
    "#d62728",  # red
    "#2ca02c",  # green
    "#ff7f0e",  # orange
    "#9467bd",  # purple
    "#17becf",  # cyan
    "#e377c2",  # pink
    "#8c564b",  # brown
    "#bcbd22",  # olive
    "#000080",  # navy
    "#f5c400",  # yellow
    "#006d5b",  # dark teal
    "#ff9896",  # salmon
    "#7b4173",  # plum
    "#98df8a",  # light green
    "#5a5a5a",  # dark grey
)
MAX_COLOURS = len(PALETTE)


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (no display needed); set here, not at import."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def figure(**kwargs: Any) -> Any:
    """A new figure at the project's resolution (``pyplot().figure`` arguments otherwise)."""
    return pyplot().figure(dpi=DPI, **kwargs)


def subplots(*args: Any, **kwargs: Any) -> tuple[Any, Any]:
    """``pyplot().subplots`` at the project's resolution."""
    return pyplot().subplots(*args, dpi=DPI, **kwargs)


def save_png(fig: Any, path: str | Path, close: bool = True) -> Path:
    """Write ``fig`` to ``path`` (folders made) on white at the project's resolution; release
    the figure unless ``close`` is false (the caller still draws on it), also on failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(path, dpi=DPI, facecolor="white")
    finally:
        if close:
            pyplot().close(fig)
    return path


def composer_colours(composers: Sequence[str], top: int = MAX_COLOURS) -> dict[str, str]:
    """Colours of the ``top`` composers with the most pieces (ties by name), in that order;
    the others are drawn as :data:`OTHER`. A composer literally named "other" keeps the grey."""
    top = max(0, min(top, MAX_COLOURS))
    counts = Counter(composers)
    ranked = sorted(counts, key=lambda c: (-counts[c], c))
    chosen = [c for c in ranked if c != OTHER][:top]
    return {c: PALETTE[i] for i, c in enumerate(chosen)}
