"""Print the headline rows of cross-validation reports (``evaluate --folds``) as markdown, for
README and docs/experiments.md: the model, the best baseline chosen on validation, and the gap.

    python bench/cv_summary.py runs/cv-group/report.json [runs/cv-unseen/report.json ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

MODEL = "SiaViT"


def fmt(m: dict, key: str) -> str:
    v = m.get(key)
    if v is None:
        return "—"
    lo, hi = m.get(f"{key}_lo"), m.get(f"{key}_hi")
    return f"{v:.3f} [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else f"{v:.3f}"


def best_baseline(report: dict, section: str) -> tuple[str, dict]:
    """The baseline whose pooled validation AUC (mean over folds) is highest: chosen without
    looking at the test sides."""
    scored = []
    for name, m in report["methods"].items():
        if name == MODEL:
            continue
        val = [v for v in m.get("val_auc_per_fold", []) if v is not None]
        scored.append((sum(val) / len(val) if val else -1.0, name))
    if not scored:
        return "—", {}
    name = max(scored)[1]
    return name, report["methods"][name][section]


def main(paths: list[str]) -> None:
    for path in paths:
        r = json.loads(Path(path).read_text())
        p = r["plan"]
        print(
            f"\n### {path}: {p['folds']} folds, {p['mode']}, seed {p['seed']}, "
            f"folds {r['folds_reported']} on their {r.get('measured_on', 'test')} sides\n"
        )
        print(
            "| pairs | SiaViT AUC | SiaViT AUC (unit pairs equal) | best baseline (by val) | "
            "its AUC | its AUC (unit pairs equal) | pairs (same) |"
        )
        print("|---|---|---|---|---|---|---|")
        for sec in ("verify", "verify_performance", "verify_score", "verify_cross-kind"):
            m = r["methods"][MODEL][sec]
            name, b = best_baseline(r, sec)
            print(
                f"| {sec.removeprefix('verify_') if sec != 'verify' else 'all'} | "
                f"{fmt(m, 'auc')} | {fmt(m, 'auc_gpe')} | {name} | {fmt(b, 'auc')} | "
                f"{fmt(b, 'auc_gpe')} | {int(m.get('pairs', 0))} ({int(m.get('same', 0))}) |"
            )
        a = r["methods"][MODEL].get("attribution")
        if a:
            name, _ = best_baseline(r, "verify")
            b = r["methods"].get(name, {}).get("attribution", {})
            print(
                f"\nattribution (≥ 5 training works): SiaViT top-1 {fmt(a, 'top1')}, top-3 "
                f"{fmt(a, 'top3')}, on performances {fmt(a, 'top1_performance')} "
                f"({int(a['pieces'])} pieces); {name}: top-1 {fmt(b, 'top1')}"
            )
        pr = r["methods"][MODEL].get("attribution_probe")
        if pr:
            print(
                f"attribution by a probe on the embeddings (C on validation): top-1 "
                f"{fmt(pr, 'top1')}, top-3 {fmt(pr, 'top3')}, on performances "
                f"{fmt(pr, 'top1_performance')}"
            )
        rt = r["methods"][MODEL]["retrieval"]
        print(f"retrieval: mAP {fmt(rt, 'map')}, same-work recall@1 {fmt(rt, 'work_r1')}")
        for name, probes in r.get("source_probe", {}).items():
            for target, s in probes.items():
                print(
                    f"source probe {name} → {target}: balanced accuracy "
                    f"{s['balanced_accuracy']:.3f} (chance {s['chance']:.3f}, {s['pieces']} pieces)"
                )
        t = r.get("timing", {})
        tr = sum(v.get("train_seconds", 0) for v in t.values())
        em = sum(v.get("embed_seconds", 0) for v in t.values())
        print(
            f"wall time: training {tr / 60:.1f} min, embedding {em / 60:.1f} min, "
            f"report {r.get('seconds', 0) / 60:.1f} min"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
