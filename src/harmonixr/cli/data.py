"""``harmonixr preprocess`` and ``harmonixr info``: corpora into a tensor cache."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from harmonixr.cli._common import (
    app,
    file_progress,
    out,
    progress_bar,
)


@app.command()
def preprocess(
    sources: Annotated[
        list[str],
        typer.Argument(help="Corpus folder(s), or 'builtin'; several go into one cache."),
    ],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Cache folder to create or extend.")],
    format: Annotated[
        str, typer.Option("--format", "-f", help="auto|giantmidi|asap|maestro|folder|builtin")
    ] = "auto",
    labels: Annotated[
        Path | None, typer.Option(help="CSV with path, composer[, title, group] columns.")
    ] = None,
    scores: Annotated[bool, typer.Option("--scores", help="ASAP: add the score MIDIs.")] = False,
    workers: Annotated[
        int | None, typer.Option(help="Parser processes (default: all cores).")
    ] = None,
    binary: Annotated[
        bool, typer.Option("--binary", help="Store 1 for any sounding note.")
    ] = False,
    no_pedal: Annotated[bool, typer.Option("--no-pedal", help="Ignore the sustain pedal.")] = False,
    limit: Annotated[int | None, typer.Option(help="Only the first N files.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Turn corpora of MIDI files into one tensor cache (resumable: rerun to continue)."""
    if len(sources) > 1 and (labels is not None or format not in ("auto",)):
        raise typer.BadParameter("--labels and --format apply to one source; give one at a time")
    for source in sources:
        _preprocess_one(
            source, out_dir, format, labels, scores, workers, binary, no_pedal, limit, as_json
        )


def _preprocess_one(
    source: str,
    out_dir: Path,
    format: str,
    labels: Path | None,
    scores: bool,
    workers: int | None,
    binary: bool,
    no_pedal: bool,
    limit: int | None,
    as_json: bool,
) -> None:
    from harmonixr.data.cache import preprocess as run
    from harmonixr.midi.tensorize import TensorConfig

    config = TensorConfig(binary=binary, pedal=not no_pedal)
    with progress_bar() as progress:
        summary = run(
            source,
            out_dir,
            format=format,
            labels=labels,
            include_scores=scores,
            config=config,
            workers=workers,
            limit=limit,
            progress=file_progress(progress, "tensorize"),
            listing_progress=file_progress(progress, "list (music21 → MIDI once)"),
        )
    if as_json:
        out.print_json(json.dumps(summary.to_dict()))
        return
    table = Table(title=f"preprocess {source} → {out_dir}", show_header=False)
    table.add_row("files seen", str(summary.seen))
    table.add_row(
        "ok",
        f"{summary.ok} ({summary.new} new, {summary.already} already cached, "
        f"{summary.reused} identical to another file)",
    )
    skipped = ", ".join(f"{k}: {v}" for k, v in summary.skipped.most_common()) or "none"
    table.add_row("skipped", f"{sum(summary.skipped.values())} ({skipped})")
    if summary.listing_skipped:
        table.add_row("not listed", f"{len(summary.listing_skipped)} (see harmonixr info)")
        for path, why in summary.listing_skipped[:5]:
            table.add_row("", f"{path}: {why}")
    table.add_row("composers", str(summary.composers))
    table.add_row("hours of music", f"{summary.hours:.2f}")
    table.add_row("time", f"{summary.seconds:.1f} s ({summary.files_per_second:.1f} files/s)")
    out.print(table)


@app.command()
def info(
    cache: Annotated[Path, typer.Argument(help="A cache folder made by preprocess.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Pieces and hours per composer in a cache, its split groups (and what joined them by
    melody), and why files were skipped."""
    from harmonixr.data.cache import TensorCache
    from harmonixr.data.groups import content_joins, content_report

    with TensorCache(cache) as c:
        stats = c.stats()
        stats["breakdown"] = c.breakdown()
        rows = c.pieces(joined=False)
        stats["content"] = content_report(rows, content_joins(c, rows))
    stats["units"] = stats["content"]["units"]
    if as_json:
        out.print_json(json.dumps(stats))
        return
    table = Table(
        title=f"{cache}: {stats['pieces']} pieces, {stats['works']} works "
        f"({stats['units']} split groups across sources), {stats['hours']:.2f} h"
    )
    table.add_column("composer")
    table.add_column("pieces", justify="right")
    table.add_column("hours", justify="right")
    for row in stats["composers"]:
        table.add_row(row["composer"], str(row["pieces"]), f"{row['hours']:.2f}")
    out.print(table)
    kinds = {(r["source"], r["kind"]) for r in stats["breakdown"]}
    if len(kinds) > 1:
        cols = sorted(kinds)
        by = Table(title="pieces / works per composer × source × kind")
        by.add_column("composer")
        for src, kind in cols:
            by.add_column(f"{src or '—'} ({kind or '?'})", justify="right")
        cells: dict[str, dict[tuple[str, str], str]] = {}
        for r in stats["breakdown"]:
            cells.setdefault(r["composer"], {})[(r["source"], r["kind"])] = (
                f"{r['pieces']}/{r['works']}"
            )
        for composer in sorted(cells):
            by.add_row(composer, *(cells[composer].get(c, "") for c in cols))
        out.print(by)
    _print_content(stats["content"])
    if stats["skipped"]:
        skipped = Table(title="skipped")
        skipped.add_column("reason")
        skipped.add_column("files", justify="right")
        for reason, n in stats["skipped"].items():
            skipped.add_row(reason, str(n))
        out.print(skipped)


SHOWN_JOINS = 12  # joins by melody listed by `harmonixr info` (--json lists all)


def _print_content(content: dict) -> None:
    """The joins by melody: how many, how sure, the strongest few."""
    n = len(content["joins"])
    out.print(
        f"split groups: {content['units_by_name']} by name and hash; {content['units']} with "
        f"{n} pair{'s' if n != 1 else ''} of pieces joined by melody (overlap ≥ "
        f"{content['threshold']:g})"
    )
    note = (
        f"overlap between different groups: 99.99th percentile {content['p99_99']:.3f} over "
        f"{content['compared']:,} pairs"
    )
    note += f"; the scan took {content['seconds']:.1f} s"
    out.print(note)
    if content["p99_99"] and content["threshold"] < 1.5 * content["p99_99"]:
        out.print(
            "[yellow]the threshold is less than 1.5× this corpus's 99.99th percentile: some "
            "joins by melody may be chance[/yellow]"
        )
    joins = content["joins"]
    if joins:
        more = len(joins) - SHOWN_JOINS
        title = "joins by melody, strongest first" + (
            f" ({more} more: --json lists all)" if more > 0 else ""
        )
        table = Table(title=title)
        table.add_column("overlap", justify="right")
        table.add_column("line")
        table.add_column("piece")
        table.add_column("joined with")
        for e in joins[:SHOWN_JOINS]:
            a, b = e["a"], e["b"]
            table.add_row(
                f"{e['overlap']:.2f}",
                e["line"],
                f"{a['composer']}: {a['title']}",
                f"{b['composer']}: {b['title']}",
            )
        out.print(table)
