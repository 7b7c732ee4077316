"""``harmonixr evaluate`` on a tiny run over a generated corpus, and the protocols' honesty."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from midi_factory import synthetic_corpus
from tiny_runs import train_tiny

from harmonixr.data.cache import preprocess
from harmonixr.evaluate.baselines import LR
from harmonixr.evaluate.protocols import Fold, Settings, evaluate_folds
from harmonixr.evaluate.records import Estimate, Side
from harmonixr.evaluate.report import evaluate_run
from harmonixr.evaluate.tables import MODEL, UNTRAINED

# (section, figure) of every method's report, each an estimate
FIGURES = {
    ("verify", "auc"), ("verify", "auc_gpe"), ("verify", "eer"), ("verify", "tpr_at_1fpr"),
    ("verify", "frr_at_far5"), ("pairs", "acc_mixed"), ("pairs", "acc_same"),
    ("pairs", "acc_different"), ("attribution", "top1"), ("attribution", "top3"),
    ("attribution", "top5"), ("attribution", "balanced_acc"), ("attribution", "macro_f1"),
    ("attribution_probe", "top1"), ("retrieval", "map"), ("retrieval", "p10"),
    ("retrieval", "work_r1"), ("control_performer", "auc"),
    ("control_performer", "same_performer_share"), ("control_score_midis", "auc"),
}  # fmt: skip
WITH_INTERVALS = {
    ("verify", "auc"), ("verify", "auc_gpe"), ("verify", "eer"), ("attribution", "top1"),
    ("attribution_probe", "top1"), ("retrieval", "map"), ("control_performer", "auc"),
    ("control_score_midis", "auc"),
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
    for name, m in methods.items():
        for section, key in FIGURES:
            e = m[section][key]
            assert set(e) == {"value", "lo", "hi", "weighting", "resamples"}, (name, key)
            assert e["value"] is not None and math.isfinite(e["value"]), (name, section, key)
            if (section, key) in WITH_INTERVALS:
                assert e["lo"] <= e["value"] <= e["hi"], (name, section, key)
                assert e["resamples"] == 50
        assert m["verify"]["auc"]["weighting"] == "pairs"
        assert m["verify"]["auc_gpe"]["weighting"] == "unit pairs"
        assert len(m["val_auc_per_fold"]) == 1 and m["val_auc_per_fold"][0] is not None
        assert len(m["pairs"]["thresholds"]) == 1
    m = methods[MODEL]
    assert len(m["attribution_probe"]["C_per_fold"]) == 1
    assert 0 <= m["control_performer"]["same_performer_share"]["value"] <= 1
    # one score per held-out work, none of them a performance
    sizes, units = report["fold_sizes"][0], report["fold_units"][0]
    assert sizes["scores"] == units["test"] > 0
    assert set(report["choices"][LR][0]) == {"C", "val_auc", "scored_by"}
    with pytest.raises(ValueError, match="no score MIDIs"):
        evaluate_run(run, scores=root / "cache", resamples=10, baselines=False)
    out = run / "eval" / "test"
    for name in ("report.json", "report.md", "roc.png", "det.png", "distances.png"):
        assert (out / name).stat().st_size > 0
    md = (out / "report.md").read_text()
    assert MODEL in md and LR in md and "FRR@FAR 5%" in md
    assert Estimate.read(m["verify"]["auc"]).format() in md  # with its interval
    assert json.loads((out / "report.json").read_text())["methods"][MODEL] == m
    # the synthetic composers are learnable: the trained model separates them
    assert m["verify"]["auc"]["value"] > 0.8


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
    return Side.of(emb, comp, groups, performer=perf)


def test_choices_never_depend_on_the_held_out_side():
    rng = np.random.default_rng(0)
    train_s, val_s = _side(rng, 40), _side(rng, 20)
    s = Settings(resamples=20)
    a, curves_a = evaluate_folds([Fold(train_s, val_s, _side(rng, 20))], s)
    b, curves_b = evaluate_folds([Fold(train_s, val_s, _side(rng, 20))], s)
    assert a["pairs"]["thresholds"] == b["pairs"]["thresholds"] == [curves_a.threshold]
    assert a["attribution_probe"]["C_per_fold"] == b["attribution_probe"]["C_per_fold"]
    assert a["verify"]["auc"] != b["verify"]["auc"]  # the held-out side did change


OLD_RUN_REPORT = {  # a run's report.json as written before sections and estimates
    "run": "r",
    "split": "test",
    "held_side": "test",
    "pieces": {"train": 10, "val": 4, "held": 5},
    "groups": {"train": 6, "val": 3, "held": 3},
    "crop_frames": 8,
    "resamples": 10,
    "choices": {LR: {"C": 0.1, "val_auc": 0.7, "scored_by": "p·q"}},
    "methods": {
        MODEL: {
            "verify_auc": 0.8,
            "verify_auc_lo": 0.7,
            "verify_auc_hi": 0.9,
            "verify_pairs": 100.0,
            "verify_eer": 0.25,
            "seed_threshold": 0.3,
            "seed_acc_mixed": 0.71,
            "seed_acc_same": 0.62,
            "seed_pairs_mixed": 1000.0,
            "pairs_acc_different": 0.83,
            "attr_top1": 0.5,
            "attr_top1_lo": 0.4,
            "attr_top1_hi": 0.6,
            "attr_composers": 7.0,
            "probe_C": 0.01,
            "conf_same_performer_share": 0.2,
            "conf_score_auc": 0.77,
            "val_verify_auc": 0.66,
        }
    },
}
OLD_CV_REPORT = {  # a cross-validation's report.json of the same time
    "plan": {"folds": 2, "seed": 0, "mode": "group", "val_fraction": 0.2},
    "folds_reported": [0, 1],
    "pieces": 40,
    "units": 20,
    "composers": 2,
    "resamples": 300,
    "measured_on": "test",
    "methods": {
        MODEL: {
            "verify": {"pairs": 300.0, "same": 90.0, "auc": 0.8119, "auc_lo": 0.74,
                       "auc_hi": 0.86, "auc_gpe": 0.8123, "auc_gpe_lo": 0.77,
                       "auc_gpe_hi": 0.84, "eer": 0.26},
            "val_auc_per_fold": [0.76, None],
            "attribution": {"pieces": 318.0, "top1": 0.25, "top1_lo": 0.2, "top1_hi": 0.31,
                            "candidates_per_fold": [41, 40]},
            "retrieval": {"map": 0.3, "map_lo": 0.28, "map_hi": 0.32, "work_queries": 9.0},
        }
    },
    "source_probe": {MODEL: {"kind": {"balanced_accuracy": 0.74, "chance": 0.5,
                                      "classes": ["p", "s"], "pieces": 40}}},
}  # fmt: skip


def test_reports_of_earlier_versions_read_in_todays_layout(tmp_path):
    from harmonixr.evaluate.tables import read_report, report_markdown

    (tmp_path / "run.json").write_text(json.dumps(OLD_RUN_REPORT))
    r = read_report(tmp_path / "run.json")
    m = r["methods"][MODEL]
    assert m["verify"]["auc"] == {
        "value": 0.8, "lo": 0.7, "hi": 0.9, "weighting": "pairs", "resamples": 10
    }  # fmt: skip
    assert Estimate.read(m["verify"]["eer"]) == Estimate(0.25, weighting="pairs")
    assert m["verify"]["pairs"] == 100.0
    # the pair-set protocol under its earliest names (seed_*), and today's
    assert m["pairs"]["thresholds"] == [0.3] and m["pairs"]["n_mixed"] == 1000.0
    assert [m["pairs"][f"acc_{s}"]["value"] for s in ("mixed", "same", "different")] == [
        0.71, 0.62, 0.83
    ]  # fmt: skip
    assert Estimate.read(m["attribution"]["top1"]).format() == "0.500 [0.400, 0.600]"
    assert m["attribution"]["candidates_per_fold"] == [7.0]
    assert m["attribution_probe"]["C_per_fold"] == [0.01]
    assert m["control_performer"]["same_performer_share"]["value"] == 0.2
    assert m["control_score_midis"]["auc"]["value"] == 0.77
    assert m["val_auc_per_fold"] == [0.66]
    assert r["fold_sizes"] == [{"train": 10, "val": 4, "test": 5}]
    assert r["choices"][LR] == [OLD_RUN_REPORT["choices"][LR]]
    md = report_markdown(OLD_RUN_REPORT)
    row = next(line for line in md.splitlines() if "acc mixed" not in line and "0.710" in line)
    assert "0.620" in row and "0.830" in row
    # a cross-validation's: the same layout, the same formatter
    (tmp_path / "cv.json").write_text(json.dumps(OLD_CV_REPORT))
    cv = read_report(tmp_path / "cv.json")
    v = cv["methods"][MODEL]["verify"]
    assert Estimate.read(v["auc_gpe"]) == Estimate(0.8123, 0.77, 0.84, "unit pairs", 300)
    assert cv["methods"][MODEL]["source_probe"]["kind"]["chance"] == 0.5
    assert cv["methods"][MODEL]["retrieval"]["map"]["lo"] == 0.28
    md = report_markdown(OLD_CV_REPORT)
    assert "0.812 [0.740, 0.860]" in md and md.startswith("# Cross-validation: 2 folds")
    # an estimate's older forms: {value, lo, hi}, and a value with [lo, hi] beside it
    assert Estimate.read({"value": 0.5, "lo": 0.4, "hi": 0.6}).format() == "0.500 [0.400, 0.600]"
    assert Estimate.read(0.5, [0.4, 0.6]) == Estimate(0.5, 0.4, 0.6)
    assert Estimate.read(0.5, [None, None]).format() == "0.500"
    assert Estimate(float("nan"), 0.1, 0.2).format() == "–"


def test_report_pictures_use_the_project_style_without_importing_viz(tmp_path):
    import subprocess
    import sys

    code = f"""
import sys
import numpy as np
from PIL import Image
from harmonixr._plotstyle import DPI
from harmonixr.evaluate.protocols import Curves
from harmonixr.evaluate.report import plots
from harmonixr.evaluate.tables import MODEL

rng = np.random.default_rng(0)
y = rng.random(200) < 0.5
d = rng.random(200) + np.where(y, 0.0, 0.3)
out = {str(tmp_path)!r}
plots({{MODEL: Curves(d, y, 0.5)}}, __import__("pathlib").Path(out))
sizes = {{n: Image.open(f"{{out}}/{{n}}.png").size for n in ("roc", "det", "distances")}}
assert sizes == {{"roc": (6 * DPI, 6 * DPI), "det": (6 * DPI, 6 * DPI),
                 "distances": (7 * DPI, 4 * DPI)}}, sizes
assert not any(m.startswith("harmonixr.viz") for m in sys.modules), "evaluate imported viz"
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
