"""Groups by melody: a transposed, re-voiced copy joins its original, unrelated pieces stay
apart, and adding a file changes only the unit it joins (data/groups.py's docstring)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from midi_factory import write_score

from harmonixr.data import melody
from harmonixr.data.cache import TensorCache, preprocess
from harmonixr.data.groups import GROUPING, content_joins, content_report, join_groups
from harmonixr.data.splits import (
    check_manifest,
    compare_manifests,
    fold_split,
    fold_units,
    split_manifest,
)
from harmonixr.midi.tensorize import TensorConfig, tensorize_notes

TICKS_PER_S = 960  # midi_factory: 480 ticks per quarter at 120 bpm


def _tune(seed: int, n: int = 80) -> tuple[np.ndarray, np.ndarray]:
    """A made-up melody (a random walk in the treble) and one chord root per four notes."""
    rng = np.random.default_rng(seed)
    pitch, tune = 74, []
    for step in rng.choice([-5, -4, -3, -2, -1, 1, 2, 3, 4, 5], size=n):
        if not 64 <= pitch + step <= 86:
            step = -step
        pitch += int(step)
        tune.append(pitch)
    return np.array(tune), rng.integers(45, 53, size=n // 4)


def _write(path: Path, seed: int, *, transpose: int = 0, voicing: str = "close", slower=1.0):
    """The tune over its chords: ``close`` (root position, under the tune) or ``open`` (root
    an octave down, fifth and tenth: other notes, other octaves), transposed and slowed."""
    tune, roots = _tune(seed)
    step = round(0.25 * slower * TICKS_PER_S)
    notes = []
    for i, p in enumerate(tune):
        notes.append((i * step, step - 20, int(p) + transpose, 90 if i % 4 else 100))
    for k, root in enumerate(roots):
        r = int(root) + transpose
        chord = (r, r + 4, r + 7) if voicing == "close" else (r - 12, r - 5, r + 4)
        for p in chord:
            notes.append((4 * k * step, 4 * step - 30, p, 60 if voicing == "close" else 75))
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_score(path, notes)


def _fingerprint(path: Path) -> melody.Fingerprint:
    from harmonixr import tensorize

    config = TensorConfig()
    return melody.fingerprint(tensorize(path, config), config.low_note, config.frame_ms)


def test_a_transposed_revoiced_copy_overlaps_and_unrelated_pieces_do_not(tmp_path):
    original = _fingerprint(_write(tmp_path / "a.mid", seed=1))
    copy = _fingerprint(_write(tmp_path / "b.mid", 1, transpose=5, voicing="open", slower=1.3))
    other = _fingerprint(_write(tmp_path / "c.mid", seed=2))
    value, line = melody.overlap(original, copy)
    assert value >= melody.THRESHOLD and line == "top"
    assert melody.overlap(original, other)[0] < melody.THRESHOLD / 4
    assert melody.overlap(copy, other)[0] < melody.THRESHOLD / 4
    # the scan finds the same pairs and values as the pairwise measure
    found = melody.scan([original, copy, other], ["a", "b", "c"])
    assert [(i, j) for i, j, _, _ in found.pairs] == [(0, 1)]
    assert found.pairs[0][2] == pytest.approx(value)
    assert found.compared == 3


def test_onsets_are_read_back_from_the_tensor():
    config = TensorConfig()
    on = np.array([0.0, 0.0, 0.5, 0.52, 1.0, 1.5])  # a chord, a spread chord, two notes
    pitch = np.array([48, 60, 50, 62, 64, 64])
    tensor = tensorize_notes(on, on + 0.3, pitch, np.full(6, 80), config)
    frames, pitches = melody.onsets(tensor, config.low_note)
    assert frames.tolist() == [0, 0, 10, 10, 20, 30]  # 0.52 s lies in frame 10
    assert pitches.tolist() == [48, 60, 50, 62, 64, 64]
    top, bass, every = melody.melodic_lines(frames, pitches)
    assert top.tolist() == [60, 62, 64, 64] and bass.tolist() == [48, 50, 64, 64]
    assert every.tolist() == pitches.tolist()


def _corpus(root: Path) -> Path:
    """Two composers; B's 'Borrowed' is A's 'Tune' transposed, re-voiced and slower."""
    _write(root / "A" / "Tune.mid", seed=1)
    _write(root / "A" / "Other.mid", seed=2)
    _write(root / "B" / "Borrowed.mid", seed=1, transpose=-3, voicing="open", slower=1.2)
    _write(root / "B" / "Own.mid", seed=3)
    return root


def test_the_cache_joins_the_copy_and_info_reports_it(tmp_path):
    preprocess(_corpus(tmp_path / "midi"), tmp_path / "cache", workers=1)
    with TensorCache(tmp_path / "cache") as cache:
        rows = cache.pieces(joined=False)
        first = content_joins(cache, rows)
        again = content_joins(cache, rows)  # stored: read back, not scanned again
        by_name = {Path(r.path).name: r.group for r in rows}
        unit = {Path(r.path).name: r.group for r in cache.pieces()}
    assert len(set(by_name.values())) == 4
    assert unit["Tune.mid"] == unit["Borrowed.mid"]
    assert len({unit["Tune.mid"], unit["Other.mid"], unit["Own.mid"]}) == 3
    assert again.pairs == first.pairs and again.read_back and not first.read_back
    report = content_report(rows, first)
    assert (report["units_by_name"], report["units"], len(report["joins"])) == (4, 3, 1)
    (join,) = report["joins"]
    assert {join["a"]["title"], join["b"]["title"]} == {"Tune", "Borrowed"}
    proc = subprocess.run(
        [sys.executable, "-m", "harmonixr.cli", "info", str(tmp_path / "cache"), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    stats = json.loads(proc.stdout)
    assert stats["units"] == 3 and len(stats["content"]["joins"]) == 1
    text = subprocess.run(
        [sys.executable, "-m", "harmonixr.cli", "info", str(tmp_path / "cache")],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"},
    ).stdout
    assert "split groups: 4 by name and hash; 3 with 1 pair of pieces joined by melody" in text
    assert "Borrowed" in text and "Tune" in text
    # another file: the stored scan no longer fits the cache, so it is made again
    _write(tmp_path / "midi" / "C" / "Again.mid", seed=1, transpose=2, slower=0.9)
    preprocess(tmp_path / "midi", tmp_path / "cache", workers=1)
    with TensorCache(tmp_path / "cache") as cache:
        rows = cache.pieces(joined=False)
        assert not content_joins(cache, rows).read_back
        unit = {Path(r.path).name: r.group for r in cache.pieces()}
    assert unit["Again.mid"] == unit["Tune.mid"] == unit["Borrowed.mid"] != unit["Own.mid"]


# ---------------------------------------------------------------- adding one file


@dataclass(frozen=True)
class _Row:
    path: str
    group: str
    tensor: str
    work: str = ""
    sha256: str | None = None
    links: str = ""
    composer: str = "X"


def _units_and_folds(rows: list[_Row], fps: dict[str, melody.Fingerprint]):
    found = melody.scan([fps[r.tensor] for r in rows], [r.group for r in rows])
    links = [(rows[i].tensor, rows[j].tensor) for i, j, _, _ in found.pairs]
    unit = join_groups(rows, links)
    labelled = [_Row(r.path, unit[r.path], r.tensor) for r in rows]
    units = fold_units(labelled)
    split = fold_split(labelled, folds=3, fold=0, seed=0, val_fraction=0.2)
    side = {labelled[i].path: s for s, idx in split.items() for i in idx}
    return dict(zip([r.path for r in rows], units, strict=True)), side


def test_adding_a_file_changes_only_the_unit_it_joins():
    """Random pattern sets, some sharing most of their patterns (recurring music), with names
    joining some files: for every file F, the corpus with and without F agree on every unit F
    does not touch (members and name) and on every such unit's side of a fold split."""
    rng = np.random.default_rng(0)
    themes = [rng.choice(4000, size=60, replace=False) for _ in range(6)]
    fps, rows = {}, []
    for k in range(40):
        theme = themes[k % 6] if k % 3 == 0 else rng.choice(4000, size=60, replace=False)
        own = rng.choice(np.arange(4000, 9000), size=int(rng.integers(20, 80)), replace=False)
        codes = np.unique(np.concatenate([theme, own])).astype(np.int64)
        fps[f"t{k}"] = melody.Fingerprint((codes, codes[:5], np.zeros(0, np.int64)))
        work = f"w{k // 4}" if k % 5 == 0 else ""
        rows.append(_Row(f"p{k:02d}", f"g{k:02d}", f"t{k}", work=work))
    whole, whole_side = _units_and_folds(rows, fps)
    assert len(set(whole.values())) < len(rows) - 5  # melody and names joined some files
    for f in rows:
        fewer, fewer_side = _units_and_folds([r for r in rows if r is not f], fps)
        joined = {p for p, u in whole.items() if u == whole[f.path]}  # F's unit, with F
        others = {p: u for p, u in fewer.items() if p not in joined}
        for p, u in others.items():
            assert whole[p] == u, f"adding {f.path} renamed the unit of {p}"
            assert whole_side[p] == fewer_side[p], f"adding {f.path} moved {p}"
        # the units F merged held only what is now F's unit
        assert not {fewer[p] for p in joined - {f.path}} & set(others.values())


def test_the_scan_of_a_subset_is_the_subset_of_the_scan():
    rng = np.random.default_rng(1)
    theme = rng.choice(500, size=40, replace=False)
    fps = []
    for k in range(12):
        codes = rng.choice(np.arange(500, 3000), size=30, replace=False)
        if k % 4 == 0:
            codes = np.concatenate([codes, theme])
        fps.append(melody.Fingerprint((np.unique(codes).astype(np.int64),) * 3))
    every = {(i, j): v for i, j, v, _ in melody.scan(fps, [str(k) for k in range(12)]).pairs}
    keep = [0, 3, 4, 8, 11]
    sub = melody.scan([fps[k] for k in keep], [str(k) for k in keep], block=2)
    assert {(keep[i], keep[j]): v for i, j, v, _ in sub.pairs} == {
        (i, j): v for (i, j), v in every.items() if i in keep and j in keep
    }
    assert len(every) == 3  # the four files with the theme: 0–4, 0–8, 4–8 (and none else)


# ---------------------------------------------------------------- splits from older rules


@dataclass(frozen=True)
class _Piece:
    path: str
    group: str
    sha256: str
    composer: str = "X"


def test_a_split_from_an_older_grouping_rule_is_checked_without_its_units(tmp_path):
    pieces = [_Piece(f"p{k}", f"g{k}", f"h{k}") for k in range(12)]
    split = fold_split(pieces, 3, 0, 0, val_fraction=0.2)
    manifest = split_manifest(pieces, split, folds=3, fold=0)
    assert manifest["groups"] == GROUPING
    regrouped = [
        _Piece(p.path, "g0" if p.path in ("p1", "p2") else p.group, p.sha256) for p in pieces
    ]
    with pytest.raises(ValueError, match="changed content, unit or side"):
        check_manifest(manifest, split, regrouped, "run")
    older = {k: v for k, v in manifest.items() if k != "groups"}
    check_manifest(older, split, regrouped, "run")  # units of another rule: not compared
    moved = {s: list(v) for s, v in split.items()}
    moved["train"].append(moved["test"].pop())
    with pytest.raises(ValueError, match="grouped by an older rule"):
        check_manifest(older, moved, regrouped, "run")

    (tmp_path / "shipped.json").write_text(json.dumps(older))
    (tmp_path / "same.json").write_text(json.dumps(manifest))
    note = compare_manifests(tmp_path / "shipped.json", tmp_path / "same.json")
    assert "came back file for file" in note
    rebuilt = split_manifest(regrouped, split, folds=3, fold=0)
    (tmp_path / "rebuilt.json").write_text(json.dumps(rebuilt))
    note = compare_manifests(tmp_path / "shipped.json", tmp_path / "rebuilt.json")
    assert "replaces the shipped split" in note and "2 files changed side or group" in note
    (tmp_path / "new-rule.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="differs from the shipped split"):
        compare_manifests(tmp_path / "new-rule.json", tmp_path / "rebuilt.json")


def test_pieces_whose_music_recurs_on_an_earlier_side_are_left_out():
    from types import SimpleNamespace

    from harmonixr.data.splits import without_recurring

    pieces = [
        SimpleNamespace(path=f"p{i}", group=g)
        for i, g in enumerate(["a", "b", "c", "a", "d", "c", "e", "d"])
    ]
    split = {"train": [0, 1], "val": [2, 3, 4], "test": [5, 6, 7]}
    kept, left = without_recurring(split, pieces)
    # val: p3 shares group a with training; test: p5 shares c with val, p7 shares d with val
    assert kept == {"train": [0, 1], "val": [2, 4], "test": [6]}
    assert left == {"train": [], "val": ["p3"], "test": ["p5", "p7"]}
