"""Torch threads for answering one question: ``Harmonixr.attribute_embedding`` after
``embed`` of a generated 3-minute piece, with 1 and with 2 threads, alternated in blocks.

    python bench/threads.py [--model RUN] [--repeats 30] [--busy]

Prints the median and p90 per thread count and the ratio 2 threads / 1 thread. ``--busy``
runs a CPU-bound process beside it (another request, another program), as a shared server has.
The machine's load average is printed: other processes change the figures.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from embed import write_piece  # noqa: E402  (bench/embed.py: a generated piano piece)


def _burn(stop) -> None:  # a busy neighbour
    x = 0
    while not stop.is_set():
        x = (x * 7 + 1) % 1_000_003


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--busy", action="store_true")
    args = ap.parse_args()
    import tempfile

    import torch

    from harmonixr import Harmonixr

    hx = Harmonixr.load(args.model, threads=None)
    with tempfile.TemporaryDirectory() as tmp:
        path = write_piece(Path(tmp) / "piece.mid", seconds=180, seed=0)
        (tensor,) = hx._tensors([path])
    stop = mp.Event()
    burner = mp.Process(target=_burn, args=(stop,), daemon=True) if args.busy else None
    if burner:
        burner.start()
    print(f"load average before: {os.getloadavg()[0]:.2f}; busy neighbour: {bool(burner)}")
    times: dict[int, list[float]] = {1: [], 2: []}
    try:
        for _ in range(args.repeats // 5):
            for n in (1, 2):
                torch.set_num_threads(n)
                hx.attribute_embedding(hx.embed(tensor))  # warm-up after a change
                for _ in range(5):
                    t0 = time.perf_counter()
                    hx.attribute_embedding(hx.embed(tensor))
                    times[n].append(time.perf_counter() - t0)
    finally:
        stop.set()
        if burner:
            burner.join()
    for n, ts in times.items():
        ts.sort()
        p90 = ts[int(0.9 * (len(ts) - 1))]
        print(
            f"{n} thread(s): median {1000 * statistics.median(ts):.0f} ms, p90 {1000 * p90:.0f} ms"
        )
    ratio = statistics.median(times[2]) / statistics.median(times[1])
    print(f"2 threads / 1 thread: {ratio:.2f}x; load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
