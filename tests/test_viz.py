"""Pictures: each command writes its files, GIFs animate, HTML works offline, colours and labels
come from the data, and new points land in the saved map without moving the corpus."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from midi_factory import synthetic_corpus, write_score
from PIL import Image
from tiny_runs import train_tiny
from typer.testing import CliRunner

import harmonixr
from harmonixr.cli import app
from harmonixr.data.cache import preprocess
from harmonixr.viz._style import OTHER, PALETTE, composer_colours
from harmonixr.viz.tsne import CorpusMap, align, fit_map, spread_and_dimension

EXTERNAL_SCRIPT = re.compile(r"<script[^>]*\bsrc\s*=\s*[\"']?\s*(https?:)?//", re.I)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny model trained for a few steps on two synthetic composers, with checkpoints."""
    root = tmp_path_factory.mktemp("viz")
    synthetic_corpus(root / "midi", n_per=8, seconds=12)
    preprocess(root / "midi", root / "cache", workers=1)
    run = train_tiny(
        root / "cache",
        root / "run",
        crop_seconds=5,
        steps_per_epoch=5,
        max_steps=10,
        warmup_steps=2,
        lr=3e-4,  # what it learns does not matter here: the pictures do
        val_pairs=20,
        checkpoint_every_steps=5,
    )
    return run, root / "cache", root / "midi"


@pytest.fixture(scope="module")
def maps(tiny_run, tmp_path_factory):
    from harmonixr.viz.maps import corpus_maps

    run, cache, _ = tiny_run
    out = tmp_path_factory.mktemp("maps")
    written = corpus_maps(run, cache, out=out, with_checkpoints=True, frames=3, perplexity=5)
    return out, written


def _image(path, size=None, frames=None):
    with Image.open(path) as im:
        if size:
            assert im.size == size, path
        n = getattr(im, "n_frames", 1)
        if frames:
            assert n == frames, path
        return im.size, n


def _offline_html(path) -> str:
    text = path.read_text(encoding="utf-8")
    assert "plotly.js v" in text[:2_000_000]  # the bundle's own header: inlined
    assert not EXTERNAL_SCRIPT.search(text), path
    return text


def test_tsne_writes_pictures_of_pieces_and_composers(maps):
    out, written = maps
    for stem in ("pieces", "composers"):
        _image(out / f"{stem}.png", size=(1000, 750))
        _image(out / f"{stem}.gif", size=(640, 480), frames=3)
        assert (out / f"{stem}.gif").stat().st_size <= 4_000_000
        html = _offline_html(out / f"{stem}.html")
        # colours and labels come from the data: both composers are named
        assert "Low" in html and "High" in html
    assert written["pieces.png"] == out / "pieces.png"
    pieces = (out / "pieces.html").read_text()
    assert "low00.mid" in pieces and "composer" in pieces  # hover: composer, title, file


def test_checkpoint_maps_and_growth(maps):
    out, written = maps
    stats = json.loads((out / "checkpoints.json").read_text())
    assert [s["step"] for s in stats] == [0, 10]  # initial weights, the rolling checkpoint
    assert all(s["spread"] > 0 and 1.0 <= s["effective_dim"] <= 32 for s in stats)
    frames = sorted((out / "checkpoints").glob("step-*.png"))
    assert [f.name for f in frames] == ["step-0000000.png", "step-0000010.png"]
    _image(out / "checkpoints.gif", frames=2)
    _image(out / "checkpoints-growth.png", size=(1000, 400))


def test_saved_map_reloads_without_pickle_and_places_points(maps):
    out, _ = maps
    with np.load(out / "map" / "map.npz", allow_pickle=False) as f:
        assert f["coords"].shape[1] == 3
    cmap = CorpusMap.load(out / "map")
    before = cmap.coords.copy()
    placed = cmap.place(cmap.embeddings[:2])
    np.testing.assert_array_equal(cmap.coords, before)
    assert placed.shape == (2, 3)
    # a piece placed again lands nearer its own point than the typical distance between points
    gaps = np.linalg.norm(before[:, None] - before[None], axis=-1)
    own = np.linalg.norm(placed - before[:2], axis=1)
    assert (own < np.median(gaps[gaps > 0])).all(), own
    idx, dist = cmap.nearest(cmap.embeddings[:2], k=3)
    assert idx[:, 0].tolist() == [0, 1] and np.allclose(dist[:, 0], 0, atol=1e-3)


def test_a_compact_map_is_smaller_and_places_points_where_the_full_one_does(maps, tmp_path):
    out, _ = maps
    full = CorpusMap.load(out / "map")
    corpora = full.paths[0].rsplit("/", 2)[0]  # the synthetic corpus's folder
    shipped = full.rebased(corpora)
    assert shipped.paths[0] == "/".join(full.paths[0].rsplit("/", 2)[1:])  # Composer/piece.mid
    assert shipped.rebased("/nowhere").paths == shipped.paths  # outside the root: kept
    shipped.save(tmp_path / "compact", compact=True)
    size = {f.name: f.stat().st_size for f in (tmp_path / "compact").iterdir()}
    assert sum(size.values()) < sum(f.stat().st_size for f in (out / "map").iterdir())
    back = CorpusMap.load(tmp_path / "compact")
    assert back.embeddings.dtype == np.float32 and back.coords.dtype == np.float64
    np.testing.assert_allclose(back.embeddings, full.embeddings, atol=1e-3)
    np.testing.assert_allclose(back.coords, full.coords, atol=1e-4)
    assert (back.paths, back.composers, back.info) == (shipped.paths, full.composers, full.info)
    np.testing.assert_allclose(
        back.place(full.embeddings[:2]), full.place(full.embeddings[:2]), atol=0.05
    )


def test_context_places_user_files_without_moving_the_corpus(maps, tiny_run, tmp_path):
    from harmonixr.viz.context import context_map

    out, _ = maps
    run, cache, midi = tiny_run
    mine = [midi / "Low" / "low01.mid", midi / "High" / "high02.mid"]
    coords = CorpusMap.load(out / "map").coords.copy()
    written = context_map(run, mine, data=cache, map_dir=out / "map", out=tmp_path, k=3)
    _image(written["png"], size=(1000, 750))
    html = _offline_html(written["html"])
    assert "low01.mid" in html and "high02.mid" in html and "Nearest pieces" in html
    record = json.loads(written["json"].read_text())
    assert [len(r["nearest"]) for r in record] == [3, 3]
    np.testing.assert_array_equal(CorpusMap.load(out / "map").coords, coords)


def test_context_refuses_a_map_of_other_weights(maps, tiny_run, tmp_path):
    from harmonixr.viz.context import context_map

    out, _ = maps
    run, cache, midi = tiny_run
    folder = tmp_path / "map"
    cmap = CorpusMap.load(out / "map")
    cmap.info["weights"] = "something-else"
    cmap.save(folder)
    with pytest.raises(ValueError, match="other weights"):
        context_map(run, [midi / "Low" / "low01.mid"], map_dir=folder, out=tmp_path)


def test_tensor_gif_and_roll(tmp_path):
    from harmonixr.viz.tensor import tensor_pictures

    # one C4 (MIDI 60: pitch class C, octave index 2) from 0.5 s to 2.5 s, at 120 bpm
    midi = write_score(tmp_path / "c4.mid", [(480, 1920, 60, 100)])
    written = tensor_pictures(midi, (0.0, 2.0), tmp_path / "out")
    _image(written["roll"], size=(1200, 500))
    _, n = _image(written["gif"], size=(420, 620))
    assert n == 40  # 2 s of 50 ms frames
    with Image.open(written["gif"]) as im:
        im.seek(20)  # 1.0 s: the note sounds, so some cell is coloured (not grey, not black)
        rgb = np.asarray(im.convert("RGB")).reshape(-1, 3).astype(int)
    spread = rgb.max(1) - rgb.min(1)
    assert (spread > 60).sum() > 200  # the viridis cell and colour bar


def test_tensor_span_errors_name_the_file(tmp_path):
    from harmonixr.viz.tensor import parse_span, tensor_pictures

    assert parse_span("1.5:4") == (1.5, 4.0) and parse_span("2:") == (2.0, None)
    for bad in ("4:1", "x", "3"):
        with pytest.raises(ValueError, match="--seconds"):
            parse_span(bad)
    midi = write_score(tmp_path / "short.mid", [(0, 960, 60, 100)])
    with pytest.raises(ValueError, match="short.mid"):
        tensor_pictures(midi, (30.0, None), tmp_path)


def test_filters_and_curves(tiny_run, tmp_path):
    from harmonixr.viz.curves import read_scalars, training_curves
    from harmonixr.viz.filters import filter_grid, stem_kernels

    run, _, _ = tiny_run
    kernels, _, moved = stem_kernels(run)
    assert kernels.shape == (8, 3, 3, 8)  # tiny: 8 filters, 3×3 grid, 8 time slices
    assert 0 < moved < 0.5  # ten steps move the weights a little from their seeded start
    size, _ = _image(filter_grid(run, tmp_path))
    assert size == (round(100 * (1.6 + 0.55 * 8 + 1.4)), round(100 * (1.75 + 0.55 * 8)))
    assert {"train/loss", "val/auc"} <= set(read_scalars(run))
    _image(training_curves(run, tmp_path), size=(1500, 720))
    with pytest.raises(ValueError, match="no TensorBoard event files"):
        training_curves(tmp_path)


def test_projector_writes_embeddings_and_metadata(tmp_path):
    from harmonixr.train.projector import write_projector

    z = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    meta = [("Bach", "Fugue\tin C"), ("Chopin", "Étude"), ("A", "b"), ("C", "d"), ("E", "f")]
    logdir = write_projector(tmp_path, z, meta, step=7)
    assert "embeddings" in (logdir / "projector_config.pbtxt").read_text()
    (tsv,) = logdir.rglob("metadata.tsv")
    lines = tsv.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "composer\ttitle" and lines[1] == "Bach\tFugue in C"
    with pytest.raises(ValueError, match="metadata rows"):
        write_projector(tmp_path, z, meta[:2])


def test_colours_follow_piece_counts():
    composers = ["B"] * 5 + ["A"] * 5 + ["C"] * 2 + ["D"]
    colours = composer_colours(composers, top=2)
    assert colours == {"A": PALETTE[0], "B": PALETTE[1]}
    assert len(composer_colours([f"c{i}" for i in range(40)])) == len(PALETTE)
    assert OTHER not in composer_colours([OTHER] * 9 + ["x"])


def test_map_math():
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(30, 3))
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    np.testing.assert_allclose(align(pts @ q + 5.0, pts), pts, atol=1e-9)
    line = np.outer(np.linspace(-1, 1, 50), rng.normal(size=8))
    assert spread_and_dimension(line)[1] == pytest.approx(1.0)
    assert spread_and_dimension(rng.normal(size=(4000, 4)))[1] == pytest.approx(4.0, rel=0.05)
    with pytest.raises(ValueError, match="at least 4"):
        fit_map(np.zeros((3, 4)), ["a"] * 3, ["x"] * 3, ["t"] * 3)


@pytest.mark.parametrize("command", ["tsne", "tensor", "filters", "curves", "context"])
def test_viz_help_renders(command):
    result = CliRunner().invoke(app, ["viz", command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_cli_filters_prints_the_path(tiny_run, tmp_path):
    run, _, _ = tiny_run
    result = CliRunner().invoke(app, ["viz", "filters", str(run), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "filters.png").is_file() and "filters.png" in result.output


PRETRAINED = Path(harmonixr.__file__).parent / "pretrained"


@pytest.mark.skipif(
    not (PRETRAINED / "model.safetensors").is_file(),
    reason="no shipped model in src/harmonixr/pretrained (make pretrained ASAP=...)",
)
def test_the_shipped_map_loads_and_matches_the_shipped_weights():
    from harmonixr.train.rundir import Run
    from harmonixr.viz.maps import check_map

    folder = PRETRAINED / "map"
    cmap = CorpusMap.load(folder)
    check_map(cmap, Run.open(PRETRAINED), folder)  # made with these weights and this crop
    # small enough to ship, and no machine's paths in it
    assert sum(f.stat().st_size for f in folder.iterdir()) < 1.5e6
    assert not any(p.startswith(("/", "..")) for p in cmap.paths)
    assert not any(str(v).startswith("/") for v in cmap.info.values())
    # every indexed piece is on it, embedded as the index embedded it
    items = json.loads((PRETRAINED / "index" / "items.json").read_text())
    index = np.load(PRETRAINED / "index" / "embeddings.npy", allow_pickle=False)
    where = {p: i for i, p in enumerate(cmap.paths)}
    assert all(p in where for p in items["path"])
    rows = [where[p] for p in items["path"]]
    assert np.einsum("nd,nd->n", index, cmap.embeddings[rows]).min() > 0.999
    # a piece placed again lands by its own point
    gaps = np.linalg.norm(cmap.coords[:200, None] - cmap.coords[None, :200], axis=-1)
    placed = cmap.place(cmap.embeddings[:2])
    assert (np.linalg.norm(placed - cmap.coords[:2], axis=1) < np.median(gaps[gaps > 0])).all()
