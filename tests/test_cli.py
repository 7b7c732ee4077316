"""The command line: summaries, info, and errors as one readable line with a non-zero exit."""

from __future__ import annotations

import json
import subprocess
import sys

from midi_factory import synthetic_corpus


def hx(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "harmonixr.cli", *args], capture_output=True, text=True, timeout=300
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_preprocess_and_info(tmp_path):
    synthetic_corpus(tmp_path / "midi", n_per=3, seconds=5)
    (tmp_path / "midi" / "Low" / "broken.mid").write_bytes(b"MThd\x00\x00")
    summary = json.loads(
        hx(
            "preprocess",
            str(tmp_path / "midi"),
            "--out",
            str(tmp_path / "c"),
            "--workers",
            "1",
            "--json",
        ).stdout
    )
    assert (summary["seen"], summary["ok"], summary["skipped"]) == (7, 6, {"truncated": 1})
    stats = json.loads(hx("info", str(tmp_path / "c"), "--json").stdout)
    assert {c["composer"]: c["pieces"] for c in stats["composers"]} == {"Low": 3, "High": 3}
    text = hx("info", str(tmp_path / "c")).stdout
    assert "Low" in text and "truncated" in text


def test_errors_are_one_line(tmp_path):
    for args in (
        ["info", str(tmp_path)],
        ["preprocess", str(tmp_path / "nope"), "--out", str(tmp_path / "c")],
        ["train", "--data", str(tmp_path), "--out", str(tmp_path / "r")],
    ):
        proc = hx(*args, check=False)
        assert proc.returncode == 1
        assert "Traceback" not in proc.stderr
        assert proc.stderr.strip().startswith("error:") and proc.stderr.strip().count("\n") == 0
