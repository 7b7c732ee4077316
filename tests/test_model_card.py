"""The model card quotes the evaluation report committed beside it, figure for figure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CARD = ROOT / "docs" / "model-card.md"
REPORT = ROOT / "docs" / "pretrained-eval" / "report.json"
WEIGHTS = ROOT / "src" / "harmonixr" / "pretrained" / "model.safetensors"
KEYS = (
    "verify_auc", "verify_eer", "verify_tpr_at_1fpr", "attr_top1", "attr_top3", "attr_top5",
    "attr_macro_f1", "retr_map", "retr_p10", "conf_diff_performer_auc", "conf_score_auc",
    "seed_acc_mixed",
)  # fmt: skip


@pytest.mark.skipif(not WEIGHTS.is_file(), reason="no shipped model in src/harmonixr/pretrained")
def test_card_quotes_the_committed_report_and_the_shipped_weights():
    report = json.loads(REPORT.read_text())
    card = CARD.read_text()
    assert "TO BE MEASURED" not in card
    model = report["methods"]["SiaViT"]
    for key in KEYS:
        assert f"{model[key]:.3f}" in card, key
    for key in ("verify_auc", "attr_top1", "conf_score_auc"):
        assert f"[{model[key + '_lo']:.2f}, {model[key + '_hi']:.2f}]" in card, key
    # the report is the shipped weights' (same step, and the index was built from them)
    from harmonixr.model.io import weights_info

    assert report["weights"]["step"] == weights_info(WEIGHTS)["step"]
    index = json.loads((WEIGHTS.parent / "index" / "index.json").read_text())
    from harmonixr.search.runs import file_sha256

    assert index["model_sha256"] == file_sha256(WEIGHTS)
