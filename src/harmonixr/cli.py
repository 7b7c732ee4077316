"""The ``harmonixr`` command: parses arguments and calls one library function per command."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

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


def _progress():
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
    from harmonixr.midi.corpora import read_corpus
    from harmonixr.midi.tensorize import TensorConfig

    config = TensorConfig(binary=binary, pedal=not no_pedal)
    with _progress() as progress:
        if source == "builtin" or format == "builtin":
            from harmonixr.midi.builtin import read_builtin

            task = progress.add_task("music21 → MIDI", total=None, current="")
            listing = read_builtin(
                progress=lambda i, n, name: progress.update(
                    task, completed=i, total=n, current=name
                )
            )
        else:
            listing = read_corpus(source, format=format, labels=labels, include_scores=scores)
        task = progress.add_task(
            f"tensorize ({listing.format})", total=len(listing.pieces), current=""
        )

        def tick(i: int, n: int, path: str) -> None:
            progress.update(task, completed=i, total=n, current=Path(path).name[:40])

        summary = run(
            source,
            out_dir,
            config=config,
            workers=workers,
            limit=limit,
            progress=tick,
            listing=listing,
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
    """Pieces and hours per composer in a cache, and why files were skipped."""
    from harmonixr.data.cache import TensorCache

    with TensorCache(cache) as c:
        stats = c.stats()
        stats["breakdown"] = c.breakdown()
        units = {r.group for r in c.pieces()}
    stats["units"] = len(units)
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
    if stats["skipped"]:
        skipped = Table(title="skipped")
        skipped.add_column("reason")
        skipped.add_column("files", justify="right")
        for reason, n in stats["skipped"].items():
            skipped.add_row(reason, str(n))
        out.print(skipped)


# ------------------------------------------------------------------ asking a model

ModelOpt = Annotated[
    Path | None,
    typer.Option(
        "--model", "-m", help="Run directory (default: the model shipped in the package)."
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print as JSON.")]


def _print_json(data: object) -> None:
    """Plain JSON on stdout (never wrapped, whatever the path lengths)."""
    sys.stdout.write(json.dumps(data, indent=1, ensure_ascii=False) + "\n")


def _model(model: Path | None):
    from harmonixr.search.api import Harmonixr

    return Harmonixr.load(model)


def _file_progress(progress, what: str, n: int):
    task = progress.add_task(what, total=n, current="")

    def tick(i: int, total: int, name: str) -> None:
        progress.update(task, completed=i, total=total, current=Path(name).name[:40])

    return tick


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
    from harmonixr.search.api import embed_files, embeddings_format, write_embeddings
    from harmonixr.search.runs import expand_midi_paths

    embeddings_format(out_path)  # a wrong name fails before any work
    paths = expand_midi_paths(files)
    hx = _model(model)
    with _progress() as progress:
        result = embed_files(
            hx,
            paths,
            workers=workers,
            progress=_file_progress(progress, "parse", len(paths)),
            embed_progress=_file_progress(progress, "embed", len(paths)),
        )
    written = write_embeddings(out_path, result)
    if as_json:
        _print_json({**result.to_dict(), "out": [str(p) for p in written]})
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
def attribute(
    file: Annotated[Path, typer.Argument(help="A MIDI file.")],
    k: Annotated[int, typer.Option("--k", "-k", help="Named composers to list.")] = 5,
    prior_unknown: Annotated[
        float | None,
        typer.Option(help="Prior that the composer is none of the named ones (default 0.5)."),
    ] = None,
    model: ModelOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Who most likely wrote FILE: the answer first, then calibrated probabilities."""
    result = _model(model).attribute(file, k=k, prior_unknown=prior_unknown)
    if as_json:
        _print_json([a.to_dict() for a in result])
        return
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
        table.add_row(f"[bold]{name}[/bold] ← answer" if n == 0 else name, prob, score)
    out.print(table)


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
    result = _model(model).similar(file, k=k, per_work=per_work)
    if as_json:
        _print_json([m.to_dict() for m in result])
        return
    table = Table(title=f"pieces like {file.name}")
    for col in ("#", "similarity", "composer", "title", "performer / source", "path"):
        table.add_column(col, justify="right" if col in ("#", "similarity") else "left")
    for i, m in enumerate(result, 1):
        who = " · ".join(x for x in (m.performer, m.source) if x)
        table.add_row(str(i), f"{m.similarity:.3f}", m.composer, m.title, who, m.path)
    out.print(table)


@app.command()
def verify(
    a: Annotated[Path, typer.Argument(help="A MIDI file.")],
    b: Annotated[Path, typer.Argument(help="Another MIDI file.")],
    model: ModelOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Whether A and B share a composer."""
    v = _model(model).verify(a, b)
    if as_json:
        _print_json(v.to_dict())
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
    window: Annotated[float, typer.Option(help="Window length in seconds.")] = 30.0,
    hop: Annotated[float, typer.Option(help="Seconds between window starts.")] = 10.0,
    model: ModelOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Composer probabilities passage by passage."""
    passages = _model(model).timeline(file, window=window, hop=hop)
    if as_json:
        _print_json([p.to_dict() for p in passages])
        return
    table = Table(title=f"{file.name}, {window:g} s windows every {hop:g} s")
    for col in ("from", "to", "most likely", "probability", "unknown"):
        table.add_column(col, justify="left" if col == "most likely" else "right")
    for p in passages:
        best = max(p.probabilities, key=p.probabilities.__getitem__, default="")
        top = p.probabilities.get(best, 0.0)
        if p.unknown > top:
            best, top = "none of the known composers", p.unknown
        table.add_row(f"{p.start_s:.1f}", f"{p.end_s:.1f}", best, f"{top:.3f}", f"{p.unknown:.3f}")
    out.print(table)
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
    )


index_app = typer.Typer(
    help="The run's persistent index: embeddings, metadata, centroids, calibration.",
    no_args_is_help=True,
)
app.add_typer(index_app, name="index")


@index_app.command("build")
def index_build(
    run: Annotated[Path, typer.Argument(help="A run directory made by train.")],
    data: Annotated[
        Path | None, typer.Option("--data", "-d", help="Tensor cache (default: the run's).")
    ] = None,
    store: Annotated[
        str, typer.Option(help="faiss | milvus://HOST:PORT | PATH.db (Milvus Lite).")
    ] = "faiss",
    kind: Annotated[str, typer.Option(help="FAISS search: auto | flat | hnsw.")] = "auto",
    relative_to: Annotated[
        Path | None, typer.Option(help="Store paths relative to this folder (a corpus root).")
    ] = None,
    open_set: Annotated[
        Path | None,
        typer.Option(
            help="Unknown-composer model learnt on real strangers (open-set.json, or the "
            "unseen-composer cross-validation folder that holds it). Default: simulated."
        ),
    ] = None,
    min_works: Annotated[
        int | None,
        typer.Option(help="Works a composer needs to be named (default: chosen on validation)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Embed the run's corpus into RUN/index (centroids from train, calibration from val)."""
    from harmonixr.search.index import build_index

    with _progress() as progress:
        task = progress.add_task("embed", total=None, current="")
        index = build_index(
            run,
            data,
            store=store,
            kind=kind,
            relative_to=relative_to,
            progress=lambda i, n, _: progress.update(task, completed=i, total=n),
            open_set=open_set,
            min_works=min_works,
        )
    _show_index(index.info(), as_json)


@index_app.command("measure")
def index_measure(
    run: Annotated[Path, typer.Argument(help="A run directory with an index and split.json.")],
    data: Annotated[Path, typer.Option("--data", "-d", help="The run's tensor cache.")],
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Folder for measure.json and measure.md.")
    ] = None,
    music21: Annotated[
        bool, typer.Option(help="Also measure on music21's strangers (converted once).")
    ] = True,
    resamples: Annotated[int, typer.Option(help="Bootstrap resamples.")] = 300,
    as_json: JsonOpt = False,
) -> None:
    """Measure RUN's index where nothing was fitted: answers, "someone else", verify and the
    timeline on its test side and on music21's strangers; stored beside the fitted-on figures."""
    from harmonixr.midi.builtin import cache_dir
    from harmonixr.search.measure import measure_index, measure_markdown, store_held_out

    report = measure_index(
        run,
        data,
        music21_dir=cache_dir() / "music21-open-set-v1" if music21 else None,
        resamples=resamples,
        progress=_say,
    )
    store_held_out(run, report)
    target = out_dir or run
    target.mkdir(parents=True, exist_ok=True)
    (target / "measure.json").write_text(json.dumps(report, indent=1))
    (target / "measure.md").write_text(measure_markdown(report))
    if as_json:
        _print_json(report)
    else:
        out.print(measure_markdown(report), markup=False, highlight=False)


@index_app.command("open-set")
def index_open_set(
    strangers: Annotated[
        Path,
        typer.Argument(help="An unseen-composer cross-validation (evaluate --split-mode ...)."),
    ],
    known: Annotated[
        Path, typer.Argument(help="A by-group cross-validation of the same recipe and cache.")
    ],
    exclude_split: Annotated[
        Path | None,
        typer.Option(
            help="A run's split.json: its test groups stay out of every fit and measurement "
            "(the run that will ship with this model)."
        ),
    ] = None,
    resamples: Annotated[int, typer.Option(help="Bootstrap resamples.")] = 300,
    as_json: JsonOpt = False,
) -> None:
    """Learn "someone else" from real strangers (STRANGERS' folds) against held-out pieces of
    known composers (KNOWN's folds), cross-fitted over the folds; writes
    STRANGERS/open-set.json for `index build --open-set`."""
    from harmonixr.evaluate.openset import embed_training_sides, openset_markdown, openset_study

    excluded = None
    if exclude_split is not None:
        test = json.loads(exclude_split.read_text())["test"]
        excluded = {e["group"] for e in test if isinstance(e, dict) and e.get("group")}
        if len(excluded) == 0 and test:
            raise typer.BadParameter(f"{exclude_split}: no groups recorded (an old split.json)")
    for cv in (strangers, known):
        embed_training_sides(cv, progress=_say)
    result = openset_study(
        strangers, known, resamples=resamples, progress=_say, exclude_groups=excluded
    )
    if as_json:
        _print_json(result)
    else:
        out.print(openset_markdown(result), markup=False, highlight=False)


@index_app.command("add")
def index_add(
    run: Annotated[Path, typer.Argument(help="A run directory with an index.")],
    files: Annotated[list[Path], typer.Argument(help="MIDI files or folders.")],
    composer: Annotated[str, typer.Option(help="Composer of the added files, if known.")] = "",
    workers: Annotated[int | None, typer.Option(help="Parser processes (default 2).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Add files to RUN's index without rebuilding it (identical content is stored once)."""
    from harmonixr.search.api import Harmonixr
    from harmonixr.search.runs import expand_midi_paths

    result = Harmonixr.load(run).add(expand_midi_paths(files), composer=composer, workers=workers)
    if as_json:
        _print_json(result.to_dict())
        return
    out.print(
        f"added {len(result.added)}, already indexed {len(result.duplicates)}, "
        f"unusable {len(result.errors)}"
    )
    for error in result.errors:
        console.print(f"  {error}", style="red", markup=False, highlight=False)


@index_app.command("info")
def index_info(
    run: Annotated[Path | None, typer.Argument(help="A run (default: the shipped model).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """What an index holds and how well its probabilities are calibrated."""
    _show_index(_model(run).info(), as_json)


def _num(d: dict, key: str) -> str:
    v = d.get(key)
    if isinstance(v, dict):
        v = v.get("value")
    return "–" if v is None else f"{v:.3f}"


def calibration_rows(cal: dict) -> list[tuple[str, str, str]]:
    """(figure, fitted-on value, held-out value) for `index info`: where each was measured."""
    held = cal.get("held_out") or {}
    comp, ver = cal.get("composer", {}), cal.get("verify", {})
    hc, hv = held.get("composer", {}), held.get("verify", {})
    hs = held.get("open_set_all") or held.get("open_set_test_side") or {}
    none = "not measured (harmonixr index measure)"
    return [
        (
            "composer ECE / top-1",
            f"{_num(comp, 'ece')} / {_num(comp, 'top1_accuracy')}",
            f"{_num(hc, 'ece')} / {_num(hc, 'top1')}" if hc else none,
        ),
        (
            "answer accuracy, named composers",
            "–",
            _num(hc, "answer_accuracy") if hc else none,
        ),
        (
            "someone else: AUC / strangers caught / known called unknown",
            f"– / – / {_num(cal.get('operating_point', {}), 'named_called_unknown')}",
            " / ".join(
                _num(hs, k) for k in ("detection_auc", "strangers_caught", "known_called_unknown")
            )
            if hs
            else none,
        ),
        (
            "verify balanced accuracy / ECE",
            f"{_num(ver, 'balanced_accuracy')} / {_num(ver, 'ece')}",
            f"{_num(hv, 'balanced_accuracy')} / {_num(hv, 'ece')}" if hv else none,
        ),
    ]


def _show_index(info: dict, as_json: bool) -> None:
    if as_json:
        _print_json(info)
        return
    table = Table(
        title=f"{info['root']}: {info['items']} pieces, {info['dim']}-d", show_header=False
    )
    where = info.get("uri", "") + " " + info.get("collection", "")
    table.add_row("store", f"{info['store']} {info.get('active_kind', '')}{where}".strip())
    table.add_row(
        "named composers",
        f"{len(info['named_composers'])} with ≥ {info['min_works']} training works: "
        + ", ".join(info["named_composers"]),
    )
    if info["barely_known"]:
        table.add_row("barely known", f"{len(info['barely_known'])} (never named)")
    table.add_row(
        "someone else",
        f"{info['unknown_model']}; answer when p ≥ {info['operating_point']:.3f}",
    )
    for label, fitted, held in calibration_rows(info["calibration"]):
        table.add_row(label, f"fitted on validation: {fitted}\nmeasured held out: {held}")
    for note in info["notes"]:
        table.add_row("note", note)
    out.print(table)


@app.command()
def train(
    data: Annotated[Path, typer.Option("--data", "-d", help="Tensor cache from preprocess.")],
    run: Annotated[Path, typer.Option("--out", "-o", help="Run directory.")],
    preset: Annotated[
        str | None, typer.Option(help="Model preset: tiny|small|base (default small).")
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="TOML with [train] and [model] tables.")
    ] = None,
    loss: Annotated[str | None, typer.Option(help="contrastive|supcon")] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs (of --steps-per-epoch).")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Total optimiser steps.")] = None,
    steps_per_epoch: Annotated[int | None, typer.Option(help="Steps between validations.")] = None,
    crop_seconds: Annotated[float | None, typer.Option(help="Crop length in seconds.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Pairs (or crops) per step.")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate.")] = None,
    split: Annotated[str | None, typer.Option(help="group|unseen-composer")] = None,
    balanced: Annotated[bool | None, typer.Option(help="Composer-balanced sampling.")] = None,
    devices: Annotated[int | None, typer.Option(help="Devices (processes) per node.")] = None,
    num_nodes: Annotated[int | None, typer.Option(help="Nodes.")] = None,
    accelerator: Annotated[str | None, typer.Option(help="auto|cpu|gpu|mps")] = None,
    workers: Annotated[int | None, typer.Option(help="Data-loading workers.")] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue from the last checkpoint with the run's recorded settings; only "
            "--max-steps, --epochs, --devices, --num-nodes, --workers and --accelerator may "
            "change.",
        ),
    ] = False,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
) -> None:
    """Train SiaViT on a tensor cache (TensorBoard logs in RUN/tb)."""
    from harmonixr.train.config import TrainConfig, load_toml, stored_run
    from harmonixr.train.run import train as run_training

    given, model = load_toml(config) if config else ({}, {})
    # a resumed run starts from its recorded settings; train() refuses changes to what it learns
    settings = dict(stored_run(run)["train"]) if resume else {}
    settings.update(given)
    cli = {
        "preset": preset,
        "loss": loss,
        "epochs": epochs,
        "max_steps": max_steps,
        "steps_per_epoch": steps_per_epoch,
        "crop_seconds": crop_seconds,
        "batch_size": batch_size,
        "lr": lr,
        "split": split,
        "balanced": balanced,
        "devices": devices,
        "num_nodes": num_nodes,
        "accelerator": accelerator,
        "num_workers": workers,
        "seed": seed,
    }
    settings.update({k: v for k, v in cli.items() if v is not None})
    settings.update({"data": str(data), "out": str(run)})
    cfg = TrainConfig.from_dict(settings)
    run_dir = run_training(cfg, model_overrides=model, resume=resume)
    out.print(f"run: {run_dir}  (tensorboard --logdir {run_dir / 'tb'})")


@app.command()
def evaluate(
    run: Annotated[Path, typer.Argument(help="A run directory made by train.")],
    data: Annotated[
        Path | None, typer.Option("--data", "-d", help="Tensor cache (default: the run's).")
    ] = None,
    split: Annotated[
        str, typer.Option(help="test | val | unseen-composer (a run trained with that split).")
    ] = "test",
    scores: Annotated[
        Path | None,
        typer.Option(help="Cache with score MIDIs (ASAP --scores): the score-MIDI control."),
    ] = None,
    resamples: Annotated[int, typer.Option(help="Bootstrap resamples over groups.")] = 1000,
    weights: Annotated[
        Path | None, typer.Option(help="Weights file to evaluate instead of the run's.")
    ] = None,
    no_baselines: Annotated[bool, typer.Option("--no-baselines", help="Only the model.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print report.json.")] = False,
    folds: Annotated[
        int | None,
        typer.Option(
            help="Cross-validate instead: RUN is the job's folder; K fold runs are trained on "
            "--data with --config and pooled (rerun the same command to resume).",
        ),
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="With --folds: TOML with [train], [model].")
    ] = None,
    split_mode: Annotated[
        str, typer.Option(help="With --folds: group | unseen-composer (composers dealt).")
    ] = "group",
    seed: Annotated[int, typer.Option(help="With --folds: the seed of folds and training.")] = 0,
    max_steps: Annotated[int | None, typer.Option(help="With --folds: steps per fold.")] = None,
    fold: Annotated[
        list[int] | None, typer.Option(help="With --folds: train only these folds (repeatable).")
    ] = None,
) -> None:
    """Evaluate a run against baselines: RUN/eval/SPLIT/report.{json,md}, roc/det/distances.png.
    With --folds K: cross-validation, pooled out-of-fold figures in RUN/report.{json,md}."""
    if folds is not None:
        _crossval(
            run,
            data,
            folds,
            config,
            split_mode,
            seed,
            max_steps,
            fold,
            resamples,
            not no_baselines,
            as_json,
            "val" if split == "val" else "test",
        )
        return
    from harmonixr.evaluate.report import evaluate_run

    report = evaluate_run(
        run,
        data=data,
        split=split,
        scores=scores,
        resamples=resamples,
        baselines=not no_baselines,
        weights=weights,
        progress=lambda msg: console.print(f"[dim]{msg}[/dim]"),
    )
    if as_json:
        out.print_json(json.dumps(report))
        return
    out.print((Path(report["out"]) / "report.md").read_text(), markup=False, highlight=False)


def _crossval(
    out_dir: Path,
    data: Path | None,
    folds: int,
    config: Path | None,
    mode: str,
    seed: int,
    max_steps: int | None,
    only: list[int] | None,
    resamples: int,
    baselines: bool,
    as_json: bool,
    side: str = "test",
) -> None:
    from harmonixr.evaluate.crossval import CV_FILE, FoldPlan, pooled_report, run_folds
    from harmonixr.train.config import TrainConfig, load_toml

    recorded = out_dir / CV_FILE
    if recorded.is_file() and data is None and config is None:
        rec = json.loads(recorded.read_text())  # resume: the job's own settings
        settings = dict(rec["train"])
        model = settings.pop("model", {})
        data, plan = (
            Path(rec["data"]),
            FoldPlan(rec["folds"], rec["seed"], rec["mode"], rec["val_fraction"]),
        )
    else:
        if data is None:
            raise typer.BadParameter("--folds needs --data CACHE (or RUN holding a cv.json)")
        settings, model = load_toml(config) if config else ({}, {})
        settings = TrainConfig.from_dict({**settings, "seed": seed}).to_dict()
        if max_steps is not None:
            settings["max_steps"] = max_steps
        plan = FoldPlan(folds, seed, mode)
    settings.update({"data": str(Path(data).resolve()), "out": str(out_dir), "split": plan.mode})
    cfg = TrainConfig.from_dict(settings)
    run_folds(data, out_dir, cfg, plan, model, only=only, progress=_say)
    report = pooled_report(
        out_dir, resamples=resamples, baselines=baselines, progress=_say, only=only, side=side
    )
    if as_json:
        out.print_json(json.dumps(report))
        return
    out.print((out_dir / report["files"][1]).read_text(), markup=False, highlight=False)


viz = typer.Typer(
    help="Pictures: corpus maps, a piece's tensor, first-layer filters, training curves, "
    "new pieces in context.",
    no_args_is_help=True,
)
app.add_typer(viz, name="viz")


def _say(text: str) -> None:
    console.print(f"[dim]{text}[/dim]", highlight=False)


def _print_paths(written: dict[str, Path]) -> None:
    for name, path in written.items():
        out.print(f"{name}: {path}", highlight=False, soft_wrap=True)


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
        say=_say,
    )
    _print_paths(written)


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

    _print_paths(tensor_pictures(file, parse_span(seconds), out_dir, frames=frames))


@viz.command("filters")
def viz_filters(
    run: Annotated[Path, typer.Argument(help="Run directory.")],
    out_dir: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output folder (default RUN/viz).")
    ] = None,
) -> None:
    """The first layer's 3-D kernels, one panel per filter and time slice."""
    from harmonixr.viz.filters import filter_grid

    _print_paths({"filters": filter_grid(run, out_dir)})


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
    from harmonixr.search.api import Harmonixr
    from harmonixr.viz.eras import composer_style

    root = Harmonixr.load(run).run.root
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

    _print_paths({"curves": training_curves(run, out_dir)})


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

    written = context_map(run, files, data=data, map_dir=map_dir, out=out_dir, k=k, say=_say)
    _print_paths(written)


def main() -> None:
    """Entry point: library errors become one readable line and exit code 1."""
    try:
        app()
    except KeyboardInterrupt:
        console.print("[red]interrupted[/red]: rerun the same command to continue")
        sys.exit(130)
    except Exception as exc:
        if os.environ.get("HARMONIXR_DEBUG"):
            raise
        text = str(exc) if isinstance(exc, ValueError | OSError) else f"{type(exc).__name__}: {exc}"
        from rich.markup import escape

        console.print(f"[red]error:[/red] {escape(text)}", highlight=False, soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
