"""``harmonixr viz …``: the pictures."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from harmonixr.cli._common import (
    app,
    out,
    print_paths,
    say,
)

viz = typer.Typer(
    help="Pictures: corpus maps, a piece's tensor, first-layer filters, training curves, "
    "new pieces in context.",
    no_args_is_help=True,
)
app.add_typer(viz, name="viz")


@viz.command("tsne")
def viz_tsne(
    run: Annotated[Path, typer.Argument(help="Run directory (model.safetensors, config.json).")],
    data: Annotated[Path, typer.Option("--data", "-d", help="Tensor cache of the pieces.")],
    split: Annotated[
        str, typer.Option(help="Pieces to map: all, or one side of the run's split.")
    ] = "all",
    out_dir: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output folder (default RUN/viz).")
    ] = None,
    checkpoints: Annotated[
        bool,
        typer.Option("--checkpoints", help="Also the map at each saved checkpoint, animated."),
    ] = False,
    frames: Annotated[int, typer.Option(help="Frames of each rotating GIF.")] = 36,
    top: Annotated[int, typer.Option(help="Composers with their own colour (at most 16).")] = 16,
    perplexity: Annotated[float, typer.Option(help="t-SNE perplexity.")] = 30.0,
) -> None:
    """3-D t-SNE maps of pieces and of composers: PNG, rotating GIF and offline HTML each; the
    map is saved for 'viz context'."""
    from harmonixr.viz.maps import corpus_maps

    written = corpus_maps(
        run,
        data,
        split=split,
        out=out_dir,
        with_checkpoints=checkpoints,
        frames=frames,
        top=top,
        perplexity=perplexity,
        say=say,
    )
    print_paths(written)


@viz.command("tensor")
def viz_tensor(
    file: Annotated[Path, typer.Argument(help="A MIDI file.")],
    seconds: Annotated[
        str | None,
        typer.Option(help="Span A:B in seconds (default: GIF the first 20 s, PNG all)."),
    ] = None,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("."),
    frames: Annotated[int, typer.Option(help="At most this many GIF frames.")] = 400,
) -> None:
    """A piece's tensor: an animated GIF of the 12×6 grid over time and a PNG of the roll."""
    from harmonixr.viz.tensor import parse_span, tensor_pictures

    print_paths(tensor_pictures(file, parse_span(seconds), out_dir, frames=frames))


@viz.command("filters")
def viz_filters(
    run: Annotated[Path, typer.Argument(help="Run directory.")],
    out_dir: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output folder (default RUN/viz).")
    ] = None,
) -> None:
    """The first layer's 3-D kernels, one panel per filter and time slice."""
    from harmonixr.viz.filters import filter_grid

    print_paths({"filters": filter_grid(run, out_dir)})


@viz.command("style")
def viz_style(
    run: Annotated[
        Path | None, typer.Argument(help="Run with an index (default: the shipped model).")
    ] = None,
    out_dir: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Output folder (default RUN/viz, or ./viz)."),
    ] = None,
    min_pieces: Annotated[int, typer.Option(help="Training pieces a composer needs.")] = 3,
    permutations: Annotated[int, typer.Option(help="Permutations of the Mantel test.")] = 9999,
) -> None:
    """Do composer centroids follow music history? Rank correlation of centroid distances with
    birth-year and era distances (permutation p-values), and the composers coloured by era."""
    from harmonixr.train.rundir import pretrained_dir
    from harmonixr.viz.eras import composer_style

    root = pretrained_dir() if run is None else run
    res = composer_style(
        root / "index", out_dir or (Path(run or ".") / "viz"), min_pieces, permutations
    )
    b, e = res["birth_year"], res["era"]
    out.print(
        f"{len(res['composers'])} composers: Spearman with birth-year distance "
        f"{b['spearman']:.3f} (p = {b['p']:.4f}), with era distance {e['spearman']:.3f} "
        f"(p = {e['p']:.4f}); {res['picture']}",
        highlight=False,
    )


@viz.command("curves")
def viz_curves(
    run: Annotated[Path, typer.Argument(help="Run directory (reads RUN/tb).")],
    out_dir: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output folder (default RUN/viz).")
    ] = None,
) -> None:
    """The run's TensorBoard scalars (losses, margin, threshold, accuracies, AUC) in one PNG."""
    from harmonixr.viz.curves import training_curves

    print_paths({"curves": training_curves(run, out_dir)})


@viz.command("context")
def viz_context(
    run: Annotated[Path, typer.Argument(help="Run directory.")],
    files: Annotated[list[Path], typer.Argument(help="Your MIDI files.")],
    data: Annotated[
        Path | None,
        typer.Option("--data", "-d", help="Tensor cache (needed when no map is saved yet)."),
    ] = None,
    map_dir: Annotated[
        Path | None, typer.Option("--map", help="Saved map (default RUN/viz/map).")
    ] = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output folder (default RUN/viz/context).")
    ] = None,
    k: Annotated[int, typer.Option("-k", help="Nearest pieces listed per file.")] = 5,
) -> None:
    """Your MIDI files placed in the corpus's saved map (no refit), with their nearest pieces."""
    from harmonixr.viz.context import context_map

    written = context_map(run, files, data=data, map_dir=map_dir, out=out_dir, k=k, say=say)
    print_paths(written)
