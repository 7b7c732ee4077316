"""Preprocessing speed and memory, against baselines measured in the same run.

    python bench/preprocess.py [FOLDER] [--sample N] [--workers 2]

FOLDER is a corpus folder (e.g. a clone of ASAP, see README "Getting the data"; its score MIDIs
are included), by default the built-in corpus. Per file (medians): (a) symusic's bare parse,
(b) Harmonixr's parse + tensorize, (c) pretty_midi (PrettyMIDI + get_piano_roll(fs=20) folded
to 12×6). Then (d) `harmonixr preprocess` end to end into an empty cache, its peak memory summed
over its process tree.
Goals: (c)/(b) ≥ 30, (b)/(a) ≤ 5, Σ(c)/(d) ≥ 10, peak < 1 GiB.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings

import numpy as np

from harmonixr.midi.corpora import read_corpus
from harmonixr.midi.load import load_tensor


def _time(fn, path) -> float:
    t0 = time.perf_counter()
    fn(path)
    return time.perf_counter() - t0


def bare_symusic(path: str) -> None:
    import symusic

    symusic.Score(path, ttype="second")


def ours(path: str) -> None:
    load_tensor(path)


def pretty_midi_roll(path: str) -> np.ndarray:
    import pretty_midi

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = pretty_midi.PrettyMIDI(path)
    roll = pm.get_piano_roll(fs=20)  # (128, T), 50 ms columns
    return roll[29:101].reshape(6, 12, -1).transpose(2, 1, 0)  # (T, 12, 6)


def _peak_rss(proc: subprocess.Popen, stop: threading.Event, out: list[int]) -> None:
    import psutil

    root = psutil.Process(proc.pid)
    peak = 0
    while not stop.is_set():
        try:
            procs = [root, *root.children(recursive=True)]
            total = 0
            for p in procs:
                with contextlib.suppress(psutil.Error):
                    total += p.memory_info().rss
            peak = max(peak, total)
        except psutil.Error:
            break
        time.sleep(0.02)
    out.append(peak)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", nargs="?", default="builtin", help="corpus folder or 'builtin'")
    ap.add_argument("--sample", type=int, default=0, help="time (a)-(c) on N files (0: all)")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()

    listing = read_corpus(args.folder, include_scores=True)
    paths = [p.path for p in listing.pieces]
    sample = paths if not args.sample else paths[:: max(1, len(paths) // args.sample)]
    print(f"corpus: {args.folder} ({listing.format}), {len(paths)} files; timing {len(sample)}")

    for fn in (bare_symusic, ours, pretty_midi_roll):  # warm imports and caches
        fn(sample[0])
    a = [_time(bare_symusic, p) for p in sample]
    b = [_time(ours, p) for p in sample]
    c = [_time(pretty_midi_roll, p) for p in sample]
    ma, mb, mc = (statistics.median(x) * 1000 for x in (a, b, c))
    print(f"(a) symusic bare parse         median {ma:8.2f} ms/file")
    print(f"(b) harmonixr parse+tensorize  median {mb:8.2f} ms/file")
    print(f"(c) pretty_midi piano roll     median {mc:8.2f} ms/file  (sum {sum(c):.1f} s)")

    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "-m",
            "harmonixr.cli",
            "preprocess",
            args.folder,
            "--out",
            f"{tmp}/cache",
            "--workers",
            str(args.workers),
            "--scores",
            "--json",
        ]
        stop, peak = threading.Event(), []
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        watcher = threading.Thread(target=_peak_rss, args=(proc, stop, peak))
        watcher.start()
        stdout, stderr = proc.communicate()
        d = time.perf_counter() - t0
        stop.set()
        watcher.join()
        if proc.returncode:
            sys.exit(f"preprocess failed: {stderr.strip()}")
    pm_total = sum(c) * len(paths) / len(sample)
    print(
        f"(d) harmonixr preprocess, {args.workers} workers, empty cache: {d:.1f} s wall "
        f"for {len(paths)} files, peak RSS {peak[0] / 2**20:.0f} MiB (process tree)"
    )
    print()
    print(f"speed-up over pretty_midi per file  (c)/(b) = {mc / mb:6.1f}x   goal >= 30")
    print(f"cost over bare symusic parse       (b)/(a) = {mb / ma:6.2f}x   goal <= 5")
    print(f"end-to-end over pretty_midi pass  sum(c)/(d) = {pm_total / d:6.1f}x   goal >= 10")
    print(f"peak memory                                = {peak[0] / 2**30:6.2f} GiB goal < 1")


if __name__ == "__main__":
    main()
