"""The run is the one source of the crop: a run trained on 20 s crops gets 20 s windows from the
API, the service, the page's settings, the command line and the held-out measurement, and the
page's analysis still runs the model once per window it shares with the whole piece."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from midi_factory import synthetic_corpus
from tiny_runs import train_tiny

CROP = 20.0


@pytest.fixture(scope="module")
def run20(tmp_path_factory) -> Path:
    from harmonixr.data.cache import preprocess
    from harmonixr.search.index import build_index

    root = tmp_path_factory.mktemp("crop20")
    synthetic_corpus(root / "midi", n_per=8, seconds=50)
    preprocess(root / "midi", root / "cache", workers=1)
    run = train_tiny(root / "cache", root / "run", crop_seconds=CROP, max_steps=10)
    build_index(run, root / "cache")
    return run


def _piece(run: Path) -> str:
    return json.loads((run / "split.json").read_text())["test"][0]


def test_the_api_reads_the_crop_from_the_run(run20, monkeypatch):
    import harmonixr.api as api
    from harmonixr import Harmonixr, tensorize

    with Harmonixr.load(run20) as hx:
        assert hx.crop_seconds == CROP and hx.run.crop_frames == 400
        hop = 133 * 0.05  # a third of the crop, in whole frames
        assert hx.timeline_windows() == (CROP, pytest.approx(hop))
        passages = hx.timeline(_piece(run20))
        assert passages[0].end_s - passages[0].start_s == pytest.approx(CROP)
        assert passages[1].start_s == pytest.approx(hop)

        tensor = tensorize(_piece(run20))
        calls: list[int] = []
        real = api.embed_windows

        def counted(encoder, tensors, windows, crop):
            calls.append(crop)
            return real(encoder, tensors, windows, crop)

        monkeypatch.setattr(api, "embed_windows", counted)
        monkeypatch.setattr(hx, "embed", lambda *a, **k: pytest.fail("a second pass"))
        timeline, z = hx.timeline_and_embedding(tensor)  # the crop: one pass for both
        assert calls == [400]
        monkeypatch.undo()
        np.testing.assert_allclose(z, hx.embed(tensor), atol=1e-5)
        assert [p.start_s for p in timeline] == [p.start_s for p in hx.timeline(tensor)]


def test_the_service_and_the_page_read_the_crop_from_the_run(run20):
    from fastapi.testclient import TestClient

    from harmonixr.serve.app import create_app

    path = _piece(run20)
    data = Path(path).read_bytes()
    # the service answers only to the hosts it serves (localhost by default)
    with TestClient(create_app(run20), base_url="http://localhost") as client:
        assert client.get("/api/health").json()["crop_s"] == CROP
        got = client.post("/api/analyze", files={"file": ("p.mid", data, "audio/midi")})
        assert got.status_code == 200, got.text
        assert got.json()["timeline"]["window_s"] == got.json()["timeline"]["hop_s"] == CROP
        got = client.post("/api/timeline", files={"file": ("p.mid", data, "audio/midi")})
        first = got.json()[0]
        assert first["end_s"] - first["start_s"] == pytest.approx(CROP)
    app_js = Path(__file__).parents[1] / "src/harmonixr/serve/static/app.js"
    page = app_js.read_text()
    assert "health.crop_s" in page and "window=30" not in page


def test_the_command_line_and_the_measurement_read_the_crop_from_the_run(run20):
    from harmonixr.search.measure import measure_index

    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    shown = subprocess.run(
        [sys.executable, "-m", "harmonixr.cli", "timeline", _piece(run20), "-m", str(run20)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=True,
    ).stdout
    assert "20 s windows every 6.65 s" in shown
    report = measure_index(run20, run20.parent / "cache", music21_dir=None, resamples=5)
    assert report["timeline"]["window_s"] == CROP
