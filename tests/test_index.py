"""The persistent index: its files (no pickle), centroids from the training split only,
incremental add without rebuild, one copy per content, interrupted adds, HNSW and Milvus."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from midi_factory import write_score
from search_fixtures import composer_of, split_paths

import harmonixr
from harmonixr.api import Harmonixr
from harmonixr.search.index import Index, build_index, centroids_of
from harmonixr.search.store import FaissStore

pytestmark = pytest.mark.slow


def _new_piece(path, low=67, high=91, seconds=12, seed=7):
    """A piece in the style of the synthetic 'High' composer that the index has never seen."""
    rng = np.random.default_rng(seed)
    notes, t = [], 0.0
    while t < seconds:
        notes.append((round(t * 960), 77, int(rng.integers(low, high)), int(rng.integers(40, 110))))
        t += 0.1 * float(rng.uniform(0.7, 1.3))
    return write_score(path, notes)


def test_index_files_hold_unit_vectors_and_load_without_pickle(search_run):
    root = search_run / "index"
    names = {p.name for p in root.iterdir()}
    assert names == {
        "index.json",
        "items.json",
        "centroids.npy",
        "calibration.json",
        "embeddings.npy",
        "works.npz",
        "works.json",
    }
    with np.load(root / "works.npz", allow_pickle=False) as works:
        assert all(works[f"{line}_sizes"].size == 20 for line in ("top", "bass", "all"))
    emb = np.load(root / "embeddings.npy", allow_pickle=False)
    centroids = np.load(root / "centroids.npy", allow_pickle=False)
    items = json.loads((root / "items.json").read_text())
    assert emb.shape == (20, 32) and emb.dtype == np.float32 and len(items["path"]) == 20
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1.0, atol=1e-5)
    manifest = json.loads((root / "index.json").read_text())
    assert manifest["known"] == ["High", "Low"] and manifest["store"] == "faiss"
    assert manifest["train_pieces"] == {"High": 6, "Low": 6}


def test_centroids_are_the_training_pieces_mean(search_run):
    index = Index.load(search_run / "index")
    row = {it.path: i for i, it in enumerate(index.items)}
    emb = index.store.vectors
    train = split_paths(search_run, "train")
    names, expected = centroids_of(emb[[row[p] for p in train]], [composer_of(p) for p in train])
    assert names == index.known
    np.testing.assert_allclose(index.centroids, expected, atol=1e-6)
    # and not the mean over every piece (the test split is never used for a choice)
    _, everything = centroids_of(emb, [it.composer for it in index.items])
    assert not np.allclose(index.centroids, everything, atol=1e-7)


def test_add_then_similar_finds_the_new_file_without_rebuild(search_run_copy, tmp_path):
    hx = Harmonixr.load(search_run_copy)
    faiss_index = hx.index.store._ready()
    new = _new_piece(tmp_path / "newcomer.mid")
    result = hx.add([new], composer="High")
    assert result.added == (str(new.resolve()),) and not result.duplicates and not result.errors
    assert hx.index.store._ready() is faiss_index and faiss_index.ntotal == 21  # appended
    assert hx.similar(new, k=1)[0].path == str(new.resolve())
    reloaded = Harmonixr.load(search_run_copy)  # and it was saved
    first = reloaded.similar(new, k=3)[0]
    assert (first.path, first.composer, first.title) == (str(new.resolve()), "High", "newcomer")
    assert first.similarity == pytest.approx(1.0, abs=1e-5)
    # its melodic sketch came with it: known works stay aligned with the items
    assert len(reloaded.index.works) == len(reloaded.index.items) == 21
    work = reloaded.identify(new)
    assert work.same_file and work.path == str(new.resolve()) and work.renditions == 1
    # found by its melody too, not only by its hash: a transposed copy, with a rule that names
    from harmonixr.search.works import WorkFit, sketch

    reloaded.index.work_fit = WorkFit(40.0, -8.0, {})
    shifted = np.roll(harmonixr.tensorize(new), 1, axis=1)
    got = reloaded.index.identify(sketch(shifted, 29, 50.0))
    assert got.known and not got.same_file and got.path == str(new.resolve())


def test_the_same_content_is_stored_once(search_run_copy, tmp_path):
    hx = Harmonixr.load(search_run_copy)
    new = _new_piece(tmp_path / "a.mid")
    copy = shutil.copy(new, tmp_path / "b.mid")
    first = hx.add([new, copy])
    assert len(first.added) == 1 and first.duplicates == (str(copy),)
    again = hx.add([new])
    assert again.added == () and again.duplicates == (str(new),)
    indexed = Index.load(search_run_copy / "index")
    assert len(indexed) == 21 and len(indexed.store) == 21
    # a file from the corpus itself is already there too
    corpus_file = split_paths(search_run_copy, "test")[0]
    assert hx.add([corpus_file]).duplicates == (corpus_file,)


def test_bad_files_are_reported_not_added(search_run_copy, tmp_path):
    bad = tmp_path / "bad.mid"
    bad.write_bytes(b"MThd\x00\x00")
    result = Harmonixr.load(search_run_copy).add([bad, tmp_path / "missing.mid"])
    assert result.added == ()
    assert [(e.path, e.reason) for e in result.errors] == [
        (str(bad), "truncated"),
        (str(tmp_path / "missing.mid"), "unreadable"),
    ]
    assert len(Index.load(search_run_copy / "index")) == 20


def test_vectors_of_an_interrupted_add_are_ignored(search_run_copy):
    root = search_run_copy / "index"
    emb = np.load(root / "embeddings.npy")
    np.save(root / "embeddings.npy", np.concatenate([emb, emb[:3]]))  # items.json not written
    index = Index.load(root)
    assert len(index) == 20 and len(index.store) == 20
    (hits,) = index.search(emb[:1], k=25)
    assert len(hits) == 20


def test_hnsw_agrees_with_exact_search_and_survives_a_reload(search_run, tmp_path):
    rng = np.random.default_rng(0)
    v = rng.standard_normal((500, 32)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    exact, hnsw = FaissStore(32, "flat", v), FaissStore(32, "hnsw", v)
    _, e = exact.search(v[:20], 1)
    _, h = hnsw.search(v[:20], 1)
    assert (e[:, 0] == np.arange(20)).all() and (h[:, 0] == np.arange(20)).all()
    hnsw.save(tmp_path)
    assert (tmp_path / "hnsw.faiss").is_file()
    back = FaissStore.load(tmp_path, {"dim": 32, "kind": "hnsw"}, 500)
    assert back._index is not None and back._index.ntotal == 500  # read, not rebuilt
    np.testing.assert_array_equal(back.search(v[:20], 5)[1], hnsw.search(v[:20], 5)[1])


def test_auto_switches_to_hnsw_at_the_measured_size(monkeypatch):
    from harmonixr.search import store as st

    monkeypatch.setattr(st, "HNSW_MIN", 10)
    s = FaissStore(4, "auto", np.eye(4, dtype=np.float32)[[0, 1, 2, 3] * 2])
    assert s.kind == "flat"
    s.add(np.eye(4, dtype=np.float32)[:2], [{}, {}], 8)
    assert s.kind == "hnsw"
    with pytest.raises(ValueError, match="ids must continue"):
        s.add(np.eye(4, dtype=np.float32)[:1], [{}], 3)


def _cache(run):
    return json.loads((run / "config.json").read_text())["train"]["data"]


def test_index_records_paths_relative_to_a_corpus_root(search_run_copy):
    corpus = Path(split_paths(search_run_copy, "train")[0]).parents[1]
    index = build_index(search_run_copy, _cache(search_run_copy), relative_to=corpus)
    assert {Path(it.path).parts[0] for it in index.items} == {"High", "Low"}
    assert (corpus / index.items[0].path).is_file()


def test_milvus_lite_store_answers_like_faiss(search_run_copy, tmp_path):
    pytest.importorskip(
        "pymilvus", reason="pymilvus not installed (pip install 'harmonixr[milvus]')"
    )
    pytest.importorskip("milvus_lite", reason="milvus-lite not installed")
    faiss_hx = Harmonixr.load(search_run_copy)
    index = build_index(search_run_copy, _cache(search_run_copy), store=str(tmp_path / "milvus.db"))
    assert index.info()["store"] == "milvus"
    hx = Harmonixr.load(search_run_copy)
    for p in split_paths(search_run_copy, "test"):
        got, want = hx.similar(p, k=20), faiss_hx.similar(p, k=20)
        assert got[0].path == p
        assert {m.path for m in got} == {m.path for m in want}  # all 20, whatever the ties
        np.testing.assert_allclose(
            [m.similarity for m in got], [m.similarity for m in want], atol=1e-5
        )
    new = _new_piece(tmp_path / "newcomer.mid")
    assert len(hx.add([new]).added) == 1 and len(hx.add([new]).added) == 0
    assert len(hx.index.store) == 21
    assert Harmonixr.load(search_run_copy).similar(new, k=1)[0].path == str(new.resolve())
    hx.index.store.close()


def test_per_work_keeps_the_best_rendition_of_each_piece(tmp_path):
    from harmonixr.evaluate.calibrate import Calibration
    from harmonixr.search.index import Index, Item
    from harmonixr.search.store import FaissStore

    # six pieces: three renditions of work A nearest the query, then two of B, then C
    sims = np.array([0.99, 0.98, 0.97, 0.90, 0.89, 0.80])
    other = np.sqrt(1 - sims**2)
    vectors = np.stack([sims, other, np.zeros(6)], axis=1).astype(np.float32)
    groups = ["A", "A", "A", "B", "B", "C"]
    # renditions of one piece share composer and title; one group may hold several pieces
    items = [Item("X", g, "opus", f"{g}{i}.mid", str(i)) for i, g in enumerate(groups)]
    store = FaissStore(3, "flat")
    index = Index(tmp_path, [], store, np.eye(3, dtype=np.float32)[:1], ["X"], Calibration(), {})
    index.manifest = {"dim": 3}
    index.add(vectors, items)
    query = np.array([[1.0, 0.0, 0.0]], np.float32)
    (raw,) = index.search(query, 3)
    assert [m.path for m in raw] == ["A0.mid", "A1.mid", "A2.mid"]
    (one,) = index.search(query, 3, per_work=1)
    assert [m.path for m in one] == ["A0.mid", "B3.mid", "C5.mid"]
    (two,) = index.search(query, 4, per_work=2)
    assert [m.path for m in two] == ["A0.mid", "A1.mid", "B3.mid", "B4.mid"]
    (few,) = index.search(query, 10, per_work=1)  # fewer pieces than asked: all of them
    assert [m.path for m in few] == ["A0.mid", "B3.mid", "C5.mid"]


def test_a_rebuild_cleans_up_after_a_killed_build_and_nothing_else(search_run_copy):
    import os
    import subprocess
    import sys

    from harmonixr.search.index import _build_dir

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], stdout=-1)
    dead = int(gone.stdout)  # a process that has ended
    half_built = _build_dir(search_run_copy, "tmp").with_name(
        _build_dir(search_run_copy, "tmp").name.replace(f".{os.getpid()}.", f".{dead}.")
    )
    live = _build_dir(search_run_copy, "tmp").with_name(
        _build_dir(search_run_copy, "tmp").name.replace(f".{os.getpid()}.", f".{os.getppid()}.")
    )
    elsewhere = search_run_copy / f".index.another-host.{dead}.tmp"  # a build on another machine
    users = search_run_copy / f"index.bak-{dead}"  # a user's folder
    for d in (half_built, live, elsewhere, users):
        d.mkdir()
        (d / "items.json").write_text("[]")
    build_index(search_run_copy, _cache(search_run_copy))
    assert not half_built.exists()
    assert live.is_dir() and elsewhere.is_dir() and users.is_dir()
    assert (search_run_copy / "index" / "index.json").is_file()


def test_an_index_parked_by_a_killed_build_is_put_back(search_run_copy):
    import subprocess
    import sys

    from harmonixr.search.index import _host, _recover_builds

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], stdout=-1)
    parked = search_run_copy / f".index.{_host()}.{int(gone.stdout)}.old"
    (search_run_copy / "index").rename(parked)  # killed after parking the old index
    _recover_builds(search_run_copy)
    assert not parked.exists() and Index.load(search_run_copy / "index").items


def test_the_index_records_its_back_end_and_an_older_index_is_refused(search_run_copy):
    manifest = json.loads((search_run_copy / "index" / "index.json").read_text())
    assert manifest["backend"] == "cosine" and manifest["format"] == 3
    Index.load(search_run_copy / "index")
    manifest["format"] = 2
    (search_run_copy / "index" / "index.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="rebuild it with `harmonixr index build"):
        Index.load(search_run_copy / "index")
    manifest["format"], manifest["backend"] = 3, "lda"
    (search_run_copy / "index" / "index.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="scored by 'lda'"):
        Index.load(search_run_copy / "index")


def test_embed_then_cosine_ranks_pairs_as_verify_does(search_run):
    hx = Harmonixr.load(search_run)
    paths = split_paths(search_run, "test")[:5]
    z = hx.embed(paths)
    pairs = [(a, b) for a in range(len(paths)) for b in range(a + 1, len(paths))]
    cos = [float(z[a] @ z[b]) for a, b in pairs]
    verdicts = [hx.verify(paths[a], paths[b]) for a, b in pairs]
    np.testing.assert_allclose([v.similarity for v in verdicts], cos, atol=1e-5)
    # verify's probability is a non-decreasing function of that cosine
    order = np.argsort(cos)
    probs = np.array([verdicts[i].probability for i in order])
    assert (np.diff(probs) >= -1e-9).all()


def test_similar_says_how_likely_the_same_composer_on_a_scale_that_spreads(search_run):
    from harmonixr.results import Match

    hx = Harmonixr.load(search_run)
    path = split_paths(search_run, "test")[0]
    got = hx.similar(path, k=len(hx._index()))
    assert all(isinstance(m, Match) and 0.0 <= m.same_composer <= 1.0 for m in got)
    # the probability is verify's: a non-decreasing function of the cosine, equal to it
    cal = hx._index().calibration
    for m in got:
        assert m.same_composer == pytest.approx(float(cal.same_probability(m.similarity)))
    # over a whole index of two composers it spreads over its scale, unlike a raw cosine
    p = np.array([m.same_composer for m in got])
    assert p.max() - p.min() > 0.5
    mine = composer_of(path)
    assert np.mean([m.same_composer for m in got if composer_of(m.path) == mine]) > np.mean(
        [m.same_composer for m in got if composer_of(m.path) != mine]
    )
