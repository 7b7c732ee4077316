"""``Run``: a run directory read once, the same way for every room."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from harmonixr.midi.tensorize import TensorConfig
from harmonixr.train.rundir import Run


def test_a_run_reads_its_configs_and_its_crop(search_run):
    run = Run.open(search_run)
    stored = json.loads((search_run / "config.json").read_text())
    t = stored["train"]
    # the crop rule: crop seconds over the frame length, rounded (docs/design.md)
    assert run.crop_frames == round(t["crop_seconds"] * 1000 / stored["tensor"]["frame_ms"])
    assert run.hop_frames == run.crop_frames // 2
    assert run.seed == t["seed"] and run.composers == tuple(stored["composers"])
    assert run.model.embed_dim == stored["model"]["embed_dim"]


def test_the_untrained_encoder_is_the_seeds_and_leaves_the_callers_random_state(search_run):
    run = Run.open(search_run)
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = run.encoder(initial=True)
    assert torch.equal(torch.rand(3), expected_next)  # the caller's stream goes on untouched
    b = run.encoder(initial=True)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    trained = run.encoder()
    assert not torch.equal(next(trained.parameters()), next(a.parameters()))


@pytest.mark.parametrize("initial", [False, True])
def test_the_encoder_goes_to_the_device_asked(search_run, initial):
    enc = Run.open(search_run).encoder(initial=initial, device="meta")
    assert {p.device.type for p in enc.parameters()} == {"meta"}


def test_not_a_run_is_refused_with_the_reason(search_run, tmp_path):
    with pytest.raises(ValueError, match="not a run directory"):
        Run.open(tmp_path)
    broken = shutil.copytree(search_run, tmp_path / "broken")
    cfg = json.loads((broken / "config.json").read_text())
    del cfg["model"]
    (broken / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="no 'model' section"):
        Run.open(broken)
    for bad in (None, 3, [1]):
        cfg["model"] = bad
        (broken / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(ValueError, match="not a table"):
            Run.open(broken)


def test_a_run_from_a_newer_release_opens_with_a_warning(search_run, tmp_path):
    newer = shutil.copytree(search_run, tmp_path / "newer")
    cfg = json.loads((newer / "config.json").read_text())
    cfg["train"]["a_future_setting"] = 1
    (newer / "config.json").write_text(json.dumps(cfg))
    with pytest.warns(UserWarning, match="a_future_setting"):
        run = Run.open(newer)
    assert run.crop_frames == Run.open(search_run).crop_frames
    with pytest.raises(ValueError, match="a_future_setting"):  # resuming must keep every setting
        Run.open(newer, strict=True)


def test_tensors_made_otherwise_are_refused(search_run):
    run = Run.open(search_run)
    run.check_tensors(run.tensor, "cache")
    with pytest.raises(ValueError, match="trained on"):
        run.check_tensors(TensorConfig(binary=not run.tensor.binary), "cache")


def test_the_split_is_read_and_checked_through_the_run(search_run, tmp_path):
    from harmonixr.data.cache import TensorCache
    from harmonixr.data.splits import side_groups, split_manifest

    run = Run.open(search_run)
    with TensorCache(search_run.parent / "cache") as cache:
        rows = cache.pieces()
    split = run.split(rows)
    run.check_split(split, rows)  # the cache still gives the recorded split
    assert run.split_info()["mode"] == "group" and "train" not in run.split_info()
    moved = {**split, "train": split["train"][1:], "test": [*split["test"], split["train"][0]]}
    with pytest.raises(ValueError, match="split"):
        run.check_split(moved, rows)
    # a training run records paths; a cross-validation fold (and the shipped model) a manifest
    with pytest.raises(ValueError, match="no groups recorded"):
        side_groups(run.split_path, "test")
    manifest = split_manifest(rows, split, mode="group")
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    groups = side_groups(tmp_path / "manifest.json", "test")
    assert groups == {rows[i].group for i in split["test"]}
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"train": manifest["train"]}))
    with pytest.raises(ValueError, match="no val, test side"):
        side_groups(partial, "test")
    no_split = shutil.copytree(search_run, tmp_path / "no-split")
    (no_split / "split.json").unlink()
    with pytest.raises(ValueError, match="no split.json"):
        Run.open(no_split).split(rows)
