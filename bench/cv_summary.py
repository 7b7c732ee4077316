"""Print the headline rows of cross-validation reports (``evaluate --folds``) as markdown, for
README and docs/experiments.md: the model, the best baseline chosen on validation, and the gap.
Reports of any version are read in today's layout (``evaluate.tables.read_report``).

    python bench/cv_summary.py runs/cv-group/report.json [runs/cv-unseen/report.json ...]
"""

from __future__ import annotations

import sys

from harmonixr.evaluate.records import formatted, value
from harmonixr.evaluate.tables import MODEL, read_report


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
    return name, report["methods"][name].get(section, {})


def main(paths: list[str]) -> None:
    for path in paths:
        r = read_report(path)
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
                f"{formatted(m.get('auc'))} | {formatted(m.get('auc_gpe'))} | {name} | "
                f"{formatted(b.get('auc'))} | {formatted(b.get('auc_gpe'))} | "
                f"{int(m.get('pairs', 0))} ({int(m.get('same', 0))}) |"
            )
        model = r["methods"][MODEL]
        a = model.get("attribution")
        if a:
            name, _ = best_baseline(r, "verify")
            b = r["methods"].get(name, {}).get("attribution", {})
            print(
                f"\nattribution (≥ {r.get('min_works', 5)} training works): SiaViT top-1 "
                f"{formatted(a.get('top1'))}, top-3 {formatted(a.get('top3'))}, on performances "
                f"{formatted(a.get('top1_performance'))} ({int(a['pieces'])} pieces); {name}: "
                f"top-1 {formatted(b.get('top1'))}"
            )
        pr = model.get("attribution_probe")
        if pr:
            print(
                f"attribution by a probe on the embeddings (C on validation): top-1 "
                f"{formatted(pr.get('top1'))}, top-3 {formatted(pr.get('top3'))}, on "
                f"performances {formatted(pr.get('top1_performance'))}"
            )
        rt = model["retrieval"]
        print(
            f"retrieval: mAP {formatted(rt.get('map'))}, same-work recall@1 "
            f"{formatted(rt.get('work_r1'))}"
        )
        for name, m in r["methods"].items():
            for target, s in (m.get("source_probe") or {}).items():
                print(
                    f"source probe {name} → {target}: balanced accuracy "
                    f"{s['balanced_accuracy']:.3f} (chance {s['chance']:.3f}, {s['pieces']} pieces)"
                )
        t = r.get("timing", {})
        tr = sum(v.get("train_seconds", 0) for v in t.values())
        em = sum(v.get("embed_seconds", 0) for v in t.values())
        print(
            f"wall time: training {tr / 60:.1f} min, embedding {em / 60:.1f} min, "
            f"report {(value(r.get('seconds')) or 0) / 60:.1f} min"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
