"""Jobs above training and evaluation: leave one source out (its sides' rules, the protocol on
fixed features, the CLI job and its resume) and a cross-validation that resumes after this
version added a training setting (tests write the small corpora they read)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from midi_factory import synthetic_corpus

from harmonixr.data.cache import TensorCache, preprocess
from harmonixr.evaluate.loso import holdout, holdouts, leave_one_source_out, source_of
from harmonixr.evaluate.protocols import Settings
from harmonixr.evaluate.records import Side
from harmonixr.evaluate.tables import MODEL

TINY_TOML = """
[train]
preset = "tiny"
loss = "supcon"
crop_seconds = 4
batch_size = 8
max_steps = 4
steps_per_epoch = 2
warmup_steps = 1
lr = 2e-3
val_pairs = 20
checkpoint_every_steps = 200
"""


def multi_source(root: Path) -> Path:
    """Four composers in two styles from four sources: ``alpha`` (rendered by a converter),
    ``beta``, ``gamma``, and ``solo``, which holds one composer only (as NIFC's Chopin
    collection does). One work sits in two sources: ``alpha``'s and ``beta``'s edition."""
    midi = synthetic_corpus(root, n_per=16, seconds=10)
    lines = ["path,composer,work,source,converter,kind"]
    for p in sorted(midi.rglob("*.mid")):
        style, k = p.parent.name, int(p.stem[-2:])
        composer = f"{style}-{k % 2}"
        work = f"{composer} w{k}"
        source, converter = (
            ("alpha", "conv") if k % 3 == 0 else (("beta", ""), ("gamma", ""))[k % 3 - 1]
        )
        if style == "Low" and k % 4 == 3:
            source, converter, composer, work = "solo", "", "Low-1", f"Low-1 w{k}"
        if style == "High" and k in (0, 1):
            work = "High shared"  # one composition: alpha's edition and beta's
            composer = "High-0"
        kind = "score" if k % 2 else "performance"
        lines.append(f"{p.relative_to(midi)},{composer},{work},{source},{converter},{kind}")
    (midi / "metadata.csv").write_text("\n".join(lines) + "\n")
    return midi


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("loso")
    preprocess(multi_source(root / "midi"), root / "cache", workers=1)
    (root / "tiny.toml").write_text(TINY_TOML)
    return root


def _labels(cache: Path) -> Side:
    with TensorCache(cache) as c:
        rows = c.pieces()
    return Side.from_rows(rows, np.zeros((len(rows), 0)))


def test_a_held_out_source_shares_no_unit_with_the_sides_that_train_or_choose(corpus):
    side = _labels(corpus / "cache")
    assert sorted({source_of(o) for o in side.source}) == ["alpha", "beta", "gamma", "solo"]
    for seed in range(5):
        for h in holdouts(side, seed=seed, val_fraction=0.25):
            src = np.array([source_of(o) for o in side.source])
            test = h.sides["test"]
            assert set(src[test]) == {h.source}
            units_out = set(side.unit[np.concatenate([test, h.unmeasured, h.set_aside])])
            for name in ("train", "val"):
                idx = h.sides[name]
                assert not set(side.unit[idx]) & units_out, (seed, h.source, name)
                assert h.source not in set(src[idx])  # choices never see the source
            # only composers the training side holds are measured
            assert set(side.composer[test]) <= set(side.composer[h.sides["train"]])
            everything = np.concatenate([*h.sides.values(), h.set_aside, h.unmeasured])
            assert sorted(everything) == list(range(len(side)))  # every piece counted once
    # the work in two sources: holding alpha out sets beta's edition aside
    alpha = holdout(side, "alpha")
    assert alpha.set_aside.size == 1 and source_of(side.source[alpha.set_aside[0]]) == "beta"
    with pytest.raises(ValueError, match="no piece of source"):
        holdout(side, "nowhere")


def test_the_protocol_scores_fixed_features_and_a_back_end_without_training(corpus):
    from harmonixr.evaluate.baselines import histogram_table, probability_space

    with TensorCache(corpus / "cache") as c:
        rows = c.pieces()
        hists = histogram_table([c.load(r) for r in rows])
    # a statistics-only "model": the pieces' pitch-class and polyphony histograms
    features = np.concatenate([hists["pitch_class"], hists["polyphony"]], axis=1)
    side = Side.from_rows(rows, features)
    report = leave_one_source_out(
        side,
        backends={"stats probe": lambda fold: probability_space(fold, cs=(0.1, 1.0))},
        hists=hists,
        settings=Settings(resamples=30),
        val_fraction=0.2,
    )
    held = report["holdouts"]
    assert set(held) == {"alpha", "beta", "gamma", "solo"}
    solo = held["solo"]["methods"][MODEL]
    # one composer: its own pairs have no negatives, so only pairs against training count
    assert solo["verify"]["same"] == solo["verify"]["pairs"] and "auc" not in solo["verify"]
    cross = solo["verify_against_train"]
    assert 0 < cross["same"] < cross["pairs"] and cross["auc"]["lo"] <= cross["auc"]["value"]
    alpha = held["alpha"]["methods"]
    assert {MODEL, "stats probe", "logistic regression, 5 histograms"} <= set(alpha)
    assert alpha[MODEL]["attribution"]["top1"]["weighting"] == "pieces"
    assert set(held["alpha"]["choices"]["stats probe"]) == {"C", "val_auc", "scored_by"}
    summary = report["summary"]
    assert summary["best_baseline"] != MODEL
    assert set(summary["per_source"][MODEL]) == set(held)
    assert summary["mean"][MODEL]["auc"] is not None
    from harmonixr.evaluate.loso import loso_markdown

    md = loso_markdown(report)
    assert "| solo |" in md and "mean over sources" in md


@pytest.mark.slow
def test_the_loso_job_trains_a_run_per_source_and_resumes(corpus, tmp_path):
    from typer.testing import CliRunner

    from harmonixr.cli import app
    from harmonixr.experiments.loso import source_dir

    out = tmp_path / "loso"
    base = ["experiment", "loso", "--out", str(out), "--resamples", "20", "--seed", "1"]
    first = [*base, "--data", str(corpus / "cache"), "--config", str(corpus / "tiny.toml")]
    res = CliRunner().invoke(
        app, [*first, "--source", "gamma", "--source", "solo", "--no-baselines", "--json"]
    )
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert set(report["holdouts"]) == {"gamma", "solo"}
    assert json.loads((out / "loso.json").read_text())["sources"] == ["gamma", "solo"]
    weights = source_dir(out, "solo") / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    # killed after training, while embedding: the rerun embeds again and trains nothing
    (source_dir(out, "solo") / "embeddings.npz").unlink()
    res = CliRunner().invoke(app, base)  # the recorded cache and settings
    assert res.exit_code == 0, res.output
    assert weights.stat().st_mtime_ns == stamp
    assert (source_dir(out, "solo") / "embeddings.npz").is_file()
    assert "| solo |" in (out / "loso-report.md").read_text()
    # another recipe in the same folder is refused
    (tmp_path / "other.toml").write_text(TINY_TOML.replace("lr = 2e-3", "lr = 1e-3"))
    res = CliRunner().invoke(
        app, [*base, "--data", str(corpus / "cache"), "--config", str(tmp_path / "other.toml")]
    )
    assert res.exit_code == 1 and "records another" in str(res.exception)
    assert "lr" in str(res.exception)


@pytest.mark.slow
def test_a_cross_validation_resumes_after_a_training_setting_was_added(corpus, tmp_path):
    """A job written before a ``TrainConfig`` field existed (simulated: the field removed from
    its records) resumes without training again; a changed setting is still refused."""
    from tiny_runs import tiny_config

    from harmonixr.experiments.cv import FoldPlan, run_folds

    cfg = tiny_config(
        loss="supcon", crop_seconds=4, max_steps=2, steps_per_epoch=2, warmup_steps=1,
        val_pairs=20, checkpoint_every_steps=200,
    )  # fmt: skip
    plan = FoldPlan(folds=2, seed=0, mode="group", val_fraction=0.2)
    out = run_folds(corpus / "cache", tmp_path / "cv", cfg, plan)
    for path in [out / "cv.json", *(out / f"fold-{k}" / "config.json" for k in range(2))]:
        record = json.loads(path.read_text())
        record["train"].pop("key_gain")  # as an older version wrote it
        path.write_text(json.dumps(record))
    stamps = [(out / f"fold-{k}" / "embeddings.npz").stat().st_mtime_ns for k in range(2)]
    run_folds(corpus / "cache", out, cfg, plan)
    assert stamps == [(out / f"fold-{k}" / "embeddings.npz").stat().st_mtime_ns for k in range(2)]
    with pytest.raises(ValueError, match="records another cross-validation.*lr"):
        run_folds(corpus / "cache", out, cfg.replace(lr=1e-3), plan)
    # a fold's own run is checked too (through Run.open), even when the job record agrees
    path = out / "fold-1" / "config.json"
    record = json.loads(path.read_text())
    record["train"]["batch_size"] = 12
    path.write_text(json.dumps(record))
    with pytest.raises(ValueError, match="batch_size"):
        run_folds(corpus / "cache", out, cfg, plan)


def _write_fold(corpus: Path, out: Path, spec: str) -> dict:
    """The ablation's fold writer run as its command line would, the manifest it wrote."""
    from harmonixr.data.splits import read_split
    from harmonixr.experiments.ablation import main

    data = str(corpus / "cache")
    main([str(out), "--data", data, "--out", "-", "--write-fold-split", spec])
    return read_split(out)


def test_the_ablation_writes_a_fold_split_whose_test_sides_cover_every_unit_once(corpus, tmp_path):
    seen: dict[str, int] = {}
    for fold in range(3):
        m = _write_fold(corpus, tmp_path / f"fold-{fold}.json", f"3:{fold}")
        assert (m["folds"], m["fold"], m["mode"]) == (3, fold, "group")
        groups = {s: {p["group"] for p in m[s]} for s in ("train", "val", "test")}
        assert not groups["test"] & (groups["train"] | groups["val"])  # no unit on two sides
        for p in m["test"]:
            seen[p["path"]] = seen.get(p["path"], 0) + 1
    with TensorCache(corpus / "cache") as c:
        assert sorted(seen) == sorted(r.path for r in c.pieces()) and set(seen.values()) == {1}


def test_an_unseen_composer_fold_split_keeps_each_composer_on_one_side(corpus, tmp_path):
    m = _write_fold(corpus, tmp_path / "fold.json", "2:0:unseen-composer")
    assert m["mode"] == "unseen-composer"
    with TensorCache(corpus / "cache") as c:
        composer = {r.path: r.composer for r in c.pieces()}
    sides = {s: {composer[p["path"]] for p in m[s]} for s in ("train", "val", "test")}
    assert sides["test"] and not sides["test"] & (sides["train"] | sides["val"])
