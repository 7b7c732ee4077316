"""Jobs above training and evaluation: a cross-validation that resumes after this version added
a training setting (tests write the small corpora they read)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from midi_factory import synthetic_corpus

from harmonixr.data.cache import preprocess

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
