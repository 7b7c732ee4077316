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
    "verify_pairs", "pairs_threshold", "pairs_acc_mixed", "pairs_acc_same", "pairs_acc_different",
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
    assert a["pairs_threshold"] == b["pairs_threshold"] == curves_a.threshold
    assert a["probe_C"] == b["probe_C"]
    assert a["verify_auc"] != b["verify_auc"]  # the held-out side did change


def test_reports_written_before_the_rename_read_with_todays_keys(tmp_path):
    from harmonixr.evaluate.protocols import current_keys
    from harmonixr.evaluate.report import read_report, report_markdown

    old = {
        "verify_auc": 0.8,
        "seed_threshold": 0.3,
        "seed_acc_mixed": 0.71,
        "seed_acc_same": 0.62,
        "seed_acc_different": 0.83,
        "seed_pairs_mixed": 1000.0,
    }
    report = {
        "run": "r",
        "split": "test",
        "held_side": "test",
        "pieces": {"train": 1, "val": 1, "held": 1},
        "groups": {"held": 1},
        "crop_frames": 8,
        "resamples": 10,
        "choices": {},
        "methods": {MODEL: old},
    }
    (tmp_path / "report.json").write_text(json.dumps(report))
    assert read_report(tmp_path / "report.json")["methods"][MODEL] == {
        "verify_auc": 0.8,
        "pairs_threshold": 0.3,
        "pairs_acc_mixed": 0.71,
        "pairs_acc_same": 0.62,
        "pairs_acc_different": 0.83,
        "pairs_n_mixed": 1000.0,
    }
    row = next(line for line in report_markdown(report).splitlines() if MODEL in line)
    assert "0.710" in row and "0.620" in row and "0.830" in row
    # a key under both names keeps today's value
    assert current_keys({"seed_acc_mixed": 0.1, "pairs_acc_mixed": 0.2}) == {"pairs_acc_mixed": 0.2}


def test_report_pictures_use_the_project_style_without_importing_viz(tmp_path):
    import subprocess
    import sys

    code = f"""
import sys
import numpy as np
from PIL import Image
from harmonixr._plotstyle import DPI
from harmonixr.evaluate.protocols import Curves
from harmonixr.evaluate.report import MODEL, _plots

rng = np.random.default_rng(0)
y = rng.random(200) < 0.5
d = rng.random(200) + np.where(y, 0.0, 0.3)
out = {str(tmp_path)!r}
_plots({{MODEL: Curves(d, y, 0.5)}}, __import__("pathlib").Path(out))
sizes = {{n: Image.open(f"{{out}}/{{n}}.png").size for n in ("roc", "det", "distances")}}
assert sizes == {{"roc": (6 * DPI, 6 * DPI), "det": (6 * DPI, 6 * DPI),
                 "distances": (7 * DPI, 4 * DPI)}}, sizes
assert not any(m.startswith("harmonixr.viz") for m in sys.modules), "evaluate imported viz"
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
