"""3-D scatter pictures of a map: a PNG (matplotlib), a rotating GIF and an offline HTML page
(plotly). A picture is a list of :class:`Layer` s drawn in order (the first at the back)."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harmonixr.viz._style import figure, figure_image, pyplot, save_gif, write_html
from harmonixr.viz._style import save_png as style_png

WIDTH_IN, HEIGHT_IN = 10.0, 7.5  # PNG: 1000 × 750 pixels at the style's DPI
GIF_SCALE = 0.64
ZOOM = 1.0  # GIF frames: 640 × 480 pixels
HOVER_FIELDS = ("composer", "title", "file")


@dataclass
class Layer:
    name: str  # legend entry ("" for none)
    xyz: np.ndarray  # (n, 3)
    colour: str | Sequence[str]
    size: float | np.ndarray = 14.0  # matplotlib points²; the HTML takes its square root
    alpha: float = 0.85
    marker: str = "o"  # matplotlib marker: "o" circle, "*" star, "D" diamond
    labels: Sequence[str] | None = None  # text beside each point
    hover: Sequence[Sequence[str]] | None = None  # per point: composer, title, file (HTML)
    hover_fields: Sequence[str] = HOVER_FIELDS
    edge: str | None = None
    legend_last: bool = False  # listed after the others (the grey "other")
    leaders: bool = False  # a thin line from each label to its point


def cube_limits(*arrays: np.ndarray, pad: float = 0.05) -> tuple[np.ndarray, float]:
    """Centre and half-width of a cube holding every point (so rotating does not distort)."""
    pts = np.concatenate([np.asarray(a, np.float64).reshape(-1, 3) for a in arrays if len(a)])
    lo, hi = pts.min(0), pts.max(0)
    centre = (lo + hi) / 2
    half = float((hi - lo).max() / 2 * (1 + pad)) or 1.0
    return centre, half


def draw(
    layers: Sequence[Layer],
    title: str,
    subtitle: str = "",
    limits: tuple[np.ndarray, float] | None = None,
    legend_title: str = "",
    elev: float = 22.0,
    azim: float = -60.0,
) -> tuple[Any, Any]:
    """The matplotlib figure and 3-D axes; the legend sits right of the axes, never over
    the points."""
    fig = figure(figsize=(WIDTH_IN, HEIGHT_IN))
    has_legend = any(layer.name for layer in layers)
    ax = fig.add_axes(
        (0.0, 0.0, 0.72 if has_legend else 1.0, 0.9), projection="3d", computed_zorder=False
    )
    labels: list[tuple[Any, tuple[float, float, float], float, bool]] = []
    fig._hx_labels = labels  # placed by _place_labels before each picture is taken
    for layer in layers:
        xyz = np.asarray(layer.xyz, np.float64).reshape(-1, 3)
        if not len(xyz):
            continue
        ax.scatter(
            xyz[:, 0],
            xyz[:, 1],
            xyz[:, 2],
            c=layer.colour if isinstance(layer.colour, str) else list(layer.colour),
            s=layer.size,
            alpha=layer.alpha,
            marker=layer.marker,
            edgecolors=layer.edge or "none",
            linewidths=0.6 if layer.edge else 0.0,
            label=layer.name or None,
            depthshade=False,
        )
        sizes = np.broadcast_to(np.asarray(layer.size, np.float64), (len(xyz),))
        # per-point colours: each label takes its dot's colour, darkened, so that a label is
        # read with its own dot even where dots crowd
        inks = (
            [_darker(c) for c in layer.colour]
            if not isinstance(layer.colour, str)
            else ["black"] * len(xyz)
        )
        for (x, y, z), text, s, ink in zip(xyz, layer.labels or (), sizes, inks, strict=False):
            if not text:
                continue
            gap = np.sqrt(s) / 2 + 2.0  # points: beside the marker, not over it
            artist = ax.text(
                x,
                y,
                z,
                text,
                fontsize=9,
                color=ink,
                zorder=10,
                bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8},
            )
            labels.append((artist, (x, y, z), gap, layer.leaders))
    centre, half = limits or cube_limits(*[layer.xyz for layer in layers])
    ax.set_xlim(centre[0] - half, centre[0] + half)
    ax.set_ylim(centre[1] - half, centre[1] + half)
    ax.set_zlim(centre[2] - half, centre[2] + half)
    ax.set_box_aspect((1, 1, 1), zoom=ZOOM)
    for axis in (ax.xaxis, ax.yaxis, ax.zaxis):
        axis.set_ticklabels([])
        axis._axinfo["tick"].update(inward_factor=0.0, outward_factor=0.0)
        axis.set_pane_color((0.96, 0.96, 0.96, 1.0))
        axis._axinfo["grid"]["color"] = (0.85, 0.85, 0.85, 1.0)
    ax.view_init(elev=elev, azim=azim)
    fig.text(0.02, 0.965, title, fontsize=14, weight="bold", va="center")
    if subtitle:
        lines = textwrap.wrap(subtitle, 135)[:2]
        fig.text(0.02, 0.93, "\n".join(lines), fontsize=9.5, color="#444444", va="top")
    if has_legend:
        handles, names = ax.get_legend_handles_labels()
        last = {layer.name for layer in layers if layer.legend_last}
        order = sorted(range(len(names)), key=lambda i: names[i] in last)
        handles, names = [handles[i] for i in order], [names[i] for i in order]
        leg = fig.legend(
            handles,
            names,
            loc="center left",
            bbox_to_anchor=(0.73, 0.47),
            frameon=False,
            fontsize=9.5,
            title=legend_title or None,
            title_fontsize=10,
            markerscale=1.0,
            handletextpad=0.3,
        )
        for handle in leg.legend_handles:
            handle.set_alpha(1.0)
            if hasattr(handle, "set_sizes"):
                handle.set_sizes([40.0])
    return fig, ax


# where a label may sit around its point, in order of preference: (dx, dy, ha, va)
_SPOTS = (
    (1, 0.6, "left", "bottom"),
    (1, -0.6, "left", "top"),
    (-1, 0.6, "right", "bottom"),
    (-1, -0.6, "right", "top"),
    (0, 1, "center", "bottom"),
    (0, -1, "center", "top"),
    (1, 0, "left", "center"),
    (-1, 0, "right", "center"),
)


def _place_labels(fig: Any, ax: Any) -> None:
    """Put each label beside its point on the side where it overlaps no label placed before
    it (labels come most important first); recomputed for every view, since rotating moves
    the points."""
    from matplotlib.lines import Line2D
    from matplotlib.transforms import offset_copy
    from mpl_toolkits.mplot3d import proj3d

    labels = getattr(fig, "_hx_labels", [])
    for line in getattr(fig, "_hx_leaders", []):
        line.remove()
    fig._hx_leaders = []
    if not labels:
        return
    renderer = fig.canvas.get_renderer()
    px_per_pt = fig.dpi / 72.0
    proj = ax.get_proj()  # the projection of the current view
    ordered = sorted(labels, key=lambda t: -t[2])  # big markers first
    anchors = []
    for _, (x, y, z), _, _ in ordered:
        x2, y2, _ = proj3d.proj_transform(x, y, z, proj)
        anchors.append(ax.transData.transform((x2, y2)))
    # the labelled markers themselves are obstacles too
    taken: list[tuple[float, float, float, float]] = [
        (px - r, py - r, px + r, py + r)
        for (px, py), (_, _, gap, _) in zip(anchors, ordered, strict=True)
        for r in [(gap - 2.0) * px_per_pt]
    ]
    for (artist, _, gap, leader), (ax_, ay_) in zip(ordered, anchors, strict=True):
        artist.set_transform(ax.transData)
        artist.set_visible(True)
        box = artist.get_window_extent(renderer)
        w, h = box.width + 6, box.height + 6  # the text and its white box
        choice = None
        for reach, (dx, dy, ha, va) in ((r, spot) for r in (1.0, 2.2, 3.5) for spot in _SPOTS):
            ox, oy = dx * gap * reach * px_per_pt, dy * gap * reach * px_per_pt
            left = ax_ + ox - {"left": 0, "center": w / 2, "right": w}[ha]
            bottom = ay_ + oy - {"bottom": 0, "center": h / 2, "top": h}[va]
            rect = (left, bottom, left + w, bottom + h)
            if not any(_overlap(rect, t) for t in taken):
                choice = (dx * reach, dy * reach, ha, va, rect)
                break
        if choice is None:  # no free spot in this view: leave it out rather than overprint
            artist.set_visible(False)
            continue
        dx, dy, ha, va, rect = choice
        taken.append(rect)
        artist.set_horizontalalignment(ha)
        artist.set_verticalalignment(va)
        artist.set_transform(
            offset_copy(ax.transData, fig=fig, x=dx * gap, y=dy * gap, units="points")
        )
        if leader:
            # from the marker's edge to the nearest point of the label's box
            tx = min(max(ax_, rect[0]), rect[2])
            ty = min(max(ay_, rect[1]), rect[3])
            r = (gap - 2.0) * px_per_pt
            d = max(1e-6, float(np.hypot(tx - ax_, ty - ay_)))
            sx, sy = ax_ + (tx - ax_) * min(1.0, r / d), ay_ + (ty - ay_) * min(1.0, r / d)
            line = Line2D([sx, tx], [sy, ty], transform=None, color="#333333", lw=0.8)
            fig._hx_leaders.append(fig.add_artist(line))


def _darker(colour: str, keep: float = 0.6) -> tuple[float, float, float]:
    from matplotlib.colors import to_rgb

    return tuple(keep * c for c in to_rgb(colour))  # type: ignore[return-value]


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def snapshot(fig: Any, ax: Any) -> Any:
    """The figure as an RGB image, labels placed for the current view."""
    _place_labels(fig, ax)
    return figure_image(fig)


def save_png(fig: Any, path: str | Path, ax: Any = None) -> Path:
    if ax is not None:
        _place_labels(fig, ax)
    return style_png(fig, path, close=False)


def save_rotation(
    fig: Any, ax: Any, path: str | Path, frames: int = 36, frame_ms: int = 110
) -> Path:
    """A full turn around the vertical axis in ``frames`` steps, as a looping GIF ≤ 4 MB."""
    if frames < 2:
        raise ValueError(f"{path}: a rotation needs at least 2 frames, got {frames}")
    elev, azim = ax.elev, ax.azim
    images = []
    for i in range(frames):
        ax.view_init(elev=elev, azim=azim + 360.0 * i / frames)
        images.append(shrink(snapshot(fig, ax), GIF_SCALE))
    ax.view_init(elev=elev, azim=azim)
    return save_gif(images, path, frame_ms=frame_ms)


def shrink(img: Any, scale: float) -> Any:
    from PIL import Image

    return img.resize(
        (round(img.width * scale), round(img.height * scale)), Image.Resampling.LANCZOS
    )


def close(fig: Any) -> None:
    pyplot().close(fig)


def html_figure(layers: Sequence[Layer], title: str, subtitle: str = "") -> Any:
    """The plotly figure: one trace per layer (click a legend entry to hide it)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    _, half = cube_limits(*[layer.xyz for layer in layers])
    extent = 2 * half
    for layer in layers:
        xyz = np.asarray(layer.xyz, np.float32).reshape(-1, 3)
        if not len(xyz):
            continue
        size = np.sqrt(np.asarray(layer.size, np.float64)) * 0.9
        marker = {
            "size": size.round(1).tolist() if size.ndim else float(size),
            "color": layer.colour if isinstance(layer.colour, str) else list(layer.colour),
            "opacity": layer.alpha,
            "symbol": {"o": "circle", "*": "diamond", "D": "diamond"}.get(layer.marker, "circle"),
        }
        if layer.edge:
            marker["line"] = {"color": layer.edge, "width": 1}
        trace: dict[str, Any] = {
            "x": xyz[:, 0],
            "y": xyz[:, 1],
            "z": xyz[:, 2],
            "mode": "markers+text" if layer.labels else "markers",
            "name": layer.name,
            "showlegend": bool(layer.name),
            "legendrank": 2000 if layer.legend_last else 1000,
            "marker": marker,
        }
        if layer.labels:
            trace["text"] = _merge_coinciding(xyz, list(layer.labels), 0.01 * extent)
            trace["textposition"] = "top center"
        if layer.hover:
            trace["customdata"] = [list(row) for row in layer.hover]
            trace["hovertemplate"] = (
                "<br>".join(
                    f"<b>{name}</b>: %{{customdata[{i}]}}"
                    for i, name in enumerate(layer.hover_fields)
                )
                + "<extra></extra>"
            )
        else:
            trace["hoverinfo"] = "skip"
        fig.add_trace(go.Scatter3d(**trace))
    axis = {"showticklabels": False, "title": "", "backgroundcolor": "#f5f5f5"}
    fig.update_layout(
        title={"text": f"{title}<br><sup>{subtitle}</sup>" if subtitle else title},
        scene={"xaxis": axis, "yaxis": axis, "zaxis": axis, "aspectmode": "cube"},
        legend={"itemsizing": "constant", "x": 1.0, "y": 0.5},
        margin={"l": 0, "r": 0, "t": 60, "b": 0},
        template="plotly_white",
    )
    return fig


def _merge_coinciding(xyz: np.ndarray, labels: list[str], eps: float) -> list[str]:
    """Labels of points closer than ``eps`` joined on the first of them (plotly cannot move
    3-D text apart)."""
    out = list(labels)
    for i in range(len(out)):
        if not out[i]:
            continue
        for j in range(i + 1, len(out)):
            if out[j] and np.linalg.norm(xyz[i] - xyz[j]) <= eps:
                out[i], out[j] = f"{out[i]}<br>{out[j]}", ""
    return out


def save_html(
    layers: Sequence[Layer], title: str, path: str | Path, subtitle: str = "", below: str = ""
) -> Path:
    return write_html(html_figure(layers, title, subtitle), path, title, below=below)
