"""``harmonixr viz tsne``: maps of a corpus (pieces and composers) as PNG, rotating GIF and HTML,
and with ``checkpoints`` the same map for each saved checkpoint of the run, aligned."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

from harmonixr._files import atomic_json, sha256_file
from harmonixr.train.rundir import Run
from harmonixr.viz import scatter
from harmonixr.viz._style import MAX_COLOURS, OTHER, OTHER_COLOUR, composer_colours, save_gif
from harmonixr.viz.corpus import Corpus, cached_embeddings, map_corpus
from harmonixr.viz.scatter import Layer
from harmonixr.viz.tsne import CorpusMap, align, composer_positions, fit_map, spread_and_dimension

Say = Callable[[str], None]
MAX_COMPOSER_LABELS = 25


def _quiet(_: str) -> None:
    pass


def short_path(path: str, parts: int = 3) -> str:
    p = Path(path).parts
    return str(Path(*p[-parts:])) if len(p) > parts else path


def short_names(names: list[str]) -> dict[str, str]:
    """Labels for a crowded picture: the surname (last word), or the full name where two
    names share a surname."""
    last = Counter(n.split()[-1] if n.split() else n for n in names)
    return {n: n.split()[-1] if n.split() and last[n.split()[-1]] == 1 else n for n in names}


def legend_name(name: str, width: int = 26) -> str:
    return name if len(name) <= width else name[: width - 1].rstrip() + "…"


def weights_key(run: Run, weights: Path | None = None) -> str:
    """What a map's embeddings were made with: the weights' hash and the crop."""
    path = weights or run.weights_path
    if not path.is_file():
        raise ValueError(f"{path}: no such weights file (has the run validated yet?)")
    return f"{sha256_file(path)[:16]}-crop{run.crop_frames}"


class StaleMap(ValueError):
    """A saved map made with other weights than the run's."""


def check_map(cmap: CorpusMap, run: Run, where: Path) -> None:
    """Refuse a saved map whose embeddings came from other weights than the run holds now:
    placing new pieces in it would put them among points the model no longer makes."""
    key, made_with = weights_key(run), cmap.info.get("weights")
    if made_with != key:
        raise StaleMap(
            f"{where}: the map was made with other weights ({made_with}) than "
            f"{run.weights_path} now holds ({key}); rerun 'harmonixr viz tsne' to remake it"
        )


def corpus_embeddings(
    run: Run, corpus: Corpus, out: Path, tag: str, say: Say = _quiet
) -> tuple[np.ndarray, str]:
    """Whole-piece embeddings by the run's exported weights, reused from ``out/embeddings``
    when the weights and the pieces are unchanged. Returns (embeddings, weights key)."""
    key = weights_key(run)
    say(f"embedding {len(corpus.paths)} pieces with {run.weights_path}")
    z, reused = cached_embeddings(
        out / "embeddings" / f"{tag}.npz",
        key,
        corpus.paths,
        lambda: run.embed(corpus.tensors),
    )
    if reused:
        say("  (reused the embeddings saved by an earlier call)")
    return z, key


def _fit(
    run: Run,
    corpus: Corpus,
    z: np.ndarray,
    perplexity: float,
    n_jobs: int | None,
    info: dict[str, str] | None = None,
) -> CorpusMap:
    """The corpus's 3-D map, seeded with the run's seed."""
    return fit_map(
        z,
        corpus.paths,
        corpus.composers,
        corpus.titles,
        perplexity=perplexity,
        seed=run.seed,
        n_jobs=n_jobs,
        info=info,
    )


def build_map(
    run: Run,
    data: str | Path,
    split: str,
    out: Path,
    perplexity: float = 30.0,
    n_jobs: int | None = None,
    say: Say = _quiet,
) -> CorpusMap:
    """Embed the corpus, fit its map and save it under ``out/map``."""
    corpus = map_corpus(run, data, split)
    if len(corpus.paths) < 4:
        raise ValueError(f"{data}: {len(corpus.paths)} pieces in --split {split}; a map needs 4")
    z, key = corpus_embeddings(run, corpus, out, f"pieces-{split}", say)
    say(f"t-SNE of {len(z)} pieces (PCA to 50-D first, then 3-D)")
    info = {"weights": key, "run": str(run.root), "data": str(data), "split": split}
    cmap = _fit(run, corpus, z, perplexity, n_jobs, info)
    cmap.save(out / "map")
    return cmap


# ------------------------------------------------------------------ layers


def piece_layers(
    coords: np.ndarray,
    composers: list[str],
    titles: list[str],
    paths: list[str],
    colours: dict[str, str],
    size: float = 14.0,
    alpha: float = 0.85,
    hover: bool = True,
) -> list[Layer]:
    """One layer per coloured composer (most pieces first) and one grey "other" at the back."""
    counts = Counter(composers)
    groups: dict[str, list[int]] = {}
    for i, c in enumerate(composers):
        groups.setdefault(c if c in colours else OTHER, []).append(i)
    layers = []
    for name in [OTHER, *colours]:
        idx = groups.get(name)
        if not idx:
            continue
        if name == OTHER:
            n_comp = len({composers[i] for i in idx})
            label = f"{OTHER} ({n_comp} composers, {len(idx)})"
        else:
            label = f"{legend_name(name)} ({counts[name]})"
        layers.append(
            Layer(
                name=label,
                xyz=coords[idx],
                colour=OTHER_COLOUR if name == OTHER else colours[name],
                size=size * (0.7 if name == OTHER else 1.0),
                alpha=alpha * (0.7 if name == OTHER else 1.0),
                hover=[(composers[i], titles[i], short_path(paths[i])) for i in idx]
                if hover
                else None,
                legend_last=name == OTHER,
            )
        )
    return layers


def composer_layers(cmap: CorpusMap, colours: dict[str, str], coords: np.ndarray) -> list[Layer]:
    """The pieces faint at the back; the composers without a colour, smallest first; then the
    coloured ones on top. Dots are sized by pieces; the composers with most pieces labelled."""
    names, pos, counts = composer_positions(coords, cmap.composers)
    size = 10.0 + 500.0 * np.sqrt(counts / counts.max())
    labelled = short_names(names[:MAX_COMPOSER_LABELS])
    layers = [Layer("", coords, "#b8b8b8", size=6.0, alpha=0.4)]
    for coloured in (False, True):
        idx = [i for i, n in enumerate(names) if (n in colours) == coloured][::-1]
        if not idx:
            continue
        layers.append(
            Layer(
                "",
                pos[idx],
                [colours.get(names[i], OTHER_COLOUR) for i in idx],
                size=size[idx],
                alpha=0.95 if coloured else 0.6,
                edge="#333333" if coloured else None,
                labels=[labelled.get(names[i], "") for i in idx],
                hover=[(names[i], str(int(counts[i]))) for i in idx],
                hover_fields=("composer", "pieces"),
            )
        )
    return layers


def _subtitle(cmap: CorpusMap, run: Run) -> str:
    n_comp = len(set(cmap.composers))
    return (
        f"{len(cmap)} pieces, {n_comp} composers · whole-piece embeddings of {run.root} · "
        f"3-D t-SNE (perplexity {cmap.perplexity:g}, seed {cmap.seed})"
    )


# ------------------------------------------------------------------ the command


def corpus_maps(
    run: str | Path,
    data: str | Path,
    split: str = "all",
    out: str | Path | None = None,
    with_checkpoints: bool = False,
    frames: int = 36,
    top: int = MAX_COLOURS,
    perplexity: float = 30.0,
    n_jobs: int | None = None,
    say: Say = _quiet,
) -> dict[str, Path]:
    """Pieces and composers maps of ``data`` by the run's model (PNG, GIF, HTML each); the map
    is saved under ``out/map`` for ``viz context``. Returns the written files by name."""
    info = Run.open(run)
    out = Path(out) if out else info.root / "viz"
    cmap = build_map(info, data, split, out, perplexity, n_jobs, say)
    colours = composer_colours(cmap.composers, top)
    sub = _subtitle(cmap, info)
    written: dict[str, Path] = {"map": out / "map"}
    layers = piece_layers(cmap.coords, cmap.composers, cmap.titles, cmap.paths, colours)
    say("drawing the pieces map")
    written.update(_save_all(layers, "Pieces by composer", sub, out / "pieces", frames))
    say("drawing the composers map")
    sub_c = f"{sub} · a composer = the mean of its pieces' positions, sized by pieces"
    layers = composer_layers(cmap, colours, cmap.coords)
    written.update(_save_all(layers, "Composers", sub_c, out / "composers", frames))
    if with_checkpoints:
        written.update(
            checkpoint_maps(info, data, split, out, cmap, colours, perplexity, n_jobs, say)
        )
    return written


def _save_all(
    layers: list[Layer], title: str, subtitle: str, stem: Path, frames: int
) -> dict[str, Path]:
    fig, ax = scatter.draw(layers, title, subtitle)
    try:
        png = scatter.save_png(fig, stem.with_suffix(".png"), ax)
        gif = scatter.save_rotation(fig, ax, stem.with_suffix(".gif"), frames=frames)
    finally:
        scatter.close(fig)
    html = scatter.save_html(layers, title, stem.with_suffix(".html"), subtitle)
    return {f"{stem.name}.png": png, f"{stem.name}.gif": gif, f"{stem.name}.html": html}


# ------------------------------------------------------------------ across checkpoints


def checkpoint_maps(
    run: Run,
    data: str | Path,
    split: str,
    out: Path,
    final: CorpusMap,
    colours: dict[str, str],
    perplexity: float = 30.0,
    n_jobs: int | None = None,
    say: Say = _quiet,
) -> dict[str, Path]:
    """The map at step 0 (weights drawn with the run's seed) and at each saved checkpoint, each
    fitted alone then rotated onto the last one (Procrustes) so that frames compare; a PNG
    each, an animation across them, and the embeddings' spread and effective dimension by
    step (``checkpoints.json``, ``checkpoints-growth.png``)."""
    found = run.checkpoints()
    if not found:
        raise ValueError(f"{run.root / 'checkpoints'}: no checkpoints to draw")
    corpus = map_corpus(run, data, split)
    states: list[tuple[int, Path | None]] = [(0, None), *found]
    folder = out / "checkpoints"
    maps, stats = [], []
    for step, path in states:
        key = weights_key(run, path) if path else f"init-{run.seed}"
        say(f"checkpoint at step {step}: embedding and t-SNE")
        z, _ = cached_embeddings(
            folder / "embeddings" / f"{split}-step{step}.npz",
            key,
            corpus.paths,
            lambda path=path: run.embed(corpus.tensors, run.encoder(path, initial=path is None)),
        )
        spread, dim = spread_and_dimension(z)
        m = _fit(run, corpus, z, perplexity, n_jobs)
        maps.append(m.coords)
        stats.append({"step": step, "spread": spread, "effective_dim": dim})
    target = maps[-1]
    maps = [align(m, target) for m in maps]
    limits = scatter.cube_limits(*maps)
    written: dict[str, Path] = {}
    images = []
    for coords, st in zip(maps, stats, strict=True):
        layers = piece_layers(coords, corpus.composers, corpus.titles, corpus.paths, colours)
        label = "initial weights" if st["step"] == 0 else "checkpoint"
        fig, ax = scatter.draw(
            layers,
            f"Step {st['step']} ({label})",
            f"{len(coords)} pieces · embedding spread {st['spread']:.3f}, effective dimension "
            f"{st['effective_dim']:.1f} of {final.embeddings.shape[1]} · t-SNE aligned to the "
            "last checkpoint",
            limits=limits,
        )
        try:
            name = f"step-{st['step']:07d}.png"
            written[f"checkpoints/{name}"] = scatter.save_png(fig, folder / name, ax)
            images.append(scatter.shrink(scatter.snapshot(fig, ax), scatter.GIF_SCALE))
        finally:
            scatter.close(fig)
    written["checkpoints.gif"] = save_gif(images, out / "checkpoints.gif", frame_ms=1500)
    atomic_json(out / "checkpoints.json", stats, indent=1)
    written["checkpoints.json"] = out / "checkpoints.json"
    written["checkpoints-growth.png"] = growth_chart(stats, out / "checkpoints-growth.png")
    return written


def growth_chart(stats: list[dict[str, float]], path: Path) -> Path:
    """Spread and effective dimension of the embeddings by training step."""
    from harmonixr.viz._style import pyplot, subplots

    plt = pyplot()
    fig, axes = subplots(1, 2, figsize=(10, 4))
    steps = [s["step"] for s in stats]
    for ax, key, title in (
        (axes[0], "spread", "Spread (RMS distance to the centroid)"),
        (axes[1], "effective_dim", "Effective dimension (participation ratio)"),
    ):
        ax.plot(steps, [s[key] for s in stats], "o--", color="#1f77b4", lw=1, ms=6)
        ax.set_title(title, fontsize=11)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    fig.suptitle("How the embedding grows during training", fontsize=13, weight="bold")
    fig.tight_layout()
    try:
        return scatter.save_png(fig, path)
    finally:
        plt.close(fig)
