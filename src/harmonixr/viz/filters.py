"""``harmonixr viz filters``: the first layer's 3-D kernels (pitch class × octave × time),
one row per filter, one column per time slice, on one shared colour scale."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harmonixr.viz._style import save_png, subplots


def stem_kernels(run: str | Path) -> tuple[np.ndarray, float, float]:
    """The stem convolution's weights ``(filters, pitch, octave, time)`` (input channels
    summed), the frame length in ms, and how far the weights moved from the run's initial ones
    (rebuilt from its seed): ``‖w − w₀‖ / ‖w₀‖``."""
    from harmonixr.train.rundir import Run

    info = Run.open(run)
    w = info.encoder().stem.weight.detach().float().cpu().numpy()  # (out, in, p, o, t)
    w0 = info.encoder(initial=True).stem.weight.detach().float().cpu().numpy()
    moved = float(np.linalg.norm(w - w0) / (np.linalg.norm(w0) or 1.0))
    return w.sum(1), info.tensor.frame_ms, moved


def filter_grid(run: str | Path, out: str | Path | None = None) -> Path:
    """Write ``filters.png`` (default in ``RUN/viz``): panel (i, t) is filter i's 3×3 (pitch
    class × octave) slice at time step t; red excites, blue inhibits; filters are ordered by
    their weight norm, strongest first."""
    kernels, frame_ms, moved = stem_kernels(run)
    n, kp, ko, kt = kernels.shape
    order = np.argsort(-np.sqrt((kernels**2).sum((1, 2, 3))), kind="stable")
    vmax = float(np.abs(kernels).max()) or 1.0
    cell = 0.55
    fig_w = 1.6 + cell * kt + 1.4
    fig_h = 1.75 + cell * n
    fig, axes = subplots(n, kt, figsize=(fig_w, fig_h), squeeze=False, gridspec_kw={"wspace": 0.08})
    fig.subplots_adjust(
        left=1.3 / fig_w, right=1 - 1.5 / fig_w, top=1 - 1.3 / fig_h, bottom=0.45 / fig_h
    )
    img = None
    for row, i in enumerate(order):
        for t in range(kt):
            ax = axes[row, t]
            img = ax.imshow(
                kernels[i, :, :, t],
                origin="lower",
                cmap="RdBu_r",
                vmin=-vmax,
                vmax=vmax,
                interpolation="nearest",
            )
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"{t * frame_ms:g} ms", fontsize=8)
        axes[row, 0].set_ylabel(f"{i + 1}", fontsize=8, rotation=0, ha="right", va="center")
    axes[0, 0].annotate(
        "filter", (-0.35, 1.25), xycoords="axes fraction", ha="right", fontsize=8, color="#444444"
    )
    name = str(run)
    fig.text(0.02, 1 - 0.3 / fig_h, f"First-layer filters of {name}", fontsize=12, weight="bold")
    fig.text(
        0.02,
        1 - 0.55 / fig_h,
        f"{n} filters (rows, strongest first) × {kt} time slices (columns); "
        f"{100 * moved:.0f}% away from the initial weights\n"
        f"each panel: pitch class ({kp}, up) × octave ({ko}, across); red excites, blue inhibits",
        fontsize=8,
        color="#444444",
        va="top",
    )
    cax = fig.add_axes((1 - 1.25 / fig_w, 0.45 / fig_h, 0.18 / fig_w, 1 - 1.75 / fig_h))
    fig.colorbar(img, cax=cax, label="weight")
    return save_png(fig, (Path(out) if out else Path(run) / "viz") / "filters.png")
