"""The Harmonixr API on a tiny run of two learnable synthetic composers: shapes and norms, every
input kind, attribution, similarity, verification, timeline, errors, the shipped model."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from midi_factory import write_score
from search_fixtures import composer_of, split_paths

import harmonixr
from harmonixr import Attribution, Harmonixr, MidiError
from harmonixr.model.io import WEIGHTS

pytestmark = pytest.mark.slow
PRETRAINED = Path(harmonixr.__file__).parent / "pretrained"


@pytest.fixture(scope="module")
def hx(search_run):
    with Harmonixr.load(search_run) as model:  # its parser processes stop with the module
        yield model


def test_import_harmonixr_stays_light():
    code = "import sys, harmonixr; print('torch' in sys.modules, 'faiss' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_embed_shapes_and_norms_for_every_input_kind(hx, search_run):
    import symusic

    a, b = split_paths(search_run, "test")[:2]
    one = hx.embed(a)
    assert one.shape == (32,) and one.dtype == np.float32
    assert np.linalg.norm(one) == pytest.approx(1.0, abs=1e-5)
    many = hx.embed([a, Path(b)])
    assert many.shape == (2, 32)
    np.testing.assert_allclose(np.linalg.norm(many, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(many[0], one, atol=1e-6)
    tensor = harmonixr.tensorize(a)
    np.testing.assert_allclose(hx.embed(tensor), one, atol=1e-6)
    np.testing.assert_allclose(hx.embed(symusic.Score(a)), one, atol=1e-6)
    assert hx.embed([]).shape == (0, 32)


def test_embed_rejects_bad_inputs_with_the_preprocess_reasons(hx, tmp_path):
    (tmp_path / "text.mid").write_text("hello")
    (tmp_path / "cut.mid").write_bytes(b"MThd\x00\x00")
    silent = write_score(tmp_path / "silent.mid", [])
    for name, reason in (
        ("text.mid", "not_midi"),
        ("cut.mid", "truncated"),
        ("nope.mid", "unreadable"),
    ):
        with pytest.raises(MidiError) as err:
            hx.embed(tmp_path / name)
        assert (err.value.reason, err.value.path) == (reason, str(tmp_path / name))
    with pytest.raises(MidiError, match="no_notes"):
        hx.embed([silent])
    with pytest.raises(ValueError, match="uint8"):
        hx.embed(np.zeros((10, 12, 6), np.float32))
    with pytest.raises(TypeError):
        hx.embed(3)


def test_embed_many_files_skips_and_reports_bad_ones_with_progress(hx, search_run, tmp_path):
    from harmonixr import Embedded

    good = split_paths(search_run, "test")[:3]
    (tmp_path / "text.mid").write_text("hello")
    bad = tmp_path / "text.mid"
    seen: list[tuple[str, int, int]] = []
    got = hx.embed(
        [good[0], bad, *good[1:]],
        batch_size=2,
        skip_errors=True,
        progress=lambda stage, i, n: seen.append((stage, i, n)),
    )
    assert isinstance(got, Embedded)
    assert got.paths == tuple(str(p) for p in good)
    assert [(e.path, e.reason) for e in got.errors] == [(str(bad), "not_midi")]
    np.testing.assert_allclose(got.vectors, hx.embed(good), atol=1e-5)
    assert ("parse", 4, 4) in seen and seen[-1] == ("embed", 3, 3)
    with pytest.raises(MidiError, match="not_midi"):
        hx.embed([good[0], bad])  # without skip_errors the bad file raises
    with pytest.raises(MidiError, match="not_midi"):
        hx.embed([bad], skip_errors=True)  # nothing left to embed: the one file's error
    fresh = hx.embed(good, workers=1)  # fresh parser processes for this call only
    np.testing.assert_allclose(fresh, got.vectors, atol=1e-5)
    # an input in memory that cannot be used is skipped and reported the same way
    wrong = np.zeros((10, 12, 6), np.float32)
    mixed = hx.embed([wrong, good[0]], skip_errors=True)
    assert mixed.paths == (str(good[0]),) and mixed.errors[0].path == "<input 0>"
    odd = hx.embed([good[0], 42], skip_errors=True)  # not an input at all: skipped too
    assert odd.paths == (str(good[0]),) and odd.errors[0].path == "<input 1>"
    with pytest.raises(TypeError):
        hx.embed([good[0], 42])
    with pytest.raises(ValueError, match="uint8"):
        hx.embed([wrong, good[0]])
    with pytest.raises(ValueError, match="batch_size"):
        hx.embed(good, batch_size=0)
    assert hx.embed([], skip_errors=True).vectors.shape == (0, 32)


def test_input_types_resolve_at_run_time():
    import typing

    hints = typing.get_type_hints(Harmonixr.attribute)
    assert "Score" in str(hints["x"]) and "torch.Tensor" in str(hints["x"])


def test_similar_returns_the_file_itself_first(hx, search_run):
    for path in split_paths(search_run, "test") + split_paths(search_run, "train")[:2]:
        matches = hx.similar(path, k=3)
        assert len(matches) == 3
        assert matches[0].path == path and matches[0].similarity == pytest.approx(1.0, abs=1e-5)
        assert matches[0].composer == composer_of(path)
        assert [m.similarity for m in matches] == sorted(
            (m.similarity for m in matches), reverse=True
        )


def test_attribute_ranks_the_true_composer_first_on_unseen_pieces(hx, search_run):
    for path in split_paths(search_run, "test"):  # never used for centroids or calibration
        result = hx.attribute(path)
        assert result[0].known and result[0].composer == composer_of(path), result


def test_probabilities_are_in_range_sum_with_unknown_to_one_in_score_order(hx, search_run):
    assert hx.composers == ["High", "Low"]
    for path in split_paths(search_run, "test"):
        result = hx.attribute(path, k=5)
        assert len(result) == 3  # both composers and the unknown
        assert all(0.0 <= a.probability <= 1.0 for a in result)
        assert sum(a.probability for a in result) == pytest.approx(1.0, abs=1e-9)
        (unknown,) = [a for a in result if not a.known]
        assert unknown.composer == "unknown" and unknown.score is None
        known = [a for a in result if a.known]
        assert [a.composer for a in known] == [
            a.composer for a in sorted(known, key=lambda a: -a.score)
        ]
        assert hx.attribute(path, k=1)[0] == result[0]
        assert len(hx.attribute(path, k=1)) == 2


def test_verify_tells_same_from_different_composers(hx, search_run):
    test = split_paths(search_run, "test")
    high = [p for p in test if composer_of(p) == "High"]
    low = [p for p in test if composer_of(p) == "Low"]
    same, different = hx.verify(high[0], high[1]), hx.verify(high[0], low[0])
    assert same.same_composer and same.probability > 0.5
    assert not different.same_composer and different.probability < 0.5
    assert same.similarity > different.similarity
    assert hx.verify(low[0], low[0]).similarity == pytest.approx(1.0, abs=1e-5)


def test_timeline_windows_cover_the_piece_and_name_its_composer(hx, search_run):
    path = split_paths(search_run, "test")[0]
    seconds = harmonixr.tensorize(path).shape[0] * 0.05
    passages = hx.timeline(path, window=10, hop=5)
    assert [p.start_s for p in passages][:3] == [0.0, 5.0, 10.0]
    assert passages[-1].end_s == pytest.approx(seconds)
    for p in passages:
        start, end, probs = p  # unpacks like the tuple of the issue
        assert end - start == pytest.approx(10.0)
        assert set(probs) == {"High", "Low"}
        assert sum(probs.values()) + p.unknown == pytest.approx(1.0, abs=1e-9)
    hits = sum(max(p.probabilities, key=p.probabilities.get) == composer_of(path) for p in passages)
    assert hits > len(passages) / 2
    with pytest.raises(ValueError, match="window must be"):
        hx.timeline(path, window=0)
    with pytest.raises(ValueError, match="window must be"):
        hx.timeline(path, window=600, hop=300)  # longer than the model can judge
    with pytest.raises(ValueError, match="hop must be"):
        hx.timeline(path, window=30, hop=0.05)  # would push 600× the piece through the model


@pytest.mark.parametrize("window, hop", [(10, 10), (10, 5), (12, 6)])
def test_timeline_and_embedding_together_equal_each_alone(hx, search_run, window, hop):
    # the run's crop is 10 s: there the two share the model's work; elsewhere they cannot
    path = split_paths(search_run, "test")[0]
    passages, z = hx.timeline_and_embedding(path, window=window, hop=hop)
    alone = hx.timeline(path, window=window, hop=hop)
    assert [(p.start_s, p.end_s) for p in passages] == [(p.start_s, p.end_s) for p in alone]
    for p, q in zip(passages, alone, strict=True):
        assert p.unknown == pytest.approx(q.unknown, abs=1e-5)
        for c in p.probabilities:
            assert p.probabilities[c] == pytest.approx(q.probabilities[c], abs=1e-5)
    np.testing.assert_allclose(z, hx.embed(path), atol=1e-5)


def test_records_are_frozen_and_serialise(hx, search_run):
    path = split_paths(search_run, "test")[0]
    records = [
        *hx.attribute(path),
        *hx.similar(path, k=2),
        hx.verify(path, path),
        *hx.timeline(path, window=10, hop=10),
    ]
    for r in records:
        json.dumps(r.to_dict())
        with pytest.raises(dataclasses.FrozenInstanceError):
            r.probability = 0.0  # type: ignore[misc]
    assert isinstance(records[0], Attribution)


def test_a_run_without_index_embeds_but_cannot_attribute(search_run_copy):
    import shutil

    shutil.rmtree(search_run_copy / "index")
    hx = Harmonixr.load(search_run_copy)
    path = split_paths(search_run_copy, "test")[0]
    assert hx.embed(path).shape == (32,)
    with pytest.raises(ValueError, match="harmonixr index build"):
        hx.attribute(path)


def test_an_index_built_with_other_weights_is_refused(search_run_copy):
    from safetensors.torch import load_file, save_file

    weights = search_run_copy / WEIGHTS
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as fh:
        meta = fh.metadata()
    state = load_file(str(weights))
    first = next(iter(state))
    state[first] = state[first] + 1.0
    save_file(state, str(weights), metadata=meta)
    with pytest.raises(ValueError, match="other weights"):
        Harmonixr.load(search_run_copy)
    # every reader of RUN/index checks the same way: the held-out measurement, the style test
    from harmonixr.search.measure import measure_index
    from harmonixr.viz.eras import composer_style

    with pytest.raises(ValueError, match="other weights"):
        measure_index(search_run_copy, search_run_copy.parent / "cache", music21_dir=None)
    with pytest.raises(ValueError, match="other weights"):
        composer_style(search_run_copy / "index", search_run_copy / "viz")


@pytest.mark.skipif((PRETRAINED / WEIGHTS).is_file(), reason="a shipped model is present")
def test_without_a_shipped_model_load_says_how_to_get_one():
    with pytest.raises(FileNotFoundError, match="make pretrained"):
        Harmonixr.load()


@pytest.mark.skipif(
    not (PRETRAINED / WEIGHTS).is_file(),
    reason="no shipped model in src/harmonixr/pretrained (the lead trains it: make pretrained)",
)
def test_the_shipped_model_loads_from_the_installed_package(tmp_path):
    """Install the package into a folder (not editable) and use it from there."""
    root = Path(__file__).resolve().parents[1]
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(root),
        ],
        check=True,
        capture_output=True,
    )
    piece = write_score(tmp_path / "p.mid", [(i * 240, 200, 48 + i % 24, 80) for i in range(200)])
    code = (
        "import harmonixr, json; from harmonixr import Harmonixr; hx = Harmonixr.load(); "
        f"z = hx.embed({str(piece)!r}); a = hx.attribute({str(piece)!r}); "
        "print(json.dumps({'file': harmonixr.__file__, 'dim': len(z), "
        "'p': sum(x.probability for x in hx.attribute(" + repr(str(piece)) + ", k=1000))}))"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["file"].startswith(str(target)) and not got["file"].startswith(str(root / "src"))
    assert got["dim"] > 0 and got["p"] == pytest.approx(1.0)


def test_the_shipped_index_is_not_written_to(hx, search_run):
    shipped = Harmonixr(hx.run, hx.encoder, hx.index, shipped=True)
    with pytest.raises(ValueError, match="part of the installed package"):
        shipped.add(split_paths(search_run, "test")[:1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="scripts need a main guard here")
def test_a_script_without_main_guard_works(search_run, tmp_path):
    """The snippet users write first: no `if __name__ == "__main__":` around it."""
    path = split_paths(search_run, "test")[0]
    script = tmp_path / "snippet.py"
    script.write_text(
        "from harmonixr import Harmonixr\n"
        f"hx = Harmonixr.load({str(search_run)!r})\n"
        f"print(hx.attribute({path!r})[0].composer)\n"
    )
    src = str(Path(harmonixr.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": src}
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [composer_of(path)]


def test_questions_from_an_embedding_match_the_questions_from_the_file(hx, tmp_path):
    from midi_factory import synthetic_piece

    path = synthetic_piece(tmp_path / "new.mid", [("High", 20)], seed=99)  # not indexed
    assert not hx.identify(path).known
    z = hx.embed(path)
    assert hx.attribute_embedding(z, k=2) == hx.attribute(path, k=2)
    assert hx.similar_embedding(z, k=3) == hx.similar(path, k=3)


def test_an_indexed_file_is_identified_and_the_answer_follows_from_its_work(hx, search_run):
    path = split_paths(search_run, "test")[0]
    work = hx.identify(path)
    assert work.same_file and work.known and work.probability == 1.0
    assert work.composer == composer_of(path) and Path(work.path).name == Path(path).name
    assert work.text.startswith("This file is in the index")
    rows = hx.attribute(path, k=5)
    assert rows[0].composer == composer_of(path) and rows[0].from_work == work.work
    assert rows[0].probability == pytest.approx(1.0)
    named = [r for r in rows if not r.barely_known]
    assert all(r.probability <= rows[0].probability for r in named)
    assert hx.attribute_known(path, k=5) == (work, rows)  # both from one reading of the file
    z = hx.embed(path)  # from an embedding alone no work is identified
    assert all(r.from_work == "" for r in hx.attribute_embedding(z, k=5))


def test_load_sets_torch_threads_only_when_asked(search_run):
    import torch

    before = torch.get_num_threads()
    try:
        Harmonixr.load(search_run)
        assert torch.get_num_threads() == before  # None: torch's own setting is kept
        Harmonixr.load(search_run, threads=1)
        assert torch.get_num_threads() == 1
        with pytest.raises(ValueError, match="threads"):
            Harmonixr.load(search_run, threads=0)
    finally:
        torch.set_num_threads(before)
