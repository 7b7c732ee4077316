"""The whole-piece statistics (model/stats.py) and SiaViT's statistics branch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from midi_factory import frames, make_score

from harmonixr.midi.tensorize import TensorConfig, tensorize_score
from harmonixr.model.config import preset
from harmonixr.model.encoder import SiaViT
from harmonixr.model.stats import STATS_DIM, describe, estimate_key, piece_stats


def _tensor(notes):
    """The tensor of docs/architecture.md painted by hand: (start frame, frames, MIDI pitch,
    velocity) → the key's cell (pitch-class index 0 = F, octaves from F1) holds a value that
    falls by one each frame the note is held."""
    n = max(s + d for s, d, _, _ in notes)
    t = np.zeros((n, 12, 6), np.uint8)
    for s, d, p, v in notes:
        k = p - 29
        t[s : s + d, k % 12, k // 12] = np.maximum(1, v - np.arange(d))
    return t


def test_a_real_file_gives_its_onsets_and_inter_onset_intervals():
    # four quarter notes of 0.5 s at 120 bpm, each held 0.4 s: 2 s of sounding music
    score = make_score([(i * frames(10), frames(8), 60 + 2 * i, 80) for i in range(4)])
    vec = piece_stats(tensorize_score(score, TensorConfig()).tensor)
    sounding_s = 4 * 0.4
    np.testing.assert_allclose(
        _part(vec, "onset_density"), [np.log1p(4 / sounding_s), 1 / 8], rtol=1e-6
    )
    assert _part(vec, "ioi_typical")[0] == pytest.approx(np.log2(0.5))
    # every inter-onset interval equals its local beat: all in the bin around log2(1) = 0
    ioi = _part(vec, "ioi_ratios") ** 2
    assert ioi.max() == pytest.approx(1.0) and ioi.argmax() == 6
    assert _part(vec, "top_intervals")[12 + 2] == pytest.approx(1.0)


def _part(vec, name):
    return vec[dict(describe())[name]]


# a C-major melody over a held bass: (start frame, length in frames, MIDI pitch)
MELODY = [(0, 8, 60), (8, 8, 62), (16, 8, 64), (24, 8, 65), (32, 8, 67), (40, 8, 64), (48, 16, 60)]
BASS = [(0, 32, 48), (32, 32, 43)]


def _notes(shift=0, melody=MELODY, bass=BASS):
    return [(s, n, p + shift, 80) for s, n, p in [*melody, *bass]]


def test_the_parts_fill_the_vector_in_order():
    parts = describe()
    assert parts[0][1].start == 0 and parts[-1][1].stop == STATS_DIM
    assert all(a[1].stop == b[1].start for a, b in zip(parts, parts[1:], strict=False))


def test_pitch_classes_are_square_rooted_shares_of_sounding_time():
    vec = piece_stats(_tensor(_notes()))
    # sounding frames per pitch class from the note list above (C = 0): C 8+16+32, D 8,
    # E 8+8, F 8, G 8+32 (the bass G2)
    expect = np.zeros(12)
    for pc, n in ((0, 56), (2, 8), (4, 16), (5, 8), (7, 40)):
        expect[pc] = n
    np.testing.assert_allclose(_part(vec, "pitch_classes"), np.sqrt(expect / expect.sum()), 1e-5)


def test_key_relative_parts_do_not_move_under_transposition():
    a, b = piece_stats(_tensor(_notes())), piece_stats(_tensor(_notes(shift=3)))
    for name in (
        "pitch_classes_in_key",
        "mode",
        "top_intervals",
        "bass_intervals",
        "top_transitions",
        "interval_classes",
        "chord_size",
        "polyphony",
    ):
        np.testing.assert_allclose(_part(a, name), _part(b, name), atol=1e-6, err_msg=name)
    # the absolute profile rotates by the three semitones
    np.testing.assert_allclose(
        np.roll(_part(a, "pitch_classes"), 3), _part(b, "pitch_classes"), atol=1e-6
    )


def test_the_top_line_and_the_bass_give_their_intervals():
    vec = piece_stats(_tensor(_notes()))
    top = _part(vec, "top_intervals") ** 2  # back to shares; index 12 is a unison
    # top line: C D E F G E C → +2 +2 +1 +2 −3 −4
    expect = np.zeros(25)
    for d in (2, 2, 1, 2, -3, -4):
        expect[d + 12] += 1
    np.testing.assert_allclose(top, expect / expect.sum(), atol=1e-6)
    # the bass line is each start frame's lowest start: C3 D4 E4 F4 G2 E4 C4 → +14 +2 +1
    # −22 +21 −4, clipped to ±12
    expect = np.zeros(25)
    for d in (12, 2, 1, -12, 12, -4):
        expect[d + 12] += 1
    np.testing.assert_allclose(_part(vec, "bass_intervals") ** 2, expect / 6, atol=1e-6)


def test_a_major_scale_is_in_its_key_and_minor_is_told_apart():
    major = np.zeros(12)
    major[[0, 2, 4, 5, 7, 9, 11]] = 1
    major[[0, 7]] += 2
    assert estimate_key(major)[:2] == (0, 0)
    assert estimate_key(np.roll(major, 5))[:2] == (5, 0)
    minor = np.zeros(12)
    minor[[9, 11, 0, 2, 4, 5, 7]] = 1
    minor[[9, 4]] += 2
    minor[8] = 1  # the leading tone of A minor
    assert estimate_key(minor)[:2] == (9, 1)


def test_chords_count_keys_starting_together():
    chord = [(0, 10, p, 80) for p in (60, 64, 67)] + [(20, 10, 72, 80)]
    sizes = _part(piece_stats(_tensor(chord)), "chord_size") ** 2
    assert sizes[2] == pytest.approx(0.5) and sizes[0] == pytest.approx(0.5)


def test_no_music_gives_zeros_and_a_wrong_shape_is_refused():
    assert not piece_stats(np.zeros((0, 12, 6), np.uint8)).any()
    with pytest.raises(ValueError, match="12, 6"):
        piece_stats(np.zeros((10, 6, 12), np.uint8))


def _stats_model(branches="both"):
    torch.manual_seed(0)
    return SiaViT(preset("tiny").replace(stats_dim=STATS_DIM, stats_branches=branches)).eval()


def test_the_statistics_branch_changes_the_embedding():
    model = _stats_model()
    x = torch.rand(2, 1, 12, 6, 64)
    s1 = torch.from_numpy(np.stack([piece_stats(_tensor(_notes()))] * 2))
    s2 = torch.from_numpy(np.stack([piece_stats(_tensor(_notes(shift=5, bass=[])))] * 2))
    with torch.no_grad():
        a, b, none = model(x, stats=s1), model(x, stats=s2), model(x)
    assert not torch.allclose(a, b, atol=1e-4)
    assert not torch.allclose(a, none, atol=1e-4)
    torch.testing.assert_close(a.norm(dim=1), torch.ones(2))


def test_a_one_branch_model_reads_only_its_branch():
    x, x2 = torch.rand(1, 1, 12, 6, 64), torch.rand(1, 1, 12, 6, 64)
    s1 = torch.from_numpy(piece_stats(_tensor(_notes())))[None]
    s2 = torch.from_numpy(piece_stats(_tensor(_notes(shift=5, bass=[]))))[None]
    vit, stats = _stats_model("vit"), _stats_model("stats")
    with torch.no_grad():
        torch.testing.assert_close(vit(x, stats=s1), vit(x, stats=s2))
        assert not torch.allclose(vit(x, stats=s1), vit(x2, stats=s1), atol=1e-4)
        torch.testing.assert_close(stats(x, stats=s1), stats(x2, stats=s1))
        assert not torch.allclose(stats(x, stats=s1), stats(x, stats=s2), atol=1e-4)


def test_a_statistics_only_model_never_runs_the_vit(monkeypatch):
    from harmonixr.model.embed import embed_pieces, embed_windows, piece_windows

    model = _stats_model("stats")
    pieces = [_tensor(_notes()), _tensor(_notes(shift=5, bass=[]))]
    before = embed_pieces(model, pieces, 64, hop=32)

    def refuse(*args, **kwargs):
        raise AssertionError("the ViT ran for a statistics-only model")

    monkeypatch.setattr(model, "pooled", refuse)
    np.testing.assert_allclose(embed_pieces(model, pieces, 64, hop=32), before, atol=1e-6)
    windows = piece_windows(pieces, 64, 32)
    assert embed_windows(model, pieces, windows, 64).shape == (len(windows), model.config.embed_dim)


def test_a_vit_only_model_refuses_statistics():
    model = SiaViT(preset("tiny")).eval()
    with pytest.raises(ValueError, match="no statistics branch"):
        model(torch.rand(1, 1, 12, 6, 64), stats=torch.zeros(1, STATS_DIM))


def test_branch_dropout_drops_one_branch_at_a_time():
    from harmonixr.train.piece_head import HeadConfig, _branch_masks

    gen = torch.Generator().manual_seed(0)
    keep_v, keep_s = _branch_masks(4000, HeadConfig(branch_dropout=0.4), gen)
    assert not ((keep_v == 0) & (keep_s == 0)).any()
    assert 0.17 < float((keep_v == 0).float().mean()) < 0.23
    assert 0.17 < float((keep_s == 0).float().mean()) < 0.23
    keep_v, keep_s = _branch_masks(100, HeadConfig(branch_dropout=0.0), gen)
    assert bool(keep_v.all()) and bool(keep_s.all())


def test_pieces_of_one_group_are_neither_positive_nor_negative():
    from harmonixr.model.losses import group_supcon

    torch.manual_seed(0)
    z = torch.nn.functional.normalize(torch.randn(7, 8), dim=1)
    labels = [0, 0, 0, 1, 1, 1, 2]
    groups = [0, 0, 1, 2, 3, 3, 4]
    tau = 0.1
    # the rule, pair by pair: anchor i's positives are the same composer in another group;
    # its denominator runs over every piece of another group
    terms = []
    for i in range(7):
        others = [a for a in range(7) if groups[a] != groups[i]]
        pos = [p for p in others if labels[p] == labels[i]]
        if not pos:
            continue
        denom = torch.logsumexp(torch.stack([z[i] @ z[a] / tau for a in others]), 0)
        terms.append(-torch.stack([z[i] @ z[p] / tau - denom for p in pos]).mean())
    expect = torch.stack(terms).mean()
    got = group_supcon(z, torch.tensor(labels), torch.tensor(groups), tau)
    torch.testing.assert_close(got, expect, rtol=1e-4, atol=1e-4)


def test_the_second_stage_writes_a_run_every_room_reads(search_run, search_run_copy, tmp_path):
    import json
    import shutil

    from harmonixr.data.cache import TensorCache
    from harmonixr.model.io import load_encoder
    from harmonixr.search.index import build_index
    from harmonixr.train.piece_head import HeadConfig, train_head
    from harmonixr.train.rundir import Run

    cache = shutil.copytree(search_run.parent / "cache", tmp_path / "cache")
    config = HeadConfig(steps=20, val_every=10, composers=2, per_composer=2, branch_dropout=0.5)
    out = train_head(search_run_copy, cache, tmp_path / "head", config)
    run = Run.open(out)
    assert run.model.stats_dim == STATS_DIM and run.crop_frames == Run.open(search_run).crop_frames
    assert (cache / "stats-v1.npz").is_file() and (search_run_copy / "head-features.npz").is_file()
    log = json.loads((out / "head_log.json").read_text())
    assert [e["step"] for e in log["log"]] == [10, 20]
    encoder = load_encoder(out)
    assert encoder.has_stats
    # the trunk is the source's, unchanged
    source = load_encoder(search_run)
    torch.testing.assert_close(encoder.stem.conv.weight, source.stem.conv.weight)
    build_index(out, cache)

    with TensorCache(cache) as c:
        tensors = [c.load(r) for r in c.pieces()[:3]]
    z = run.embed(tensors)
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, rtol=1e-5)
    # the exported weights are the best validation step's: their validation AUC is the best
    from harmonixr.train.piece_head import validation_auc

    with TensorCache(cache) as c:
        rows = c.pieces()
        val = [rows[i] for i in run.split(rows)["val"]]
        z = run.embed([c.load(r) for r in val])
    names = sorted({r.composer for r in val})
    auc = validation_auc(
        z, np.array([names.index(r.composer) for r in val]), np.array([r.group for r in val])
    )
    assert auc == pytest.approx(log["best_val_auc"], abs=1e-4)
    assert log["best_val_auc"] == max(e["val_auc"] for e in log["log"])
    with pytest.raises(ValueError, match="already holds a run"):
        train_head(search_run_copy, cache, out, config)
    # the ablation scores the encoder, the second stage and the baselines on the same split
    from harmonixr.experiments.ablation import STATS_LR, run_ablation

    report = run_ablation(
        search_run_copy / "split.json", cache, search_run_copy, {"both": out}, resamples=20
    )
    methods = report["methods"]
    assert {"ViT (crop head)", "second stage: both", STATS_LR} <= set(methods)
    for m in methods.values():
        assert 0.0 <= m["verify"]["auc"]["value"] <= 1.0
    assert report["sizes"]["test"] == len(Run.open(search_run_copy).split_manifest()["test"])


def test_a_statistics_model_reads_the_whole_piece_through_its_head():
    from harmonixr.model.embed import (
        embed_pieces,
        embed_windows,
        head_embeddings,
        piece_windows,
        window_features,
    )

    model = _stats_model()
    tensors = [_tensor(_notes()), _tensor(_notes(shift=4))]
    tensors.append(np.repeat(tensors[0], 5, axis=0))  # longer than a crop: several windows
    crop = 40
    # by the rule: the valid-frame-weighted mean of the windows' pooled tokens, then the head
    # with the statistics of the whole piece
    expect = []
    for t in tensors:
        w = piece_windows([t], crop, crop // 2)
        f = window_features(model, [t], w, crop)
        v = np.array([x.valid for x in w], np.float64)
        mean = (f * v[:, None]).sum(0) / v.sum()
        expect.append(head_embeddings(model, mean[None].astype(np.float32),
                                      piece_stats(t)[None])[0])  # fmt: skip
    for chunk in (1, 64):
        got = embed_pieces(model, tensors, crop, chunk=chunk)
        np.testing.assert_allclose(got, np.stack(expect), atol=1e-5)
    given = np.stack([piece_stats(t) for t in tensors])
    np.testing.assert_allclose(embed_pieces(model, tensors, crop, stats=given), got, atol=1e-6)
    with pytest.raises(ValueError, match="statistics vectors"):
        embed_pieces(model, tensors, crop, stats=given[:1])
    # a window reads its own statistics, not the piece's
    w = piece_windows([tensors[2]], crop, crop)
    own = embed_windows(model, [tensors[2]], w, crop)
    seg = tensors[2][w[1].start : w[1].start + w[1].valid]
    f = window_features(model, [tensors[2]], w[1:2], crop)
    np.testing.assert_allclose(own[1], head_embeddings(model, f, piece_stats(seg)[None])[0],
                               atol=1e-5)  # fmt: skip
