"""Mean and spread over several runs' evaluation reports (one per split seed).

    python bench/seeds.py runs/aug-s0 runs/aug-s1 runs/aug-s2 [--split test] [--keys ...]

Reads ``RUN/eval/SPLIT/report.json`` of each run (``harmonixr evaluate`` writes them; reports of
earlier versions are read in today's layout) and prints a markdown table: per method, mean ±
standard deviation over runs (and min–max) of each figure, named ``section.figure``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from harmonixr.evaluate.records import value
from harmonixr.evaluate.tables import read_report

KEYS = [
    "verify.auc",
    "pairs.acc_mixed",
    "attribution.top1",
    "attribution.top3",
    "attribution_probe.top1",
    "retrieval.map",
    "control_performer.auc",
    "control_score_midis.auc",
]


def figure(method: dict, key: str) -> float | None:
    section, _, name = key.partition(".")
    return value((method.get(section) or {}).get(name))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--split", default="test")
    ap.add_argument("--keys", nargs="*", default=KEYS)
    args = ap.parse_args()
    reports = [read_report(r / "eval" / args.split / "report.json") for r in args.runs]
    methods = list(reports[0]["methods"])
    print(f"{len(reports)} runs: " + ", ".join(str(r) for r in args.runs))
    print("| method | " + " | ".join(args.keys) + " |")
    print("|---|" + "---:|" * len(args.keys))
    for m in methods:
        cells = []
        for k in args.keys:
            vals = [figure(r["methods"].get(m, {}), k) for r in reports]
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
