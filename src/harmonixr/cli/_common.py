"""What every command group shares: the app, the consoles, progress bars, common options."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(
    name="harmonixr",
    help="MIDI → composer-aware embeddings: preprocess a corpus, train SiaViT, evaluate it; "
    "embed, attribute, verify and find similar pieces with a run or the shipped model, or "
    "serve a page that does it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",  # not "rich": its markup would eat "[train]"
)
console = Console(stderr=True)
out = Console()


def progress_bar():
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[current]}", style="dim"),
        console=console,
        transient=False,
        disable=not console.is_terminal,
    )


ModelOpt = Annotated[
    Path | None,
    typer.Option(
        "--model", "-m", help="Run directory (default: the model shipped in the package)."
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print as JSON.")]
RunArg = Annotated[Path, typer.Argument(help="A run directory made by train.")]
RunCacheOpt = Annotated[
    Path | None, typer.Option("--data", "-d", help="Tensor cache (default: the run's).")
]


def print_json(data: object) -> None:
    """Plain JSON on stdout (never wrapped, whatever the path lengths)."""
    sys.stdout.write(json.dumps(data, indent=1, ensure_ascii=False) + "\n")


def load_model(model: Path | None):
    from harmonixr.api import Harmonixr

    return Harmonixr.load(model)


def file_progress(progress, what: str, n: int | None = None):
    """A ``(done, total, name)`` callback drawing a bar, shown from its first call."""
    task = None

    def tick(i: int, total: int, name: str) -> None:
        nonlocal task
        if task is None:
            task = progress.add_task(what, total=n, current="")
        progress.update(task, completed=i, total=total, current=Path(name).name[:40])

    return tick


def say(text: str) -> None:
    console.print(f"[dim]{text}[/dim]", highlight=False)


def print_paths(written: dict[str, Path]) -> None:
    for name, path in written.items():
        out.print(f"{name}: {path}", highlight=False, soft_wrap=True)


def print_report(report: dict, markdown: str, as_json: bool) -> None:
    """A report as JSON, or its Markdown as written (no rich markup read into it)."""
    if as_json:
        print_json(report)
    else:
        out.print(markdown, markup=False, highlight=False)
