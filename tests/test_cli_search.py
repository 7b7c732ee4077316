"""The asking commands (embed, attribute, similar, verify, timeline, index build/add/info):
--json parses and says the right thing, tables print, errors are one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from midi_factory import write_score
from search_fixtures import composer_of, split_paths
from typer.testing import CliRunner

from harmonixr.cli import app

pytestmark = pytest.mark.slow


def hx(*args: str) -> str:
    """Run a command in this process; its stdout."""
    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def hx_json(*args: str):
    return json.loads(hx(*args, "--json"))


def test_attribute_json_names_the_composer_with_probabilities(search_run, tmp_path):
    from midi_factory import synthetic_piece

    path = synthetic_piece(tmp_path / "new.mid", [("High", 20)], seed=5)  # no known work
    result = hx_json("attribute", path, "--model", search_run, "--k", "1")
    assert [r["composer"] for r in result][0] == "High"
    assert {r["known"] for r in result} == {True, False} and len(result) == 2
    assert all(0 <= r["probability"] <= 1 for r in result)
    table = hx("attribute", path, "-m", search_run)
    assert "High" in table and "someone else" in table and "← answer" in table
    assert table.startswith("No known work")
    # another prior moves "someone else" as Bayes says: odds × 9 for a prior of 0.9
    even = {r["composer"]: r["probability"] for r in result}["unknown"]
    high = hx_json("attribute", path, "--model", search_run, "--k", "1", "--prior-unknown", "0.9")
    p = {r["composer"]: r["probability"] for r in high}["unknown"]
    assert p / (1 - p) == pytest.approx(9 * even / (1 - even), rel=1e-6)


def test_identify_names_an_indexed_file_and_attribute_follows_from_it(search_run):
    path = split_paths(search_run, "test")[0]
    got = hx_json("identify", path, "--model", search_run)
    assert got["same_file"] and got["known"] and got["composer"] == composer_of(path)
    assert got["text"].startswith("This file is in the index")
    assert hx("identify", path, "-m", search_run).startswith("This file is in the index")
    rows = hx_json("attribute", path, "--model", search_run, "--k", "1")
    assert rows[0]["from_work"] == got["work"] and rows[0]["probability"] == pytest.approx(1.0)
    assert "from the known work" in hx("attribute", path, "-m", search_run)


def test_similar_verify_timeline_json(search_run):
    a, b = split_paths(search_run, "test")[:2]
    matches = hx_json("similar", a, "--model", search_run, "--k", "4")
    assert len(matches) == 4 and matches[0]["path"] == a
    verdict = hx_json("verify", a, b, "--model", search_run)
    assert verdict["same_composer"] == (composer_of(a) == composer_of(b))
    assert set(verdict) == {"similarity", "same_composer", "probability"}
    passages = hx_json("timeline", a, "--model", search_run, "--window", "10", "--hop", "5")
    assert passages[0]["start_s"] == 0.0 and set(passages[0]["probabilities"]) == {"High", "Low"}
    shown = hx("timeline", a, "-m", search_run, "--window", "10", "--hop", "10")
    assert "10 s windows every 10 s" in shown
    assert Path(a).name in hx("similar", a, "-m", search_run)
    assert "composer" in hx("verify", a, b, "-m", search_run)


def test_embed_a_folder_to_npy_and_parquet(search_run, tmp_path):
    midi = Path(split_paths(search_run, "train")[0]).parents[1]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "broken.mid").write_bytes(b"MThd\x00\x00")
    write_score(tmp_path / "in" / "ok.mid", [(i * 240, 200, 60 + i % 12, 80) for i in range(40)])
    summary = hx_json("embed", midi, tmp_path / "in", "--out", tmp_path / "e.npy", "-m", search_run)
    assert summary["embedded"] == 21 and summary["dim"] == 32
    assert [(e["path"], e["reason"]) for e in summary["errors"]] == [
        (str(tmp_path / "in" / "broken.mid"), "truncated")
    ]
    emb = np.load(tmp_path / "e.npy")
    paths = (tmp_path / "e.paths.txt").read_text().splitlines()
    assert emb.shape == (21, 32) and len(paths) == 21 and paths[-1].endswith("ok.mid")
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow not installed")
    hx("embed", tmp_path / "in" / "ok.mid", "--out", tmp_path / "e.parquet", "-m", search_run)
    table = pq.read_table(tmp_path / "e.parquet")
    assert table.column_names == ["path", "embedding"]
    np.testing.assert_allclose(np.array(table["embedding"].to_pylist()), emb[-1:], atol=1e-6)


def test_index_build_add_info(search_run_copy, tmp_path):
    run = search_run_copy
    corpus = Path(split_paths(run, "train")[0]).parents[1]
    info = hx_json("index", "build", run, "--relative-to", corpus)
    assert info["items"] == 20 and info["store"] == "faiss"
    cal = info["calibration"]["composer"]
    assert cal["measured_on"].startswith("validation") and 0 <= cal["ece"] <= 1
    assert info["named_composers"] == ["High", "Low"]
    shown = hx("index", "info", run)
    assert "fitted on validation" in shown and "not measured" in shown
    new = write_score(tmp_path / "new.mid", [(i * 96, 77, 70 + i % 20, 90) for i in range(150)])
    added = hx_json("index", "add", run, new, "--composer", "High")
    assert added["added"] == [str(new.resolve())] and added["duplicates"] == []
    again = hx_json("index", "add", run, tmp_path)  # a folder: the same file inside
    assert again["added"] == [] and again["duplicates"] == [str(new)]
    assert hx_json("index", "info", run)["items"] == 21
    assert hx_json("similar", new, "-m", run, "--k", "1")[0]["path"] == str(new.resolve())


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "harmonixr.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_errors_are_one_readable_line(search_run, tmp_path):
    (tmp_path / "x.mid").write_text("not midi")
    cases = [
        (["attribute", tmp_path / "x.mid", "-m", search_run], "not_midi"),
        (["similar", tmp_path / "x.mid", "-m", tmp_path], "not a run directory"),
        (["embed", tmp_path / "x.mid", "--out", tmp_path / "e.npy", "-m", search_run], "not_midi"),
        (["embed", tmp_path, "--out", tmp_path / "e.csv"], "must end in .npy or .parquet"),
        (["index", "info", tmp_path], "not a run directory"),
    ]
    for args, words in cases:
        proc = _cli(*args)
        err = proc.stderr.strip()
        assert proc.returncode == 1, proc.stderr
        assert err.startswith("error:") and "\n" not in err and "Traceback" not in err
        assert words in err


def test_an_answer_no_known_work_backs_carries_the_held_out_figures(search_run_copy, tmp_path):
    from midi_factory import synthetic_piece

    from harmonixr.api import Harmonixr
    from harmonixr.search.measure import store_held_out

    path = synthetic_piece(tmp_path / "new.mid", [("High", 20)], seed=5)  # no known work
    assert Harmonixr.load(search_run_copy).new_work_note == ""  # not measured: nothing said
    assert "no known work backs" not in hx("attribute", path, "-m", search_run_copy).lower()
    shown = {"answer_accuracy_no_work": {"value": 0.512}, "ece_no_work": {"value": 0.13}}
    store_held_out(search_run_copy, {"composer_as_shown": shown})
    note = Harmonixr.load(search_run_copy).new_work_note
    assert "51%" in note and "0.13" in note
    table = " ".join(hx("attribute", path, "-m", search_run_copy).split())
    assert "No known work backs this answer" in table and "51% of pieces" in table
    # an indexed file: its known work backs the answer, and the note is not printed
    indexed = split_paths(search_run_copy, "test")[0]
    assert "backs this answer" not in hx("attribute", indexed, "-m", search_run_copy)
