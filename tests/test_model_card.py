"""The model card and the README quote the shipped model's own evaluation report (its test side,
committed beside the card), figure for figure, and the report is of the shipped weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CARD = ROOT / "docs" / "model-card.md"
README = ROOT / "README.md"
REPORT = ROOT / "docs" / "pretrained-eval" / "report.json"
WEIGHTS = ROOT / "src" / "harmonixr" / "pretrained" / "model.safetensors"
# (section, key) of the SiaViT figures the card must quote, with their intervals
QUOTED = (
    ("verify", "auc"), ("verify", "auc_gpe"), ("verify_performance", "auc"),
    ("verify_performance", "auc_gpe"), ("verify_score", "auc"), ("verify_cross-kind", "auc"),
    ("attribution", "top1"), ("retrieval", "map"),
)  # fmt: skip


@pytest.mark.skipif(not WEIGHTS.is_file(), reason="no shipped model in src/harmonixr/pretrained")
def test_card_and_readme_quote_the_shipped_models_own_report():
    from harmonixr.evaluate.records import formatted
    from harmonixr.evaluate.tables import read_report

    report = read_report(REPORT)  # whichever version wrote it, in today's layout
    card, readme = CARD.read_text(), README.read_text()
    assert "TO BE MEASURED" not in card
    model = report["methods"]["SiaViT"]
    for method in ("SiaViT", "logistic regression, 5 histograms"):  # the model and its baseline
        for section, key in QUOTED:
            quoted = formatted(report["methods"][method][section][key])
            assert "[" in quoted and quoted in card, (method, section, key, quoted)
    # README's first figure is the shipped model's own all-pairs AUC, with its interval
    first = formatted(model["verify"]["auc"])
    figures = [line for line in readme.splitlines() if "[0." in line]
    assert figures and first in figures[0], figures[:1]
    # the report is of these weights, measured on its test side only
    from harmonixr._files import sha256_file

    assert report["measured_on"] == "test" and report.get("folds_reported", [0]) == [0]
    assert list(report["model_sha256"].values()) == [sha256_file(WEIGHTS)]
    index = json.loads((WEIGHTS.parent / "index" / "index.json").read_text())
    assert index["model_sha256"] == sha256_file(WEIGHTS)


MEASURE = ROOT / "docs" / "pretrained-eval" / "measure.json"
SPLIT = WEIGHTS.parent / "split.json"


@pytest.mark.skipif(not WEIGHTS.is_file(), reason="no shipped model in src/harmonixr/pretrained")
def test_card_quotes_the_held_out_answers_and_the_index_carries_them():
    from harmonixr._files import sha256_file

    m = json.loads(MEASURE.read_text())
    card = CARD.read_text()
    assert m["model_sha256"] == sha256_file(WEIGHTS)

    from harmonixr.evaluate.records import Estimate, formatted

    def quoted(d: dict) -> str:
        return formatted(d)

    for figure in (
        m["composer"]["answer_accuracy"],
        m["composer"]["called_unknown"],
        m["open_set_all"]["detection_auc"],
        m["open_set_all"]["strangers_caught"],
        m["open_set_music21"]["detection_auc"],
    ):
        assert quoted(figure) in card, quoted(figure)
    # the answer's calibration, its chance level and the answer as shown with known works
    shown = m["composer_as_shown"]
    for figure in (m["composer"]["ece"], shown["answer_accuracy"], shown["ece"]):
        assert quoted(figure) in card, quoted(figure)
    chance = m["composer"]["ece_by_chance"]
    for key in ("expected_if_calibrated", "q95_if_calibrated", "p_value", "calibrated_above_bar"):
        assert f"{chance[key]:.3f}" in card, key
    assert quoted(m["composer"]["ece"]) in README.read_text()
    v = m["verify"]
    for key in ("balanced_accuracy", "ece"):
        assert Estimate.read(v[key]).format().split(" [")[0] in card, key
    # `index info` shows exactly these held-out figures beside the fitted-on ones
    cal = json.loads((WEIGHTS.parent / "index" / "calibration.json").read_text())
    assert cal["report"]["held_out"] == m
    assert cal["report"]["verify"]["measured_on"].startswith("validation")
    # the shipped split: portable paths, a hash for every file, the test side the figures use
    split = json.loads(SPLIT.read_text())
    assert sum(len(split[s]) for s in ("train", "val", "test")) == 3334
    assert all(e["sha256"] and not e["path"].startswith(("/", "..")) for e in split["test"])
    named = m["test_pieces"]
    # the same test side as the report's: the split's, less pieces whose music recurs on an
    # earlier side by today's groups (Run.split)
    from harmonixr.evaluate.tables import read_report

    measured = read_report(REPORT)["fold_sizes"][0]["test"]
    assert sum(named.values()) == measured and len(split["test"]) - 10 <= measured
