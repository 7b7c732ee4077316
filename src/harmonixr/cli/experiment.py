"""``harmonixr experiment …``: jobs of several training runs over one cache — a
cross-validation (``cv``; also ``harmonixr evaluate JOB --folds K``) and leave one source out
(``loso``). Each trains its runs (``experiments/``), resumes when rerun, and writes its report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from harmonixr.cli._common import JsonOpt, app, out, print_report, say

experiment_app = typer.Typer(
    help="Jobs of several training runs over one cache: cross-validation (cv) and leave one "
    "source out (loso). Rerun the same command to resume a killed job.",
    no_args_is_help=True,
)
app.add_typer(experiment_app, name="experiment")

OutOpt = Annotated[Path, typer.Option("--out", "-o", help="The job's folder.")]
DataOpt = Annotated[
    Path | None, typer.Option("--data", "-d", help="Tensor cache (a rerun: the job's).")
]
ConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="TOML with [train] and [model] tables.")
]
SeedOpt = Annotated[int, typer.Option(help="The seed of the sides and of training.")]
StepsOpt = Annotated[int | None, typer.Option(help="Optimiser steps per run.")]
ResamplesOpt = Annotated[int, typer.Option(help="Bootstrap resamples over units.")]
NoBaselinesOpt = Annotated[bool, typer.Option("--no-baselines", help="Only the model.")]


def crossval(
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
    """Train (or resume) a cross-validation's folds and print its pooled report."""
    from harmonixr.experiments.cv import job_settings, pooled_report, run_folds

    data, cfg, model, plan = job_settings(out_dir, data, folds, config, mode, seed, max_steps)
    run_folds(data, out_dir, cfg, plan, model, only=only, progress=say)
    report = pooled_report(
        out_dir, resamples=resamples, baselines=baselines, progress=say, only=only, side=side
    )
    if as_json:
        out.print_json(json.dumps(report))
        return
    out.print((out_dir / report["files"][1]).read_text(), markup=False, highlight=False)


@experiment_app.command("cv")
def cv(
    out_dir: OutOpt,
    data: DataOpt = None,
    folds: Annotated[int, typer.Option(help="Folds.")] = 5,
    config: ConfigOpt = None,
    split_mode: Annotated[
        str, typer.Option(help="group | unseen-composer (composers dealt to folds).")
    ] = "group",
    seed: SeedOpt = 0,
    max_steps: StepsOpt = None,
    fold: Annotated[list[int] | None, typer.Option(help="Only these folds (repeatable).")] = None,
    split: Annotated[
        str, typer.Option(help="test | val (the validation sides, for choosing a recipe).")
    ] = "test",
    resamples: ResamplesOpt = 1000,
    no_baselines: NoBaselinesOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Cross-validate a recipe: K fold runs, pooled out-of-fold figures in OUT/report.{json,md}."""
    crossval(
        out_dir, data, folds, config, split_mode, seed, max_steps, fold, resamples,
        not no_baselines, as_json, "val" if split == "val" else "test",
    )  # fmt: skip


@experiment_app.command("loso")
def loso(
    out_dir: OutOpt,
    data: DataOpt = None,
    config: ConfigOpt = None,
    source: Annotated[
        list[str] | None,
        typer.Option(help="Hold out only these sources (repeatable; default: every one)."),
    ] = None,
    seed: SeedOpt = 0,
    max_steps: StepsOpt = None,
    val_fraction: Annotated[float, typer.Option(help="Validation share of the units.")] = 0.1,
    min_works: Annotated[
        int, typer.Option(help="Training units a composer needs to be measured.")
    ] = 1,
    resamples: ResamplesOpt = 1000,
    no_baselines: NoBaselinesOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Leave one source out: a run per held-out source trained without it (and without every
    unit it touches), measured on its pieces beside the tuned baselines; OUT/loso-report.md."""
    from harmonixr.evaluate.loso import loso_markdown
    from harmonixr.experiments.loso import job_settings, loso_job_report, run_loso

    data, cfg, model, plan, only = job_settings(
        out_dir, data, config, source, seed, val_fraction, min_works, max_steps
    )
    say(f"sources held out: {', '.join(plan.sources)}")
    run_loso(data, out_dir, cfg, plan, model, only=only, progress=say)
    report = loso_job_report(
        out_dir, resamples=resamples, baselines=not no_baselines, progress=say, only=only
    )
    print_report(report, loso_markdown(report), as_json)
