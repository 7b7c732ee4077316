"""``harmonixr index …``: build, measure, extend and show a run's index."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from harmonixr.cli._common import (
    JsonOpt,
    RunArg,
    RunCacheOpt,
    app,
    console,
    load_model,
    out,
    print_json,
    print_report,
    progress_bar,
    say,
)

index_app = typer.Typer(
    help="The run's persistent index: embeddings, metadata, centroids, calibration.",
    no_args_is_help=True,
)
app.add_typer(index_app, name="index")


@index_app.command("build")
def index_build(
    run: RunArg,
    data: RunCacheOpt = None,
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
    temperature: Annotated[
        str,
        typer.Option(
            help="How the answer's temperature is fitted on validation: nll (least negative "
            "log-likelihood) or ece (least ECE); `index calibrators` says which."
        ),
    ] = "nll",
    as_json: JsonOpt = False,
) -> None:
    """Embed the run's corpus into RUN/index (centroids from train, calibration from val)."""
    from harmonixr.search.index import build_index

    with progress_bar() as progress:
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
            temperature_rule=temperature,
        )
    _show_index(index.info(), as_json)


@index_app.command("works")
def index_works(
    run: RunArg,
    data: Annotated[Path, typer.Option("--data", "-d", help="The cache the index was built from.")],
    as_json: JsonOpt = False,
) -> None:
    """Give RUN's index known works (what `identify` needs) without embedding again: each
    piece's composition and melodic sketch, and the rule fitted on validation."""
    from harmonixr.search.index import attach_known_works

    _show_index(attach_known_works(run, data).info(), as_json)


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
    from harmonixr.search.measure import measure_index, measure_markdown, save_measure

    report = measure_index(
        run,
        data,
        music21_dir=cache_dir() / "music21-open-set-v1" if music21 else None,
        resamples=resamples,
        progress=say,
    )
    save_measure(run, report, out_dir)
    print_report(report, measure_markdown(report), as_json)


@index_app.command("calibrators")
def index_calibrators(
    run: Annotated[Path, typer.Argument(help="A run directory with an index and split.json.")],
    data: Annotated[Path, typer.Option("--data", "-d", help="The run's tensor cache.")],
    held_out: Annotated[
        list[Path] | None,
        typer.Option(
            "--held-out",
            help="Another run of the same recipe (repeatable): calibrators fitted on its "
            "validation side, measured on its test pieces outside RUN's test side.",
        ),
    ] = None,
    shipped: Annotated[
        str | None,
        typer.Option(help="The temperature rule compared against: nll or ece (default: RUN's)."),
    ] = None,
    folds: Annotated[int, typer.Option(help="Folds of the validation groups.")] = 5,
    repeats: Annotated[int, typer.Option(help="Random foldings of the validation groups.")] = 20,
    as_json: JsonOpt = False,
) -> None:
    """Compare calibrators of the composer answer by cross-fitted ECE on RUN's validation side
    (the test side is not read): which one validation supports, and the ECE chance alone gives."""
    from harmonixr.evaluate.calibrators import ON_THEM
    from harmonixr.search.calibrators import calibrator_choice

    REFERENCES = {  # short labels: the table must fit a terminal
        ON_THEM: "ref.: T of least ECE on them",
        "ece_by_chance": "ref.: calibrated, by chance",
        "temperature_ratio": "ref.: T held out / T val.",
    }

    report = calibrator_choice(
        run, data, held_out=held_out or (), folds=folds, repeats=repeats, shipped=shipped
    )
    if as_json:
        print_json(report)
        return
    table = Table(
        title=f"Cross-fitted ECE on validation ({report['pieces']} pieces, "
        f"{report['groups']} groups, {report['folds']} folds × {report['repeats']})"
    )
    table.add_column("calibrator")
    table.add_column("ECE mean", justify="right")
    table.add_column("sd", justify="right")
    table.add_column("minus shipped (sd)", justify="right")
    for name, v in report["cross_fitted_ece"].items():
        mark = " (shipped)" if name == report["shipped"] else ""
        table.add_row(
            name + mark,
            f"{v['mean']:.3f}",
            f"{v['sd']:.3f}",
            f"{v['minus_shipped']:+.3f} ({v['minus_shipped_sd']:.3f})",
        )
    console.print(table)
    runs = report.get("held_out_runs")
    if runs:
        t = Table(title="Fitted on each run's validation side, measured on its held-out pieces")
        t.add_column("calibrator", no_wrap=True)
        for r in runs["runs"]:
            label = Path(r["run"]).parent.name or r["run"]
            t.add_column(label, justify="right", min_width=len(label))
        t.add_column("mean", justify="right")
        for name, mean in runs["mean_ece"].items():
            t.add_row(name, *(f"{r[name]:.3f}" for r in runs["runs"]), f"{mean:.3f}")
        for key in (ON_THEM, "ece_by_chance", "temperature_ratio"):  # references
            vals = [r[key] for r in runs["runs"]]
            label = REFERENCES.get(key, key)
            t.add_row(label, *(f"{v:.3f}" for v in vals), f"{sum(vals) / len(vals):.3f}")
        t.add_row("pieces held out", *(str(r["held_out"]) for r in runs["runs"]), "")
        for side in ("train", "val"):
            t.add_row(
                f"{side}: stripped of RUN's test",
                *(str(r["stripped_of_run_test_side"][side]) for r in runs["runs"]),
                "",
            )
        console.print(t)
    ch = report["chance"]
    console.print(
        f"Perfectly calibrated answers of the shipped rule's confidences (fitted on these "
        f"validation pieces): ECE "
        f"{ch['expected_if_calibrated']:.3f} on average, 95th percentile "
        f"{ch['q95_if_calibrated']:.3f}. Lowest cross-fitted: {report['lowest']}; chosen: "
        f"{report['chosen']} ({report['rule']}); for `index build`: {report['index_build']}."
    )


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
    from harmonixr.data.splits import side_groups
    from harmonixr.evaluate.openset import openset_markdown
    from harmonixr.experiments.cv import embed_training_sides, openset_job

    excluded = side_groups(exclude_split, "test") if exclude_split is not None else None
    for cv in (strangers, known):
        embed_training_sides(cv, progress=say)
    result = openset_job(
        strangers, known, resamples=resamples, progress=say, exclude_groups=excluded
    )
    print_report(result, openset_markdown(result), as_json)


@index_app.command("add")
def index_add(
    run: Annotated[Path, typer.Argument(help="A run directory with an index.")],
    files: Annotated[list[Path], typer.Argument(help="MIDI files or folders.")],
    composer: Annotated[str, typer.Option(help="Composer of the added files, if known.")] = "",
    workers: Annotated[int | None, typer.Option(help="Parser processes (default 2).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Add files to RUN's index without rebuilding it (identical content is stored once)."""
    from harmonixr.api import Harmonixr
    from harmonixr.midi.files import expand_midi_paths

    result = Harmonixr.load(run).add(expand_midi_paths(files), composer=composer, workers=workers)
    if as_json:
        print_json(result.to_dict())
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
    _show_index(load_model(run).info(), as_json)


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
        print_json(info)
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
        f"withdrawn: {info['open_set_note']}"
        if not info.get("open_set", True)
        else f"{info['unknown_model']}; the answer when it is the most probable row, at a "
        f"default prior of {info.get('default_prior', 0.5):.3f}",
    )
    for label, fitted, held in calibration_rows(info["calibration"]):
        table.add_row(label, f"fitted on validation: {fitted}\nmeasured held out: {held}")
    for note in info["notes"]:
        table.add_row("note", note)
    out.print(table)
