"""Mean and spread over several runs' evaluation reports (one per split seed).

    python bench/seeds.py runs/aug-s0 runs/aug-s1 runs/aug-s2 [--split test] [--keys ...]

Reads ``RUN/eval/SPLIT/report.json`` of each run (``harmonixr evaluate`` writes them; earlier
reports' key names are read as today's) and prints a markdown table: per method, mean ± standard
deviation over runs (and min–max) of each metric.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from harmonixr.evaluate.protocols import current_keys
from harmonixr.evaluate.report import read_report

KEYS = [
    "verify_auc",
    "pairs_acc_mixed",
    "attr_top1",
    "attr_top3",
    "probe_top1",
    "retr_map",
    "conf_performer_auc",
    "conf_score_auc",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--split", default="test")
    ap.add_argument("--keys", nargs="*", default=KEYS)
    args = ap.parse_args()
    args.keys = list(current_keys(dict.fromkeys(args.keys)))  # earlier names accepted too
    reports = [read_report(r / "eval" / args.split / "report.json") for r in args.runs]
    methods = list(reports[0]["methods"])
    print(f"{len(reports)} runs: " + ", ".join(str(r) for r in args.runs))
    print("| method | " + " | ".join(args.keys) + " |")
    print("|---|" + "---:|" * len(args.keys))
    for m in methods:
        cells = []
        for k in args.keys:
            vals = [r["methods"].get(m, {}).get(k) for r in reports]
            vals = np.array([v for v in vals if v is not None], float)
            if vals.size == 0:
                cells.append("–")
            else:
                cells.append(
                    f"{vals.mean():.3f} ± {vals.std(ddof=1) if vals.size > 1 else 0:.3f} "
                    f"({vals.min():.2f}–{vals.max():.2f}"
                    + (f", n={vals.size}" if vals.size < len(reports) else "")
                    + ")"
                )
        print(f"| {m} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
