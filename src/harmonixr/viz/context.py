"""``harmonixr viz context``: a user's MIDI files placed into the corpus's saved map (no
refit: the corpus points stay where they were), highlighted and labelled, with each file's
nearest corpus pieces."""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from harmonixr._files import atomic_json
from harmonixr.train.rundir import Run
from harmonixr.viz import scatter
from harmonixr.viz._style import MAX_COLOURS, composer_colours
from harmonixr.viz.maps import build_map, check_map, piece_layers, short_path
from harmonixr.viz.scatter import Layer
from harmonixr.viz.tsne import CorpusMap

HIGHLIGHT = "#000000"


def _quiet(_: str) -> None:
    pass


def context_map(
    run: str | Path,
    files: Sequence[str | Path],
    data: str | Path | None = None,
    map_dir: str | Path | None = None,
    out: str | Path | None = None,
    split: str = "all",
    k: int = 5,
    top: int = MAX_COLOURS,
    say: Callable[[str], None] = _quiet,
) -> dict[str, Path]:
    """Write ``context.png``, ``context.html`` and ``context.json`` (positions and nearest
    pieces). The map is ``map_dir`` (default ``RUN/viz/map``, as ``viz tsne`` saves it); when
    there is none yet it is fitted from ``data`` and saved there first."""
    from harmonixr.midi.load import safe_load

    if not files:
        raise ValueError("no MIDI files to place")
    info = Run.open(run)
    viz_dir = info.root / "viz"
    map_dir = Path(map_dir) if map_dir else viz_dir / "map"
    out = Path(out) if out else viz_dir / "context"
    if (map_dir / "map.json").is_file():
        cmap = CorpusMap.load(map_dir)
        check_map(cmap, info, map_dir)
    else:
        if data is None:
            raise ValueError(f"{map_dir}: no saved map; pass --data CACHE to make one")
        say(f"no saved map in {map_dir}: making one")
        cmap = build_map(info, data, split, map_dir.parent, say=say)
    names = [Path(f).name for f in files]
    tensors = []
    for f in files:
        say(f"reading {f}")
        tensors.append(safe_load(f, info.tensor).tensor)
    z = info.embed(tensors)
    say(f"placing {len(files)} file(s) in the map of {len(cmap)} pieces")
    xyz = cmap.place(z)
    idx, dist = cmap.nearest(z, k)

    colours = composer_colours(cmap.composers, top)
    corpus = piece_layers(
        cmap.coords, cmap.composers, cmap.titles, cmap.paths, colours, size=10.0, alpha=0.45
    )
    users = Layer(
        "your files",
        xyz,
        "#ffd400",
        size=260.0,
        alpha=1.0,
        marker="*",
        edge=HIGHLIGHT,
        labels=names,
        hover=[(n, str(f)) for n, f in zip(names, files, strict=True)],
        hover_fields=("file", "path"),
        leaders=True,
    )
    layers = [*corpus, users]
    title = "Your pieces in the corpus map"
    sub = (
        f"{len(files)} file(s) placed among {len(cmap)} pieces of {len(set(cmap.composers))} "
        f"composers (the saved map of {info.root}; corpus points never move)"
    )
    out.mkdir(parents=True, exist_ok=True)
    fig, ax = scatter.draw(layers, title, sub)
    try:
        png = scatter.save_png(fig, out / "context.png", ax)
    finally:
        scatter.close(fig)
    table = _nearest_html(cmap, names, idx, dist)
    page = scatter.save_html(layers, title, out / "context.html", sub, below=table)
    record = [
        {
            "file": str(f),
            "position": [round(float(v), 4) for v in p],
            "nearest": [
                {
                    "path": cmap.paths[j],
                    "composer": cmap.composers[j],
                    "title": cmap.titles[j],
                    "distance": round(float(d), 4),
                }
                for j, d in zip(row, drow, strict=True)
            ],
        }
        for f, p, row, drow in zip(files, xyz, idx, dist, strict=True)
    ]
    atomic_json(out / "context.json", record, indent=1)
    return {"png": png, "html": page, "json": out / "context.json"}


def _nearest_html(cmap: CorpusMap, names: list[str], idx: np.ndarray, dist: np.ndarray) -> str:
    e = html.escape
    parts = [
        "<h2>Nearest pieces</h2>",
        "<p>Euclidean distance of the normalised embeddings (0 = identical, 2 = opposite).</p>",
    ]
    for name, row, drow in zip(names, idx, dist, strict=True):
        parts.append(
            f"<h3>{e(name)}</h3><table><tr><th>#</th><th>composer</th><th>title</th>"
            "<th>file</th><th>distance</th></tr>"
        )
        for rank, (j, d) in enumerate(zip(row, drow, strict=True), 1):
            parts.append(
                f"<tr><td>{rank}</td><td>{e(cmap.composers[j])}</td><td>{e(cmap.titles[j])}</td>"
                f"<td>{e(short_path(cmap.paths[j]))}</td><td>{d:.3f}</td></tr>"
            )
        parts.append("</table>")
    return "\n".join(parts)
