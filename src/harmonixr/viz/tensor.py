"""``harmonixr viz tensor``: a piece's 12×6×T tensor as an animated GIF of the (pitch class ×
octave) grid over time, and a PNG of the unrolled 72-note roll (docs/architecture.md)."""

from __future__ import annotations

import base64
import math
from pathlib import Path
from typing import Any

import numpy as np

from harmonixr.viz._style import figure, figure_image, pyplot, save_gif, save_png

PITCH_CLASSES = ("F", "F♯", "G", "G♯", "A", "A♯", "B", "C", "C♯", "D", "D♯", "E")
OCTAVES = ("1", "2", "3", "4", "5", "6")  # octave o holds F(o+1)…E(o+2): F1–E2 is "1"
GIF_SECONDS = 20.0  # the GIF's default span
MAX_GIF_FRAMES = 400
MAX_ROLL_COLUMNS = 1000  # the roll's plot is about 980 pixels wide
ROLL_COLUMNS = 720  # the page's piano-roll thumbnail: its width in time bins (max over each)
SILENCE = "#eeeeee"
CMAP = "viridis"


def parse_span(text: str | None) -> tuple[float, float | None] | None:
    """ "A:B" seconds → (A, B); "A:" → (A, None); None → None."""
    if text is None:
        return None
    a, sep, b = text.partition(":")
    try:
        start = float(a) if a.strip() else 0.0
        end = float(b) if b.strip() else None
    except ValueError:
        raise ValueError(f"--seconds must look like A:B (seconds), got {text!r}") from None
    if not sep or start < 0 or (end is not None and end <= start):
        raise ValueError(f"--seconds must look like A:B with 0 ≤ A < B, got {text!r}")
    return start, end


def _cmap() -> Any:
    plt = pyplot()
    return plt.get_cmap(CMAP).with_extremes(bad=SILENCE)  # silence: light grey, never black


def tensor_pictures(
    path: str | Path,
    seconds: tuple[float, float | None] | None = None,
    out: str | Path = ".",
    frames: int = MAX_GIF_FRAMES,
    config: Any = None,
) -> dict[str, Path]:
    """Write ``<stem>-tensor.gif`` (the grid over time: ``seconds``, else the first 20 s,
    at most ``frames`` frames) and ``<stem>-roll.png`` (``seconds``, else the whole piece)."""
    from harmonixr.midi.load import safe_load
    from harmonixr.midi.tensorize import TensorConfig

    config = config or TensorConfig()
    path = Path(path)
    tensor = safe_load(path, config, min_sounding_s=0.0).tensor  # a picture of any file
    fps = 1000.0 / config.frame_ms
    n = tensor.shape[0]
    if seconds is None:
        roll_span = (0, n)
        gif_span = (0, min(n, round(GIF_SECONDS * fps)))
    else:
        a = int(math.floor(seconds[0] * fps))
        b = n if seconds[1] is None else min(n, int(math.ceil(seconds[1] * fps)))
        if a >= n:
            raise ValueError(
                f"{path}: --seconds starts at {seconds[0]:g} s but the piece lasts {n / fps:.1f} s"
            )
        roll_span = gif_span = (a, b)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stem = path.stem
    roll = roll_png(tensor, roll_span, fps, out / f"{stem}-roll.png", path.name, gif_span)
    gif = grid_gif(tensor, gif_span, fps, out / f"{stem}-tensor.gif", path.name, frames)
    return {"roll": roll, "gif": gif}


def roll_png(
    tensor: np.ndarray,
    span: tuple[int, int],
    fps: float,
    path: Path,
    name: str,
    marked: tuple[int, int] | None = None,
) -> Path:
    """The 72 notes (F1 at the bottom … E7 at the top) against time."""
    a, b = span
    # (T, 12, 6) → (72, T) with row k = 12·octave + pitch class, i.e. MIDI note 29 + k
    roll = np.asarray(tensor[a:b]).transpose(2, 1, 0).reshape(72, b - a)
    # a long piece has more frames than the picture has pixels: keep each bin's loudest value,
    # so no note disappears between pixels
    k = max(1, math.ceil((b - a) / MAX_ROLL_COLUMNS))
    if k > 1:
        pad = (-(b - a)) % k
        roll = np.pad(roll, ((0, 0), (0, pad))).reshape(72, -1, k).max(2)
    roll = roll.astype(float)
    fig = figure(figsize=(12, 5))
    ax = fig.add_axes((0.07, 0.12, 0.82, 0.76))
    img = ax.imshow(
        np.ma.masked_equal(roll, 0),
        aspect="auto",
        origin="lower",
        cmap=_cmap(),
        vmin=1,
        vmax=127,
        interpolation="nearest",
        extent=(a / fps, (a + roll.shape[1] * k) / fps, -0.5, 71.5),
    )
    ax.set_facecolor(SILENCE)
    ax.set_yticks([12 * o for o in range(6)] + [12 * o + 7 for o in range(6)])
    ax.set_yticklabels([f"F{o + 1}" for o in range(6)] + [f"C{o + 2}" for o in range(6)])
    ax.set_xlim(a / fps, b / fps)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("note")
    for o in range(1, 6):
        ax.axhline(12 * o - 0.5, color="white", lw=0.6)
    if marked and marked != span:
        for edge in marked:
            ax.axvline(edge / fps, color="#d62728", lw=1.0, ls="--")
        ax.text(marked[0] / fps, 70.5, " GIF span", color="#d62728", fontsize=8, va="top")
    fig.text(0.07, 0.95, f"{name}: the tensor unrolled", fontsize=13, weight="bold")
    fig.text(
        0.07,
        0.915,
        f"{a / fps:.1f}–{b / fps:.1f} s · 72 notes F1–E7 in 12 pitch classes × 6 octaves · "
        f"{1000 / fps:g} ms frames · colour = velocity decayed over time",
        fontsize=9,
        color="#444444",
    )
    cax = fig.add_axes((0.91, 0.12, 0.015, 0.76))
    fig.colorbar(img, cax=cax, label="decayed velocity")
    return save_png(fig, path)


def grid_gif(
    tensor: np.ndarray,
    span: tuple[int, int],
    fps: float,
    path: Path,
    name: str,
    max_frames: int = MAX_GIF_FRAMES,
) -> Path:
    """The 12 × 6 grid (pitch class up, octave across) frame by frame, in real time (frames
    are skipped evenly past ``max_frames``; each cell then shows the loudest value it took)."""
    plt = pyplot()
    a, b = span
    if b - a < 2:
        raise ValueError(f"{path.name}: {b - a} frame(s) in the span; an animation needs two")
    stride = max(1, math.ceil((b - a) / max(2, max_frames)))
    starts = list(range(a, b, stride))
    if len(starts) < 2:
        starts = [a, a + 1]
        stride = 1
    fig = figure(figsize=(4.2, 6.2))
    ax = fig.add_axes((0.16, 0.1, 0.6, 0.76))
    img = ax.imshow(
        np.ma.masked_equal(np.zeros((12, 6)), 0),
        origin="lower",
        cmap=_cmap(),
        vmin=1,
        vmax=127,
        aspect="equal",
        interpolation="nearest",
    )
    ax.set_facecolor(SILENCE)
    ax.set_xticks(range(6), OCTAVES)
    ax.set_yticks(range(12), PITCH_CLASSES)
    ax.set_xlabel("octave (1 = F1–E2 … 6 = F6–E7)", fontsize=9)
    ax.set_ylabel("pitch class")
    ax.set_xticks(np.arange(-0.5, 6), minor=True)
    ax.set_yticks(np.arange(-0.5, 12), minor=True)
    ax.grid(which="minor", color="white", lw=1)
    ax.tick_params(which="minor", length=0)
    cax = fig.add_axes((0.8, 0.1, 0.04, 0.76))
    fig.colorbar(img, cax=cax, label="decayed velocity")
    fig.text(0.05, 0.955, _fit(name, 34), fontsize=11, weight="bold")
    clock = fig.text(0.05, 0.915, "", fontsize=9.5, color="#444444")
    images = []
    try:
        for s in starts:
            cell = np.asarray(tensor[s : min(b, s + stride)]).max(0).astype(float)  # (12, 6)
            img.set_data(np.ma.masked_equal(cell, 0))
            quiet = "  (silence)" if not cell.any() else ""
            clock.set_text(f"t = {s / fps:6.2f} s{quiet}")
            images.append(figure_image(fig))
    finally:
        plt.close(fig)
    return save_gif(images, path, frame_ms=max(20, round(1000 * stride / fps)))


def _fit(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def roll_summary(tensor: np.ndarray, frame_s: float, low_note: int, columns: int = ROLL_COLUMNS):
    """A piano-roll thumbnail: rows are pitches from ``low_note`` up, columns time bins (the
    loudest cell of each bin), as base64 of uint8 ``(pitches, columns)`` in row order."""
    t, pcs, octaves = tensor.shape
    rows = np.ascontiguousarray(tensor.transpose(0, 2, 1)).reshape(t, octaves * pcs)
    n = max(1, min(columns, t))
    edges = np.linspace(0, t, n + 1).astype(np.int64)[:-1]
    binned = np.maximum.reduceat(rows, edges, axis=0) if t else np.zeros((1, rows.shape[1]))
    grid = np.ascontiguousarray(binned.T.astype(np.uint8))
    return {
        "pitches": int(grid.shape[0]),
        "columns": int(grid.shape[1]),
        "low_note": int(low_note),
        "seconds": round(t * frame_s, 3),
        "max_value": 127,
        "data": base64.b64encode(grid.tobytes()).decode("ascii"),
    }
