"""``harmonixr viz curves``: the run's TensorBoard scalars in one PNG, for people who do not
run TensorBoard."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harmonixr.viz._style import PALETTE, save_png, subplots

# panel title → tags (those present are drawn)
PANELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Loss", ("train/loss", "val/loss_static")),
    ("Distances and margin", ("train/d_same", "train/d_diff", "train/margin")),
    ("Validation accuracy", ("val/acc_mixed", "val/acc_same", "val/acc_different")),
    ("Validation AUC", ("val/auc",)),
    ("Decision threshold", ("val/threshold",)),
    ("Learning rate", ("train/lr",)),
)


def read_scalars(run: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """tag → (steps, values) from every event file under ``RUN/tb`` (later files win a step)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = Path(run) / "tb"
    dirs = sorted({p.parent for p in tb.rglob("events.out.tfevents.*")})
    if not dirs:
        raise ValueError(f"{tb}: no TensorBoard event files")
    merged: dict[str, dict[int, float]] = {}
    for d in dirs:
        acc = EventAccumulator(str(d), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            for ev in acc.Scalars(tag):
                merged.setdefault(tag, {})[int(ev.step)] = float(ev.value)
    return {
        tag: (np.array(sorted(v)), np.array([v[s] for s in sorted(v)])) for tag, v in merged.items()
    }


def _smooth(y: np.ndarray, weight: float = 0.8) -> np.ndarray:
    out, last = np.empty_like(y), y[0]
    for i, v in enumerate(y):
        last = weight * last + (1 - weight) * v
        out[i] = last
    return out


def training_curves(run: str | Path, out: str | Path | None = None) -> Path:
    """Write ``curves.png`` (default in ``RUN/viz``): one panel per group of scalars present
    (training series smoothed, raw values faint; validation points joined)."""
    scalars = read_scalars(run)
    panels = [(t, [g for g in tags if g in scalars]) for t, tags in PANELS]
    panels = [(t, tags) for t, tags in panels if tags]
    if not panels:
        raise ValueError(f"{Path(run) / 'tb'}: none of the expected scalars were logged yet")
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    last = max(float(scalars[t][0].max()) for _, tags in panels for t in tags)
    for ax, (title, tags) in zip(axes.flat, panels, strict=False):
        for k, tag in enumerate(tags):
            steps, values = scalars[tag]
            colour = PALETTE[k]
            if tag.startswith("train/") and len(values) > 5 and tag != "train/lr":
                ax.plot(steps, values, color=colour, alpha=0.25, lw=0.8)
                ax.plot(steps, _smooth(values), color=colour, lw=1.6, label=tag)
            else:
                marker = "o" if len(values) < 40 else None
                ax.plot(steps, values, color=colour, lw=1.6, marker=marker, ms=3, label=tag)
        ax.set_title(title, fontsize=11)
        ax.set_xlim(0, max(1.0, last) * 1.02)  # one step axis for every panel
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle(f"Training curves of {run}", fontsize=13, weight="bold")
    fig.tight_layout()
    return save_png(fig, (Path(out) if out else Path(run) / "viz") / "curves.png")
