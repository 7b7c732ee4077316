"""Asking a model: ``embed``, ``identify``, ``attribute``, ``similar``, ``verify``, ``timeline``,
``serve``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from harmonixr.cli._common import (
    JsonOpt,
    ModelOpt,
    app,
    console,
    file_progress,
    load_model,
    out,
    print_json,
    progress_bar,
)


@app.command()
def embed(
    files: Annotated[list[Path], typer.Argument(help="MIDI files or folders (searched inside).")],
    out_path: Annotated[
        Path, typer.Option("--out", "-o", help="emb.npy (+ emb.paths.txt) or emb.parquet.")
    ],
    model: ModelOpt = None,
    workers: Annotated[int | None, typer.Option(help="Parser processes (default 2).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Whole-piece embeddings of MIDI files; unusable files are listed and skipped."""
    from harmonixr.midi.files import expand_midi_paths
    from harmonixr.results import embeddings_format, write_embeddings

    embeddings_format(out_path)  # a wrong name fails before any work
    paths = expand_midi_paths(files)
    hx = load_model(model)
    with progress_bar() as progress:
        bars = {s: file_progress(progress, s, len(paths)) for s in ("parse", "embed")}
        result = hx.embed(
            paths,
            workers=workers,
            skip_errors=True,
            progress=lambda stage, i, total: bars[stage](i, total, ""),
        )
    written = write_embeddings(out_path, result)
    if as_json:
        print_json({**result.to_dict(), "out": [str(p) for p in written]})
        return
    out.print(f"{len(result.paths)} × {result.vectors.shape[1]} → {', '.join(map(str, written))}")
    if result.errors:
        table = Table(title=f"skipped {len(result.errors)}")
        table.add_column("file")
        table.add_column("reason")
        for e in result.errors:
            table.add_row(str(e.path), e.reason + (f" ({e.detail})" if e.detail else ""))
        console.print(table)


@app.command()
def identify(
    file: Annotated[Path, typer.Argument(help="A MIDI or score file.")],
    model: ModelOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Whether FILE is a rendition of a work in the index (the same file, another edition or
    performance), by its melody; the probability was fitted on validation."""
    got = load_model(model).identify(file)
    if as_json:
        print_json(got.to_dict())
        return
    out.print(got.text, highlight=False)
    if got.path:
        out.print(
            f"[dim]closest indexed piece: {got.path} (melodic overlap {got.overlap:.2f})[/dim]",
            highlight=False,
        )


@app.command()
def attribute(
    file: Annotated[Path, typer.Argument(help="A MIDI file.")],
    k: Annotated[int, typer.Option("--k", "-k", help="Named composers to list.")] = 5,
    prior_unknown: Annotated[
        float | None,
        typer.Option(
            help="Prior that the composer is none of the named ones (default: the index's, "
            "fitted on validation; no effect where 'someone else' is withdrawn)."
        ),
    ] = None,
    model: ModelOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Who most likely wrote FILE: the answer first, then calibrated probabilities."""
    hx = load_model(model)
    work, result = hx.attribute_known(file, k=k, prior_unknown=prior_unknown)
    if as_json:
        print_json([a.to_dict() for a in result])
        return
    if work is not None:
        out.print(f"[bold]{work.text}[/bold]", highlight=False)
    table = Table(title=f"who wrote {file.name}?")
    table.add_column("composer")
    table.add_column("probability", justify="right")
    table.add_column("similarity", justify="right")
    for n, a in enumerate(result):
        name = a.composer if a.known else "[italic]someone else[/italic]"
        if a.barely_known:
            name = f"{a.composer} [dim](barely known: too few works to name)[/dim]"
        score = "" if a.score is None else f"{a.score:.3f}"
        prob = "" if a.barely_known else f"{a.probability:.3f}"
        if a.from_work:
            name += f" [dim](from the known work {a.from_work})[/dim]"
        table.add_row(f"[bold]{name}[/bold] ← answer" if n == 0 else name, prob, score)
    out.print(table)
    if not hx.open_set and not result[0].from_work:
        out.print(
            f"Closest named composer: {result[0].composer} ({result[0].probability:.2f}); "
            f"{hx.open_set_note}.",
            highlight=False,
        )
    if hx.new_work_note and not result[0].from_work:
        out.print(f"{hx.new_work_note[0].upper()}{hx.new_work_note[1:]}.", highlight=False)


@app.command()
def similar(
    file: Annotated[Path, typer.Argument(help="A MIDI file.")],
    k: Annotated[int, typer.Option("--k", "-k", help="Pieces to list.")] = 10,
    per_work: Annotated[
        int | None, typer.Option(help="At most this many pieces of one work (1: one each).")
    ] = None,
    model: ModelOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The indexed pieces most like FILE."""
    result = load_model(model).similar(file, k=k, per_work=per_work)
    if as_json:
        print_json([m.to_dict() for m in result])
        return
    table = Table(title=f"pieces like {file.name}")
    cols = ("#", "same composer", "similarity", "composer", "title", "performer / source", "path")
    for col in cols:
        table.add_column(col, justify="left" if col in cols[3:] else "right")
    for i, m in enumerate(result, 1):
        who = " · ".join(x for x in (m.performer, m.source) if x)
        p = "" if m.same_composer is None else f"{m.same_composer:.0%}"
        table.add_row(str(i), p, f"{m.similarity:.3f}", m.composer, m.title, who, m.path)
    out.print(table)


@app.command()
def verify(
    a: Annotated[Path, typer.Argument(help="A MIDI file.")],
    b: Annotated[Path, typer.Argument(help="Another MIDI file.")],
    model: ModelOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Whether A and B share a composer."""
    v = load_model(model).verify(a, b)
    if as_json:
        print_json(v.to_dict())
        return
    answer = "[green]same composer[/green]" if v.same_composer else "[red]different composers[/red]"
    out.print(
        f"{a.name} · {b.name}: {answer} (probability {v.probability:.3f}, "
        f"similarity {v.similarity:.3f})"
    )


TIMELINE_NOTE = (
    "Window probabilities use the whole-piece calibration; short windows are not calibrated "
    "(see docs/model-card.md for what they are worth)."
)


@app.command()
def timeline(
    file: Annotated[Path, typer.Argument(help="A MIDI file.")],
    window: Annotated[
        float | None, typer.Option(help="Window length in seconds (default: the model's crop).")
    ] = None,
    hop: Annotated[
        float | None,
        typer.Option(help="Seconds between window starts (default: a third of the crop)."),
    ] = None,
    model: ModelOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Composer probabilities passage by passage."""
    hx = load_model(model)
    window, hop = hx.timeline_windows(window, hop)
    passages = hx.timeline(file, window=window, hop=hop)
    if as_json:
        print_json([p.to_dict() for p in passages])
        return
    table = Table(title=f"{file.name}, {window:g} s windows every {hop:g} s")
    columns = ("from", "to", "most likely", "probability", "unknown")[: 5 if hx.open_set else 4]
    for col in columns:
        table.add_column(col, justify="left" if col == "most likely" else "right")
    for p in passages:
        best = max(p.probabilities, key=p.probabilities.__getitem__, default="")
        top = p.probabilities.get(best, 0.0)
        if p.unknown > top:
            best, top = "none of the known composers", p.unknown
        row = [f"{p.start_s:.1f}", f"{p.end_s:.1f}", best, f"{top:.3f}", f"{p.unknown:.3f}"]
        table.add_row(*row[: len(columns)])
    out.print(table)
    if not hx.open_set:
        out.print(hx.open_set_note, style="dim", highlight=False)
    out.print(TIMELINE_NOTE, style="dim")


@app.command()
def serve(
    model: ModelOpt = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(help="Uploads worked on at once.")] = 2,
    queue: Annotated[int, typer.Option(help="Uploads that may wait; beyond, 503.")] = 8,
    max_upload_mb: Annotated[float, typer.Option(help="Largest MIDI file accepted.")] = 10.0,
    map_dir: Annotated[
        Path | None,
        typer.Option("--map", help="A saved corpus map (default RUN/viz/map, from viz tsne)."),
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(help="Torch CPU threads (default: the cores divided among the workers)."),
    ] = None,
    per_client: Annotated[
        int, typer.Option(help="Uploads one address may have under way (503 beyond).")
    ] = 8,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(help="A host name served besides localhost (repeatable; others: 400)."),
    ] = None,
) -> None:
    """The web page (drop a MIDI file: composers, nearest pieces, map, timeline) and its JSON
    API, on http://HOST:PORT/ (OpenAPI at /docs)."""
    try:
        from harmonixr.serve.app import serve as run_server
    except ImportError as exc:
        msg = f"harmonixr serve needs FastAPI and uvicorn ({exc}): pip install 'harmonixr[serve]'"
        raise ValueError(msg) from None
    run_server(
        model,
        host=host,
        port=port,
        say=lambda text: console.print(text, markup=False, highlight=False, soft_wrap=True),
        workers=workers,
        queue=queue,
        max_upload_mb=max_upload_mb,
        map_dir=map_dir,
        threads=threads,
        per_client=per_client,
        allowed_hosts=allowed_host or [],
    )
