"""``harmonixr train`` and ``harmonixr evaluate`` (one run, or a cross-validation)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from harmonixr.cli._common import (
    RunArg,
    RunCacheOpt,
    app,
    console,
    out,
    say,
)


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
    from harmonixr.train.config import load_toml, merged_settings
    from harmonixr.train.run import train as run_training
    from harmonixr.train.rundir import Run

    given, model = load_toml(config) if config else ({}, {})
    flags = {
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
    stored = Run.open(run, strict=True).train if resume else None
    cfg = merged_settings(data, run, stored=stored, toml=given, flags=flags)
    run_dir = run_training(cfg, model_overrides=model, resume=resume)
    out.print(f"run: {run_dir}  (tensorboard --logdir {run_dir / 'tb'})")


@app.command("train-head")
def train_head(
    source: RunArg,
    data: Annotated[Path, typer.Option("--data", "-d", help="The run's tensor cache.")],
    run: Annotated[Path, typer.Option("--out", "-o", help="The new run directory.")],
    branches: Annotated[
        str, typer.Option(help="both | vit (ViT only) | stats (statistics only).")
    ] = "both",
    steps: Annotated[int, typer.Option(help="Optimiser steps.")] = 1500,
    branch_dropout: Annotated[
        float, typer.Option(help="Chance that a training piece drops one branch.")
    ] = 0.3,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    hidden: Annotated[
        int, typer.Option(help="Width of the statistics and ViT branch networks.")
    ] = 128,
    performed: Annotated[
        int,
        typer.Option(
            help="Renditions of each training piece played otherwise (tempo, rubato, rolled "
            "chords, bass octaves, pedal or dry), whose statistics the head also trains on."
        ),
    ] = 0,
) -> None:
    """Second stage: train SiaViT's statistics branch and whole-piece head on SOURCE's fixed
    encoder (same split); OUT is a run like any other (evaluate, index build, serve)."""
    from harmonixr.train.piece_head import HeadConfig
    from harmonixr.train.piece_head import train_head as run_head

    config = HeadConfig(
        steps=steps,
        branches=branches,
        branch_dropout=branch_dropout,
        seed=seed,
        performed=performed,
        hidden=hidden,
    )
    done = run_head(source, data, run, config, progress=lambda stage, i, n: say(f"{stage} {i}/{n}"))
    log = json.loads((done / "head_log.json").read_text())
    out.print(
        f"run: {done}  (best validation AUC {log['best_val_auc']:.3f} at step {log['best_step']})"
    )


@app.command()
def evaluate(
    run: RunArg,
    data: RunCacheOpt = None,
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
        from harmonixr.cli.experiment import crossval

        crossval(
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
