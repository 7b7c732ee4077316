"""midi/load.py: the length limit in seconds for any Score, the child-process loader from a
script without a main guard, and parsing an upload's bytes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from midi_factory import make_score, write_score

from harmonixr.midi.load import MidiError, parse_bytes_job, tensorize, tensorize_checked
from harmonixr.midi.tensorize import TensorConfig, Tensorized

SRC = Path(__file__).resolve().parents[1] / "src"
TESTS = Path(__file__).resolve().parent


def test_length_limit_is_in_seconds_for_a_score_in_ticks():
    # 200,000 ticks at 480 per quarter and 120 bpm: 208.3 s (+ the last note's 0.5 s)
    score = make_score([(0, 480, 60, 90), (200_000, 480, 64, 90)])
    assert "tick" in str(score.ttype).lower() and score.end() == 200_480
    result = tensorize_checked(score, TensorConfig(), max_seconds=300, min_sounding_s=0.0)
    assert result.duration_s == pytest.approx(208.85)
    with pytest.raises(MidiError) as err:
        tensorize_checked(score, TensorConfig(), max_seconds=200)
    assert err.value.reason == "too_long" and err.value.detail == "209 s > 200 s"


def test_safe_load_and_preprocess_work_in_a_script_without_a_main_guard(tmp_path):
    (tmp_path / "in" / "Bach").mkdir(parents=True)
    script = tmp_path / "noguard.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys
            sys.path[:0] = [{str(SRC)!r}, {str(TESTS)!r}]
            from pathlib import Path
            from midi_factory import write_score
            from harmonixr import safe_load
            from harmonixr.data.cache import preprocess
            out = Path({str(tmp_path / "in" / "Bach" / "a.mid")!r})
            path = write_score(out, [(0, 480 * 12, 60, 90)])  # one note, 6 s
            print(safe_load(path).tensor.shape)
            print(preprocess(path.parent.parent, {str(tmp_path / "cache")!r}, workers=1).ok)
            """
        )
    )
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[:2] == ["(120, 12, 6)", "1"]


def test_parse_bytes_job_reads_an_upload_without_a_file(tmp_path):
    path = write_score(tmp_path / "a.mid", [(0, 480 * 6, 60, 90), (480 * 6, 480 * 6, 64, 90)])
    data = path.read_bytes()
    got = parse_bytes_job((data, "upload.mid", TensorConfig(), 3600.0, 1 << 20))
    assert isinstance(got, Tensorized)
    np.testing.assert_array_equal(got.tensor, tensorize(path))
    assert parse_bytes_job((b"hello", "t.mid", TensorConfig(), 3600.0, 1 << 20)) == (
        "not_midi",
        "does not start with the MIDI header 'MThd'",
    )
    reason, detail = parse_bytes_job((data[:30], "t.mid", TensorConfig(), 3600.0, 1 << 20))
    assert reason == "truncated" and "cut short" in detail


def test_too_short_is_measured_in_sounding_seconds():
    cfg = TensorConfig()
    # a 3 s note, 10 s of silence, a 1 s note: 14 s long but about 4 s of sound
    short = make_score([(0, 2880, 60, 90), (12480, 960, 62, 90)])
    with pytest.raises(MidiError) as err:
        tensorize_checked(short, cfg)
    assert err.value.reason == "too_short" and err.value.detail.startswith("4.")
    # the same with a 3 s second note: about 6 s of sound, enough
    enough = make_score([(0, 2880, 60, 90), (12480, 2880, 64, 90)])
    assert tensorize_checked(enough, cfg).notes == 2
    assert tensorize_checked(short, cfg, min_sounding_s=0.0).notes == 2
