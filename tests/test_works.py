"""Known works (search/works.py): melodic sketches that survive transposition and tempo, one
composition per shared name, the validation-fitted rule, and identify through an index."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from midi_factory import TPQ, synthetic_piece, write_score

from harmonixr.evaluate.bootstrap import Bootstrap
from harmonixr.midi.load import load_tensor
from harmonixr.midi.tensorize import TensorConfig
from harmonixr.search.works import (
    MIN_SHARED,
    WorkFit,
    WorkPrints,
    compositions,
    fit_works,
    given_work,
    measure_works,
    sketch,
)

CONFIG = TensorConfig()


def melody(seed: int, n: int = 400) -> list[int]:
    """A random walk of pitches in a piano's middle: a 'composition'."""
    rng = np.random.default_rng(seed)
    steps = rng.choice([-7, -5, -4, -3, -2, -1, 1, 2, 3, 4, 5, 7], size=n)
    return list(np.clip(60 + np.cumsum(steps), 40, 84).astype(int))


def rendition(path, pitches, shift=0, beat_s=0.25, velocity=80):
    """The melody played one note a beat (``beat_s`` seconds), transposed by ``shift``,
    with a bass note under every fourth."""
    ticks = round(beat_s * 2 * TPQ)  # 120 bpm: a quarter is 0.5 s
    notes = []
    for i, p in enumerate(pitches):
        notes.append((i * ticks, ticks, int(p) + shift, velocity))
        if i % 4 == 0:
            notes.append((i * ticks, 4 * ticks, int(p) + shift - 24, velocity - 20))
    return write_score(path, notes)


def sketch_of(path):
    return sketch(load_tensor(path, CONFIG).tensor, CONFIG.low_note, CONFIG.frame_ms)


@pytest.fixture(scope="module")
def renditions(tmp_path_factory):
    """Two compositions in two renditions each (transposed, slower and softer) and one alone."""
    d = tmp_path_factory.mktemp("works")
    a, b, c = melody(1), melody(2), melody(3)
    files = [
        rendition(d / "a1.mid", a),
        rendition(d / "a2.mid", a, shift=3, beat_s=0.4, velocity=60),
        rendition(d / "b1.mid", b),
        rendition(d / "b2.mid", b, shift=-2, beat_s=0.3),
        rendition(d / "c1.mid", c),
    ]
    return [sketch_of(f) for f in files], ["A", "A", "B", "B", "C"]


def test_a_transposed_slower_rendition_overlaps_and_another_melody_does_not(renditions):
    sketches, _ = renditions
    prints = WorkPrints(sketches)
    o = prints.overlaps(sketches)
    np.testing.assert_allclose(np.diag(o), 1.0)
    assert o[0, 1] > 0.5 and o[2, 3] > 0.5  # the same composition, otherwise played
    assert o[0, 2] < 0.1 and o[0, 4] < 0.1 and o[2, 4] < 0.1  # different ones
    np.testing.assert_allclose(o, o.T)


def test_overlap_needs_min_shared_patterns():
    line = np.arange(MIN_SHARED - 1, dtype=np.uint32)
    tiny = (line, line, line)
    prints = WorkPrints([tiny])
    assert prints.overlaps([tiny])[0, 0] == 0.0  # identical, but too few patterns to count


def test_compositions_join_shared_names_transitively_and_take_the_smallest():
    got = compositions([["b", "x"], ["x", "c"], ["c"], ["d"], []])
    assert got == ["b", "b", "b", "d", ""]


def test_the_rule_fitted_on_validation_names_renditions_and_not_strangers(renditions):
    sketches, works = renditions
    prints = WorkPrints(sketches)
    fit = fit_works(prints, works, val=range(5))
    assert fit.a > 0 and 0 < fit.threshold < 0.5
    # hidden pieces are never candidates: a's only other rendition hidden, a is not named right
    hid = fit_works(prints, works, val=[0, 2, 3], hidden=[1])
    assert hid.validation["identified_right"] == pytest.approx(2 / 3)
    assert fit.validation["identified_right"] == 1.0 and fit.validation["no_known_work"] == 1.0
    again = WorkFit.from_dict(fit.to_dict())
    assert again.probability(0.9) == pytest.approx(fit.probability(0.9))
    report = measure_works(prints, works, fit, [0, 4], np.array(["u0", "u4"]), Bootstrap(20, 0))
    assert report["with_rendition"] == 1 and report["without"] == 1
    assert report["identified_right"]["value"] == 1.0 and report["no_known_work"]["value"] == 1.0
    # one group each, all right: Clopper–Pearson's 95 % interval is [0.025, 1], not [1, 1]
    by_group = report["identified_right_by_group"]
    assert (by_group["groups"], by_group["groups_all_right"]) == (1, 1)
    assert by_group["exact_95"] == pytest.approx([0.025, 1.0])


def test_no_rendition_on_validation_means_no_work_is_ever_named(renditions):
    sketches, _ = renditions
    fit = fit_works(WorkPrints(sketches), ["A", "B", "C", "D", "E"], val=range(5))
    assert fit.probability(1.0) < 0.01 and fit.threshold > 1.0


def test_an_identified_work_moves_its_composer_to_the_top_and_the_table_still_sums_to_one():
    from harmonixr.results import Identification

    probs, unknown = np.array([[0.5, 0.2, 0.1]]), np.array([0.2])
    work = Identification(True, 0.9, "B", "Rag", 3, 0.7)
    p, u, column = given_work(probs.copy(), unknown.copy(), ["A", "B", "C"], work)
    assert column == 1 and p.argmax() == 1 and p.sum() + u.sum() == pytest.approx(1.0)
    assert p[0, 1] == pytest.approx(0.9 + 0.1 * 0.2)
    for other in (Identification(False, 0.1, "B", "Rag", 3, 0.05), None):
        same = given_work(probs.copy(), unknown.copy(), ["A", "B", "C"], other)
        assert same[2] == -1 and np.array_equal(same[0], probs)


def test_identify_through_an_index_with_a_fitted_rule(search_run, tmp_path):
    """The tiny run's corpus has no renditions, so its own rule never names a work: with a rule
    that does, a transposed copy of an indexed piece is named and a new piece is not."""
    from search_fixtures import split_paths

    from harmonixr import Harmonixr

    with Harmonixr.load(search_run) as hx:
        index = hx.index
        path = split_paths(search_run, "test")[0]
        tensor = load_tensor(path, CONFIG).tensor
        shifted = np.roll(tensor, 1, axis=1)  # a semitone up (the pitch-class axis)
        assert not index.identify(sketch(shifted, CONFIG.low_note, CONFIG.frame_ms)).known
        index.work_fit = WorkFit(40.0, -8.0, {})
        got = index.identify(sketch(shifted, CONFIG.low_note, CONFIG.frame_ms))
        assert got.known and not got.same_file and got.overlap > 0.2  # B wraps to C: not all
        assert got.path.endswith(path.split("/")[-1]) or got.path == path
        new = synthetic_piece(tmp_path / "new.mid", [("High", 20)], seed=123)
        assert not index.identify(sketch_of(new)).known
        nothing = index.identify((np.zeros(0, np.uint16),) * 3)  # shares no pattern at all
        assert (nothing.known, nothing.composer, nothing.path) == (False, "", "")
        assert nothing.text == "No known work: no indexed piece shares its melody."


def test_known_works_of_another_rule_are_not_used_and_index_works_remakes_them(search_run_copy):
    import json

    from harmonixr.search.catalog import Index
    from harmonixr.search.index import attach_known_works

    root = search_run_copy / "index"
    fit = json.loads((root / "works.json").read_text())
    (root / "works.json").write_text(json.dumps({**fit, "rule": "melody-v0/older"}))
    index = Index.load(root)
    assert index.works is None and "melody-v0/older" in index.works_note
    with pytest.raises(ValueError, match="no known works .*older.*harmonixr index works"):
        index.identify((np.zeros(0, np.uint16),) * 3)
    cache = json.loads((search_run_copy / "config.json").read_text())["train"]["data"]
    again = attach_known_works(search_run_copy, cache)
    assert again.work_fit is not None and len(again.works) == len(again.items)
    assert Index.load(root).work_fit.rule == fit["rule"]


def test_the_answer_follows_from_a_work_whether_or_not_the_model_can_name_its_composer(
    search_run, tmp_path
):
    from search_fixtures import split_paths

    from harmonixr import Harmonixr
    from harmonixr.results import Identification

    with Harmonixr.load(search_run) as hx:
        path = split_paths(search_run, "test")[0]
        z = hx.embed(path)
        own = hx.attribute_embedding(z, k=5)
        for composer in ("Low", "High", "Satie"):  # named ones, and one the model cannot name
            work = Identification(True, 0.8, composer, "Gymnopédie", 2, 0.6)
            rows = hx.attribute_embedding(z, k=5, work=work)
            assert rows[0].composer == composer and rows[0].from_work == "Gymnopédie"
            table = [r for r in rows if not r.barely_known]
            assert sum(r.probability for r in table) == pytest.approx(1.0)
            assert all(r.probability <= rows[0].probability for r in table)
            assert [r.composer for r in table].count(composer) == 1
            # the model's own table shares what the work leaves
            before = {r.composer: r.probability for r in own if not r.barely_known}
            for r in table[1:]:
                assert r.probability == pytest.approx(before[r.composer] * 0.2)
        unsure = Identification(False, 0.3, "Satie", "Gymnopédie", 2, 0.1)
        assert hx.attribute_embedding(z, k=5, work=unsure) == own


@pytest.mark.skipif(
    not (
        Path(__file__).resolve().parents[1] / "src/harmonixr/pretrained/model.safetensors"
    ).is_file(),
    reason="no shipped model",
)
def test_under_a_certain_work_the_other_rows_keep_the_models_own_order():
    """A work of probability 1 leaves every other row at 0; they stay in the model's order (not
    the composers' alphabetical one). Needs many named composers: the shipped index."""
    from harmonixr.api import Harmonixr
    from harmonixr.results import Identification

    hx = Harmonixr.load()
    z = hx.index.store.vectors[0]  # an indexed piece's embedding
    own = [r.composer for r in hx.attribute_embedding(z, k=6) if r.known and not r.barely_known]
    work = Identification(True, 1.0, own[-1], "a work", 2, 1.0)
    rows = hx.attribute_embedding(z, k=6, work=work)
    assert rows[0].composer == own[-1] and rows[0].probability == pytest.approx(1.0)
    rest = [r.composer for r in rows[1:] if r.known and not r.barely_known]
    assert rest == [c for c in own if c != own[-1]]
