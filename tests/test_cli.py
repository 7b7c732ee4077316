"""The command line: summaries, info, and errors as one readable line with a non-zero exit."""

from __future__ import annotations

import json
import re
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


# the commands README and docs/architecture.md document: each must exist and have its help
ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
PLANNED = ("preprocess", "info", "train", "evaluate", "embed", "index", "attribute", "similar")
PLANNED += ("viz", "serve", "verify", "timeline")


def test_every_help_renders_what_exists():
    import typer
    from typer.testing import CliRunner

    from harmonixr.cli import app

    group = typer.main.get_command(app)
    commands = sorted(group.commands)
    assert {"preprocess", "info", "train"} <= set(commands)
    runner = CliRunner()
    env = {"COLUMNS": "200", "NO_COLOR": "1"}
    top = runner.invoke(app, ["--help"], env=env)
    assert top.exit_code == 0, top.output
    description = top.output.split("Options")[0]
    missing = [word for word in PLANNED if word not in commands]
    assert not missing, f"documented commands that do not exist: {missing}"
    for word in re.findall(r"`harmonixr (\w+)", (ROOT / "README.md").read_text()):
        assert word in commands, f"README uses `harmonixr {word}`, which does not exist"
    assert description
    for name in commands:
        assert name in top.output
        res = runner.invoke(app, [name, "--help"], env=env)
        assert res.exit_code == 0, res.output
        assert group.commands[name].help.split("\n")[0][:30] in " ".join(res.output.split())
        for param in group.commands[name].params:
            for opt in param.opts:
                if opt.startswith("--"):
                    assert opt in res.output, f"{name} --help lacks {opt}"
    train_help = runner.invoke(app, ["train", "--help"], env=env).output
    assert "[train]" in train_help and "[model]" in train_help
