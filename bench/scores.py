"""Scores: rendering time against MIDI parsing, and agreement between two renderers.

    python bench/scores.py [--files 40]

Takes up to ``--files`` Humdrum **kern files from music21's bundled corpus (evenly spaced over
the sorted list) and, for each: (a) renders it to MIDI with verovio, as Harmonixr does, and
parses + tensorizes the result (seconds per file); (b) parses + tensorizes the same MIDI bytes
alone (the MIDI path's cost); (c) renders it with music21's own kern reader and MIDI writer
instead, and counts the MIDI notes of both (tied notes are one MIDI note in each). Prints the
ratio (a)/(b) and the share of files whose two renderings agree on the note count within 5 %
(a check of the rendering by two independent readers of one file; not of pitches or onsets).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=40)
    args = ap.parse_args()
    import warnings

    import music21
    import symusic

    from harmonixr.midi.load import parse_bytes, render_score, tensorize_checked
    from harmonixr.midi.tensorize import TensorConfig

    root = Path(music21.__file__).parent / "corpus"
    files = sorted(root.rglob("*.krn"))
    step = max(1, len(files) // args.files)
    files = files[::step][: args.files]
    cfg = TensorConfig()
    render, parse, agree, errors = [], [], [], []
    for f in files:
        data = f.read_bytes()
        try:
            t0 = time.perf_counter()
            midi = render_score(data, f, ".krn")
            tensorize_checked(parse_bytes(midi, f), cfg, f, min_sounding_s=0.0)
            t1 = time.perf_counter()
            tensorize_checked(parse_bytes(midi, f), cfg, f, min_sounding_s=0.0)
            t2 = time.perf_counter()
        except Exception as exc:  # counted: a file the path refuses
            errors.append(f"{f.name}: {exc}"[:120])
            continue
        render.append(t1 - t0)
        parse.append(t2 - t1)
        ours = symusic.Score.from_midi(midi).note_num()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                m21 = music21.converter.parse(str(f))
                their_midi = music21.midi.translate.streamToMidiFile(m21).writestr()
                theirs = symusic.Score.from_midi(their_midi).note_num()
            except Exception as exc:
                errors.append(f"{f.name} (music21): {exc}"[:120])
                continue
        agree.append(abs(ours - theirs) <= 0.05 * max(ours, theirs, 1))
    print(f"{len(files)} kern files; rendered {len(render)}, refused {len(errors)}")
    for e in errors[:5]:
        print("  ", e)
    r, p = statistics.median(render), statistics.median(parse)
    print(
        f"render + parse: median {1000 * r:.1f} ms; MIDI parse alone: {1000 * p:.1f} ms; "
        f"ratio {r / p:.1f}x"
    )
    print(
        f"note counts within 5 % of music21's own reading: {sum(agree)} of {len(agree)} "
        f"({sum(agree) / max(1, len(agree)):.0%})"
    )


if __name__ == "__main__":
    main()
