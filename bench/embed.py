"""Embedding speed: a file to its vector against the model's forward alone, in the same run.

    python bench/embed.py [--model RUN] [--files 200] [--workers 2] [--repeat 9]
                        [--folder-repeat 3]

(a) A generated 3-minute piece: ``Harmonixr.embed(path)`` end to end (read and parse in a
child process, tensorize, crop, forward, pool) against the encoder's forward alone on the
same crops, already batched as float tensors (the two alternated ``--repeat`` times;
medians, and the ratio of minima, the figure least disturbed by other processes).
Goal: (a) ≤ 1.3× the forward. (b) A folder of ``--files`` generated pieces of
30 s to 3 min: pieces per second with ``--workers`` parser processes, and the same ratio
against the forward alone on all their crops. ``--model`` defaults to an untrained ``small``
SiaViT (speed does not depend on the weights).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from harmonixr.api import Harmonixr
from harmonixr.midi.files import load_files
from harmonixr.midi.load import tensorize
from harmonixr.midi.tensorize import TensorConfig
from harmonixr.model.embed import crop_batches, piece_windows, to_model_input
from harmonixr.train.config import TrainConfig
from harmonixr.train.rundir import Run


def write_piece(path: Path, seconds: float, seed: int) -> Path:
    """Two hands at 120 bpm: a bass note every half second, a melody of eighths and sixteenths,
    with sustain pedal changes every bar."""
    import symusic

    rng = np.random.default_rng(seed)
    score = symusic.Score(480)
    score.tempos.append(symusic.Tempo(0, qpm=120.0))
    track = symusic.Track(name="piano", program=0, is_drum=False)
    tick_s = 960  # ticks per second at 120 bpm
    t, pitch = 0.0, 72
    while t < seconds:
        step = float(rng.choice([0.125, 0.25]))
        pitch = int(np.clip(pitch + rng.integers(-4, 5), 60, 96))
        track.notes.append(
            symusic.Note(round(t * tick_s), round(step * tick_s), pitch, int(rng.integers(50, 100)))
        )
        t += step
    for b in np.arange(0, seconds, 0.5):
        bass = int(rng.integers(36, 55))
        track.notes.append(symusic.Note(round(b * tick_s), tick_s // 2, bass, 70))
    for bar in np.arange(0, seconds, 2.0):
        track.controls.append(symusic.ControlChange(round(bar * tick_s), 64, 100))
        track.controls.append(symusic.ControlChange(round((bar + 1.9) * tick_s), 64, 0))
    score.tracks.append(track)
    score.dump_midi(str(path))
    return path


def default_model() -> Harmonixr:
    """The small preset, untrained (seed 0), 60 s crops: the shipped model's shape."""
    from harmonixr.model.config import preset

    run = Run(Path("."), TrainConfig(crop_seconds=60.0), preset("small"), TensorConfig(), ())
    return Harmonixr(run, run.encoder(initial=True))


@torch.inference_mode()
def forward_alone(hx: Harmonixr, tensors: list[np.ndarray], batch_size: int = 32) -> float:
    """Seconds for the encoder's forward on every crop of ``tensors``, inputs prepared first."""
    crop = hx.run.crop_frames
    windows = piece_windows(tensors, crop, hx.run.hop_frames)
    batches = [
        (to_model_input(torch.from_numpy(x)), torch.from_numpy(valid))
        for x, valid, _ in crop_batches(tensors, windows, crop, batch_size)
    ]
    t0 = time.perf_counter()
    for x, lengths in batches:
        hx.encoder(x, lengths)
    return time.perf_counter() - t0


def interleaved(*fns, repeat: int) -> list[list[float]]:
    """Seconds of each function, run in turn ``repeat`` times, so that a busy machine slows
    them alike."""
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeat):
        for fn, t in zip(fns, times, strict=True):
            t0 = time.perf_counter()
            fn()
            t.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="a run directory (default: untrained small)")
    ap.add_argument("--files", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--folder-repeat", type=int, default=3)
    args = ap.parse_args()
    hx = Harmonixr.load(args.model) if args.model else default_model()
    run = hx.run
    print(
        f"torch threads {torch.get_num_threads()}, crop {run.crop_frames} frames, "
        f"hop {run.hop_frames}, {sum(p.numel() for p in hx.encoder.parameters()):,} parameters"
    )
    with tempfile.TemporaryDirectory() as tmp:
        piece = write_piece(Path(tmp) / "three_minutes.mid", 180.0, 0)
        tensor = tensorize(piece)
        n_crops = len(piece_windows([tensor], run.crop_frames, run.hop_frames))
        hx.embed(piece)  # warm-up: starts the parser's forkserver once
        files, fwds, parses = interleaved(
            lambda: hx.embed(piece),
            lambda: forward_alone(hx, [tensor]),
            lambda: load_files([piece], run.tensor, pool=hx.parsers()),
            repeat=args.repeat,
        )
        t_file, t_fwd = statistics.median(files), statistics.median(fwds)
        print(f"\n3-minute piece ({tensor.shape[0]} frames, {n_crops} crops), {args.repeat} runs")
        print(
            f"  forward alone on its crops   {t_fwd * 1000:8.1f} ms median, "
            f"{min(fwds) * 1000:.1f} min"
        )
        print(
            f"  file → vector (Harmonixr)    {t_file * 1000:8.1f} ms median, "
            f"{min(files) * 1000:.1f} min   {t_file / t_fwd:.2f}× forward "
            f"(minima: {min(files) / min(fwds):.2f}×)"
        )
        print(
            f"    of which parsing in the child process {statistics.median(parses) * 1000:.1f} ms "
            f"median, {min(parses) * 1000:.1f} min"
        )

        folder = Path(tmp) / "folder"
        folder.mkdir()
        rng = np.random.default_rng(1)
        lengths = rng.uniform(30, 180, args.files)
        paths = [write_piece(folder / f"p{i:04d}.mid", s, i) for i, s in enumerate(lengths)]
        tensors = [tensorize(p) for p in paths]
        results = []

        def files_to_vectors() -> None:
            results.append(hx.embed(paths, workers=args.workers, skip_errors=True))

        runs, fwds = interleaved(
            files_to_vectors, lambda: forward_alone(hx, tensors), repeat=args.folder_repeat
        )
        assert all(len(r.paths) == len(paths) and not r.errors for r in results)
        t_folder, t_fwd_all = statistics.median(runs), statistics.median(fwds)
        print(
            f"\nfolder of {len(paths)} pieces (30 s – 3 min, {lengths.sum() / 3600:.1f} h), "
            f"{args.workers} parser workers, {args.folder_repeat} runs"
        )
        print(f"  forward alone on their crops {t_fwd_all:8.1f} s median")
        print(
            f"  files → vectors              {t_folder:8.1f} s median   "
            f"{t_folder / t_fwd_all:.2f}× forward, {len(paths) / t_folder:.1f} pieces/s"
        )


if __name__ == "__main__":
    main()
