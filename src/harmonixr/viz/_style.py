"""What the pictures share: the project's plot style (``harmonixr._plotstyle``: backend,
resolution, PNG writing, composer palette) and, on top of it, GIFs and offline HTML."""

from __future__ import annotations

import html
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from harmonixr._files import atomic_write
from harmonixr._plotstyle import (  # noqa: F401  (the pictures' style, re-exported)
    DPI,
    MAX_COLOURS,
    OTHER,
    OTHER_COLOUR,
    PALETTE,
    composer_colours,
    figure,
    pyplot,
    save_png,
    subplots,
)

PLOTLY_SCRIPT_SRC = ('src="http://', 'src="https://', "src='http://", "src='https://")


def figure_image(fig: Any) -> Any:
    """The figure's pixels as an RGB PIL image."""
    from PIL import Image

    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    return Image.fromarray(rgba[..., :3].copy())


def save_gif(
    frames: Sequence[Any], path: str | Path, frame_ms: int = 100, max_bytes: int = 4_000_000
) -> Path:
    """Write PIL frames as a looping GIF under ``max_bytes``: one shared 256-colour palette,
    then smaller frames until it fits."""
    from PIL import Image

    if len(frames) < 2:
        raise ValueError(f"{path}: an animation needs at least two frames, got {len(frames)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scale = 1.0
    while True:
        imgs = [f if scale == 1.0 else _scaled(f, scale) for f in frames]
        # one palette from a strip of every frame keeps colours steady across the animation
        strip = Image.new("RGB", (imgs[0].width, imgs[0].height * min(len(imgs), 8)))
        for k, i in enumerate(np.linspace(0, len(imgs) - 1, min(len(imgs), 8)).astype(int)):
            strip.paste(imgs[i], (0, k * imgs[0].height))
        palette = _gif_palette(strip)
        quant = [im.quantize(palette=palette, dither=Image.Dither.NONE) for im in imgs]
        gif = io.BytesIO()
        quant[0].save(
            gif,
            format="GIF",
            save_all=True,
            append_images=quant[1:],
            duration=frame_ms,
            loop=0,
            optimize=True,
            disposal=1,
        )
        if len(gif.getvalue()) <= max_bytes or scale < 0.3:
            atomic_write(path, gif.getvalue())
            return path
        scale *= 0.8


# colours that fill most of a picture (background, panes, grid, text) are kept exact
_EXACT = ((255, 255, 255), (245, 245, 245), (238, 238, 238), (217, 217, 217), (0, 0, 0))


def _gif_palette(strip: Any) -> Any:
    """A 256-colour palette image: the exact colours above, then the colours that cover
    ``strip`` best (max-coverage keeps small coloured dots true, where median cut let
    composers' colours drift)."""
    from PIL import Image

    fitted = strip.quantize(colors=256 - len(_EXACT), method=Image.Quantize.MAXCOVERAGE)
    rgb = [c for colour in _EXACT for c in colour] + fitted.getpalette()[: 3 * (256 - len(_EXACT))]
    palette = Image.new("P", (1, 1))
    palette.putpalette(rgb + [0] * (768 - len(rgb)))
    return palette


def _scaled(img: Any, scale: float) -> Any:
    from PIL import Image

    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    return img.resize(size, Image.Resampling.LANCZOS)


def write_html(fig: Any, path: str | Path, title: str, below: str = "") -> Path:
    """A self-contained page: the plotly figure with plotly.js inlined (works offline, no CDN),
    then ``below`` (trusted HTML made by this package, already escaped)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = fig.to_html(
        include_plotlyjs=True,
        full_html=False,
        include_mathjax=False,
        config={"displaylogo": False, "responsive": True},
        default_width="100%",
        default_height="85vh",
    )
    title = html.escape(title)
    page = (
        "<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
        f"<title>{title}</title>\n<style>body{{font-family:sans-serif;margin:0 1em}}"
        "table{border-collapse:collapse;margin:.5em 0 1.5em}"
        "td,th{border-bottom:1px solid #ddd;padding:.2em .8em;text-align:left}"
        "</style>\n</head>\n<body>\n"
        f"{body}\n{below}\n</body>\n</html>\n"
    )
    atomic_write(path, page)
    return path
