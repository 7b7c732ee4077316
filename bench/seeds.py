"""Mean and spread over several runs' evaluation reports (one per split seed).

    python bench/seeds.py runs/aug-s0 runs/aug-s1 runs/aug-s2 [--split test] [--keys ...]

Reads ``RUN/eval/SPLIT/report.json`` of each run (``harmonixr evaluate`` writes them) and prints
a markdown table: per method, mean ± standard deviation over runs (and min–max) of each metric.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

KEYS = [
    "verify_auc",
    "seed_acc_mixed",
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
    reports = [json.loads((r / "eval" / args.split / "report.json").read_text()) for r in args.runs]
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
