"""The tensor cache: every bad input skipped with its own reason; resumable after SIGKILL."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from midi_factory import frames, write_score

from harmonixr import tensorize
from harmonixr._files import TEMP_GLOB
from harmonixr.data.cache import TensorCache, preprocess


def _good(path, pitch=60, n=30):  # 6 s: above the 5 s of sounding music a piece needs
    return write_score(path, [(frames(i * 4), frames(4), pitch + i % 20, 90) for i in range(n)])


def test_each_bad_input_has_its_reason_and_the_rest_is_cached(tmp_path):
    src = tmp_path / "corpus" / "Someone"
    src.mkdir(parents=True)
    _good(src / "good1.mid")
    _good(src / "good2.mid", pitch=40)
    (src / "empty.mid").write_bytes(b"")
    (src / "text.mid").write_text("these are not the notes you are looking for")
    whole = (src / "good1.mid").read_bytes()
    (src / "truncated.mid").write_bytes(whole[: len(whole) - 5])
    write_score(src / "out_of_range.mid", [(0, frames(2), 20, 90), (0, frames(2), 110, 90)])
    write_score(src / "drums.mid", [], drums=[(0, frames(2), 38, 100)])
    write_score(src / "silent.mid", [])
    _good(src / "big.mid", n=400)
    write_score(src / "long.mid", [(0, frames(2), 60, 90), (frames(400), frames(2), 62, 90)])
    # 0.4 s of sounding notes, with silence around them: under the 5 s the model needs
    write_score(src / "short.mid", [(frames(2), frames(4), 60, 90), (frames(8), frames(4), 64, 90)])
    summary = preprocess(
        tmp_path / "corpus", tmp_path / "cache", workers=2, max_seconds=15.0, max_bytes=2000
    )
    want = {
        "empty": 1,
        "not_midi": 1,
        "truncated": 1,
        "no_notes_in_range": 1,
        "drums_only": 1,
        "no_notes": 1,
        "too_large": 1,
        "too_long": 1,
        "too_short": 1,
    }
    assert dict(summary.skipped) == want
    assert (summary.seen, summary.ok, summary.new) == (11, 2, 2)
    with TensorCache(tmp_path / "cache") as cache:
        rows = {r.path.rsplit("/", 1)[1]: r for r in cache.rows(status=None)}
        assert rows["truncated.mid"].reason == "truncated"
        assert rows["good1.mid"].composer == "Someone"
        np.testing.assert_array_equal(cache.load(rows["good1.mid"]), tensorize(src / "good1.mid"))
        assert cache.stats()["skipped"] == want


def test_identical_files_stored_once_and_rerun_skips(tmp_path):
    src = tmp_path / "c" / "A"
    src.mkdir(parents=True)
    _good(src / "x.mid")
    (src / "copy.mid").write_bytes((src / "x.mid").read_bytes())
    (src / "copy2.mid").write_bytes((src / "x.mid").read_bytes())
    _good(src / "other.mid", pitch=40)
    first = preprocess(tmp_path / "c", tmp_path / "cache", workers=2)
    assert (first.ok, first.new, first.reused, first.already) == (4, 2, 2, 0)
    assert len(list((tmp_path / "cache" / "tensors").rglob("*.npy"))) == 2
    with TensorCache(tmp_path / "cache") as cache:
        rows = {r.path.rsplit("/", 1)[1]: r for r in cache.rows()}
    assert rows["x.mid"].tensor == rows["copy.mid"].tensor == rows["copy2.mid"].tensor
    assert rows["copy2.mid"].n_frames == rows["x.mid"].n_frames
    again = preprocess(tmp_path / "c", tmp_path / "cache", workers=1)
    assert (again.already, again.new, again.reused, again.ok) == (4, 0, 0, 4)
    (src / "late_copy.mid").write_bytes((src / "x.mid").read_bytes())
    third = preprocess(tmp_path / "c", tmp_path / "cache", workers=1)
    assert (third.already, third.new, third.reused, third.ok) == (4, 0, 1, 5)


def test_identical_bad_files_share_their_reason(tmp_path):
    src = tmp_path / "c" / "A"
    src.mkdir(parents=True)
    _good(src / "x.mid")
    (src / "bad1.mid").write_text("not midi")
    (src / "bad2.mid").write_text("not midi")
    summary = preprocess(tmp_path / "c", tmp_path / "cache", workers=1)
    assert (summary.new, summary.reused, dict(summary.skipped)) == (1, 1, {"not_midi": 2})


def test_tensor_paths_outside_the_cache_are_refused(tmp_path):
    src = tmp_path / "c" / "A"
    src.mkdir(parents=True)
    _good(src / "x.mid")
    _good(src / "y.mid", pitch=40)
    preprocess(tmp_path / "c", tmp_path / "cache", workers=1)
    secret = tmp_path / "secret.npy"
    np.save(secret, np.zeros((3, 12, 6), np.uint8))
    db = sqlite3.connect(tmp_path / "cache" / "cache.sqlite")
    db.execute("UPDATE pieces SET tensor = ? WHERE path LIKE '%x.mid'", ("../secret.npy",))
    db.execute("UPDATE pieces SET tensor = ? WHERE path LIKE '%y.mid'", (str(secret),))
    db.commit()
    db.close()
    from harmonixr.data.pairs import PieceSet

    with TensorCache(tmp_path / "cache") as cache:
        for row in cache.rows():
            with pytest.raises(ValueError, match="outside") as info:
                cache.load(row)
            assert "cache.sqlite" in str(info.value) and row.path in str(info.value)
        with pytest.raises(ValueError, match="outside"):
            PieceSet.from_cache(cache, cache.rows(), ["A"])


def test_dense_file_is_skipped_as_too_dense(tmp_path):
    from midi_factory import write_dense

    src = tmp_path / "c" / "A"
    src.mkdir(parents=True)
    _good(src / "x.mid")
    write_dense(src / "dense.mid", n_notes=3000, seconds=3.9 * 3600)
    summary = preprocess(tmp_path / "c", tmp_path / "cache", workers=1)
    assert (summary.ok, dict(summary.skipped)) == (1, {"too_dense": 1})
    with TensorCache(tmp_path / "cache") as cache:
        (row,) = cache.rows(status="skipped")
    assert row.path.endswith("dense.mid") and "note-frames" in row.detail


def _corpus(root, n=40):
    for i in range(n):
        d = root / f"C{i % 4}"
        d.mkdir(parents=True, exist_ok=True)
        notes = [
            (frames(j * 3), frames(30), 40 + (i * 7 + j) % 40, 30 + j % 90) for j in range(300)
        ]
        write_score(d / f"p{i:03d}.mid", notes)


def _snapshot(cache_dir):
    db = sqlite3.connect(cache_dir / "cache.sqlite")
    rows = db.execute(
        'SELECT path, sha256, composer, "group", n_frames, status, reason, tensor FROM pieces '
        "ORDER BY path"
    ).fetchall()
    db.close()
    tensors = {p.name: p.read_bytes() for p in (cache_dir / "tensors").rglob("*") if p.is_file()}
    return rows, tensors


# preprocess in a child that SIGKILLs itself (no clean-up runs) from the progress callback (after
# a row is committed) once exactly ``kill_after`` pieces are done; a kill inside a write: below
KILLED_MIDWAY = """
import os, signal, sys
sys.path.insert(0, {src!r})
from harmonixr.data.cache import preprocess

def progress(done, total, path):
    if done == {kill_after}:
        os.kill(os.getpid(), signal.SIGKILL)

preprocess({corpus!r}, {out!r}, workers=2, progress=progress)
raise SystemExit("preprocess finished: the kill never came")
"""


def test_resume_after_sigkill_equals_uninterrupted_run(tmp_path):
    import harmonixr

    corpus, killed, n, kill_after = tmp_path / "corpus", tmp_path / "killed", 40, 15
    _corpus(corpus, n)
    script = tmp_path / "killed_midway.py"
    src = str(Path(harmonixr.__file__).parents[1])
    script.write_text(
        KILLED_MIDWAY.format(src=src, kill_after=kill_after, corpus=str(corpus), out=str(killed))
    )
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    # what was finished before the kill is in the cache, with its tensor
    rows, tensors = _snapshot(killed)
    assert len(rows) == kill_after and {r[5] for r in rows} == {"ok"}
    assert sorted(Path(r[7]).name for r in rows) == sorted(tensors)
    # the rerun keeps that work and does only the rest
    again = preprocess(corpus, killed, workers=1)
    assert (again.already, again.new, again.ok) == (kill_after, n - kill_after, n)
    preprocess(corpus, tmp_path / "clean", workers=1)
    rows_k, tensors_k = _snapshot(killed)
    rows_c, tensors_c = _snapshot(tmp_path / "clean")
    assert len(rows_k) == n and len({r[0] for r in rows_k}) == n
    assert [r[:7] for r in rows_k] == [r[:7] for r in rows_c]
    assert tensors_k == tensors_c
    assert not list(killed.rglob(TEMP_GLOB))


# preprocess in a child that SIGKILLs itself in the middle of writing a tensor: once its
# temporary file is written and synced but not yet renamed, or renamed but its row not yet
# committed
KILLED_IN_A_WRITE = """
import os, signal, sys
sys.path.insert(0, {src!r})
import harmonixr._files as files
from harmonixr.data.cache import preprocess

real, seen = os.replace, []

def replace(src, dst):
    if "tensors" in str(dst):
        seen.append(dst)
        if len(seen) == {kill_at} and {when!r} == "before":
            os.kill(os.getpid(), signal.SIGKILL)
    real(src, dst)
    if "tensors" in str(dst) and len(seen) == {kill_at} and {when!r} == "after":
        os.kill(os.getpid(), signal.SIGKILL)

files.os.replace = replace
preprocess({corpus!r}, {out!r}, workers=1)
raise SystemExit("preprocess finished: the kill never came")
"""


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_kill_inside_a_tensor_write_loses_only_that_piece(tmp_path, when):
    import harmonixr

    corpus, killed, n, kill_at = tmp_path / "corpus", tmp_path / "killed", 12, 6
    _corpus(corpus, n)
    script = tmp_path / "killed_in_a_write.py"
    src = str(Path(harmonixr.__file__).parents[1])
    script.write_text(
        KILLED_IN_A_WRITE.format(
            src=src, kill_at=kill_at, when=when, corpus=str(corpus), out=str(killed)
        )
    )
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    rows, _ = _snapshot(killed)
    assert len(rows) == kill_at - 1  # the piece being written has no row
    leftovers = list(killed.rglob(TEMP_GLOB))
    assert len(leftovers) == (1 if when == "before" else 0)
    again = preprocess(corpus, killed, workers=1)
    assert (again.already, again.new, again.ok) == (kill_at - 1, n - kill_at + 1, n)
    assert not list(killed.rglob(TEMP_GLOB))  # the killed writer's temporary file is gone
    preprocess(corpus, tmp_path / "clean", workers=1)
    assert _snapshot(killed)[1] == _snapshot(tmp_path / "clean")[1]
    assert [r[:7] for r in _snapshot(killed)[0]] == [
        r[:7] for r in _snapshot(tmp_path / "clean")[0]
    ]


def test_safe_load_in_a_child_process(tmp_path):
    from harmonixr import MidiError, safe_load

    path = _good(tmp_path / "ok.mid")
    np.testing.assert_array_equal(safe_load(path).tensor, tensorize(path))
    (tmp_path / "bad.mid").write_bytes(b"RIFFxxxxWAVEfmt ")
    with pytest.raises(MidiError) as info:
        safe_load(tmp_path / "bad.mid")
    assert info.value.reason == "not_midi" and str(tmp_path / "bad.mid") in str(info.value)


def test_piece_sets_pickle_as_paths(tmp_path):
    import pickle

    from harmonixr.data.pairs import PieceSet

    src = tmp_path / "c" / "A"
    src.mkdir(parents=True)
    _good(src / "x.mid", n=300)
    _good(src / "y.mid", pitch=40, n=300)
    preprocess(tmp_path / "c", tmp_path / "cache", workers=1)
    with TensorCache(tmp_path / "cache") as cache:
        rows = cache.pieces()
        ps = PieceSet.from_cache(cache, rows, ["A"])
        blob = pickle.dumps(ps)
        assert len(blob) < 2000  # paths, not the 1200-frame tensors
        again = pickle.loads(blob)
        for i, r in enumerate(rows):
            np.testing.assert_array_equal(again.tensors[i], cache.load(r))


def test_timeouts_are_recorded_then_retried(tmp_path):
    src = tmp_path / "c" / "A"
    src.mkdir(parents=True)
    _good(src / "x.mid")
    first = preprocess(tmp_path / "c", tmp_path / "cache", workers=1, timeout=1e-4)
    assert dict(first.skipped) == {"timeout": 1}
    with TensorCache(tmp_path / "cache") as cache:
        (row,) = cache.rows(status=None)
        assert row.detail.startswith("timed out")
    again = preprocess(tmp_path / "c", tmp_path / "cache", workers=1)
    assert (again.new, again.ok, dict(again.skipped)) == (1, 1, {})


def test_same_corpus_with_1_or_2_workers_gives_the_same_split_and_pairs(tmp_path):
    from midi_factory import synthetic_corpus

    from harmonixr.data.pairs import make_pair_set
    from harmonixr.data.splits import make_split

    corpus = synthetic_corpus(tmp_path / "corpus", n_per=10, seconds=3.0)
    results = []
    for workers in (1, 2):
        preprocess(corpus, tmp_path / f"cache{workers}", workers=workers)
        with TensorCache(tmp_path / f"cache{workers}") as cache:
            rows = cache.pieces()
        assert [r.path for r in rows] == sorted(r.path for r in rows)
        split = make_split(rows, "group", (0.6, 0.2, 0.2), seed=3)
        names = {side: [rows[i].path for i in idx] for side, idx in split.items()}
        comps = np.array([r.composer for r in rows])
        groups = np.array([r.group for r in rows])
        ps = make_pair_set(comps, groups, 20, "mixed", seed=5)
        pairs = sorted((rows[i].path, rows[j].path) for i, j in zip(ps.i, ps.j, strict=True))
        results.append((names, pairs))
    assert results[0] == results[1]
