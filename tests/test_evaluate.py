"""``harmonixr evaluate`` on a tiny run over a generated corpus, and the protocols' honesty."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from midi_factory import synthetic_corpus
from tiny_runs import train_tiny

from harmonixr.data.cache import preprocess
from harmonixr.evaluate.protocols import Settings, Side, evaluate_method
from harmonixr.evaluate.report import LR, MODEL, UNTRAINED, evaluate_run

HEADLINE_KEYS = {
    "verify_auc", "verify_auc_lo", "verify_auc_hi", "verify_eer", "verify_tpr_at_1fpr",
    "verify_pairs", "seed_threshold", "seed_acc_mixed", "seed_acc_same", "seed_acc_different",
    "attr_top1", "attr_top1_lo", "attr_top1_hi", "attr_top3", "attr_top5", "attr_balanced_acc",
    "attr_macro_f1", "probe_top1", "probe_C", "retr_map", "retr_p10", "retr_work_r1",
    "conf_performer_auc", "conf_same_performer_share", "conf_score_auc", "val_verify_auc",
}  # fmt: skip


def _labels(root) -> None:
    lines = ["path,composer,title,group,performer,kind"]
    for composer in ("Low", "High"):
        for i in range(12):
            name = f"{composer}/{composer.lower()}{i:02d}.mid"
            w = f"{composer}-w{i // 2}"
            lines.append(f"{name},{composer},{composer} {i},{w},P{i % 3},performance")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")


def _scores(root) -> None:
    """One deadpan score MIDI per work (fixed velocity, its composer's register), different
    files from the performances."""
    from midi_factory import write_score

    lines = ["path,composer,title,group,kind"]
    for composer, lo in (("Low", 40), ("High", 72)):
        (root / composer).mkdir(parents=True, exist_ok=True)
        for w in range(6):
            name = f"{composer}/score{w}.mid"
            notes = [(480 * k, 480, lo + (k * (w + 2)) % 14, 64) for k in range(40)]
            write_score(root / name, notes)
            lines.append(f"{name},{composer},{composer} w{w} (score),{composer}-w{w},score")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    midi = synthetic_corpus(root / "midi", n_per=12, seconds=20)
    _labels(midi)
    _scores(root / "scores-midi")
    preprocess(midi, root / "cache", labels=midi / "labels.csv", workers=1)
    preprocess(
        root / "scores-midi", root / "scores", labels=root / "scores-midi/labels.csv", workers=1
    )
    run = train_tiny(
        root / "cache",
        root / "run",
        loss="supcon",
        crop_seconds=5,
        max_steps=20,
        steps_per_epoch=10,
        val_pairs=50,
        checkpoint_every_steps=200,
    )
    return run, root


@pytest.mark.slow
def test_report_has_every_metric_for_model_and_baselines(tiny_run):
    run, root = tiny_run
    report = evaluate_run(run, scores=root / "scores", resamples=50)
    methods = report["methods"]
    assert {MODEL, UNTRAINED, LR, "pitch_class histogram", "pc_transition histogram"} <= set(
        methods
    )
    missing = HEADLINE_KEYS - set(methods[MODEL])
    assert not missing, missing
    for name, m in methods.items():
        for key in HEADLINE_KEYS - {"probe_C"}:
            assert m[key] is not None and math.isfinite(m[key]), (name, key)
    m = methods[MODEL]
    assert m["verify_auc_lo"] <= m["verify_auc"] <= m["verify_auc_hi"]
    assert 0 <= m["conf_same_performer_share"] <= 1
    # one score per held-out work, none of them a performance
    assert report["pieces"]["scores"] == report["groups"]["held"] > 0
    with pytest.raises(ValueError, match="no score MIDIs"):
        evaluate_run(run, scores=root / "cache", resamples=10, baselines=False)
    out = run / "eval" / "test"
    for name in ("report.json", "report.md", "roc.png", "det.png", "distances.png"):
        assert (out / name).stat().st_size > 0
    md = (out / "report.md").read_text()
    assert MODEL in md and LR in md and "[" in md  # intervals printed
    assert json.loads((out / "report.json").read_text())["methods"][MODEL] == m
    # the synthetic composers are learnable: the trained model separates them
    assert m["verify_auc"] > 0.8


@pytest.mark.slow
def test_evaluate_cli_json_and_unseen_composer_refusal(tiny_run):
    from typer.testing import CliRunner

    from harmonixr.cli import app

    run, _ = tiny_run
    res = CliRunner().invoke(
        app, ["evaluate", str(run), "--split", "val", "--resamples", "20", "--json"]
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["held_side"] == "val"
    with pytest.raises(ValueError, match="unseen-composer"):
        evaluate_run(run, split="unseen-composer")


def _side(rng, n, d=8):
    comp = np.array(["a", "b"] * (n // 2), dtype=object)
    emb = rng.normal(size=(n, d)) + np.where(comp == "a", 1.0, -1.0)[:, None]
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    groups = np.array([f"g{i // 2}" for i in range(n)], dtype=object)
    perf = np.array([f"p{i % 3}" for i in range(n)], dtype=object)
    return Side(emb, comp, groups, groups.copy(), perf)


def test_choices_never_depend_on_the_held_out_side():
    rng = np.random.default_rng(0)
    train_s, val_s = _side(rng, 40), _side(rng, 20)
    s = Settings(resamples=20)
    a, curves_a = evaluate_method(train_s, val_s, _side(rng, 20), s)
    b, curves_b = evaluate_method(train_s, val_s, _side(rng, 20), s)
    assert a["seed_threshold"] == b["seed_threshold"] == curves_a.threshold
    assert a["probe_C"] == b["probe_C"]
    assert a["verify_auc"] != b["verify_auc"]  # the held-out side did change
